"""Drawing an :class:`~lumos.Explanation` with the display that fits it, and its notebook view.

``Explanation.plot(kind=None, index=None, ax=None, **kwargs)`` comes here. With ``kind=None`` a
batch draws the batch and one sample draws that sample:

============  ===============================================  ================================
values        a batch (no ``index``)                           one sample (``index=i`` or n=1)
============  ===============================================  ================================
images        ``"grid"``: input and map per sample, one         ``"heatmap"`` over the image
              colour bar (up to ``max_samples`` rows)
tables        ``"beeswarm"``                                    ``"waterfall"`` (with a base
                                                                value), else ``"bar"``
texts         (pass ``index``, or ``text_html`` for all)        ``"text"``
============  ===============================================  ================================

Any kind can be asked for by name: ``"heatmap"``, ``"grid"``, ``"segments"``, ``"waterfall"``,
``"bar"`` (``index=None`` on a batch: mean |value| per feature), ``"beeswarm"``, ``"force"``,
``"text"``. Keyword arguments go to the display's ``from_explanation`` (``max_display``,
``aggregate``, ``segments``, ``title``) or its ``plot`` (``alpha``, ``colorbar``, ...).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

__all__ = ["KINDS", "plot_explanation", "explanation_html"]

KINDS = ("heatmap", "grid", "segments", "waterfall", "bar", "beeswarm", "force", "text")
_ONE_SAMPLE = ("heatmap", "segments", "waterfall", "force", "text")


def _data_kind(explanation) -> str:
    v = np.asarray(explanation.values)
    if explanation.meta.get("tokens") is not None and v.ndim == 2:
        return "text"
    if v.ndim == 4 or (v.ndim == 3 and min(v.shape[1:]) > 3):
        return "image"
    if v.ndim == 2:
        return "table"
    return "other"


def _default_kind(explanation, data: str, one: bool) -> str:
    if data == "image":
        return "heatmap" if one else "grid"
    if data == "text":
        return "text"
    if data == "table":
        if one:
            return "waterfall" if explanation.baseline_output is not None else "bar"
        return "beeswarm"
    raise ValueError(
        f"no display draws values of shape {np.shape(explanation.values)} (one value per image "
        "pixel, table feature or token); name one with kind= (one of "
        f"{', '.join(KINDS)}) if it fits"
    )


def _split(cls, kwargs: dict, where: str) -> tuple[dict, dict]:
    """kwargs for ``cls.from_explanation`` and for ``cls.plot``; unknown names raise."""
    from ..core.validation import check_kwargs

    make = set(inspect.signature(cls.from_explanation).parameters) - {"explanation", "index"}
    draw = set(inspect.signature(cls.plot).parameters) - {"self", "ax"}
    check_kwargs(sorted(make | draw), kwargs, where)
    return ({k: v for k, v in kwargs.items() if k in make},
            {k: v for k, v in kwargs.items() if k not in make})


def _row_label(explanation, i: int) -> str:
    label = f"#{i}"
    if explanation.target is not None and np.ndim(explanation.target) == 1:
        label += f"\ntarget {explanation.target[i]}"
    return label


def _grid(explanation, ax, kwargs: dict):
    from .heatmap import GridDisplay

    if ax is not None:
        raise ValueError("ax: a grid of the batch draws a figure of its own; pass index= to draw "
                         "one sample on ax")
    n = len(explanation)
    max_samples = kwargs.pop("max_samples", 16)
    indices = kwargs.pop("indices", None)
    if indices is None:
        indices = list(range(min(n, max_samples)))
    make = {k: kwargs.pop(k) for k in ("aggregate", "row_labels", "images") if k in kwargs}
    make.setdefault("row_labels", [_row_label(explanation, i) for i in indices])
    kwargs.setdefault("colorbar", "column")
    from ..core.validation import check_kwargs

    check_kwargs(GridDisplay.plot, kwargs, "Explanation.plot(kind='grid')")
    name = explanation.method or "attribution"
    d = GridDisplay.from_explanations({name: explanation}, indices=indices, **make).plot(**kwargs)
    if len(indices) < n:
        # say so on the picture: never a silent part of the batch
        d.figure_.suptitle(f"{len(indices)} of {n} samples (indices= chooses)", fontsize=8)
    return d


def plot_explanation(explanation, kind: str | None = None, index: int | None = None, ax=None,
                     **kwargs):
    """Draw ``explanation`` and return the display (see the module docstring for the kinds).

    Parameters
    ----------
    explanation : Explanation
    kind : str, optional
        One of ``KINDS``; by default chosen from the values and the batch size.
    index : int, optional
        The sample to draw. Kinds that draw one sample (heatmap, segments, waterfall, force,
        text) need it when the batch has more than one sample.
    ax : matplotlib Axes, optional
    **kwargs
        For the display (``max_display=``, ``aggregate=``, ``colorbar=``, ``alpha=`` ...);
        for a grid also ``max_samples=`` (default 16) and ``indices=``.
    """
    from ..core.validation import check_choice

    if getattr(explanation, "several", False):
        raise ValueError("this explanation holds the values of several inputs "
                         f"({explanation.input_names}); plot one: e.part(name).plot()")
    n = len(explanation)
    if index is not None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int or None; got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for an explanation of {n} samples")
        index = int(index)
    data = _data_kind(explanation)
    if kind is None:
        kind = _default_kind(explanation, data, index is not None or n == 1)
    check_choice(kind, "kind", KINDS)
    if kind == "heatmap" and index is None and n > 1:
        kind = "grid"
    if kind == "grid":
        if index is not None:
            kwargs.setdefault("indices", [index])
        return _grid(explanation, ax, kwargs)
    if kind in _ONE_SAMPLE and index is None:
        if n > 1:
            raise ValueError(f"index: a {kind} plot draws one sample and this explanation has {n}; "
                             f"pass index= (or plot e[i])"
                             + ("; kind='grid' draws them all" if data == "image" else "")
                             + ("; kind='beeswarm' or 'bar' summarise them" if data == "table" else ""))
        index = 0
    from .heatmap import HeatmapDisplay
    from .segments import SegmentsDisplay
    from .shap_plots import BarDisplay, BeeswarmDisplay, ForceDisplay, WaterfallDisplay
    from .text import TextDisplay

    cls = {"heatmap": HeatmapDisplay, "segments": SegmentsDisplay, "waterfall": WaterfallDisplay,
           "bar": BarDisplay, "beeswarm": BeeswarmDisplay, "force": ForceDisplay,
           "text": TextDisplay}[kind]
    make, draw = _split(cls, kwargs, f"Explanation.plot(kind={kind!r})")
    if kind == "beeswarm":
        source = explanation if index is None else explanation[index]
        return cls.from_explanation(source, **make).plot(ax=ax, **draw)
    if kind == "bar" and index is None and n > 1:
        return cls.from_explanation(explanation, index=None, **make).plot(ax=ax, **draw)
    return cls.from_explanation(explanation, index=index, **make).plot(ax=ax, **draw)


# ----------------------------------------------------------------------------- notebook view
_TEMPLATE = """\
<div class="lumos-explanation" style="{{ s.box }}">
<div style="display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start;">
<table style="{{ s.table }}">
<caption style="{{ s.caption }}">Explanation</caption>
{%- for key, value in rows %}
<tr><th style="{{ s.th }}">{{ key }}</th><td style="{{ s.td }}"><code style="{{ s.code }}">{{ value }}</code></td></tr>
{%- endfor %}
</table>
{%- if png %}
<img src="data:image/png;base64,{{ png }}" alt="{{ alt }}" style="{{ s.img }}">
{%- elif note %}
<p class="note" style="{{ s.note }}">{{ note }}</p>
{%- endif %}
</div>
</div>"""


def _short_list(values: Any, k: int = 6) -> str:
    a = np.asarray(values).ravel()
    items = [f"{x:.4g}" if isinstance(x, (float, np.floating)) else str(x) for x in a[:k].tolist()]
    return "[" + ", ".join(items) + (f", … ({len(a)})" if len(a) > k else "") + "]"


def _rows(explanation) -> list[tuple[str, str]]:
    if getattr(explanation, "several", False):
        shapes = ", ".join(f"{k}: {tuple(np.shape(explanation.part(k).values))}"
                           for k in explanation.input_names)
    else:
        v = np.asarray(explanation.values)
        shapes = f"{tuple(v.shape)} {v.dtype}"
    rows = [("method", explanation.method or "—"), ("samples", str(len(explanation))),
            ("values", shapes)]
    if explanation.target is not None:
        rows.append(("target", _short_list(explanation.target)))
    elif "target" in explanation.meta:
        rows.append(("target", str(explanation.meta["target"])[:80]))
    for name in ("output", "baseline_output"):
        a = getattr(explanation, name)
        if a is not None:
            rows.append((name, _short_list(a)))
    if explanation.feature_names is not None:
        rows.append(("features", _short_list(explanation.feature_names)))
    if explanation.params:
        text = ", ".join(f"{k}={v!r}" if isinstance(v, (str, int, float, bool)) or v is None
                         else f"{k}=<{type(v).__name__}>" for k, v in explanation.params.items())
        rows.append(("params", text if len(text) <= 160 else text[:159] + "…"))
    if explanation.meta:
        keys = ", ".join(map(str, explanation.meta))
        rows.append(("meta", keys if len(keys) <= 160 else keys[:159] + "…"))
    return rows


def explanation_html(explanation, picture: bool = True, dpi: int = 72) -> str:
    """A small table and a picture (inline base64 PNG) of ``explanation``, for notebooks, in the
    static report's table style (:mod:`lumos.display._html`).

    Every text goes through Jinja2's autoescaping, so a feature called ``<script>`` is shown,
    never run. A grid shows at most 4 samples. When nothing can draw the values, a note stands
    where the picture would be.
    """
    from ._common import figure_png_base64
    from ._html import render

    png, note = "", ""
    if picture:
        import matplotlib.pyplot as plt

        before = set(plt.get_fignums())
        try:
            if getattr(explanation, "several", False):
                raise ValueError(f"several inputs ({explanation.input_names}): "
                                 "e.part(name) draws one")
            data = _data_kind(explanation)
            kind = _default_kind(explanation, data, len(explanation) == 1)
            if kind == "text" and len(explanation) > 1:
                raise ValueError("a batch of texts: text_html(e) shows them all")
            kwargs = {"max_samples": 4} if kind == "grid" else {}
            display = plot_explanation(explanation, kind, **kwargs)
            png = figure_png_base64(display.figure_, dpi=dpi)
        except (ValueError, TypeError, IndexError, KeyError) as err:
            note = f"no picture: {err}"
        finally:
            for num in set(plt.get_fignums()) - before:    # nothing left for the notebook
                plt.close(num)
    return render(_TEMPLATE, rows=_rows(explanation), png=png, note=note,
                  alt=f"{explanation.method} attributions")

