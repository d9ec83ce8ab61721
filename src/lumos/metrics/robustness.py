"""Robustness: does the explanation stay put when the input barely moves?

- :func:`max_sensitivity` / :func:`avg_sensitivity`: the largest / mean change of the explanation
  under uniform input noise in a small L∞ ball (Yeh et al., 2019).
- :func:`local_lipschitz`: the largest ratio of explanation change to input change over Gaussian
  neighbours (Alvarez-Melis & Jaakkola, 2018).

The explanation function is re-run (by default the explanation's own method and parameters, see
:func:`lumos.metrics.explainers.make_explainer`) once, on the stack of the inputs and all their
perturbed copies, for the same target class: the method batches the whole stack itself.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.explanation import Explanation
from ..core.validation import check_number
from .explainers import make_explainer
from .layouts import check_explanation
from .registry import register_metric
from .results import MetricResult
from .scoring import row_target
from .streams import row_rng

__all__ = ["max_sensitivity", "avg_sensitivity", "local_lipschitz", "explanation_changes"]


def explanation_changes(model: Any, explanation: Explanation, *, n_samples: int, noise: str, scale: float,
                        explainer: Any = None, method_params: dict | None = None, target: Any = None,
                        seed: int = 0):
    """Explanations at the inputs and at ``n_samples`` perturbed copies of each.

    Returns ``(phi0 (n, m), phis (n, R, m), deltas (n, R, d))``: flattened values at ``x``, at the
    perturbed inputs, and the input perturbations.
    """
    R = check_number(n_samples, "n_samples", low=1, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    scale = check_number(scale, "radius" if noise == "uniform" else "noise_std", low=0, low_open=True)
    explanation = check_explanation(explanation)
    fn, name = make_explainer(explanation, explainer, method_params)
    x = np.asarray(explanation.inputs)
    if x.dtype.kind not in "f":
        raise ValueError("robustness metrics perturb inputs with noise; integer inputs (token ids) have none")
    n, shape = len(x), x.shape[1:]
    deltas = np.empty((n, R) + shape, dtype=x.dtype)
    draw_dtype = np.float32 if x.dtype == np.float32 else np.float64  # float32 draws: half the cost
    for i in range(n):  # draws per (sample, draw), before the batched explanation
        for r in range(R):
            g = row_rng(seed, 9, i, r)
            if noise == "uniform":
                d = g.random(shape, dtype=draw_dtype)
                d *= 2 * scale
                d -= scale
            else:
                d = g.standard_normal(shape, dtype=draw_dtype)
                d *= scale
            deltas[i, r] = d
    stack = np.concatenate([x, (x[:, None] + deltas).reshape((n * R,) + shape)])
    rows = np.concatenate([np.arange(n), np.repeat(np.arange(n), R)])
    tgt = row_target(explanation, target, rows)
    inputs = torch.as_tensor(stack) if _is_torch(model) else stack
    values = np.asarray(fn(model, inputs, tgt), dtype=np.float64)
    if len(values) != len(stack):
        raise ValueError(f"explainer returned {len(values)} rows for {len(stack)} inputs")
    flat = values.reshape(len(stack), -1)
    return flat[:n], flat[n:].reshape(n, R, -1), deltas.reshape(n, R, -1).astype(np.float64), name


def _is_torch(model) -> bool:
    return isinstance(model, torch.nn.Module)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0/0 = 0 (a zero explanation that stays zero did not change)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 0.0))


def _sensitivity(model, explanation, reduce, *, n_samples, radius, normalise, explainer,
                 method_params, target, seed, name):
    phi0, phis, _, method = explanation_changes(
        model, explanation, n_samples=n_samples, noise="uniform", scale=radius, explainer=explainer,
        method_params=method_params, target=target, seed=seed)
    change = np.linalg.norm(phis - phi0[:, None], axis=-1)  # (n, R)
    if normalise:
        change = _ratio(change, np.linalg.norm(phi0, axis=-1)[:, None])
    scores = change.max(1) if reduce == "max" else change.mean(1)
    return MetricResult(
        name, scores, "lower", explanation.method,
        params={"n_samples": n_samples, "radius": radius, "normalise": normalise, "seed": seed,
                "explainer": method},
        curves={"changes": change},
    )


@register_metric("max_sensitivity", "robustness", "lower", ("model", "explainer"),
                 "Largest relative change of the explanation under small uniform input noise (Yeh et al., 2019)")
def max_sensitivity(model: Any, explanation: Explanation, *, n_samples: int = 10, radius: float = 0.02,
                    normalise: bool = True, explainer: Any = None, method_params: dict | None = None,
                    target: Any = None, seed: int = 0) -> MetricResult:
    """Max-sensitivity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, 2019, "On the (In)fidelity and
    Sensitivity of Explanations", NeurIPS).

    ``SENS_max = max_{||δ||_∞ <= r} ||Φ(x + δ) - Φ(x)||_2 / ||Φ(x)||_2``, estimated over
    ``n_samples`` uniform draws of δ. The target class stays the one of the explanation.

    Parameters
    ----------
    n_samples : int, default 10
        Perturbed copies per sample (explanations computed per sample).
    radius : float, default 0.02
        Half-width of the uniform noise, in input units (about 5/255 for images in [0, 1]).
    normalise : bool, default True
        Divide by ``||Φ(x)||_2`` (scale-free, as in Quantus); ``False``: the paper's absolute change.
    explainer : None, str or callable
        The explanation function; default the explanation's own method and parameters
        (see :func:`lumos.metrics.explainers.make_explainer`).
    method_params : dict, optional
    target : optional
        Overrides the explanation's target.
    seed : int, default 0
    """
    return _sensitivity(model, explanation, "max", n_samples=n_samples, radius=radius, normalise=normalise,
                        explainer=explainer, method_params=method_params, target=target, seed=seed,
                        name="max_sensitivity")


@register_metric("avg_sensitivity", "robustness", "lower", ("model", "explainer"),
                 "Mean relative change of the explanation under small uniform input noise (Yeh et al., 2019)")
def avg_sensitivity(model: Any, explanation: Explanation, *, n_samples: int = 10, radius: float = 0.02,
                    normalise: bool = True, explainer: Any = None, method_params: dict | None = None,
                    target: Any = None, seed: int = 0) -> MetricResult:
    """Average sensitivity (Yeh et al., 2019): the mean instead of the max of
    :func:`max_sensitivity`'s changes. Parameters as there."""
    return _sensitivity(model, explanation, "mean", n_samples=n_samples, radius=radius, normalise=normalise,
                        explainer=explainer, method_params=method_params, target=target, seed=seed,
                        name="avg_sensitivity")


