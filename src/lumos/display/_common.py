"""Mechanisms every display shares: the figure's layout, short labels, the end of an image plot,
short ``repr``s and PNG pictures for notebooks.

matplotlib is imported inside the functions, never at import time.
"""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import numpy as np

__all__ = ["new_axes", "ensure_layout", "short_label", "label_fontsize", "finish_image",
           "ShortRepr", "short_repr", "figure_png_base64"]


def ensure_layout(fig) -> None:
    """Switch on matplotlib's constrained layout when the figure has no layout engine.

    Labels then never leave the figure nor run into a neighbouring panel, whether the figure is
    shown, saved, or saved with ``bbox_inches="tight"``. A figure that already has a layout
    engine (``layout="tight"``, ``"constrained"``, or ``"none"`` set explicitly by the caller)
    keeps it.
    """
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")


def new_axes(ax, figsize):
    """``ax`` (its figure given a layout engine) or the axes of a new constrained figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    else:
        ensure_layout(ax.figure)
    return ax


def short_label(text: Any, width: int = 32, lines: int = 2) -> str:
    """``text`` wrapped to at most ``lines`` lines of ``width`` characters.

    Too long a text loses its middle ("…"), so that both its start and its end (where a
    "name = value" label keeps its value) stay readable.
    """
    s = " ".join(str(text).split())
    if len(s) <= width:
        return s
    parts = textwrap.wrap(s, width, break_long_words=True, break_on_hyphens=False)
    if len(parts) > lines:
        tail = "…" + s[-(width - 1):].lstrip()
        head = textwrap.wrap(s, width, break_long_words=True, break_on_hyphens=False)[:lines - 1]
        parts = head + [tail] if lines > 1 else [s[:width // 2 - 1] + "…" + s[-(width // 2):]]
    return "\n".join(parts)


def label_fontsize(ax, rows: int, lines: int = 1, largest: float = 8.0, smallest: float = 4.5) -> float:
    """A font size at which ``rows`` labels of ``lines`` lines fit the height of ``ax``."""
    height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
    pitch = height_pt / max(rows, 1)
    return float(np.clip(0.65 * pitch / max(lines, 1), smallest, largest))


def finish_image(display, ax, mappable, *, colorbar: bool = False, scale: float | None = None,
                 signed: bool = True, label: str = "attribution"):
    """The common end of every image plot: no ticks, the title, an optional colour bar and the
    ``ax_``/``figure_``/``colorbar_``/``scale_`` attributes.

    The colour bar shows the map's own units: ``[-scale, 0, scale]`` for signed (diverging) maps,
    ``[0, scale]`` for magnitudes.
    """
    ax.set_xticks([])
    ax.set_yticks([])
    if display.title:
        ax.set_title(display.title, fontsize=9)
    display.colorbar_ = None
    if colorbar:
        display.colorbar_ = add_colorbar(ax.figure, mappable, ax, scale=scale, signed=signed,
                                         label=label)
    display.scale_ = scale
    display.ax_, display.figure_ = ax, ax.figure
    return display


def add_colorbar(fig, mappable, ax, *, scale: float | None, signed: bool, label: str,
                 location: str = "right", **kwargs):
    """A colour bar of ``mappable`` beside ``ax`` (an axes or a list of them) with ticks at
    ``-scale, 0, scale`` (signed) or ``0, scale`` and the label ``label``."""
    cb = fig.colorbar(mappable, ax=ax, location=location, **kwargs)
    if scale is not None and scale > 0:
        cb.set_ticks([-scale, 0.0, scale] if signed else [0.0, scale])
        cb.set_ticklabels([f"{t:.2g}" for t in ([-scale, 0.0, scale] if signed else [0.0, scale])])
    cb.ax.tick_params(labelsize=7)
    cb.set_label(label, fontsize=7)
    return cb


# ----------------------------------------------------------------------------- repr
def _short_value(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array{tuple(value.shape)}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__}{tuple(value.shape)}"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 4:
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:39] + "…")
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if value is None or isinstance(value, (bool, int, np.integer)):
        return repr(value)
    return f"<{type(value).__name__}>"


def short_repr(obj, limit: int = 200) -> str:
    """``Name(field=…, …)`` with arrays as their shapes and long things summarised."""
    fields = dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ()
    parts = [f"{f.name}={_short_value(getattr(obj, f.name, None))}" for f in fields if f.repr]
    text = f"{type(obj).__name__}({', '.join(parts)})"
    return text if len(text) <= limit else text[:limit - 2] + "…)"


class ShortRepr:
    """Mixin: a short ``repr`` (shapes, never whole arrays). Use with ``@dataclass(repr=False)``."""

    def __repr__(self) -> str:
        return short_repr(self)


def figure_png_base64(fig, dpi: int = 80) -> str:
    """The figure as a base64 PNG (for ``data:image/png;base64,…``); the figure is closed."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")
