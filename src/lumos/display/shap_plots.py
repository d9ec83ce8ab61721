"""Pictures of feature attributions: waterfall, bar, beeswarm and a force-style strip.

The displays of Lundberg & Lee's shap package (Lundberg et al. 2020, "From local explanations to
global understanding with explainable AI for trees"), rebuilt on scikit-learn's Display pattern:
``WaterfallDisplay.from_explanation(expl, index=0).plot(ax=...)`` returns the display, with the
axes (``ax_``), the figure (``figure_``), the artists, and the numbers that were drawn
(``values_``, ``labels_``). They work for any explanation with one value per feature: tables
(``feature_names``, ``meta["feature_values"]`` or ``inputs`` for the feature values) and texts
(``meta["tokens"]``). Sorting, the "other features" row and mean |value| are display-only; the
explanation's numbers are never changed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._common import ShortRepr, label_fontsize, new_axes, short_label

__all__ = ["WaterfallDisplay", "BarDisplay", "BeeswarmDisplay", "ForceDisplay",
           "waterfall", "bar", "beeswarm", "force"]

POSITIVE = "#ff0051"   # pushes the output up (shap's red)
NEGATIVE = "#008bfb"   # pushes it down (shap's blue)


# ----------------------------------------------------------------------------- helpers
def _check_max_display(max_display: Any) -> int:
    if isinstance(max_display, bool) or not isinstance(max_display, (int, np.integer)) \
            or max_display < 1:
        raise ValueError(f"max_display must be a positive int; got {max_display!r}")
    return int(max_display)


def _matrix(explanation) -> np.ndarray:
    v = np.asarray(explanation.values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(
            f"explanation values have shape {v.shape}; these displays need one value per feature, "
            "shape (n, features) (a table or a text). Use HeatmapDisplay or SegmentsDisplay for "
            "images."
        )
    return v


def _names(explanation, index: int | None, d: int) -> list[str]:
    tokens = explanation.meta.get("tokens")
    if tokens is not None and index is not None:
        return [str(t) for t in np.asarray(tokens)[index][:d]]
    if explanation.feature_names is not None and len(explanation.feature_names) == d:
        return list(explanation.feature_names)
    return [f"feature {j}" for j in range(d)]


def _n_features(explanation, index: int) -> int:
    n_tok = explanation.meta.get("n_tokens")
    d = np.asarray(explanation.values).shape[1]
    return int(np.asarray(n_tok)[index]) if n_tok is not None else d


def _feature_values(explanation, d: int) -> np.ndarray | None:
    """(n, d) feature values for labels and colouring (readable ones when the method kept them)."""
    fv = explanation.meta.get("feature_values")
    if fv is not None and np.ndim(fv) == 2 and np.shape(fv)[1] == d:
        return np.asarray(fv)
    x = explanation.inputs
    if x is not None and np.ndim(x) == 2 and np.shape(x)[1] == d:
        return np.asarray(x)
    return None


def _fmt(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.3g}"


def _row(explanation, index: int):
    v = _matrix(explanation)
    if not -len(v) <= index < len(v):
        raise IndexError(f"index {index} out of range for an explanation of {len(v)} samples")
    d = _n_features(explanation, index)
    vals = v[index, :d]
    names = _names(explanation, index, d)
    fv = _feature_values(explanation, v.shape[1])
    data = fv[index, :d] if fv is not None else None
    base = None if explanation.baseline_output is None else float(np.ravel(explanation.baseline_output)[index])
    out = None if explanation.output is None else float(np.ravel(explanation.output)[index])
    return vals, names, data, base, out


def _top(values: np.ndarray, max_display: int):
    """Indices of the shown features (largest |value| first) and the rest."""
    order = np.argsort(-np.abs(values), kind="stable")
    if len(order) <= max_display:
        return order, order[:0]
    return order[:max_display - 1], order[max_display - 1:]


def _ax(ax, figsize):
    return new_axes(ax, figsize)


def _value_column(ax, y, values, fmt, colors, fontsize):
    """The values as a column right of the axes, one per row: never over a bar or a tick label,
    and inside the layout (the layout engine makes room for it)."""
    from matplotlib.transforms import offset_copy

    trans = offset_copy(ax.get_yaxis_transform(), fig=ax.figure, x=4, units="points")
    return [ax.text(1.0, yi, fmt(v), transform=trans, ha="left", va="center", fontsize=fontsize,
                    color=c, clip_on=False) for yi, v, c in zip(y, values, colors)]


def _sparse_locator():
    """Few x ticks (labels like "-1.2e+04" need room)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=4, min_n_ticks=2)


