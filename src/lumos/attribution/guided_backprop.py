"""Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, 2015)."""
from __future__ import annotations

from typing import Any

import torch

from ..core.registry import register
from ..rules.engine import propagate
from ..rules.relu import GUIDED

__all__ = ["guided_backprop"]


@register("guided_backprop", "propagation",
          "Gradient with negative gradients stopped at every ReLU (Springenberg et al., 2015)")
def guided_backprop(model: torch.nn.Module, inputs: Any, target: Any = None, *,
                    batch_size: int | None = None, progress: bool | None = None,
                    forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
    """Guided backpropagation: the gradient, with only positive gradient passed back through
    each ReLU, and only where its input was positive.

    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for Simplicity: The All
    Convolutional Net". The rule attaches to ReLU *operations* (``nn.ReLU`` in place or not,
    ``F.relu``, ``torch.relu``, ``x.relu()``, ``x.relu_()``, ``x.clamp(min=0)``), so a module used
    twice or a functional ReLU is handled like any other. Every other operation keeps its gradient;
    on a network without ReLUs the map is the plain gradient.

    Parameters
    ----------
    model : torch.nn.Module
        Not compiled (TorchScript or ``torch.compile`` models raise a TypeError: their ReLUs cannot
        be seen).
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs (a model ``model(x1, x2)`` or ``model(a=..., b=...)``) give one values
        array per input.
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
        ``lumos.Neuron("layer", index)`` explains a unit inside the network.
    batch_size : int, optional
        Samples per forward/backward pass (default: 64, fewer for large inputs, sized by a
        memory budget).
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
        activation's shape with ``at=``), raw and signed. ``meta["plain_ops"]`` lists the
        non-linear operations without a guided rule that passed their plain gradient.
    """
    p, values, sessions = propagate(model, inputs, target, GUIDED, method="guided_backprop",
                                    batch_size=batch_size, progress=progress,
                                    forward_args=forward_args, at=at, layer_side=layer_side)
    return p.explanation(values, "guided_backprop", {}, meta=_meta(sessions))


def _meta(sessions) -> dict:
    return {"n_relu": sessions[0].counts.get("relu", 0),
            "plain_ops": sorted(set().union(*(s.plain_ops for s in sessions)))}
