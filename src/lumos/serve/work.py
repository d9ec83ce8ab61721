"""The work of one ``lumos serve`` job: explain one input with the chosen methods, score each map
with a few fast metrics, and draw the pictures.

Runs in a job's worker thread (:mod:`lumos.serve.jobs`). Each method is one stage of the job's
progress; a method or a metric that fails is reported in the result beside the others (its message,
not a traceback), so that one bad method does not lose the rest. Pictures are drawn on
``matplotlib.figure.Figure`` objects (no pyplot state shared between threads).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .jobs import error_message as _message
from .models import ServedModel

__all__ = ["Request", "run_request", "predict"]


@dataclass
class Request:
    """What the user asked for: one input (already read and checked), methods, target, parameters."""

    inputs: Any                      # tensor (1, C, H, W) / (1, F), a one-row DataFrame, or [text]
    input_name: str
    methods: list[str]
    target: Any = "predicted"
    params: dict = field(default_factory=dict)  # method -> user parameters (override the defaults)
    feature_names: list[str] | None = None     # table rows: the columns, in the model's order


def _figure_png(fig, dpi: int = 90) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _picture(expl, served: ServedModel) -> bytes | None:
    """The map as a PNG: a heatmap over the image with its colour bar, or the row's signed bars."""
    from matplotlib.figure import Figure

    if served.kind == "text":
        return None
    if served.kind == "image":
        from ..display.heatmap import HeatmapDisplay

        fig = Figure(figsize=(3.6, 3.0), layout="constrained")
        HeatmapDisplay.from_explanation(expl, index=0, title=expl.method).plot(ax=fig.add_subplot(), colorbar=True)
        return _figure_png(fig)
    from ..display.explanation import plot_explanation

    n = np.shape(expl.values)[-1]
    fig = Figure(figsize=(4.6, 1.0 + 0.3 * min(n, 20)), layout="constrained")
    ax = fig.add_subplot()
    plot_explanation(expl, "bar", index=0, ax=ax)
    ax.set_title(expl.method, fontsize=9)
    return _figure_png(fig)


def _tokens_html(expl) -> str:
    from ..display.text import TextDisplay

    return TextDisplay.from_explanation(expl, index=0, title=expl.method).to_html()


def predict(served: ServedModel, inputs: Any) -> dict | None:
    """The model's prediction for the one input: class, name and probability (None when its output
    is not a set of class scores)."""
    import torch

    model = served.model
    try:
        if served.kind == "text":
            from ..core.torch_model import ModelGuard

            enc = served.tokenizer(list(inputs), return_tensors="pt", padding=True, truncation=True)
            with ModelGuard(model), torch.no_grad():
                out = model(**enc)
            out = getattr(out, "logits", out)
        elif isinstance(model, torch.nn.Module):
            from ..core.torch_model import ModelGuard

            with ModelGuard(model), torch.no_grad():
                out = model(inputs)
        else:
            f = getattr(model, "predict_proba", None)
            if f is None:
                return None
            p = np.asarray(f(inputs), dtype=np.float64)[0]
            k = int(np.argmax(p))
            names = served.class_names or [str(c) for c in getattr(model, "classes_", [])] or None
            return {"class": k, "name": names[k] if names and k < len(names) else f"class {k}",
                    "probability": float(p[k])}
        out = out.detach().double()
        if out.ndim != 2 or out.shape[1] < 2:
            return None
        p = torch.softmax(out, 1)[0].numpy()
    except Exception:  # noqa: BLE001 - the explanation runs anyway; a prediction is a courtesy
        return None
    k = int(np.argmax(p))
    names = served.class_names
    return {"class": k, "name": names[k] if names and k < len(names) else f"class {k}", "probability": float(p[k])}


def _score(name: str, params: dict, served: ServedModel, expl) -> float:
    from ..metrics.registry import evaluate, get_metric

    info = get_metric(name)
    kw = dict(params)
    if served.kind == "text" and "tokenizer" in info.parameters:
        kw["tokenizer"] = served.tokenizer
    value = float(evaluate(name, served.model, expl, **kw).mean)
    if not np.isfinite(value):  # e.g. the sparseness of an all-zero map: say so instead of a NaN
        raise ValueError(f"{name} is undefined for this map ({value}); an all-zero or constant map has "
                         "no ranking of features")
    return value


