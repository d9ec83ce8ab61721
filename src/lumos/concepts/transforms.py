"""Robustness transformations applied to the image at every optimisation step.

Each transformation is a small function ``t(images, generator) -> images``. Random draws come only
from the explicit ``generator`` (one draw per step, shared by the batch, so an image's result does
not depend on the other images). Optimising through random pads, shifts, scalings and rotations
asks for a picture that excites the unit wherever and however it lands, which removes the
adversarial high-frequency patterns of plain gradient ascent (Mordvintsev et al., *Inceptionism*,
2015; Olah et al., *Feature Visualization*, Distill 2017).

:func:`standard` is the chain used by default, sized for the model's input: pad by 1/16 of the
side, jitter by 1/16, scale in [0.95, 1.05], rotate in [-10°, 10°], jitter by 1/32.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["pad", "jitter", "random_scale", "random_rotate", "compose", "standard", "Transform"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(values: Sequence[float], generator: torch.Generator) -> float:
    i = int(torch.randint(len(values), (1,), generator=generator))
    return float(values[i])


def pad(width: int, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels (``mode`` as :func:`torch.nn.functional.pad`)."""
    width = int(width)
    if width < 0:
        raise ValueError(f"pad width must be >= 0; got {width}")

    def t(x, generator):
        if width == 0:
            return x
        return F.pad(x, (width,) * 4, mode=mode, value=value) if mode == "constant" else \
            F.pad(x, (width,) * 4, mode=mode)

    t.__name__ = f"pad({width})"
    return t


def jitter(d: int) -> Transform:
    """Crop a random window ``d - 1`` pixels smaller on each axis (a random shift of up to ``d - 1``)."""
    d = int(d)
    if d < 1:
        raise ValueError(f"jitter must be >= 1; got {d}")

    def t(x, generator):
        if d == 1:
            return x
        h, w = x.shape[-2:]
        if h <= d or w <= d:
            raise ValueError(f"jitter({d}) needs images larger than {d} pixels; got {h}x{w}")
        dy, dx = (int(v) for v in torch.randint(d, (2,), generator=generator))
        return x[..., dy:h - (d - 1) + dy, dx:w - (d - 1) + dx]

    t.__name__ = f"jitter({d})"
    return t


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor drawn from ``scales`` (bilinear)."""
    scales = [float(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty sequence of positive factors; got {scales}")

    def t(x, generator):
        s = _choice(scales, generator)
        if s == 1.0:
            return x
        h, w = x.shape[-2:]
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    t.__name__ = "random_scale"
    return t


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle in degrees drawn from ``angles`` (counter-clockwise as
    the image is displayed, rows downwards: 90° is ``torch.rot90(x, 1, (-2, -1))``; bilinear,
    border padding)."""
    angles = [float(a) for a in angles]
    if not angles:
        raise ValueError("angles must be a non-empty sequence of degrees")

    def t(x, generator):
        a = math.radians(_choice(angles, generator))
        if a == 0.0:
            return x
        c, s = math.cos(a), math.sin(a)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device)
        grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    t.__name__ = "random_rotate"
    return t


def compose(*transforms: Transform) -> Transform:
    """Apply ``transforms`` in order."""
    for tr in transforms:
        if not callable(tr):
            raise TypeError(f"transforms must be callables t(images, generator); got {tr!r}")

    def t(x, generator):
        for tr in transforms:
            x = tr(x, generator)
        return x

    t.__name__ = " → ".join(getattr(tr, "__name__", "transform") for tr in transforms)
    return t


def standard(size: int) -> Transform:
    """The default chain for images of side ``size`` (see the module docs)."""
    size = int(size)
    p = max(1, size // 16)
    return compose(pad(p), jitter(max(2, size // 16)),
                   random_scale([0.95 + 0.01 * i for i in range(11)]),
                   random_rotate(list(range(-10, 11)) + [0] * 5), jitter(max(2, size // 32)))
