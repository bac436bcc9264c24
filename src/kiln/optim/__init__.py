"""AdamW with OLMo-style parameter groups, and learning-rate schedules."""

from kiln.optim.adamw import build_adamw, param_groups
from kiln.optim.schedule import lr_multiplier

__all__ = ["build_adamw", "lr_multiplier", "param_groups"]
