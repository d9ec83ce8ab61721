"""Where to explain, as arguments rather than classes: neuron targets and layer attributions.

Two questions that peers answer with a class per combination (``LayerIntegratedGradients``,
``NeuronGradient``, ``NeuronDeepLift``...) are arguments of every gradient and propagation method:

* **what** is explained can be a unit inside the network instead of an output: ``target=
  lumos.Neuron("features.6", (3, 4, 4))`` explains channel 3 at position (4, 4) of that layer's
  output; ``Neuron("features.6", 3)`` the sum of channel 3 (or unit 3 of a linear layer); any
  callable of the layer's activation gives one scalar per sample (a direction, a norm). The model is
  seen as the map from the inputs to that layer's activation (:class:`ActivationModel`); the
  forward pass stops at the layer.
* **where** the attribution goes can be a layer instead of the input: ``at="features.6"`` (with
  ``layer_side="output"`` or ``"input"``) attributes to that layer's output (or input) activation.
  The model is seen as the map from that activation to the output (:class:`SpliceModel`): the
  inputs still run through the layers before it, and the activation a method hands in replaces the
  layer's output (input) there. Attributions then have the activation's shape and completeness
  holds in the layer's space (``sum = f(x) - f(baseline activation)``): baselines of integrated
  gradients and DeepLIFT are *activations* (``"zero"`` is the zero activation). Captum's
  ``LayerIntegratedGradients`` instead maps input baselines through the layer; give
  ``baselines=lumos.core.torch_model.through(model, "layer", input_baselines)`` for that
  convention.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .inputs import BoundModel, Wrapper
from .modules import get_module

__all__ = ["Neuron", "ActivationModel", "SpliceModel"]

_SIDES = ("output", "input")


class Neuron:
    """A unit (or any function) of a layer's activation, as the target of an explanation.

    Parameters
    ----------
    at : str or nn.Module
        The layer, by dotted name (``lumos.layers(model)`` lists them).
    index : int, tuple of int, or callable
        An int: that channel (summed over positions) of a conv activation, that unit of a vector.
        A tuple: one element of the per-sample activation, e.g. ``(channel, row, col)``. A callable:
        ``fn(activation) -> (batch,)``.
    layer_side : {"output", "input"}, default "output"
        Whether the unit is in the layer's output or its (first) input.
    """

    def __init__(self, at: Any, index: int | tuple | Callable, *, layer_side: str = "output"):
        if layer_side not in _SIDES:
            raise ValueError(f"layer_side must be one of {_SIDES}; got {layer_side!r}")
        if not (callable(index) or isinstance(index, (int, np.integer, tuple, list))) or isinstance(index, bool):
            raise TypeError(f"Neuron index must be an int, a tuple of ints or a callable; got {index!r}")
        self.at, self.index, self.layer_side = at, index, layer_side

    def __repr__(self) -> str:
        idx = getattr(self.index, "__name__", self.index)
        return f"Neuron({self.at!r}, {idx!r}{', input' if self.layer_side == 'input' else ''})"

    def target(self, activation_shape: tuple[int, ...]) -> Any:
        """The target spec on the activation: a class-like int or a callable."""
        if callable(self.index):
            return self.index
        if isinstance(self.index, (int, np.integer)):
            n_ch = activation_shape[1] if len(activation_shape) > 1 else 1
            if not 0 <= int(self.index) < n_ch:
                raise ValueError(f"target: {self!r} is out of range; the layer has {n_ch} channels/units")
            return int(self.index)
        idx = tuple(int(i) for i in self.index)
        per_sample = tuple(activation_shape[1:])
        if len(idx) != len(per_sample) or any(not 0 <= i < s for i, s in zip(idx, per_sample)):
            raise ValueError(f"target: {self!r} does not index the layer's activation of per-sample "
                             f"shape {per_sample}")

        def unit(act: torch.Tensor) -> torch.Tensor:
            return act[(slice(None),) + idx]

        unit.__name__ = f"{self.at}{list(idx)}"
        return unit


class _Stop(Exception):
    pass


def _resolve(model: nn.Module, at: Any) -> tuple[str, nn.Module]:
    layer = get_module(model, at)
    name = at if isinstance(at, str) else next(n for n, m in model.named_modules() if m is layer)
    return name, layer


def _first(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    if hasattr(x, "last_hidden_state"):
        return x.last_hidden_state
    raise TypeError(f"at: the layer returns {type(x).__name__}, not a tensor")


class ActivationModel(Wrapper):
    """``model`` seen as the map from its inputs to one layer's activation (the pass stops there)."""

    def __init__(self, model: nn.Module, at: Any, layer_side: str = "output"):
        super().__init__(model)
        self.name, self.layer = _resolve(model, at)
        self.layer_side = layer_side

    def forward(self, *args, **kwargs):
        box = {}

        stop = _Stop()  # this call's own: an enclosing ActivationModel's stop passes through

        def grab_out(mod, inp, out):
            box["a"] = _first(out)
            raise stop

        def grab_in(mod, inp):
            box["a"] = _first(inp)
            raise stop

        h = (self.layer.register_forward_hook(grab_out) if self.layer_side == "output"
             else self.layer.register_forward_pre_hook(grab_in))
        try:
            self.model(*args, **kwargs)
        except _Stop as e:
            if e is not stop:
                raise
        finally:
            h.remove()
        if "a" not in box:
            raise ValueError(f"at: the layer {self.name!r} was not called in the model's forward pass")
        return box["a"]


class SpliceModel(Wrapper):
    """``model`` seen as a function of one layer's activation ``z`` (see the module docs).

    The samples' inputs ``x`` run through the layers before; the layer's output (or input) is
    replaced by ``z``. Row ``k`` of a batch of ``z`` belongs to sample ``rows[k]`` (set with
    :meth:`rows`, as for :class:`~lumos.core.inputs.BoundModel`).
    """

    def __init__(self, model: nn.Module, at: Any, x: torch.Tensor, layer_side: str = "output"):
        super().__init__(model)
        self.name, self.layer = _resolve(model, at)
        self.layer_side = layer_side
        # the inputs, expanded per row like a per-sample forward argument
        self._x = BoundModel(nn.Identity(), None, len(x), (x,))
        self.n = len(x)

    def _own_per_sample(self) -> bool:
        return True  # every row needs its own sample's input

    def forward(self, z: torch.Tensor):
        x = self._x._expand(self._x.args[0], self._rows, len(z))
        if self.layer_side == "output":
            def put(mod, inp, out):
                return z
            h = self.layer.register_forward_hook(put)
        else:
            def put(mod, inp):
                return (z,) + tuple(inp[1:])
            h = self.layer.register_forward_pre_hook(put)
        try:
            return self.model(x)
        finally:
            h.remove()
