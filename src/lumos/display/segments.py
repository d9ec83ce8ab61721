"""Superpixel overlays: each segment of an image shaded by its attribution.

For explanations over superpixels (LIME, KernelSHAP and other Shapley estimators on images): the
labels come from ``meta["segments"]`` (the maskers' layout) or from ``segments=``, the value per
segment from ``meta["segment_values"]`` or, for any pixel map, the sum of the map over each
segment's pixels and channels (so a map that spreads ``φ_s`` evenly over its segment gives back
``φ_s`` exactly). Colours run from ``-max |value|`` to ``max |value|`` of the image (the colour
bar, ``colorbar=True``, shows that scale in the values' units) — for the picture only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import ShortRepr, finish_image
from .heatmap import DIVERGING, image_for_display

__all__ = ["SegmentsDisplay", "segment_values", "plot_segments"]


def segment_values(values: Any, segments: np.ndarray) -> np.ndarray:
    """Sum of a (C, H, W) or (H, W) map over each label of ``segments`` (H, W); shape (max+1,)."""
    v = np.asarray(values, dtype=np.float64)
    seg = np.asarray(segments)
    if v.ndim == 3:
        v = v.sum(0)
    if v.shape != seg.shape:
        raise ValueError(f"segments has shape {seg.shape} but the map is {v.shape}")
    if not np.issubdtype(seg.dtype, np.integer) or seg.min() < 0:
        raise ValueError("segments must be non-negative integer labels")
    return np.bincount(seg.ravel(), weights=v.ravel(), minlength=int(seg.max()) + 1)


@dataclass(repr=False)
class SegmentsDisplay(ShortRepr):
    """One image with its superpixels shaded by attribution.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``image_`` (the overlay AxesImage),
    ``background_`` (the image's AxesImage or None), ``boundaries_`` (AxesImage or None),
    ``colorbar_``, ``shown_`` (labels that were shaded).
    """

    segments: np.ndarray         # (H, W) int labels
    values: np.ndarray           # (S,) value per label
    image: np.ndarray | None = None
    title: str = ""

    @classmethod
    def from_explanation(cls, explanation, index: int = 0, segments: Any = None,
                         title: str | None = None) -> "SegmentsDisplay":
        """Labels from ``segments=`` or ``meta["segments"]``; values per segment as described."""
        meta = explanation.meta
        if segments is None:
            if meta.get("segments") is None:
                raise ValueError("segments: the explanation has no meta['segments']; pass the "
                                 "(H, W) superpixel labels")
            segments = np.asarray(meta["segments"])[index]
        seg = np.asarray(segments)
        if seg.ndim != 2:
            raise ValueError(f"segments must be (H, W) labels; got shape {seg.shape}")
        v = np.asarray(explanation.values[index], dtype=np.float64)
        sv = meta.get("segment_values")
        if sv is not None:                          # exact per-segment values of a masker
            vals = np.asarray(sv, dtype=np.float64)[index]
        elif v.ndim in (2, 3) and v.shape[-2:] == seg.shape:
            vals = segment_values(v, seg)
        elif v.ndim == 1:                           # one value per segment
            vals = v
        else:
            raise ValueError(f"values of shape {v.shape} do not match segments of shape {seg.shape}")
        if int(seg.max()) >= len(vals):
            raise ValueError(f"segments has label {int(seg.max())} but there are {len(vals)} values")
        image = None
        if explanation.inputs is not None and np.ndim(explanation.inputs) >= 3:
            image = image_for_display(explanation.inputs[index])
        return cls(seg, vals, image, explanation.method if title is None else title)

    def plot(self, ax=None, *, alpha: float = 0.6, top_k: int | None = None,
             positive_only: bool = False, boundaries: bool = True, cmap: str = DIVERGING,
             colorbar: bool = False) -> "SegmentsDisplay":
        """Shade the segments (the ``top_k`` largest |values|, or positive ones only) over the image."""
        import matplotlib.pyplot as plt

        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                                  or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None; got {top_k!r}")
        if ax is None:
            _, ax = plt.subplots(figsize=(3, 3))
        vals = self.values.copy()
        keep = np.ones(len(vals), dtype=bool)
        if positive_only:
            keep &= vals > 0
        if top_k is not None:
            rank = np.argsort(-np.abs(np.where(keep, vals, 0.0)), kind="stable")
            chosen = np.zeros(len(vals), dtype=bool)
            chosen[rank[:top_k]] = True
            keep &= chosen
        self.shown_ = np.flatnonzero(keep & (vals != 0))
        scale = float(np.abs(vals[keep]).max()) if keep.any() else 0.0
        scale = scale if scale > 0 else 1.0
        per_pixel = np.where(keep, vals, 0.0)[self.segments]
        self.background_ = None
        if self.image is not None and self.image.shape[:2] == self.segments.shape:
            self.background_ = ax.imshow(self.image, cmap=None if self.image.ndim == 3 else "gray",
                                         vmin=0, vmax=1)
        a = np.where(keep[self.segments], alpha * np.abs(per_pixel / scale) ** 0.5, 0.0)
        self.image_ = ax.imshow(per_pixel, cmap=cmap, vmin=-scale, vmax=scale, alpha=a,
                                interpolation="nearest")
        self.boundaries_ = None
        if boundaries:
            from skimage.segmentation import find_boundaries

            edge = find_boundaries(self.segments, mode="inner")
            rgba = np.zeros(self.segments.shape + (4,))
            rgba[edge] = (1.0, 1.0, 0.0, 0.7)
            self.boundaries_ = ax.imshow(rgba, interpolation="nearest")
        return finish_image(self, ax, self.image_, colorbar=colorbar, scale=scale, signed=True,
                            label="attribution per segment")

def plot_segments(explanation, index: int = 0, segments: Any = None, ax=None, **kwargs
                  ) -> SegmentsDisplay:
    """Superpixel overlay of sample ``index``; see :class:`SegmentsDisplay`."""
    return SegmentsDisplay.from_explanation(explanation, index, segments).plot(ax=ax, **kwargs)
