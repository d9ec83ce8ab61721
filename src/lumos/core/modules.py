"""Layers of a torch model by dotted name, with suggestions when a name is wrong."""
from __future__ import annotations

import difflib

from torch import nn

from .inputs import unwrap

__all__ = ["get_module"]


def get_module(model: nn.Module, name: str, arg: str = "at") -> nn.Module:
    """The submodule with dotted name ``name``; a clear error with suggestions otherwise."""
    model = unwrap(model)  # layer names are the user's model's, also with bound forward arguments
    if isinstance(name, nn.Module):
        for n, m in model.named_modules():
            if m is name:
                return m
        raise ValueError(f"{arg}: the given module is not part of the model")
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a dotted module name (str); got {type(name).__name__}")
    named = dict(model.named_modules())
    if name in named:
        return named[name]
    close = difflib.get_close_matches(name, [n for n in named if n], n=4, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"{arg}: the model has no layer named {name!r}.{hint} "
                     "lumos.layers(model, inputs) lists the layers with their output shapes.")
