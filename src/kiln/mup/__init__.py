"""muP: width-transferable learning rates, the coordinate check, and the learning rate's dependence on duration."""

from __future__ import annotations

# beta of LR*(D) proportional to D^-beta, as docs/mup.md measured it: muP, width 64, 200k to 1.6M tokens (0.62 +- 0.06;
# over 400k-1.6M only, 0.52). Bjorck et al. (2024) report about 0.3 for 1B-parameter models trained far longer.
DEFAULT_BETA = 0.62


def lr_for_tokens(lr_at_D0: float, D0: float, D: float, beta: float = DEFAULT_BETA) -> float:
    """The LR for D tokens given a good LR at D0 tokens, from LR*(D) proportional to D^-beta.

    muP carries a learning rate across width, not across training length: longer runs want smaller peak LRs
    (Bjorck et al., 2024). DEFAULT_BETA is what docs/mup.md measured.
    """
    for name, value in (("lr_at_D0", lr_at_D0), ("D0", D0), ("D", D)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    return lr_at_D0 * (D / D0) ** (-beta)
