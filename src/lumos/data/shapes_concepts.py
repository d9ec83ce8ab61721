"""Concept masks of the shapes world: per image, the pixels of each human concept, exact.

Network dissection (:mod:`lumos.concepts.dissection`, Bau et al. 2017) needs pixel-level concept
annotations; the Broden data set of the paper is large and online. The shapes world knows every
pixel's origin, so its concepts come with exact masks, offline, derived from what the generator
drew (no image, label or weight of the world changes):

``shape:<name>``
    The shape's pixels on images of that class (``circle``, ``square``, ``triangle``, ``cross``).
``colour:<name>``
    The shape's pixels on images whose shape colour has that name (see :func:`colour_name`:
    ``black``, ``white``, ``grey`` for unsaturated colours, else a hue name ``red``, ``orange``,
    ``yellow``, ``green``, ``cyan``, ``blue``, ``purple``, ``pink``).
``texture:<name>``
    The background pixels (neither shape nor mark) of images whose stripes are visible (largest
    channel amplitude at least ``min_stripe_amplitude``), by stripe orientation: ``vertical
    stripes``, ``horizontal stripes``, ``diagonal stripes /``, ``diagonal stripes \\``.
``watermark``
    The corner mark's pixels (``ShapesData.watermark_masks``).
``background``
    Every pixel that is neither shape nor mark.

>>> from lumos.data import shapes_dataset
>>> from lumos.data.shapes_concepts import concept_masks
>>> data = shapes_dataset(100, split="test", watermark=0.5)
>>> masks = concept_masks(data)                 # {"shape:circle": (100, 64, 64) bool, ...}
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch

from .shapes import CLASS_NAMES, ShapesData

__all__ = ["concept_masks", "colour_name", "stripe_orientation", "COLOUR_NAMES", "TEXTURE_NAMES",
           "concept_names"]

COLOUR_NAMES = ["black", "white", "grey", "red", "orange", "yellow", "green", "cyan", "blue", "purple",
                "pink"]
TEXTURE_NAMES = ["vertical stripes", "diagonal stripes /", "horizontal stripes", "diagonal stripes \\"]
# Hue bins in degrees: (upper edge, name); red wraps around 360.
_HUES = [(15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (260, "blue"),
         (300, "purple"), (345, "pink"), (360, "red")]


def colour_name(rgb) -> str:
    """The basic colour term of an RGB colour in ``[0, 1]``.

    Saturation below 0.25 (HSV) is ``black`` (value < 0.25), ``white`` (value > 0.8) or ``grey``;
    otherwise the hue decides: red < 15° ≤ orange < 45° ≤ yellow < 70° ≤ green < 165° ≤ cyan <
    195° ≤ blue < 260° ≤ purple < 300° ≤ pink < 345° ≤ red.
    """
    r, g, b = (float(v) for v in np.asarray(rgb, dtype=np.float64).reshape(3))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if s < 0.25:
        return "black" if v < 0.25 else ("white" if v > 0.8 else "grey")
    deg = h * 360.0
    return next(name for edge, name in _HUES if deg < edge)


def stripe_orientation(angle: float) -> str:
    """The texture name of a stripe wave-vector direction (radians, see ``ShapesData.params``).

    The stripes run perpendicular to the wave vector: angle 0 varies along columns (vertical
    stripes), pi/2 along rows (horizontal stripes); bins are pi/4 wide around 0, pi/4, pi/2, 3pi/4.
    With rows growing downwards, angle pi/4 keeps ``row + col`` constant along a stripe, which on
    screen runs like ``/``.
    """
    k = int(np.floor((float(angle) % np.pi) / (np.pi / 4) + 0.5)) % 4
    return TEXTURE_NAMES[k]


def concept_names(min_stripe_amplitude: float = 0.03) -> list[str]:
    """Every concept :func:`concept_masks` can return, in its order."""
    return ([f"shape:{c}" for c in CLASS_NAMES] + [f"colour:{c}" for c in COLOUR_NAMES]
            + [f"texture:{t}" for t in TEXTURE_NAMES] + ["watermark", "background"])


def concept_masks(data: ShapesData, concepts=None, *, min_stripe_amplitude: float = 0.03,
                  drop_empty: bool = False) -> dict[str, torch.Tensor]:
    """Pixel masks of every concept on every image of ``data``.

    Parameters
    ----------
    data : ShapesData
        A batch of :func:`lumos.data.shapes_dataset` (its ``params`` must hold the draws, which
        every batch made by ``shapes_dataset`` does).
    concepts : sequence of str, optional
        Which concepts (names as in :func:`concept_names`, or a family prefix such as ``"shape"``,
        ``"colour"``, ``"texture"``); default all.
    min_stripe_amplitude : float, default 0.03
        Stripes count as a texture when their largest per-channel amplitude reaches this (the
        whole background texture is within ±0.1 of the base colour).
    drop_empty : bool, default False
        Leave out concepts that no image of ``data`` shows.

    Returns
    -------
    dict of str to torch.Tensor
        ``name -> (n, 64, 64)`` bool masks, in the order of :func:`concept_names`.
    """
    if not isinstance(data, ShapesData):
        raise TypeError(f"data must be a ShapesData batch of lumos.data.shapes_dataset; got {type(data).__name__}")
    missing = [k for k in ("color", "stripe_angle", "stripe_amplitude") if k not in data.params]
    if missing:
        raise ValueError(f"data: params lack {missing}; make the batch with lumos.data.shapes_dataset")
    amp = float(min_stripe_amplitude)
    if not np.isfinite(amp) or amp < 0:
        raise ValueError(f"min_stripe_amplitude must be a non-negative number; got {min_stripe_amplitude!r}")
    names = concept_names(amp)
    if concepts is not None:
        if isinstance(concepts, str):
            concepts = [concepts]
        wanted = []
        for c in concepts:
            hits = [n for n in names if n == c or n.split(":")[0] == c]
            if not hits:
                raise ValueError(f"concepts: unknown concept {c!r}; known: {names} "
                                 "(or a family: 'shape', 'colour', 'texture')")
            wanted += [h for h in hits if h not in wanted]
        names = [n for n in names if n in wanted]

    shape = data.masks
    mark = data.watermark_masks
    background = ~shape & ~mark
    n = len(data)
    per_image = {
        "shape": np.array([CLASS_NAMES[int(k)] for k in data.labels.tolist()], dtype=object),
        "colour": np.array([colour_name(c) for c in data.params["color"]], dtype=object),
    }
    visible = np.abs(np.asarray(data.params["stripe_amplitude"])).max(axis=1) >= amp
    texture = np.array([stripe_orientation(a) if v else "" for a, v in
                        zip(data.params["stripe_angle"], visible)], dtype=object)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "watermark":
            m = mark.clone()
        elif name == "background":
            m = background.clone()
        else:
            family, value = name.split(":", 1)
            if family == "texture":
                sel = torch.from_numpy(texture == value)
                m = background & sel[:, None, None]
            else:
                sel = torch.from_numpy(per_image[family] == value) if n else torch.zeros(0, dtype=torch.bool)
                m = shape & sel[:, None, None]
        if drop_empty and not bool(m.any()):
            continue
        out[name] = m
    return out