def _tick_labels(ax, labels, rows):
    """Shortened labels (two lines at most) and a font size at which ``rows`` of them fit."""
    short = [short_label(lab) for lab in labels]
    lines = max((s.count("\n") + 1 for s in short), default=1)
    return short, label_fontsize(ax, rows, lines)


def _finish(display, ax):
    """The common end of every plot here: title, open frame, and the ``ax_``/``figure_`` attributes."""
    if display.title:
        ax.set_title(display.title, fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    display.ax_, display.figure_ = ax, ax.figure
    return display


# ----------------------------------------------------------------------------- waterfall
@dataclass(repr=False)
class WaterfallDisplay(ShortRepr):
    """How one sample's output is built from the base value, feature by feature.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``bars_`` (one Rectangle per row, in
    the order of ``values_``), ``texts_``.
    """

    values_: np.ndarray          # plotted contributions, largest |value| first ("other" last)
    labels_: list[str]
    base_value_: float
    output_: float
    title: str = ""

    @classmethod
    def from_explanation(cls, explanation, index: int = 0, max_display: int = 10,
                         title: str | None = None) -> "WaterfallDisplay":
        """Rows for sample ``index``: the ``max_display - 1`` largest |values| and the rest summed."""
        max_display = _check_max_display(max_display)
        vals, names, data, base, out = _row(explanation, index)
        if base is None:
            raise ValueError("a waterfall starts at the base value: the explanation has no "
                             "baseline_output (use BarDisplay)")
        shown, rest = _top(vals, max_display)
        labels = [names[j] if data is None else f"{names[j]} = {_fmt(data[j])}" for j in shown]
        values = vals[shown]
        if len(rest):
            values = np.r_[values, vals[rest].sum()]
            labels.append(f"{len(rest)} other features")
        output = out if out is not None else base + float(vals.sum())
        return cls(values, labels, base, output, explanation.method if title is None else title)

    def plot(self, ax=None, *, show_values: bool = True) -> "WaterfallDisplay":
        """Draw the waterfall: bars from the base value (bottom) to the output (top).

        Each contribution is written in a column right of the axes, on its row; labels longer
        than 32 characters are wrapped (two lines at most); the figure gets constrained layout
        when it has no layout engine (see :func:`lumos.display._common.ensure_layout`).
        """
        k = len(self.values_)
        ax = _ax(ax, (6.5, 0.45 * k + 1.5))
        # bottom row is the last value; cumulative sums start at the base value
        order = np.arange(k)[::-1]
        starts = self.base_value_ + np.r_[0.0, np.cumsum(self.values_[order])[:-1]]
        y = np.arange(k)
        colors = [POSITIVE if self.values_[i] >= 0 else NEGATIVE for i in order]
        bars = ax.barh(y, self.values_[order], left=starts, color=colors, height=0.6)
        self.bars_ = list(bars.patches)[::-1]          # back to the order of values_
        labels, size = _tick_labels(ax, [self.labels_[i] for i in order], k)
        self.texts_ = []
        if show_values:
            self.texts_ = _value_column(ax, y, self.values_[order], lambda v: f"{v:+.3g}", colors,
                                        size)[::-1]
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=size)
        ax.set_ylim(-0.6, k - 0.4)
        ax.axvline(self.base_value_, color="0.5", lw=0.8, ls="--")
        ax.axvline(self.output_, color="0.2", lw=0.8)
        ends = np.r_[starts, starts + self.values_[order], self.base_value_, self.output_]
        lo, hi = float(ends.min()), float(ends.max())
        pad = 0.05 * ((hi - lo) or max(abs(hi), 1.0))
        ax.set_xlim(lo - pad, hi + pad)
        ax.xaxis.set_major_locator(_sparse_locator())
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel(f"E[f(X)] = {self.base_value_:.3g}  →  f(x) = {self.output_:.3g}",
                      fontsize=9)
        return _finish(self, ax)


