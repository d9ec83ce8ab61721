"""lumos.metrics: measure an explanation as easily as computing one.

Every metric takes an :class:`~lumos.core.explanation.Explanation` (images, tabular rows, token
sequences), and the model when it needs one, and returns a :class:`MetricResult`: one score per
sample, ``.mean`` / ``.std`` over samples, the metric's ``direction`` ("higher" or "lower" is
better) and its curves. :func:`available` lists the metrics with their family, direction and
what they need; :func:`evaluate` runs one by name; :func:`compare` scores several methods with
several metrics and ranks them.

>>> import lumos, lumos.metrics as lm
>>> expl = lumos.explain(model, images, method="saliency", target="predicted")
>>> lm.deletion(model, expl).mean
>>> lm.pointing_game(expl, masks=masks).mean
>>> print(lm.available())
"""
from ..core.superpixels import superpixels
from .explainers import make_explainer
from .layouts import Layout, layout
from .registry import MetricInfo, available, evaluate, get_metric, register_metric
from .removal import noisy_linear_impute
from .results import MetricResult
from .faithfulness import (
    deletion, deletion_lerf, faithfulness_correlation, infidelity, insertion, monotonicity, removal_curve,
    road,
)
from .robustness import avg_sensitivity, local_lipschitz, max_sensitivity
from .randomisation import (
    map_similarity, model_parameter_randomisation, random_logit, randomisable_layers, randomisation_independent,
    randomise_layer,
)
from .localisation import localisation_auc, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy
from .complexity import entropy, sparseness
from .axioms import completeness_gap, sensitivity_n
from .comparison import Comparison, compare, random_explanation

__all__ = [
    "MetricResult", "MetricInfo", "Layout", "available", "evaluate", "get_metric", "register_metric",
    "layout", "superpixels", "make_explainer", "noisy_linear_impute",
    "deletion", "deletion_lerf", "insertion", "road", "removal_curve", "faithfulness_correlation",
    "infidelity", "monotonicity",
    "max_sensitivity", "avg_sensitivity", "local_lipschitz",
    "model_parameter_randomisation", "randomisation_independent", "random_logit", "randomisable_layers",
    "randomise_layer", "map_similarity",
    "pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "localisation_auc",
    "sparseness", "entropy", "completeness_gap", "sensitivity_n",
    "compare", "Comparison", "random_explanation",
]
