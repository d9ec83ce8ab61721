"""Pictures of global effects: ICE with partial dependence, ALE with its band and a rug of the
data, 2-D effects as contour maps, importance as bars with their spread, interaction strength.

Follows scikit-learn's Display pattern: ``XDisplay.from_result(result).plot(ax=...)`` returns the
display with its artists (``ax_``, ``figure_`` and the drawn lines/patches). The numbers are
drawn as computed; only the choice of which ICE curves to show (``max_ice``) happens here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import ShortRepr

__all__ = ["PartialDependenceDisplay", "ALEDisplay", "ImportanceDisplay", "InteractionDisplay"]

_LINE = "#1f4e79"
_ICE = "#7fa7cf"
_BAND = "#9ecae1"


def _axes(ax, figsize=(4.2, 3.2)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _deciles_rug(ax, values: np.ndarray):
    """scikit-learn's decile ticks along the bottom of the axes."""
    from matplotlib import transforms

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None
    dec = np.percentile(v, np.arange(10, 100, 10))
    trans = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    return ax.vlines(dec, 0, 0.05, transform=trans, color="k", linewidth=1)


def _data_rug(ax, values: np.ndarray, max_points: int = 2000):
    """Every data value (up to ``max_points``, a fixed evenly spaced selection) as a tick."""
    from matplotlib import transforms

    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    if len(v) > max_points:
        v = v[np.linspace(0, len(v) - 1, max_points).astype(int)]
    trans = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    return ax.vlines(v, 0, 0.04, transform=trans, color="k", linewidth=0.5, alpha=0.35)


def _finish_2d(display, ax, label: str) -> None:
    """The end of a 2-D effect map: its colour bar (labelled) and the two features' names."""
    display.colorbar_ = ax.figure.colorbar(display.contour_, ax=ax, fraction=0.046)
    display.colorbar_.set_label(label, fontsize=7)
    ax.set_xlabel(display.result.feature_names[0])
    ax.set_ylabel(display.result.feature_names[1])


def _level_labels(levels) -> list[str]:
    return [str(v) for v in levels]


