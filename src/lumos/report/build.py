"""``lumos.report.build``: one self-contained HTML report of several explanation methods.

The report of images holds, in this order (tables and texts: see :data:`TABLE_SECTIONS`,
:data:`TEXT_SECTIONS`, :mod:`lumos.report.tabular` and :mod:`lumos.report.text`):

1. **inputs**: every input (a thumbnail for images), its label when given, the model's prediction
   and probability, and the target every method explains;
2. **maps**: per input, the maps of every chosen method side by side (:func:`lumos.display.plot_grid`);
3. **metrics**: the table of :func:`lumos.metrics.compare` (mean ± spread, rank per metric, mean
   rank; the ``random`` chance baseline included);
4. **methods**: a card per method (what it computes, the parameters it ran with, its known failure
   modes, :mod:`lumos.report.cards`);
5. **reproducibility**: seed, versions of lumos/torch/numpy/Python, parameters, and the SHA-256 of
   the model's state dict.

The file is self-contained: inline CSS, images as base64 PNG, no script, no network reference
(a text report's optional interactive head views run in sandboxed ``srcdoc`` frames, with no
network, see :mod:`lumos.report.text`). It
is rendered with Jinja2 with autoescaping on, so class names, labels and input names are shown as
text, never run. The body holds no time stamp: the same model, inputs and seed give the same file.
"""
from __future__ import annotations

import base64
import hashlib
import inspect
import io
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._figures import drawing

__all__ = ["build", "render", "model_sha256", "report_kind", "sections_for", "SECTIONS", "TABLE_SECTIONS",
           "TEXT_SECTIONS", "SECTIONS_BY_KIND", "demo_report", "tabular_demo_report", "text_demo_report"]

# (id, title) of every section, in order; tests check each is present
SECTIONS = (("inputs", "Inputs and predictions"), ("maps", "Maps side by side"),
            ("metrics", "Metrics and ranking"), ("methods", "Method cards"),
            ("reproducibility", "Reproducibility"))
# tables (n, features): attribution pictures per row, a beeswarm, global effects (with a background)
TABLE_SECTIONS = (("inputs", "Inputs and predictions"), ("attributions", "Attributions per input"),
                  ("summary", "Summary of the explained rows"), ("effects", "Global effects"),
                  ("metrics", "Metrics and ranking"), ("methods", "Method cards"),
                  ("reproducibility", "Reproducibility"))
# texts: token highlights per method, attention views (where the model returns attentions)
TEXT_SECTIONS = (("inputs", "Inputs and predictions"), ("tokens", "Token highlights"),
                 ("attention", "Attention views"), ("metrics", "Metrics and ranking"),
                 ("methods", "Method cards"), ("reproducibility", "Reproducibility"))
SECTIONS_BY_KIND = {"image": SECTIONS, "table": TABLE_SECTIONS, "text": TEXT_SECTIONS}


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
    from ..display.metrics import comparison_rows
    from ..metrics.comparison import _fmt

    return comparison_rows(comp, _fmt)  # the notebook view of a Comparison shows the same table


def _maps(explanations: dict, inputs: Any, labels: list[str], dpi: int) -> list[dict]:
    from ..display.heatmap import plot_grid

    out = []
    n = len(inputs)
    for i in range(n):
        item = {"index": i, "caption": labels[i].replace("\n", "; "), "png": "", "note": ""}
        if not explanations:
            item["note"] = "no method to draw"
        else:
            with drawing(item, "no picture of these maps"):
                images = inputs if np.ndim(inputs) == 4 else None
                fig = plot_grid(explanations, images, indices=[i], row_labels=[labels[i]], colorbar="relative")
                item["png"] = _figure_png(fig, dpi)
        out.append(item)
    return out


def report_kind(inputs: Any, tokenizer: Any = None) -> str:
    """``"text"`` (strings, or a ``tokenizer`` given), ``"table"`` (2-d inputs ``(n, features)``)
    or ``"image"`` (everything else: images ``(n, C, H, W)`` get thumbnails)."""
    from .text import is_text_input

    if tokenizer is not None or is_text_input(inputs):
        return "text"
    return "table" if np.ndim(inputs) == 2 else "image"


