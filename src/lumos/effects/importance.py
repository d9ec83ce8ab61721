"""Permutation feature importance.

Breiman (2001), "Random Forests"; model-agnostic form: Fisher, Rudin & Dominici (2019), "All
Models are Wrong, but Many are Useful" (model reliance). The importance of a feature (or a group
of columns, permuted together so their joint distribution is kept) is how much the score gets
worse when its values are shuffled across rows, breaking its link with the target. Repeats with
fresh permutations give the spread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..core.outputs import is_probability, softmax
from ..core.execution import chunks
from ..core.execution import rng as make_rng
from ..core.validation import check_number
from ._common import ScalarModel, Table, as_table, check_sample_weight, feature_index, subsample

__all__ = ["permutation_importance", "PermutationImportance"]

_GREATER = ("score", "accuracy", "auc", "precision", "recall", "r2", "likelihood", "gain")
_SMALLER = ("error", "loss", "deviance", "brier", "mse", "mae", "rmse")


@dataclass(eq=False)
class PermutationImportance:
    """Permutation importance of features or groups of columns.

    Attributes
    ----------
    feature_names : list of str
        One name per permuted feature or group (a group is named by its key, or its columns
        joined with ``+``).
    groups : dict of str to list of str
        The columns permuted together under each name.
    importances : ndarray, shape (F, n_repeats)
        Score drop per repeat, signed so that larger means more important whatever the metric's
        direction: ``baseline - permuted`` when greater is better, ``permuted - baseline`` for a
        loss.
    baseline_score : float
        The metric on the unpermuted data.
    permuted_scores : ndarray, shape (F, n_repeats)
    metric : str
    greater_is_better : bool
    n_repeats : int
    target, output_name : str
    n_evals : int
        Rows the model evaluated.
    params : dict
    """

    feature_names: list[str]
    groups: dict
    importances: np.ndarray
    baseline_score: float
    permuted_scores: np.ndarray
    metric: str
    greater_is_better: bool
    n_repeats: int
    target: str
    output_name: str
    n_evals: int
    params: dict = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """Mean importance over the repeats, shape (F,)."""
        return self.importances.mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over the repeats (ddof=1; 0 for a single repeat), shape (F,)."""
        if self.n_repeats < 2:
            return np.zeros(len(self.feature_names))
        return self.importances.std(axis=1, ddof=1)

    def ranking(self) -> list[str]:
        """Feature names from most to least important (by mean)."""
        return [self.feature_names[i] for i in np.argsort(-self.mean, kind="stable")]

    def to_frame(self):
        """One row per feature/group, most important first: ``mean``, ``std``, ``min``, ``max``."""
        import pandas as pd

        df = pd.DataFrame({"feature": self.feature_names, "mean": self.mean, "std": self.std,
                           "min": self.importances.min(1), "max": self.importances.max(1)})
        return df.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)

    def plot(self, ax=None, **kwargs):
        """Horizontal bars (mean) with the spread over repeats. See
        :class:`lumos.display.effects.ImportanceDisplay`."""
        from ..display.effects import ImportanceDisplay

        return ImportanceDisplay.from_result(self).plot(ax=ax, **kwargs)


def _groups(table: Table, features: Any, groups: Any) -> dict[str, list[int]]:
    """Name -> columns of every permuted player: the single ``features`` (default: every column
    when no ``groups`` are given), then the ``groups``."""
    items: list[tuple[Any, Any, str]] = []
    if features is None and groups is None:
        features = list(range(table.p))
    if features is not None:
        if isinstance(features, (str, int, np.integer)):
            features = [features]
        if isinstance(features, Mapping):
            raise TypeError("features: a dict of named column groups goes to groups=")
        for f in features:
            if isinstance(f, (list, tuple, set, np.ndarray)):
                raise TypeError(f"features: {f!r} is a group of columns; pass groups= (a list of column "
                                "lists or a dict name -> columns) to permute columns together")
            items.append((None, f, "features"))
    if groups is not None:
        if isinstance(groups, Mapping):
            items += [(k, v, "groups") for k, v in groups.items()]
        elif isinstance(groups, (str, int, np.integer)) or not isinstance(groups, (list, tuple)):
            raise TypeError("groups must be a list of column lists or a dict name -> columns; "
                            f"got {type(groups).__name__}")
        else:
            for g in groups:
                if not isinstance(g, (list, tuple, np.ndarray)):
                    raise TypeError(f"groups: each group is a list of columns; got {g!r}")
                items.append(("+".join(table.names[feature_index(table, c, "groups")] for c in g), g, "groups"))
    out: dict[str, list[int]] = {}
    for key, cols, arg in items:
        cols = [cols] if isinstance(cols, (str, int, np.integer)) else list(cols)
        if not cols:
            raise ValueError(f"{arg}: group {key!r} has no columns")
        idx = [feature_index(table, c, arg) for c in cols]
        name = str(key) if key is not None else table.names[idx[0]]
        if name in out:
            raise ValueError(f"{arg}: {name!r} is named twice")
        out[name] = sorted(set(idx))
    return out


