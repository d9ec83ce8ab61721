"""Grad-CAM (Selvaraju et al., 2017)."""
from __future__ import annotations

from typing import Any

import torch

from ...core.registry import register
from ...core.torch_model import torch_call
from ._base import FAMILY, gradient_cam, weighted_sum

__all__ = ["gradcam", "gradcam_weights"]


def gradcam_weights(a: torch.Tensor, g: torch.Tensor):
    """Channel weights = spatial mean of the gradient; map = sum_k weight_k * A_k (no ReLU)."""
    w = g.flatten(2).mean(2)
    return weighted_sum(w, a), w


@register("gradcam", FAMILY, "Grad-CAM: activations weighted by spatially averaged gradients "
          "(Selvaraju et al., 2017)")
def gradcam(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
            batch_size: int | None = None, progress: bool | None = None,
            forward_args: Any = None):
    """Grad-CAM: the layer's activation maps weighted by their spatially averaged gradients.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization". With ``A`` the activation at the layer (``K`` channels, ``Z`` positions) and
    ``y`` the target scalar, ``alpha_k = (1/Z) sum_ij dy/dA_kij`` and the map is
    ``sum_k alpha_k A_k``. The paper's final ReLU is left to display: the map here is signed.
    On a network ending in global average pooling and one linear layer, Grad-CAM at the pooled
    layer equals CAM / Z.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, channels, *spatial)
        Images (batch, C, H, W); 1-D signals (batch, C, L) and volumes work as well. One input
        tensor: a CAM needs the spatial layout of one image, so several inputs (a tuple or dict)
        are refused; pass the other inputs with ``forward_args=``.
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
        The scalar per sample; a callable (output -> (batch,)) explains a segmentation region's
        sum, a detection score, a logit difference... ``lumos.Neuron("layer", index)`` explains
        a unit of a later layer (the map of what drives that unit; ``at`` must run before it or
        be that layer).
    at : str, nn.Module or None, default None
        The layer (dotted name). None takes the last layer with a spatial output (recorded in
        ``meta["layer"]``). Any spatial layer works.
    batch_size : int, optional
        Samples per forward/backward pass (default: sized by memory, at most 64).
    progress : bool, optional
        Progress bar (default: on a terminal for long runs).
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag, a second input);
        per-sample ones (first axis of batch length) go with their sample in every chunk (see
        :mod:`lumos.core.inputs`).

    Returns
    -------
    Explanation
        ``values`` (batch, 1, *input_spatial): the signed map upsampled bilinearly to the input.
        ``meta["layer_map"]`` (batch, 1, *layer_spatial): the raw map at the layer.
        ``meta["channel_weights"]`` (batch, K): ``alpha``.
    """
    with torch_call(model, inputs, target, method="gradcam", clean_forward=False,
                    forward_args=forward_args) as p:
        return gradient_cam(p, method="gradcam", at=at, batch_size=batch_size, progress=progress,
                            combine=gradcam_weights, params={})
