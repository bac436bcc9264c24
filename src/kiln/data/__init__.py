"""Data: tokenizers, `prepare` (text -> token shards), datasets and the training-instance loader."""
