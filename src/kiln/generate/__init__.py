"""Text generation from kiln checkpoints: batched greedy and sampled decoding with a KV cache."""

from kiln.generate.sampling import Decoder, filter_top_k, filter_top_p, generate, generate_text, sample_next

__all__ = ["Decoder", "filter_top_k", "filter_top_p", "generate", "generate_text", "sample_next"]
