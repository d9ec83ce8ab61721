"""Partial dependence and individual conditional expectation (ICE) curves.

Friedman (2001), "Greedy Function Approximation: A Gradient Boosting Machine" (partial
dependence); Goldstein, Kapelner, Bleich & Pitkin (2015), "Peeking Inside the Black Box:
Visualizing Statistical Learning With Plots of Individual Conditional Expectation" (ICE, centred
and derivative ICE).

The ICE curve of row ``i`` is ``f(x_S = v, x_C = x_iC)`` over a grid of values ``v`` of the
feature(s) ``S``; the partial dependence is their average. All ``n × G`` modified rows are built
lazily and scored one chunk of ``batch_size`` rows per model call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..core.validation import check_number
from ._common import ScalarModel, Table, as_table, check_sample_weight, eval_grid, feature_indices, subsample
from ._grid import GRIDS, check_percentiles, feature_grid, user_grid

__all__ = ["partial_dependence", "PartialDependence"]

KINDS = ("both", "average", "individual")
METHODS = ("auto", "brute", "recursion")


@dataclass(eq=False)
class PartialDependence:
    """Partial dependence of one feature or a pair, with the ICE curves it averages.

    Attributes
    ----------
    feature_names : list of str
        The 1 or 2 features, by name.
    grid : list of ndarray
        The grid of each feature: numbers, or the levels of a categorical feature.
    average : ndarray, shape (G,) or (G1, G2)
        The partial dependence at each grid point.
    ice : ndarray, shape (n, G) or (n, G1, G2), or None
        The ICE curve of every row (None for ``kind="average"``).
    anchor : object or None
        The value the centred ICE curves are anchored at (1-D only).
    anchor_output : ndarray, shape (n,), or None
        ``f`` of each row with the feature set to ``anchor``.
    categorical : list of bool
    feature_values : list of ndarray, shape (n,)
        The data values of each feature over the rows used (for rugs and deciles).
    target : str
        Which model output was explained (for example ``"predict_proba[:, 1] (positive class)"``).
    output_name : str
        The model function called (``predict_proba``, ``predict``, ...).
    method : {"brute", "recursion"}
        How the average was computed.
    n_evals : int
        Rows the model evaluated.
    params : dict
        The call's parameters.
    """

    feature_names: list[str]
    grid: list[np.ndarray]
    average: np.ndarray
    ice: np.ndarray | None
    anchor: Any
    anchor_output: np.ndarray | None
    categorical: list[bool]
    feature_values: list[np.ndarray]
    target: str
    output_name: str
    method: str
    n_evals: int
    params: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.feature_values[0])

    def centred_ice(self) -> np.ndarray:
        """ICE curves minus each row's value at :attr:`anchor` (Goldstein et al. 2015's c-ICE):
        every curve passes through 0 at the anchor, so differences in shape stand out."""
        if self.ice is None or self.anchor_output is None:
            raise ValueError("centred ICE needs the ICE curves of a single feature (kind='both' or 'individual')")
        return self.ice - self.anchor_output[:, None]

    def derivative_ice(self) -> np.ndarray:
        """Derivative ICE (d-ICE): ``d ICE_i / d x`` at each grid point, by second-order finite
        differences on the grid (``numpy.gradient``; one-sided at the ends). Rows whose
        derivatives differ show interactions with other features (Goldstein et al. 2015)."""
        self._check_derivative()
        return np.gradient(self.ice, self.grid[0], axis=1)

    def derivative_average(self) -> np.ndarray:
        """Derivative of the partial dependence on the grid."""
        self._check_derivative(need_ice=False)
        return np.gradient(self.average, self.grid[0])

    def _check_derivative(self, need_ice: bool = True) -> None:
        if len(self.feature_names) != 1 or self.categorical[0]:
            raise ValueError("derivatives need a single numeric feature")
        if need_ice and self.ice is None:
            raise ValueError("derivative ICE needs the ICE curves (kind='both' or 'individual')")
        if len(self.grid[0]) < 2:
            raise ValueError("derivatives need at least two grid points")

    def to_frame(self, kind: str = "average"):
        """The numbers as a pandas DataFrame.

        ``kind="average"``: one row per grid point with the feature value(s), ``average`` and, for
        one feature with ICE, the spread of the ICE curves (``ice_std``) and of the centred ones.
        ``kind="individual"``: long format, one row per (data row, grid point), with ``row``, the
        feature value(s), ``prediction`` and (one feature) ``centred``.
        """
        import pandas as pd

        names = self.feature_names
        if kind == "average":
            if len(names) == 1:
                df = pd.DataFrame({names[0]: self.grid[0], "average": self.average})
                if self.ice is not None:
                    df["ice_std"] = self.ice.std(axis=0)
                    df["centred_ice_std"] = self.centred_ice().std(axis=0)
                return df
            g1, g2 = np.meshgrid(self.grid[0], self.grid[1], indexing="ij")
            return pd.DataFrame({names[0]: g1.ravel(), names[1]: g2.ravel(), "average": self.average.ravel()})
        if kind == "individual":
            if self.ice is None:
                raise ValueError("this result holds no ICE curves (computed with kind='average')")
            n = self.ice.shape[0]
            if len(names) == 1:
                G = len(self.grid[0])
                return pd.DataFrame({
                    "row": np.repeat(np.arange(n), G), names[0]: np.tile(self.grid[0], n),
                    "prediction": self.ice.ravel(), "centred": self.centred_ice().ravel(),
                })
            g1, g2 = np.meshgrid(self.grid[0], self.grid[1], indexing="ij")
            G = g1.size
            return pd.DataFrame({"row": np.repeat(np.arange(n), G), names[0]: np.tile(g1.ravel(), n),
                                 names[1]: np.tile(g2.ravel(), n), "prediction": self.ice.ravel()})
        raise ValueError(f"kind must be 'average' or 'individual'; got {kind!r}")

    def plot(self, ax=None, **kwargs):
        """Draw it: ICE curves with the partial dependence over them (1 numeric feature), points
        per level (categorical), a contour map (2 features). See
        :class:`lumos.display.effects.PartialDependenceDisplay`."""
        from ..display.effects import PartialDependenceDisplay

        return PartialDependenceDisplay.from_result(self).plot(ax=ax, **kwargs)


def _as_features(features: Any) -> list:
    """One effect's features: a single feature, or a pair given as a tuple."""
    if isinstance(features, tuple):
        feats = list(features)
        if len(feats) not in (1, 2):
            raise ValueError(f"features: a tuple is a pair of features (a two-way effect); got {len(feats)} "
                             "entries (a list gives several one-way effects)")
        for f in feats:
            if isinstance(f, (tuple, list)):
                raise ValueError(f"features: a pair holds two features, not {f!r}")
        return feats
    return [features]


