"""Kiln: open pretraining of OLMo-family language models."""

__version__ = "0.1.0"
