"""DeconvNet (Zeiler & Fergus, 2014) as a backward rule on ReLU operations."""
from __future__ import annotations

from typing import Any

import torch

from ..core.registry import register
from ..rules.engine import propagate
from ..rules.relu import DECONV
from .guided_backprop import _meta

__all__ = ["deconvnet"]


@register("deconvnet", "propagation",
          "Backward pass with the ReLU applied to the gradient (Zeiler & Fergus, 2014)")
def deconvnet(model: torch.nn.Module, inputs: Any, target: Any = None, *,
              batch_size: int | None = None, progress: bool | None = None,
              forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
    """DeconvNet: backpropagate through each ReLU by rectifying the gradient, ignoring where the
    forward input was negative; every other operation uses its gradient (transposed convolution,
    max-pool "switches").

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks". Rules attach to
    ReLU operations however they are called (see :func:`~lumos.attribution.guided_backprop.
    guided_backprop`).

    Parameters
    ----------
    model : torch.nn.Module
        Not compiled (TorchScript or ``torch.compile`` models raise a TypeError).
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs (a model ``model(x1, x2)`` or ``model(a=..., b=...)``) give one values
        array per input.
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
        ``lumos.Neuron("layer", index)`` explains a unit inside the network.
    batch_size : int, optional
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag); per-sample ones
        (first axis of batch length) go with their sample in every chunk (see
        :mod:`lumos.core.inputs`).
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation instead
        of the inputs (a dotted name, see ``lumos.layers(model)``): the rules apply to the
        operations after it; ``values`` has the activation's shape.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (one array per input for several inputs; the
        activation's shape with ``at=``), raw and signed.
    """
    p, values, sessions = propagate(model, inputs, target, DECONV, method="deconvnet",
                                    batch_size=batch_size, progress=progress,
                                    forward_args=forward_args, at=at, layer_side=layer_side)
    return p.explanation(values, "deconvnet", {}, meta=_meta(sessions))
