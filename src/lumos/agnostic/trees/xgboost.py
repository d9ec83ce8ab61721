"""XGBoost (scikit-learn wrapper or ``Booster``) read from its JSON dump into a
:class:`~.ensemble.TreeEnsemble`; xgboost is imported only when such a model is given."""
from __future__ import annotations

import numpy as np

from .ensemble import Builder, TreeEnsemble

__all__ = ["parse_xgboost"]


def parse_xgboost(model) -> TreeEnsemble:
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
    b = Builder(k)
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
                  output_space="margin", model_type=type(model).__name__,
                  link=_xgb_link(learner["objective"]["name"]))
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



def _xgb_link(objective: str) -> str:
    if objective in ("binary:logistic", "reg:logistic"):
        return "logistic"
    if objective in ("multi:softprob", "multi:softmax"):
        return "softmax"
    if objective in ("reg:squarederror", "reg:pseudohubererror", "reg:absoluteerror",
                     "reg:quantileerror"):
        return "identity"
    return "other"