@register_metric("local_lipschitz", "robustness", "lower", ("model", "explainer"),
                 "Largest ratio of explanation change to input change over Gaussian neighbours (Alvarez-Melis & Jaakkola, 2018)")
def local_lipschitz(model: Any, explanation: Explanation, *, n_samples: int = 10, noise_std: float = 0.02,
                    explainer: Any = None, method_params: dict | None = None, target: Any = None,
                    seed: int = 0) -> MetricResult:
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola, 2018, "On the Robustness of
    Interpretability Methods").

    ``L(x) = max_{x'} ||Φ(x) - Φ(x')||_2 / ||x - x'||_2`` over ``n_samples`` neighbours
    ``x' = x + N(0, noise_std^2)``. In units of attribution per input unit (not normalised).
    """
    phi0, phis, deltas, method = explanation_changes(
        model, explanation, n_samples=n_samples, noise="gaussian", scale=noise_std, explainer=explainer,
        method_params=method_params, target=target, seed=seed)
    ratio = _ratio(np.linalg.norm(phis - phi0[:, None], axis=-1), np.linalg.norm(deltas, axis=-1))
    return MetricResult(
        "local_lipschitz", ratio.max(1), "lower", explanation.method,
        params={"n_samples": n_samples, "noise_std": noise_std, "seed": seed, "explainer": method},
        curves={"ratios": ratio},
    )
