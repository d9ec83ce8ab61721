"""Pictures of examples: rows of images with titles (matplotlib, imported when drawing)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["example_row", "example_grid", "show_image"]


def show_image(ax, image: Any, title: str | None = None, color: str | None = None) -> None:
    """One input image (``(C, H, W)`` or ``(H, W)``, tensor or array) on ``ax``, without ticks."""
    from ..display.heatmap import image_for_display

    im = image_for_display(image)
    if im is None:
        raise ValueError("only images (C, H, W) or (H, W) can be drawn as examples; got shape "
                         f"{tuple(np.shape(image))}")
    ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=7, color=color or "black")
    if color is not None:
        for s in ax.spines.values():
            s.set_edgecolor(color), s.set_linewidth(2.0)


def example_grid(rows: Sequence[tuple[str, Sequence[Any], Sequence[str], Sequence[str | None]]],
                 ncols: int | None = None, cell: float = 1.3, suptitle: str | None = None):
    """A figure with one row per ``(row label, images, titles, colours)``; returns the figure."""
    import matplotlib.pyplot as plt

    from ..display._common import ensure_layout

    ncols = ncols or max(1, max(len(r[1]) for r in rows))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols + 0.8, (cell + 0.45) * len(rows)),
                             squeeze=False)
    for r, (label, images, titles, colours) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c < len(images):
                show_image(ax, images[c], titles[c], colours[c] if colours else None)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(label, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    ensure_layout(fig)
    return fig


def example_row(query: Any, images: Sequence[Any], titles: Sequence[str], query_title: str = "query",
                ax=None, colours: Sequence[str | None] | None = None):
    """The query image, then ``images`` with ``titles``: one row; returns the figure."""
    if ax is not None:
        raise ValueError("ax: an example row draws several images and makes its own figure; leave ax=None")
    return example_grid([("", [query, *images], [query_title, *titles],
                          [None, *(colours or [None] * len(images))])])
