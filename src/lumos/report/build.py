"""``lumos.report.build``: one self-contained HTML report of several explanation methods.

The report holds, in this order:

1. **inputs**: every input (a thumbnail for images), its label when given, the model's prediction
   and probability, and the target every method explains;
2. **maps**: per input, the maps of every chosen method side by side (:func:`lumos.display.plot_grid`);
3. **metrics**: the table of :func:`lumos.metrics.compare` (mean ± spread, rank per metric, mean
   rank; the ``random`` chance baseline included);
4. **methods**: a card per method (what it computes, the parameters it ran with, its known failure
   modes, :mod:`lumos.report.cards`);
5. **reproducibility**: seed, versions of lumos/torch/numpy/Python, parameters, and the SHA-256 of
   the model's state dict.

The file is self-contained: inline CSS, images as base64 PNG, no script, no network reference. It
is rendered with Jinja2 with autoescaping on, so class names, labels and input names are shown as
text, never run. The body holds no time stamp: the same model, inputs and seed give the same file.
"""
from __future__ import annotations

import base64
import hashlib
import io
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["build", "render", "model_sha256", "SECTIONS"]

# (id, title) of every section, in order; tests check each is present
SECTIONS = (("inputs", "Inputs and predictions"), ("maps", "Maps side by side"),
            ("metrics", "Metrics and ranking"), ("methods", "Method cards"),
            ("reproducibility", "Reproducibility"))


def model_sha256(model: Any) -> str:
    """SHA-256 of a torch module's state dict (names, dtypes, shapes and bytes, in key order).

    ``"n/a (not a torch module)"`` for other models.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        return "n/a (not a torch module)"
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _png(array: np.ndarray) -> str:
    """(H, W) or (H, W, 3) floats in [0, 1] -> base64 PNG (Pillow; no metadata, so deterministic)."""
    from PIL import Image

    a = np.clip(np.asarray(array, dtype=np.float64), 0, 1)
    im = Image.fromarray(np.round(a * 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure_png(fig, dpi: int) -> str:
    """A matplotlib figure as base64 PNG without the software/date metadata."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _predict(model: Any, inputs: Any) -> np.ndarray | None:
    """The model's outputs (n, classes) as probabilities where they look like logits, else None."""
    import torch

    try:
        if isinstance(model, torch.nn.Module):
            from ..core.torch_model import ModelGuard

            x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
            with ModelGuard(model), torch.no_grad():
                out = model(x)
            out = out.detach().cpu().double()
            if out.ndim == 2 and out.shape[1] > 1:
                return torch.softmax(out, 1).numpy()
            return out.numpy()
        f = getattr(model, "predict_proba", None) or model
        out = np.asarray(f(inputs), dtype=np.float64)
        return out if out.ndim == 2 else None
    except Exception:  # a prediction the report cannot show is left out, the rest still builds
        return None


def _name(names: Sequence[str] | None, k: int) -> str:
    return str(names[k]) if names is not None and 0 <= k < len(names) else f"class {k}"


def _params_text(params: dict) -> str:
    from ..display._common import _short_value

    return ", ".join(f"{k}={_short_value(v)}" for k, v in params.items())


def _comparison_rows(comp) -> dict:
    from ..metrics.compare import _fmt

    ranks, mean_rank = comp.ranks(), comp.mean_ranks()
    rows = []
    for m in comp.order():
        cells = []
        for k in comp.metrics:
            r = comp.result(m, k)
            if r is None:
                why = comp.results.get(m, {}).get(k)
                cells.append({"text": "n/a" + (f" ({why})" if isinstance(why, str) else ""), "best": False})
                continue
            rk = ranks.get(k, {}).get(m)
            cells.append({"text": f"{_fmt(r.mean)} ± {_fmt(r.std)}" + (f" ({rk:g})" if rk is not None else ""),
                          "best": rk == 1})
        mr = mean_rank[m]
        rows.append({"method": m, "cells": cells, "mean_rank": f"{mr:.2f}" if np.isfinite(mr) else "n/a"})
    table = comp.table()
    notes = [line for line in table if line.startswith("scored on")]
    return {"metrics": list(comp.metrics), "rows": rows, "n_samples": comp.n_samples, "notes": notes,
            "arrows": {k: "↑" if comp.direction(k) == "higher" else "↓" for k in comp.metrics}}


