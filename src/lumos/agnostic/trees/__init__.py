"""Tree models read into one flat representation for TreeSHAP.

One module per library, so a reader finds each parser by its file name:

- :mod:`.ensemble` — :class:`TreeEnsemble` (all trees as flat node arrays) and its builder;
- :mod:`.sklearn` — scikit-learn trees, forests and (histogram) gradient boosting;
- :mod:`.xgboost` — XGBoost boosters (JSON dump);
- :mod:`.lightgbm` — LightGBM boosters (``dump_model``);
- :mod:`.paths` — root-to-leaf paths (what TreeSHAP iterates over) and the ensemble's own
  prediction.

No library is imported unless a model of it is given.
"""
from __future__ import annotations

from typing import Any

from .ensemble import Builder, TreeEnsemble

__all__ = ["TreeEnsemble", "Builder", "parse_trees"]


def _alternatives() -> str:
    """The registered Shapley methods that take any model (read from the registry, so the
    suggestion cannot name a method that does not exist)."""
    from ...core.registry import methods

    names = [m.name for m in methods("shapley") if m.models == "any" and m.name != "tree_shap"
             and not m.name.endswith("_interactions")]
    return ", ".join(names)


def parse_trees(model: Any) -> TreeEnsemble:
    """Read a fitted tree model into a :class:`TreeEnsemble`.

    Supported: scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``,
    ``GradientBoosting*``, ``HistGradientBoosting*``; XGBoost (scikit-learn wrapper or
    ``Booster``) and LightGBM (wrapper or ``Booster``) when installed.

    Raises
    ------
    TypeError
        For any other model, naming the registered model-agnostic alternatives.
    """
    if isinstance(model, TreeEnsemble):
        return model
    mod = type(model).__module__
    cls = type(model).__name__
    ens = None
    if mod.startswith("sklearn"):
        from .sklearn import parse_sklearn

        ens = parse_sklearn(model)
    elif mod.startswith("xgboost") and (hasattr(model, "get_booster") or cls == "Booster"):
        from .xgboost import parse_xgboost

        ens = parse_xgboost(model)
    elif mod.startswith("lightgbm") and (hasattr(model, "booster_") or cls == "Booster"):
        from .lightgbm import parse_lightgbm

        ens = parse_lightgbm(model)
    if ens is not None:
        return ens
    name = mod.split(".")[0] + "." + cls
    raise TypeError(
        f"model: tree_shap needs a fitted tree ensemble (scikit-learn trees/forests/gradient "
        f"boosting, XGBoost, LightGBM); got {name}. For any other model use one of the "
        f"model-agnostic Shapley methods: {_alternatives()}."
    )
