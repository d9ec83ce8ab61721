"""Random streams of the metrics: every random draw belongs to one (sample, draw) pair, so results
never depend on the batch size or on the other samples of the batch."""
from __future__ import annotations

import numpy as np

__all__ = ["row_rng", "random_order"]


def row_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator owned by one (sample, draw) pair: the same numbers whatever the batching."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return np.random.default_rng([int(seed)] + [int(k) for k in keys])


def random_order(scores: np.ndarray, valid: np.ndarray, seed: int, descending: bool = True) -> np.ndarray:
    """Rank of each feature (0 = first) by score, ties broken at random, padding ranked last.

    Random tie-breaking keeps constant explanations from removing pixels in raster order.
    """
    n, F = scores.shape
    tie = np.empty((n, F))
    for i in range(n):  # one draw per sample, before any batching
        tie[i] = row_rng(seed, 7, i).random(F)
    key = -scores if descending else scores
    key = np.where(valid, key, np.inf)
    order = np.lexsort((tie, key), axis=-1)  # primary: key, then the random tie-breaker
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(F)[None].repeat(n, 0), axis=1)
    return ranks
