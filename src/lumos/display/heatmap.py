"""Heatmaps of image attributions: channel aggregation, percentile scaling, overlays and grids.

All scaling happens here, for the picture only; the explanation's numbers are never changed.
Maps with negative values use a diverging colour map centred on zero, magnitudes a sequential
one; maps are drawn in their own units (a colour bar can show the scale), the brightest colour at
a percentile of |value|. Follows scikit-learn's Display pattern:
``HeatmapDisplay.from_explanation(e).plot(ax=...)``, ``GridDisplay.from_explanations(...).plot()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._common import ShortRepr, add_colorbar, finish_image

__all__ = [
    "aggregate_channels", "scale_map", "map_scale", "is_signed", "HeatmapDisplay", "GridDisplay",
    "plot_grid", "image_for_display",
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


def is_signed(m: np.ndarray) -> bool:
    """A map with any negative value is drawn diverging (centred on zero); else as magnitudes."""
    return bool((np.asarray(m) < 0).any())


def map_scale(m: Any, percentile: float = 99.5) -> float:
    """The ``percentile`` of ``|m|`` (one map, or several stacked): what the brightest colour
    means, so that a few extreme pixels do not wash the picture out. Never zero."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile}")
    a = np.abs(np.asarray(m, dtype=np.float64))
    scale = float(np.percentile(a, percentile)) if a.size else 0.0
    if not scale > 0:
        scale = float(a.max()) if a.size else 0.0
    return scale if scale > 0 else 1.0


def scale_map(m: np.ndarray, signed: bool | None = None, percentile: float = 99.5):
    """Scale a 2-D map for display into [-1, 1] (signed) or [0, 1] (magnitude).

    The scale is the ``percentile`` of |m| (:func:`map_scale`). ``signed=None`` means "signed
    when any value is negative". Returns ``(scaled, signed, scale)``.
    """
    scale = map_scale(m, percentile)
    if signed is None:
        signed = is_signed(m)
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


_AGGREGATE_LABELS = {
    "sum": "attribution (sum over channels)",
    "mean": "attribution (mean over channels)",
    "abs_sum": "|attribution| (sum over channels)",
    "max_abs": "|attribution| (max over channels)",
    "l2": "attribution (L2 norm over channels)",
}


def _map_of(explanation, index: int, aggregate: str):
    """(H, W) map, its image for display (or None) and its colour-bar label."""
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
    label = "attribution" if v.ndim == 2 else _AGGREGATE_LABELS[aggregate]
    return heat, image, label