def partial_dependence(model: Any, X: Any, features: Any, *, target: Any = None,
                       kind: str = "both", grid: str = "uniform", grid_resolution: int | None = None,
                       percentiles: tuple[float, float] = (0.05, 0.95), grid_values: Any = None,
                       categorical_features: Any = None, anchor: Any = None, method: str = "auto",
                       sample_weight: Any = None, max_rows: int | None = None, seed: Any = 0,
                       output: str = "auto", batch_size: int | None = None,
                       progress: bool | None = None) -> PartialDependence | list[PartialDependence]:
    """Partial dependence of ``model`` on one feature or a pair, with ICE curves.

    Friedman (2001); ICE, centred and derivative ICE: Goldstein et al. (2015).

    Parameters
    ----------
    model : callable, scikit-learn estimator/pipeline, xgboost/lightgbm model or torch module
        Seen only through its outputs (:class:`lumos.core.blackbox.BlackBox`): ``predict_proba``
        for classifiers, ``predict`` for regressors (see ``output``).
    X : ndarray or DataFrame, shape (n, p)
        The data averaged over. DataFrames go to the model as DataFrames with their column names
        and dtypes, so pipelines with column transformers and string categories work.
    features : str or int, a tuple of two, or a list of them
        One feature (a one-way effect) or a tuple of two (a two-way effect), by name or position;
        a list of them (``["age", ("age", "income")]``, as scikit-learn) returns a list with one
        result per entry, in order (the other parameters apply to each; ``grid_values`` then
        holds one entry per list entry).
    target : None, int, class label or callable, default None
        Which output is explained. None: a scalar output as is, and for two outputs (a binary
        classifier) the second one, the positive class. More outputs need an explicit column index,
        a class label of a scikit-learn classifier, or a callable ``output -> (rows,)``.
    kind : {"both", "average", "individual"}, default "both"
        Keep the ICE curves ("both", "individual") or only their average ("average", which lets
        ``method="auto"`` use the tree recursion).
    grid : {"uniform", "quantile"}, default "uniform"
        Equally spaced points between the ``percentiles`` of the feature (scikit-learn's grid), or
        the feature's quantiles (points dense where the data is). Features with fewer unique values
        than ``grid_resolution`` use those values; categorical features use their levels.
    grid_resolution : int, optional
        Points per feature: default 50 for one feature, 20 per feature for a pair.
    percentiles : (float, float), default (0.05, 0.95)
        The grid's span, as fractions of the data.
    grid_values : array-like, or a pair of them, optional
        The grid itself, per feature (overrides ``grid``).
    categorical_features : sequence of names/indices or bool mask, optional
        Numeric-coded columns to treat as categorical (string, bool and pandas categorical columns
        are categorical already).
    anchor : value, optional
        Where the centred ICE curves are anchored (one feature): default the first grid point
        (Goldstein et al.'s choice, the minimum). A value off the grid costs ``n`` more rows.
    sample_weight : array-like, shape (n,), optional
        Row weights of the average over ``X``: the partial dependence is the weighted mean of the
        ICE curves (integer weights give the result of ``X`` with each row repeated that many
        times). The recursion shortcut is checked against the weighted average.
    method : {"auto", "brute", "recursion"}, default "auto"
        ``"brute"`` sets the feature and averages the predictions. ``"recursion"`` is
        scikit-learn's weighted tree traversal, which averages over the *training* data stored in
        the trees, not over ``X``. ``"auto"`` uses it for a scikit-learn ``DecisionTreeRegressor``,
        ``RandomForestRegressor`` or ``GradientBoostingRegressor`` with ``kind="average"`` only where
        it provably gives the brute answer on ``X``: no tree splits on another feature below a split
        on ``features``, and at every other split the fractions of ``X`` going left and right equal
        the training fractions stored in the tree (for example stumps evaluated on their training
        data). Otherwise brute; :attr:`PartialDependence.method` says which was used.
    max_rows : int, optional
        Average over a random sample of this many rows (drawn with ``seed``).
    seed : int or numpy Generator, default 0
        For ``max_rows``.
    output : {"auto", "predict_proba", "decision_function", "predict"}
        Which function of an estimator to call.
    batch_size : int, optional
        Rows per model call (default 8192). Results do not depend on it.
    progress : bool, optional
        Progress bar (default: on a terminal, for long work).

    Returns
    -------
    PartialDependence, or a list of them for a list of features
    """
    if isinstance(features, list):
        if not features:
            raise ValueError("features: the list is empty")
        if grid_values is not None and (not isinstance(grid_values, (list, tuple)) or len(grid_values) != len(features)):
            raise ValueError(f"grid_values: with a list of {len(features)} features give one grid per entry")
        for f in features:
            if isinstance(f, list):
                raise ValueError(f"features: {f!r} inside the list; a pair of features is a tuple")
        return [partial_dependence(
            model, X, f, target=target, kind=kind, grid=grid,
            grid_resolution=grid_resolution, percentiles=percentiles,
            grid_values=None if grid_values is None else grid_values[i],
            categorical_features=categorical_features, anchor=anchor, method=method,
            sample_weight=sample_weight, max_rows=max_rows, seed=seed, output=output,
            batch_size=batch_size, progress=progress) for i, f in enumerate(features)]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}; got {grid!r}")
    check_percentiles(percentiles)
    table = as_table(X, categorical_features)
    weights = check_sample_weight(sample_weight, table.n)
    feats = _as_features(features)
    cols = feature_indices(table, feats)
    k = len(cols)
    if grid_resolution is None:
        grid_resolution = 50 if k == 1 else 20
    grid_resolution = check_number(grid_resolution, "grid_resolution", low=2, integer=True)
    if grid_values is not None:
        gv = [grid_values] if k == 1 else list(grid_values)
        if len(gv) != k:
            raise ValueError(f"grid_values must hold one grid per feature ({k}); got {len(gv)}")
        grids = [user_grid(table, j, v) for j, v in zip(cols, gv)]
    else:
        grids = [feature_grid(table, j, grid, grid_resolution, percentiles) for j in cols]
    rows = subsample(table.n, max_rows, seed)
    if rows is not None:
        table = table.take(rows)
        weights = None if weights is None else weights[rows]
    categorical = [bool(table.categorical[j]) for j in cols]
    f = ScalarModel(model, table, target, output, batch_size)

    mesh = np.meshgrid(*grids, indexing="ij")
    shape = tuple(len(g) for g in grids)
    points = np.empty((int(np.prod(shape)), k), dtype=object if table.values.dtype == object else np.float64)
    for c, m in enumerate(mesh):
        points[:, c] = m.ravel()

    anchor_value, anchor_col, extra = None, None, None
    if k == 1 and kind != "average":
        anchor_value = grids[0][0] if anchor is None else anchor
        hit = np.flatnonzero(grids[0] == anchor_value) if categorical[0] else \
            np.flatnonzero(np.asarray(grids[0], float) == float(anchor_value))
        if len(hit):
            anchor_col = int(hit[0])
        else:
            if not categorical[0] and table.integer[cols[0]] and float(anchor_value) != round(float(anchor_value)):
                raise ValueError(f"anchor for integer column {table.names[cols[0]]!r} must be an integer")
            extra = np.array([[anchor_value]], dtype=points.dtype)
    elif anchor is not None:
        raise ValueError("anchor applies to the ICE curves of a single feature (kind='both' or 'individual')")

    used = "brute"
    average = ice = anchor_output = None
    if method != "brute" and kind == "average":
        rec = _try_recursion(model, table, cols, grids, f, explicit=(method == "recursion"), weights=weights)
        if rec is not None:
            average, used = rec.reshape(shape), "recursion"
    elif method == "recursion":
        raise ValueError("method='recursion' gives only the average; use kind='average' (or method='brute' for ICE)")
    if average is None:
        evaluated = points if extra is None else np.concatenate([points, extra])
        out = eval_grid(f, table.values, cols, evaluated, progress=progress, desc="partial dependence")
        if extra is not None:
            anchor_output, out = out[:, -1].copy(), out[:, :-1]
        curves = out.reshape((table.n,) + shape)
        average = curves.mean(axis=0) if weights is None else np.average(curves, axis=0, weights=weights)
        if kind != "average":
            ice = curves
            if anchor_col is not None:
                anchor_output = curves[:, anchor_col].copy()
        else:
            anchor_output = None

    params = {"features": [table.names[j] for j in cols], "kind": kind, "grid": grid,
              "grid_resolution": grid_resolution, "percentiles": list(map(float, percentiles)),
              "custom_grid": grid_values is not None, "max_rows": max_rows, "method": method,
              "output": output, "target": target if not callable(target) else f.description,
              "sample_weight": weights is not None}
    return PartialDependence(
        feature_names=[table.names[j] for j in cols], grid=grids, average=average, ice=ice,
        anchor=anchor_value, anchor_output=anchor_output, categorical=categorical,
        feature_values=[table.values[:, j].copy() if categorical[c] else table.numeric(j)
                        for c, j in enumerate(cols)],
        target=f.description, output_name=f.output_name, method=used, n_evals=f.n_evals,
        params=params,
    )


