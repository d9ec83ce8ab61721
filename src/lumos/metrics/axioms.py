"""Axioms: properties an attribution should satisfy exactly, measured.

- :func:`completeness_gap`: ``|sum(a) - (f(x) - f(x0))|``, the gap to completeness (efficiency)
  that integrated gradients, DeepLIFT, LRP and Shapley values promise (Sundararajan et al., 2017).
- :func:`sensitivity_n`: the correlation between the attribution of random subsets of ``n``
  features and the output change when they are removed, for several ``n`` (Ancona et al., 2018).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.explanation import Explanation
from .layouts import check_explanation, layout
from .registry import register_metric
from .removal import removal_fill
from .results import MetricResult
from .scoring import model_scorer
from .stats import rowwise_pearson
from .faithfulness import subset_effects

__all__ = ["completeness_gap", "sensitivity_n"]


@register_metric("completeness_gap", "axioms", "lower", ("model", "baselines"),
                 "|sum of attributions - (f(x) - f(baselines))|, the gap to completeness (Sundararajan et al., 2017)")
def completeness_gap(model: Any, explanation: Explanation, *, baselines: Any = None, scale: str = "raw",
                     target: Any = None, batch_size: int | None = None) -> MetricResult:
    """Completeness (efficiency) gap: ``|sum_i a_i - (f(x) - f(x0))|`` per sample.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks" (completeness);
    Shapley values' efficiency, LRP's conservation and DeepLIFT's summation-to-delta are the same
    property. It applies to methods that distribute ``f(x) - f(x0)``; for gradients or CAMs the
    gap only says that they do not.

    Parameters
    ----------
    baselines : None, "zero", number or array
        The reference ``x0`` (one for all samples, or one per sample). ``None``: the explanation's
        own reference output (``explanation.baseline_output``, e.g. f at IG's baselines or
        Shapley's E[f]) when it has one, else the zero input. Otherwise the model is evaluated at
        the baselines.
    scale : {"raw", "probability", "auto"}, default "raw"
        The output the attributions are compared with: the raw output, which is what they
        explain (see :func:`lumos.metrics.removal_curve`). With another scale the explanation's
        own reference output (on the raw scale) is not used.

    Returns
    -------
    MetricResult
        ``scores``: the absolute gap; ``meta["relative"]``: gap / |f(x) - f(x0)|.
    """
    explanation = check_explanation(explanation)
    lay = layout(explanation)
    total = np.asarray(explanation.values, dtype=np.float64).reshape(len(explanation), -1).sum(1)
    with model_scorer(model, explanation, target, batch_size=batch_size, scale=scale) as sc:
        f0 = sc.f0
        if baselines is None and explanation.baseline_output is not None and sc.scale == "raw":
            fb, ref = np.asarray(explanation.baseline_output, dtype=np.float64).reshape(-1), "explanation"
        else:
            fill, ref = removal_fill("zero" if baselines is None else baselines, sc.x, lay, name="baselines")
            import torch

            fb = sc.evaluate(sc.n, lambda sl: (fill[sl], torch.arange(sl.start, sl.stop)), desc="baseline")
    gap = np.abs(total - (f0 - fb))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = gap / np.abs(f0 - fb)
    return MetricResult("completeness_gap", gap, "lower", explanation.method, params={"baselines": ref, "scale": sc.scale},
                        meta={"relative": rel, "f_x": f0, "f_baseline": fb})


_DEFAULT_SIZES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


@register_metric("sensitivity_n", "axioms", "higher", ("model",),
                 "Correlation of subset attribution and output change over subset sizes n (Ancona et al., 2018)",
                 forwards=subset_effects, fixed=("tag",))
def sensitivity_n(model: Any, explanation: Explanation, *, sizes: Sequence[float | int] = _DEFAULT_SIZES,
                  n_subsets: int = 32, fill: Any = None, **kwargs: Any) -> MetricResult:
    """Sensitivity-n (Ancona, Ceolini, Öztireli & Gross, 2018, "Towards better understanding of
    gradient-based attribution methods for Deep Neural Networks", ICLR).

    An attribution satisfies sensitivity-n when for every subset S of n features
    ``sum_{i in S} a_i = f(x) - f(x with S removed)``. Measured as the Pearson correlation of both
    sides over ``n_subsets`` random subsets for each size ``n`` in ``sizes``: 1 for every n for the
    exact contributions of a linear model. The score is the mean over the sizes.

    Parameters
    ----------
    sizes : sequence of float in (0, 1] or int
        Subset sizes as fractions of the features or counts.
    n_subsets : int, default 32
        Subsets per size and sample (model evaluations: ``len(sizes) * n_subsets`` per sample).
    fill, features, background, sigma, target, seed, batch_size, progress
        As for :func:`lumos.metrics.removal_curve`.
    scale : {"raw", "probability", "auto"}, default "raw"
        As for :func:`lumos.metrics.faithfulness_correlation`.

    Returns
    -------
    MetricResult
        ``curves``: ``{"x": mean subset size per size (L,), "y": correlation (n, L)}``.
    """
    explanation = check_explanation(explanation)
    sums, drops, counts, lay, n_evals, fill_name, scale = subset_effects(
        model, explanation, list(sizes), n_subsets, fill=fill, tag=23, **kwargs)
    corr = rowwise_pearson(sums, drops)  # (n, L)
    with np.errstate(invalid="ignore"):
        score = np.nanmean(np.where(np.isfinite(corr), corr, np.nan), axis=1) if corr.size else corr
    return MetricResult(
        "sensitivity_n", score, "higher", explanation.method,
        params={"sizes": [float(s) for s in sizes], "n_subsets": n_subsets, "fill": fill_name,
                "scale": scale},
        curves={"x": counts.mean(0), "y": corr}, meta={"n_evals": int(n_evals)},
    )
