"""TreeSHAP: exact Shapley values of tree ensembles, path-dependent or interventional.

Lundberg, Erion & Lee (2018), "Consistent Individualized Feature Attribution for Tree Ensembles"
(path-dependent TreeSHAP, Algorithm 2) and Lundberg et al. (2020), "From local explanations to
global understanding with explainable AI for trees" (interventional TreeSHAP against a background).

How it is computed (pure numpy, no compiled code)
-------------------------------------------------
Every leaf ``l`` of the ensemble is one *path*: its value ``v_l`` and, for each distinct feature
``j`` split on the way from the root (repeated splits on a feature are merged into one interval),
the *zero fraction* ``z_j`` (the share of training cover that follows the path at the splits on
``j``) and, for an explained row ``x``, the *one fraction* ``o_j ∈ {0, 1}`` (does ``x_j`` lie in
the path's interval). The path-dependent value function is
``v(S) = Σ_l v_l Π_{j∈S} o_j Π_{j∉S} z_j`` and its Shapley values are, per path,

    φ_i = v_l (o_i − z_i) ∫_0^1 Π_{j≠i} (z_j + u (o_j − z_j)) du,

because the Shapley weight ``|S|! (D−|S|−1)! / D!`` is the Beta integral ``∫ u^|S| (1−u)^(D−1−|S|)``.
The integrand is a polynomial of degree ``D − 1``, so Gauss-Legendre quadrature with ``ceil(D/2)``
nodes is exact (the polynomial view of Linear TreeShap, Yu et al. 2022; per-path work as in
GPUTreeShap, Mitchell et al. 2022). A path's contribution depends on ``x`` only through the ``D``
bits ``o`` — so when a path has fewer possible patterns (``2^D``) than there are rows, the
contribution of every pattern is tabulated once per path and each row just looks its pattern up
(the precomputation of Fast TreeSHAP v2, Yang 2021); longer paths are computed row by row with
one small matrix product per path. Rows × paths are processed as numpy arrays in chunks.

The interventional game ``v(S) = mean_b f(x_S, b_S̄)`` is, per path and background row ``b``,
the same game with ``z_j`` replaced by ``b``'s bit. A pair ``(x, b)`` contributes only when no
condition of the path fails for both; with ``U_x``, ``U_b`` the sets of failed conditions the
contribution is a Beta integral in ``|U_x|`` and ``|U_b|``. Summed over the background it is

    φ_i = −v/n_b ∫ (1−u)^(m−1) Z(u)[p_x] du                 (i ∈ U_x, m = |U_x|)
    φ_i =  v/n_b ∫ (1−u)^m (Z(u)[p_x] − Z(u)[p_x∖i]) / u du  (i ∉ U_x)

with ``Z(u)[p] = Σ_{b: U_b ⊆ p} u^|U_b|`` the subset-sum (zeta) transform of the background's
failure-pattern histogram. Its cost per path is ``O(2^D D²)``, independent of the number of
background rows; the per-row work is again one table look-up per path (very long paths fall back
to the pair-by-pair formula).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.execution import progress_bar
from ..core.explanation import Explanation
from ..core.registry import register
from ..core.targets import resolve_target

__all__ = ["tree_shap", "TreeEnsemble", "parse_trees"]

# Elements per work array (rows × paths × slots); keeps temporaries in the few-MB range.
_WORK = 1 << 20
# Largest table (paths × patterns × slots × nodes) built at once.
_TABLE = 1 << 21


# =============================================================================================
# The common tree representation
# =============================================================================================
@dataclass
class TreeEnsemble:
    """All trees of a model as flat node arrays (node indices are global across trees).

    A row goes to ``left`` at an internal node when ``x[feature] <= threshold``, to ``left`` when
    ``x[feature]`` is missing and ``nan_left`` is set, else to ``right``. The model's raw output
    is ``offset + Σ_trees value[leaf]``, one column per output.

    Attributes
    ----------
    left, right : ndarray of int64, shape (N,)
        Children (``-1`` at leaves).
    feature : ndarray of int64, shape (N,)
        Split feature (``-1`` at leaves).
    threshold : ndarray of float64, shape (N,)
    nan_left : ndarray of bool, shape (N,)
    cover : ndarray of float64, shape (N,)
        Training cover (weighted sample count or hessian sum) of each node.
    value : ndarray of float64, shape (N, K)
        Each leaf's contribution to each of the ``K`` outputs (scaling already applied).
    roots : ndarray of int64, shape (T,)
    offset : ndarray of float64, shape (K,)
        The constant added to the trees' sum (initial prediction, base score).
    n_features : int
    input_dtype : numpy dtype
        The precision the model compares features in (float32 for scikit-learn trees and
        XGBoost: rows are rounded to it before comparing).
    output_name, output_space, model_type : str
        What is explained (recorded in the explanation's meta).
    reference : callable, optional
        ``X -> (n, K)`` the model's own raw output, to check the parse against.
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    nan_left: np.ndarray
    cover: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    offset: np.ndarray
    n_features: int
    input_dtype: Any = np.float64
    output_name: str = "predict"
    output_space: str = "raw"
    model_type: str = ""
    reference: Callable | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        return self.value.shape[1]

    @property
    def n_trees(self) -> int:
        return len(self.roots)


class _Builder:
    """Collects trees (local node indices) into one :class:`TreeEnsemble`.

    Trees are only stored by :meth:`add`; the index shifts and leaf fix-ups are done once, over
    all nodes, in :meth:`build` (a forest of hundreds of trees parses in a few numpy calls).
    """

    _FIELDS = ("left", "right", "feature", "threshold", "nan_left", "cover", "value")

    def __init__(self, n_outputs: int):
        self.k = n_outputs
        self.parts: dict[str, list] = {f: [] for f in self._FIELDS}
        self.outputs: list[int] = []
        self.multi: list[bool] = []

    def add(self, left, right, feature, threshold, nan_left, cover, value, output=None):
        """Add one tree. ``value`` is (n_nodes,) for ``output``'s column, or (n_nodes, K)."""
        for f, a in zip(self._FIELDS, (left, right, feature, threshold, nan_left, cover, value)):
            self.parts[f].append(a)
        self.outputs.append(0 if output is None else int(output))
        self.multi.append(np.ndim(value) == 2)

    def build(self, offset, n_features, **kw) -> TreeEnsemble:
        if not self.outputs:
            raise ValueError("model: the ensemble has no trees (is it fitted?)")
        sizes = np.array([len(a) for a in self.parts["left"]], dtype=np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        shift = np.repeat(starts, sizes)
        left = np.concatenate([np.asarray(a, dtype=np.int64) for a in self.parts["left"]])
        right = np.concatenate([np.asarray(a, dtype=np.int64) for a in self.parts["right"]])
        leaf = left < 0
        n = len(left)
        value = np.zeros((n, self.k))
        if any(self.multi):
            for s0, m, v, is2 in zip(starts, sizes, self.parts["value"], self.multi):
                if is2:
                    value[s0:s0 + m] = np.asarray(v, dtype=np.float64)
        flat = [np.asarray(v, dtype=np.float64) for v, is2 in zip(self.parts["value"], self.multi)
                if not is2]
        if flat:
            rows = np.concatenate([np.arange(s0, s0 + m) for s0, m, is2
                                   in zip(starts, sizes, self.multi) if not is2])
            cols = np.repeat([o for o, is2 in zip(self.outputs, self.multi) if not is2],
                             [m for m, is2 in zip(sizes, self.multi) if not is2])
            value[rows, cols] = np.concatenate(flat)
        value[~leaf] = 0.0
        return TreeEnsemble(
            left=np.where(leaf, -1, left + shift), right=np.where(leaf, -1, right + shift),
            feature=np.where(leaf, -1, np.concatenate(
                [np.asarray(a, dtype=np.int64) for a in self.parts["feature"]])),
            threshold=np.concatenate([np.asarray(a, dtype=np.float64)
                                      for a in self.parts["threshold"]]),
            nan_left=np.concatenate([np.asarray(a).astype(bool) for a in self.parts["nan_left"]]),
            cover=np.concatenate([np.asarray(a, dtype=np.float64) for a in self.parts["cover"]]),
            value=value, roots=starts,
            offset=np.broadcast_to(np.asarray(offset, dtype=np.float64), (self.k,)).copy(),
            n_features=int(n_features), **kw,
        )


# =============================================================================================
# Parsers: scikit-learn, XGBoost, LightGBM
# =============================================================================================
def _qualname(model) -> str:
    return type(model).__module__.split(".")[0] + "." + type(model).__name__


def _sklearn_tree(b: _Builder, tree, value, output=None):
    nan_left = getattr(tree, "missing_go_to_left", None)
    if nan_left is None:
        nan_left = np.ones(tree.node_count, dtype=bool)
    b.add(tree.children_left, tree.children_right, tree.feature, tree.threshold,
          np.asarray(nan_left).astype(bool), tree.weighted_n_node_samples, value, output)


def _sklearn_value(tree, classifier: bool) -> np.ndarray:
    v = np.asarray(tree.value, dtype=np.float64)
    if v.shape[1] != 1:
        raise ValueError("model: multi-output trees (several targets at once) are not supported")
    v = v[:, 0, :]
    if classifier:
        s = v.sum(1, keepdims=True)
        v = np.divide(v, s, out=np.zeros_like(v), where=s > 0)
    return v


def _parse_sklearn_forest(model) -> TreeEnsemble:
    from sklearn.base import is_classifier

    clf = is_classifier(model)
    ests = [model] if hasattr(model, "tree_") else list(model.estimators_)
    k = len(model.classes_) if clf else 1
    if clf and not np.ndim(model.classes_) == 1:
        raise ValueError("model: multi-output classifiers are not supported")
    b = _Builder(k)
    for e in ests:
        _sklearn_tree(b, e.tree_, _sklearn_value(e.tree_, clf) / len(ests))
    if clf:
        ref, name, space = (lambda X: model.predict_proba(X)), "predict_proba", "probability"
    else:
        ref, name, space = (lambda X: model.predict(X)), "predict", "raw"
    return b.build(0.0, model.n_features_in_, input_dtype=np.float32, output_name=name,
                   output_space=space, model_type=type(model).__name__, reference=ref)


def _parse_sklearn_gb(model) -> TreeEnsemble:
    from sklearn.base import is_classifier
    from sklearn.dummy import DummyClassifier, DummyRegressor

    init = model.init_
    if not (init == "zero" or isinstance(init, (DummyClassifier, DummyRegressor))):
        raise ValueError(
            "model: a gradient boosting model whose init estimator is not a constant has no "
            "constant base value; tree_shap supports init=None (the default) or 'zero'"
        )
    ests = model.estimators_  # (n_stages, K)
    k = ests.shape[1]
    b = _Builder(k)
    lr = float(model.learning_rate)
    for stage in ests:
        for col, e in enumerate(stage):
            _sklearn_tree(b, e.tree_, _sklearn_value(e.tree_, False)[:, 0] * lr, output=col)
    x0 = np.zeros((1, model.n_features_in_))
    offset = np.asarray(model._raw_predict_init(x0), dtype=np.float64).reshape(-1)
    if is_classifier(model):
        ref, name, space = (lambda X: model.decision_function(X)), "decision_function", "log-odds"
    else:
        ref, name, space = (lambda X: model.predict(X)), "predict", "raw"
    return b.build(offset, model.n_features_in_, input_dtype=np.float32, output_name=name,
                   output_space=space, model_type=type(model).__name__, reference=ref)


def _parse_sklearn_hgb(model) -> TreeEnsemble:
    from sklearn.base import is_classifier

    k = len(model._predictors[0])
    b = _Builder(k)
    for stage in model._predictors:
        for col, pred in enumerate(stage):
            nd = pred.nodes
            if "is_categorical" in nd.dtype.names and nd["is_categorical"].any():
                raise ValueError("model: categorical splits of HistGradientBoosting are not "
                                 "supported by tree_shap; use kernel_shap or permutation_shap")
            leaf = nd["is_leaf"].astype(bool)
            thr = nd["num_threshold"] if "num_threshold" in nd.dtype.names else nd["threshold"]
            b.add(np.where(leaf, -1, nd["left"].astype(np.int64)),
                  np.where(leaf, -1, nd["right"].astype(np.int64)), nd["feature_idx"], thr,
                  nd["missing_go_to_left"].astype(bool), nd["count"], nd["value"], output=col)
    offset = np.asarray(model._baseline_prediction, dtype=np.float64).reshape(-1)
    clf = is_classifier(model)
    if clf:
        ref, name, space = (lambda X: model.decision_function(X)), "decision_function", "log-odds"
    else:
        ref = lambda X: model._raw_predict(X)  # noqa: E731 - raw (link) scale
        name = "raw prediction"
        loss = getattr(model, "loss", "squared_error")
        space = "raw" if loss in ("squared_error", "absolute_error", "quantile") else "log (link)"
    return b.build(offset, model.n_features_in_, input_dtype=np.float64, output_name=name,
                   output_space=space, model_type=type(model).__name__, reference=ref)


def _parse_xgboost(model) -> TreeEnsemble:
    import json

    import xgboost as xgb

    booster = model.get_booster() if hasattr(model, "get_booster") else model
    doc = json.loads(booster.save_raw("json"))
    learner = doc["learner"]
    gbm = learner["gradient_booster"]
    if gbm.get("name") not in (None, "gbtree", "dart"):
        raise ValueError(f"model: XGBoost booster {gbm.get('name')!r} has no trees (use gbtree)")
    if gbm.get("name") == "dart":
        raise ValueError("model: XGBoost dart boosters scale trees at prediction; not supported")
    mdl = gbm["model"]
    param = learner["learner_model_param"]
    k = max(int(param.get("num_class", "0")), int(param.get("num_target", "1")), 1)
    info = mdl["tree_info"]
    # Early stopping: the scikit-learn wrapper predicts with the best iteration only.
    n_trees = len(mdl["trees"])
    best = getattr(model, "best_iteration", None) if hasattr(model, "get_booster") else None
    if best is not None:
        indptr = mdl.get("iteration_indptr")
        n_trees = int(indptr[best + 1]) if indptr else n_trees
    b = _Builder(k)
    for t, tree in zip(range(n_trees), mdl["trees"]):
        if any(tree.get("split_type", [0])) or tree.get("categories_nodes"):
            raise ValueError("model: categorical splits of XGBoost are not supported by tree_shap")
        left = np.asarray(tree["left_children"], dtype=np.int64)
        cond = np.asarray(tree["split_conditions"], dtype=np.float32)
        # XGBoost goes left when x < split in float32; for float32 x that is x <= previous float.
        thr = np.nextafter(cond, np.float32(-np.inf)).astype(np.float64)
        # JSON prints the shortest decimal that round-trips in float32: read the float32 back.
        vals = np.asarray(tree["base_weights"], dtype=np.float32).astype(np.float64)
        vals = np.where(left < 0, cond.astype(np.float64), vals)
        if np.ndim(vals) != 1 or len(vals) != len(left):
            raise ValueError("model: multi-output (vector-leaf) XGBoost trees are not supported")
        b.add(left, tree["right_children"], tree["split_indices"], thr,
              np.asarray(tree["default_left"]).astype(bool),
              np.asarray(tree["sum_hessian"], dtype=np.float32).astype(np.float64), vals,
              output=int(info[t]) if k > 1 else 0)
    n_feat = int(param.get("num_feature", 0))
    ens = b.build(_xgb_base_margin(param.get("base_score", "0"), learner["objective"]["name"], k),
                  n_feat, input_dtype=np.float32, output_name="output_margin",
                  output_space="margin", model_type=type(model).__name__)
    iteration_range = (0, best + 1) if best is not None else (0, 0)

    def ref(X):
        dm = xgb.DMatrix(np.asarray(X, dtype=np.float32), feature_names=booster.feature_names,
                         feature_types=booster.feature_types)
        return booster.predict(dm, output_margin=True, iteration_range=iteration_range)

    ens.reference = ref
    # if the objective's link is not one we know, the base margin is read off the model's margins
    ens.meta["offset_from_model"] = "if_needed"
    return ens


def _xgb_base_margin(base_score: str, objective: str, k: int) -> np.ndarray:
    """XGBoost's base score (stored as float32 in the output space) as a margin."""
    vals = np.array([float(t) for t in str(base_score).strip("[]").split(",") if t.strip()],
                    dtype=np.float32).astype(np.float64)
    vals = np.broadcast_to(vals if len(vals) else np.zeros(1), (k,)).copy()
    if objective in ("binary:logistic", "reg:logistic"):
        with np.errstate(divide="ignore"):
            vals = np.log(vals / (1 - vals))
    elif objective in ("count:poisson", "reg:gamma", "reg:tweedie"):
        with np.errstate(divide="ignore"):
            vals = np.log(vals)
    return np.asarray(vals, dtype=np.float32).astype(np.float64)


def _parse_lightgbm(model) -> TreeEnsemble:
    booster = model.booster_ if hasattr(model, "booster_") else model
    best = getattr(booster, "best_iteration", 0) or 0
    dump = booster.dump_model(num_iteration=best if best > 0 else None)
    k = int(dump.get("num_tree_per_iteration", 1))
    if dump.get("average_output"):
        raise ValueError("model: LightGBM random-forest mode (average_output) is not supported")
    b = _Builder(k)
    for t, info in enumerate(dump["tree_info"]):
        left, right, feat, thr, nanl, cover, val = [], [], [], [], [], [], []

        def visit(nd) -> int:
            i = len(left)
            for lst in (left, right, feat, thr, nanl, cover, val):
                lst.append(0)
            if "leaf_value" in nd or "split_feature" not in nd:
                left[i] = right[i] = feat[i] = -1
                thr[i], nanl[i] = 0.0, True
                cover[i] = float(nd.get("leaf_count", nd.get("internal_count", 0)))
                val[i] = float(nd.get("leaf_value", 0.0))
                return i
            if nd.get("decision_type", "<=") != "<=":
                raise ValueError("model: categorical splits of LightGBM are not supported by "
                                 "tree_shap; use kernel_shap or permutation_shap")
            mt = nd.get("missing_type", "None")
            if mt == "Zero":
                raise ValueError("model: LightGBM zero_as_missing splits are not supported")
            feat[i], thr[i] = int(nd["split_feature"]), float(nd["threshold"])
            # missing_type None: a missing value is treated as 0.0
            nanl[i] = bool(nd.get("default_left", True)) if mt == "NaN" else (0.0 <= thr[i])
            cover[i] = float(nd.get("internal_count", 0))
            left[i] = visit(nd["left_child"])
            right[i] = visit(nd["right_child"])
            return i

        if info.get("num_cat", 0):
            raise ValueError("model: categorical splits of LightGBM are not supported by tree_shap")
        visit(info["tree_structure"])
        b.add(left, right, feat, thr, nanl, cover, val, output=t % k)
    n_feat = int(dump["max_feature_idx"]) + 1

    def ref(X):
        return booster.predict(np.asarray(X, dtype=np.float64), raw_score=True,
                               num_iteration=best if best > 0 else None)

    return b.build(0.0, n_feat, input_dtype=np.float64, output_name="raw_score",
                   output_space="raw score (margin)", model_type=type(model).__name__,
                   reference=ref)


def parse_trees(model: Any) -> TreeEnsemble:
    """Read a fitted tree model into a :class:`TreeEnsemble`.

    Supported: scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``,
    ``GradientBoosting*``, ``HistGradientBoosting*``; XGBoost (scikit-learn wrapper or
    ``Booster``) and LightGBM (wrapper or ``Booster``) when installed.

    Raises
    ------
    TypeError
        For any other model, naming the model-agnostic alternatives.
    """
    if isinstance(model, TreeEnsemble):
        return model
    name = _qualname(model)
    mod = type(model).__module__
    cls = type(model).__name__
    if mod.startswith("sklearn"):
        from sklearn.utils.validation import check_is_fitted

        if cls.startswith(("DecisionTree", "ExtraTree", "RandomForest", "ExtraTrees")) and \
                "Embedding" not in cls:
            check_is_fitted(model)
            return _parse_sklearn_forest(model)
        if cls.startswith("HistGradientBoosting"):
            check_is_fitted(model)
            return _parse_sklearn_hgb(model)
        if cls.startswith("GradientBoosting"):
            check_is_fitted(model)
            return _parse_sklearn_gb(model)
    if mod.startswith("xgboost") and (hasattr(model, "get_booster") or cls == "Booster"):
        return _parse_xgboost(model)
    if mod.startswith("lightgbm") and (hasattr(model, "booster_") or cls == "Booster"):
        return _parse_lightgbm(model)
    raise TypeError(
        f"model: tree_shap needs a fitted tree ensemble (scikit-learn trees/forests/gradient "
        f"boosting, XGBoost, LightGBM); got {name}. For any other model use kernel_shap, "
        "permutation_shap or exact_shap."
    )


# =============================================================================================
# Paths
# =============================================================================================
@dataclass
class _PathGroup:
    """The leaves whose root paths split on exactly ``D`` distinct features (slot axis first)."""

    D: int
    leaf: np.ndarray     # (L,) global node index of each leaf
    feat: np.ndarray     # (D, L) the distinct features
    lo: np.ndarray       # (D, L) the path interval is lo < x <= hi
    hi: np.ndarray
    nan_ok: np.ndarray   # (D, L) a missing value follows the path at every split on the feature
    z: np.ndarray        # (D, L) zero fractions (cover ratios, multiplied over the splits)

    def as_float32(self) -> "_PathGroup":
        """The same intervals for rows stored in float32: for a float32 ``x``, ``x <= t`` iff
        ``x <= t'`` with ``t'`` the largest float32 not above ``t`` (half the memory traffic)."""
        def floor32(t):
            t32 = t.astype(np.float32)
            return np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32)

        return _PathGroup(self.D, self.leaf, self.feat, floor32(self.lo), floor32(self.hi),
                          self.nan_ok, self.z)

    def bits(self, XT: np.ndarray, ls: slice, has_nan: bool) -> np.ndarray:
        """``o`` (D, L, n) for the rows of ``XT`` (F, n): does the row follow each path slot."""
        xs = XT[self.feat[:, ls]]                                  # (D, L, n)
        o = (xs > self.lo[:, ls, None]) & (xs <= self.hi[:, ls, None])
        if has_nan:
            miss = np.isnan(xs)
            if miss.any():
                o = np.where(miss, self.nan_ok[:, ls, None], o)
        return o


def _paths(ens: TreeEnsemble) -> tuple[list[_PathGroup], np.ndarray, int]:
    """Every leaf's root path with repeated features merged, grouped by path length.

    Returns the groups, the expected value of every output under the cover distribution
    (shape (K,)), and the maximum depth.
    """
    n = len(ens.left)
    internal = np.flatnonzero(ens.left >= 0)
    parent = np.full(n, -1, dtype=np.int64)
    parent[ens.left[internal]] = internal
    parent[ens.right[internal]] = internal
    went_left = np.zeros(n, dtype=bool)
    went_left[ens.left[internal]] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(parent >= 0, ens.cover / ens.cover[np.maximum(parent, 0)], 1.0)
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)

    leaves = np.flatnonzero(ens.left < 0)
    n_leaves = len(leaves)
    rows, feats, thr, isleft, rat, nanok = [], [], [], [], [], []
    cur = leaves.copy()
    idx = np.arange(n_leaves)
    depth = 0
    while True:
        p = parent[cur]
        act = p >= 0
        if not act.any():
            break
        depth += 1
        c, p, r = cur[act], p[act], idx[act]
        rows.append(r)
        feats.append(ens.feature[p])
        thr.append(ens.threshold[p])
        isleft.append(went_left[c])
        rat.append(ratio[c])
        nanok.append(ens.nan_left[p] == went_left[c])
        cur, idx = p, r
    # Expected value: Σ_l v_l Π ratios along the path (product over all edges).
    prob = np.ones(n_leaves)
    groups: list[_PathGroup] = []
    if rows:
        rows, feats, thr = np.concatenate(rows), np.concatenate(feats), np.concatenate(thr)
        isleft, rat, nanok = np.concatenate(isleft), np.concatenate(rat), np.concatenate(nanok)
        np.multiply.at(prob, rows, rat)
        key = rows * ens.n_features + feats
        order = np.argsort(key, kind="stable")
        key, rows, feats, thr = key[order], rows[order], feats[order], thr[order]
        isleft, rat, nanok = isleft[order], rat[order], nanok[order]
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        hi = np.minimum.reduceat(np.where(isleft, thr, np.inf), start)
        lo = np.maximum.reduceat(np.where(isleft, -np.inf, thr), start)
        z = np.multiply.reduceat(rat, start)
        ok = np.minimum.reduceat(nanok.astype(np.uint8), start).astype(bool)
        g_row, g_feat = rows[start], feats[start]
        d_row = np.bincount(g_row, minlength=n_leaves)
        first = np.r_[0, np.cumsum(d_row)[:-1]]
        for d in np.unique(d_row):
            if d == 0:
                continue
            sel = np.flatnonzero(d_row == d)
            gi = first[sel][:, None] + np.arange(d)
            gi = gi.T                                               # slot axis first
            groups.append(_PathGroup(int(d), leaves[sel], g_feat[gi], lo[gi], hi[gi], ok[gi], z[gi]))
    expected = prob @ ens.value[leaves] + ens.offset
    return groups, expected, depth


