"""The text parts of the report: predictions, token highlights per method, the token-deletion
metric table, and attention views where the model returns attentions.

:func:`lumos.report.build.render` calls :func:`text_parts` for a list of strings with a
``tokenizer``. The attributions are :func:`lumos.explain` on the strings (the text adapter); the
metric table scores each method by token deletion (:func:`lumos.text.faithfulness.token_faithfulness`:
the most relevant tokens first, MoRF, lower is better; the least relevant first, LeRF, higher is
better; and their difference), ranked as :func:`lumos.metrics.comparison.compare` ranks, with the
seeded random baseline. Highlights are :class:`lumos.display.text.TextDisplay` fragments (every
token escaped by Jinja2).

Attention, when the model returns it (:func:`lumos.text.attention.attentions`), is shown twice per
text: as a picture (the last layer's attention, mean over heads, beside the rollout through all
layers; :func:`lumos.text.views.attention_heatmap`), which needs nothing to run, and, when
``head_view`` is on, as the interactive head view of :mod:`lumos.text.views` inside an
``<iframe sandbox="allow-scripts" srcdoc="...">``: the view's script runs in an opaque origin (it
cannot read the report, cookies or storage, navigate the page or open windows), and its own
Content-Security-Policy (``default-src 'none'``) forbids every network request. The report page
itself holds no script.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Sequence

import numpy as np

from ._figures import drawing

__all__ = ["TEXT_METHODS", "TEXT_METRICS", "text_parts", "head_view_srcdoc", "is_text_input"]

#: Methods of a text report when none are named.
TEXT_METHODS = ("gradient_x_input", "integrated_gradients", "occlusion")
#: The metric columns of a text report (token deletion, both orders, and their difference).
TEXT_METRICS = ("token deletion MoRF", "token deletion LeRF", "LeRF - MoRF")

_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
        "connect-src 'none'; form-action 'none'; base-uri 'none'")


def is_text_input(inputs: Any) -> bool:
    """A string or a non-empty list/tuple of strings."""
    return isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and len(inputs) > 0
                                       and all(isinstance(t, str) for t in inputs))


def head_view_srcdoc(view: Any) -> str:
    """A self-contained page of the head view for an iframe's ``srcdoc``, with a CSP that forbids
    every network request (the view's inline script and style are allowed)."""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<style>body{margin:4px;font-family:sans-serif}</style></head><body>'
            + view.to_html() + "</body></html>")


def _predict(model: Any, texts: list, tokenizer: Any) -> tuple[np.ndarray, dict]:
    """Class probabilities (softmax of the logits; a single output as it is) and the encoding."""
    import torch

    from ..core.torch_model import ModelGuard
    from ..text.adapter import _pad_id, encode, raw_output

    enc = encode(tokenizer, texts, pad_id=_pad_id(tokenizer))
    with ModelGuard(model), torch.no_grad():
        out = raw_output(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    out = out.detach().cpu().double()
    if out.ndim != 2:
        raise ValueError(f"model: a text report needs a classifier's (n, classes) output; got shape "
                         f"{tuple(out.shape)}")
    probs = torch.softmax(out, 1).numpy() if out.shape[1] > 1 else out.numpy()
    return probs, enc


def _target(target: Any, probs: np.ndarray, n: int) -> Any:
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"target must be 'predicted', a class index, one per text, or a callable; got {target!r}")
        return [int(k) for k in np.argmax(probs, 1)]
    if callable(target):
        return target
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return [int(target)] * n
    t = [int(k) for k in np.asarray(target).ravel()]
    if len(t) != n:
        raise ValueError(f"target has {len(t)} entries for {n} texts")
    return t


def _random_like(e: Any, seed: int) -> Any:
    """The chance baseline on the same tokens: seeded uniform noise on the real tokens."""
    v = np.asarray(e.values, dtype=np.float64)
    mask = np.asarray(e.meta.get("attention_mask", np.ones(v.shape)), dtype=np.float64)
    noise = np.stack([np.random.default_rng([int(seed), 31, i]).random(v.shape[1:]) for i in range(len(v))])
    return dataclasses.replace(e, values=noise * mask, method="random", params={"seed": seed})


def _scores(model: Any, expls: dict, tokenizer: Any, kw: dict) -> dict:
    from ..metrics.results import MetricResult
    from ..text.faithfulness import token_faithfulness

    out = {}
    for m, e in expls.items():
        tf = token_faithfulness(model, e, tokenizer=tokenizer, **kw)
        out[m] = {TEXT_METRICS[0]: tf.morf, TEXT_METRICS[1]: tf.lerf,
                  TEXT_METRICS[2]: MetricResult(TEXT_METRICS[2], np.asarray(tf.area_between, dtype=np.float64),
                                                "higher", m, dict(tf.morf.params))}
    return out