def run_request(job, served: ServedModel, req: Request) -> dict:
    """Explain ``req.inputs`` with every method of ``req.methods`` (one job stage each) and score
    each explanation; returns the RESULT JSON of SERVE_API and stores PNGs / value arrays in
    ``job.files``."""
    from ..core.registry import explain
    from ..metrics.registry import get_metric

    metrics = served.metrics()
    pred = predict(served, req.inputs)
    result = {"kind": served.kind, "input": {"name": req.input_name, "shape": _shape(req.inputs)},
              "target": None, "target_name": None, "prediction": pred,
              "metrics": [{"name": k, "direction": get_metric(k).direction,
                           "description": get_metric(k).description} for k in metrics],
              "methods": [], "tokens": None, "features": None,
              "text": req.inputs[0] if served.kind == "text" else None, "row": None}
    if served.kind == "table":
        names = req.feature_names or served.feature_names or []
        values = req.inputs.iloc[0].tolist() if hasattr(req.inputs, "iloc") else np.asarray(req.inputs)[0].tolist()
        result["features"] = [str(n) for n in names]
        result["row"] = [{"name": str(n), "value": v if isinstance(v, str) else f"{float(v):.6g}"}
                         for n, v in zip(names, values)]
    n = len(req.methods)
    for i, method in enumerate(req.methods):
        job.step(2 * i, 2 * n, method)  # each method: two equal stages, the explanation then its scores
        params = served.method_params(method)
        params.update(req.params.get(method, {}))
        if served.kind == "table" and not hasattr(req.inputs, "iloc") and req.feature_names:
            params["feature_names"] = list(req.feature_names)  # tensor rows: name the bars
        entry = {"method": method, "params": _shown(params), "seconds": None,
                 "error": None, "map_url": None, "values_url": None, "shape": None, "scores": {},
                 "score_errors": {}, "tokens_html": None}
        t0 = time.perf_counter()
        try:
            expl = explain(served.model, req.inputs, method=method, target=req.target, **params)
        except Exception as err:  # noqa: BLE001 - one method failing is shown beside the others
            entry["error"] = _message(err)
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            result["methods"].append(entry)
            continue
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        values = np.asarray(expl.values)
        entry["shape"] = list(values.shape)
        buf = io.BytesIO()
        np.save(buf, values, allow_pickle=False)
        job.files[f"values/{method}.npy"] = buf.getvalue()
        entry["values_url"] = f"/api/jobs/{job.id}/values/{method}.npy"
        if expl.target is not None and result["target"] is None:
            t = int(np.asarray(expl.target).ravel()[0])
            result["target"] = t
            names = served.class_names
            result["target_name"] = names[t] if names and 0 <= t < len(names) else f"class {t}"
        if served.kind == "text":
            n_tok = int(np.asarray(expl.meta.get("n_tokens", [values.shape[1]]))[0])
            result["tokens"] = [str(t) for t in np.asarray(expl.meta["tokens"])[0][:n_tok]]
            entry["tokens_html"] = _tokens_html(expl)
        try:
            png = _picture(expl, served)
        except Exception as err:  # noqa: BLE001
            entry["error"] = f"no picture: {_message(err)}"
            png = None
        if png is not None:
            job.files[f"maps/{method}.png"] = png
            entry["map_url"] = f"/api/jobs/{job.id}/maps/{method}.png"
        job.step(2 * i + 1, 2 * n, f"{method}: metrics")
        for k, kw in metrics.items():
            try:
                entry["scores"][k] = _score(k, kw, served, expl)
            except Exception as err:  # noqa: BLE001 - a metric that does not apply says why
                entry["scores"][k] = None
                entry["score_errors"][k] = _message(err)
        result["methods"].append(entry)
    if result["methods"] and all(e["values_url"] is None for e in result["methods"]):
        # nothing to show: the job failed (the server goes on serving)
        raise ValueError("every method failed: " + "; ".join(f"{e['method']}: {e['error']}"
                                                             for e in result["methods"]))
    if result["target"] is None and req.target not in (None, "predicted"):
        result["target"] = req.target
    if result["target_name"] is None and served.kind == "table" and not served.is_torch:
        result["target_name"] = served.output_name or served.explain_params.get("output", "the model's output")
    return result


def _shape(inputs: Any) -> list[int]:
    if isinstance(inputs, list):
        return [len(inputs)]
    return [int(s) for s in np.shape(inputs)]


def _shown(params: dict) -> dict:
    """The parameters as shown: numbers, strings and short lists (arrays and tokenizers by name)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= 8 and all(isinstance(x, (int, float, str)) for x in v):
            out[k] = list(v)
        else:
            out[k] = f"<{type(v).__name__}>"
    return out