def sections_for(kind: str, *, effects: bool = True, attention: bool = True) -> list[tuple[str, str]]:
    """The sections of a report of ``kind``, in order; ``effects`` (a table report with a
    ``background``) and ``attention`` (a text model that returns attentions) say whether the
    optional sections apply."""
    out = list(SECTIONS_BY_KIND[kind])
    if not effects:
        out = [s for s in out if s[0] != "effects"]
    if not attention:
        out = [s for s in out if s[0] != "attention"]
    return out


def _repro(model, seed, target, methods, metric_names, cards, metric_params, inputs_desc, inputs_sha) -> list:
    import sys

    import torch

    from .. import __version__

    repro = [("lumos", __version__), ("torch", torch.__version__), ("numpy", np.__version__),
             ("python", f"{platform.python_implementation()} {sys.version.split()[0]}"),
             ("seed", str(seed)), ("model", type(model).__name__), ("model SHA-256", model_sha256(model)),
             ("inputs", inputs_desc), ("inputs SHA-256", inputs_sha),
             ("target", str(target) if not callable(target) else getattr(target, "__name__", "callable")),
             ("methods", ", ".join(methods)), ("metrics", ", ".join(metric_names))]
    repro += [(f"parameters of {c['name']}", c["params"] or "defaults") for c in cards]
    repro += [(f"parameters of metric {k}", _params_text(v)) for k, v in (metric_params or {}).items()]
    return repro


def _cards(methods, explanations) -> list[dict]:
    from .cards import method_card

    cards = []
    for m in methods:
        card = method_card(m)
        e = explanations.get(m)
        card["params"] = _params_text(e.params) if e is not None else ""
        cards.append(card)
    return cards


def _html(**context) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("lumos.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    return env.get_template("report.html.j2").render(**context)


def render(model: Any, inputs: Any, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
           *, target: Any = "predicted", masks: Any = None, labels: Sequence[int] | None = None,
           class_names: Sequence[str] | None = None, input_names: Sequence[str] | None = None,
           feature_names: Sequence[str] | None = None, tokenizer: Any = None, background: Any = None,
           background_labels: Any = None, effect_features: Any = None, n_effect_features: int = 3,
           categorical_features: Any = None, head_view: bool = True, description: str | None = None,
           method_params: dict | None = None,
           metric_params: dict | None = None, seed: int = 0, title: str = "lumos report", dpi: int = 80,
           log: Callable[[str], None] | None = None, timings: dict | None = None,
           results: dict | None = None) -> str:
    """The report's HTML as a string; see :func:`build` for the parameters.

    ``timings``, when a dict, receives the seconds spent per section; ``results``, when a dict,
    receives the objects behind the pictures (``"comparison"``, ``"explanations"``, and for tables
    ``"effects"``), so that they can be checked against direct calls.
    """
    import matplotlib

    from ..core.io import class_names_of
    from ..core.validation import check_number

    timings = {} if timings is None else timings
    results = {} if results is None else results
    kind = report_kind(inputs, tokenizer)
    if kind == "text" and isinstance(inputs, str):
        inputs = [inputs]
    n = len(inputs)
    if n == 0:
        raise ValueError("inputs must hold at least one sample")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} inputs")
    if input_names is not None and len(input_names) != n:
        raise ValueError(f"input_names has {len(input_names)} entries for {n} inputs")
    n_effect_features = check_number(n_effect_features, "n_effect_features", low=0, integer=True)
    if kind != "table":
        for name, value in (("background", background), ("background_labels", background_labels),
                            ("effect_features", effect_features), ("categorical_features", categorical_features)):
            if value is not None:
                raise ValueError(f"{name} goes with table inputs (n, features), for the global effects; "
                                 f"these inputs make a {kind} report")
    if kind == "text":
        from .text import is_text_input

        if not is_text_input(inputs):
            raise ValueError("inputs: a text report (tokenizer= given) needs a list of strings; got "
                             f"{type(inputs).__name__}")
        if tokenizer is None:
            raise ValueError("tokenizer: a text report needs the model's tokenizer (tokenizer=...)")
    names = [str(c) for c in class_names] if class_names is not None else class_names_of(model)
    matplotlib.use("Agg")  # the report only writes files

    def figure_png(fig):
        return _figure_png(fig, dpi)

    if kind == "text":
        return _render_text(model, list(inputs), tokenizer, methods, metrics, target=target, labels=labels,
                            names=names, input_names=input_names, head_view=head_view,
                            method_params=dict(method_params or {}), metric_params=dict(metric_params or {}),
                            seed=seed, title=title, description=description, figure_png=figure_png, log=log,
                            timings=timings, results=results)
    return _render_array(model, inputs, methods, metrics, kind=kind, target=target, masks=masks, labels=labels,
                         names=names, input_names=input_names, feature_names=feature_names, background=background,
                         background_labels=background_labels, effect_features=effect_features,
                         n_effect_features=n_effect_features, categorical_features=categorical_features,
                         method_params=method_params, metric_params=metric_params, seed=seed, title=title,
                         description=description, dpi=dpi, figure_png=figure_png, log=log, timings=timings,
                         results=results)


