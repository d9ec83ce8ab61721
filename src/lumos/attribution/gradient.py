"""Saliency (Simonyan, Vedaldi & Zisserman, 2014) and gradient × input (Shrikumar et al., 2016).

Both need exactly one forward and one backward pass per sample. They run under
``torch_call(..., clean_forward=False)`` and take the model output (and so the target) from the
same forward pass whose graph they differentiate, instead of paying for a separate clean pass.

Row kernels
-----------
A gradient method may expose ``func.row_kernel(model, x, target, rows, *, batch_size, progress,
**params) -> Tensor``: its attribution for every row of an already validated tensor ``x``, where
``rows[k]`` is the original sample of row ``k`` (for ``target.select``, and for the per-sample
forward arguments of a bound model: ``model`` is ``Prepared.model``). Wrappers that evaluate a
method on many perturbed copies (SmoothGrad) call the kernel on their stacked batch and so skip the
method's own input checks and clean forward pass. The kernel runs inside the caller's model guard.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.execution import check_batch_size, chunks
from ..core.registry import register
from ..core.targets import Target, resolve_target
from ..core.layout import BatchLayout, layout_for, memory_format_of, run_in_layout  # noqa: F401 (re-exported)
from ..core.torch_model import Prepared, check_finite, forward, gradient, torch_call

__all__ = ["saliency", "gradient_x_input", "batched_gradient", "fused_input_gradient",
           "checked_gradient", "row_bytes", "slice_target"]

_MODES = ("signed", "abs", "squared")


def checked_gradient(model, x: torch.Tensor, target: Target, rows, what: str) -> torch.Tensor:
    """:func:`lumos.core.torch_model.gradient` of rows ``x``, with the explained scalars and the
    gradient checked finite (:func:`check_finite` names ``what``, the evaluation that went bad)."""
    g, s = gradient(model, x, target, rows=rows)
    check_finite(s, what)
    check_finite(g, f"{what} (the gradient of the target)")
    return g


def row_bytes(x: torch.Tensor) -> int:
    """Bytes of one row of ``x``: sizes the default ``batch_size`` by memory."""
    return int(x[0].numel() * x.element_size()) if len(x) else 1


def batched_gradient(model, x: torch.Tensor, target, rows=None, batch_size: int | None = None,
                     progress: bool | None = None, desc: str = "",
                     what: str = "the inputs") -> torch.Tensor:
    """Gradient of the target scalar for every row of ``x``, evaluated ``batch_size`` rows at a time.

    ``rows[k]`` is the original sample of row ``k`` (for per-sample targets); ``None`` means the
    rows are the samples themselves. Rows are fed in :func:`layout_for`'s layout; the result has
    the layout of ``x``. Every evaluation is checked finite (``what`` names the rows in the error).
    """
    if rows is None:
        rows = torch.arange(len(x))
    fmt = layout_for(model, x)
    own = memory_format_of(x) or torch.contiguous_format
    bs = check_batch_size(batch_size, row_bytes=row_bytes(x))
    if len(x) <= bs:  # one pass: no copy into a result buffer
        return run_in_layout(model, lambda t: checked_gradient(model, t, target, rows, what), x,
                             fmt).contiguous(memory_format=own)
    out = torch.empty_like(x, memory_format=own)
    for sl in chunks(len(x), bs, desc=desc, progress=progress):
        out[sl] = run_in_layout(model, lambda t: checked_gradient(model, t, target, rows[sl], what),
                                x[sl], fmt)
    return out


def slice_target(spec: Any, sl: slice, n: int, name: str = "target") -> Any:
    """The part of a per-sample target that belongs to rows ``sl`` (other kinds pass through)."""
    if spec is None or isinstance(spec, (str, bool, int, np.integer)) or callable(spec):
        return spec
    arr = np.asarray(spec.detach().cpu().numpy() if isinstance(spec, torch.Tensor) else spec)
    if arr.ndim == 1 and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries but there are {n} samples")
    return arr[sl] if arr.ndim == 1 else spec  # other shapes: resolve_target explains the error


def fused_input_gradient(p: Prepared, batch_size: int | None = None, progress: bool | None = None,
                         desc: str = "") -> torch.Tensor:
    """Gradient of the target w.r.t. ``p.x``, one forward+backward pass per chunk, nothing more.

    For ``torch_call(..., clean_forward=False)``: the target is resolved on each chunk's own
    output, and ``p.resolve`` is called with the whole output at the end, so ``p.output``,
    ``p.target`` and ``p.scalar`` are set as if a clean pass had been made.
    """
    model, x = p.model, p.x
    n = len(x)
    bs = check_batch_size(batch_size, row_bytes=row_bytes(x))
    fmt = layout_for(model, x)
    grads = torch.empty_like(x, memory_format=torch.contiguous_format) if n > bs else None
    outs, tgt = [], None

    def one_pass(xs, spec, rows):
        xs = xs.detach().requires_grad_(True)
        with torch.enable_grad():
            out = forward(model, xs, rows=rows)
            check_finite(out.detach(), "the inputs")
            tgt = resolve_target(spec, out.detach())
            s = tgt.select(out)
            if not s.requires_grad:
                raise ValueError(
                    "model: its output does not depend on the input (no gradient path from inputs "
                    "to the target); check that the model uses its input and is not detached"
                )
            (g,) = torch.autograd.grad(s.sum(), xs, allow_unused=True)
        if g is None:
            raise ValueError("model: its output does not depend on the input (the gradient is undefined)")
        check_finite(g, "the inputs (the gradient of the target)")
        return g, out.detach(), tgt

    for sl in chunks(n, bs, desc=desc, progress=progress):
        spec = slice_target(p.target_spec, sl, n)  # a wrong length fails before any model call
        rows = torch.arange(sl.start, sl.stop)  # per-sample forward arguments follow their rows
        g, out, tgt = run_in_layout(model, lambda t: one_pass(t, spec, rows), x[sl], fmt)
        if grads is None:  # one chunk: keep its gradient, no copy
            grads = g.contiguous()
        else:
            grads[sl] = g
        outs.append(out)
    # one chunk: its target was resolved on the whole output already
    p.resolve(outs[0], tgt) if len(outs) == 1 else p.resolve(torch.cat(outs))
    return grads


def _apply_mode(g: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "signed":
        return g
    return g.abs() if mode == "abs" else g * g


def _check_mode(mode: Any) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    return mode


@register("saliency", "gradient", "Gradient of the target w.r.t. the input (signed, |.| or squared)")
def saliency(model: torch.nn.Module, inputs: Any, target: Any = None, *, mode: str = "signed",
             batch_size: int | None = None, progress: bool | None = None,
             forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
    """Saliency map: the gradient of the target scalar with respect to the input.

    Simonyan, Vedaldi & Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps".

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs (a model ``model(x1, x2)`` or ``model(a=..., b=...)``) give one values
        array per input.
    target : int, sequence, "predicted", callable, lumos.Neuron or None
        See :mod:`lumos.core.targets`. Default: the predicted class (or the output itself for a
        scalar-output model). ``lumos.Neuron("layer", index)`` explains a unit inside the network.
    mode : {"signed", "abs", "squared"}, default "signed"
        The raw gradient, its absolute value (the paper's map before the channel max), or its square.
    batch_size : int, optional
        Samples per forward+backward pass (default: sized by memory, at most 64).
    progress : bool, optional
        Progress bar: ``None`` shows one on a terminal for long work.
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag); per-sample ones
        (first axis of batch length) go with their sample in every chunk (see
        :mod:`lumos.core.inputs`).
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation instead of
        the inputs (a dotted name, see ``lumos.layers(model)``); ``values`` then has the
        activation's shape.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (one array per input for several inputs; the
        activation's shape with ``at=``).

    Examples
    --------
    >>> expl = lumos.explain(model, images, "saliency", target="predicted", mode="abs")
    """
    mode = _check_mode(mode)
    with torch_call(model, inputs, target, method="saliency", clean_forward=False,
                    forward_args=forward_args, several=True, at=at, layer_side=layer_side) as p:
        g = fused_input_gradient(p, batch_size, progress, desc="saliency")
        return p.explanation(_apply_mode(g, mode), "saliency", {"mode": mode})


def _saliency_kernel(model, x: torch.Tensor, target: Target, rows, *, mode: str = "signed",
                     batch_size: int | None = None, progress: bool | None = None) -> torch.Tensor:
    return _apply_mode(batched_gradient(model, x, target, rows, batch_size, progress, "saliency"),
                       _check_mode(mode))


saliency.row_kernel = _saliency_kernel


@register("gradient_x_input", "gradient", "Gradient times input (Shrikumar et al., 2016)")
def gradient_x_input(model: torch.nn.Module, inputs: Any, target: Any = None, *,
                     batch_size: int | None = None, progress: bool | None = None,
                     forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
    """Gradient × input: the first-order Taylor contribution of each input element.

    Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box: Learning Important
    Features Through Propagating Activation Differences". On a linear model it equals ``w ⊙ x``.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
    target : int, sequence, "predicted", callable, lumos.Neuron or None
    batch_size : int, optional
        Samples per forward+backward pass (default: sized by memory, at most 64).
    progress : bool, optional
    forward_args, at, layer_side
        As for :func:`saliency`. With ``at=`` the values are gradient × activation.

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (one array per input for several inputs; the
        activation's shape with ``at=``).
    """
    with torch_call(model, inputs, target, method="gradient_x_input", clean_forward=False,
                    forward_args=forward_args, several=True, at=at, layer_side=layer_side) as p:
        g = fused_input_gradient(p, batch_size, progress, desc="gradient x input")
        return p.explanation(g * p.x, "gradient_x_input", {})


def _gxi_kernel(model, x: torch.Tensor, target: Target, rows, *, batch_size: int | None = None,
                progress: bool | None = None) -> torch.Tensor:
    return batched_gradient(model, x, target, rows, batch_size, progress, "gradient x input") * x


gradient_x_input.row_kernel = _gxi_kernel
