"""Complexity: how concentrated is the explanation?

Both metrics read the magnitude of the attribution per map element (for images the per-pixel sum
of ``|values|`` over channels) or per feature when ``features`` groups elements.

- :func:`sparseness`: the Gini index of the magnitudes (Chalasani et al., 2020), 0 for a uniform
  map, ``1 - 1/N`` for a single non-zero element. Higher: sparser.
- :func:`entropy`: Shannon entropy of the magnitudes as a distribution (Bhatt et al., 2020),
  ``log N`` for a uniform map, 0 for a single element. Lower: simpler.

Neither says whether the explanation is right: a sparse map can be sparse on the wrong pixels.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.explanation import Explanation
from .layouts import check_explanation, layout
from .registry import register_metric
from .results import MetricResult

__all__ = ["sparseness", "entropy"]


def _magnitudes(explanation: Explanation, features: Any) -> np.ndarray:
    explanation = check_explanation(explanation)
    lay = layout(explanation, features)
    if features is None:
        return lay.abs_map.reshape(lay.n, -1)
    return lay.feature_sums(lay.abs_map)  # padding features are 0: they do not change the Gini


@register_metric("sparseness", "complexity", "higher", (),
                 "Gini index of the attribution magnitudes (Chalasani et al., 2020)")
def sparseness(explanation: Explanation, *, features: Any = None) -> MetricResult:
    """Sparseness: the Gini index of ``|a|`` (Chalasani, Chen, Chowdhury, Wu & Jha, 2020, "Concise
    Explanations of Neural Networks using Adversarial Training", ICML; Hurley & Rickard, 2009).

    ``G = sum_k (2k - N - 1) a_(k) / (N sum_k a_(k))`` over the ascending magnitudes ``a_(k)``;
    NaN for an all-zero map.

    Parameters
    ----------
    features : int array, optional
        Group elements into features first (superpixels); see :func:`lumos.metrics.layout`.
    """
    a = np.sort(_magnitudes(explanation, features), axis=1)
    n, N = a.shape
    k = np.arange(1, N + 1)
    total = a.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(total > 0, ((2 * k - N - 1) * a).sum(1) / (N * np.where(total > 0, total, 1.0)), np.nan)
    return MetricResult("sparseness", g, "higher", explanation.method, meta={"n_elements": N})


@register_metric("entropy", "complexity", "lower", (),
                 "Shannon entropy of the attribution magnitudes as a distribution (Bhatt et al., 2020)")
def entropy(explanation: Explanation, *, features: Any = None) -> MetricResult:
    """Complexity as entropy (Bhatt, Weller & Moura, 2020, "Evaluating and Aggregating
    Feature-based Model Explanations", IJCAI): ``-sum_i p_i log p_i`` with ``p_i = |a_i| / sum|a|``
    (natural log); NaN for an all-zero map.
    """
    a = _magnitudes(explanation, features)
    total = a.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / np.where(total > 0, total, 1.0)
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)
    h = np.where(total[:, 0] > 0, h, np.nan)
    return MetricResult("entropy", h, "lower", explanation.method, meta={"n_elements": a.shape[1]})