def text_parts(model: Any, texts: list, tokenizer: Any, methods: list, *, target: Any, method_params: dict,
               metric_params: dict, seed: int, head_view: bool, names: Sequence[str] | None, figure_png: Callable,
               log: Callable | None, timings: dict) -> dict:
    """Everything the template shows for a text report; see :func:`lumos.report.build.render`."""
    import time

    from markupsafe import Markup

    from ..core.registry import explain
    from ..display.text import TextDisplay
    from ..metrics.comparison import RANDOM, Comparison

    unknown = set(metric_params) - {"token_deletion"}
    if unknown:
        raise ValueError(f"metric_params: a text report scores token deletion only; give its parameters as "
                         f"metric_params={{'token_deletion': {{...}}}}; got {sorted(unknown)}")
    kw = dict(metric_params.get("token_deletion", {}))
    t0 = time.perf_counter()
    probs, enc = _predict(model, texts, tokenizer)
    tgt = _target(target, probs, len(texts))
    timings["inputs"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    expls, failed = {}, {}
    for m in methods:
        if m == RANDOM:
            continue
        try:
            expls[m] = explain(model, texts, m, tokenizer=tokenizer, target=tgt, **method_params.get(m, {}))
        except (ValueError, TypeError, RuntimeError) as err:  # one broken method must not hide the others
            failed[m] = f"explaining failed: {type(err).__name__}: {err}"
            if log:
                log(f"  {m}: explaining failed: {err}")
    timings["explain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scored = dict(expls)
    if RANDOM in methods and expls:
        scored[RANDOM] = _random_like(next(iter(expls.values())), seed)
    results = _scores(model, scored, tokenizer, kw) if scored else {}
    for m, why in failed.items():
        results[m] = {k: why for k in TEXT_METRICS}
    comp = Comparison([m for m in methods if m in results], list(TEXT_METRICS), results, scored, {}, len(texts))
    timings["metrics (token deletion)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    highlights = []
    for i in range(len(texts)):
        blocks = []
        for m, e in expls.items():
            keep = np.flatnonzero(np.asarray(e.meta["attention_mask"])[i])
            toks = [str(t) for t in np.asarray(e.meta["tokens"])[i][keep]]
            vals = np.asarray(e.values, dtype=np.float64)[i, keep]
            blocks.append({"method": m, "html": Markup(TextDisplay(toks, vals, "").to_html()),
                           "tokens": toks, "values": vals})
        highlights.append({"index": i, "blocks": blocks})
    timings["tokens"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    attention = _attention(model, texts, tokenizer, head_view, figure_png)
    timings["attention"] = time.perf_counter() - t0

    rows = []
    for i, text in enumerate(texts):
        pred = int(np.argmax(probs[i])) if probs.shape[1] > 1 else None
        exp = _cls(names, tgt[i]) if not callable(tgt) else getattr(tgt, "__name__", "a callable")
        rows.append({"index": i, "text": text, "n_tokens": int(enc["attention_mask"][i].sum()),
                     "predicted": _cls(names, pred) if pred is not None else "—",
                     "probability": f"{probs[i, pred]:.3f}" if pred is not None else "—", "explained": exp})
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"comparison": comp, "explanations": expls, "highlights": highlights, "attention": attention,
            "rows": rows, "probs": probs, "target": tgt,
            "inputs_text": f"{len(texts)} texts, {int(enc['attention_mask'].sum())} tokens", "inputs_sha": digest}


def _cls(names: Sequence[str] | None, k: int) -> str:
    return str(names[k]) if names is not None and 0 <= k < len(names) else f"class {k}"


def _attention(model: Any, texts: list, tokenizer: Any, head_view: bool, figure_png: Callable) -> dict | None:
    """Per text: the heat-map picture and (``head_view``) the head view's page; None when the
    model returns no attentions."""
    import matplotlib.pyplot as plt

    from ..text.attention import attentions
    from ..text.views import HeadView, attention_heatmap, example_attention

    try:
        att = attentions(model, texts, tokenizer=tokenizer)
    except (TypeError, ValueError, AttributeError, RuntimeError, KeyError) as err:
        return {"available": False, "why": f"{type(err).__name__}: {err}", "views": []}
    items = []
    for i in range(len(texts)):
        a, toks = example_attention(att, index=i)
        item = {"index": i, "png": "", "note": "", "srcdoc": "", "layers": int(a.shape[0]), "heads": int(a.shape[1])}
        with drawing(item, "no attention picture"):
            n = len(toks)
            side = 1.4 + 0.17 * n + 0.06 * max(len(t) for t in toks)
            fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.6, side), layout="constrained")
            attention_heatmap(a, toks, kind="mean", ax=axes[0])
            attention_heatmap(a, toks, kind="rollout", ax=axes[1])
            item["png"] = figure_png(fig)
        if head_view:
            view = HeadView(a, toks, f"Head view of text {i}", a.shape[0] - 1, list(range(a.shape[1])))
            item["srcdoc"] = head_view_srcdoc(view)
        items.append(item)
    return {"available": True, "why": "", "views": items}
