"""muP: width-transferable learning rates, the coordinate check, and the learning rate's dependence on duration."""