@dataclass(repr=False)
class HeatmapDisplay(ShortRepr):
    """A heatmap of one attribution map, optionally over its image.

    The map is drawn in its own units: the colours run from ``-scale`` to ``scale`` (signed maps,
    diverging colour map centred on zero) or from 0 to ``scale`` (magnitudes, sequential), where
    ``scale`` is the ``percentile`` of |map| unless given; brighter values saturate. The colour
    bar (``colorbar=True``) shows that scale.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``image_`` (the map's AxesImage),
    ``background_`` (the image's AxesImage or None), ``colorbar_``, ``scale_``, ``signed_``.
    """

    heatmap: np.ndarray  # (H, W), raw aggregated values
    image: np.ndarray | None = None
    title: str = ""
    signed: bool | None = None
    label: str = "attribution"

    @classmethod
    def from_explanation(cls, explanation, index: int = 0, aggregate: str = "sum",
                         title: str | None = None, signed: bool | None = None) -> "HeatmapDisplay":
        """Build from one sample of an image :class:`~lumos.Explanation`."""
        heat, image, label = _map_of(explanation, index, aggregate)
        return cls(heat, image, explanation.method if title is None else title, signed, label)

    def plot(self, ax=None, *, alpha: float = 0.6, percentile: float = 99.5, cmap: str | None = None,
             colorbar: bool = False, overlay: bool = True, scale: float | None = None
             ) -> "HeatmapDisplay":
        """Draw the map (over the image, with transparency ``alpha``, when ``overlay``).

        Parameters
        ----------
        ax : matplotlib Axes, optional
        alpha : float in [0, 1], default 0.6
            Opacity of the strongest values over the image; it grows with sqrt(|value| / scale).
        percentile : float in (0, 100], default 99.5
            Which percentile of |map| gets the brightest colour (when ``scale`` is not given).
        cmap : str, optional
            Default ``"RdBu_r"`` for signed maps, ``"inferno"`` for magnitudes.
        colorbar : bool, default False
            A colour bar in the map's units, ticks at ``-scale, 0, scale`` (or ``0, scale``).
        overlay : bool, default True
        scale : float > 0, optional
            The value of the brightest colour; give one scale to several maps to compare them.
        """
        import matplotlib.pyplot as plt

        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        if scale is None:
            scale = map_scale(self.heatmap, percentile)
        elif not (isinstance(scale, (int, float, np.floating)) and np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number or None; got {scale!r}")
        if ax is None:
            _, ax = plt.subplots(figsize=(3.2 if colorbar else 3, 3), layout="constrained")
        signed = is_signed(self.heatmap) if self.signed is None else bool(self.signed)
        cmap = cmap or (DIVERGING if signed else SEQUENTIAL)
        self.background_ = None
        a = None
        if overlay and self.image is not None and self.image.shape[:2] == self.heatmap.shape:
            gray = self.image.mean(-1) if self.image.ndim == 3 else self.image
            self.background_ = ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
            # Transparency grows with |attribution| so the image shows where the map is quiet.
            a = alpha * np.clip(np.abs(self.heatmap) / scale, 0, 1) ** 0.5
        self.image_ = ax.imshow(self.heatmap, cmap=cmap, vmin=-scale if signed else 0.0, vmax=scale,
                                alpha=a, interpolation="nearest")
        self.signed_ = signed
        return finish_image(self, ax, self.image_, colorbar=colorbar, scale=scale, signed=signed,
                            label=self.label)


COLORBARS = ("column", "grid", "relative")


@dataclass(repr=False)
class GridDisplay(ShortRepr):
    """Several methods side by side (columns) for several samples (rows), the input first.

    Every column is drawn with one colour map (diverging when any of its maps has a negative
    value, sequential otherwise), whatever the sign of each single map. See :meth:`plot` for the
    colour bars and scales.

    Attributes set by :meth:`plot`: ``figure_``, ``axes_`` (rows x columns array), ``displays_``
    (``{(row, name): HeatmapDisplay}``), ``cmaps_`` (``{name: colour map}``), ``scales_``
    (``{name: scale per row}``), ``colorbars_`` (list of Colorbar).
    """

    explanations: dict
    images: Any = None
    indices: list = None
    aggregate: str = "sum"
    row_labels: list | None = None

    @classmethod
    def from_explanations(cls, explanations: Mapping[str, Any] | Sequence[Any], images: Any = None,
                          indices: Sequence[int] | None = None, aggregate: str = "sum",
                          row_labels: Sequence[str] | None = None) -> "GridDisplay":
        """See :func:`plot_grid` for the parameters."""
        if not isinstance(explanations, Mapping):
            explanations = {e.method: e for e in explanations}
        explanations = dict(explanations)
        if not explanations:
            raise ValueError("explanations must not be empty")
        first = next(iter(explanations.values()))
        n = len(first)
        for name, e in explanations.items():
            if len(e) != n:
                raise ValueError(f"explanations: {name!r} has {len(e)} samples, the first has {n}")
        if images is None:
            images = first.inputs
        if images is not None and len(images) != n:
            raise ValueError(f"images has {len(images)} rows but the explanations have {n} samples")
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        bad = [i for i in indices if not -n <= i < n]
        if bad:
            raise IndexError(f"indices {bad} out of range for {n} samples")
        if row_labels is not None:
            row_labels = [str(r) for r in row_labels]
            if len(row_labels) != len(indices):
                raise ValueError(f"row_labels has {len(row_labels)} labels for {len(indices)} rows")
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}; got {aggregate!r}")
        return cls(explanations, images, indices, aggregate, row_labels)

    def _groups(self, colorbar) -> list[list[str]]:
        names = list(self.explanations)
        if colorbar is None or colorbar is False or colorbar == "relative":
            return []
        if colorbar is True or colorbar == "column":
            return [[n] for n in names]
        if colorbar == "grid":
            return [names]
        if isinstance(colorbar, str) or not isinstance(colorbar, Sequence):
            raise ValueError(f"colorbar must be None, one of {COLORBARS} or a list of column-name "
                             f"groups; got {colorbar!r}")
        groups, seen = [], set()
        for g in colorbar:
            g = [g] if isinstance(g, str) else list(g)
            unknown = [c for c in g if c not in self.explanations]
            if unknown or seen & set(g) or not g:
                raise ValueError(f"colorbar groups must name each column ({names}) at most once; "
                                 f"got {colorbar!r}")
            seen |= set(g)
            groups.append(g)
        return groups

    def plot(self, *, percentile: float = 99.5, colorbar: Any = None,
             cmap: str | Mapping[str, str] | None = None, alpha: float = 0.6,
             overlay: bool = True, figsize: tuple[float, float] | None = None) -> "GridDisplay":
        """Draw the grid.

        Parameters
        ----------
        percentile : float in (0, 100], default 99.5
            The percentile of |values| that gets the brightest colour.
        colorbar : None, "column", "grid", "relative", True or list of lists of column names
            ``None`` (default): no colour bar, each map scaled to its own percentile.
            ``"column"`` (or ``True``): each column's maps share one scale (the percentile over
            all its rows) and one colour bar under the column, in the attribution's units.
            ``"grid"``: one scale and one colour bar for every map (columns in the same units).
            A list of groups, e.g. ``[["saliency", "smoothgrad"], ["integrated_gradients"]]``:
            the columns of a group share one colour map, one scale and one colour bar under
            them; columns in no group keep their own scale per map and get no bar.
            ``"relative"``: each map keeps its own scale and one colour bar for the grid reads
            "fraction of each map's scale" (one colour map for the whole grid).
        cmap : str or {column name: str}, optional
            The colour map of every column, or per column; default ``"RdBu_r"`` for columns with
            negative values, ``"inferno"`` otherwise.
        alpha, overlay : see :meth:`HeatmapDisplay.plot`.
        figsize : (width, height) in inches, optional
        """
        import matplotlib as mpl
        import matplotlib.pyplot as plt

        names = list(self.explanations)
        groups = self._groups(colorbar)
        group_of = {c: g for g in groups for c in g}
        rows = len(self.indices)
        built = {(r, name): _map_of(e, i, self.aggregate)
                 for name, e in self.explanations.items() for r, i in enumerate(self.indices)}

        def maps_of(cols):
            return [built[r, c][0] for c in cols for r in range(rows)]

        # one sign (so one colour map) per column, per group, or per grid ("relative")
        whole = [names] if colorbar == "relative" else groups
        signed = {c: is_signed(np.stack(maps_of([c]))) for c in names}
        for g in whole:
            s = any(signed[c] for c in g)
            signed.update({c: s for c in g})
        scales: dict[str, list[float]] = {}
        for c in names:
            if c in group_of:
                shared = map_scale(np.stack(maps_of(group_of[c])), percentile)
                scales[c] = [shared] * rows
            else:
                scales[c] = [map_scale(built[r, c][0], percentile) for r in range(rows)]

        def cmap_of(c):
            if isinstance(cmap, Mapping):
                if c in cmap:
                    return cmap[c]
                # a group shares the colour map named for any of its columns
                named = [cmap[o] for o in group_of.get(c, ()) if o in cmap]
                if named:
                    return named[0]
            elif cmap is not None:
                return cmap
            return DIVERGING if signed[c] else SEQUENTIAL

        has_images = self.images is not None
        cols = len(names) + has_images
        bars = bool(groups) or colorbar == "relative"
        if figsize is None:
            figsize = (1.7 * cols + 0.3, 1.8 * rows + (0.7 if bars else 0.2))
        fig, axes = plt.subplots(rows, cols, figsize=figsize, squeeze=False, layout="constrained")
        self.displays_, self.cmaps_, self.scales_, self.colorbars_ = {}, {}, scales, []
        for r, i in enumerate(self.indices):
            if has_images:
                ax = axes[r, 0]
                im = image_for_display(self.images[i])
                ax.imshow(im, cmap="gray" if im is not None and im.ndim == 2 else None)
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title("input", fontsize=8)
            first_ax = axes[r, 0]
            if self.row_labels is not None:
                first_ax.set_ylabel(self.row_labels[r], fontsize=7)
            for c, name in enumerate(names):
                heat, image, label = built[r, name]
                d = HeatmapDisplay(heat, image, name if r == 0 else "", signed[name], label)
                d.plot(ax=axes[r, c + has_images], alpha=alpha, cmap=cmap_of(name),
                       overlay=overlay, scale=scales[name][r])
                if r == 0:
                    d.ax_.set_title(name, fontsize=8)
                self.displays_[r, name] = d
                self.cmaps_[name] = d.image_.get_cmap().name
        for g in groups:
            cols_axes = [axes[r, names.index(c) + has_images] for c in g for r in range(rows)]
            d = self.displays_[0, g[0]]
            self.colorbars_.append(add_colorbar(
                fig, d.image_, cols_axes, scale=scales[g[0]][0], signed=signed[g[0]],
                label=d.label, location="bottom", shrink=0.9, aspect=12 * len(g), pad=0.01))
        if colorbar == "relative":
            s = signed[names[0]]
            sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(-1.0 if s else 0.0, 1.0),
                                       cmap=cmap_of(names[0]))
            self.colorbars_.append(add_colorbar(
                fig, sm, list(axes[:, has_images:].ravel()), scale=1.0, signed=s,
                label=f"value / the map's {percentile:g}th percentile of |value|",
                location="bottom", shrink=0.6, aspect=30, pad=0.01))
        self.figure_, self.axes_ = fig, axes
        return self


