"""Correlations of the metrics, row by row."""
from __future__ import annotations

import numpy as np

__all__ = ["rowwise_pearson", "rowwise_spearman"]


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; NaN for constant rows."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ac = a - a.mean(-1, keepdims=True)
    bc = b - b.mean(-1, keepdims=True)
    na = np.sqrt((ac * ac).sum(-1))
    nb = np.sqrt((bc * bc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(-1) / (na * nb)
    # a row that is constant up to rounding carries no ordering information: NaN, not noise
    flat_a = na <= 1e-12 * np.sqrt((a * a).sum(-1)) + 1e-300
    flat_b = nb <= 1e-12 * np.sqrt((b * b).sum(-1)) + 1e-300
    return np.where(flat_a | flat_b, np.nan, np.clip(r, -1.0, 1.0))


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties, :func:`scipy.stats.rankdata`)."""
    from scipy.stats import rankdata

    return rowwise_pearson(rankdata(a, axis=-1), rankdata(b, axis=-1))
