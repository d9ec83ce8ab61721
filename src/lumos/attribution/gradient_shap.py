"""Gradient SHAP / expected gradients (Erion et al. 2021; SHAP's GradientExplainer).

Expected gradients average integrated gradients over baselines drawn from a background set, and
replace the path integral by a single random point per draw:

    φ(x) = E_{b ~ background, α ~ U(0, 1)} [ (x − b) ⊙ ∇f(b + α (x − b)) ],

an unbiased estimate of the average of IG over the background. With ``noise_std`` > 0 every draw
also perturbs the input, ``x̃ = x + ε``, ``ε ~ N(0, noise_std²)`` (SHAP's ``local_smoothing``,
Captum's ``stdevs``), and uses ``x̃`` in both the point and the difference.

For a linear model the gradient is constant and ``φ = w ⊙ (x − mean of the drawn baselines)``
exactly, whatever the path points. Completeness holds in expectation:
``E[Σφ] = f(x) − E_b f(b)``; the gap of the estimate is reported per sample, with the standard
error of every value over the draws.

The work table rows ``(sample, draw)`` are evaluated ``batch_size`` at a time by the integrated
gradients engine (:func:`lumos.attribution.integrated_gradients._path_attributions`); the draws
come from one random stream per sample position (background rows and path positions first, the
input noise chunk by chunk, so at most one chunk of noise is in memory), so results do not depend
on ``batch_size``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.execution import check_batch_size, rng
from ..core.registry import register
from ..core.torch_model import as_tensor, torch_call
from ..core.validation import check_number
from ._baselines import BaselineSet
from .gradient import row_bytes
from .integrated_gradients import _baseline_outputs, _path_attributions

__all__ = ["gradient_shap"]

# Per-draw attributions kept in memory at once (elements, float64).
_CHUNK_ELEMENTS = 1 << 22


def _draws(seed: int | None, n: int, m: int, n_samples: int):
    """Background indices and path positions of every (sample, draw), and the per-sample streams
    (which then give the input noise of each sample, chunk by chunk: :func:`_noise`)."""
    gens = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    idx = np.empty((n, n_samples), dtype=np.int64)
    alpha = np.empty((n, n_samples))
    for i, g in enumerate(gens):
        idx[i] = g.integers(0, m, n_samples)
        alpha[i] = g.random(n_samples)
    return idx, alpha, gens


def _noise(gens: list, i0: int, i1: int, n_samples: int, noise_std: float, shape: tuple) -> np.ndarray:
    """Input noise of samples ``i0..i1-1``, shape ``(i1 - i0, n_samples, *shape)``, float32."""
    eps = np.empty((i1 - i0, n_samples) + shape, dtype=np.float32)
    for i in range(i0, i1):
        eps[i - i0] = gens[i].normal(0.0, noise_std, (n_samples,) + shape)
    return eps


@register("gradient_shap", "shapley",
          "Expected gradients: gradients at random points between background rows and the input "
          "(Erion et al. 2021)")
def gradient_shap(model: torch.nn.Module, inputs: Any, target: Any = None, *, background: Any = None,
                  n_samples: int = 50, noise_std: float = 0.0, seed: int | None = 0,
                  batch_size: int | None = None, progress: bool | None = None):
    """Gradient SHAP (expected gradients): SHAP values of a differentiable model by sampling.

    Erion, Janizek, Sturmfels, Lundberg & Lee (2021), "Improving performance of deep learning
    models with axiomatic attribution priors and expected gradients"; Lundberg & Lee (2017),
    "A Unified Approach to Interpreting Model Predictions" (GradientExplainer).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...)
    target : int, sequence, "predicted", callable or None
        See :mod:`lumos.core.targets`.
    background : Tensor or ndarray, shape (m, ...)
        Reference inputs (e.g. 50-1000 training samples); each draw picks one uniformly.
    n_samples : int, default 50
        Draws (baseline, path point[, noise]) per sample.
    noise_std : float, default 0.0
        Standard deviation of Gaussian noise added to the input in each draw, absolute (in input
        units; SmoothGrad's ``noise_level`` is relative to the input range instead).
    seed : int, default 0
        Seed of the draws (one independent stream per sample).
    batch_size : int, optional
        Draws per forward+backward pass (default: sized by memory, at most 64).
    progress : bool, optional
        Progress bar; ``None`` shows one on a terminal for long work.

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (the mean over draws). ``baseline_output`` is
        ``E_b f(b)`` over the whole background; ``meta["standard_error"]`` (shape of ``values``)
        the standard error of each value over the draws; ``meta["completeness_gap"]``
        ``|Σφ − (f(x) − E_b f(b))|`` (zero in expectation, not per estimate);
        ``meta["background_index"]`` the background row of every draw, shape (batch, n_samples).
        A NaN or Inf model output at the background or at a path point raises
        :class:`~lumos.core.torch_model.NonFiniteOutputError` naming which.

    Examples
    --------
    >>> expl = lumos.explain(model, images, "gradient_shap", target=3, background=train[:100])
    """
    if background is None:
        raise ValueError("background: gradient_shap needs reference inputs, shape (m, ...) like "
                         "the inputs (for example 100 training samples)")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int; got {n_samples!r}")
    n_samples = int(n_samples)
    noise_std = check_number(noise_std, "noise_std", low=0)
    if isinstance(seed, np.random.Generator):  # one stream per sample needs a seed to spawn from
        raise ValueError("seed must be an int or None; got a numpy Generator")
    rng(seed)  # the seed's own check
    check_batch_size(batch_size)
    params = {"n_samples": n_samples, "noise_std": noise_std, "seed": seed,
              "background": f"<array {tuple(np.shape(background))}>"}
    with torch_call(model, inputs, target, method="gradient_shap") as p:
        bank = as_tensor(background, p.x.device, name="background", dtype=p.x.dtype)
        if tuple(bank.shape[1:]) != tuple(p.x.shape[1:]):
            raise ValueError(f"background rows have shape {tuple(bank.shape[1:])} but the inputs "
                             f"have {tuple(p.x.shape[1:])}; give background shape (m, "
                             f"{', '.join(map(str, p.x.shape[1:]))})")
        n, m, shape = p.n, len(bank), tuple(p.x.shape[1:])
        bs = check_batch_size(batch_size, row_bytes=row_bytes(p.x))
        idx, alpha, gens = _draws(seed, n, m, n_samples)
        size = int(np.prod(shape)) if shape else 1
        per = max(1, _CHUNK_ELEMENTS // (n_samples * size))   # samples per chunk of draws
        values = torch.empty((n,) + shape, dtype=torch.float64)
        se = torch.empty((n,) + shape, dtype=torch.float64)
        totals = torch.empty((n, n_samples), dtype=torch.float64)
        for i0 in range(0, n, per):
            i1 = min(n, i0 + per)
            c = i1 - i0
            rows = torch.arange(c * n_samples)
            sample = torch.arange(i0, i1).repeat_interleave(n_samples)
            if noise_std == 0:
                x_in, in_idx = p.x, sample
            else:  # the noisy inputs of these draws, one row per draw
                eps = _noise(gens, i0, i1, n_samples, noise_std, shape)
                x_in = p.x[sample] + torch.as_tensor(eps.reshape((-1,) + shape),
                                                     device=p.x.device, dtype=p.x.dtype)
                in_idx = rows
            per_draw = _path_attributions(
                model, p.target, inputs=x_in, bank=bank, input_idx=in_idx,
                baseline_idx=torch.as_tensor(idx[i0:i1].reshape(-1)),
                alphas=torch.as_tensor(alpha[i0:i1].reshape(-1), dtype=torch.float64),
                weights=torch.ones(len(rows), dtype=torch.float64), out_idx=rows,
                target_rows=sample, n_out=len(rows), batch_size=bs, progress=progress,
                desc="gradient shap", what="gradient-SHAP path points" + (
                    " (noisy inputs)" if noise_std else ""),
            ).cpu().view((c, n_samples) + shape)
            values[i0:i1] = per_draw.mean(1)
            se[i0:i1] = (per_draw.std(1, correction=1) / np.sqrt(n_samples) if n_samples > 1
                         else torch.full_like(per_draw[:, 0], float("nan")))
            totals[i0:i1] = per_draw.reshape(c, n_samples, -1).sum(-1)
        everyone = BaselineSet(bank, torch.arange(m).repeat(n, 1), "background")
        f_base = _baseline_outputs(model, everyone, p.target, batch_size=bs,
                                   what="the background rows").cpu()
        delta = p.scalar.cpu().to(torch.float64) - f_base
        gap = (values.reshape(n, -1).sum(1) - delta).abs()
        tot_se = (totals.std(1, correction=1) / np.sqrt(n_samples) if n_samples > 1
                  else torch.full((n,), float("nan"), dtype=torch.float64))
        meta = {"n_samples": n_samples, "noise_std": noise_std, "seed": seed, "n_background": m,
                "n_model_rows": n * n_samples}
        return p.explanation(
            values.to(p.x.dtype), "gradient_shap", params, meta=meta,
            baseline_output=f_base.to(p.x.dtype),
            sample_meta={"completeness_gap": gap.numpy(), "standard_error": se.numpy(),
                         "total_standard_error": tot_se.numpy(), "background_index": idx},
        )
