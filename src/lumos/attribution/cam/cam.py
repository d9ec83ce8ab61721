"""CAM, the original class-activation map (Zhou et al., 2016)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...core.execution import check_batch_size, chunks
from ...core.registry import register
from ...core.torch_model import torch_call
from ...core.units import Neuron
from ...core.targets import resolve_target
from ._base import (FAMILY, Layer, Layout, capture, finish, resolve_layer, row_bytes, slice_target,
                    weighted_sum)

__all__ = ["cam"]

_SUGGEST = ("Use method='gradcam', which works on any CNN and at any layer (on a GAP -> linear "
            "network it equals cam divided by the number of positions).")


def _final_linear(out: torch.Tensor, calls: list) -> tuple[nn.Linear, torch.Tensor] | None:
    """The nn.Linear whose output is the model output, with its input; None if there is none."""
    for mod, inp, lin_out in reversed(calls):
        if lin_out is out or (lin_out.numel() == out.numel()
                              and torch.equal(lin_out.reshape(out.shape), out)):
            return mod, inp
    return None


def _check_gap_linear(out, a, calls, layer: Layer):
    found = _final_linear(out, calls)
    if found is None:
        raise ValueError(
            "method: cam needs a network that ends in global average pooling and one linear layer "
            "(the class score must be an nn.Linear of the pooled activations), but this model's "
            f"output is not produced by an nn.Linear layer. {_SUGGEST}"
        )
    lin, inp = found
    pooled = a.flatten(2).mean(2)
    scale = max(1.0, float(pooled.abs().max()))
    same = (inp.ndim == 2 and inp.shape == pooled.shape
            and torch.allclose(inp, pooled, rtol=1e-4, atol=1e-5 * scale))
    if not same:
        raise ValueError(
            "method: cam needs a network that ends in global average pooling and one linear layer, "
            f"read at the pooled layer; the final linear layer's input (shape "
            f"{tuple(inp.shape)}) is not the spatial mean of layer {layer.name!r} (shape "
            f"{tuple(a.shape)}), so CAM's weights do not apply there. {_SUGGEST}"
        )
    return lin


@register("cam", FAMILY, "CAM: final linear weights on the globally pooled layer "
          "(Zhou et al., 2016; GAP -> linear networks)")
def cam(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
        batch_size: int | None = None, progress: bool | None = None, forward_args: Any = None):
    """Class activation map: the final linear layer's class weights applied to the pooled layer.

    Zhou, Khosla, Lapedriza, Oliva & Torralba (2016), "Learning Deep Features for Discriminative
    Localization". For a network ``y_c = sum_k W_ck mean_ij A_kij + b_c`` (global average pooling,
    then one linear layer), the map is ``M_c = sum_k W_ck A_k`` and ``mean_ij M_c + b_c = y_c``
    exactly. The structure is checked numerically on every batch (the final ``nn.Linear``'s input
    must be the spatial mean of the layer's output), so functional pooling (``x.mean((2, 3))``)
    works too; any other network gets an error that suggests ``gradcam``.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, channels, *spatial)
    target : int, sequence of int, "predicted" or None
        The class per sample (CAM reads the class's weights; a callable target needs ``gradcam``).
    at : str, nn.Module or None, default None
        The pooled layer; None takes the last layer with a spatial output.
    batch_size : int, optional
        Samples per forward pass (default: sized by memory, at most 64).
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained; per-sample ones go with their
        sample in every chunk (see :mod:`lumos.core.inputs`).

    Returns
    -------
    Explanation
        ``values`` (batch, 1, *input_spatial): ``M_c`` upsampled to the input (signed).
        ``meta["layer_map"]`` (batch, 1, *layer_spatial): ``M_c``; ``meta["bias"]`` (batch,):
        ``b_c``, so that ``layer_map.mean() + bias == output``; ``meta["channel_weights"]``:
        ``W_c``.
    """
    if isinstance(target, Neuron):
        raise ValueError(
            f"target: cam reads the final linear layer's class weights, so it explains a class "
            f"score, not a unit inside the network ({target!r}); use method='gradcam' (or "
            "gradcam_pp, layercam, scorecam) for a Neuron target")
    if callable(target) and not isinstance(target, str):
        raise ValueError(
            "target: cam explains a class score through the final linear layer's weights; a "
            "callable target needs method='gradcam' (or gradcam_pp, layercam, scorecam)"
        )
    # The hooked pass gives the output too: no separate clean forward pass.
    with torch_call(model, inputs, target, method="cam", clean_forward=False,
                    forward_args=forward_args) as p:
        layer = resolve_layer(p.model, p.x, at, "cam", probe=False)
        linears = [m for m in p.model.modules() if isinstance(m, nn.Linear)]
        layout = Layout(p.model, p.x)
        maps, weights, biases, outs = [], [], [], []
        bs = check_batch_size(batch_size, row_bytes=row_bytes(p.x))
        for sl in chunks(p.n, bs, desc="cam", progress=progress):
            calls: list = []

            def record(mod, inp, out):
                if inp and isinstance(inp[0], torch.Tensor):
                    calls.append((mod, inp[0].detach(), out))

            hooks = {m: record for m in linears}
            rows = torch.arange(sl.start, sl.stop)
            out, a = layout.run(lambda xb: capture(p.model, xb, layer, hooks, rows=rows), p.x[sl])
            lin = _check_gap_linear(out, a, calls, layer)
            idx = resolve_target(slice_target(p.target_spec, sl, p.n), out).indices
            cls = torch.zeros(len(out), dtype=torch.long) if idx is None else torch.as_tensor(idx)
            cls = cls.to(a.device)
            w = lin.weight.detach()[cls].to(a.dtype)
            b = lin.bias.detach()[cls] if lin.bias is not None else torch.zeros_like(cls, dtype=a.dtype)
            maps.append(weighted_sum(w, a))
            weights.append(w)
            biases.append(b.to(a.dtype))
            outs.append(out)
        p.resolve(torch.cat(outs))
        return finish(p, layer, torch.cat(maps), "cam", {}, {"memory_format": layout.name},
                      {"channel_weights": torch.cat(weights), "bias": torch.cat(biases)})