# ----------------------------------------------------------------------------- tree recursion

def _tree_estimators(model):
    """The fitted scikit-learn trees of a model "auto" may shortcut, or None."""
    try:
        from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
        from sklearn.tree import DecisionTreeRegressor
    except ImportError:  # pragma: no cover
        return None
    if type(model) is DecisionTreeRegressor:
        return [model]
    if type(model) is RandomForestRegressor:
        return list(model.estimators_)
    if type(model) is GradientBoostingRegressor and (model.init is None or model.init == "zero"):
        return list(np.ravel(model.estimators_))
    return None


def _recursion_matches_brute(trees, X32: np.ndarray, cols: Sequence[int], weights=None) -> bool:
    """True where the recursion's average over the trees' training fractions equals the brute
    average over the rows of ``X32`` (see :func:`partial_dependence`, ``method``)."""
    S = set(cols)
    root_left = _RootSplits(X32, weights)
    tree_arrays = [est.tree_ for est in trees]
    stumps = [tr for tr in tree_arrays if tr.node_count == 3]
    if stumps:
        # Stumps, all at once: a split on S is exact; any other split sends the share of X below
        # its threshold left in brute, the training share in the recursion: they must agree.
        feat = np.array([tr.feature[0] for tr in stumps])
        other = ~np.isin(feat, list(S))
        if other.any():
            thr = np.array([tr.threshold[0] for tr in stumps])[other]
            w_root = np.array([tr.weighted_n_node_samples[0] for tr in stumps])[other]
            w_left = np.array([tr.weighted_n_node_samples[1] for tr in stumps])[other]
            share = np.array([root_left(int(j), float(s)) for j, s in zip(feat[other], thr)])
            if not np.allclose(share * w_root, w_left * root_left.total, rtol=1e-12, atol=0):
                return False
    for tree in tree_arrays:
        if tree.node_count == 3:
            continue
        feat, left, right = tree.feature, tree.children_left, tree.children_right
        w = tree.weighted_n_node_samples
        counts = None
        stack = [(0, False)]
        while stack:
            node, below_s = stack.pop()
            if left[node] < 0:  # leaf
                continue
            on_s = int(feat[node]) in S
            if not on_s:
                if below_s:
                    return False  # the recursion re-weights rows already routed by x_S: not brute
                if node == 0:
                    # every row reaches the root: its left share is a count of one column below
                    # the threshold (one sort per feature for all trees: stumps need no apply)
                    left_share = root_left(int(feat[0]), float(tree.threshold[0]))
                    if not np.isclose(left_share * w[0], w[left[0]] * root_left.total, rtol=1e-12, atol=0):
                        return False
                    stack.append((left[node], False))
                    stack.append((right[node], False))
                    continue
                if counts is None:
                    # Rows of X per node: leaf counts, summed up the tree (children come after
                    # their parent in scikit-learn's node order).
                    counts = np.bincount(tree.apply(X32), weights=weights,
                                         minlength=tree.node_count).astype(np.float64)
                    for node_id in np.flatnonzero(left >= 0)[::-1]:
                        counts[node_id] = counts[left[node_id]] + counts[right[node_id]]
                # Rows of X reaching this node are routed by their own (non-S) values only, so
                # brute sends the fraction counts[left]/counts[node] left; the recursion w[left]/w[node].
                if not np.isclose(counts[left[node]] * w[node], w[left[node]] * counts[node],
                                  rtol=1e-12, atol=0):
                    return False
            stack.append((left[node], below_s or on_s))
            stack.append((right[node], below_s or on_s))
    return True


