"""LightGBM (scikit-learn wrapper or ``Booster``) read from ``dump_model`` into a
:class:`~.ensemble.TreeEnsemble`."""
from __future__ import annotations

import numpy as np

from .ensemble import Builder, TreeEnsemble

__all__ = ["parse_lightgbm"]


def parse_lightgbm(model) -> TreeEnsemble:
    booster = model.booster_ if hasattr(model, "booster_") else model
    best = getattr(booster, "best_iteration", 0) or 0
    dump = booster.dump_model(num_iteration=best if best > 0 else None)
    k = int(dump.get("num_tree_per_iteration", 1))
    if dump.get("average_output"):
        raise ValueError("model: LightGBM random-forest mode (average_output) is not supported")
    b = Builder(k)
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

    link, scale = _lgb_link(str(dump.get("objective", "")))
    return b.build(0.0, n_feat, input_dtype=np.float64, output_name="raw_score",
                   output_space="raw score (margin)", model_type=type(model).__name__,
                   link=link, link_scale=scale,
                   reference=ref)



def _lgb_link(objective: str) -> tuple[str, float]:
    """``"binary sigmoid:1"`` -> ("logistic", 1.0); ``"multiclass num_class:3"`` -> softmax."""
    name = objective.split(" ")[0]
    if name in ("binary", "cross_entropy", "xentropy"):
        m = [t for t in objective.split(" ") if t.startswith("sigmoid:")]
        return "logistic", float(m[0].split(":")[1]) if m else 1.0
    if name in ("multiclass", "softmax"):
        return "softmax", 1.0
    if name in ("regression", "regression_l2", "l2", "regression_l1", "l1", "huber", "fair",
                "quantile", "mape"):
        return "identity", 1.0
    return "other", 1.0
