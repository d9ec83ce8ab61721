"""Grids of feature values: for partial dependence (uniform or quantile points, levels of a
categorical feature, the user's own values) and the quantile bin edges of ALE."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._common import Table

__all__ = ["GRIDS", "feature_grid", "levels", "user_grid", "quantile_edges"]

GRIDS = ("uniform", "quantile")


def check_percentiles(percentiles: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"percentiles must be a pair (low, high) in [0, 1]; got {percentiles!r}") from None
    if not (0 <= lo < hi <= 1):
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 1; got {percentiles!r}")
    return lo, hi


def _sort_levels(values: np.ndarray) -> np.ndarray:
    uniq = list(dict.fromkeys(values.tolist()))  # keeps first-seen order as the fallback
    try:
        uniq = sorted(uniq)
    except TypeError:  # mixed types: order by their text
        uniq = sorted(uniq, key=str)
    out = np.empty(len(uniq), dtype=object)
    out[:] = uniq
    return out


def levels(table: Table, j: int) -> np.ndarray:
    """The levels of categorical column ``j`` present in the data, in the dtype's order when the
    column is a pandas Categorical (its declared order), else sorted."""
    col = table.values[:, j]
    present = set(col.tolist())
    dtype = None if table.dtypes is None else table.dtypes.get(table.labels[j])
    cats = getattr(dtype, "categories", None)
    if cats is not None:
        out = np.empty(0, dtype=object)
        kept = [c for c in cats.tolist() if c in present]
        if len(kept) == len(present):
            out = np.empty(len(kept), dtype=object)
            out[:] = kept
            return out
    return _sort_levels(col)


def is_ordered(table: Table, j: int) -> bool:
    dtype = None if table.dtypes is None else table.dtypes.get(table.labels[j])
    return bool(getattr(dtype, "ordered", False))


def feature_grid(table: Table, j: int, grid: str = "uniform", resolution: int = 50,
                 percentiles: tuple[float, float] = (0.05, 0.95)) -> np.ndarray:
    """Grid of values for column ``j``.

    Categorical columns: their levels. Numeric columns with fewer unique values than
    ``resolution``: those values. Otherwise ``"uniform"``: ``resolution`` equally spaced points
    between the ``percentiles`` of the column (SciPy's ``mquantiles``, as scikit-learn, so the
    default grids match ``sklearn.inspection.partial_dependence``); ``"quantile"``: the
    column's quantiles at ``resolution`` equally spaced levels between the percentiles, taken
    as data values (inverted CDF), so points are dense where the data is. Integer columns
    keep integer grid values.
    """
    if table.categorical[j]:
        return levels(table, j)
    x = table.numeric(j)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise ValueError(f"feature {table.names[j]!r} has no finite values to build a grid from")
    uniq = np.unique(x)
    if len(uniq) < resolution:
        return uniq
    lo, hi = check_percentiles(percentiles)
    if grid == "uniform":
        from scipy.stats.mstats import mquantiles

        a, b = mquantiles(x, prob=(lo, hi))
        if np.isclose(a, b):
            raise ValueError(
                f"percentiles {percentiles} of feature {table.names[j]!r} coincide; choose percentiles "
                "further apart or grid='quantile'"
            )
        points = np.linspace(a, b, resolution)
    elif grid == "quantile":
        points = np.quantile(x, np.linspace(lo, hi, resolution), method="inverted_cdf")
    else:
        raise ValueError(f"grid must be one of {GRIDS}; got {grid!r}")
    if table.integer[j]:
        points = np.round(points)
    return np.unique(points)


def user_grid(table: Table, j: int, values: Any, name: str = "grid_values") -> np.ndarray:
    """Validate the user's grid for column ``j``: 1-D, non-empty; numeric grids sorted unique."""
    arr = np.asarray(values, dtype=object if table.categorical[j] else None)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"{name} for {table.names[j]!r} must be a non-empty 1-D sequence; got shape {arr.shape}")
    if table.categorical[j]:
        return arr
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} for numeric feature {table.names[j]!r} must be numbers") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} for {table.names[j]!r} must be finite")
    if table.integer[j] and np.any(arr != np.round(arr)):
        raise ValueError(
            f"{name} for integer column {table.names[j]!r} must hold integers (the model sees the "
            "column cast back to its integer dtype)"
        )
    return np.unique(arr)


def quantile_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """ALE bin edges: the quantiles of ``x`` at ``k / bins`` as data values (the inverted CDF,
    R's type 1, as in Apley & Zhu's ALEPlot), duplicates removed. At least two edges."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1), method="inverted_cdf"))
    if len(edges) < 2:
        raise ValueError("the feature takes a single value; its accumulated local effect is undefined")
    return edges
