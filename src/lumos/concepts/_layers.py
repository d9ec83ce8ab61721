"""Streaming a data set through one layer: activations, and gradients of class logits there.

Shared by dissection, unit ablation and TCAV. Callers hold a :class:`~lumos.core.torch_model.ModelGuard`.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch

from ..core.execution import check_batch_size
from ..core.layout import layout_for, run_in_layout
from ..core.torch_model import activation, check_finite, forward, get_module

__all__ = ["layer_activations", "layer_gradients"]


def layer_activations(model, x: torch.Tensor, at: Any, batch_size: int | None = None
                      ) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, activation)`` of layer ``at`` over ``x`` in batches; the pass stops at the layer.

    Batches go in :func:`~lumos.core.layout.layout_for`'s layout (channels-last for CPU conv
    nets); activations may come back channels-last (same values, other strides).
    """
    bs = check_batch_size(batch_size, row_bytes=x[0].numel() * x.element_size())
    fmt = layout_for(model, x)
    for start in range(0, len(x), bs):
        sl = slice(start, min(start + bs, len(x)))
        a = run_in_layout(model, lambda t: activation(model, t, at), x[sl], fmt)
        check_finite(a, f"the activations of layer {at!r}")
        yield sl, a


def layer_gradients(model, x: torch.Tensor, at: Any, target: int, batch_size: int | None = None
                    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield ``(rows, activation, gradient)``: layer ``at``'s output and the gradient of logit
    ``target`` with respect to it, per sample (one forward and one backward pass per batch).

    The layer's output is replaced by a detached copy that requires grad, so the gradient exists
    whatever the parameters' ``requires_grad`` (and nothing accumulates in ``.grad``).
    """
    layer = get_module(model, at)
    bs = check_batch_size(batch_size, row_bytes=x[0].numel() * x.element_size())
    box: dict = {}

    def swap(mod, inp, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"at: layer {at!r} returns {type(out).__name__}, not a tensor")
        z = out.detach().requires_grad_(True)
        box["z"] = z
        return z

    fmt = layout_for(model, x)
    for start in range(0, len(x), bs):
        sl = slice(start, min(start + bs, len(x)))
        h = layer.register_forward_hook(swap)
        try:
            with torch.enable_grad():
                out = run_in_layout(model, lambda t: forward(model, t), x[sl], fmt)
                check_finite(out, "the inputs (model outputs)")
                if out.ndim != 2 or not 0 <= int(target) < out.shape[1]:
                    raise ValueError(f"target: class {target!r} is not a column of the model's output "
                                     f"of shape {tuple(out.shape)}")
                if "z" not in box:
                    raise ValueError(f"at: the layer {at!r} was not called in the model's forward pass")
                (g,) = torch.autograd.grad(out[:, int(target)].sum(), box["z"], allow_unused=True)
        finally:
            h.remove()
        z = box.pop("z")
        if g is None:
            g = torch.zeros_like(z)
        check_finite(g, f"the gradients at layer {at!r}")
        yield sl, z.detach(), g.detach()
