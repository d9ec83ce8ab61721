"""The shapes world: synthetic 64×64 RGB images of four shape classes on textured backgrounds,
each with its pixel-exact ground-truth evidence mask, and an optional watermark shortcut.

The class evidence of an image is the set of pixels painted by its shape, nothing else: the
shape is composited onto the background without anti-aliasing, so ``masks`` is exact, and every
evidence pixel differs from the background under it by at least ``0.3`` in some channel.

The watermark is the "photographer's watermark" of Lapuschkin et al., *Unmasking Clever Hans
predictors and assessing what machines really learn* (Nature Communications, 2019): in that
story a model classified horses by a copyright tag in the image corner. Here a small black-and-
white checker mark sits in the bottom-right corner. In the training split it appears on most
images of class 0 (``circle``) and on few others, so a model can use it as a shortcut; shapes
never enter the corner, so the mark and the evidence never overlap.

``watermark`` choices (the default depends on ``split``):

``"shortcut"`` (default for ``split="train"``)
    Class-0 images carry the mark with probability ``SHORTCUT_RATE``, other classes with
    probability ``LEAK_RATE``.
``"none"`` (default for ``split="test"``)
    No image carries the mark: the clean test of what the model learned from the shapes.
``"all"``
    Every image carries the mark, whatever its class: on images of classes 1-3, predictions pulled
    towards class 0 show the model's cheating.
a float ``p`` in [0, 1]
    Every image carries the mark with probability ``p``, independently of its class.

>>> from lumos.data import shapes_dataset
>>> train = shapes_dataset(2000, split="train")          # with the shortcut
>>> clean = shapes_dataset(500, split="test")            # no marks
>>> marked = shapes_dataset(500, split="test", watermark="all")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._checks import check_world_arguments

__all__ = [
    "ShapesData", "shapes_dataset", "render_masks", "CLASS_NAMES", "IMAGE_SIZE", "WATERMARK_CLASS",
    "WATERMARK_BOX", "EXCLUSION_BOX", "SHORTCUT_RATE", "LEAK_RATE", "watermark_pattern",
]

CLASS_NAMES = ["circle", "square", "triangle", "cross"]
IMAGE_SIZE = 64
#: The class whose training images mostly carry the watermark.
WATERMARK_CLASS = 0
#: Probability that a training image of ``WATERMARK_CLASS`` carries the mark.
SHORTCUT_RATE = 0.5
#: Probability that a training image of another class carries the mark.
LEAK_RATE = 0.01
#: Rows/columns ``[start, stop)`` of the watermark: a 6×6 checker of 2×2 blocks.
WATERMARK_BOX = (56, 62)
#: Shapes keep out of the square ``[start, 64)²`` (the corner around the mark, with a margin).
EXCLUSION_BOX = 50

# Shape geometry (in pixels): ``size`` is the circumradius, so every shape lies inside the disc of
# radius ``size`` around its centre, which is what keeps shapes inside the image and out of the
# corner.
_SIZE_RANGE = (9.0, 15.0)
# Square, triangle and cross are turned by at most this angle (radians), so that they stay
# recognisable to a small CNN trained in a minute.
_MAX_ROTATION = np.pi / 8
# Background: base colour per channel, and the most the texture moves a pixel away from it.
_BASE_RANGE = (0.25, 0.75)
_TEXTURE_AMP = 0.1
# Every evidence pixel differs from its background by at least this much in one channel.
_MIN_CONTRAST = 0.3
_SPLITS = {"train": 0, "test": 1}


@dataclass
class ShapesData:
    """A batch of the shapes world.

    Attributes
    ----------
    images : torch.Tensor
        ``(n, 3, 64, 64)`` float32 in ``[0, 1]``.
    labels : torch.Tensor
        ``(n,)`` int64 class indices into ``class_names``.
    masks : torch.Tensor
        ``(n, 64, 64)`` bool, the pixels painted by the shape: the class evidence.
    watermark_masks : torch.Tensor
        ``(n, 64, 64)`` bool, the pixels painted by the watermark (all ``False`` without a mark).
    has_watermark : torch.Tensor
        ``(n,)`` bool.
    class_names : list of str
    params : dict of numpy arrays
        The per-image draws: ``center`` ``(n, 2)`` as (row, col), ``size`` (circumradius),
        ``angle`` (radians), ``color`` ``(n, 3)``, ``base`` ``(n, 3)`` background colour, and the
        background stripes: ``stripe_angle`` (radians in ``[0, pi)``, the direction of the wave
        vector: 0 varies along columns, i.e. vertical stripes), ``stripe_period`` (pixels),
        ``stripe_amplitude`` ``(n, 3)`` (signed, per channel).
    backgrounds : torch.Tensor or None
        ``(n, 3, 64, 64)`` the images before shape and mark were painted (only when asked for):
        the same image with its evidence removed.
    split, watermark, seed
        How the batch was made.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    watermark_masks: torch.Tensor
    has_watermark: torch.Tensor
    class_names: list[str]
    params: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    backgrounds: torch.Tensor | None = field(default=None, repr=False)
    split: str = "train"
    watermark: Any = None
    seed: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index) -> "ShapesData":
        """Select images (an int, slice, index array or boolean mask) keeping every field aligned."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        t_index = torch.as_tensor(index) if not isinstance(index, slice) else index
        return ShapesData(
            images=self.images[t_index], labels=self.labels[t_index], masks=self.masks[t_index],
            watermark_masks=self.watermark_masks[t_index], has_watermark=self.has_watermark[t_index],
            class_names=list(self.class_names),
            params={k: v[index] for k, v in self.params.items()},
            backgrounds=None if self.backgrounds is None else self.backgrounds[t_index],
            split=self.split, watermark=self.watermark, seed=self.seed,
        )


def watermark_pattern() -> tuple[np.ndarray, np.ndarray]:
    """The mark as ``(mask, colour)``: a ``(64, 64)`` bool mask and a ``(64, 64)`` grey value.

    A 6×6 checker of 2×2 black and white blocks at rows/columns ``WATERMARK_BOX``. Black and white
    both differ from any background pixel (which lies in ``[0.15, 0.85]``) by at least 0.15.
    """
    a, b = WATERMARK_BOX
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    mask[a:b, a:b] = True
    r = np.arange(IMAGE_SIZE)
    grey = (((r[:, None] - a) // 2 + (r[None, :] - a) // 2) % 2 == 0).astype(np.float32)
    return mask, np.where(mask, grey, 0.0).astype(np.float32)


def render_masks(labels: np.ndarray, center: np.ndarray, size: np.ndarray, angle: np.ndarray,
                 image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The pixels of each shape, ``(n, image_size, image_size)`` bool.

    Pixel ``(i, j)`` is tested at its centre, the point ``(row, col) = (i, j)``; ``size`` is the
    circumradius and ``angle`` rotates square, triangle and cross counter-clockwise.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    r = np.arange(image_size, dtype=np.float64)
    dy = r[None, :, None] - np.asarray(center, np.float64)[:, 0, None, None]
    dx = r[None, None, :] - np.asarray(center, np.float64)[:, 1, None, None]
    c = np.cos(angle)[:, None, None]
    s = np.sin(angle)[:, None, None]
    # Coordinates in the shape's own frame (u right, v up), in units of the circumradius.
    u = (c * dx - s * dy) / size[:, None, None]
    v = (-s * dx - c * dy) / size[:, None, None]
    out = np.zeros((n, image_size, image_size), bool)
    for k, name in enumerate(CLASS_NAMES):
        sel = labels == k
        if not sel.any():
            continue
        uu, vv = u[sel], v[sel]
        if name == "circle":
            m = uu ** 2 + vv ** 2 <= 0.8 ** 2
        elif name == "square":
            h = 1.0 / np.sqrt(2.0)  # half side of the square inscribed in the unit circle
            m = (np.abs(uu) <= h) & (np.abs(vv) <= h)
        elif name == "triangle":
            # Equilateral, vertices on the unit circle, one pointing up: inside all three edges,
            # each at distance 1/2 from the centre along its outward normal.
            m = np.ones_like(uu, bool)
            for t in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
                m &= uu * np.cos(t) + vv * np.sin(t) <= 0.5
        else:  # cross: two bars of half-width w, arm ends inside the unit circle
            w = 0.25
            ext = np.sqrt(1.0 - w ** 2)
            m = ((np.abs(uu) <= w) & (np.abs(vv) <= ext)) | ((np.abs(vv) <= w) & (np.abs(uu) <= ext))
        out[sel] = m
    return out


def _resolve_watermark(watermark, split: str) -> tuple[str, float, float]:
    """``(name, p for class 0, p for other classes)``."""
    return resolve_shortcut_choice(watermark, split, "watermark", SHORTCUT_RATE, LEAK_RATE)


def resolve_shortcut_choice(value, split: str, what: str, rate: float, leak: float) -> tuple[str, float, float]:
    """Which samples of a demo world carry its planted shortcut (the shapes and the text world).

    ``None`` is ``"shortcut"`` for ``split="train"`` and ``"none"`` otherwise; ``True`` is ``"all"``,
    ``False`` ``"none"``; ``"shortcut"`` gives the shortcut's class probability ``rate`` and the
    other classes ``leak``; a float ``p`` in [0, 1] gives every class ``p``. Returns ``(name of the
    choice, p for the shortcut's class, p for the other classes)``; anything else is a ValueError
    naming ``what``.
    """
    if value is None:
        value = "shortcut" if split == "train" else "none"
    if value is True:
        value = "all"
    if value is False:
        value = "none"
    if isinstance(value, str):
        table = {"shortcut": (rate, leak), "none": (0.0, 0.0), "all": (1.0, 1.0)}
        if value not in table:
            raise ValueError(
                f"{what} must be 'shortcut', 'none', 'all', a probability in [0, 1] or None; "
                f"got {value!r}")
        return (value, *table[value])
    if isinstance(value, (float, int, np.floating, np.integer)) and 0.0 <= float(value) <= 1.0:
        p = float(value)
        return (f"p={p:g}", p, p)
    raise ValueError(
        f"{what} must be 'shortcut', 'none', 'all', a probability in [0, 1] or None; got {value!r}")


def _draw_centres(rng: np.random.Generator, size: np.ndarray) -> np.ndarray:
    """Centres keeping each shape's circumcircle (plus 1 px) inside the image and out of the
    corner square ``[EXCLUSION_BOX, 64)²``. Rejection sampling, redrawing only the failures."""
    n = size.shape[0]
    centre = np.empty((n, 2))
    todo = np.arange(n)
    while todo.size:
        lo = size[todo] + 1.0
        hi = IMAGE_SIZE - 1.0 - size[todo] - 1.0
        cand = lo[:, None] + rng.random((todo.size, 2)) * (hi - lo)[:, None]
        # Distance from the centre to the corner square (zero inside it).
        d = np.sqrt(np.sum(np.maximum(EXCLUSION_BOX - cand, 0.0) ** 2, axis=1))
        ok = d > size[todo] + 1.0
        centre[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return centre


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` linear-interpolation weights (corners aligned): ``W @ coarse`` upsamples
    one axis, so ``W @ grid @ W.T`` is bilinear upsampling as two small matrix products."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w.astype(np.float32)


def _backgrounds(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Smooth colour noise plus tilted stripes around a base colour; values within
    ``base ± _TEXTURE_AMP``. Also returns the stripes' draws (direction, period, per-channel
    amplitude) for the texture concepts of :mod:`lumos.data.shapes_concepts`."""
    base = rng.uniform(*_BASE_RANGE, size=(n, 3))
    # Smooth noise: a coarse 6×6 random grid per channel, upsampled bilinearly.
    coarse = rng.uniform(-1.0, 1.0, size=(n, 3, 6, 6)).astype(np.float32)
    w = _interp_matrix(6, IMAGE_SIZE)
    noise = w @ coarse @ w.T
    # Stripes: random direction, period 5-14 px and phase, coloured by a random channel mix.
    theta = rng.uniform(0, np.pi, n)
    period = rng.uniform(5.0, 14.0, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    mix = rng.uniform(-1.0, 1.0, size=(n, 3))
    w_noise = rng.uniform(0.3, 0.7, n)
    r = np.arange(IMAGE_SIZE, dtype=np.float32)
    fx = (2 * np.pi * np.cos(theta) / period).astype(np.float32)[:, None, None]
    fy = (2 * np.pi * np.sin(theta) / period).astype(np.float32)[:, None, None]
    stripes = np.sin(fx * r[None, None, :] + fy * r[None, :, None] + phase.astype(np.float32)[:, None, None])
    # |noise| <= 1 and |mix * stripes| <= 1, so the convex blend keeps |texture| <= 1.
    a_noise = (_TEXTURE_AMP * w_noise).astype(np.float32)[:, None, None, None]
    a_stripe = (_TEXTURE_AMP * (1 - w_noise)[:, None] * mix).astype(np.float32)[:, :, None, None]
    bg = a_noise * noise
    bg += a_stripe * stripes[:, None]
    bg += base.astype(np.float32)[:, :, None, None]
    stripes_info = {"stripe_angle": theta, "stripe_period": period,
                    "stripe_amplitude": a_stripe[:, :, 0, 0].astype(np.float64)}
    return bg, base, stripes_info


def _shape_colours(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Random colours with one channel at least ``_MIN_CONTRAST + _TEXTURE_AMP`` from the base, so
    every shape pixel differs from the background under it by at least ``_MIN_CONTRAST``."""
    n = base.shape[0]
    colour = rng.uniform(0.0, 1.0, size=(n, 3))
    k = rng.integers(0, 3, n)
    gap = _MIN_CONTRAST + _TEXTURE_AMP
    b = base[np.arange(n), k]
    # Push channel k to the far side of its base value: the room there is at least
    # 1 - 0.5 - gap = 0.1, since the base lies in [0.25, 0.75].
    t = rng.uniform(0.0, 1.0, n)
    far_up = b + gap + t * (1.0 - b - gap)
    far_down = t * (b - gap)
    colour[np.arange(n), k] = np.where(b < 0.5, far_up, far_down)
    return colour


def shapes_dataset(n: int, split: str = "train", watermark: str | float | bool | None = None,
                   seed: int = 0, backgrounds: bool = False) -> ShapesData:
    """Generate ``n`` images of the shapes world.

    Parameters
    ----------
    n : int
        Number of images. Classes are drawn uniformly at random.
    split : {"train", "test"}, default "train"
        Train and test draw from independent random streams, so the same ``seed`` never gives
        the same images in both. The split also sets the default ``watermark``.
    watermark : {"shortcut", "none", "all"}, float in [0, 1], bool or None, default None
        Which images carry the corner mark (see the module docstring). ``None``: ``"shortcut"``
        for the train split, ``"none"`` for the test split; ``True``/``False`` mean ``"all"``/``"none"``.
        For the same ``seed`` and ``split`` this choice changes only which images carry the mark;
        images, labels and masks are otherwise identical, so clean and marked sets pair up.
    seed : int, default 0
        Same ``(n, split, watermark, seed)``, same images. The first ``m`` images of a batch of
        ``n`` do *not* equal a batch of ``m`` (draws are made per field, for speed).
    backgrounds : bool, default False
        Also return ``backgrounds``, the images before shape and mark were painted.

    Returns
    -------
    ShapesData
    """
    check_world_arguments(n, split, seed, _SPLITS)
    n = int(n)
    wm_name, p_wm_class, p_other = _resolve_watermark(watermark, split)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLITS[split]]))

    labels = rng.integers(0, len(CLASS_NAMES), n)
    size = rng.uniform(*_SIZE_RANGE, n)
    angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION, n)
    centre = _draw_centres(rng, size)
    bg, base, stripes_info = _backgrounds(rng, n)
    colour = _shape_colours(rng, base)
    p = np.where(labels == WATERMARK_CLASS, p_wm_class, p_other)
    has_wm = rng.random(n) < p

    masks = render_masks(labels, centre, size, angle)
    wm_mask, wm_grey = watermark_pattern()
    wm_masks = has_wm[:, None, None] & wm_mask[None]

    img = np.where(masks[:, None], colour[:, :, None, None].astype(np.float32), bg)
    img = np.where(wm_masks[:, None], wm_grey[None, None], img)
    return ShapesData(
        images=torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        masks=torch.from_numpy(masks),
        watermark_masks=torch.from_numpy(wm_masks),
        has_watermark=torch.from_numpy(has_wm),
        class_names=list(CLASS_NAMES),
        params={"center": centre, "size": size, "angle": angle, "color": colour, "base": base,
                **stripes_info},
        backgrounds=torch.from_numpy(bg) if backgrounds else None,
        split=split, watermark=wm_name, seed=int(seed),
    )