@dataclass(repr=False)
class PartialDependenceDisplay(ShortRepr):
    """ICE curves with the partial dependence over them; bars per level for a categorical
    feature; a contour map for a pair.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``line_`` (the average),
    ``ice_lines_``, ``rug_``, ``contour_``, ``bars_``, ``colorbar_``.
    """

    result: Any

    @classmethod
    def from_result(cls, result) -> "PartialDependenceDisplay":
        return cls(result)

    def plot(self, ax=None, *, kind: str | None = None, centred: bool = False, derivative: bool = False,
             max_ice: int = 100, rug: bool = True, cmap: str = "viridis", levels: int = 12,
             title: str | None = None) -> "PartialDependenceDisplay":
        """Draw the partial dependence.

        Parameters
        ----------
        ax : matplotlib Axes, optional
        kind : {"both", "average", "individual"}, optional
            Default: "both" when ICE curves were kept, else "average".
        centred : bool, default False
            Centred ICE: every curve minus its value at the anchor.
        derivative : bool, default False
            Derivative ICE (numeric feature).
        max_ice : int, default 100
            At most this many ICE curves are drawn (an evenly spaced selection of the rows).
        rug : bool, default True
            Deciles of the data along the bottom (numeric feature).
        """
        r = self.result
        ax = _axes(ax)
        self.ice_lines_, self.line_, self.rug_, self.contour_, self.bars_, self.colorbar_ = [], None, None, None, None, None
        if kind is None:
            kind = "both" if r.ice is not None else "average"
        if kind not in ("both", "average", "individual"):
            raise ValueError(f"kind must be 'both', 'average' or 'individual'; got {kind!r}")
        if kind != "average" and r.ice is None:
            raise ValueError("this result holds no ICE curves; plot kind='average'")
        if len(r.feature_names) == 2:
            self._plot_2d(ax, cmap, levels)
        else:
            self._plot_1d(ax, kind, centred, derivative, max_ice, rug)
        ax.set_title(title if title is not None else f"partial dependence: {r.target}", fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _curves(self, centred: bool, derivative: bool):
        r = self.result
        if derivative:
            ice = r.derivative_ice() if r.ice is not None else None
            return ice, (ice.mean(0) if ice is not None else r.derivative_average()), "derivative ICE"
        if centred:
            ice = r.centred_ice()
            return ice, ice.mean(0), f"centred ICE (anchor {r.anchor:.3g})" if not r.categorical[0] \
                else f"centred ICE (anchor {r.anchor})"
        return r.ice, r.average, "partial dependence"

    def _plot_1d(self, ax, kind, centred, derivative, max_ice, rug):
        r = self.result
        ice, avg, label = self._curves(centred, derivative)
        cat = r.categorical[0]
        x = np.arange(len(r.grid[0])) if cat else np.asarray(r.grid[0], dtype=np.float64)
        if kind != "average" and ice is not None:
            rows = np.linspace(0, len(ice) - 1, min(max_ice, len(ice))).astype(int)
            alpha = float(np.clip(8.0 / len(rows), 0.08, 0.5))
            self.ice_lines_ = ax.plot(x, ice[rows].T, color=_ICE, linewidth=0.6, alpha=alpha,
                                      marker="." if cat else None)
        if kind != "individual":
            if cat:
                self.bars_ = ax.bar(x, avg, color=_LINE, alpha=0.35, width=0.6)
                (self.line_,) = ax.plot(x, avg, "o", color=_LINE, label="average")
            else:
                (self.line_,) = ax.plot(x, avg, color=_LINE, linewidth=2.2, label="average")
        if cat:
            ax.set_xticks(x)
            ax.set_xticklabels(_level_labels(r.grid[0]), rotation=30 if len(x) > 4 else 0, fontsize=7)
        elif rug:
            self.rug_ = _deciles_rug(ax, r.feature_values[0])
        ax.set_xlabel(r.feature_names[0])
        ax.set_ylabel(label, fontsize=8)

    def _plot_2d(self, ax, cmap, levels):
        r = self.result
        Z = np.asarray(r.average, dtype=np.float64)
        if any(r.categorical):
            xs = [np.arange(len(g)) if c else np.asarray(g, float) for g, c in zip(r.grid, r.categorical)]
            self.contour_ = ax.pcolormesh(xs[0], xs[1], Z.T, cmap=cmap, shading="nearest")
            for axis, g, c in (("x", r.grid[0], r.categorical[0]), ("y", r.grid[1], r.categorical[1])):
                if c:
                    getattr(ax, f"set_{axis}ticks")(np.arange(len(g)))
                    getattr(ax, f"set_{axis}ticklabels")(_level_labels(g), fontsize=7)
        else:
            X1, X2 = np.meshgrid(r.grid[0], r.grid[1], indexing="ij")
            self.contour_ = ax.contourf(X1, X2, Z, levels=levels, cmap=cmap)
            lines = ax.contour(X1, X2, Z, levels=levels, colors="k", linewidths=0.4, alpha=0.6)
            ax.clabel(lines, inline=True, fontsize=6, fmt="%.3g")
        _finish_2d(self, ax, "partial dependence")


@dataclass(repr=False)
class ALEDisplay(ShortRepr):
    """ALE with its bootstrap band and a rug of the data; points with error bars per level; a
    contour map with the data for a pair.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``line_``, ``band_``, ``rug_``,
    ``errorbar_``, ``contour_``, ``colorbar_``, ``points_``.
    """

    result: Any

    @classmethod
    def from_result(cls, result) -> "ALEDisplay":
        return cls(result)

    def plot(self, ax=None, *, band: bool = True, rug: bool = True, points: bool = True, cmap: str = "RdBu_r",
             levels: int = 12, title: str | None = None) -> "ALEDisplay":
        """Draw the ALE. ``band``: the bootstrap band; ``rug``: the data values (first order);
        ``points``: the data over the contour map (second order)."""
        r = self.result
        ax = _axes(ax)
        self.line_ = self.band_ = self.rug_ = self.errorbar_ = self.contour_ = self.colorbar_ = self.points_ = None
        if r.kind == "second-order":
            self._plot_2d(ax, points, cmap, levels)
        elif r.kind == "categorical":
            x = np.arange(len(r.grid[0]))
            yerr = None
            if band and r.lower is not None:
                yerr = np.vstack([r.values - r.lower, r.upper - r.values])
            self.errorbar_ = ax.errorbar(x, r.values, yerr=yerr, fmt="o", color=_LINE, capsize=3)
            ax.set_xticks(x)
            labels = [f"{v}\n(n={c})" for v, c in zip(_level_labels(r.grid[0]), r.counts)]
            ax.set_xticklabels(labels, fontsize=7, rotation=30 if len(x) > 4 else 0)
            ax.axhline(0, color="0.6", linewidth=0.8, linestyle="--")
        else:
            e = np.asarray(r.grid[0], dtype=np.float64)
            if band and r.lower is not None:
                self.band_ = ax.fill_between(e, r.lower, r.upper, color=_BAND, alpha=0.6,
                                             label=f"{r.confidence:.0%} bootstrap band", linewidth=0)
            (self.line_,) = ax.plot(e, r.values, color=_LINE, linewidth=2, label="ALE")
            ax.axhline(0, color="0.6", linewidth=0.8, linestyle="--")
            if rug:
                self.rug_ = _data_rug(ax, r.feature_values[0])
            if self.band_ is not None:
                ax.legend(fontsize=7, frameon=False)
        if r.kind != "second-order":
            ax.set_xlabel(r.feature_names[0])
            ax.set_ylabel("accumulated local effect", fontsize=8)
        ax.set_title(title if title is not None else f"ALE: {r.target}", fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _plot_2d(self, ax, points, cmap, levels):
        r = self.result
        X1, X2 = np.meshgrid(r.grid[0], r.grid[1], indexing="ij")
        Z = np.asarray(r.values, dtype=np.float64)
        lim = float(np.abs(Z).max()) or 1.0
        self.contour_ = ax.contourf(X1, X2, Z, levels=np.linspace(-lim, lim, levels + 1), cmap=cmap)
        ax.contour(X1, X2, Z, levels=np.linspace(-lim, lim, levels + 1), colors="k", linewidths=0.3, alpha=0.5)
        if points:
            a, b = r.feature_values
            keep = np.linspace(0, len(a) - 1, min(len(a), 1500)).astype(int)
            self.points_ = ax.scatter(a[keep], b[keep], s=2, color="k", alpha=0.3)
        _finish_2d(self, ax, "second-order ALE")


@dataclass(repr=False)
class ImportanceDisplay(ShortRepr):
    """Permutation importance as horizontal bars (mean over repeats) with error bars (standard
    deviation) and each repeat as a dot.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``bars_``, ``points_``.
    """

    result: Any

    @classmethod
    def from_result(cls, result) -> "ImportanceDisplay":
        return cls(result)

    def plot(self, ax=None, *, max_features: int = 20, repeats: bool = True,
             title: str | None = None) -> "ImportanceDisplay":
        r = self.result
        order = np.argsort(-r.mean, kind="stable")[:max_features]
        ax = _axes(ax, figsize=(4.5, 0.3 * len(order) + 1.2))
        y = np.arange(len(order))[::-1]
        self.bars_ = ax.barh(y, r.mean[order], xerr=r.std[order], color=_BAND, edgecolor=_LINE,
                             capsize=2, error_kw={"elinewidth": 0.8})
        self.points_ = None
        if repeats and r.n_repeats > 1:
            yy = np.repeat(y, r.n_repeats)
            self.points_ = ax.scatter(r.importances[order].ravel(), yy, s=6, color=_LINE, alpha=0.6, zorder=3)
        ax.set_yticks(y)
        ax.set_yticklabels([r.feature_names[i] for i in order], fontsize=7)
        ax.axvline(0, color="0.5", linewidth=0.8)
        change = "drop" if r.greater_is_better else "increase"
        ax.set_xlabel(f"{change} in {r.metric} when permuted ({r.n_repeats} repeats)", fontsize=8)
        ax.set_title(title if title is not None else "permutation importance", fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self


@dataclass(repr=False)
class InteractionDisplay(ShortRepr):
    """Friedman's H²: per feature (total), per pair (the strongest), or the pairwise matrix.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``bars_``, ``image_``, ``colorbar_``.
    """

    result: Any

    @classmethod
    def from_result(cls, result) -> "InteractionDisplay":
        return cls(result)

    def plot(self, ax=None, *, kind: str | None = None, max_bars: int = 15, cmap: str = "Purples",
             title: str | None = None) -> "InteractionDisplay":
        """``kind``: "total", "pairwise" or "matrix" (default: total when computed, else pairwise)."""
        r = self.result
        if kind is None:
            kind = "total" if r.h2_total is not None else "pairwise"
        self.bars_ = self.image_ = self.colorbar_ = None
        if kind == "matrix":
            ax = _axes(ax, figsize=(4.2, 3.6))
            M = r.matrix()
            self.image_ = ax.imshow(M, cmap=cmap, vmin=0)
            F = len(r.feature_names)
            ax.set_xticks(range(F))
            ax.set_yticks(range(F))
            ax.set_xticklabels(r.feature_names, rotation=45, ha="right", fontsize=7)
            ax.set_yticklabels(r.feature_names, fontsize=7)
            for i in range(F):
                for j in range(F):
                    if np.isfinite(M[i, j]):
                        ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6)
            self.colorbar_ = ax.figure.colorbar(self.image_, ax=ax, fraction=0.046)
            self.colorbar_.set_label("pairwise H²", fontsize=7)
        elif kind in ("total", "pairwise"):
            if kind == "total":
                if r.h2_total is None:
                    raise ValueError("this result holds no total statistics (computed with total=False)")
                vals, labels = r.h2_total, list(r.feature_names)
            else:
                vals, labels = r.h2_pairwise, [f"{a} × {b}" for a, b in r.pairs]
            shown = np.where(np.isfinite(vals), vals, -np.inf)
            order = np.argsort(-shown, kind="stable")[:max_bars]
            ax = _axes(ax, figsize=(4.5, 0.3 * len(order) + 1.2))
            y = np.arange(len(order))[::-1]
            self.bars_ = ax.barh(y, np.nan_to_num(vals[order]), color="#bcbddc", edgecolor="#54278f")
            ax.set_yticks(y)
            ax.set_yticklabels([labels[i] for i in order], fontsize=7)
            ax.set_xlabel(f"{'total' if kind == 'total' else 'pairwise'} H² (share of variance from interactions)",
                          fontsize=8)
        else:
            raise ValueError(f"kind must be 'total', 'pairwise' or 'matrix'; got {kind!r}")
        ax.set_title(title if title is not None else f"Friedman's H ({r.n_rows} rows)", fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self
