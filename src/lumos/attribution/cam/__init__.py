"""Class-activation maps: region-level maps read at a convolutional layer.

One small module per method over the shared machinery in :mod:`._base` (layer choice, hooks,
upsampling, the Explanation):

- ``cam``            CAM (Zhou et al., 2016): the final linear layer's weights on a GAP → linear net.
- ``gradcam``        Grad-CAM (Selvaraju et al., 2017): spatially averaged gradients as channel weights.
- ``gradcam_pp``     Grad-CAM++ (Chattopadhay et al., 2018): closed-form pixel weights (exp(score) form).
- ``guided_gradcam`` Guided Grad-CAM (Selvaraju et al., 2017): guided backprop × upsampled Grad-CAM.
- ``scorecam``       Score-CAM (Wang et al., 2020): channel weights from masked forward passes.
- ``layercam``       Layer-CAM (Jiang et al., 2021): ReLU(gradient) ⊙ activation, per position.

Every method returns ``values`` of shape ``(batch, 1, *input_spatial)``: the signed map (no ReLU, no
scaling) upsampled to the input by (bi/tri)linear interpolation, ``align_corners=False``.
``meta["layer_map"]`` holds the same raw map at the layer's resolution, shape
``(batch, 1, *layer_spatial)``; ``meta["layer"]`` names the layer (``at=``, or found automatically).
"""
from ._base import find_spatial_layers, upsample

__all__ = ["find_spatial_layers", "upsample"]