def _direction(metric: Callable, greater_is_better: bool | None) -> bool:
    if greater_is_better is not None:
        return bool(greater_is_better)
    name = getattr(metric, "__name__", "").lower()
    if any(s in name for s in _SMALLER):
        return False
    if any(s in name for s in _GREATER):
        return True
    raise ValueError(
        f"greater_is_better: cannot tell whether a higher {name or 'metric'} is better; pass "
        "greater_is_better=True (a score) or False (a loss)"
    )


def _is_estimator(model: Any) -> bool:
    return hasattr(model, "fit") and hasattr(model, "predict")


def permutation_importance(model: Any, X: Any, y: Any, *, metric: str | Callable | None = None,
                           features: Any = None, groups: Any = None, n_repeats: int = 5,
                           sample_weight: Any = None, greater_is_better: bool | None = None,
                           target: Any = None, max_rows: int | None = None, seed: Any = 0,
                           output: str = "auto", batch_size: int | None = None,
                           progress: bool | None = None) -> PermutationImportance:
    """Permutation importance of each feature or group of columns, with its spread over repeats.

    Breiman (2001); Fisher, Rudin & Dominici (2019).

    Parameters
    ----------
    model : callable, scikit-learn estimator/pipeline, xgboost/lightgbm model or torch module
    X : ndarray or DataFrame, shape (n, p)
    y : array-like, shape (n,)
        The true targets.
    metric : str, callable or None
        A scikit-learn scorer name (``"r2"``, ``"neg_mean_squared_error"``, ``"accuracy"``,
        ``"roc_auc"``, ``"neg_log_loss"`` ...; greater is better): called as
        ``scorer(model, X_permuted, y)`` on each permuted copy, so it uses the response it needs. A
        model that is not an estimator is scored as a regressor whose ``predict`` is its (target)
        output. Or a callable ``metric(y_true, y_pred)`` where ``y_pred`` is the model's output
        (through ``target``; a binary classifier's positive-class probability; without a target a
        multi-class output is given whole, as log-loss needs). Default: ``"accuracy"`` for a
        classifier (a scikit-learn classifier, or a model such as a torch module whose output has
        two or more columns: its predicted class is the arg-max column, compared with the integer
        labels ``y``), else ``"r2"``.
    features : None or list, optional
        Single columns to permute, by name or index. Default: every column, unless ``groups`` are
        given (then only the groups).
    groups : list of column lists or dict name -> columns, optional
        Feature groups permuted together (one-hot blocks, sensor groups), so their joint
        distribution is kept; one importance per group, named by its key or by its columns joined
        with ``+``.
    n_repeats : int, default 5
        Permutations per feature.
    sample_weight : array-like, shape (n,), optional
        Row weights of the score: passed to a scikit-learn scorer or to a callable metric
        (``metric(y_true, y_pred, sample_weight=...)``); integer weights give the score of the
        data with each row repeated that many times.
    greater_is_better : bool, optional
        Direction of a callable metric; inferred from its name where it says (``*_score`` and
        accuracy are scores, ``*_error``/``*_loss`` are losses), else required.
    target : None, int, class label or callable
        Which output a callable metric sees (see above).
    max_rows : int, optional
        Use a random sample of this many rows (drawn with ``seed``).
    seed : int or numpy Generator, default 0
        The permutations (drawn before any batching: results do not depend on ``batch_size``).
    output : {"auto", "predict_proba", "decision_function", "predict"}
        The estimator function a callable metric sees.
    batch_size : int, optional
        Rows per model call for callable metrics (default 8192): all permuted copies are stacked
        and scored in chunks, one model call per chunk.
    progress : bool, optional

    Returns
    -------
    PermutationImportance
    """
    table = as_table(X)
    y = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else
                   (y.detach().cpu().numpy() if hasattr(y, "detach") else y))
    if y.ndim == 0 or len(y) != table.n:
        raise ValueError(f"y must have one value per row of X ({table.n}); got shape {y.shape}")
    n_repeats = check_number(n_repeats, "n_repeats", low=1, integer=True)
    weights = check_sample_weight(sample_weight, table.n)
    groups = _groups(table, features, groups)
    gen = make_rng(seed)
    rows = subsample(table.n, max_rows, gen)
    if rows is not None:
        table, y = table.take(rows), y[rows]
        weights = None if weights is None else weights[rows]
    n = table.n
    # All permutations first, in a fixed order: the result depends on the seed only.
    perms = np.stack([np.stack([gen.permutation(n) for _ in range(n_repeats)]) for _ in groups])
    names = list(groups)
    cols = [groups[k] for k in names]

    n_classes = None
    if not _is_estimator(model) and target is None and (metric is None or isinstance(metric, str)):
        # a model that is not an estimator (a torch module, a function) with several output columns
        # is a classifier: its prediction is the arg-max column
        probe = ScalarModel(model, table, None, output, batch_size)
        out = np.asarray(probe.raw(table.values[:1]))
        if out.ndim == 2 and out.shape[1] >= 2 and out.dtype.kind in "biuf":
            n_classes = out.shape[1]
    if metric is None:
        classifier = (hasattr(model, "classes_") and _is_estimator(model)) or n_classes is not None
        metric = "accuracy" if classifier else "r2"
    if isinstance(metric, str):
        scores, base, gib, f, desc = _score_with_scorer(model, table, y, metric, cols, perms, target,
                                                        output, batch_size, progress, weights, n_classes)
        metric_name = metric
    elif callable(metric):
        gib = _direction(metric, greater_is_better)
        f = ScalarModel(model, table, target, output, batch_size, for_metric=True)
        kw = {} if weights is None else {"sample_weight": weights}
        pred_base = f(table.values)
        try:
            base = float(metric(y, pred_base, **kw))
        except TypeError as exc:
            if not kw:
                raise
            raise TypeError(f"sample_weight: the metric {getattr(metric, '__name__', metric)!r} does not "
                            f"take sample_weight= ({exc})") from None
        scores = np.empty((len(names), n_repeats))
        preds = _eval_permuted(f, f.batch_size, table.values, cols, perms, progress)
        for g in range(len(names)):
            for r in range(n_repeats):
                scores[g, r] = float(metric(y, preds[g, r], **kw))
        metric_name = getattr(metric, "__name__", "metric")
        desc = f.description
    else:
        raise TypeError(f"metric must be a scikit-learn scorer name or a callable (y_true, y_pred); got {metric!r}")
    importances = (base - scores) if gib else (scores - base)
    return PermutationImportance(
        feature_names=names, groups={k: [table.names[j] for j in groups[k]] for k in names},
        importances=importances, baseline_score=base, permuted_scores=scores, metric=metric_name,
        greater_is_better=gib, n_repeats=n_repeats, target=desc, output_name=f.output_name,
        n_evals=f.n_evals,
        params={"metric": metric_name, "n_repeats": n_repeats, "max_rows": max_rows,
                "features": {k: [table.names[j] for j in groups[k]] for k in names}, "output": output,
                "sample_weight": weights is not None},
    )


