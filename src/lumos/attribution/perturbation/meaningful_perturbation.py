"""Learned perturbation masks: meaningful perturbation (Fong & Vedaldi, 2017) and extremal
perturbation (Fong, Patrick & Vedaldi, 2019)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...core.execution import chunks
from ...core.registry import register
from ...core.torch_model import check_finite, forward, frozen_parameters, torch_call
from ...core.validation import check_choice, check_number
from ._base import axes_spec, ceil_div, expand_mask, make_fill, upsample

__all__ = ["meaningful_perturbation"]

_GAMES = ("deletion", "preservation")


def _tv(m: torch.Tensor, beta: float) -> torch.Tensor:
    """Total variation per row of ``m`` (r, *cells): sum over axes of mean |finite difference|^beta."""
    out = torch.zeros(len(m), dtype=m.dtype, device=m.device)
    for a in range(1, m.ndim):
        if m.shape[a] > 1:
            out = out + m.diff(dim=a).abs().pow(beta).flatten(1).mean(1)
    return out


class _Adam:
    """Adam (Kingma & Ba, 2015) on one tensor, projected by the caller.

    Written out because ``torch.optim``'s first step imports ``torch._dynamo`` (seconds); the
    update is the standard one with bias correction.
    """

    def __init__(self, param: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.p, self.lr, self.b1, self.b2, self.eps = param, lr, betas[0], betas[1], eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    def step(self, g: torch.Tensor) -> None:
        self.t += 1
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        self.p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


def _check_areas(area: Any) -> list[float] | None:
    if area is None:
        return None
    areas = list(area) if isinstance(area, (list, tuple, np.ndarray)) else [area]
    if not areas:
        raise ValueError("area: give at least one area fraction in (0, 1)")
    return [check_number(a, "area (a fraction of the input, or a list of them)", low=0, high=1,
                         low_open=True, high_open=True) for a in areas]


@register("meaningful_perturbation", "perturbation",
          "Learned smallest deletion/preservation mask; extremal masks of a given area "
          "(Fong & Vedaldi, 2017; Fong, Patrick & Vedaldi, 2019)")
def meaningful_perturbation(model: torch.nn.Module, inputs: Any, target: Any = None, *,
                            game: str = "deletion", area: float | Sequence[float] | None = None,
                            mask_shape: Any = None, fill: Any = "blur", sigma: float = 5.0,
                            background: Any = None, l1: float = 1.0, tv: float = 0.2,
                            tv_beta: float = 3.0, n_iter: int = 300, lr: float = 0.1,
                            probabilities: bool | None = None, area_weight: float = 10.0,
                            area_growth: float = 16.0, progress: bool | None = None,
                            forward_args: Any = None):
    """A smooth mask learned by gradient descent: the region whose deletion destroys the score, or
    whose preservation keeps it.

    Fong & Vedaldi (2017), "Interpretable Explanations of Black Boxes by Meaningful
    Perturbation"; Fong, Patrick & Vedaldi (2019), "Understanding Deep Networks via Extremal
    Perturbations and Smooth Masks".

    A saliency mask ``S`` in [0, 1] is kept at low resolution (``mask_shape``), upsampled
    bilinearly to the input and applied as ``x_S = x * K + fill * (1 - K)`` with ``K = 1 - S``
    in the deletion game (``S`` marks what is deleted) and ``K = S`` in the preservation game
    (``S`` marks what is kept). Adam (projected onto [0, 1] after each step) minimises, per sample,

    - deletion:     ``l1 * mean(S) + tv * TV_beta(S) + score(x_S)``
    - preservation: ``l1 * mean(S) + tv * TV_beta(S) - score(x_S)``

    where ``TV_beta`` is the mean ``|finite difference|^tv_beta`` of the low-resolution mask
    summed over its axes, and ``score`` the softmax probability of the target class (Fong &
    Vedaldi 2017; ``probabilities=False`` uses the raw target scalar).

    With ``area`` the **extremal perturbation** is learned instead: the mask of that area fraction
    which best deletes (deletion) / preserves (preservation) the score. L1 and TV are replaced by
    the area constraint ``area_weight * mean((sort(S) - r_a)^2)`` (``r_a``: a vector with a
    fraction ``a`` of ones), its weight growing geometrically by ``area_growth`` over the
    iterations, and the score is the raw target scalar by default (the logit), as in the paper's
    code. Jitter and the smooth-max mask parametrisation of the paper are left out: the
    low-resolution bilinear mask is what keeps the mask smooth here.

    Every mask (one per sample and area) is optimised on its own, with its own Adam state and
    its own one-row forward and backward passes. Batching rows would make a mask depend on the
    other rows of the batch: a model's kernels round differently for different batch shapes, and
    Adam, which divides each step by the gradient's running magnitude, turns that rounding into
    full steps wherever the gradient is nearly zero; on the demo CNN, masks of the same image
    learned in batches of 1, 3 and 8 differed by up to 100% of their maximum. One row at a time
    costs nothing on a CPU (measured: 8 images x 100 iterations took 3.4 s one row at a time
    vs 3.8 s in one batch on the demo CNN); a GPU is left underused.

    Parameters
    ----------
    model : torch.nn.Module
        Gradients are needed: black-box callables are refused (use occlusion or rise).
    inputs : Tensor or ndarray, shape (batch, ...)
    target : int, sequence, "predicted", callable or None
    game : {"deletion", "preservation"}, default "deletion"
    area : float or list of float in (0, 1), optional
        Extremal perturbation of these area fractions. Several areas: ``values`` is the mean of
        their masks (the paper sums them), each in ``meta["masks_per_area"]``.
    mask_shape : int or tuple, optional
        Resolution of the learned mask per axis (see ``axes_spec``; ``None`` shares it along an
        axis); default a quarter of each masked axis (16 x 16 on 64 x 64 images, all channels
        sharing the mask).
    fill : {"blur", "zero", "mean", "noise"}, float or array, default "blur"
        What the removed part becomes: a blurred copy (std ``sigma``), a constant...
    sigma : float, default 5.0
        Blur standard deviation in elements.
    background : array, optional
        Dataset (samples along the first axis) whose mean is the fill for ``fill="mean"``.
    l1, tv, tv_beta : float, default 1.0, 0.2, 3.0
        Weights of the area (L1) and smoothness (total variation) terms, and the TV exponent.
    n_iter : int, default 300
        Optimisation steps (each one forward and one backward pass per row).
    lr : float, default 0.1
        Adam learning rate.
    probabilities : bool, optional
        Score by the softmax probability of the target class; default True for the games and
        False for extremal perturbations. Ignored for callable targets and scalar outputs.
    area_weight, area_growth : float, default 10.0, 16.0
        Initial weight of the area constraint and its total growth factor over ``n_iter``.
    progress : bool, optional
        Progress bar over the masks (default: on a terminal for long work).
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model (as in :func:`occlusion`): the mask of sample ``i`` is
        learned with the per-sample arguments of sample ``i``. Several explained inputs are
        refused (the mask needs one input's layout). With ``target=lumos.Neuron(layer, index)``
        the unit's activation is the score (never a softmax over the layer's units).

    Returns
    -------
    Explanation
        ``values``: the saliency mask ``S`` upsampled to the input shape (constant along shared
        axes), in [0, 1]. ``meta``: ``score_perturbed`` (score of the final ``x_S`` per sample and
        area), ``mask_area`` (mean of ``S``), ``n_evals`` (forward passes), and
        ``masks_per_area`` for several areas.

    Raises
    ------
    ValueError
        When the target does not depend on the input through a gradient path (an ``argmax``
        inside the model, a detached output): the mask cannot be learned.
    """
    check_choice(game, "game", _GAMES)
    areas = _check_areas(area)
    n_iter = check_number(n_iter, "n_iter", low=1, integer=True)
    l1, tv, lr, tv_beta, area_weight, area_growth = (
        check_number(v, name, low=0) for name, v in (
            ("l1", l1), ("tv", tv), ("lr", lr), ("tv_beta", tv_beta), ("area_weight", area_weight),
            ("area_growth", area_growth)))
    with torch_call(model, inputs, target, method="meaningful_perturbation",
                    forward_args=forward_args) as p:
        model = p.model  # the user's model seen through forward arguments or a Neuron target
        x, n, shape = p.x, p.n, tuple(p.x.shape[1:])
        dev = x.device
        if mask_shape is None:
            spec = axes_spec(1, shape, "mask_shape")
            spec = tuple(None if v is None else max(1, ceil_div(L, 4)) for v, L in zip(spec, shape))
        else:
            spec = axes_spec(mask_shape, shape, "mask_shape")
        masked = [a for a, v in enumerate(spec) if v is not None]
        if not masked:
            raise ValueError("mask_shape: at least one axis must be masked (not None)")
        for a in masked:
            if spec[a] > shape[a]:
                raise ValueError(f"mask_shape has {spec[a]} cells along axis {a}, more than its {shape[a]} elements")
        cells = tuple(spec[a] for a in masked)
        size = tuple(shape[a] for a in masked)
        fill_t, fill_desc = make_fill(fill, x, blur_axes=masked, sigma=sigma, background=background)

        use_prob = (areas is None) if probabilities is None else bool(probabilities)
        # a Neuron's layer is no distribution over classes: its units are never softmaxed
        use_prob = (use_prob and "neuron" not in p.meta and p.target.indices is not None
                    and p.output.ndim == 2 and p.output.shape[1] > 1)
        n_area = 1 if areas is None else len(areas)
        rows_all = torch.arange(n, device=dev).repeat_interleave(n_area)
        area_all = torch.as_tensor(areas or [0.0], dtype=x.dtype, device=dev).repeat(n)
        sign = 1.0 if game == "deletion" else -1.0  # the loss adds sign * score
        growth = float(area_growth) ** (1.0 / max(n_iter - 1, 1))
        n_el = int(np.prod(size))

        masks = torch.empty((n * n_area,) + size, dtype=x.dtype, device=dev)
        final_scores = torch.empty(n * n_area, dtype=torch.float64, device=dev)
        frozen_parameters(model)  # only the mask needs gradients (restored by the guard)

        def score_of(xs, rows):
            out = forward(model, xs, name="masked inputs", rows=rows)
            check_finite(out.detach(), "masked inputs")
            if use_prob:
                out = torch.softmax(out, dim=1)
            return p.target.select(out, rows)

        # one mask per model call: see the docstring (batching makes masks depend on each other)
        for sl in chunks(n * n_area, 1, desc="meaningful perturbation", progress=progress, unit="mask"):
            rows = rows_all[sl]
            r = len(rows)
            xr, fr = x[rows], fill_t[rows]
            # Start from S = 1 (keep everything / delete everything): there the score is far from
            # the regularisers' optimum and its gradient says which cells matter; from S = 0 a
            # saturated softmax gives no gradient and the L1 term wins everywhere.
            s_low = torch.ones((r,) + cells, dtype=x.dtype, device=dev, requires_grad=True)
            adam = _Adam(s_low, lr)
            if areas is not None:
                k = torch.arange(n_el, device=dev)
                # ascending reference: zeros then a fraction `area` of ones
                ref = (k[None] >= (n_el - (area_all[sl] * n_el).round()[:, None])).to(x.dtype)
            weight = float(area_weight)
            for _ in range(n_iter):
                with torch.enable_grad():
                    s_up = upsample(s_low, size)
                    keep = expand_mask(s_up if game == "preservation" else 1 - s_up, spec)
                    xs = xr * keep + fr * (1 - keep)
                    score = score_of(xs, rows)
                    if not score.requires_grad:
                        raise ValueError(
                            "model: its output does not depend on the input (no gradient path from "
                            "inputs to the target: an argmax inside the model, a detached output); "
                            "meaningful_perturbation learns its mask by gradient descent. Use "
                            "occlusion, rise or feature_ablation for such a model."
                        )
                    loss = sign * score
                    if areas is None:
                        loss = loss + l1 * s_low.flatten(1).mean(1) + tv * _tv(s_low, tv_beta)
                    else:
                        srt = s_up.flatten(1).sort(dim=1).values
                        loss = loss + weight * ((srt - ref) ** 2).mean(1)
                    (g,) = torch.autograd.grad(loss.sum(), s_low)
                with torch.no_grad():
                    adam.step(g)
                    s_low.clamp_(0.0, 1.0)
                weight *= growth
            with torch.no_grad():
                s_up = upsample(s_low.detach(), size)
                keep = expand_mask(s_up if game == "preservation" else 1 - s_up, spec)
                final_scores[sl] = score_of(xr * keep + fr * (1 - keep), rows).to(torch.float64)
                masks[sl] = s_up

        masks = masks.reshape((n, n_area) + size)
        values = expand_mask(masks.mean(1), spec).expand((n,) + shape).to(x.dtype).clone()
        scores = final_scores.reshape(n, n_area)
        sample_meta = {
            "score_perturbed": scores[:, 0] if areas is None or n_area == 1 else scores,
            "mask_area": masks.flatten(2).mean(2)[:, 0] if n_area == 1 else masks.flatten(2).mean(2),
        }
        if n_area > 1:
            sample_meta["masks_per_area"] = masks
        meta = {"n_evals": int(n + n * n_area * (n_iter + 1)), "n_backward": int(n * n_area * n_iter),
                "fill": fill_desc, "mask_shape": list(cells), "score": "probability" if use_prob else "raw",
                "variant": "extremal" if areas is not None else "meaningful"}
        params = {"game": game, "area": areas if areas is None or len(areas) > 1 else areas[0],
                  "mask_shape": mask_shape if not isinstance(mask_shape, tuple) else list(mask_shape),
                  "fill": fill if isinstance(fill, (str, int, float)) else "array", "sigma": sigma,
                  "l1": l1, "tv": tv, "tv_beta": tv_beta, "n_iter": n_iter, "lr": lr,
                  "probabilities": probabilities, "area_weight": area_weight, "area_growth": area_growth}
        return p.explanation(values, "meaningful_perturbation", params, meta=meta, sample_meta=sample_meta)