def _predict(ens: TreeEnsemble, X: np.ndarray, depth: int) -> np.ndarray:
    """Raw output of the parsed ensemble, shape (n, K), by walking all trees at once."""
    leaf = ens.left < 0
    idx = np.arange(len(ens.left))
    child = np.stack([np.where(leaf, idx, ens.left), np.where(leaf, idx, ens.right)], 1).ravel()
    feat = np.where(leaf, 0, ens.feature)
    has_nan = bool(np.isnan(X).any())
    out = np.empty((len(X), ens.n_outputs))
    step = max(1, _WORK // max(1, ens.n_trees))
    for s in range(0, len(X), step):
        Xc = X[s:s + step]
        rowbase = (np.arange(len(Xc)) * X.shape[1])[:, None]
        xf = Xc.ravel()
        node = np.broadcast_to(ens.roots, (len(Xc), ens.n_trees)).copy()
        for _ in range(depth):                       # leaves loop onto themselves
            x = xf[rowbase + feat[node]]
            right = ~(x <= ens.threshold[node])
            if has_nan:
                right = np.where(np.isnan(x), ~ens.nan_left[node], right)
            node = child[2 * node + right]
        out[s:s + step] = ens.value[node].sum(1)
    return out + ens.offset


# =============================================================================================
# The Shapley arithmetic
# =============================================================================================
def _gauss(D: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes/weights on [0, 1], exact for polynomials of degree ``D - 1``."""
    q = max(1, -(-D // 2))
    x, w = np.polynomial.legendre.leggauss(q)
    return (x + 1) / 2, w / 2


def _all_patterns(D: int) -> np.ndarray:
    """Bits of every pattern 0..2^D-1, shape (D, 2^D); bit j of pattern p is slot j."""
    return ((np.arange(1 << D)[None, :] >> np.arange(D)[:, None]) & 1).astype(bool)


def _path_dependent(o: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Unit-value contributions ``(o_i − z_i) ∫ Π_{j≠i} (z_j + u (o_j − z_j)) du``.

    Parameters
    ----------
    o : ndarray of bool, shape (D, L, n)
        One fractions (may be a broadcast view, e.g. every pattern for a table).
    z : ndarray, shape (D, L)
        Zero fractions.

    Returns
    -------
    ndarray, shape (D, L, n)

    Notes
    -----
    With ``o`` binary each factor is ``z_j + u (1 − z_j)`` or ``z_j (1 − u)``, so at the ``Q``
    Gauss-Legendre nodes ``log Π_j f_j = Σ_j log a_j + o · (log b_j − log a_j)``: one small
    matrix product per path instead of ``Q × D`` elementwise passes. Dividing the product by the
    own factor gives the "all but i" product; for ``o_i = 0`` the factor ``z_i`` cancels, so
    every such slot gets ``−Σ_q w_q G_q / (1 − u_q)``.
    """
    D = o.shape[0]
    u, w = _gauss(D)
    zc = np.maximum(z.T, 1e-300)[:, :, None]                 # (L, D, 1); z = 0 gives G ≈ 0
    la = np.log(zc) + np.log1p(-u)                          # (L, D, Q) log z(1-u)
    fb = zc + u * (1 - zc)                                  # (L, D, Q) z + u(1-z)
    delta = np.log(fb) - la
    O = np.moveaxis(o, 0, -1).astype(np.float64)            # (L, n, D)
    G = np.exp(O @ delta + la.sum(1)[:, None, :])           # (L, n, Q)
    M1 = (w * (1 - zc) / fb).transpose(0, 2, 1)             # (L, Q, D)
    c1 = G @ M1                                             # (L, n, D)
    c0 = G @ (w / (1 - u))                                  # (L, n)
    return np.moveaxis(np.where(O > 0, c1, -c0[..., None]), -1, 0)


def _interventional_table(bb: np.ndarray) -> np.ndarray:
    """Unit-value contributions of every x-pattern, summed over the background.

    ``bb`` (D, L, n_b) are the background's bits. Returns (D, L, 2^D), to be divided by n_b.
    """
    D, L, nb = bb.shape
    P = 1 << D
    u, w = _gauss(D)
    Q = len(u)
    fail = _pack(~bb)                                          # (L, n_b) failure pattern U_b
    hist = np.zeros((L, P))
    np.add.at(hist, (np.broadcast_to(np.arange(L)[:, None], fail.shape), fail), 1.0)
    pop = _all_patterns(D).sum(0)                              # |S| of each pattern, (P,)
    Z = hist[:, None, :] * u[None, :, None] ** pop             # (L, Q, P)
    for j in range(D):                                         # subset-sum (zeta) transform
        Zr = Z.reshape(L, Q, P >> (j + 1), 2, 1 << j)
        Zr[:, :, :, 1, :] += Zr[:, :, :, 0, :]
    # W1/W0 depend on the x-pattern only through m = |U_x| = D - |p|; the dropped pattern
    # p \ j has |p| - 1 set bits, so its weight is a function of the dropped pattern itself.
    m = D - pop                                                # |U_x| of each x-pattern
    one_m = 1 - u[:, None]                                     # (Q, 1)
    W1 = w[:, None] * one_m ** m[None, :] / u[:, None]         # (Q, P)
    W0 = w[:, None] * one_m ** np.maximum(m - 1, 0)[None, :]
    Wd = w[:, None] * one_m ** np.maximum(m - 1, 0)[None, :] / u[:, None]  # p as some p∖j
    Zf = Z.reshape(L, Q, P)
    s1 = np.einsum("lqp,qp->lp", Zf, W1)                       # (L, P)
    s0 = np.einsum("lqp,qp->lp", Zf, W0)
    Y = np.einsum("lqp,qp->lp", Zf, Wd)
    p_all = np.arange(P)
    out = np.empty((D, L, P))
    for j in range(D):
        follows = ((p_all >> j) & 1).astype(bool)
        out[j] = np.where(follows, s1 - Y[:, p_all & ~(1 << j)], -s0)
    return out


def _beta_tables(D: int) -> tuple[np.ndarray, np.ndarray]:
    """``c1[k, m] = (k−1)! m! / (k+m)!`` and ``c0[k, m] = k! (m−1)! / (k+m)!`` (0 where undefined).

    The Shapley weight of a slot that only the explained row satisfies (``c1``) or only the
    background row satisfies (``c0``), with ``k`` and ``m`` such slots on the path.
    """
    from math import lgamma

    c1 = np.zeros((D + 1, D + 1))
    c0 = np.zeros((D + 1, D + 1))
    for k in range(D + 1):
        for m in range(D + 1 - k):
            if k:
                c1[k, m] = np.exp(lgamma(k) + lgamma(m + 1) - lgamma(k + m + 1))
            if m:
                c0[k, m] = np.exp(lgamma(k + 1) + lgamma(m) - lgamma(k + m + 1))
    return c1, c0


def _interventional_direct(o: np.ndarray, bb: np.ndarray) -> np.ndarray:
    """Sum over background rows, pair by pair: o (D, L, n), bb (D, L, n_b) -> (D, L, n).

    A pair contributes when no slot fails for both (``U_x ∩ U_b = ∅``); slots only the row
    satisfies get ``c1(|U_b|, |U_x|)``, slots only the background row satisfies ``−c0``.
    """
    D = o.shape[0]
    c1, c0 = _beta_tables(D)
    fx, fb = ~o, ~bb
    ux, ub = _pack(fx), _pack(fb)                             # (L, n), (L, n_b)
    mx, kb = fx.sum(0), fb.sum(0)
    valid = (ux[:, :, None] & ub[:, None, :]) == 0            # (L, n, n_b)
    W1 = np.where(valid, c1[kb[:, None, :], mx[:, :, None]], 0.0)
    W0 = np.where(valid, c0[kb[:, None, :], mx[:, :, None]], 0.0).sum(-1)    # (L, n)
    A = W1 @ np.moveaxis(fb, 0, -1).astype(np.float64)        # (L, n, D)
    return np.moveaxis(A, -1, 0) - W0[None] * fx


def _pack(o: np.ndarray) -> np.ndarray:
    """Pattern index (...) of bits (D, ...), D <= 62: bit j is slot j."""
    idx = o[0].astype(np.intp)
    for j in range(1, len(o)):
        idx |= o[j].astype(np.intp) << j
    return idx


def _scatter_matrix(feat: np.ndarray, n_features: int):
    """Sparse (F, D*L) one-hot that adds slot contributions (D*L, n) into features (F, n)."""
    from scipy.sparse import csr_matrix

    flat = feat.reshape(-1)
    return csr_matrix((np.ones(len(flat)), (flat, np.arange(len(flat)))),
                      shape=(n_features, len(flat)))


def _shap(ens: TreeEnsemble, groups: list[_PathGroup], X: np.ndarray, cls: np.ndarray,
          background: np.ndarray | None, progress: bool | None,
          algorithm: str = "auto") -> np.ndarray:
    """Shapley values (n, F) of output ``cls[r]`` for every row."""
    R, F = len(X), ens.n_features
    f32 = np.dtype(ens.input_dtype) == np.float32
    XT = np.ascontiguousarray(X.T, dtype=np.float32 if f32 else np.float64)   # (F, R)
    phiT = np.zeros((F, R))
    one_cls = bool(np.all(cls == cls[0]))
    has_nan = bool(np.isnan(X).any())
    BT = None if background is None else np.ascontiguousarray(background.T, dtype=XT.dtype)
    nb = 0 if background is None else len(background)
    bg_nan = background is not None and bool(np.isnan(background).any())
    work = sum(len(g.leaf) for g in groups)
    with progress_bar(work, "tree_shap", progress if work * R > 50_000_000 else False,
                      unit="path") as bar:
        for g in groups:
            if f32:
                g = g.as_float32()
            D, L = g.D, len(g.leaf)
            P = 1 << D
            Q = max(1, -(-D // 2))
            V = ens.value[g.leaf]                                   # (L, K)
            if algorithm != "auto":
                tab = algorithm == "table"
            elif background is None:
                tab = 2 * P <= R                                    # a table pays off
            else:
                tab = P * Q * D <= 10 * R * nb
            if background is None:
                per, row_cost = P * (D + 2 * Q), (D if tab else D + 2 * Q)
            else:
                per, row_cost = P * Q * (D + 3), (D if tab else nb + D)
            lstep = max(1, min(L, (_TABLE // per) if tab else (_WORK // (16 * row_cost))))
            for l0 in range(0, L, lstep):
                ls = slice(l0, min(L, l0 + lstep))
                nl = ls.stop - ls.start
                v = V[ls, cls[0]] if one_cls else None              # (nl,)
                S = _scatter_matrix(g.feat[:, ls], F)
                if background is not None:
                    bb = g.bits(BT, ls, bg_nan)                     # (D, nl, nb)
                if tab:
                    if background is None:
                        T = _path_dependent(np.broadcast_to(_all_patterns(D)[:, None, :],
                                                            (D, nl, P)), g.z[:, ls])
                    else:
                        T = _interventional_table(bb) / nb
                    if one_cls:
                        T *= v[None, :, None]
                    T = T.reshape(-1)
                    offs = (np.arange(D)[:, None, None] * nl + np.arange(nl)[None, :, None]) * P
                rstep = max(1, _WORK // (nl * row_cost))
                for r0 in range(0, R, rstep):
                    rs = slice(r0, min(R, r0 + rstep))
                    o = g.bits(np.ascontiguousarray(XT[:, rs]), ls, has_nan)   # (D, nl, r)
                    if tab:
                        c = T[offs + _pack(o)[None]]                # (D, nl, r)
                    elif background is None:
                        c = _path_dependent(o, g.z[:, ls])
                    else:
                        c = _interventional_direct(o, bb) / nb
                    if not one_cls:
                        c *= V[ls][:, cls[rs]][None]
                    elif not tab:
                        c *= v[None, :, None]
                    phiT[:, rs] += S @ c.reshape(D * nl, -1)
                bar.update(nl)
    return phiT.T.copy()


# =============================================================================================
# The method
# =============================================================================================
_PERTURBATIONS = ("auto", "tree_path_dependent", "interventional")


def _as_matrix(X: Any, name: str, n_features: int) -> tuple[np.ndarray, list[str] | None]:
    names = None
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        names = [str(c) for c in X.columns]
        bad = [c for c, t in zip(names, X.dtypes) if not (np.issubdtype(t, np.number) or t == bool)]
        if bad:
            raise TypeError(f"{name}: tree_shap needs numeric columns; {bad[:5]} are not")
        X = X.to_numpy(dtype=np.float64)
    elif hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric 2-D array or DataFrame") from e
    if X.ndim == 1:
        raise ValueError(f"{name} must be 2-D (rows, features); for one row use X[None] or X[[i]]")
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, features); got shape {X.shape}")
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the model was fitted on {n_features}")
    if np.isinf(X).any():
        raise ValueError(f"{name} contains Inf values")
    return X, names


@register("tree_shap", "shapley",
          "Exact TreeSHAP for tree ensembles: path-dependent or interventional (Lundberg 2018/2020)",
          models="any")
def tree_shap(model: Any, inputs: Any, target: Any = None, *, background: Any = None,
              feature_perturbation: str = "auto", algorithm: str = "auto", check: bool = True,
              progress: bool | None = None) -> Explanation:
    """Exact Shapley values of a tree ensemble's output.

    Lundberg, Erion & Lee (2018), "Consistent Individualized Feature Attribution for Tree
    Ensembles" (path-dependent); Lundberg et al. (2020), "From local explanations to global
    understanding with explainable AI for trees" (interventional).

    Parameters
    ----------
    model : fitted tree model
        scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``,
        ``GradientBoosting*``, ``HistGradientBoosting*``; XGBoost and LightGBM models (wrapper or
        booster).
    inputs : ndarray or DataFrame, shape (n, n_features)
        The rows to explain. DataFrame column names become ``feature_names``. Missing values
        (NaN) follow the model's own missing-value directions.
    target : int, sequence of int, "predicted" or None
        The output to explain when the model has several (classes): ``None`` explains the
        predicted class. See :mod:`lumos.core.targets`.
    background : ndarray or DataFrame, shape (m, n_features), optional
        Background rows for the interventional game ``E_b f(x_S, b_S̄)``.
    feature_perturbation : {"auto", "tree_path_dependent", "interventional"}, default "auto"
        ``"tree_path_dependent"`` uses the training cover stored in the trees as the
        distribution of the unknown features (no background needed); ``"interventional"``
        averages over ``background``. ``"auto"`` is interventional when a background is given.
    algorithm : {"auto", "table", "direct"}, default "auto"
        How each group of paths is evaluated: ``"table"`` tabulates the contribution of every
        pattern of path conditions once and looks rows up; ``"direct"`` computes each
        (row, path) pair (pair by pair with the background for interventional). ``"auto"``
        picks the cheaper per group; all give the same values to rounding.
    check : bool, default True
        Compare the parsed ensemble's output with the model's own (raw) output on ``inputs``
        and raise when they differ (a parse the explanation could not be trusted with).
    progress : bool, optional
        Progress bar; ``None`` shows one on a terminal for long work.

    Returns
    -------
    Explanation
        ``values`` (n, n_features). The explained output is the model's raw output:
        ``predict_proba`` for scikit-learn tree/forest classifiers, the margin (log-odds,
        ``decision_function``) for gradient boosting, ``predict`` for regressors
        (``meta["model_output"]``, ``meta["output_space"]``). ``baseline_output`` is the
        expected value (cover-weighted for path-dependent, the background mean for
        interventional) and ``baseline_output + values.sum(1) == output`` to rounding.

    Examples
    --------
    >>> expl = lumos.explain(forest, X_test, "tree_shap", target=1)
    >>> expl = lumos.explain(gbm, X_test, "tree_shap", background=X_train[:200])
    """
    if feature_perturbation not in _PERTURBATIONS:
        raise ValueError(f"feature_perturbation must be one of {_PERTURBATIONS}; "
                         f"got {feature_perturbation!r}")
    if algorithm not in ("auto", "table", "direct"):
        raise ValueError(f"algorithm must be 'auto', 'table' or 'direct'; got {algorithm!r}")
    if feature_perturbation == "auto":
        feature_perturbation = "tree_path_dependent" if background is None else "interventional"
    if feature_perturbation == "interventional" and background is None:
        raise ValueError("background: interventional TreeSHAP needs background rows "
                         "(for example 100-1000 training rows)")
    if feature_perturbation == "tree_path_dependent" and background is not None:
        raise ValueError("background: the path-dependent game uses the trees' training cover, "
                         "not a background; pass feature_perturbation='interventional' to use it")
    ens = parse_trees(model)
    X, names = _as_matrix(inputs, "inputs", ens.n_features)
    if names is None and getattr(model, "feature_names_in_", None) is not None:
        names = [str(c) for c in model.feature_names_in_]
    Xm = X.astype(ens.input_dtype).astype(np.float64)
    groups, expected, depth = _paths(ens)
    raw = _predict(ens, Xm, depth)                                   # (n, K)
    if ens.reference is not None and (check or ens.meta.get("offset_from_model")):
        ref = np.asarray(ens.reference(inputs if hasattr(inputs, "columns") else X),
                         dtype=np.float64).reshape(len(X), -1)
        if ref.shape[1] != raw.shape[1]:
            raise RuntimeError(f"model returned {ref.shape[1]} outputs where the parsed trees "
                               f"have {raw.shape[1]}")
        tol = 1e-5 * max(1.0, np.abs(ref).max())
        if ens.meta.get("offset_from_model") and np.abs(ref - raw).max() > tol:
            # an objective whose base score we cannot convert: take it from the model's margins
            off = np.median(ref - raw, axis=0)
            ens.offset = ens.offset + off
            raw, expected = raw + off, expected + off
            ens.meta["offset_from_model"] = True
        gap = np.abs(ref - raw).max()
        if check and gap > tol:
            raise RuntimeError(
                f"model: the parsed trees reproduce the model's {ens.output_name} only to "
                f"{gap:.3g}; the explanation would not be trustworthy (unsupported option?)"
            )
    params = {"feature_perturbation": feature_perturbation, "algorithm": algorithm,
              "check": check}
    meta: dict[str, Any] = {
        "model_type": ens.model_type, "model_output": ens.output_name,
        "output_space": ens.output_space, "n_trees": ens.n_trees, "max_depth": depth,
        "feature_perturbation": feature_perturbation,
    }
    bg = None
    if feature_perturbation == "interventional":
        bg, _ = _as_matrix(background, "background", ens.n_features)
        bg = bg.astype(ens.input_dtype).astype(np.float64)
        expected = _predict(ens, bg, depth).mean(0)
        params["background"] = f"<{len(bg)} rows>"
        meta["n_background"] = len(bg)
    tgt = resolve_target(target, raw[:, 0] if raw.shape[1] == 1 else raw)
    cls = (tgt.indices if tgt.indices is not None else np.zeros(len(X), dtype=np.int64))
    if tgt.fn is not None:
        raise ValueError("target: tree_shap explains one model output; give a class index")
    values = _shap(ens, groups, Xm, cls, bg, progress, algorithm)
    output = raw[np.arange(len(X)), cls]
    base = expected[cls]
    meta["target"] = tgt.description
    meta["expected_value"] = expected if len(expected) > 1 else float(expected[0])
    meta["completeness_gap"] = np.abs(values.sum(1) + base - output)
    return Explanation(values=values, inputs=X, target=tgt.indices, output=output,
                       baseline_output=base, method="tree_shap", params=params, meta=meta,
                       feature_names=names, sample_keys=("completeness_gap",))