def _maps(explanations: dict, inputs: Any, labels: list[str], dpi: int) -> list[dict]:
    import matplotlib.pyplot as plt

    from ..display.heatmap import plot_grid

    out = []
    n = len(inputs)
    for i in range(n):
        item = {"index": i, "caption": labels[i].replace("\n", "; "), "png": "", "note": ""}
        if not explanations:
            item["note"] = "no method to draw"
        else:
            before = set(plt.get_fignums())
            try:
                first = next(iter(explanations.values()))
                if np.ndim(first.values) == 2:  # a table: one bar chart of the row per method
                    fig = _table_row_figure(explanations, i)
                else:
                    images = inputs if np.ndim(inputs) == 4 else None
                    fig = plot_grid(explanations, images, indices=[i], row_labels=[labels[i]],
                                    colorbar="relative")
                item["png"] = _figure_png(fig, dpi)
            except (ValueError, TypeError, IndexError) as err:
                item["note"] = f"no picture of these maps: {err}"
            finally:
                for num in set(plt.get_fignums()) - before:
                    plt.close(num)
        out.append(item)
    return out


def _table_row_figure(explanations: dict, i: int):
    """Row ``i`` of table explanations: one signed bar chart per method, side by side."""
    import matplotlib.pyplot as plt

    from ..display.explanation import plot_explanation

    k = len(explanations)
    n_feat = np.shape(next(iter(explanations.values())).values)[1]
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 1.0 + 0.3 * min(n_feat, 10)), squeeze=False,
                             layout="constrained")
    for ax, (name, e) in zip(axes[0], explanations.items()):
        plot_explanation(e, "bar", index=i, ax=ax)
        ax.set_title(name, fontsize=9)
    return fig