def plot_grid(explanations: Mapping[str, Any] | Sequence[Any], images: Any = None,
              indices: Sequence[int] | None = None, aggregate: str = "sum",
              row_labels: Sequence[str] | None = None, path: str | Path | None = None,
              percentile: float = 99.5, dpi: int = 110, *, colorbar: Any = None,
              cmap: str | Mapping[str, str] | None = None):
    """Several methods side by side (columns) for several images (rows).

    Parameters
    ----------
    explanations : mapping name -> Explanation, or a sequence of Explanations
        One column each (named by the key, or by ``method``); all of the same samples.
    images : array (n, C, H, W), optional
        Shown in the first column; defaults to the first explanation's inputs.
    indices : sequence of int, optional
        Which samples to show (default: all).
    aggregate : {"sum", "abs_sum", "max_abs", "l2", "mean"}, default "sum"
        How channels are reduced to one map.
    row_labels : sequence of str, optional
        One label per shown row, left of the row (may hold a line break), e.g.
        ``"true: circle\nexplained: square"``.
    path : str or Path, optional
        Save the figure there as PNG (at ``dpi``).
    percentile : float, default 99.5
        The percentile of |values| that gets the brightest colour.
    colorbar : None, "column", "grid", "relative", True, or list of lists of column names
        Colour bars and shared scales; see :meth:`GridDisplay.plot`. ``"column"``: one scale and
        one bar per column (in the attribution's units); a list of groups of column names: one
        per group (e.g. per family); ``"grid"``: one for all; ``"relative"``: per-map scales and
        one bar that says so.
    cmap : str or {column name: str}, optional
        One colour map for every column, or one per column (default: diverging where a
        column has negative values, sequential otherwise; always one per column).

    Returns
    -------
    matplotlib.figure.Figure
        (:class:`GridDisplay` gives the same picture with its artists.)
    """
    d = GridDisplay.from_explanations(explanations, images, indices, aggregate, row_labels)
    fig = d.plot(percentile=percentile, colorbar=colorbar, cmap=cmap).figure_
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
