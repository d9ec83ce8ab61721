"""Accumulated local effects (ALE).

Apley & Zhu (2020), "Visualizing the Effects of Predictor Variables in Black Box Supervised
Learning Models", JRSS-B 82(4). ALE averages *local* changes of the prediction, each computed
only for the rows that actually lie in a small bin of the feature, and accumulates them. The
model is never asked about a row far from the data, so ALE stays honest when features are
correlated, where partial dependence averages over impossible rows.

- numeric feature: quantile bins, ``f(upper edge) - f(lower edge)`` per row, mean per bin,
  accumulated and centred (2n model rows);
- categorical feature: levels ordered by similarity of the other features' distributions (the
  paper's ordering: Kolmogorov-Smirnov distances for numeric features, total variation for
  categorical ones, one-dimensional classical multidimensional scaling), jumps between neighbour
  levels (about 3n rows);
- a pair of numeric features: the second-order (pure interaction) effect from the double
  differences on the grid of cells, with the first-order effects removed (4n rows).

Centring and the second-order algorithm follow the authors' ALEPlot R package. Confidence bands:
a bootstrap over the rows with the bins held fixed. The local effect of each row is computed once,
so the bootstrap reweights rows and costs no model evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..core.execution import rng as make_rng
from ..core.validation import check_number
from ._common import ScalarModel, Table, as_table, eval_rows, feature_indices
from ._grid import is_ordered, levels, quantile_edges

__all__ = ["ale", "ALE"]

# Bootstrap replicates are processed in blocks of at most this many (replicate, row) weights.
_BLOCK = 2_000_000


@dataclass(eq=False)
class ALE:
    """Accumulated local effects of one feature (first order) or of a pair (second order).

    Attributes
    ----------
    feature_names : list of str
    kind : {"numeric", "categorical", "second-order"}
    grid : list of ndarray
        Numeric: the bin edges, shape (K+1,). Categorical: the levels in the order used, (K,).
        Second order: the edges of both features.
    values : ndarray, shape (K+1,), (K,) or (K1+1, K2+1)
        The centred effect at each edge / level / grid node. Raw model units.
    counts : ndarray of int, shape (K,), (K,) or (K1, K2)
        Rows per bin / level / cell.
    lower, upper : ndarray or None
        The bootstrap percentile band at ``confidence`` (None without bootstrap).
    std : ndarray or None
        The bootstrap standard deviation.
    confidence : float
    n_bootstrap : int
    feature_values : list of ndarray, shape (n,)
        The data values of each feature (for the rug).
    n_empty_cells : int
        Second order: cells without rows, filled from their nearest non-empty cell (as ALEPlot).
    target, output_name : str
        The explained output and the model function called.
    n_evals : int
        Rows the model evaluated.
    params : dict
    """

    feature_names: list[str]
    kind: str
    grid: list[np.ndarray]
    values: np.ndarray
    counts: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    std: np.ndarray | None
    confidence: float
    n_bootstrap: int
    feature_values: list[np.ndarray]
    target: str
    output_name: str
    n_evals: int
    n_empty_cells: int = 0
    params: dict = field(default_factory=dict)

    def to_frame(self):
        """The numbers as a pandas DataFrame: one row per edge / level (first order) with
        ``effect``, ``count`` (rows in the bin ending at that edge; 0 at the first edge) and the
        band; or one row per grid node (second order)."""
        import pandas as pd

        if self.kind == "second-order":
            g1, g2 = np.meshgrid(self.grid[0], self.grid[1], indexing="ij")
            df = pd.DataFrame({self.feature_names[0]: g1.ravel(), self.feature_names[1]: g2.ravel(),
                               "effect": self.values.ravel()})
        else:
            counts = self.counts if self.kind == "categorical" else np.concatenate([[0], self.counts])
            df = pd.DataFrame({self.feature_names[0]: self.grid[0], "effect": self.values, "count": counts})
        if self.lower is not None:
            df["lower"], df["upper"], df["std"] = self.lower.ravel(), self.upper.ravel(), self.std.ravel()
        return df

    def plot(self, ax=None, **kwargs):
        """Draw it: the effect with its band and a rug of the data (numeric), points with error
        bars per level (categorical), a contour map (second order). See
        :class:`lumos.display.effects.ALEDisplay`."""
        from ..display.effects import ALEDisplay

        return ALEDisplay.from_result(self).plot(ax=ax, **kwargs)


def ale(model: Any, X: Any, features: Any, *, target: Any = None, bins: Any = None,
        categorical_features: Any = None, order: Sequence | None = None, n_bootstrap: int = 200,
        confidence: float = 0.95, seed: Any = 0, output: str = "auto", batch_size: int | None = None,
        progress: bool | None = None) -> ALE:
    """Accumulated local effects of one feature, or the second-order effect of a pair.

    Apley & Zhu (2020).

    Parameters
    ----------
    model : callable, scikit-learn estimator/pipeline, xgboost/lightgbm model or torch module
    X : ndarray or DataFrame, shape (n, p)
        The data; column names and dtypes are kept for the model.
    features : str or int, or a pair of numeric features
    target : None, int, class label or callable, default None
        As in :func:`lumos.effects.partial_dependence` (a binary classifier: the positive class).
    bins : int, array of edges, or a pair of them, optional
        Number of quantile bins (default 20; 10 per feature for a pair), or the edges themselves
        (sorted, spanning the data). Ignored for categorical features.
    categorical_features : sequence or bool mask, optional
        Numeric-coded columns to treat as categorical.
    order : sequence of levels, optional
        The order of a categorical feature's levels. Default: an ordered pandas Categorical keeps
        its order, others are ordered by similarity (Apley & Zhu 2020).
    n_bootstrap : int, default 200
        Bootstrap replicates for the band (0: no band). They reweight the rows' local effects and
        cost no model evaluations.
    confidence : float, default 0.95
        Coverage of the percentile band.
    seed : int or numpy Generator, default 0
        For the bootstrap.
    output, batch_size, progress
        As in :func:`lumos.effects.partial_dependence`.

    Returns
    -------
    ALE
    """
    table = as_table(X, categorical_features)
    feats = [features] if isinstance(features, (str, int, np.integer)) or not isinstance(features, Sequence) \
        else list(features)
    if len(feats) not in (1, 2):
        raise ValueError(f"features must be one feature or a pair; got {len(feats)}")
    cols = feature_indices(table, feats)
    n_bootstrap = check_number(n_bootstrap, "n_bootstrap", low=0, integer=True)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    f = ScalarModel(model, table, target, output, batch_size)
    gen = make_rng(seed)
    params = {"features": [table.names[j] for j in cols], "bins": bins if np.ndim(bins) == 0 else "custom",
              "n_bootstrap": n_bootstrap, "confidence": confidence, "output": output}
    for j in cols:
        if not table.categorical[j] and np.isnan(table.numeric(j)).any():
            raise ValueError(f"feature {table.names[j]!r} has missing values; ALE needs a value in every row")

    if len(cols) == 2:
        if table.categorical[cols].any():
            raise ValueError("second-order ALE needs two numeric features")
        bb = (10, 10) if bins is None else (bins if isinstance(bins, (tuple, list)) and len(bins) == 2
                                           else (bins, bins))
        res = _ale_2d(f, table, cols, bb, n_bootstrap, confidence, gen, progress)
    elif table.categorical[cols[0]]:
        res = _ale_categorical(f, table, cols[0], order, n_bootstrap, confidence, gen, progress)
    else:
        res = _ale_numeric(f, table, cols[0], 20 if bins is None else bins, n_bootstrap, confidence,
                           gen, progress)
    kind, grid, values, counts, boot, empty = res
    lower = upper = std = None
    if boot is not None:
        a = (1 - confidence) / 2
        lower, upper = np.quantile(boot, [a, 1 - a], axis=0)
        std = boot.std(axis=0, ddof=1) if len(boot) > 1 else np.zeros_like(values)
    return ALE(
        feature_names=[table.names[j] for j in cols], kind=kind, grid=grid, values=values,
        counts=counts, lower=lower, upper=upper, std=std, confidence=float(confidence),
        n_bootstrap=n_bootstrap,
        feature_values=[table.values[:, j].copy() if table.categorical[j] else table.numeric(j) for j in cols],
        target=f.description, output_name=f.output_name, n_evals=f.n_evals, n_empty_cells=empty,
        params=params,
    )


# --------------------------------------------------------------------------------- helpers

def _edges(x: np.ndarray, bins: Any, name: str) -> np.ndarray:
    if np.ndim(bins) == 0:
        return quantile_edges(x, check_number(bins, "bins", low=1, integer=True))
    edges = np.unique(np.asarray(bins, dtype=np.float64))
    if edges.ndim != 1 or len(edges) < 2 or not np.isfinite(edges).all():
        raise ValueError(f"bins for {name!r} must be an int or at least two finite edges")
    if x.min() < edges[0] or x.max() > edges[-1]:
        raise ValueError(
            f"bins for {name!r} must span the data [{x.min():g}, {x.max():g}]; got [{edges[0]:g}, {edges[-1]:g}]"
        )
    return edges


def _bin_of(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """0-based bin of each value: bin k is (edges[k], edges[k+1]], the first one closed."""
    return np.clip(np.searchsorted(edges, x, side="left"), 1, len(edges) - 1) - 1


def _draw_blocks(n: int, n_bootstrap: int, gen: np.random.Generator):
    """Bootstrap draws (row indices, shape (b, n)) in blocks of replicates. All draws come from
    ``gen`` in a fixed order, so the result depends only on the seed."""
    per = max(1, _BLOCK // max(n, 1))
    done = 0
    while done < n_bootstrap:
        b = min(per, n_bootstrap - done)
        yield gen.integers(0, n, size=(b, n))
        done += b


def _grouped(groups: np.ndarray, n_groups: int, idx: np.ndarray | None, values: np.ndarray | None = None):
    """Per-group sums of ``values`` (or counts) over the rows of each replicate: ``idx`` holds the
    drawn rows of each replicate (shape (B, n)); None means the data itself (B = 1)."""
    if idx is None:
        return np.bincount(groups, weights=values, minlength=n_groups)[None, :]
    B = idx.shape[0]
    flat = (groups[idx] + n_groups * np.arange(B)[:, None]).ravel()
    w = None if values is None else values[idx].ravel()
    return np.bincount(flat, weights=w, minlength=B * n_groups).reshape(B, n_groups).astype(np.float64)


def _bootstrap(fn, n: int, n_bootstrap: int, gen) -> np.ndarray | None:
    if n_bootstrap == 0:
        return None
    return np.concatenate([fn(idx) for idx in _draw_blocks(n, n_bootstrap, gen)])


# --------------------------------------------------------------------------------- numeric

def _accumulate_numeric(bin_idx, delta, K, idx, fallback):
    counts = _grouped(bin_idx, K, idx)
    sums = _grouped(bin_idx, K, idx, delta)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), fallback)
    fJ = np.concatenate([np.zeros((len(mean), 1)), np.cumsum(mean, axis=1)], axis=1)
    # ALEPlot's centring: the data average of the effect, each row taking the mean of its bin's
    # two edge values.
    centre = (counts * (fJ[:, :-1] + fJ[:, 1:]) / 2).sum(1) / counts.sum(1)
    return fJ - centre[:, None], mean


def _ale_numeric(f: ScalarModel, table: Table, j: int, bins, n_bootstrap, confidence, gen, progress):
    x = table.numeric(j)
    edges = _edges(x, bins, table.names[j])
    K = len(edges) - 1
    b = _bin_of(x, edges)
    n = table.n
    rows = np.concatenate([np.arange(n), np.arange(n)])
    vals = np.concatenate([edges[b], edges[b + 1]])[:, None]
    out = eval_rows(f, table.values, rows, [j], vals, progress=progress, desc="ALE")
    delta = out[n:] - out[:n]
    values, mean = _accumulate_numeric(b, delta, K, None, np.zeros(K))
    boot = _bootstrap(lambda idx: _accumulate_numeric(b, delta, K, idx, mean[0])[0], n, n_bootstrap, gen)
    return "numeric", [edges], values[0], np.bincount(b, minlength=K), boot, 0


# ----------------------------------------------------------------------------- categorical

def _similarity_order(table: Table, j: int, lv: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Apley & Zhu's ordering of the levels of categorical column ``j``: the summed distances
    between the levels' conditional distributions of every other feature (Kolmogorov-Smirnov for
    numeric, total variation for categorical), reduced to one dimension by classical
    multidimensional scaling. Returns a permutation of ``range(len(lv))``."""
    K = len(lv)
    D = np.zeros((K, K))
    for c in range(table.p):
        if c == j:
            continue
        if table.categorical[c]:
            other = table.values[:, c]
            _, oc = np.unique(np.asarray([str(v) for v in other]), return_inverse=True)
            tab = np.zeros((K, oc.max() + 1))
            np.add.at(tab, (code, oc), 1.0)
            prop = tab / tab.sum(1, keepdims=True)
            D += 0.5 * np.abs(prop[:, None, :] - prop[None, :, :]).sum(-1)
        else:
            x = table.numeric(c)
            ok = np.isfinite(x)
            q = np.quantile(x[ok], np.linspace(0, 1, 100))
            ecdf = np.zeros((K, len(q)))
            for k in range(K):
                xs = np.sort(x[ok & (code == k)])
                if len(xs):
                    ecdf[k] = np.searchsorted(xs, q, side="right") / len(xs)
            D += np.abs(ecdf[:, None, :] - ecdf[None, :, :]).max(-1)
    # Classical (Torgerson) MDS to one coordinate: the leading eigenvector of the double-centred
    # squared distances.
    J = np.eye(K) - 1.0 / K
    B = -0.5 * J @ (D ** 2) @ J
    w, V = np.linalg.eigh(B)
    if w[-1] <= 1e-12 * max(1.0, np.abs(w).max()):
        return np.arange(K)  # the levels look alike: keep their sorted order
    coord = V[:, -1] * np.sqrt(w[-1])
    if coord[0] > coord[-1]:  # the eigenvector's sign is arbitrary: make the order deterministic
        coord = -coord
    return np.argsort(coord, kind="stable")