# ----------------------------------------------------------------------------- bar
@dataclass(repr=False)
class BarDisplay(ShortRepr):
    """Attributions as horizontal bars: of one sample, or mean |value| over all samples.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``bars_`` (Rectangles in the order of
    ``values_``), ``texts_``.
    """

    values_: np.ndarray
    labels_: list[str]
    title: str = ""
    xlabel: str = "attribution"

    @classmethod
    def from_explanation(cls, explanation, index: int | None = 0, max_display: int = 10,
                         title: str | None = None) -> "BarDisplay":
        """``index=None`` shows the mean |value| of each feature over all samples."""
        max_display = _check_max_display(max_display)
        if index is None:
            v = _matrix(explanation)
            vals = np.abs(v).mean(0)
            names = _names(explanation, None, v.shape[1])
            xlabel = "mean |attribution|"
        else:
            vals, names, data, _, _ = _row(explanation, index)
            if data is not None:
                names = [f"{n} = {_fmt(x)}" for n, x in zip(names, data)]
            xlabel = "attribution"
        shown, rest = _top(vals, max_display)
        values = vals[shown]
        labels = [names[j] for j in shown]
        if len(rest):
            values = np.r_[values, vals[rest].sum()]
            labels.append(f"sum of {len(rest)} other features")
        return cls(values, labels, explanation.method if title is None else title, xlabel)

    def plot(self, ax=None, *, show_values: bool = True, color: str | None = None) -> "BarDisplay":
        """Draw the bars, largest at the top; the values in a column right of the axes."""
        k = len(self.values_)
        ax = _ax(ax, (6.5, 0.4 * k + 1.2))
        y = np.arange(k)[::-1]
        colors = [color] * k if color else [POSITIVE if v >= 0 else NEGATIVE for v in self.values_]
        bars = ax.barh(y, self.values_, color=colors, height=0.6)
        self.bars_ = list(bars.patches)
        labels, size = _tick_labels(ax, self.labels_, k)
        self.texts_ = []
        if show_values:
            signed = bool((self.values_ < 0).any())
            self.texts_ = _value_column(ax, y, self.values_,
                                        (lambda v: f"{v:+.3g}") if signed else (lambda v: f"{v:.3g}"),
                                        colors, size)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=size)
        ax.set_ylim(-0.6, k - 0.4)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.xaxis.set_major_locator(_sparse_locator())
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel(self.xlabel, fontsize=9)
        return _finish(self, ax)


