"""Shared by the concepts modules: record named layers in one forward pass, and stream a data set.

:func:`record` runs the model once and returns the outputs of the requested layers (and the
model's output when :data:`~lumos.concepts.objectives.OUTPUT` is requested). When the output is not
needed the pass stops right after the last requested layer has run. Hooks are removed on exit;
callers run inside a :class:`~lumos.core.torch_model.ModelGuard`.

:func:`iter_batches` turns what a user calls "a data set" (a tensor, an array, a DataLoader, an
iterable of batches or of ``(inputs, labels, ...)`` tuples) into ``(inputs, labels or None)``
batches, never holding more than one batch of inputs.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..core.modules import get_module
from ..core.torch_model import as_tensor, check_finite, forward
from ..core.units import _first  # the tensor of a layer's output (tuple, HF output): one place
from .objectives import INPUT, OUTPUT

__all__ = ["record", "iter_batches", "check_layers"]


class _Done(Exception):
    pass


def check_layers(model: nn.Module, keys: Iterable[str]) -> dict[str, nn.Module]:
    """The modules of the layer names among ``keys`` (clear error with suggestions otherwise)."""
    return {k: get_module(model, k, arg="layer") for k in keys if k not in (INPUT, OUTPUT)}


def record(model: nn.Module, x: torch.Tensor, keys: Iterable[str], what: str = "the inputs",
           modules: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    """``{key: activation}`` for every layer name in ``keys`` (plus :data:`OUTPUT`, :data:`INPUT`).

    Activations keep their autograd graph (detach them where no gradient is wanted). Every
    recorded activation is checked finite (``what`` names the evaluation in the error).
    """
    keys = set(keys)
    mods = modules if modules is not None else check_layers(model, keys)
    acts: dict[str, torch.Tensor] = {}
    if INPUT in keys:
        acts[INPUT] = x
    need_output = OUTPUT in keys
    pending = set(mods)
    done = _Done()
    handles = []

    def hook_for(name):
        def hook(mod, inp, out):
            if name in acts:  # a module called twice: the first call is the layer's activation
                return
            acts[name] = _first(out)
            pending.discard(name)
            if not pending and not need_output:
                raise done
        return hook

    try:
        for name, m in mods.items():
            handles.append(m.register_forward_hook(hook_for(name)))
        if need_output or pending:
            try:
                out = forward(model, x, name=what)
                if need_output:
                    acts[OUTPUT] = out
            except _Done as e:
                if e is not done:
                    raise
            except ValueError as e:  # forward wraps model errors; our stop signal may be inside
                if e.__cause__ is not done:
                    raise
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in mods if k not in acts]
    if missing:
        raise ValueError(f"layer: {missing} not called in the model's forward pass")
    for k, v in acts.items():
        if k != INPUT:
            check_finite(v.detach(), f"{what} (at {k!r})")
    return acts


def iter_batches(data: Any, batch_size: int, device=None, dtype=None,
                 name: str = "data") -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches ``(inputs, labels or None)`` of ``data``.

    ``data`` is a tensor or array of inputs (split into ``batch_size`` rows), or an iterable of
    batches (a DataLoader): each a tensor/array of inputs, or a tuple/list/dict whose first item
    (or ``"inputs"``/``"image"``/``"x"`` key) holds the inputs and second (or ``"labels"``/``"label"``/
    ``"y"``) the labels.
    """
    if isinstance(data, (torch.Tensor, np.ndarray)):
        x = data
        if len(x) == 0:
            raise ValueError(f"{name} is empty")
        for s in range(0, len(x), batch_size):
            yield as_tensor(x[s:s + batch_size], device, name=name, dtype=dtype), None
        return
    if hasattr(data, "images") and hasattr(data, "labels"):  # lumos.data.ShapesData and the like
        for s in range(0, len(data.images), batch_size):
            yield (as_tensor(data.images[s:s + batch_size], device, name=name, dtype=dtype),
                   torch.as_tensor(np.asarray(data.labels[s:s + batch_size])))
        return
    if not hasattr(data, "__iter__") or isinstance(data, (str, bytes)):
        raise TypeError(f"{name} must be a tensor, an array, a DataLoader or an iterable of batches; "
                        f"got {type(data).__name__}")
    seen = False
    for batch in data:
        labels = None
        if isinstance(batch, dict):
            xk = next((k for k in ("inputs", "input", "image", "images", "x") if k in batch), None)
            yk = next((k for k in ("labels", "label", "y", "target", "targets") if k in batch), None)
            if xk is None:
                raise ValueError(f"{name}: a batch dict needs an 'inputs'/'image'/'x' key; got {list(batch)}")
            x, labels = batch[xk], (batch[yk] if yk else None)
        elif isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError(f"{name}: empty batch")
            x = batch[0]
            labels = batch[1] if len(batch) > 1 else None
        else:
            x = batch
        t = as_tensor(x, device, name=name, dtype=dtype)
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
            if labels.shape[:1] != t.shape[:1]:
                raise ValueError(f"{name}: a batch has {len(t)} inputs but {len(labels)} labels")
        seen = True
        yield t, labels
    if not seen:
        raise ValueError(f"{name} is empty")