def _accumulate_categorical(code, d_up, d_down, K, idx, fallback):
    counts = _grouped(code, K, idx)
    # Jump k (between levels k and k+1): rows of level k moved up, rows of level k+1 moved down.
    # Rows without such a move carry 0 (and the last level's "up" group K-1 is dropped).
    num = (_grouped(code, K, idx, d_up) + _grouped((code - 1) % K, K, idx, d_down))[:, :K - 1]
    den = counts[:, :-1] + counts[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        jump = np.where(den > 0, num / np.where(den > 0, den, 1), fallback)
    fJ = np.concatenate([np.zeros((len(jump), 1)), np.cumsum(jump, axis=1)], axis=1)
    centre = (counts * fJ).sum(1) / counts.sum(1)
    return fJ - centre[:, None], jump


def _ale_categorical(f: ScalarModel, table: Table, j: int, order, n_bootstrap, confidence, gen, progress):
    lv = levels(table, j)
    col = table.values[:, j]
    if order is not None:
        given = np.empty(len(order), dtype=object)
        given[:] = list(order)
        if len(given) != len(lv) or set(given.tolist()) != set(lv.tolist()):
            raise ValueError(f"order must list each level of {table.names[j]!r} once: {lv.tolist()}")
        lv = given
    lookup = {v: k for k, v in enumerate(lv.tolist())}
    code = np.array([lookup[v] for v in col.tolist()], dtype=np.int64)
    if order is None and not is_ordered(table, j) and len(lv) > 2:
        perm = _similarity_order(table, j, lv, code)
        lv = lv[perm]
        code = np.argsort(perm)[code]
    K = len(lv)
    if K < 2:
        raise ValueError(f"feature {table.names[j]!r} has a single level; its effect is undefined")
    n = table.n
    up_rows = np.flatnonzero(code < K - 1)
    down_rows = np.flatnonzero(code > 0)
    rows = np.concatenate([np.arange(n), up_rows, down_rows])
    vals = np.empty((len(rows), 1), dtype=object)
    vals[:n, 0] = col
    vals[n:n + len(up_rows), 0] = lv[code[up_rows] + 1]
    vals[n + len(up_rows):, 0] = lv[code[down_rows] - 1]
    out = eval_rows(f, table.values, rows, [j], vals, progress=progress, desc="ALE")
    base = out[:n]
    d_up, d_down = np.zeros(n), np.zeros(n)
    d_up[up_rows] = out[n:n + len(up_rows)] - base[up_rows]
    d_down[down_rows] = base[down_rows] - out[n + len(up_rows):]
    values, jump = _accumulate_categorical(code, d_up, d_down, K, None, np.zeros(K - 1))
    boot = _bootstrap(lambda idx: _accumulate_categorical(code, d_up, d_down, K, idx, jump[0])[0], n,
                      n_bootstrap, gen)
    return "categorical", [lv], values[0], np.bincount(code, minlength=K), boot, 0


# ---------------------------------------------------------------------------- second order

def _accumulate_2d(b1, b2, delta, K1, K2, idx, fallback_cell, fallback1, fallback2):
    B = 1 if idx is None else len(idx)
    cells = b1 * K2 + b2
    cnt = _grouped(cells, K1 * K2, idx)
    sums = _grouped(cells, K1 * K2, idx, delta)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, sums / np.where(cnt > 0, cnt, 1), fallback_cell)
    cnt = cnt.reshape(B, K1, K2)
    fJ = np.zeros((B, K1 + 1, K2 + 1))
    fJ[:, 1:, 1:] = np.cumsum(np.cumsum(mean.reshape(B, K1, K2), axis=1), axis=2)
    # Remove the first-order effects the accumulated double differences still contain (ALEPlot):
    # the average local change along each axis, accumulated, is subtracted.
    n1, n2 = cnt.sum(2), cnt.sum(1)
    d1 = fJ[:, 1:, :] - fJ[:, :-1, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        a1 = np.where(n1 > 0, (cnt * (d1[:, :, :-1] + d1[:, :, 1:]) / 2).sum(2) / np.where(n1 > 0, n1, 1),
                      fallback1)
        d2 = fJ[:, :, 1:] - fJ[:, :, :-1]
        a2 = np.where(n2 > 0, (cnt * (d2[:, :-1, :] + d2[:, 1:, :]) / 2).sum(1) / np.where(n2 > 0, n2, 1),
                      fallback2)
    f1 = np.concatenate([np.zeros((B, 1)), np.cumsum(a1, axis=1)], axis=1)
    f2 = np.concatenate([np.zeros((B, 1)), np.cumsum(a2, axis=1)], axis=1)
    fJ = fJ - f1[:, :, None] - f2[:, None, :]
    corners = (fJ[:, :-1, :-1] + fJ[:, :-1, 1:] + fJ[:, 1:, :-1] + fJ[:, 1:, 1:]) / 4
    centre = (cnt * corners).sum((1, 2)) / cnt.sum((1, 2))
    return fJ - centre[:, None, None], mean, a1, a2


def _ale_2d(f: ScalarModel, table: Table, cols, bins, n_bootstrap, confidence, gen, progress):
    j1, j2 = cols
    x1, x2 = table.numeric(j1), table.numeric(j2)
    e1, e2 = _edges(x1, bins[0], table.names[j1]), _edges(x2, bins[1], table.names[j2])
    K1, K2 = len(e1) - 1, len(e2) - 1
    b1, b2 = _bin_of(x1, e1), _bin_of(x2, e2)
    n = table.n
    lo1, hi1, lo2, hi2 = e1[b1], e1[b1 + 1], e2[b2], e2[b2 + 1]
    rows = np.tile(np.arange(n), 4)
    vals = np.stack([np.concatenate([hi1, lo1, hi1, lo1]), np.concatenate([hi2, hi2, lo2, lo2])], axis=1)
    out = eval_rows(f, table.values, rows, [j1, j2], vals, progress=progress, desc="ALE (2-D)")
    delta = out[:n] - out[n:2 * n] - out[2 * n:3 * n] + out[3 * n:]
    # Cells without rows take the mean double difference of their nearest non-empty cell, with
    # cell centres scaled by each feature's range (as ALEPlot).
    cells = b1 * K2 + b2
    cnt = np.bincount(cells, minlength=K1 * K2)
    sums = np.bincount(cells, weights=delta, minlength=K1 * K2)
    mean = np.zeros(K1 * K2)
    full = cnt > 0
    mean[full] = sums[full] / cnt[full]
    if not full.all():
        from scipy.spatial import cKDTree

        c1 = (e1[:-1] + e1[1:]) / 2 / max(e1[-1] - e1[0], 1e-300)
        c2 = (e2[:-1] + e2[1:]) / 2 / max(e2[-1] - e2[0], 1e-300)
        g1, g2 = np.meshgrid(c1, c2, indexing="ij")
        centres = np.stack([g1.ravel(), g2.ravel()], axis=1)
        _, nn = cKDTree(centres[full]).query(centres[~full], k=1)
        mean[~full] = mean[full][nn]
    values, _, a1, a2 = _accumulate_2d(b1, b2, delta, K1, K2, None, mean, np.zeros(K1), np.zeros(K2))
    boot = _bootstrap(lambda idx: _accumulate_2d(b1, b2, delta, K1, K2, idx, mean, a1[0], a2[0])[0], n,
                      n_bootstrap, gen)
    return "second-order", [e1, e2], values[0], cnt.reshape(K1, K2), boot, int((~full).sum())
