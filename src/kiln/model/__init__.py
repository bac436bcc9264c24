"""The OLMo-family transformer: config, presets, modules and initialisation."""

from kiln.model.config import ConfigError, ModelConfig, flops_per_token, param_counts
from kiln.model.init import init_weights
from kiln.model.presets import PRESETS, preset
from kiln.model.transformer import KVCache, Transformer

__all__ = [
    "PRESETS", "ConfigError", "KVCache", "ModelConfig", "Transformer", "flops_per_token", "init_weights",
    "param_counts", "preset",
]