class _RootSplits:
    """Rows of ``X`` (their weight) going left at a root split ``x_j <= t``, as the tree routes
    them (float32 values against the float64 threshold): one sort per column, a binary search
    per tree."""

    def __init__(self, X32: np.ndarray, weights=None):
        self.X32, self.weights = X32, weights
        self.total = float(len(X32)) if weights is None else float(np.sum(weights))
        self._sorted: dict[int, tuple] = {}

    def __call__(self, j: int, threshold: float) -> float:
        if j not in self._sorted:
            col = self.X32[:, j].astype(np.float64)
            if self.weights is None:
                self._sorted[j] = (np.sort(col), None)
            else:
                order = np.argsort(col, kind="stable")
                self._sorted[j] = (col[order], np.concatenate([[0.0], np.cumsum(self.weights[order])]))
        values, cw = self._sorted[j]
        k = int(np.searchsorted(values, threshold, side="right"))
        return float(k) if cw is None else float(cw[k])


def _try_recursion(model, table: Table, cols, grids, f: ScalarModel, explicit: bool, weights=None):
    """The recursion's partial dependence (flattened over the grid), or None to go brute."""
    from sklearn.inspection import partial_dependence as sk_pd

    reason = None
    if table.categorical.any():
        reason = "the data has categorical columns"
    elif f.target is not None:
        reason = "a target was given"
    trees = _tree_estimators(model)
    if explicit:
        if reason is None and weights is not None:
            reason = "sample_weight was given (the recursion averages over the training data)"
        if reason is not None:
            raise ValueError(f"method='recursion' is not available: {reason}")
        try:
            res = sk_pd(model, _sk_input(table), [int(c) for c in cols], method="recursion",
                        kind="average", custom_values={int(c): g for c, g in zip(cols, grids)})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"method='recursion' is not available for this model: {exc}") from None
        avg = np.asarray(res["average"])
        wanted = "decision_function" if hasattr(model, "classes_") else "predict"
        if f.bb.score_name != wanted or avg.shape[0] != 1:
            raise ValueError(
                f"method='recursion' computes the {wanted} of a single-output model; pass "
                f"output={wanted!r} (and use method='brute' for multi-output models)"
            )
        f.description = wanted
        return avg[0].ravel() + _gb_offset(model, table)
    if reason is not None or trees is None or f.bb.score_name != "predict":
        return None
    X32 = np.ascontiguousarray(table.values, dtype=np.float32)
    if not _recursion_matches_brute(trees, X32, cols, weights):
        return None
    # The recursion averages over the trees' training weights and the grid is given: X is only
    # validated, so one row is enough (building the whole frame cost more than the recursion).
    res = sk_pd(model, _sk_input(table.take(np.array([0]))), [int(c) for c in cols], method="recursion",
                kind="average", custom_values={int(c): g for c, g in zip(cols, grids)})
    f.description = "predict"
    return np.asarray(res["average"])[0].ravel() + _init_offset(model)


