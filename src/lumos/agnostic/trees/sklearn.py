"""scikit-learn trees: ``DecisionTree*``, ``ExtraTree*``, ``RandomForest*``, ``ExtraTrees*``,
``GradientBoosting*`` and ``HistGradientBoosting*`` read into a :class:`~.ensemble.TreeEnsemble`."""
from __future__ import annotations

import numpy as np

from .ensemble import Builder, TreeEnsemble

__all__ = ["parse_sklearn"]


def _sklearn_tree(b: Builder, tree, value, output=None):
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
    b = Builder(k)
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
    b = Builder(k)
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
                   output_space=space, model_type=type(model).__name__, reference=ref,
                   link=_link(is_classifier(model), k))


def _parse_sklearn_hgb(model) -> TreeEnsemble:
    from sklearn.base import is_classifier

    k = len(model._predictors[0])
    b = Builder(k)
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
                   output_space=space, model_type=type(model).__name__, reference=ref,
                   link=_link(clf, k) if clf or space == "raw" else "other")



def _link(classifier: bool, k: int) -> str:
    """Gradient boosting: a classifier's margins become probabilities by the logistic (binary)
    or the softmax (several classes)."""
    if not classifier:
        return "identity"
    return "logistic" if k == 1 else "softmax"


def parse_sklearn(model) -> TreeEnsemble | None:
    """The ensemble of a fitted scikit-learn tree model, or ``None`` for any other estimator."""
    from sklearn.utils.validation import check_is_fitted

    cls = type(model).__name__
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
    return None
