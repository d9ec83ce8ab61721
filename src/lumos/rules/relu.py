"""Backward rules for ReLU: guided backpropagation and DeconvNet.

For ``y = relu(x)`` with incoming gradient ``g``:

- plain gradient: ``g * [x > 0]``
- guided backprop (Springenberg et al., 2015, "Striving for Simplicity: The All Convolutional
  Net"): ``max(g, 0) * [x > 0]``
- DeconvNet (Zeiler & Fergus, 2014, "Visualizing and Understanding Convolutional Networks"):
  ``max(g, 0)`` (the backward ReLU ignores the forward pass)

Every other operation keeps its gradient.
"""
from __future__ import annotations

import torch

from .engine import Composite, OpCall, Rule

__all__ = ["GuidedReLU", "DeconvReLU", "GUIDED", "DECONV"]


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        # the ReLU's own backward kernel (g where y > 0), then rectified in place
        return torch.ops.aten.threshold_backward(g, y, 0).clamp_(min=0)


class _DeconvReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.relu(x)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


class GuidedReLU(Rule):
    """Guided backprop through a ReLU: pass only positive gradient, only where the input was > 0."""

    def __call__(self, call: OpCall):
        return _GuidedReLUFn.apply(call.input)


class DeconvReLU(Rule):
    """DeconvNet through a ReLU: rectify the gradient, whatever the forward input was."""

    def __call__(self, call: OpCall):
        return _DeconvReLUFn.apply(call.input)


#: Guided backprop: the guided rule on every ReLU (module, functional or method call).
GUIDED = Composite({"relu": GuidedReLU()}, name="guided_backprop")
#: DeconvNet: the backward ReLU on every ReLU.
DECONV = Composite({"relu": DeconvReLU()}, name="deconvnet")