# ----------------------------------------------------------------------------- beeswarm
def _swarm_offsets(x: np.ndarray, n_bins: int = 100, width: float = 0.4) -> np.ndarray:
    """Deterministic vertical offsets that spread points sharing an x-bin (no randomness)."""
    n = len(x)
    if n == 0:
        return np.zeros(0)
    lo, hi = float(np.min(x)), float(np.max(x))
    bins = np.zeros(n, dtype=np.int64) if hi == lo else \
        np.minimum(((x - lo) / (hi - lo) * n_bins).astype(np.int64), n_bins - 1)
    order = np.lexsort((np.arange(n), bins))
    b = bins[order]
    start = np.r_[0, np.flatnonzero(np.diff(b)) + 1]
    rank = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    # 0, +1, -1, +2, -2, ... within each bin
    off = np.where(rank % 2 == 1, (rank + 1) // 2, -(rank // 2)).astype(np.float64)
    most = max(1.0, float(np.abs(off).max()))
    out = np.empty(n)
    out[order] = off / most * width
    return out


@dataclass(repr=False)
class BeeswarmDisplay(ShortRepr):
    """A summary over many samples: per feature, one dot per sample at its attribution, coloured
    by the feature's value (low blue, high red).

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``collections_`` (one PathCollection per
    shown feature, top first), ``colorbar_``.
    """

    values_: np.ndarray          # (n, k) attributions of the shown features, top first
    colors_: np.ndarray | None   # (n, k) feature values scaled to [0, 1] (NaN: not numeric)
    labels_: list[str]
    title: str = ""

    @classmethod
    def from_explanation(cls, explanation, max_display: int = 10,
                         title: str | None = None) -> "BeeswarmDisplay":
        """Features ordered by mean |value|; the rest summed into one row."""
        max_display = _check_max_display(max_display)
        v = _matrix(explanation)
        names = _names(explanation, None, v.shape[1])
        shown, rest = _top(np.abs(v).mean(0), max_display)
        values = v[:, shown]
        labels = [names[j] for j in shown]
        fv = _feature_values(explanation, v.shape[1])
        colors = None
        if fv is not None:
            colors = np.full(values.shape, np.nan)
            for c, j in enumerate(shown):
                try:
                    col = np.asarray(fv[:, j], dtype=np.float64)
                except (TypeError, ValueError):
                    continue                   # a string column: drawn grey
                ok = np.isfinite(col)
                if ok.any():
                    lo, hi = np.percentile(col[ok], [5, 95])
                    if hi <= lo:
                        lo, hi = col[ok].min(), col[ok].max()
                    colors[:, c] = np.clip((col - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
        if len(rest):
            values = np.c_[values, v[:, rest].sum(1)]
            labels.append(f"sum of {len(rest)} other features")
            if colors is not None:
                colors = np.c_[colors, np.full(len(v), np.nan)]
        return cls(values, colors, labels, explanation.method if title is None else title)

    def plot(self, ax=None, *, cmap: str = "coolwarm", size: float = 10.0,
             colorbar: bool = True) -> "BeeswarmDisplay":
        """Draw one swarm per feature, the most important at the top."""
        import matplotlib as mpl

        k = len(self.labels_)
        ax = _ax(ax, (6.5, 0.45 * k + 1.5))
        cm = mpl.colormaps[cmap]
        self.collections_ = []
        for c in range(k):
            x = self.values_[:, c]
            y = (k - 1 - c) + _swarm_offsets(x)
            if self.colors_ is None or np.isnan(self.colors_[:, c]).all():
                col = np.tile(np.array(mpl.colors.to_rgba("0.6")), (len(x), 1))
            else:
                t = self.colors_[:, c]
                col = np.where(np.isnan(t)[:, None], mpl.colors.to_rgba("0.6"),
                               cm(np.nan_to_num(t, nan=0.5)))
            self.collections_.append(ax.scatter(x, y, c=col, s=size, linewidths=0))
        labels, fontsize = _tick_labels(ax, self.labels_, k)
        ax.set_yticks(np.arange(k)[::-1])
        ax.set_yticklabels(labels, fontsize=fontsize)
        ax.set_ylim(-0.6, k - 0.4)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.xaxis.set_major_locator(_sparse_locator())
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("attribution (impact on the output)", fontsize=9)
        self.colorbar_ = None
        if colorbar and self.colors_ is not None:
            sm = mpl.cm.ScalarMappable(cmap=cm, norm=mpl.colors.Normalize(0, 1))
            self.colorbar_ = ax.figure.colorbar(sm, ax=ax, fraction=0.04, pad=0.02, ticks=[0, 1])
            self.colorbar_.ax.set_yticklabels(["low", "high"], fontsize=7)
            self.colorbar_.set_label("feature value", fontsize=8)
        return _finish(self, ax)


# ----------------------------------------------------------------------------- force strip
def _lane_labels_class():
    """The artist class below (built on first use: matplotlib is imported only when drawing)."""
    global _LaneLabels
    if _LaneLabels is not None:
        return _LaneLabels
    from matplotlib.artist import Artist
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox, IdentityTransform

    class LaneLabels(Artist):
        """Labels in lanes under the axes, each centred under its x (data units, kept inside the
        axes' width), placed at draw time (so for the final layout, size and dpi): by priority,
        each in the first lane where it overlaps no label already placed; a label that finds no
        lane is hidden."""

        def __init__(self, ax, xs, texts, *, n_lanes: int = 3, fontsize: float = 7.0,
                     weights=None, colors=None):
            super().__init__()
            self._ax = ax
            self._xs = [float(x) for x in xs]
            self._n_lanes = n_lanes
            self._fontsize = fontsize
            self.texts = [Text(0, 0, t, fontsize=fontsize, ha="left", va="top",
                               fontweight=(weights or ["normal"] * len(texts))[i],
                               color=(colors or ["0.1"] * len(texts))[i])
                          for i, t in enumerate(texts)]
            for t in self.texts:
                t.set_transform(IdentityTransform())
                t.set_clip_on(False)
                t.set_figure(ax.figure)

        def get_children(self):
            return list(self.texts)

        def _place(self, renderer):
            box = self._ax.bbox
            pt = self._ax.figure.dpi / 72.0
            gap, lane_h = 3.0 * pt, 1.35 * self._fontsize * pt
            lanes: list[list[tuple[float, float]]] = [[] for _ in range(self._n_lanes)]
            for t, x in zip(self.texts, self._xs):        # texts come in order of priority
                t.set_visible(True)
                t.set_position((0.0, 0.0))
                w = t.get_window_extent(renderer).width
                centre = self._ax.transData.transform((x, 0.0))[0]
                left = min(max(centre - w / 2, box.x0), box.x1 - w)
                lane = next((k for k, used in enumerate(lanes)
                             if w <= box.width and all(left + w + gap <= a or left >= b + gap
                                                       for a, b in used)), None)
                if lane is None:
                    t.set_visible(False)
                    continue
                lanes[lane].append((left, left + w))
                t.set_position((left, box.y0 - gap - lane * lane_h))

        def draw(self, renderer):
            if not self.get_visible():
                return
            self._place(renderer)
            for t in self.texts:
                if t.get_visible():
                    t.draw(renderer)
            self.stale = False

        def get_window_extent(self, renderer=None):
            if renderer is None:
                renderer = self._ax.figure.canvas.get_renderer()
            self._place(renderer)
            boxes = [t.get_window_extent(renderer) for t in self.texts if t.get_visible()]
            return Bbox.union(boxes) if boxes else Bbox.null()

    _LaneLabels = LaneLabels
    return LaneLabels


_LaneLabels = None


@dataclass(repr=False)
class ForceDisplay(ShortRepr):
    """A force-style strip: the features pushing the output up (red, left of ``f(x)``) and down
    (blue, right of it), stacked on one axis from the base value to the output.

    Below the strip, ``f(x)``, the base value and the features' labels ("name = value") stand
    in up to three lanes, largest contributions first; a label that would overlap another is
    left out (at draw time, for the final size of the picture). The x axis is on top.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``patches_`` (one Rectangle per feature,
    in the order of ``values_``), ``texts_`` (the label texts: ``f(x)``, base, then features;
    those hidden at draw time have ``get_visible() == False``), ``labels_artist_``.
    """

    values_: np.ndarray
    labels_: list[str]
    base_value_: float
    output_: float
    title: str = ""
    min_label_fraction: float = 0.02
    intervals_: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def from_explanation(cls, explanation, index: int = 0, title: str | None = None
                         ) -> "ForceDisplay":
        """Every feature of sample ``index`` (labels are drawn for the large ones only)."""
        vals, names, data, base, out = _row(explanation, index)
        if base is None:
            raise ValueError("a force strip needs the base value: the explanation has no "
                             "baseline_output")
        labels = list(names) if data is None else [f"{n} = {_fmt(x)}" for n, x in zip(names, data)]
        output = out if out is not None else base + float(vals.sum())
        order = np.argsort(-np.abs(vals), kind="stable")
        return cls(vals[order], [labels[j] for j in order], base, output,
                   explanation.method if title is None else title)

    def plot(self, ax=None, *, height: float = 0.5, n_lanes: int = 3) -> "ForceDisplay":
        """Draw the strip; positive pushes end at ``f(x)`` from the left, negative from the right."""
        from matplotlib.patches import Rectangle

        ax = _ax(ax, (8, 1.9))
        pos = [i for i, v in enumerate(self.values_) if v > 0]
        neg = [i for i, v in enumerate(self.values_) if v < 0]
        # the base value, in a sum that closes exactly at the output
        left_end = self.output_ - sum(self.values_[i] for i in pos)
        self.intervals_ = [(0.0, 0.0)] * len(self.values_)
        self.patches_ = [None] * len(self.values_)
        total = float(np.abs(self.values_).sum()) or 1.0
        x = left_end
        for i in reversed(pos):                          # smallest far left, largest next to f(x)
            self.intervals_[i] = (x, x + self.values_[i])
            x += self.values_[i]
        x = self.output_
        for i in neg:                                    # largest next to f(x)
            self.intervals_[i] = (x, x - self.values_[i])
            x -= self.values_[i]
        xs = [self.output_, self.base_value_]
        texts = [f"f(x) = {self.output_:.3g}", f"base {self.base_value_:.3g}"]
        weights, colors = ["bold", "normal"], ["0.1", "0.4"]
        for i, (a, b) in enumerate(self.intervals_):
            if a == b:
                continue
            color = POSITIVE if self.values_[i] > 0 else NEGATIVE
            r = Rectangle((a, -height / 2), b - a, height, facecolor=color, edgecolor="white",
                          lw=0.8)
            ax.add_patch(r)
            self.patches_[i] = r
            if abs(self.values_[i]) >= self.min_label_fraction * total:
                xs.append((a + b) / 2)
                texts.append(short_label(self.labels_[i], width=40, lines=1))
                weights.append("normal")
                colors.append(color)
        lanes = _lane_labels_class()(ax, xs, texts, n_lanes=n_lanes, weights=weights,
                                     colors=colors)
        ax.add_artist(lanes)
        lanes.set_clip_on(False)                          # add_artist clips to the axes
        self.labels_artist_ = lanes
        self.texts_ = lanes.texts
        lo = min([self.base_value_, self.output_] + [a for a, _ in self.intervals_])
        hi = max([self.base_value_, self.output_] + [b for _, b in self.intervals_])
        pad = 0.03 * ((hi - lo) or max(abs(hi), 1.0))
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(-height / 2 - 0.05, height / 2 + 0.05)
        ax.axvline(self.base_value_, color="0.5", lw=0.8, ls="--")
        ax.axvline(self.output_, color="0.1", lw=1.2)
        ax.xaxis.tick_top()
        ax.xaxis.set_major_locator(_sparse_locator())
        ax.tick_params(axis="x", labelsize=7)
        ax.set_yticks([])
        for side in ("bottom", "right", "left"):
            ax.spines[side].set_visible(False)
        if self.title:
            ax.set_title(self.title, fontsize=9)
        self.ax_, self.figure_ = ax, ax.figure
        return self


# ----------------------------------------------------------------------------- functions
def waterfall(explanation, index: int = 0, max_display: int = 10, ax=None, **kwargs
              ) -> WaterfallDisplay:
    """Waterfall of sample ``index``; see :class:`WaterfallDisplay`."""
    return WaterfallDisplay.from_explanation(explanation, index, max_display).plot(ax=ax, **kwargs)


def bar(explanation, index: int | None = None, max_display: int = 10, ax=None, **kwargs
        ) -> BarDisplay:
    """Bars of sample ``index``, or mean |value| over samples (``index=None``, the default)."""
    return BarDisplay.from_explanation(explanation, index, max_display).plot(ax=ax, **kwargs)


def beeswarm(explanation, max_display: int = 10, ax=None, **kwargs) -> BeeswarmDisplay:
    """Beeswarm summary over all samples; see :class:`BeeswarmDisplay`."""
    return BeeswarmDisplay.from_explanation(explanation, max_display).plot(ax=ax, **kwargs)


def force(explanation, index: int = 0, ax=None, **kwargs) -> ForceDisplay:
    """Force-style strip of sample ``index``; see :class:`ForceDisplay`."""
    return ForceDisplay.from_explanation(explanation, index).plot(ax=ax, **kwargs)
