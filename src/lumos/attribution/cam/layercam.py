"""Layer-CAM (Jiang et al., 2021)."""
from __future__ import annotations

from typing import Any

import torch

from ...core.registry import register
from ...core.torch_model import torch_call
from ._base import FAMILY, gradient_cam

__all__ = ["layercam"]


def _layercam(a: torch.Tensor, g: torch.Tensor):
    # Each position keeps its own positive gradient as weight, so shallow layers give fine maps.
    return (g.clamp(min=0) * a).sum(1, keepdim=True), None


@register("layercam", FAMILY, "Layer-CAM: ReLU(gradient) x activation per position, summed over "
          "channels (Jiang et al., 2021)")
def layercam(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
             batch_size: int | None = None, progress: bool | None = None,
             forward_args: Any = None):
    """Layer-CAM: activations weighted position by position by their positive gradients.

    Jiang et al. (2021), "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization". The map is ``sum_k ReLU(dy/dA_k) * A_k`` (element-wise). The paper's final
    ReLU is left to display. Works at any layer; shallow layers give finer maps.

    Parameters
    ----------
    model, inputs, target, at, batch_size, progress, forward_args
        As for :func:`lumos.attribution.cam.gradcam.gradcam`.

    Returns
    -------
    Explanation
        ``values`` (batch, 1, *input_spatial) upsampled; ``meta["layer_map"]`` at the layer.
    """
    with torch_call(model, inputs, target, method="layercam", clean_forward=False,
                    forward_args=forward_args) as p:
        return gradient_cam(p, method="layercam", at=at, batch_size=batch_size, progress=progress,
                            combine=_layercam, params={})
