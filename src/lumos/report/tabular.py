"""The table parts of the report: per-row attribution pictures, a beeswarm of the explained rows,
and the global effects of the model on a background data set.

:func:`lumos.report.build.render` calls these for inputs of shape ``(n, features)``. Every number
drawn comes from :func:`lumos.explain` (through :func:`lumos.metrics.comparison.compare`) or from
:mod:`lumos.effects` with the report's seed; the pictures come from :mod:`lumos.display`
(:class:`~lumos.display.shap_plots.WaterfallDisplay`, ``BarDisplay``, ``BeeswarmDisplay``, the
effect displays). Nothing here changes a number: the report shows what a direct call gives.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ._figures import drawing

__all__ = ["attribution_items", "summary_item", "global_effects", "effect_features_of", "column_indices",
           "EFFECT_NOTES"]

#: What each global effect shows and how it is known to mislead (shown in the report).
EFFECT_NOTES = {
    "pdp": "Partial dependence (Friedman 2001) and ICE curves (Goldstein et al. 2015): the model's output "
           "with the feature set to each grid value, averaged over the background rows (thick line) and per "
           "row (thin lines). It sets the feature independently of the others, so for correlated features it "
           "averages over combinations that never occur (Apley & Zhu 2020).",
    "ale": "Accumulated local effects (Apley & Zhu 2020): the output's change across small bins of the "
           "feature, accumulated and centred; it stays within the data where features are correlated. "
           "The band is a bootstrap interval over the background rows.",
    "importance": "Permutation importance (Breiman 2001; Fisher, Rudin & Dominici 2019): the drop of the "
                  "score when one feature's column is shuffled, mean ± standard deviation over repeats. "
                  "Correlated features share their importance and each can look unimportant "
                  "(Strobl et al. 2008; Hooker & Mentch 2019).",
}


def _figure(k: int, width: float, height: float):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, k, figsize=(width * k, height), squeeze=False, layout="constrained")
    return fig, axes[0]


def _row_display(e: Any, i: int):
    """A waterfall where the explanation has a base value per row (Shapley values: the bars add up
    from E[f] to f(x)); a signed bar chart otherwise (LIME's weights, gradients)."""
    from ..display.shap_plots import BarDisplay, WaterfallDisplay

    base = e.baseline_output
    if base is not None and np.ndim(base) >= 1 and np.isfinite(np.asarray(base, dtype=np.float64)[i]):
        return WaterfallDisplay.from_explanation(e, index=i)
    return BarDisplay.from_explanation(e, index=i)


def attribution_items(explanations: dict, x: np.ndarray, feature_names: Sequence[str], captions: Sequence[str],
                      figure_png) -> list[dict]:
    """Per row: one picture (a waterfall or bar chart per method, side by side) and the table of
    the values drawn (feature, its value, each method's attribution)."""
    items = []
    n_feat = len(feature_names)
    for i in range(len(x)):
        item = {"index": i, "caption": captions[i], "png": "", "note": "", "kinds": [],
                "methods": list(explanations), "rows": []}
        if not explanations:
            item["note"] = "no method to draw"
            items.append(item)
            continue
        with drawing(item, "no picture of these attributions"):
            fig, axes = _figure(len(explanations), 4.6, 1.3 + 0.32 * min(n_feat, 11))
            for ax, (name, e) in zip(axes, explanations.items()):
                d = _row_display(e, i)
                d.plot(ax=ax)
                kind = "waterfall" if type(d).__name__ == "WaterfallDisplay" else "bar chart"
                item["kinds"].append(f"{name}: {kind}")
                ax.set_title(f"{name} ({kind})", fontsize=9)
            item["png"] = figure_png(fig)
        for j, f in enumerate(feature_names):
            item["rows"].append({"feature": f, "value": _fmt(x[i, j]),
                                 "cells": [_fmt(np.asarray(e.values)[i, j]) for e in explanations.values()]})
        items.append(item)
    return items


def summary_item(explanations: dict, figure_png) -> dict:
    """One beeswarm per method over every explained row (features by mean |attribution|, the
    dots coloured by the feature's value)."""
    from ..display.shap_plots import BeeswarmDisplay

    item = {"png": "", "note": ""}
    if not explanations:
        item["note"] = "no method to draw"
        return item
    with drawing(item, "no beeswarm"):
        n_feat = np.shape(next(iter(explanations.values())).values)[1]
        fig, axes = _figure(len(explanations), 4.8, 1.4 + 0.32 * min(n_feat, 11))
        for ax, (name, e) in zip(axes, explanations.items()):
            BeeswarmDisplay.from_explanation(e, title=name).plot(ax=ax)
        item["png"] = figure_png(fig)
    return item


def column_indices(features: Any, feature_names: Sequence[str], name: str) -> list[int]:
    """Names or indices of columns -> indices; ValueError naming ``name`` for anything else."""
    names = list(feature_names)
    if isinstance(features, (str, int, np.integer)):
        features = [features]
    out = []
    for f in features:
        if isinstance(f, (int, np.integer)) and not isinstance(f, bool):
            if not 0 <= int(f) < len(names):
                raise ValueError(f"{name}: index {f} out of range for {len(names)} features")
            out.append(int(f))
        elif isinstance(f, str) and f in names:
            out.append(names.index(f))
        else:
            raise ValueError(f"{name}: {f!r} is neither a feature name ({names}) nor a column index")
    return out


def effect_features_of(ranking: Any, feature_names: Sequence[str], effect_features: Any, n: int) -> list[int]:
    """Column indices of the features whose effects are drawn: ``effect_features`` (names or
    indices) when given, else the ``n`` with the largest mean |attribution| in ``ranking`` (ties:
    the first column), else the first ``n`` columns."""
    names = list(feature_names)
    if effect_features is not None:
        return column_indices(effect_features, names, "effect_features")
    if ranking is None:
        return list(range(min(n, len(names))))
    score = np.abs(np.asarray(ranking.values, dtype=np.float64)).mean(0)
    return [int(j) for j in np.argsort(-score, kind="stable")[:n]]


def _named(result: Any, names: Sequence[str]) -> Any:
    """The effect result with the report's feature names (the effects name array columns x0, x1, ...)."""
    return dataclasses.replace(result, feature_names=list(names))


def global_effects(model: Any, background: Any, labels: Any, cols: Sequence[int], feature_names: Sequence[str],
                   target: Any, seed: int, figure_png, categorical: Sequence[int] | None = None) -> dict:
    """PD + ICE and ALE of each column in ``cols``, and permutation importance when ``labels``;
    the columns in ``categorical`` (indices) are treated as categories (their levels, not a line).

    Returns ``{"pdp": {name: PartialDependence}, "ale": {name: ALE}, "importance":
    PermutationImportance or None, "png": ..., "importance_png": ..., "rows": [...],
    "importance_rows": [...], "output": str}``.
    """
    import matplotlib.pyplot as plt

    from ..effects import ale, partial_dependence, permutation_importance

    names = list(feature_names)
    pdp, ales = {}, {}
    cat = list(categorical) if categorical else None
    for j in cols:
        pdp[names[j]] = _named(partial_dependence(model, background, j, target=target, seed=seed,
                                                  categorical_features=cat), [names[j]])
        ales[names[j]] = _named(ale(model, background, j, target=target, seed=seed, categorical_features=cat),
                                [names[j]])
    imp = None
    if labels is not None:
        # its default metric (accuracy of the arg-max class, or R²) reads the whole output: no target
        imp = _named(permutation_importance(model, background, labels, seed=seed), names)
    out = {"pdp": pdp, "ale": ales, "importance": imp, "png": "", "importance_png": "", "note": "",
           "output": next(iter(pdp.values())).target if pdp else ""}
    with drawing(out, "no picture of the effects"):
        if cols:
            fig, axes = plt.subplots(2, len(cols), figsize=(3.9 * len(cols), 6.4), squeeze=False,
                                     layout="constrained")
            for c, f in enumerate(pdp):
                pdp[f].plot(ax=axes[0, c], title=f"PD + ICE: {f}")
                ales[f].plot(ax=axes[1, c], title=f"ALE: {f}")
            out["png"] = figure_png(fig)
        if imp is not None:
            fig, ax = plt.subplots(figsize=(6.0, 1.2 + 0.3 * min(len(names), 20)), layout="constrained")
            imp.plot(ax=ax)
            ax.set_title(f"permutation importance ({imp.metric})", fontsize=9)
            out["importance_png"] = figure_png(fig)
    out["rows"] = [{"feature": f, "pd_low": _fmt(np.min(p.average)), "pd_high": _fmt(np.max(p.average)),
                    "ale_low": _fmt(np.min(ales[f].values)), "ale_high": _fmt(np.max(ales[f].values))}
                   for f, p in pdp.items()]
    if imp is not None:
        order = np.argsort(-imp.mean, kind="stable")
        out["importance_rows"] = [{"feature": imp.feature_names[j], "mean": _fmt(imp.mean[j]),
                                   "std": _fmt(imp.std[j])} for j in order]
        out["importance_text"] = (f"{imp.metric} on the {len(labels)} background rows: {_fmt(imp.baseline_score)}; "
                                  f"{imp.n_repeats} repeats")
    else:
        out["importance_rows"] = []
    return out


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)
