"""Grad-CAM++ (Chattopadhay et al., 2018)."""
from __future__ import annotations

from typing import Any

import torch

from ...core.registry import register
from ...core.torch_model import torch_call
from ._base import FAMILY, gradient_cam, weighted_sum

__all__ = ["gradcam_pp", "gradcam_pp_weights"]


def gradcam_pp_weights(a: torch.Tensor, g: torch.Tensor):
    """Closed-form Grad-CAM++ weights from the first-order gradient ``g = dS/dA``.

    With ``Y = exp(S)`` and ``S`` piecewise linear in ``A`` beyond the layer, the paper's
    ``alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (0 where the denominator is 0) and
    ``w_k = sum_ij alpha_kij ReLU(g_kij)``; the common positive factor ``exp(S)`` is dropped.
    """
    g2 = g * g
    g3 = g2 * g
    sum_a = a.flatten(2).sum(2).reshape(a.shape[:2] + (1,) * (a.ndim - 2))
    denom = 2 * g2 + sum_a * g3
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(denom))
    w = (alpha * g.clamp(min=0)).flatten(2).sum(2)
    return weighted_sum(w, a), w


@register("gradcam_pp", FAMILY, "Grad-CAM++: closed-form pixel-weighted gradients, better with "
          "several instances (Chattopadhay et al., 2018)")
def gradcam_pp(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
               batch_size: int | None = None, progress: bool | None = None,
               forward_args: Any = None):
    """Grad-CAM++: channel weights from positive gradients, each position weighted by ``alpha``.

    Chattopadhay, Sarkar, Howlader & Balasubramanian (2018), "Grad-CAM++: Generalized
    Gradient-based Visual Explanations for Deep Convolutional Networks". The paper explains
    ``Y = exp(S)`` (``S`` the target score) so that the higher derivatives are powers of the
    first: ``d^nY/dA^n = exp(S) (dS/dA)^n`` when ``S`` is piecewise linear in ``A``. Then, with
    ``g = dS/dA``::

        alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)     (0 where the denominator is 0)
        w_k       = sum_ij alpha_kij ReLU(g_kij)
        map       = sum_k w_k A_k

    (the factor ``exp(S)`` common to all weights of a sample is dropped, as in the paper's
    implementation). The final ReLU is left to display. On a network ending in global average
    pooling and one linear layer (``g_kij = W_ck / Z`` for ``Z`` positions), this gives
    ``w_k = Z ReLU(g_k) / (2 + g_k sum_ij A_kij)``: not Grad-CAM, whose weight is ``g_k``.

    Parameters
    ----------
    model, inputs, target, at, batch_size, progress, forward_args
        As for :func:`lumos.attribution.cam.gradcam.gradcam`.

    Returns
    -------
    Explanation
        ``values`` (batch, 1, *input_spatial) upsampled; ``meta["layer_map"]`` at the layer;
        ``meta["channel_weights"]`` (batch, K): ``w``.
    """
    with torch_call(model, inputs, target, method="gradcam_pp", clean_forward=False,
                    forward_args=forward_args) as p:
        return gradient_cam(p, method="gradcam_pp", at=at, batch_size=batch_size,
                            progress=progress, combine=gradcam_pp_weights, params={})