def _eval_permuted(fn: Callable, batch_size: int, base: np.ndarray, cols: list[list[int]], perms: np.ndarray,
                   progress: bool | None) -> np.ndarray:
    """``fn`` (rows -> outputs) on every (group, repeat) permuted copy of ``base``, all copies
    stacked and evaluated one chunk of ``batch_size`` rows per call. Returns shape (G, R, n) + the
    output's trailing shape."""
    G, R, n = perms.shape
    total = G * R * n
    out = None
    for sl in chunks(total, batch_size, desc="permutation importance", progress=progress, unit="rows"):
        r = np.arange(sl.start, sl.stop)
        g, rem = np.divmod(r, R * n)
        rep, i = np.divmod(rem, n)
        rows = base[i]
        for gg in np.unique(g):
            m = g == gg
            c = cols[gg]
            rows[np.ix_(m, c)] = base[np.ix_(perms[gg, rep[m], i[m]], c)]
        pred = np.asarray(fn(rows))
        if out is None:  # labels keep Python objects: a fixed-width string type could truncate
            dtype = pred.dtype if pred.dtype.kind in "biufc" else object
            out = np.empty((total,) + pred.shape[1:], dtype=dtype)
        out[sl] = pred
    return out.reshape((G, R, n) + out.shape[1:])


def _output_regressor(f: ScalarModel):
    """A non-estimator model seen by scikit-learn scorers as a regressor predicting its output."""
    from sklearn.base import BaseEstimator, RegressorMixin

    class OutputRegressor(RegressorMixin, BaseEstimator):
        def __init__(self, f=None):
            self.f = f

        def fit(self, X, y=None):  # pragma: no cover - never fitted; scorers only look for it
            return self

        def predict(self, X):
            return self.f(X)

    return OutputRegressor(f)


