"""Heatmaps of image attributions: channel aggregation, percentile scaling, overlays and grids.

All scaling happens here, for the picture only; the explanation's numbers are never changed.
Signed maps use a diverging colour map centred on zero; magnitudes a sequential one.
Follows scikit-learn's Display pattern: ``HeatmapDisplay.from_explanation(e).plot(ax=...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "aggregate_channels", "scale_map", "HeatmapDisplay", "plot_grid", "plot_explanation",
    "image_for_display",
]

AGGREGATIONS = ("sum", "abs_sum", "max_abs", "l2", "mean")
DIVERGING = "RdBu_r"
SEQUENTIAL = "inferno"


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def aggregate_channels(values: Any, how: str = "sum") -> np.ndarray:
    """Reduce an attribution of shape (C, H, W) (or (H, W)) to (H, W).

    ``"sum"`` and ``"mean"`` keep the sign; ``"abs_sum"``, ``"max_abs"`` and ``"l2"`` give magnitudes.
    """
    v = _np(values)
    if v.ndim == 2:
        return v
    if v.ndim != 3:
        raise ValueError(f"values must have shape (C, H, W) or (H, W); got {v.shape}")
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregate must be one of {AGGREGATIONS}; got {how!r}")
    if how == "sum":
        return v.sum(0)
    if how == "mean":
        return v.mean(0)
    if how == "abs_sum":
        return np.abs(v).sum(0)
    if how == "max_abs":
        return np.abs(v).max(0)
    return np.sqrt((v * v).sum(0))


def scale_map(m: np.ndarray, signed: bool | None = None, percentile: float = 99.5):
    """Scale a 2-D map for display into [-1, 1] (signed) or [0, 1] (magnitude).

    The scale is the ``percentile`` of |m|, so a few extreme pixels do not wash the map out.
    Returns ``(scaled, signed, scale)``.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile}")
    if signed is None:
        signed = bool((m < 0).any() and (m > 0).any())
    scale = float(np.percentile(np.abs(m), percentile))
    if scale <= 0:
        scale = float(np.abs(m).max()) or 1.0
    lo = -1.0 if signed else 0.0
    return np.clip(m / scale, lo, 1.0), signed, scale


def image_for_display(image: Any) -> np.ndarray | None:
    """(C, H, W) or (H, W) input → (H, W, 3) or (H, W) floats in [0, 1] for imshow."""
    if image is None:
        return None
    im = _np(image)
    if im.ndim == 3 and im.shape[0] in (1, 3, 4):
        im = np.moveaxis(im, 0, -1)
        if im.shape[-1] == 1:
            im = im[..., 0]
    if im.ndim not in (2, 3):
        return None
    lo, hi = float(im.min()), float(im.max())
    return (im - lo) / (hi - lo) if hi > lo else np.zeros_like(im)


def _image_like(values: np.ndarray) -> bool:
    return values.ndim == 3 or (values.ndim == 2 and min(values.shape) > 3)