def _label_text(names, labels, input_names, i) -> str:
    label = _name(names, int(labels[i])) if labels is not None else "—"
    if input_names is not None:
        label = f"{input_names[i]}: {label}" if labels is not None else str(input_names[i])
    return label


def _render_text(model, texts, tokenizer, methods, metrics, *, target, labels, names, input_names, head_view,
                 method_params, metric_params, seed, title, description, figure_png, log, timings, results) -> str:
    from .. import __version__
    from ..metrics.comparison import RANDOM
    from .text import TEXT_METHODS, TEXT_METRICS, text_parts

    if metrics is not None:
        raise ValueError(f"metrics: a text report scores every method by token deletion ({', '.join(TEXT_METRICS)}); "
                         "pass metrics=None and its parameters as metric_params={'token_deletion': {...}}")
    methods = list(methods) if methods is not None else list(TEXT_METHODS)
    if RANDOM not in methods:
        methods.append(RANDOM)
    from ..core.registry import get_method

    for m in methods:
        if m != RANDOM:
            get_method(m)
    parts = text_parts(model, texts, tokenizer, methods, target=target, method_params=method_params,
                       metric_params=metric_params, seed=seed, head_view=head_view, names=names,
                       figure_png=figure_png, log=log, timings=timings)
    comp = parts["comparison"]
    results.update(comparison=comp, explanations=parts["explanations"], target=parts["target"],
                   probabilities=parts["probs"])
    for r in parts["rows"]:
        r["label"] = _label_text(names, labels, input_names, r["index"])
    t0 = time.perf_counter()
    table = _comparison_rows(comp)
    cards = _cards(methods, parts["explanations"])
    timings["metrics and cards"] = time.perf_counter() - t0
    att = parts["attention"]
    sections = sections_for("text", attention=bool(att and att["available"]))
    repro = _repro(model, seed, target, methods, comp.metrics, cards, metric_params, parts["inputs_text"],
                   parts["inputs_sha"])
    repro.insert(7, ("tokenizer", type(tokenizer).__name__))
    t0 = time.perf_counter()
    html = _html(kind="text", title=title, description=description or "",
                 subtitle=f"{len(parts['explanations'])} method(s) on {len(texts)} text(s), built by lumos {__version__}", sections=[{"id": s, "title": t} for s, t in sections],
                 section_ids=[s for s, _ in sections], n_inputs=len(texts), inputs=parts["rows"],
                 has_pictures=False, target_text=str(target) if not callable(target) else getattr(
                     target, "__name__", "a callable"), highlights=parts["highlights"], attention=att,
                 comparison=table, cards=cards, repro=repro, maps=[])
    timings["render"] = time.perf_counter() - t0
    return html


