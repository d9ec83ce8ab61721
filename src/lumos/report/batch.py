"""``lumos.report.batch``: one self-contained HTML page of a whole-data-set job's results.

The page of an output folder of :func:`lumos.batch.explain_dataset` holds, in this order:

1. **job**: the manifest: method, parameters, seed, model (factory, weights' SHA-256, hash), data,
   status, and every shard with its rows, file, SHA-256 and whether the file still matches it;
2. **attributions**: mean |attribution| per feature over every row (a bar chart and a table;
   tables) or per pixel (a map, the channels summed; images), computed shard by shard;
3. **masks** (with ``masks=``): per image, the share of its |attribution| inside its region; the
   mean share and the share of images with most of it inside, and their histogram;
4. **metrics**: for every metric the job scored on each row (``explain_dataset(metrics=...)``),
   count, mean, std, exact quantiles and a histogram (:meth:`BatchResults.metric_distribution`);
5. **examples**: a few rows, evenly spaced over the data set, with their attributions (a map for
   images, a bar chart for tables), output and metric scores.

Like :mod:`lumos.report.build`'s report the file is self-contained (inline CSS, images as base64
PNG, no script, no network reference), rendered by Jinja2 with autoescaping on (feature names,
parameters and paths are shown as text, never run), and holds no time stamp: the same output
folder gives the same bytes. Memory: one shard at a time (plus the mean map and the rows shown).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["render_batch", "build_batch", "BATCH_SECTIONS"]

BATCH_SECTIONS = (("job", "Job and shards"), ("attributions", "Mean |attribution|"),
                  ("masks", "Attribution on the masked regions"), ("metrics", "Metric distributions"),
                  ("examples", "Example rows"))


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return "nan" if x != x else f"{x:.4g}"
    return str(x)


def _heat(a: np.ndarray) -> str:
    """A non-negative map (H, W) as a base64 PNG on its own scale (0 white, max dark red)."""
    from .build import _png

    a = np.asarray(a, dtype=np.float64)
    top = float(np.nanmax(a)) if a.size and np.isfinite(a).any() else 0.0
    t = a / top if top > 0 else np.zeros_like(a)
    t = np.nan_to_num(t)
    rgb = np.stack([1 - 0.35 * t, 1 - 0.9 * t, 1 - 0.9 * t], axis=-1)
    big = np.kron(rgb, np.ones((max(1, 128 // max(a.shape)),) * 2 + (1,)))  # small maps drawn larger
    return _png(big)


def _image(v: np.ndarray) -> np.ndarray:
    """|attribution| of one image, channels summed: (C, H, W) or (H, W) -> (H, W)."""
    a = np.abs(np.asarray(v, dtype=np.float64))
    return a.sum(axis=0) if a.ndim == 3 else a


def _bars(names: list[str], values: np.ndarray, title: str, signed: bool = False) -> str:
    """A horizontal bar chart (largest |value| first, at most 20) as base64 PNG."""
    from matplotlib.figure import Figure

    from .build import _figure_png

    order = np.argsort(-np.abs(values), kind="stable")[:20]
    fig = Figure(figsize=(6, 0.3 * len(order) + 1.0))
    ax = fig.add_subplot()
    vals = values[order][::-1]
    colors = ["#c0392b" if v > 0 else "#2e6da4" for v in vals] if signed else "#c0392b"
    ax.barh(np.arange(len(order)), vals, color=colors)
    ax.set_yticks(np.arange(len(order)), [str(names[k]) for k in order][::-1], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return _figure_png(fig, dpi=90)


def _histogram(counts: np.ndarray, edges: np.ndarray, title: str, xlabel: str) -> str:
    from matplotlib.figure import Figure

    from .build import _figure_png

    fig = Figure(figsize=(4.2, 2.4))
    ax = fig.add_subplot()
    widths = np.diff(edges)
    ax.bar(edges[:-1], counts, width=widths if np.all(widths > 0) else 1.0, align="edge",
           color="#4a7fb0", edgecolor="white", linewidth=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("rows", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _figure_png(fig, dpi=90)


def _verify(res) -> list[dict]:
    from ..batch.store import sha256_file

    rows = []
    for s in res.shards:
        path = res.out / s["file"]
        state = "missing" if not path.exists() else ("ok" if sha256_file(path) == s["sha256"] else
                                                      "checksum differs")
        rows.append({"index": s["index"], "rows": f"{s['start']}..{s['stop'] - 1}", "file": s["file"],
                     "sha256": s["sha256"][:16], "status": s.get("status", "done"), "check": state})
    return rows


def _examples(res, k: int) -> list[dict]:
    n = len(res)
    if n == 0 or k == 0:
        return []
    picks = sorted({int(round(i * (n - 1) / max(k - 1, 1))) for i in range(min(k, n))})
    out = []
    for i in picks:
        e = res[i]
        row = {"index": i, "output": _fmt(None if e.output is None else float(np.ravel(e.output)[0])),
               "target": _fmt(None if e.target is None else np.ravel(e.target)[0]), "png": None, "top": [],
               "metrics": []}
        v = e.values
        if isinstance(v, np.ndarray) and v.ndim in (3, 4):
            row["png"] = _heat(_image(v[0]))
        elif isinstance(v, np.ndarray) and v.ndim == 2:
            names = e.feature_names or [f"f{j}" for j in range(v.shape[1])]
            if "tokens" in e.meta:
                m = int(np.asarray(e.meta["attention_mask"])[0].sum())
                names = [str(t) for t in e.meta["tokens"][0][:m]]
                vals = v[0, :m]
            else:
                vals = v[0]
            row["png"] = _bars(list(names), np.asarray(vals, dtype=np.float64), f"row {i}", signed=True)
            top = np.argsort(-np.abs(vals), kind="stable")[:8]
            row["top"] = [(str(names[j]), _fmt(vals[j])) for j in top]
        out.append(row)
    if res.metric_names:  # one read of each metric column for all the rows shown
        cols = {m: res.metric(m) for m in res.metric_names}
        for row in out:
            row["metrics"] = [(m, _fmt(cols[m][row["index"]])) for m in res.metric_names]
    return out


def render_batch(out: str | Path, *, masks: Any = None, examples: int = 4, bins: int = 20,
                 title: str | None = None) -> str:
    """The HTML of the batch report of output folder ``out`` (see the module notes).

    Parameters
    ----------
    out : str or Path
        An output folder of :func:`lumos.batch.explain_dataset` (finished, or unfinished: the
        finished shards are shown and the status says so).
    masks : array-like of bool, shape (rows, H, W), optional
        A region per image (a memory-mapped ``.npy`` works): adds the masks section.
    examples : int, default 4
        Rows shown in full, evenly spaced over the data set.
    bins : int, default 20
        Histogram bins of the metric distributions.
    title : str, optional

    Returns
    -------
    str
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    import lumos
    from ..batch import open as open_results
    from ..core.validation import check_number

    examples = int(check_number(examples, "examples", low=0, integer=True))
    res = open_results(out)
    man = res.manifest
    n = len(res)
    values_kind = "none"
    attributions: dict[str, Any] = {}
    if res.shards:
        first = res._read(0)
        v = first["values"]
        if isinstance(v, np.ndarray) and v.ndim == 2 and "tokens" not in first:
            values_kind = "features"
            names = res.feature_names or [f"f{j}" for j in range(v.shape[1])]
            mabs = res.mean_abs()
            order = np.argsort(-mabs, kind="stable")
            attributions = {"png": _bars(names, mabs, f"mean |attribution| over {n} rows"),
                            "rows": [(str(names[j]), _fmt(mabs[j])) for j in order]}
        elif isinstance(v, np.ndarray) and v.ndim in (3, 4):
            values_kind = "image"
            mabs = res.mean_abs()
            m = _image(mabs)
            attributions = {"png": _heat(m), "shape": "×".join(map(str, np.shape(v)[1:])),
                            "max": _fmt(float(m.max())), "argmax": str(tuple(int(t) for t in
                                                                          np.unravel_index(int(np.argmax(m)), m.shape)))}
        else:
            values_kind = "tokens" if "tokens" in first else "several"
    mask_section = None
    if masks is not None:
        share = res.mask_share(masks)
        finite = share[np.isfinite(share)]
        counts, edges = np.histogram(finite, bins=10, range=(0.0, 1.0))
        mask_section = {"n": len(share), "mean": _fmt(float(finite.mean()) if len(finite) else float("nan")),
                        "mostly": _fmt(float(np.mean(share > 0.5))), "undefined": int(len(share) - len(finite)),
                        "png": _histogram(counts, edges, "share of |attribution| inside the mask",
                                          "share inside")}
    metrics = []
    for name in res.metric_names:
        d = res.metric_distribution(name, bins=bins)
        metrics.append({"name": name, "direction": d.direction, "count": d.count, "nonfinite": d.nonfinite,
                        "mean": _fmt(d.mean), "std": _fmt(d.std),
                        "quantiles": [(f"{q:g}", _fmt(v)) for q, v in d.quantiles.items()],
                        "params": json.dumps(man["metrics"][name], sort_keys=True),
                        "png": _histogram(d.counts, d.edges, f"{name} ({d.direction} is better)", name)
                        if d.count else None})
    model = man.get("model", {})
    job = [("method", man.get("method")), ("parameters", json.dumps(man.get("params", {}), sort_keys=True)),
           ("seed", man.get("seed")), ("per row", man.get("per_row")), ("shard size", man.get("shard_size")),
           ("model factory", model.get("factory")), ("weights SHA-256", model.get("weights_sha256") or "–"),
           ("model hash", model.get("hash")),
           ("data", f"{man.get('data', {}).get('kind')}: {man.get('data', {}).get('name')}"),
           ("data SHA-256", man.get("data", {}).get("sha256") or "– (unfinished)"),
           ("rows", n), ("status", man.get("status")), ("lumos", lumos.__version__)]
    sections = [{"id": i, "title": t} for i, t in BATCH_SECTIONS if i != "masks" or mask_section is not None]
    env = Environment(loader=PackageLoader("lumos.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    return env.get_template("batch.html.j2").render(
        title=title or f"lumos batch report: {man.get('method')} over {n} rows",
        folder=str(Path(out)), sections=sections, job=[(k, _fmt(v)) for k, v in job], shards=_verify(res),
        complete=res.complete, values_kind=values_kind, attributions=attributions, masks=mask_section,
        metrics=metrics, examples=_examples(res, examples), n=n)


def build_batch(out: str | Path, path: str | Path | None = None, **kwargs: Any) -> Path:
    """Write :func:`render_batch` of output folder ``out`` to ``path`` (default ``out/report.html``).

    Returns the path written (atomically).
    """
    from ..core.io import atomic_write

    path = Path(path) if path is not None else Path(out) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_batch(out, **kwargs).encode("utf-8"))
    return path
