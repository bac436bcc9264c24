"""The deterministic order of training instances: which source and which instance sits at each global position.

Positions are grouped into periods. A period holds a fixed number of instances from each source (the weights,
rounded by largest remainder) in an order shuffled by (seed, period); the k-th instance drawn from a source is
instance `perm(seed, source, k // n)[k % n]` of its n, a fresh permutation per pass over that source. Everything is a
pure function of the position, so any rank can jump to any point, and a resume needs only the position.
Without weights the period is one whole epoch (every instance of every source once), i.e. one global permutation.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from kiln.errors import KilnError

MIX_PERIOD = 1 << 14  # instances per period when weights are given: shares are exact to 1/16384 per period
CACHE_SIZE = 8


def apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total` in the proportions of `weights` (largest remainder, ties to lower index)."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:total - int(counts.sum())]] += 1
    return counts


class MixtureSchedule:
    """Maps global positions to (source, instance) for sources of `instance_counts` instances each."""

    def __init__(self, instance_counts: list[int], weights: list[float] | None, seed: int):
        self.instance_counts = np.asarray(instance_counts, dtype=np.int64)
        self.seed = seed
        if weights is None:
            self.weights = self.instance_counts / self.instance_counts.sum()
            self.per_period = self.instance_counts.copy()
        else:
            self.weights = _check_weights(weights, self.instance_counts)
            self.per_period = apportion(self.weights, MIX_PERIOD)
        self.period = int(self.per_period.sum())
        self._periods: OrderedDict = OrderedDict()
        self._perms: OrderedDict = OrderedDict()

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, instance index within that source) of each global position."""
        periods, offsets = np.divmod(positions, self.period)
        sources = np.empty(len(positions), dtype=np.int64)
        draws = np.empty(len(positions), dtype=np.int64)  # how many instances of that source were drawn before it
        for period in np.unique(periods):
            here = periods == period
            order, rank = self._period_order(int(period))
            sources[here] = order[offsets[here]]
            draws[here] = period * self.per_period[sources[here]] + rank[offsets[here]]
        instances = np.empty(len(positions), dtype=np.int64)
        passes, within = np.divmod(draws, self.instance_counts[sources])
        for source, pass_index in set(zip(sources.tolist(), passes.tolist(), strict=True)):
            here = (sources == source) & (passes == pass_index)
            instances[here] = self._permutation(source, pass_index)[within[here]]
        return sources, instances

    def draws_before(self, position: int) -> np.ndarray:
        """(S,) instances drawn from each source at positions < `position`: the achieved mixture."""
        period, offset = divmod(position, self.period)
        order, _ = self._period_order(period)
        return period * self.per_period + np.bincount(order[:offset], minlength=len(self.per_period))

    def _period_order(self, period: int) -> tuple[np.ndarray, np.ndarray]:
        """Source of each slot in the period, and how many slots of the same source precede it."""
        if period not in self._periods:
            order = np.repeat(np.arange(len(self.per_period)), self.per_period)
            if len(self.per_period) > 1:
                order = np.random.default_rng([self.seed, period, 1]).permutation(order)
            rank = np.empty(len(order), dtype=np.int64)
            for source in range(len(self.per_period)):
                slots = np.flatnonzero(order == source)
                rank[slots] = np.arange(len(slots))
            _remember(self._periods, period, (order, rank))
        return self._periods[period]

    def _permutation(self, source: int, pass_index: int) -> np.ndarray:
        key = (source, pass_index)
        if key not in self._perms:
            perm = np.random.default_rng([self.seed, source, pass_index, 2]).permutation(self.instance_counts[source])
            _remember(self._perms, key, perm)
        return self._perms[key]


def _remember(cache: OrderedDict, key: object, value: object) -> None:
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def _check_weights(weights: list[float], instance_counts: np.ndarray) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    if len(array) != len(instance_counts):
        raise KilnError(f"got {len(array)} mixture weights for {len(instance_counts)} datasets; give one per dataset")
    if np.any(array < 0) or not np.isfinite(array).all() or array.sum() <= 0:
        raise KilnError(f"mixture weights must be finite, non-negative and not all zero, got {list(weights)}")
    empty = [i for i in range(len(array)) if array[i] > 0 and instance_counts[i] == 0]
    if empty:
        raise KilnError(f"dataset(s) {empty} have a positive weight but too few tokens for one instance")
    return array / array.sum()
