"""Memory layouts of the batches lumos builds: channels-last for CPU conv nets, with a fallback.

Shared by every method that evaluates a model on batches it builds itself (gradients, integrated
gradients, SmoothGrad, DeepLIFT, the rules engine), so it lives in ``core`` below all of them.
"""
from __future__ import annotations

import weakref

import torch

from .torch_model import _first_conv

__all__ = ["memory_format_of", "layout_for", "run_in_layout", "BatchLayout"]


def memory_format_of(x: torch.Tensor) -> torch.memory_format | None:
    """The channels-last format ``x`` is laid out in, or ``None`` for the ordinary layout."""
    if x.is_contiguous():
        return None
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


# Models that raised on channels-last batches (a ``.view`` of an activation, a custom op that
# wants contiguous memory): never offered them again.
_REFUSES_CHANNELS_LAST: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def layout_for(model: torch.nn.Module, x: torch.Tensor) -> torch.memory_format | None:
    """The memory layout in which lumos feeds the batches it builds from ``x`` to ``model``.

    Channels-last when the user's inputs are channels-last, and also for plain 4-D inputs on CPU
    when the model begins with a ``Conv2d``: oneDNN's channels-last convolutions make a forward
    and backward pass 15-40% cheaper on CNNs (measured on the demo CNN and a small ResNet). The
    model and the user's tensors are untouched, and every value is the same up to float rounding
    (a max-pool window whose two largest values differ by less than that may route its gradient
    to the other one, in either layout). ``None`` means the ordinary contiguous layout.
    """
    if model in _REFUSES_CHANNELS_LAST:
        return None
    fmt = memory_format_of(x)
    if fmt is not None:
        return fmt
    if (x.device.type == "cpu" and x.ndim == 4 and x.is_floating_point()
            and torch.backends.mkldnn.is_available()
            and isinstance(_first_conv(model), torch.nn.Conv2d)):
        return torch.channels_last
    return None


def _is_layout_error(err: Exception) -> bool:
    msg = str(err).lower()
    return "view size is not compatible" in msg or "contiguous" in msg or "stride" in msg


def run_in_layout(model: torch.nn.Module, fn, x: torch.Tensor, fmt: torch.memory_format | None):
    """``fn(x)`` with ``x`` laid out in ``fmt``; if the model rejects that layout, remember it and
    run ``fn`` on the contiguous ``x`` instead (any other error propagates)."""
    if fmt is None or model in _REFUSES_CHANNELS_LAST:
        return fn(x.contiguous())
    try:
        return fn(x.contiguous(memory_format=fmt))
    except (RuntimeError, ValueError) as err:
        if not _is_layout_error(err):
            raise
        _REFUSES_CHANNELS_LAST.add(model)
        return fn(x.contiguous())


class BatchLayout:
    """How a method stores the batches it builds, and hands them to the model.

    With a channels-last model layout (see :func:`layout_for`) batches are stored as plain
    contiguous ``(n, H, W, C)`` tensors: row gathers, noise, path points and accumulation are
    then ordinary contiguous operations (PyTorch's ``index_select`` / ``index_add_`` on
    channels-last strides are 10x slower), and ``model_view`` hands the model a channels-last
    ``(n, C, H, W)`` view of the same memory, with no copy. Otherwise everything is as given.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor):
        self.fmt = layout_for(model, x)
        self.nhwc = self.fmt == torch.channels_last
        self.user_channels_last = memory_format_of(x) is not None

    def internal(self, t: torch.Tensor) -> torch.Tensor:
        """A user-layout tensor in storage layout (no copy when it is channels-last already)."""
        return t.permute(0, 2, 3, 1).contiguous() if self.nhwc else t

    def model_view(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 3, 1, 2) if self.nhwc else t

    def from_model(self, g: torch.Tensor) -> torch.Tensor:
        """A model-shaped tensor (a gradient) in storage layout; a view when it is channels-last."""
        return g.permute(0, 2, 3, 1) if self.nhwc else g

    def user(self, t: torch.Tensor) -> torch.Tensor:
        """A storage-layout tensor back in the layout of the user's inputs."""
        if not self.nhwc:
            return t
        v = t.permute(0, 3, 1, 2)
        return v if self.user_channels_last else v.contiguous()