def render(model: Any, inputs: Any, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
           *, target: Any = "predicted", masks: Any = None, labels: Sequence[int] | None = None,
           class_names: Sequence[str] | None = None, input_names: Sequence[str] | None = None,
           feature_names: Sequence[str] | None = None, method_params: dict | None = None,
           metric_params: dict | None = None, seed: int = 0, title: str = "lumos report", dpi: int = 80,
           log: Callable[[str], None] | None = None, timings: dict | None = None) -> str:
    """The report's HTML as a string; see :func:`build` for the parameters.

    ``timings``, when a dict, receives the seconds spent per section.
    """
    import matplotlib

    from .. import __version__
    from ..core.io import class_names_of
    from ..display.heatmap import image_for_display
    from ..metrics.compare import RANDOM, compare, default_methods
    from .cards import method_card

    import torch

    timings = {} if timings is None else timings
    n = len(inputs)
    if n == 0:
        raise ValueError("inputs must hold at least one sample")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} inputs")
    if input_names is not None and len(input_names) != n:
        raise ValueError(f"input_names has {len(input_names)} entries for {n} inputs")
    x_shape = tuple(np.shape(inputs))
    if feature_names is not None:
        feature_names = [str(f) for f in feature_names]
        if len(x_shape) != 2 or len(feature_names) != x_shape[1]:
            raise ValueError(f"feature_names: one name per column of table inputs (n, features); got "
                             f"{len(feature_names)} names for inputs of shape {x_shape}")
    names = [str(c) for c in class_names] if class_names is not None else class_names_of(model)
    methods = list(methods) if methods is not None else default_methods(model, inputs)
    if RANDOM not in methods:
        methods.append(RANDOM)  # the chance baseline of the table

    matplotlib.use("Agg")  # the report only writes files
    t0 = time.perf_counter()
    comp = compare(model, inputs, methods, metrics, target=target, masks=masks, method_params=method_params,
                   metric_params=metric_params, seed=seed, log=log)
    timings["explain and score (compare)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probs = _predict(model, inputs)
    first = next(iter(comp.explanations.values()), None)
    explained = None if first is None or first.target is None else np.asarray(first.target).ravel()
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    pictures = x.ndim == 4 and x.shape[1] in (1, 3)
    rows, row_labels = [], []
    for i in range(n):
        pred = int(np.argmax(probs[i])) if probs is not None and probs.ndim == 2 and probs.shape[1] > 1 else None
        label = _name(names, int(labels[i])) if labels is not None else "—"
        if input_names is not None:
            label = f"{input_names[i]}: {label}" if labels is not None else str(input_names[i])
        exp = _name(names, int(explained[i])) if explained is not None and explained.size == n else str(target)
        values = "" if pictures or x.ndim != 2 else ", ".join(
            f"{f}={v:.4g}" for f, v in zip(feature_names or [f"x{j}" for j in range(x.shape[1])], x[i]))
        rows.append({"index": i, "label": label, "png": _png(image_for_display(x[i])) if pictures else "",
                     "features": values,
                     "predicted": _name(names, pred) if pred is not None else "—",
                     "probability": f"{probs[i, pred]:.3f}" if pred is not None else "—", "explained": exp})
        true = f"true {label}" if labels is not None and input_names is None else label
        row_labels.append(f"{true}\npred {rows[-1]['predicted']}" if labels is not None or input_names is not None
                          else f"pred {rows[-1]['predicted']}")
    timings["inputs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    drawn = {m: e for m, e in comp.explanations.items() if m != RANDOM}
    if feature_names is not None:
        for e in drawn.values():
            if not e.several and np.shape(e.values)[-1:] == (len(feature_names),):
                e.feature_names = list(feature_names)
    maps = _maps(drawn, x if pictures else inputs, row_labels, dpi)
    timings["maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = _comparison_rows(comp)
    cards = []
    for m in methods:
        card = method_card(m)
        e = comp.explanations.get(m)
        card["params"] = _params_text(e.params) if e is not None else ""
        cards.append(card)
    timings["metrics and cards"] = time.perf_counter() - t0

    import sys

    repro = [("lumos", __version__), ("torch", torch.__version__), ("numpy", np.__version__),
             ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
             ("seed", str(seed)), ("model", type(model).__name__), ("model SHA-256", model_sha256(model)),
             ("inputs", f"{tuple(x.shape)} {x.dtype}"), ("inputs SHA-256",
                                                          hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()),
             ("target", str(target) if not callable(target) else getattr(target, "__name__", "callable")),
             ("methods", ", ".join(methods)), ("metrics", ", ".join(comp.metrics))]
    repro += [(f"parameters of {c['name']}", c["params"] or "defaults") for c in cards]
    repro += [(f"parameters of metric {k}", _params_text(v)) for k, v in (metric_params or {}).items()]

    from jinja2 import Environment, PackageLoader, select_autoescape

    t0 = time.perf_counter()
    env = Environment(loader=PackageLoader("lumos.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    html = env.get_template("report.html.j2").render(
        title=title, subtitle=f"{len(drawn)} method(s) on {n} input(s), built by lumos {__version__}",
        sections=[{"id": s, "title": t} for s, t in SECTIONS], n_inputs=n, inputs=rows, has_pictures=pictures,
        target_text=str(target) if not callable(target) else getattr(target, "__name__", "a callable"),
        maps=maps, comparison=table, cards=cards, repro=repro)
    timings["render"] = time.perf_counter() - t0
    return html


def build(model: Any, inputs: Any, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
          *, target: Any = "predicted", out: str | Path = "report.html", masks: Any = None,
          labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
          input_names: Sequence[str] | None = None, feature_names: Sequence[str] | None = None,
          method_params: dict | None = None, metric_params: dict | None = None, seed: int = 0,
          title: str = "lumos report", dpi: int = 80,
          log: Callable[[str], None] | None = None, timings: dict | None = None) -> Path:
    """Write one self-contained HTML report comparing explanation methods on ``inputs``.

    Parameters
    ----------
    model : torch.nn.Module or callable
        The model explained (a torch module for gradient and propagation methods).
    inputs : Tensor or array, shape (n, ...)
        The samples; images ``(n, C, H, W)`` get thumbnails and map grids, tables ``(n, features)``
        their values and one bar chart per method.
    methods : sequence of str, optional
        Registered method names (:func:`lumos.methods`); default
        :func:`lumos.metrics.compare.default_methods`. The ``"random"`` chance baseline is always
        added to the metric table (it is not drawn).
    metrics : sequence of str, optional
        Metric names; default :func:`lumos.metrics.compare.default_metrics`.
    target : int, sequence, "predicted" or callable, default "predicted"
        What every method explains.
    out : str or Path, default "report.html"
        The file written (its folder is created).
    masks : bool array (n, H, W), optional
        Ground-truth evidence, for the localisation metrics.
    labels : sequence of int, optional
        True classes, shown beside the predictions.
    class_names : sequence of str, optional
        Names of the classes (default: the model's ``class_names`` where it has them).
    input_names : sequence of str, optional
        One name per input.
    feature_names : sequence of str, optional
        For table inputs ``(n, features)``: one name per column, shown with each row's values and
        on the bar charts that stand for the maps.
    method_params, metric_params : dict of str to dict, optional
        Per-method and per-metric parameters, as for :func:`lumos.metrics.compare.compare`.
    seed : int, default 0
        The seed of the random baseline (and shown in the reproducibility block).
    title : str, default "lumos report"
    dpi : int, default 80
        Resolution of the map pictures.
    log : callable, optional
        Receives a progress line per method.
    timings : dict, optional
        Receives the seconds spent per section.

    Returns
    -------
    Path
        The report written.
    """
    html = render(model, inputs, methods, metrics, target=target, masks=masks, labels=labels,
                  class_names=class_names, input_names=input_names, feature_names=feature_names,
                  method_params=method_params,
                  metric_params=metric_params, seed=seed, title=title, dpi=dpi, log=log, timings=timings)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


DEMO_METHODS = ("saliency", "integrated_gradients", "gradcam", "guided_backprop", "occlusion")
DEMO_METRICS = ("deletion", "insertion", "randomisation", "sparseness", "pointing_game", "relevance_mass_accuracy")
# cheap settings, so that the demo report builds in seconds (the metrics' own defaults are for real use)
DEMO_METHOD_PARAMS = {"occlusion": {"window": 8, "stride": 8}}
DEMO_METRIC_PARAMS = {"deletion": {"n_steps": 16}, "insertion": {"n_steps": 16},
                      "randomisation": {"layers": 2, "keep_maps": False}}


def demo_report(out: str | Path = "lumos-out/report/report.html", n: int = 4, seed: int = 0,
                log: Callable[[str], None] | None = None, timings: dict | None = None) -> Path:
    """The demo world's report: the shipped DemoCNN on ``n`` shapes test images (with masks).

    Torch runs on one thread while it builds (restored after): the tiny model's small batches run
    several times faster on a shared machine (3.8 s instead of 22 s on two loaded cores).
    """

    from ..data import load_demo_model, shapes_dataset

    model = load_demo_model()
    data = shapes_dataset(n, split="test", seed=7)
    from ..core.execution import torch_threads

    with torch_threads(1):
        return _build_demo(model, data, out, seed, log, timings)


def _build_demo(model, data, out, seed, log, timings) -> Path:
    return build(model, data.images, list(DEMO_METHODS), list(DEMO_METRICS), target="predicted", out=out,
                 masks=data.masks.numpy(), method_params=DEMO_METHOD_PARAMS, metric_params=DEMO_METRIC_PARAMS,
                 labels=data.labels.tolist(), class_names=data.class_names, seed=seed,
                 title="lumos report: the shapes demo world", log=log, timings=timings)


def report_section(out_dir: Path, quick: bool, files: dict) -> list[str]:
    """The demo's report section: :func:`demo_report` into ``out_dir/report.html`` (4 images in the
    tour, 8 in full), with the build time per part."""
    timings: dict = {}
    t0 = time.perf_counter()
    path = demo_report(Path(out_dir) / "report.html", n=4 if quick else 8, timings=timings)
    total = time.perf_counter() - t0
    files[str(path)] = ("the HTML report: inputs and predictions, maps of 5 methods side by side, the metric "
                        "table with its ranking, method cards, reproducibility (open it in a browser)")
    lines = [f"  {path.name}: {len(DEMO_METHODS)} methods on {4 if quick else 8} demo images, "
             f"{path.stat().st_size / 1e3:.0f} kB, one self-contained file (no network)"]
    lines += [f"  {k:<30}{v:6.2f} s" for k, v in timings.items()]
    lines.append(f"  {'total':<30}{total:6.2f} s")
    return lines
