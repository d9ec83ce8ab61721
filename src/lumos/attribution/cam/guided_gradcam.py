"""Guided Grad-CAM (Selvaraju et al., 2017)."""
from __future__ import annotations

from typing import Any

import torch

from ...core.registry import register
from ...core.torch_model import torch_call
from ._base import FAMILY, gradient_cam
from .gradcam import gradcam_weights

__all__ = ["guided_gradcam"]


@register("guided_gradcam", FAMILY, "Guided Grad-CAM: guided backprop x upsampled Grad-CAM, "
          "class-discriminative and high-resolution (Selvaraju et al., 2017)")
def guided_gradcam(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
                   batch_size: int | None = None, progress: bool | None = None):
    """Guided Grad-CAM: the guided-backpropagation map times the upsampled Grad-CAM map.

    Selvaraju et al. (2017), "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization": guided backpropagation (Springenberg et al., 2015) gives pixel-level detail,
    Grad-CAM the class-discriminative region; their element-wise product has both. Here the
    product uses the *signed* upsampled Grad-CAM (``meta["gradcam"]``), following lumos's rule
    that nothing is rectified inside a method. The paper multiplies by ``ReLU(Grad-CAM)``; that is
    ``meta["guided_backprop"] * np.maximum(meta["gradcam"], 0)``.

    Parameters
    ----------
    model, inputs, target, at, batch_size, progress
        As for :func:`lumos.attribution.cam.gradcam.gradcam`.

    Returns
    -------
    Explanation
        ``values`` (batch, channels, *input_spatial), the input's shape:
        ``guided_backprop * gradcam``. ``meta["gradcam"]`` (batch, 1, *input_spatial): the
        upsampled Grad-CAM; ``meta["guided_backprop"]``: the guided-backprop map;
        ``meta["layer_map"]``: Grad-CAM at the layer.
    """
    from ..guided_backprop import guided_backprop

    with torch_call(model, inputs, target, method="guided_gradcam") as p:
        gc = gradient_cam(p, method="gradcam", at=at, batch_size=batch_size, progress=progress,
                          combine=gradcam_weights, params={})
        # The resolved target (not "predicted" again) so both maps explain the same scalar.
        tgt = p.target.fn if p.target.fn is not None else p.target.indices
        gb = guided_backprop(model, p.x, target=tgt, batch_size=batch_size, progress=progress)
        cam_up = torch.as_tensor(gc.values)
        guided = torch.as_tensor(gb.values).to(cam_up.dtype)
        meta = {k: v for k, v in gc.meta.items() if k not in gc.sample_keys}
        sample = {k: gc.meta[k] for k in gc.sample_keys}
        sample.update(gradcam=cam_up, guided_backprop=guided)
        return p.explanation(guided * cam_up, "guided_gradcam", gc.params, meta=meta,
                             sample_meta=sample)
