"""Pictures of Shapley interaction values: a heat map of the mean |interaction| matrix and a
dependence plot coloured by the strongest interacting feature.

For explanations whose ``values`` have shape (n, M, M) (``exact_shapley_interactions``,
``tree_shap_interactions``). As shap's interaction summary and ``dependence_plot`` with
``interaction_index="auto"`` (Lundberg et al. 2020, "From local explanations to global
understanding with explainable AI for trees"), on scikit-learn's Display pattern:
``InteractionHeatmapDisplay.from_explanation(expl).plot(ax=...)`` returns the display with
``ax_``, ``figure_``, its artists and the numbers drawn. Means, ordering and colour scaling are
display-only; the explanation is never changed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import ShortRepr, add_colorbar, label_fontsize, new_axes, short_label
from .shap_plots import _check_max_display, _feature_values, _finish, _names

__all__ = ["InteractionHeatmapDisplay", "InteractionDependenceDisplay", "interaction_heatmap",
           "interaction_dependence"]


def _cube(explanation) -> np.ndarray:
    v = np.asarray(explanation.values, dtype=np.float64)
    if v.ndim != 3 or v.shape[1] != v.shape[2]:
        raise ValueError(f"explanation values have shape {v.shape}; interaction displays need "
                         "interaction values of shape (n, M, M) (method "
                         "'exact_shapley_interactions' or 'tree_shap_interactions')")
    return v


def _feature_index(feature: Any, names: list[str]) -> int:
    if isinstance(feature, str):
        if feature not in names:
            raise ValueError(f"feature: unknown feature {feature!r}; the features are {names}")
        return names.index(feature)
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) \
            or not -len(names) <= feature < len(names):
        raise ValueError(f"feature must be a feature name or an index in 0..{len(names) - 1}; "
                         f"got {feature!r}")
    return int(feature) % len(names)


@dataclass(repr=False)
class InteractionHeatmapDisplay(ShortRepr):
    """Mean |interaction value| over the explained rows, one cell per pair of features.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``image_`` (the AxesImage),
    ``colorbar_``.
    """

    matrix_: np.ndarray        # (k, k) mean |Φ_ij| of the shown features (diagonal NaN if hidden)
    labels_: list[str]
    title: str = ""

    @classmethod
    def from_explanation(cls, explanation, max_display: int = 10, main_effects: bool = False,
                         title: str | None = None) -> "InteractionHeatmapDisplay":
        """The ``max_display`` features with the largest mean |interaction| with the others.

        ``main_effects=False`` leaves the diagonal (main effects, usually much larger) blank so
        that the colour scale shows the interactions.
        """
        max_display = _check_max_display(max_display)
        v = _cube(explanation)
        M = v.shape[1]
        names = _names(explanation, None, M)
        mean = np.abs(v).mean(0)
        off = mean.copy()
        np.fill_diagonal(off, 0.0)
        order = np.argsort(-off.sum(1), kind="stable")[:max_display]
        matrix = mean[np.ix_(order, order)]
        if not main_effects:
            np.fill_diagonal(matrix, np.nan)
        return cls(matrix, [names[j] for j in order],
                   explanation.method if title is None else title)

    def plot(self, ax=None, *, cmap: str = "Reds", colorbar: bool = True,
             annotate: bool | None = None) -> "InteractionHeatmapDisplay":
        """Draw the matrix (``annotate``: write each cell's number; default when k <= 8)."""
        import matplotlib as mpl

        k = len(self.labels_)
        ax = new_axes(ax, (0.5 * k + 3.0, 0.5 * k + 2.2))
        cm = mpl.colormaps[cmap].with_extremes(bad="0.92")
        top = np.nanmax(self.matrix_) if np.isfinite(self.matrix_).any() else 1.0
        top = top if top > 0 else 1.0
        self.image_ = ax.imshow(np.ma.masked_invalid(self.matrix_), cmap=cm, vmin=0.0, vmax=top,
                                interpolation="nearest")
        labels = [short_label(lab, width=18) for lab in self.labels_]
        lines = max((s.count("\n") + 1 for s in labels), default=1)
        fontsize = label_fontsize(ax, k, lines)
        ax.set_xticks(np.arange(k))
        ax.set_yticks(np.arange(k))
        ax.set_xticklabels(labels, fontsize=fontsize, rotation=45, ha="right",
                           rotation_mode="anchor")
        ax.set_yticklabels(labels, fontsize=fontsize)
        self.texts_ = []
        if annotate if annotate is not None else k <= 8:
            for i in range(k):
                for j in range(k):
                    val = self.matrix_[i, j]
                    if np.isfinite(val):
                        dark = val > 0.6 * top
                        self.texts_.append(ax.text(j, i, f"{val:.2g}", ha="center", va="center",
                                                   fontsize=max(fontsize - 1, 4.5),
                                                   color="white" if dark else "0.15"))
        self.colorbar_ = None
        if colorbar:
            self.colorbar_ = add_colorbar(ax.figure, self.image_, ax, scale=None, signed=False,
                                          label="mean |interaction value|", fraction=0.046,
                                          pad=0.04)
        _finish(self, ax)
        for side in ("top", "right"):
            ax.spines[side].set_visible(True)
        return self


@dataclass(repr=False)
class InteractionDependenceDisplay(ShortRepr):
    """One feature's Shapley value against its value, coloured by the value of the feature it
    interacts with most (largest mean |Φ_ij|, j ≠ i).

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``collection_``, ``colorbar_``.
    """

    x_: np.ndarray               # (n,) the feature's values
    y_: np.ndarray               # (n,) its Shapley values (rows of the interaction matrix summed)
    c_: np.ndarray | None        # (n,) the interacting feature's values (None: not numeric)
    feature_: str
    interaction_: str
    title: str = ""

    @classmethod
    def from_explanation(cls, explanation, feature: Any = 0, interaction: Any = "auto",
                         title: str | None = None) -> "InteractionDependenceDisplay":
        """``feature`` by name or index; ``interaction="auto"`` picks the strongest partner."""
        v = _cube(explanation)
        M = v.shape[1]
        names = _names(explanation, None, M)
        i = _feature_index(feature, names)
        if isinstance(interaction, str) and interaction == "auto":
            strength = np.abs(v[:, i, :]).mean(0)
            strength[i] = -np.inf
            j = int(np.argmax(strength))
        else:
            j = _feature_index(interaction, names)
        fv = _feature_values(explanation, M)
        if fv is None:
            raise ValueError("explanation: no feature values to plot against (inputs or "
                             "meta['feature_values'] of shape (n, M))")
        try:
            x = np.asarray(fv[:, i], dtype=np.float64)
        except (TypeError, ValueError):
            x = np.unique(np.asarray(fv[:, i]).astype(str), return_inverse=True)[1].astype(float)
        try:
            c = np.asarray(fv[:, j], dtype=np.float64)
        except (TypeError, ValueError):
            c = None
        return cls(x, v[:, i, :].sum(1), c, names[i], names[j],
                   explanation.method if title is None else title)

    def plot(self, ax=None, *, cmap: str = "coolwarm", size: float = 14.0,
             colorbar: bool = True) -> "InteractionDependenceDisplay":
        ax = new_axes(ax, (5.5, 4.0))
        kw = {"c": self.c_, "cmap": cmap} if self.c_ is not None else {"color": "0.5"}
        self.collection_ = ax.scatter(self.x_, self.y_, s=size, linewidths=0, **kw)
        ax.axhline(0, color="0.3", lw=0.6)
        ax.set_xlabel(short_label(self.feature_, width=40), fontsize=9)
        ax.set_ylabel(short_label(f"Shapley value of {self.feature_}", width=40), fontsize=9)
        ax.tick_params(labelsize=8)
        self.colorbar_ = None
        if colorbar and self.c_ is not None:
            self.colorbar_ = add_colorbar(ax.figure, self.collection_, ax, scale=None,
                                          signed=False, label=short_label(self.interaction_, 30),
                                          fraction=0.05, pad=0.02)
        return _finish(self, ax)


def interaction_heatmap(explanation, max_display: int = 10, ax=None, **kwargs
                        ) -> InteractionHeatmapDisplay:
    """Heat map of the mean |interaction value| matrix (see :class:`InteractionHeatmapDisplay`)."""
    main = kwargs.pop("main_effects", False)
    return InteractionHeatmapDisplay.from_explanation(explanation, max_display, main).plot(ax=ax, **kwargs)


def interaction_dependence(explanation, feature: Any = 0, interaction: Any = "auto", ax=None,
                           **kwargs) -> InteractionDependenceDisplay:
    """Dependence plot coloured by the strongest interaction (see
    :class:`InteractionDependenceDisplay`)."""
    return InteractionDependenceDisplay.from_explanation(explanation, feature, interaction).plot(ax=ax, **kwargs)