def _render_array(model, inputs, methods, metrics, *, kind, target, masks, labels, names, input_names,
                  feature_names, background, background_labels, effect_features, n_effect_features,
                  categorical_features, method_params, metric_params, seed, title, description, dpi, figure_png, log,
                  timings, results) -> str:
    import torch

    from .. import __version__
    from ..display.heatmap import image_for_display
    from ..metrics.comparison import RANDOM, compare, default_methods

    n = len(inputs)
    x_shape = tuple(np.shape(inputs))
    if feature_names is None and kind == "table" and hasattr(inputs, "columns"):
        feature_names = [str(c) for c in inputs.columns]
    if feature_names is not None:
        feature_names = [str(f) for f in feature_names]
        if len(x_shape) != 2 or len(feature_names) != x_shape[1]:
            raise ValueError(f"feature_names: one name per column of table inputs (n, features); got "
                             f"{len(feature_names)} names for inputs of shape {x_shape}")
    if background_labels is not None and background is None:
        raise ValueError("background_labels goes with background= (the rows the permutation importance shuffles)")
    if background is not None:
        b_shape = tuple(np.shape(background))
        if len(b_shape) != 2 or b_shape[1] != x_shape[1]:
            raise ValueError(f"background: rows of the same {x_shape[1]} features as the inputs; got shape {b_shape}")
        if background_labels is not None and len(background_labels) != b_shape[0]:
            raise ValueError(f"background_labels has {len(background_labels)} entries for {b_shape[0]} background rows")
    methods = list(methods) if methods is not None else default_methods(model, inputs)
    if RANDOM not in methods:
        methods.append(RANDOM)  # the chance baseline of the table
    method_params = {k: dict(v) for k, v in (method_params or {}).items()}
    if background is not None:  # methods with a reference data set use the report's background
        from ..core.registry import get_method

        for m in methods:
            if m != RANDOM and "background" in inspect.signature(get_method(m).func).parameters:
                method_params.setdefault(m, {}).setdefault("background", background)

    t0 = time.perf_counter()
    comp = compare(model, inputs, methods, metrics, target=target, masks=masks, method_params=method_params,
                   metric_params=metric_params, seed=seed, log=log)
    timings["explain and score (compare)"] = time.perf_counter() - t0
    results.update(comparison=comp, explanations=comp.explanations)

    t0 = time.perf_counter()
    probs = _predict(model, inputs)
    first = next(iter(comp.explanations.values()), None)
    explained = None if first is None or first.target is None else np.asarray(first.target).ravel()
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    pictures = x.ndim == 4 and x.shape[1] in (1, 3)
    rows, row_labels = [], []
    for i in range(n):
        pred = int(np.argmax(probs[i])) if probs is not None and probs.ndim == 2 and probs.shape[1] > 1 else None
        label = _label_text(names, labels, input_names, i)
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

    drawn = {m: e for m, e in comp.explanations.items() if m != RANDOM}
    context = {"maps": [], "attributions": [], "summary": None, "effects": None, "effect_notes": {}}
    if kind == "table":
        from . import tabular

        fnames = feature_names or [f"x{j}" for j in range(x.shape[1])]
        for e in drawn.values():
            if not e.several and np.shape(e.values)[-1:] == (len(fnames),):
                e.feature_names = list(fnames)
        t0 = time.perf_counter()
        captions = [lbl.replace("\n", "; ") for lbl in row_labels]
        context["attributions"] = tabular.attribution_items(drawn, x, fnames, captions, figure_png)
        timings["attributions"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        context["summary"] = tabular.summary_item(drawn, figure_png)
        timings["summary"] = time.perf_counter() - t0
        if background is not None:
            t0 = time.perf_counter()
            ranking = next(iter(drawn.values()), None)
            cols = tabular.effect_features_of(ranking, fnames, effect_features, n_effect_features)
            eff_target = None
            if probs is not None and probs.ndim == 2 and probs.shape[1] > 1 and explained is not None:
                # a classifier: the effects of the class most explained rows are explained for (ties: the first)
                eff_target = int(np.bincount(explained.astype(int)).argmax())
            cat = (tabular.column_indices(categorical_features, fnames, "categorical_features")
                   if categorical_features is not None else None)
            context["effects"] = tabular.global_effects(model, background, background_labels, cols, fnames,
                                                        eff_target, seed, figure_png, cat)
            context["effects"]["n_rows"] = len(background)
            context["effects"]["target"] = eff_target
            context["effects"]["class_name"] = _name(names, eff_target) if eff_target is not None else ""
            context["effect_notes"] = tabular.EFFECT_NOTES
            results["effects"] = context["effects"]
            timings["effects"] = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        context["maps"] = _maps(drawn, x if pictures else inputs, row_labels, dpi)
        timings["maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = _comparison_rows(comp)
    cards = _cards(methods, comp.explanations)
    timings["metrics and cards"] = time.perf_counter() - t0
    repro = _repro(model, seed, target, methods, comp.metrics, cards, metric_params, f"{tuple(x.shape)} {x.dtype}",
                   hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest())
    if background is not None:
        b = np.asarray(background)
        repro.insert(9, ("background", f"{tuple(b.shape)} {b.dtype}, SHA-256 "
                                       f"{hashlib.sha256(np.ascontiguousarray(b).tobytes()).hexdigest()}"))
    sections = sections_for(kind, effects=background is not None)
    t0 = time.perf_counter()
    html = _html(kind=kind, title=title, description=description or "",
                 subtitle=f"{len(drawn)} method(s) on {n} input(s), built by lumos {__version__}",
                 sections=[{"id": s, "title": t} for s, t in sections], section_ids=[s for s, _ in sections],
                 n_inputs=n, inputs=rows, has_pictures=pictures,
                 target_text=str(target) if not callable(target) else getattr(target, "__name__", "a callable"),
                 comparison=table, cards=cards, repro=repro, **context)
    timings["render"] = time.perf_counter() - t0
    return html


def build(model: Any, inputs: Any, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
          *, target: Any = "predicted", out: str | Path = "report.html", masks: Any = None,
          labels: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
          input_names: Sequence[str] | None = None, feature_names: Sequence[str] | None = None,
          tokenizer: Any = None, background: Any = None, background_labels: Any = None,
          effect_features: Any = None, n_effect_features: int = 3, categorical_features: Any = None,
          head_view: bool = True, description: str | None = None,
          method_params: dict | None = None, metric_params: dict | None = None, seed: int = 0,
          title: str = "lumos report", dpi: int = 80,
          log: Callable[[str], None] | None = None, timings: dict | None = None,
          results: dict | None = None) -> Path:
    """Write one self-contained HTML report comparing explanation methods on ``inputs``.

    Parameters
    ----------
    model : torch.nn.Module, callable or scikit-learn estimator
        The model explained (a torch module for gradient and propagation methods; a Hugging Face
        classifier for texts).
    inputs : Tensor or array (n, ...), or list of str
        The samples. Images ``(n, C, H, W)`` get thumbnails and map grids (sections
        :data:`SECTIONS`); tables ``(n, features)`` their values, a waterfall or bar chart per
        method and row, a beeswarm, and with ``background`` the global effects
        (:data:`TABLE_SECTIONS`); texts (with ``tokenizer``) token highlights per method and,
        where the model returns attentions, attention views (:data:`TEXT_SECTIONS`).
    methods : sequence of str, optional
        Registered method names (:func:`lumos.methods`); default
        :func:`lumos.metrics.comparison.default_methods` (texts: :data:`lumos.report.text.TEXT_METHODS`).
        The ``"random"`` chance baseline is always added to the metric table (it is not drawn).
    metrics : sequence of str, optional
        Metric names; default :func:`lumos.metrics.comparison.default_metrics`. Texts are scored by
        token deletion (:mod:`lumos.text.faithfulness`) and take no ``metrics``.
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
        For table inputs ``(n, features)``: one name per column (default: a DataFrame's columns,
        else ``x0, x1, ...``), shown with each row's values and on every picture.
    tokenizer : optional
        The text model's tokenizer; makes the report a text report.
    background : array (m, features), optional
        Table reports: the reference rows. Every method with a ``background`` parameter gets it
        (unless ``method_params`` names one), and the global effects (partial dependence + ICE
        and ALE of the top features, :mod:`lumos.effects`) are computed on it. Without it there
        is no "Global effects" section.
    background_labels : array (m,), optional
        The true labels of the background rows: adds permutation importance to the effects.
    effect_features : list of str or int, optional
        The features whose effects are drawn (default: the ``n_effect_features`` with the largest
        mean |attribution| of the first method).
    n_effect_features : int, default 3
    categorical_features : list of str or int, optional
        Table columns that hold category codes: their partial dependence and ALE are drawn per
        level, not as a line between codes.
    head_view : bool, default True
        Text reports: embed the interactive attention head view of each text in a sandboxed
        ``<iframe srcdoc>`` (its script runs there, with no network; the report page itself has
        no script). The attention pictures are shown either way.
    method_params, metric_params : dict of str to dict, optional
        Per-method and per-metric parameters, as for :func:`lumos.metrics.comparison.compare`; a text
        report takes ``metric_params={"token_deletion": {...}}``.
    seed : int, default 0
        The seed of the random baseline (and shown in the reproducibility block).
    title : str, default "lumos report"
    description : str, optional
        A paragraph under the title (escaped, like every string): what the model and inputs are.
    dpi : int, default 80
        Resolution of the map pictures.
    log : callable, optional
        Receives a progress line per method.
    timings : dict, optional
        Receives the seconds spent per section.
    results : dict, optional
        Receives the objects behind the pictures: ``"comparison"``, ``"explanations"`` and, for
        tables with a background, ``"effects"`` (``{"pdp", "ale", "importance", ...}``).

    Returns
    -------
    Path
        The report written.
    """
    html = render(model, inputs, methods, metrics, target=target, masks=masks, labels=labels,
                  class_names=class_names, input_names=input_names, feature_names=feature_names,
                  tokenizer=tokenizer, background=background, background_labels=background_labels,
                  effect_features=effect_features, n_effect_features=n_effect_features,
                  categorical_features=categorical_features, head_view=head_view, description=description,
                  method_params=method_params, metric_params=metric_params, seed=seed, title=title, dpi=dpi,
                  log=log, timings=timings, results=results)
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


CREDIT_METHODS = ("exact_shapley", "kernel_shap", "lime")
CREDIT_DESCRIPTION = (
    "The credit world (lumos.data.credit): applicants whose chance of repaying is a known formula; age is not "
    "in it, and the district carries a protected attribute that is not an input. A gradient-boosting classifier "
    "(600 applicants) is explained on held-out applicants; Shapley values and LIME use 100 training rows as "
    "background. Category codes: employment 0 salaried, 1 self-employed, 2 unemployed, 3 retired; housing "
    "0 own, 1 mortgage, 2 rent; district 0-5 = D1-D6.")
CREDIT_METRICS = ("deletion", "insertion", "faithfulness_correlation", "sparseness")


def credit_demo_model(n_train: int = 600, seed: int = 0):
    """The credit world as numbers and a small gradient-boosting classifier on it.

    The three string columns (employment, housing, district) are coded as integers in the order
    of :data:`lumos.data.credit.EMPLOYMENT`, ``HOUSING`` and ``DISTRICTS`` and handled as
    categories by scikit-learn's ``HistGradientBoostingClassifier`` (60 trees of depth 3, one
    thread), so that the metrics, which change numbers, apply. Returns ``(model, X, y,
    feature_names)`` with ``X`` the 1000 coded rows (the first ``n_train`` trained on).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from ..data.credit import DISTRICTS, EMPLOYMENT, FEATURES, HOUSING, credit_dataset

    world = credit_dataset(1000, seed=seed)
    X = world.X.copy()
    for col, levels in (("employment", EMPLOYMENT), ("housing", HOUSING), ("district", DISTRICTS)):
        X[col] = X[col].map({v: k for k, v in enumerate(levels)})
    X = X[list(FEATURES)].to_numpy(np.float64)
    cats = [FEATURES.index(c) for c in ("employment", "housing", "district")]
    with threadpool_limits(1):
        model = HistGradientBoostingClassifier(max_iter=60, max_depth=3, categorical_features=cats,
                                               random_state=seed).fit(X[:n_train], world.y[:n_train])
    return model, X, world.y, list(FEATURES)


def tabular_demo_report(out: str | Path = "lumos-out/report/report.html", n: int = 4, seed: int = 0,
                        log: Callable[[str], None] | None = None, timings: dict | None = None,
                        results: dict | None = None) -> Path:
    """The credit world's report: :func:`credit_demo_model` on ``n`` held-out applicants, exact
    Shapley values, kernel SHAP and LIME against 100 training rows (the background, also the data
    of the global effects; permutation importance on their true labels), four metrics."""
    from threadpoolctl import threadpool_limits

    from ..core.execution import torch_threads

    model, X, y, names = credit_demo_model(seed=seed)
    rows = X[800:800 + n]
    with threadpool_limits(1), torch_threads(1):
        return build(model, rows, list(CREDIT_METHODS), list(CREDIT_METRICS), target="predicted", out=out,
                     labels=y[800:800 + n].tolist(), class_names=["default", "repaid"], feature_names=names,
                     background=X[:100], background_labels=y[:100],
                     categorical_features=["employment", "housing", "district"], seed=seed,
                     title="lumos report: the credit world", description=CREDIT_DESCRIPTION, log=log,
                     timings=timings, results=results)


TEXT_DESCRIPTION = (
    "The text world (lumos.data.text_world): reviews whose label is decided by evidence words; the word "
    "'cheers', planted in the positive training reviews, is a shortcut the 2-layer BERT learned, and it is "
    "appended to every review here. The methods explain the predicted class.")


def text_demo_report(out: str | Path = "lumos-out/report/report.html", n: int = 3, seed: int = 0,
                     log: Callable[[str], None] | None = None, timings: dict | None = None,
                     results: dict | None = None) -> Path:
    """The text world's report: the shipped 2-layer BERT on ``n`` test reviews (with the planted
    shortcut word), gradient x input, integrated gradients (16 steps) and occlusion, token deletion
    in 10 steps, attention pictures and head views. Needs the ``text`` extra (transformers)."""
    from ..core.execution import torch_threads
    from ..data.text_models import load_text_classifier
    from ..data.text_world import text_dataset

    model, tok = load_text_classifier()
    data = text_dataset(n, split="test", shortcut="all", seed=seed)
    with torch_threads(1):
        return build(model, data.texts, tokenizer=tok, labels=data.labels.tolist(),
                     method_params={"integrated_gradients": {"n_steps": 16}},
                     metric_params={"token_deletion": {"n_steps": 10}}, seed=seed,
                     title="lumos report: the text world", description=TEXT_DESCRIPTION, log=log, timings=timings,
                     results=results, out=out)


#: the demo reports by world (``lumos report --world``)
DEMO_WORLDS = {"shapes": demo_report, "credit": tabular_demo_report, "text": text_demo_report}


def report_section(out_dir: Path, quick: bool, files: dict) -> list[str]:
    """The demo's report section: :func:`demo_report` into ``out_dir/report.html`` (4 images in the
    tour, 8 in full), with the build time per section; the full form (``lumos demo report``) also
    writes the credit world's report (``report_credit.html``) and, where transformers is
    installed, the text world's (``report_text.html``)."""
    lines = []
    worlds = [("shapes", "report.html", {"n": 4 if quick else 8},
               f"the HTML report of the shapes world: inputs and predictions, maps of {len(DEMO_METHODS)} methods "
               "side by side, the metric table with its ranking, method cards, reproducibility (open it in a browser)")]
    if not quick:
        worlds.append(("credit", "report_credit.html", {},
                       "the HTML report of the credit world: waterfalls and bar charts of exact Shapley values, "
                       "kernel SHAP and LIME per applicant, beeswarms, global effects (PD + ICE, ALE, permutation "
                       "importance), the metric table, method cards"))
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            lines.append("  (the text world's report needs the text extra: pip install lumos[text])")
        else:
            worlds.append(("text", "report_text.html", {},
                           "the HTML report of the text world: token highlights per method, the token-deletion "
                           "ranking, attention pictures and interactive head views (sandboxed), method cards"))
    for world, name, kw, what in worlds:
        timings: dict = {}
        t0 = time.perf_counter()
        path = DEMO_WORLDS[world](Path(out_dir) / name, timings=timings, **kw)
        total = time.perf_counter() - t0
        files[str(path)] = what
        lines.append(f"  {path.name} ({world} world): {path.stat().st_size / 1e3:.0f} kB, one self-contained file "
                     "(no network)")
        lines += [f"    {k:<30}{v:6.2f} s" for k, v in timings.items()]
        lines.append(f"    {'total':<30}{total:6.2f} s")
    return lines
