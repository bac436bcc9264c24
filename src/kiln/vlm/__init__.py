"""A small Molmo-style pointing vision-language model: synthetic scenes, model, training, evaluation."""