def _output_classifier(f: ScalarModel, n_classes: int):
    """A model with ``n_classes`` output columns seen by scikit-learn scorers as a classifier:
    ``predict`` is the arg-max column, ``predict_proba`` the softmax of the outputs (or the
    outputs, where they are probabilities already)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class OutputClassifier(ClassifierMixin, BaseEstimator):
        def __init__(self, f=None):
            self.f = f
            self.classes_ = np.arange(n_classes)

        def fit(self, X, y=None):  # pragma: no cover - never fitted; scorers only look for it
            return self

        def predict(self, X):
            return np.asarray(self.f.raw(X)).argmax(1)

        def predict_proba(self, X):
            o = np.asarray(self.f.raw(X), dtype=np.float64)
            return o if is_probability(o) else softmax(o)

        def decision_function(self, X):
            return np.asarray(self.f.raw(X), dtype=np.float64)

    return OutputClassifier(f)


_RESPONSES = ("predict", "predict_proba", "decision_function")


class _Replay:
    """The estimator as a scikit-learn scorer sees it, answering the scorer's response method
    (``predict``, ``predict_proba``, ``decision_function``) from outputs computed beforehand for
    all permuted copies in large stacked chunks; everything else (classes, tags) is the estimator's.
    A first, recording pass on the unpermuted data learns which methods the scorer calls."""

    def __init__(self, estimator):
        self._est = estimator
        self.cache: dict | None = None  # None: recording
        self.used: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self.__dict__["_est"], name)  # AttributeError passes through: hasattr works
        if name not in _RESPONSES and name != "predict_log_proba":
            return attr

        def respond(X):
            if self.cache is None:
                self.used.append(name)
                return attr(X)
            if name not in self.cache:
                raise RuntimeError(f"the scorer asked for {name}, which it did not use on the unpermuted data")
            return self.cache[name]

        respond.__name__ = name  # scikit-learn dispatches on the method's name
        return respond

    def __sklearn_tags__(self):
        return self._est.__sklearn_tags__()


def _score_with_scorer(model, table: Table, y, metric: str, cols, perms, target, output, batch_size,
                       progress, weights=None, n_classes=None):
    from sklearn.metrics import get_scorer

    try:
        scorer = get_scorer(metric)
    except ValueError as exc:
        raise ValueError(f"metric: {exc}") from None
    f = ScalarModel(model, table, target, output, batch_size)
    if _is_estimator(model):
        if target is not None:
            raise ValueError("target applies to callable metrics; a scikit-learn scorer picks the output it needs")
        estimator = model
        desc = f"the scorer's response ({metric})"
    elif n_classes is not None:
        y_int = np.asarray(y)
        if y_int.dtype.kind not in "biu" and not (y_int.dtype.kind == "f" and np.all(y_int == np.round(y_int))):
            raise ValueError(f"y: a model with {n_classes} output columns is scored as a classifier; y must "
                             "hold integer class indices (or pass metric= and target=)")
        if y_int.min() < 0 or y_int.max() >= n_classes:
            raise ValueError(f"y: class indices must lie in 0..{n_classes - 1} (the model's output columns); "
                             f"got {y_int.min()}..{y_int.max()}")
        estimator = _output_classifier(f, n_classes)
        desc = f"arg-max of the {n_classes} output columns ({metric})"
    else:
        estimator = _output_regressor(f)
        desc = ""
    kw = {} if weights is None else {"sample_weight": weights}
    X0 = table.frame(table.values) if table.labels is not None else table.values
    replay = _Replay(estimator)
    base = float(scorer(replay, X0, y, **kw))
    methods = list(dict.fromkeys(replay.used))
    G, R, n = perms.shape
    f.bb.n_evals += n * len(methods) if estimator is model else 0
    responders = {}
    for m in methods:
        if n_classes is not None and m in _RESPONSES:
            responders[m] = getattr(estimator, m)
        elif estimator is not model:
            responders[m] = f
        elif m in _RESPONSES:
            responders[m] = ScalarModel(model, table, None, m, batch_size, for_metric=True).raw
    if len(responders) < len(methods):  # an unusual response: score each permuted copy directly
        return _score_each_copy(scorer, estimator, f, table, y, cols, perms, progress, kw), base, True, f, desc
    outs = {m: _eval_permuted(fn, f.batch_size, table.values, cols, perms, progress) for m, fn in responders.items()}
    if estimator is model:
        f.bb.n_evals += G * R * n * len(methods)
    scores = np.empty((G, R))
    for g in range(G):
        for r in range(R):
            replay.cache = {m: outs[m][g, r] for m in methods}
            scores[g, r] = float(scorer(replay, X0, y, **kw))
    return scores, base, True, f, desc or f.description


def _score_each_copy(scorer, estimator, f, table, y, cols, perms, progress, kw) -> np.ndarray:
    G, R, n = perms.shape
    scores = np.empty((G, R))
    for g in range(G):
        for r in range(R):
            rows = table.values.copy()
            rows[:, cols[g]] = table.values[np.ix_(perms[g, r], cols[g])]
            f.bb.n_evals += n
            scores[g, r] = float(scorer(estimator, table.frame(rows) if table.labels is not None else rows, y, **kw))
    return scores
