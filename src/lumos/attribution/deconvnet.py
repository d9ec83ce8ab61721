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
              batch_size: int | None = None, progress: bool | None = None):
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
    inputs : Tensor or ndarray, shape (batch, ...)
    target : int, sequence of int, "predicted", callable or None
    batch_size : int, optional
    progress : bool, optional

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (raw, signed).
    """
    p, values, sessions = propagate(model, inputs, target, DECONV, method="deconvnet",
                                    batch_size=batch_size, progress=progress)
    return p.explanation(values, "deconvnet", {}, meta=_meta(sessions))