@dataclass
class HeatmapDisplay:
    """A heatmap of one attribution map, optionally over its image.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``image_`` (the map's AxesImage),
    ``background_`` (the image's AxesImage or None), ``colorbar_``.
    """

    heatmap: np.ndarray  # (H, W), raw aggregated values
    image: np.ndarray | None = None
    title: str = ""
    signed: bool | None = None

    @classmethod
    def from_explanation(cls, explanation, index: int = 0, aggregate: str = "sum",
                         title: str | None = None, signed: bool | None = None) -> "HeatmapDisplay":
        """Build from one sample of an image :class:`~lumos.Explanation`."""
        v = np.asarray(explanation.values[index], dtype=np.float64)
        if not _image_like(v):
            raise ValueError(
                f"explanation values of shape {v.shape} per sample are not an image map; "
                "use a tabular display (bar/waterfall) instead"
            )
        heat = aggregate_channels(v, aggregate)
        image = None
        if explanation.inputs is not None and np.ndim(explanation.inputs) >= 3:
            image = image_for_display(explanation.inputs[index])
        return cls(heat, image, explanation.method if title is None else title, signed)

    def plot(self, ax=None, *, alpha: float = 0.6, percentile: float = 99.5, cmap: str | None = None,
             colorbar: bool = False, overlay: bool = True) -> "HeatmapDisplay":
        """Draw the map (over the image, with transparency ``alpha``, when ``overlay``)."""
        import matplotlib.pyplot as plt

        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        if ax is None:
            _, ax = plt.subplots(figsize=(3, 3))
        scaled, signed, scale = scale_map(self.heatmap, self.signed, percentile)
        cmap = cmap or (DIVERGING if signed else SEQUENTIAL)
        self.background_ = None
        if overlay and self.image is not None and self.image.shape[:2] == self.heatmap.shape:
            gray = self.image.mean(-1) if self.image.ndim == 3 else self.image
            self.background_ = ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            # Transparency grows with |attribution| so the image shows where the map is quiet.
            a = alpha * np.clip(np.abs(scaled), 0, 1) ** 0.5
        else:
            a = None
        self.image_ = ax.imshow(scaled, cmap=cmap, vmin=-1 if signed else 0, vmax=1, alpha=a,
                                interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if self.title:
            ax.set_title(self.title, fontsize=9)
        self.colorbar_ = ax.figure.colorbar(self.image_, ax=ax, fraction=0.046) if colorbar else None
        self.scale_ = scale
        self.ax_, self.figure_ = ax, ax.figure
        return self


def plot_grid(explanations: Mapping[str, Any] | Sequence[Any], images: Any = None,
              indices: Sequence[int] | None = None, aggregate: str = "sum",
              row_labels: Sequence[str] | None = None, path: str | Path | None = None,
              percentile: float = 99.5, dpi: int = 110):
    """Several methods side by side (columns) for several images (rows).

    Parameters
    ----------
    explanations : mapping name -> Explanation, or a sequence of Explanations
    images : array (n, C, H, W), optional
        Shown in the first column; defaults to the first explanation's inputs.
    indices : sequence of int, optional
        Which samples to show (default: all).
    path : str or Path, optional
        Save the figure there as PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if not isinstance(explanations, Mapping):
        explanations = {e.method: e for e in explanations}
    if not explanations:
        raise ValueError("explanations must not be empty")
    first = next(iter(explanations.values()))
    if images is None:
        images = first.inputs
    n = len(first)
    indices = list(range(n)) if indices is None else list(indices)
    cols = len(explanations) + (images is not None)
    fig, axes = plt.subplots(len(indices), cols, figsize=(1.7 * cols, 1.8 * len(indices)), squeeze=False)
    for r, i in enumerate(indices):
        c = 0
        if images is not None:
            ax = axes[r, 0]
            ax.imshow(image_for_display(images[i]))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("input", fontsize=8)
            if row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=7)
            c = 1
        for name, expl in explanations.items():
            d = HeatmapDisplay.from_explanation(expl, i, aggregate=aggregate, title=name if r == 0 else "")
            d.plot(ax=axes[r, c], percentile=percentile)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
            c += 1
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def plot_explanation(explanation, index: int = 0, ax=None, **kwargs):
    """Draw an explanation with the display that fits it and return the display.

    Image maps become heatmaps over their image; tabular rows (values of shape (n, features))
    become a bar chart of the attributions of row ``index``.
    """
    v = np.asarray(explanation.values[index])
    if _image_like(v):
        aggregate = kwargs.pop("aggregate", "sum")
        return HeatmapDisplay.from_explanation(explanation, index, aggregate=aggregate).plot(ax=ax, **kwargs)
    try:
        from .shap_plots import BarDisplay
    except ImportError:  # pragma: no cover - the tabular displays ship with lumos
        raise
    return BarDisplay.from_explanation(explanation, index=index).plot(ax=ax, **kwargs)
