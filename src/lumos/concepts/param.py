"""Parametrisations of the images that feature visualisation optimises.

A parametrisation holds the tensors the optimiser changes (``params``) and maps them to a batch
of images in the model's input range (``__call__``). Two are provided:

* :func:`pixel_image`: one free value per pixel and channel, squashed by a sigmoid into the range.
  Simple, but gradient ascent on pixels finds high-frequency patterns (Olah et al. 2017).
* :func:`fourier_image`: the image's 2-D Fourier coefficients, scaled by ``1 / f**decay_power``
  (natural images have a ``1/f`` spectrum, so every frequency then moves at the same rate), with
  the colour channels decorrelated by a fixed matrix (the square root of the colour covariance of
  natural images; the values Lucent and Lucid use, measured on ImageNet). Steps in this space are
  steps of a whitened image: the result shows structure rather than noise.

The initial values come from an explicit :class:`torch.Generator`. Each image of the batch is drawn
in turn, so the first images do not depend on how many follow.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["ImageParam", "pixel_image", "fourier_image", "COLOR_CORRELATION_SQRT", "to_range"]

# Square root of the colour covariance of natural images (ImageNet), from Lucid/Lucent; its
# columns are scaled below so that the largest has norm 1.
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])
_COLOR = COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()


def to_range(x: torch.Tensor, value_range: tuple[float, float], decorrelate: bool) -> torch.Tensor:
    """Unconstrained ``(batch, C, H, W)`` → images in ``value_range``: colour mixing (3 channels,
    when ``decorrelate``) then a sigmoid, scaled to the range."""
    if decorrelate and x.shape[1] == 3:
        x = torch.einsum("bchw,dc->bdhw", x, _COLOR.to(x.device, x.dtype))
    lo, hi = value_range
    return lo + (hi - lo) * torch.sigmoid(x)


class ImageParam:
    """Images as a function of optimised tensors.

    Attributes
    ----------
    params : list of Tensor
        The leaf tensors the optimiser updates (``requires_grad=True``).
    shape : tuple of int
        ``(batch, channels, height, width)`` of the images produced.
    name : str
        ``"pixel"`` or ``"fourier"``.
    """

    def __init__(self, params: list[torch.Tensor], image_fn, shape: tuple[int, ...], name: str):
        self.params = params
        self._image_fn = image_fn
        self.shape = tuple(shape)
        self.name = name

    def __call__(self) -> torch.Tensor:
        return self._image_fn()

    def __repr__(self) -> str:
        return f"ImageParam({self.name!r}, shape={self.shape})"


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    try:
        s = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be (batch, channels, height, width); got {shape!r}") from None
    if len(s) != 4 or min(s) < 1:
        raise ValueError(f"shape must be 4 positive ints (batch, channels, height, width); got {shape!r}")
    return s  # type: ignore[return-value]


def _draw(generator: torch.Generator, shape: tuple[int, ...], sd: float, device, dtype) -> torch.Tensor:
    """``shape[0]`` draws, one image after the other (image i does not depend on the batch size)."""
    rows = [torch.randn(shape[1:], generator=generator, dtype=torch.float32) for _ in range(shape[0])]
    return (torch.stack(rows) * sd).to(device=device, dtype=dtype).requires_grad_(True)


def pixel_image(shape: Sequence[int], generator: torch.Generator, *, sd: float = 0.01,
                value_range: tuple[float, float] = (0.0, 1.0), decorrelate: bool = False,
                device=None, dtype=torch.float32) -> ImageParam:
    """Free pixels: ``image = lo + (hi - lo) · sigmoid(p)``, ``p ~ N(0, sd²)`` at the start (grey)."""
    s = _check_shape(shape)
    p = _draw(generator, s, sd, device, dtype)
    return ImageParam([p], lambda: to_range(p, value_range, decorrelate), s, "pixel")


def fourier_image(shape: Sequence[int], generator: torch.Generator, *, sd: float = 0.01,
                  decay_power: float = 1.0, value_range: tuple[float, float] = (0.0, 1.0),
                  decorrelate: bool = True, device=None, dtype=torch.float32) -> ImageParam:
    """Images from scaled Fourier coefficients (Olah et al. 2017; Mordvintsev et al. 2018).

    The parameters are the real and imaginary parts of ``rfft2`` coefficients; coefficient at
    frequency ``f`` (cycles per pixel, ``f = sqrt(fy² + fx²)``) is multiplied by
    ``1 / max(f, 1/max(H, W))**decay_power`` (the lowest frequencies, below one cycle per image,
    share the weight of one cycle per image) before the inverse transform (``norm="ortho"``),
    the result divided by 4 (Lucid's constant, which keeps the start near grey) and mapped into
    ``value_range`` by :func:`to_range` (colour decorrelation, sigmoid).
    """
    b, c, h, w = _check_shape(shape)
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freqs = torch.sqrt(fy * fy + fx * fx)
    scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** float(decay_power)
    scale = scale.to(device=device, dtype=dtype)
    spec = _draw(generator, (b, c, h, w // 2 + 1, 2), sd, device, dtype)

    def image():
        coeffs = torch.view_as_complex((spec * scale[..., None]).contiguous())
        x = torch.fft.irfft2(coeffs, s=(h, w), norm="ortho") / 4.0
        return to_range(x, value_range, decorrelate)

    return ImageParam([spec], image, (b, c, h, w), "fourier")
