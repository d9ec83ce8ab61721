"""Guided Grad-CAM (Selvaraju et al., 2017)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.registry import register
from ...core.torch_model import torch_call
from ...core.units import Neuron
from ._base import FAMILY, gradient_cam, upsample
from .gradcam import gradcam_weights

__all__ = ["guided_gradcam"]


@register("guided_gradcam", FAMILY, "Guided Grad-CAM: guided backprop x upsampled Grad-CAM, "
          "class-discriminative and high-resolution (Selvaraju et al., 2017)")
def guided_gradcam(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
                   rectify: bool = False, batch_size: int | None = None,
                   progress: bool | None = None, forward_args: Any = None):
    """Guided Grad-CAM: the guided-backpropagation map times the upsampled Grad-CAM map.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization": guided backpropagation (Springenberg et al., 2015) gives pixel-level detail,
    Grad-CAM the class-discriminative region; their element-wise product has both. By default the
    product uses the *signed* upsampled Grad-CAM, following lumos's rule that nothing is
    rectified inside a method. The paper rectifies the Grad-CAM map *at the layer* and then
    upsamples it: ``rectify=True`` gives exactly that, ``guided_backprop *
    upsample(ReLU(layer_map))``. That is not ``guided_backprop * max(upsample(layer_map), 0)``:
    bilinear interpolation mixes positive and negative cells, so rectifying after upsampling
    keeps less of the map near a sign change than the paper does.

    Parameters
    ----------
    model, inputs, target, at, batch_size, progress, forward_args
        As for :func:`lumos.attribution.cam.gradcam.gradcam`; a ``lumos.Neuron`` target is
        explained by both factors.
    rectify : bool, default False
        ``True``: the paper's map, with Grad-CAM rectified at the layer before upsampling.
        ``False``: the signed upsampled Grad-CAM.

    Returns
    -------
    Explanation
        ``values`` (batch, channels, *input_spatial), the input's shape:
        ``guided_backprop * gradcam``. ``meta["gradcam"]`` (batch, 1, *input_spatial): the
        upsampled Grad-CAM factor (rectified at the layer with ``rectify=True``);
        ``meta["guided_backprop"]``: the guided-backprop map; ``meta["layer_map"]``: the signed
        Grad-CAM at the layer.
    """
    if not isinstance(rectify, (bool, np.bool_)):
        raise ValueError(f"rectify must be True or False; got {rectify!r}")
    from ..guided_backprop import guided_backprop

    with torch_call(model, inputs, target, method="guided_gradcam", forward_args=forward_args) as p:
        gc = gradient_cam(p, method="gradcam", at=at, batch_size=batch_size, progress=progress,
                          combine=gradcam_weights, params={})
        # The resolved target (not "predicted" again) so both maps explain the same scalar; a
        # Neuron is resolved on its layer's activation, so it is handed on as it is.
        tgt = p.target.fn if p.target.fn is not None else p.target.indices
        gb = guided_backprop(model, p.x, target=target if isinstance(target, Neuron) else tgt,
                             batch_size=batch_size, progress=progress, forward_args=forward_args)
        cam_up = torch.as_tensor(gc.values)
        if rectify:  # the paper: ReLU at the layer, then upsample
            layer_map = torch.as_tensor(gc.meta["layer_map"])
            cam_up = upsample(layer_map.clamp(min=0), p.x.shape[2:])
        guided = torch.as_tensor(gb.values).to(cam_up.dtype)
        meta = {k: v for k, v in gc.meta.items() if k not in gc.sample_keys}
        sample = {k: gc.meta[k] for k in gc.sample_keys}
        sample.update(gradcam=cam_up, guided_backprop=guided)
        return p.explanation(guided * cam_up, "guided_gradcam", {**gc.params, "rectify": bool(rectify)},
                             meta=meta,
                             sample_meta=sample)
