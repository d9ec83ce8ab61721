"""The Softmax Linear Unit (Elhage et al., "Softmax Linear Units", Transformer Circuits 2022).

``SoLU(x) = x * softmax(x)`` over the last axis (the neurons of a layer), followed by a LayerNorm
over the same axis. The softmax makes neurons compete: a large pre-activation suppresses the
others, which pushes each input to be carried by few neurons (the architecture was an attempt at
more interpretable, less polysemantic MLP neurons). The LayerNorm after it restores the scale the
softmax takes away; the paper found that without it performance drops.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.validation import check_number

__all__ = ["SoLU", "solu"]


def solu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x * softmax(x, dim)`` (without the LayerNorm)."""
    return x * torch.softmax(x, dim=dim)


class SoLU(nn.Module):
    """``LayerNorm(x * softmax(x))`` over the last axis of width ``width``.

    Parameters
    ----------
    width : int
        Size of the last axis (the number of neurons).
    layer_norm : bool, default True
        Apply the LayerNorm after the softmax linear unit (the paper's SoLU; False: ``x * softmax(x)``
        alone).
    eps : float, default 1e-5
        LayerNorm's epsilon.
    elementwise_affine : bool, default True
        LayerNorm's learned gain and bias (initialised to 1 and 0).

    Attributes
    ----------
    ln : nn.LayerNorm or nn.Identity
        The norm after the unit; the activation before it is what the paper reads as the neuron
        (hook ``"ln"``'s input, or ``solu(x)``).
    """

    def __init__(self, width: int, *, layer_norm: bool = True, eps: float = 1e-5,
                 elementwise_affine: bool = True):
        super().__init__()
        self.width = int(check_number(width, "width", low=1, integer=True))
        eps = check_number(eps, "eps", low=0, low_open=True)
        self.ln = nn.LayerNorm(self.width, eps=eps, elementwise_affine=elementwise_affine) if layer_norm \
            else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.width:
            raise ValueError(f"x: SoLU of width {self.width} needs a last axis of {self.width}; got shape "
                             f"{tuple(x.shape)}")
        return self.ln(solu(x))

    def extra_repr(self) -> str:
        return f"width={self.width}"
