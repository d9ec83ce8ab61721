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
gradients engine (:func:`lumos.attribution.integrated_gradients._path_attributions`). Draw ``j``
(its background row, path position and input noise) comes from its own random stream keyed by
``(seed, j)`` and is shared by all samples, as SmoothGrad's noise draws are: a sample's result
depends only on the sample and the seed -- not on ``batch_size``, not on the other samples, and
not on where the sample sits in the batch (the draws used to come from one stream per batch
*position*, so the same image explained first or third in a batch got different values). Each
sample's estimate is still unbiased; the draws of different samples are the same (common random
numbers), so their errors are correlated.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.execution import check_batch_size
from ..core.registry import register
from ..core.torch_model import as_tensor, torch_call
from ..core.validation import check_number
from ._baselines import BaselineSet
from .gradient import row_bytes
from .integrated_gradients import _baseline_outputs, _describe, _packed_baselines, _path_attributions
from .smoothgrad import _check_seed, noise_draws

__all__ = ["gradient_shap"]

# Per-draw attributions kept in memory at once (elements, float64).
_CHUNK_ELEMENTS = 1 << 22


def _draws(seed: int, m: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Background index and path position of every draw ``j``, shape ``(n_samples,)`` each.

    Draw ``j`` comes from its own stream keyed by ``(seed, j)`` (SmoothGrad's convention,
    :func:`lumos.attribution.smoothgrad.noise_draws`, which gives the draw's input noise from the
    stream ``(seed, j)``; the index and position use the key ``(seed, j, 1)``), shared by all
    samples: a sample's result depends on the sample and the seed only, never on its place in
    the batch, the other samples or ``batch_size``; and the first draws stay the same when
    ``n_samples`` grows.
    """
    idx = np.empty(n_samples, dtype=np.int64)
    alpha = np.empty(n_samples)
    for j in range(n_samples):
        g = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(j, 1)))
        idx[j], alpha[j] = g.integers(0, m), g.random()
    return idx, alpha


@register("gradient_shap", "shapley",
          "Expected gradients: gradients at random points between background rows and the input "
          "(Erion et al. 2021)")
def gradient_shap(model: torch.nn.Module, inputs: Any, target: Any = None, *, background: Any = None,
                  n_samples: int = 50, noise_std: float = 0.0, seed: int | None = 0,
                  batch_size: int | None = None, progress: bool | None = None,
                  forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
    """Gradient SHAP (expected gradients): SHAP values of a differentiable model by sampling.

    Erion, Janizek, Sturmfels, Lundberg & Lee (2021), "Improving performance of deep learning
    models with axiomatic attribution priors and expected gradients"; Lundberg & Lee (2017),
    "A Unified Approach to Interpreting Model Predictions" (GradientExplainer).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs give one values array per input (completeness in expectation over all
        of them together).
    target : int, sequence, "predicted", callable, lumos.Neuron or None
        See :mod:`lumos.core.targets`; ``lumos.Neuron("layer", index)`` explains a unit.
    background : Tensor or ndarray, shape (m, ...), or a tuple / dict of them
        Reference inputs (e.g. 50-1000 training samples); each draw picks one uniformly. With
        several inputs, one ``(m, ...)`` array per input (row ``r`` of each is one reference).
        With ``at=``, activations of that layer (``lumos.core.torch_model.through(model, at,
        background_inputs)`` maps reference inputs there).
    n_samples : int, default 50
        Draws (baseline, path point[, noise]) per sample.
    noise_std : float, default 0.0
        Standard deviation of Gaussian noise added to the input in each draw, absolute (in input
        units; SmoothGrad's ``noise_level`` is relative to the input range instead).
    seed : int or None, default 0
        Seed of the draws. Draw ``j`` (its background row, path position and input noise) comes
        from its own stream keyed by ``(seed, j)`` and is shared by all samples, as SmoothGrad's
        noise: a sample's values depend only on the sample and the seed, never on its place in
        the batch or on the other samples. ``None`` draws a seed from the OS (recorded in
        ``meta["seed"]``).
    batch_size : int, optional
        Draws per forward+backward pass (default: sized by memory, at most 64).
    progress : bool, optional
        Progress bar; ``None`` shows one on a terminal for long work.
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained; per-sample ones (first axis of
        batch length) go with their sample to each of its draws and to the background
        evaluations (see :mod:`lumos.core.inputs`).
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation; the
        background is then made of activations, and ``values`` has the activation's shape.
    layer_side : {"output", "input"}, default "output"

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
    if isinstance(seed, np.random.Generator):  # one stream per draw needs a seed to key it
        raise ValueError("seed must be an int or None; got a numpy Generator")
    seed = _check_seed(seed)
    check_batch_size(batch_size)
    params = {"n_samples": n_samples, "noise_std": noise_std, "seed": seed,
              "background": _describe(background)}
    with torch_call(model, inputs, target, method="gradient_shap", forward_args=forward_args,
                    several=True, at=at, layer_side=layer_side) as p:
        _, background = _packed_baselines(p, None, background)
        bank = as_tensor(background, p.x.device, name="background", dtype=p.x.dtype)
        if tuple(bank.shape[1:]) != tuple(p.x.shape[1:]):
            raise ValueError(f"background rows have shape {tuple(bank.shape[1:])} but the inputs "
                             f"have {tuple(p.x.shape[1:])}; give background shape (m, "
                             f"{', '.join(map(str, p.x.shape[1:]))})")
        n, m, shape = p.n, len(bank), tuple(p.x.shape[1:])
        bs = check_batch_size(batch_size, row_bytes=row_bytes(p.x))
        idx, alpha = _draws(seed, m, n_samples)
        if noise_std:  # the draws' input noise, shared by all samples like the rest of a draw
            eps = noise_std * noise_draws(seed, range(n_samples), shape, p.x.dtype, p.x.device)
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
                x_in = p.x[sample] + eps.repeat((c,) + (1,) * len(shape))
                in_idx = rows
            per_draw = _path_attributions(
                p.model, p.target, inputs=x_in, bank=bank, input_idx=in_idx,
                baseline_idx=torch.as_tensor(np.tile(idx, c)),
                alphas=torch.as_tensor(np.tile(alpha, c), dtype=torch.float64),
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
        f_base = _baseline_outputs(p.model, everyone, p.target, batch_size=bs,
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
                         "total_standard_error": tot_se.numpy(),
                         "background_index": np.broadcast_to(idx, (n, n_samples)).copy()},
        )
