"""Saliency (Simonyan, Vedaldi & Zisserman, 2014) and gradient × input (Shrikumar et al., 2016)."""
from __future__ import annotations

from typing import Any

import torch

from ..core.execution import chunks
from ..core.registry import register
from ..core.torch_model import gradient, torch_call

__all__ = ["saliency", "gradient_x_input", "batched_gradient"]

_MODES = ("signed", "abs", "squared")


def batched_gradient(model, x: torch.Tensor, target, rows=None, batch_size: int | None = None,
                     progress: bool | None = None, desc: str = "") -> torch.Tensor:
    """Gradient of the target scalar for every row of ``x``, evaluated ``batch_size`` rows at a time.

    ``rows[k]`` is the original sample of row ``k`` (for per-sample targets); ``None`` means the
    rows are the samples themselves.
    """
    if rows is None:
        rows = torch.arange(len(x))
    out = torch.empty_like(x)
    for sl in chunks(len(x), batch_size, desc=desc, progress=progress):
        out[sl], _ = gradient(model, x[sl], target, rows=rows[sl])
    return out


@register("saliency", "gradient", "Gradient of the target w.r.t. the input (signed, |.| or squared)")
def saliency(model: torch.nn.Module, inputs: Any, target: Any = None, *, mode: str = "signed",
             batch_size: int | None = None, progress: bool | None = None):
    """Saliency map: the gradient of the target scalar with respect to the input.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks".

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...)
    target : int, sequence, "predicted", callable or None
    mode : {"signed", "abs", "squared"}, default "signed"
        The raw gradient, its absolute value (the paper's map before the channel max), or its square.
    batch_size : int, optional
        Samples per backward pass.

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    with torch_call(model, inputs, target, method="saliency") as p:
        g = batched_gradient(model, p.x, p.target, batch_size=batch_size,
                             progress=progress, desc="saliency")
        values = {"signed": g, "abs": g.abs(), "squared": g * g}[mode]
        return p.explanation(values, "saliency", {"mode": mode})


@register("gradient_x_input", "gradient", "Gradient times input (Shrikumar et al., 2016)")
def gradient_x_input(model: torch.nn.Module, inputs: Any, target: Any = None, *,
                     batch_size: int | None = None, progress: bool | None = None):
    """Gradient × input: the first-order Taylor contribution of each input element.

    Shrikumar et al. (2016), "Not Just a Black Box"; on a linear model it equals ``w ⊙ x``.

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs``.
    """
    with torch_call(model, inputs, target, method="gradient_x_input") as p:
        g = batched_gradient(model, p.x, p.target, batch_size=batch_size,
                             progress=progress, desc="gradient x input")
        return p.explanation(g * p.x, "gradient_x_input", {})
