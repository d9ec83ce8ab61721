"""Superpixels: one segmentation of image batches for every method that groups pixels.

Feature ablation, the image masker of LIME and the Shapley estimators, and the faithfulness
metrics all cut images into superpixels here, with scikit-image, so that the same call gives the
same segments everywhere.

Value range
-----------
Each image is scaled to [0, 1] (its own minimum and maximum) before it is segmented, so the
parameters below mean the same thing whatever the range of the inputs (0-255 bytes, [0, 1]
floats, normalised tensors). The defaults:

- ``"slic"`` (Achanta et al., 2012, :func:`skimage.segmentation.slic`): ``n_segments=50``,
  ``compactness=10`` (the colour/space trade-off, for [0, 1] images), ``start_label=0``.
- ``"quickshift"`` (Vedaldi & Soatto, 2008, :func:`skimage.segmentation.quickshift`): LIME's
  settings ``kernel_size=4``, ``max_dist=200``, ``ratio=0.2`` (Ribeiro et al., 2016), seeded by
  ``seed``. LIME hands quickshift 0-255 images, which scikit-image converts to CIELAB after
  scaling bytes to [0, 1]; a [0, 1] image converts to the *same* Lab values, so LIME's numbers
  apply to [0, 1] images unchanged (the segments are identical). Scaling a float image to 0-255
  instead would not: Lab conversion of floats assumes [0, 1], and LIME's parameters then give
  about ten times more segments. Grey images are repeated to three channels (as LIME does);
  images of another channel count are segmented without Lab, where colour distances are in [0, 1]
  units (raise ``ratio`` to weigh colour more).
- ``"felzenszwalb"`` (Felzenszwalb & Huttenlocher, 2004,
  :func:`skimage.segmentation.felzenszwalb`): ``scale=100``, ``sigma=0.5``, ``min_size=50``
  (scikit-image's gallery settings; ``scale`` is in 0-255 units of a [0, 1] image, as there).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["superpixels", "channel_axis", "SUPERPIXEL_METHODS", "SUPERPIXEL_DEFAULTS"]

SUPERPIXEL_METHODS = ("slic", "quickshift", "felzenszwalb")

SUPERPIXEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "slic": {"n_segments": 50, "compactness": 10.0, "start_label": 0},
    "quickshift": {"kernel_size": 4, "max_dist": 200.0, "ratio": 0.2},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.5, "min_size": 50},
}

_CHANNELS = ("auto", "first", "last")


def channel_axis(shape: tuple, channels: str = "auto", name: str = "images") -> int | None:
    """The channel axis (1 or 3) of an image batch of ``shape``; ``None`` for (n, H, W).

    ``channels="auto"`` takes the axis of size 1, 3 or 4 (the smaller one when both are); "first"
    is torch's (n, C, H, W), "last" is (n, H, W, C).
    """
    if channels not in _CHANNELS:
        raise ValueError(f"channels must be one of {_CHANNELS}; got {channels!r}")
    if len(shape) == 3:
        return None
    if len(shape) != 4:
        raise ValueError(f"{name}: an image batch must have shape (n, C, H, W), (n, H, W, C) or "
                         f"(n, H, W); got {tuple(shape)}. A single image needs a batch axis.")
    if channels == "first":
        return 1
    if channels == "last":
        return 3
    first, last = shape[1] in (1, 3, 4), shape[3] in (1, 3, 4)
    if first and not last:
        return 1
    if last and not first:
        return 3
    if first and last:
        return 1 if shape[1] <= shape[3] else 3
    raise ValueError(f"{name}: cannot tell the channel axis of shape {tuple(shape)}; pass "
                     "channels='first' or 'last'")


def _dense(labels: np.ndarray) -> np.ndarray:
    """Labels 0..k-1 in order of first value, whatever the library numbered."""
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def superpixels(images: Any, method: str = "slic", *, channels: str = "auto", seed: int = 0,
                **params: Any) -> np.ndarray:
    """Superpixel labels of each image of a batch, with scikit-image.

    Parameters
    ----------
    images : Tensor or ndarray, shape (n, C, H, W), (n, H, W, C) or (n, H, W)
        Any value range: each image is scaled to [0, 1] for the segmentation only (see the
        module notes for what the defaults mean on such images).
    method : {"slic", "quickshift", "felzenszwalb"}, default "slic"
        The segmentation algorithm; defaults in :data:`SUPERPIXEL_DEFAULTS` (SLIC 50 segments,
        compactness 10; quickshift with LIME's settings; Felzenszwalb scale 100).
    channels : {"auto", "first", "last"}, default "auto"
        Where the channel axis of a 4-D batch is (see :func:`channel_axis`).
    seed : int, default 0
        Seed of quickshift's random tie-breaking (the other methods are deterministic).
    **params
        Passed to the scikit-image function; they override the defaults (e.g. ``n_segments=100``).

    Returns
    -------
    ndarray of int64, shape (n, H, W)
        Labels 0..k-1 per image.
    """
    from skimage import segmentation

    if method not in SUPERPIXEL_METHODS:
        raise ValueError(f"superpixels: method must be one of {SUPERPIXEL_METHODS}; got {method!r}")
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"images must be numeric; got dtype {arr.dtype}")
    axis = channel_axis(arr.shape, channels)
    hwc = arr[..., None] if axis is None else (np.moveaxis(arr, 1, -1) if axis == 1 else arr)
    if len(hwc) == 0:
        raise ValueError("images: the batch is empty")
    kw = dict(SUPERPIXEL_DEFAULTS[method])
    kw.update(params)
    out = np.empty(hwc.shape[:3], dtype=np.int64)
    for i, img in enumerate(hwc):
        img = img.astype(np.float64)
        lo, hi = img.min(), img.max()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"images: image {i} contains NaN or Inf values")
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        c = img.shape[-1]
        if method == "slic":
            lab = segmentation.slic(img, channel_axis=-1, **kw)
        elif method == "quickshift":
            if c == 1:
                img = np.repeat(img, 3, axis=-1)
            q = {"rng": seed, "convert2lab": img.shape[-1] == 3}
            q.update(kw)
            lab = segmentation.quickshift(img, **q)
        else:
            lab = segmentation.felzenszwalb(img, channel_axis=-1, **kw)
        out[i] = _dense(lab)
    return out
