"""The picture of a counterfactual: one diverging bar per changed feature.

Numeric changes are drawn in MAD units (the scale of the counterfactual distance), so bars of
different features compare; a changed category is a grey bar of length 1 (its distance) labelled
"old → new". matplotlib is imported when something is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._common import ShortRepr, new_axes, short_label

__all__ = ["CounterfactualDisplay"]

_UP, _DOWN, _CAT = "#c0392b", "#2e6fb7", "0.6"


@dataclass(repr=False)
class CounterfactualDisplay(ShortRepr):
    """Changes of one counterfactual.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``bars_``.
    """

    result: Any
    index: int = 0

    @classmethod
    def from_result(cls, result, index: int = 0) -> "CounterfactualDisplay":
        if not result.found:
            raise ValueError(f"nothing to draw: no counterfactual was found ({result.reason})")
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(result):
            raise ValueError(f"index must be in 0..{len(result) - 1}; got {index!r}")
        return cls(result, int(index))

    def plot(self, ax=None, *, title: str | None = None) -> "CounterfactualDisplay":
        r = self.result
        space = r._space
        z, x = r.encoded[self.index], r.x_encoded
        changed = np.flatnonzero(z != x)
        values = np.zeros(len(changed))
        labels, notes, colours = [], [], []
        readable = space.layout.describe(np.stack([x, z]))
        for k, j in enumerate(changed):
            labels.append(short_label(r.feature_names[j], 24, 1))
            if space.categorical[j]:
                values[k] = 1.0
                colours.append(_CAT)
            else:
                values[k] = (z[j] - x[j]) / space.mad[j]
                colours.append(_UP if values[k] > 0 else _DOWN)
            notes.append(f"{readable[0, j]} → {readable[1, j]}")
        ax = new_axes(ax, figsize=(5.0, 0.35 * max(len(changed), 1) + 1.3))
        y = np.arange(len(changed))[::-1]
        self.bars_ = ax.barh(y, values, color=colours, edgecolor="0.3", linewidth=0.5)
        lim = max(float(np.abs(values).max()) if len(values) else 1.0, 1e-9) * 1.6
        ax.set_xlim(-lim, lim)
        for yy, v, note in zip(y, values, notes):
            ax.text(v + (0.03 * lim if v >= 0 else -0.03 * lim), yy, note, va="center",
                    ha="left" if v >= 0 else "right", fontsize=7)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=7)
        ax.axvline(0, color="0.4", linewidth=0.8)
        ax.set_xlabel("change in MAD units (a changed category: 1)", fontsize=8)
        out = r._outcomes()
        ax.set_title(title if title is not None else short_label(
            f"counterfactual {self.index + 1}: outcome {out[0]:.4g} → {out[self.index + 1]:.4g}", 60, 1),
            fontsize=8)
        self.ax_, self.figure_ = ax, ax.figure
        return self
