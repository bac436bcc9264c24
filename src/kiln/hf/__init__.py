"""Hugging Face interop: export kiln checkpoints as transformers' Olmo2 and import Olmo2 models back."""