def _init_offset(model) -> float:
    """The constant scikit-learn's recursion leaves out, for the models "auto" shortcuts: a
    gradient boosting regressor's initial prediction (the training mean with ``init=None``, 0
    with ``init="zero"``); 0 for trees and forests, whose recursion holds the whole prediction."""
    from sklearn.ensemble import GradientBoostingRegressor

    if type(model) is GradientBoostingRegressor and model.init is None:
        return float(np.ravel(model.init_.constant_)[0])
    return 0.0


def _sk_input(table: Table):
    if table.labels is None:
        return table.values
    return table.frame(table.values)


def _gb_offset(model, table: Table) -> float:
    """scikit-learn's recursion leaves out a boosting model's constant initial prediction (the
    ``init`` of gradient boosting, the baseline of histogram boosting); recover it as f(x) minus
    the recursion at one full data point, where every tree follows a single path (0 for forests)."""
    from sklearn.inspection import partial_dependence as sk_pd

    X0 = _sk_input(table.take(np.array([0])))
    p = table.p
    res = sk_pd(model, X0, list(range(p)), method="recursion", kind="average",
                custom_values={j: [table.values[0, j]] for j in range(p)})
    raw = model.decision_function(X0) if hasattr(model, "classes_") else model.predict(X0)
    return float(np.ravel(raw)[0] - np.ravel(res["average"])[0])
