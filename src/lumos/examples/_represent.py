"""Points as vectors: a table, an embedding, images, or any layer's activations of a torch model.

Prototypes and neighbours compare points in some representation. Without a model the rows of
``inputs`` are the points (images flattened pixel by pixel). With ``model=`` and ``at=`` (a dotted
layer name, as everywhere in lumos) the points are that layer's activations, computed in batches
of ``batch_size`` under a :class:`~lumos.core.torch_model.ModelGuard` and flattened per sample, so
a data set of any size streams through the model with bounded memory.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["represent"]


def _as_matrix(inputs: Any, name: str) -> np.ndarray:
    if isinstance(inputs, torch.Tensor):
        arr = inputs.detach().cpu().numpy()
    elif hasattr(inputs, "select_dtypes") and hasattr(inputs, "columns"):  # a DataFrame
        non_num = [c for c in inputs.columns if not np.issubdtype(np.asarray(inputs[c]).dtype, np.number)]
        if non_num:
            raise TypeError(f"{name}: columns {non_num} are not numeric; encode them first (one-hot, "
                            "ordinal) so that distances mean something")
        arr = inputs.to_numpy(dtype=np.float64)
    else:
        arr = np.asarray(inputs)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric (array, tensor or DataFrame); got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty first (sample) axis; got shape {arr.shape}")
    arr = arr.reshape(arr.shape[0], -1).astype(np.float64, copy=True)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or Inf values")
    return arr


def represent(inputs: Any, model: Any = None, at: Any = None, *, batch_size: int | None = None,
              layer_side: str = "output", name: str = "inputs") -> np.ndarray:
    """``(n, d)`` float64 vectors of ``inputs``, in layer ``at`` of ``model`` when given.

    Parameters
    ----------
    inputs : array, tensor or DataFrame, first axis the samples
    model : torch.nn.Module, optional
        With ``at``: represent each sample by that layer's activation (flattened).
    at : str, optional
        Dotted layer name (``lumos.layers(model, inputs)`` lists them). ``None`` with a model: the
        model's output.
    batch_size : int, optional
        Samples per forward pass (default sized by memory).
    layer_side : {"output", "input"}, default "output"
    name : str
        The argument's name in error messages.
    """
    if model is None:
        if at is not None:
            raise ValueError("at: a layer needs model= (the torch model whose layer represents the inputs)")
        return _as_matrix(inputs, name)
    from ..core.execution import check_batch_size
    from ..core.torch_model import (ModelGuard, activation, as_tensor, check_finite, forward,
                                    model_device, model_dtype)

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module to represent inputs in a layer; got "
                        f"{type(model).__name__}")
    with ModelGuard(model):
        model.eval()
        x = as_tensor(inputs, model_device(model), name=name, dtype=model_dtype(model))
        bs = check_batch_size(batch_size, row_bytes=x[0].numel() * x.element_size())
        out = []
        for i in range(0, len(x), bs):
            with torch.no_grad():
                a = (forward(model, x[i:i + bs], name=name) if at is None
                     else activation(model, x[i:i + bs], at, layer_side))
            check_finite(a, f"the activations of {at!r}" if at is not None else "the inputs")
            out.append(a.reshape(len(a), -1).to(torch.float64).cpu())
    return torch.cat(out).numpy()
