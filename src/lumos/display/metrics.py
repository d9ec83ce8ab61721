"""Pictures of metric results: deletion/insertion curves per method, and the randomisation
picture of Adebayo et al. (2018) (maps as the layers are randomised from the top down, beside the
similarity to the original map).

Follows scikit-learn's Display pattern: ``CurvesDisplay.from_results({...}).plot(ax=...)``
returns the display with ``ax_``/``figure_`` and the drawn artists. Only the display scales maps
(each map by its own 99.5th percentile, as :mod:`lumos.display.heatmap` does); the numbers of the
results are drawn as computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ._common import ShortRepr

__all__ = ["CurvesDisplay", "RandomisationDisplay", "metric_result_html", "comparison_rows", "comparison_html"]

_COLOURS = ["#1f4e79", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#2c3e50", "#16a085", "#7f8c8d"]


def _colour(i: int, name: str) -> str:
    return "#999999" if name == "random" else _COLOURS[i % len(_COLOURS)]


@dataclass(repr=False)
class CurvesDisplay(ShortRepr):
    """Mean score curves (deletion, insertion, ROAD) of several methods, with a band of ± one
    standard error of the mean over samples.

    Parameters
    ----------
    x : ndarray, shape (S,)
        Fraction of features removed (deletion) or inserted (insertion).
    curves : dict of str to ndarray (n, S)
        Per method, the score curve of each sample.
    areas : dict of str to float
        Per method, the mean area under the curve (shown in the legend).
    metric : str
    direction : {"higher", "lower"}
    """

    x: np.ndarray
    curves: dict
    areas: dict
    metric: str = ""
    direction: str = "lower"
    lines_: dict = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: Mapping[str, Any]) -> "CurvesDisplay":
        """From ``{method: MetricResult}`` of one curve metric (``curves["x"]``, ``curves["y"]``)."""
        if not results:
            raise ValueError("results must hold at least one MetricResult with curves")
        first = next(iter(results.values()))
        if "x" not in first.curves or "y" not in first.curves:
            raise ValueError(f"the metric {first.name!r} has no score curves to draw")
        curves = {m: np.asarray(r.curves["y"], dtype=np.float64) for m, r in results.items()}
        return cls(np.asarray(first.curves["x"]), curves, {m: r.mean for m, r in results.items()},
                   first.name, first.direction)

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.6, 3.6))
        for i, (m, y) in enumerate(self.curves.items()):
            mean = y.mean(0)
            sem = y.std(0, ddof=1) / np.sqrt(len(y)) if len(y) > 1 else np.zeros_like(mean)
            c = _colour(i, m)
            (line,) = ax.plot(self.x, mean, color=c, lw=1.8, ls="--" if m == "random" else "-",
                              label=f"{m} (AUC {self.areas[m]:.3g})")
            band = ax.fill_between(self.x, mean - sem, mean + sem, color=c, alpha=0.15, lw=0)
            self.lines_[m] = (line, band)
        what = "inserted" if "insertion" in self.metric else "removed"
        ax.set_xlabel(f"fraction of features {what}")
        ax.set_ylabel("explained score")
        better = "higher" if self.direction == "higher" else "lower"
        ax.set_title(f"{self.metric} ({better} area is better)", fontsize=10)
        ax.legend(fontsize=7, frameon=False)
        ax.grid(alpha=0.3)
        self.ax_, self.figure_ = ax, ax.figure
        return self


@dataclass(repr=False)
class RandomisationDisplay(ShortRepr):
    """The model-parameter randomisation picture (Adebayo et al., 2018).

    One row per method: the input, the original map and the map after each randomisation step
    (cascading: all layers down to the named one are random), each map scaled to its own 99.5th
    percentile; beside it, the mean similarity to the original map per step, per method.

    Parameters
    ----------
    maps : dict of str to ndarray (steps + 1, H, W)
        Absolute maps of one sample, the original first.
    similarity : dict of str to ndarray (steps, n)
        The similarity per step and sample.
    layers : list of str
    image : ndarray (C, H, W) or None
    measure : str
        The similarity's name.
    """

    maps: dict
    similarity: dict
    layers: list
    image: Any = None
    measure: str = "ssim"
    order: str = "cascading"

    @classmethod
    def from_results(cls, results: Mapping[str, Any], inputs: Any = None, sample: int = 0,
                     measure: str | None = None) -> "RandomisationDisplay":
        """From ``{method: MetricResult}`` of the randomisation test (kept maps)."""
        if not results:
            raise ValueError("results must hold at least one randomisation MetricResult")
        first = next(iter(results.values()))
        if "maps" not in first.meta:
            raise ValueError("the randomisation results have no maps; run it with keep_maps=True")
        measure = measure or first.params.get("similarity", "spearman")
        maps = {m: np.asarray(r.meta["maps"])[:, sample] for m, r in results.items()}
        sims = {m: np.asarray(r.curves[measure]) for m, r in results.items()}
        image = None
        if inputs is not None:
            image = np.asarray(inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else inputs)[sample]
        return cls(maps, sims, list(first.meta["layers"]), image, measure, first.params.get("order", "cascading"))

    def plot(self, figsize=None):
        import matplotlib.pyplot as plt

        from .heatmap import image_for_display, scale_map

        rows = len(self.maps)
        steps = len(self.layers)
        cols = steps + 2 + (self.image is not None)
        figsize = figsize or (1.45 * cols + 1.5, 1.55 * rows + 0.7)
        fig = plt.figure(figsize=figsize)
        grid = fig.add_gridspec(rows, cols, width_ratios=[1] * (cols - 1) + [2.2], wspace=0.08, hspace=0.15)
        self.axes_ = {}
        for r, (m, maps) in enumerate(self.maps.items()):
            c0 = 0
            if self.image is not None:
                ax = fig.add_subplot(grid[r, 0])
                im = image_for_display(self.image)
                ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_ylabel(m, fontsize=8)
                if r == 0:
                    ax.set_title("input", fontsize=7)
                c0 = 1
            for s in range(steps + 1):
                ax = fig.add_subplot(grid[r, c0 + s])
                scaled, _, _ = scale_map(np.asarray(maps[s], dtype=np.float64), signed=False)
                ax.imshow(scaled, cmap="inferno", vmin=0, vmax=1)
                ax.set_xticks([]), ax.set_yticks([])
                if s == 0 and self.image is None:
                    ax.set_ylabel(m, fontsize=8)
                if r == 0:
                    ax.set_title("original" if s == 0 else self.layers[s - 1], fontsize=7, rotation=20)
                self.axes_[m, s] = ax
        ax = fig.add_subplot(grid[:, -1])
        for i, (m, sim) in enumerate(self.similarity.items()):
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(sim, axis=1)
                sd = np.nanstd(sim, axis=1)
            xs = np.arange(1, steps + 1)
            c = _colour(i, m)
            ax.plot(xs, mean, marker="o", ms=3, color=c, label=m, ls="--" if m == "random" else "-")
            ax.fill_between(xs, mean - sd, mean + sd, color=c, alpha=0.12, lw=0)
        ax.set_xticks(np.arange(1, steps + 1))
        ax.set_xticklabels(self.layers, rotation=45, ha="right", fontsize=6)
        ax.set_ylabel(f"{self.measure} to the original", fontsize=8)
        ax.set_title(f"{self.order} randomisation (top → down)", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.yaxis.tick_right(), ax.yaxis.set_label_position("right")
        ax.legend(fontsize=6, frameon=False)
        self.ax_similarity_ = ax
        self.figure_ = fig
        return self


_RESULT_TEMPLATE = """\
<table class="lumos-metric" style="{{ s.box }} {{ s.table }}">
<caption style="{{ s.caption }}">{{ caption }}</caption>
{%- for key, value in rows %}
<tr><th style="{{ s.th }}">{{ key }}</th><td style="{{ s.td }}"><code style="{{ s.code }}">{{ value }}</code></td></tr>
{%- endfor %}
</table>"""


def metric_result_html(result) -> str:
    """A small HTML table of a :class:`~lumos.metrics.results.MetricResult` (for notebooks), in
    the static report's table style: the score (mean ± standard error), its direction and scale,
    the spread, the samples, the parameters and the curves behind it. Every text is escaped
    (Jinja2 autoescape)."""
    from ._html import render

    scores = np.asarray(result.scores, dtype=np.float64)
    finite = scores[np.isfinite(scores)]
    rows = [("method", result.method or "—"),
            ("mean ± sem", f"{result.mean:.4g} ± {result.sem:.2g}"),
            ("better", f"{result.direction} ({_arrow(result.direction)})")]
    scale = result.params.get("scale")
    if scale:
        rows.append(("scale", str(scale)))
    if len(finite):
        q = np.percentile(finite, [0, 50, 100])
        rows.append(("min / median / max", f"{q[0]:.4g} / {q[1]:.4g} / {q[2]:.4g}"))
    rows.append(("samples", f"{len(scores)}" + (f" ({len(scores) - len(finite)} undefined)"
                                                 if len(finite) < len(scores) else "")))
    params = ", ".join(f"{k}={v!r}" if isinstance(v, (str, int, float, bool)) or v is None
                       else f"{k}=<{type(v).__name__}>" for k, v in result.params.items())
    if params:
        rows.append(("params", params if len(params) <= 160 else params[:159] + "…"))
    if result.curves:
        rows.append(("curves", ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in result.curves.items())))
    return render(_RESULT_TEMPLATE, caption=f"{result.name}", rows=rows)


def _arrow(direction: str) -> str:
    return "↑" if direction == "higher" else "↓"


def comparison_rows(comparison, fmt) -> dict:
    """The ranking table of a :class:`~lumos.metrics.comparison.Comparison` as data for a template.

    Rows in the comparison's order (best mean rank first); per metric a cell with the mean and
    standard deviation over samples (``fmt`` writes the numbers), the rank (1 = best; ties share
    the average rank), ``best`` for rank 1, and ``why`` where the result is missing. Also the
    metrics' arrows (↑ higher is better, ↓ lower is better) and the notes of the text table
    (the scale each metric was scored on).
    """
    ranks, mean_rank = comparison.ranks(), comparison.mean_ranks()
    rows = []
    for m in comparison.order():
        cells = []
        for k in comparison.metrics:
            r = comparison.result(m, k)
            if r is None:
                why = comparison.results.get(m, {}).get(k)
                why = why if isinstance(why, str) else ""
                cells.append({"metric": k, "missing": True, "why": why, "best": False,
                              "text": "n/a" + (f" ({why})" if why else "")})
                continue
            rk = ranks.get(k, {}).get(m)
            cell = {"metric": k, "missing": False, "mean": r.mean, "std": r.std, "rank": rk,
                    "mean_text": fmt(r.mean), "std_text": fmt(r.std),
                    "rank_text": f"{rk:g}" if rk is not None else "", "best": rk == 1}
            cell["text"] = f"{cell['mean_text']} ± {cell['std_text']}" + (f" ({rk:g})" if rk is not None else "")
            cells.append(cell)
        mr = mean_rank[m]
        rows.append({"method": m, "cells": cells, "mean_rank_value": mr,
                     "mean_rank": f"{mr:.2f}" if np.isfinite(mr) else "n/a"})
    notes = [line for line in comparison.table() if line.startswith("scored on")]
    directions = {k: comparison.direction(k) for k in comparison.metrics}
    return {"metrics": list(comparison.metrics), "rows": rows, "n_samples": comparison.n_samples,
            "notes": notes, "directions": directions,
            "arrows": {k: _arrow(d) for k, d in directions.items()}}


_COMPARISON_TEMPLATE = """\
<div class="lumos-comparison" style="{{ s.box }}">
<div style="overflow-x: auto;">
<table style="{{ s.table }}">
<caption style="{{ s.caption }}">Comparison: {{ t.rows | length }} method(s) × {{ t.metrics | length }} \
metric(s) on {{ t.n_samples }} sample(s)</caption>
<tr><th style="{{ s.th }}">method</th>
{%- for k in t.metrics %}<th style="{{ s.th }}" class="metric" data-direction="{{ t.directions[k] }}" \
title="{{ t.directions[k] }} is better">{{ k }} {{ t.arrows[k] }}</th>{% endfor %}\
<th style="{{ s.th }}">mean rank</th></tr>
{%- for row in t.rows %}
<tr class="method-row"><td style="{{ s.td }}" class="method">{{ row.method }}</td>
{%- for c in row.cells %}
{%- if c.missing %}<td style="{{ s.num }}" class="num missing" title="{{ c.why }}">n/a</td>
{%- else %}<td style="{{ s.best if c.best else s.num }}" class="num{{ ' best' if c.best }}" \
data-mean="{{ c.mean | string }}" data-std="{{ c.std | string }}" data-rank="{{ c.rank_text }}">\
<span class="mean">{{ c.mean_text }}</span> ± <span class="spread">{{ c.std_text }}</span>\
{% if c.rank_text %} (<span class="rank">{{ c.rank_text }}</span>){% endif %}</td>
{%- endif %}
{%- endfor %}<td style="{{ s.num }}" class="num mean-rank" data-mean-rank="{{ row.mean_rank_value | string }}">\
{{ row.mean_rank }}</td></tr>
{%- endfor %}
</table>
</div>
<p class="note" style="{{ s.note }}">Each cell: mean ± standard deviation over {{ t.n_samples }} sample(s) and \
(rank) on that metric, 1 = best (↑ higher is better, ↓ lower is better); methods ordered by mean rank; \
<code style="{{ s.code }}">random</code> is the chance baseline.</p>
{%- for line in t.notes %}
<p class="note" style="{{ s.note }}">{{ line }}</p>
{%- endfor %}
{%- for row in t.rows %}{% for c in row.cells if c.missing and c.why %}
<p class="note missing-why" style="{{ s.note }}">n/a {{ row.method }} × {{ c.metric }}: {{ c.why }}</p>
{%- endfor %}{% endfor %}
{%- if png %}
<img src="data:image/png;base64,{{ png }}" alt="mean score curves per method" style="{{ s.img }}">
{%- endif %}
</div>"""


def comparison_html(comparison, fmt, picture: bool = True, dpi: int = 64) -> str:
    """The notebook view of a :class:`~lumos.metrics.comparison.Comparison`: the ranking table
    (:func:`comparison_rows`: mean ± standard deviation, rank per metric, mean rank, the direction
    of each metric) in the static report's table style, and below it the mean deletion/insertion
    curves (an inline PNG) when the comparison has them. ``data-mean``/``data-std``/``data-rank``
    attributes hold each cell's numbers unrounded. Every text is escaped (Jinja2 autoescape).
    """
    from ._html import render

    png = ""
    if picture:
        import matplotlib.pyplot as plt

        from ._common import figure_png_base64

        before = set(plt.get_fignums())
        try:
            fig = comparison.plot_curves()
            if fig is not None:
                png = figure_png_base64(fig, dpi=dpi)
        finally:
            for num in set(plt.get_fignums()) - before:    # nothing left for the notebook
                plt.close(num)
    return render(_COMPARISON_TEMPLATE, t=comparison_rows(comparison, fmt), png=png)
