"""The text section of ``lumos demo``: token attributions on the text world, where the evidence
and the planted shortcut are known token by token, measured (faithfulness, shares, agreement with
attention), with one generation attribution of the tiny language model and one attention view."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["text_demo", "WORLD_METHODS"]

# (name shown, registry method, parameters of the tour, of the full form)
WORLD_METHODS = (
    ("gradient_x_input", "gradient_x_input", {}, {}),
    ("integrated_gradients", "integrated_gradients", {"n_steps": 16}, {"n_steps": 32}),
    ("occlusion", "occlusion", {}, {}),
    ("attnlrp", "lrp", {"composite": "attnlrp"}, {"composite": "attnlrp"}),
)
_PROMPT = "If the file"  # the tiny LM continues it with " object. If the file is not specified"


def _explain_all(model: Any, tok: Any, texts: list, target: Any, quick: bool, query: Any = "first") -> dict:
    """Every attribution of the table, plus attention (last layer, heads' mean) and rollout read
    as token attributions of the ``query`` ("first": the [CLS] row of a classifier reading [CLS];
    "mean": every token's row, for a model that mean-pools its tokens), on the same positions."""
    from ..core.registry import explain
    from .faithfulness import attention_explanation

    out = {}
    for name, method, tour, full in WORLD_METHODS:
        out[name] = explain(model, texts, method, tokenizer=tok, target=target, **(tour if quick else full))
    like = out["integrated_gradients"]
    out = {"attention (last layer)": attention_explanation(model, like, "last", query=query),
           "attention rollout": attention_explanation(model, like, "rollout", query=query), **out}
    return out


def _measure(model: Any, tok: Any, expls: dict, masks: dict, n_steps: int | None,
             batch_size: int = 256) -> tuple[str, dict]:
    """The faithfulness table with share columns; returns (table, {method: TokenFaithfulness})."""
    from .faithfulness import faithfulness_table, token_faithfulness, token_share

    res = {k: token_faithfulness(model, e, tokenizer=tok, batch_size=batch_size, n_steps=n_steps)
           for k, e in expls.items()}
    shares = {}
    for col, (m, rows) in masks.items():
        shares[col] = {k: token_share(e, m)[rows] for k, e in expls.items()}
    return faithfulness_table(res, shares), res


def _agreement(model: Any, expls: dict, n_samples: int, query: Any = "first") -> list[str]:
    import torch

    from .attention import agreement, attentions, permutation_test

    like = expls["integrated_gradients"]
    kw = {"input_ids": torch.as_tensor(like.inputs),
          "attention_mask": torch.as_tensor(like.meta["attention_mask"].astype(np.int64))}
    att = attentions(model, kw)
    attrs = {k: e for k, e in expls.items() if not k.startswith("attention")}
    # attention flow (T² max flows per text) is in benchmarks/bench_text.py, not in the demo
    ag = agreement(att, attrs, kinds=("last", "rollout"), query=query)
    who = "the [CLS] token's attention" if query == "first" else "attention (mean over query tokens)"
    lines = [f"rank agreement (Kendall tau, |attribution|) of {who} with each "
             "attribution, mean ± sd over texts:"]
    lines += ["  " + ln for ln in ag.table().splitlines()]
    pt = permutation_test(model, kw, layers=-1, n_samples=n_samples, seed=0)
    med = pt.median
    lines.append(f"permutation test (Jain & Wallace 2019): shuffling the last layer's attention "
                 f"changes the class distribution by a median total variation of {np.median(med):.3f} "
                 f"(per text: {np.round(np.sort(med), 3).tolist()[:8]}{' ...' if len(med) > 8 else ''})")
    return lines


def _highlights(out_dir: Path, expls: dict, texts: list, title: str, files: dict, name: str, k: int = 3) -> str:
    from ..display.text import TextDisplay

    blocks = []
    for i in range(min(k, len(texts))):
        for method, e in expls.items():
            n = int(e.meta["attention_mask"][i].sum())
            toks = [str(t) for t in e.meta["tokens"][i][:n]]
            blocks.append(TextDisplay(toks, np.asarray(e.values[i][:n]), f"{method}, text {i}").to_html())
    path = out_dir / name
    path.write_text("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>lumos text demo"
                    "</title></head><body>\n" + "\n".join(blocks) + "\n</body></html>\n", encoding="utf-8")
    files[str(path)] = title
    return str(path)


def _world(out_dir: Path, quick: bool, files: dict, lines: list) -> None:
    import torch

    from ..data.text_models import load_text_classifier
    from ..data.text_world import SHORTCUT_CLASS, SHORTCUT_TOKEN, text_dataset

    model, tok = load_text_classifier()
    n = 8 if quick else 32
    data = text_dataset(n, split="test", shortcut="all", seed=0)
    clean = text_dataset(n, split="test", shortcut="none", seed=0)
    with torch.no_grad():
        def probs(d):
            return torch.softmax(model(input_ids=d.input_ids, attention_mask=d.attention_mask).logits, -1)
        p_sc, p_clean = probs(data), probs(clean)
    y = data.labels
    neg = y != SHORTCUT_CLASS
    lines.append(f"text world: {n} test reviews (label decided by evidence words), the shortcut "
                 f"'{SHORTCUT_TOKEN}' appended to every one; 2-layer BERT trained with the shortcut")
    lines.append(f"accuracy without / with '{SHORTCUT_TOKEN}': {(p_clean.argmax(1) == y).float().mean():.2f} / "
                 f"{(p_sc.argmax(1) == y).float().mean():.2f}; mean p(positive) of the negative reviews "
                 f"{p_clean[neg, 1].mean():.2f} -> {p_sc[neg, 1].mean():.2f}")
    target = y.tolist()
    expls = _explain_all(model, tok, data.texts, target, quick)
    pos = (y == SHORTCUT_CLASS).numpy()
    masks = {"evidence share": (data.masks.numpy(), np.ones(n, bool)),
             "shortcut share": (data.shortcut_masks.numpy(), pos)}
    table, _ = _measure(model, tok, expls, masks, 10 if quick else None)
    lines.append("faithfulness on the text world (target: the true class; token deletion, pad "
                 f"hidden, {'10 steps' if quick else 'one token per step'}; shares of the positive "
                 "attribution on the evidence words, and on the shortcut in positive reviews):")
    lines += ["  " + ln for ln in table.splitlines()]
    lines += _agreement(model, expls, 5 if quick else 20)
    lines.append(f"highlights: {Path(_highlights(out_dir, expls, data.texts, 'token highlights of three text-world reviews by every method (red: for the true class, blue: against)', files, 'text_world_highlights.html')).name}")
    try:
        from .views import attention_pictures

        paths = attention_pictures(model, tok, data.texts[0], out_dir, files, prefix="text_attention")
        lines.append("attention views: " + ", ".join(Path(p).name for p in paths))
    except ImportError as err:  # pragma: no cover - views need jinja2/matplotlib
        lines.append(f"(attention views skipped: {err})")


def _minilm(out_dir: Path, files: dict, lines: list) -> None:
    from ..data.text_models import load_minilm_classifier
    from ..data.text_world import SHORTCUT_CLASS, text_dataset

    model, tok = load_minilm_classifier()
    # MiniLM is 22M parameters: a few reviews and the tour's settings keep this part to seconds;
    # benchmarks/bench_text.py measures more reviews
    data = text_dataset(6, split="test", shortcut="all", seed=1)
    gt = data.token_masks(tok)
    # the MiniLM head reads the mean of all tokens: attention is read as every token's mean row
    expls = _explain_all(model, tok, data.texts, data.labels.tolist(), quick=True, query="mean")
    pos = (data.labels == SHORTCUT_CLASS).numpy()
    masks = {"evidence share": (gt["masks"].numpy(), np.ones(len(data), bool)),
             "shortcut share": (gt["shortcut_masks"].numpy(), pos)}
    table, _ = _measure(model, tok, expls, masks, 5)
    lines.append(f"faithfulness on MiniLM-L6 with the text world's classifier head ({len(data)} "
                 "reviews, WordPiece tokens, 5 deletion steps):")
    lines += ["  " + ln for ln in table.splitlines()]
    lines += _agreement(model, expls, 5, query="mean")


def _generation(out_dir: Path, quick: bool, files: dict, lines: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.text_models import load_tiny_lm
    from .lm import generation_attribution

    model, tok = load_tiny_lm()
    g = generation_attribution(model, _PROMPT, tokenizer=tok, n_tokens=5 if quick else 8,
                               method="gradient_x_input")
    ax = g.plot(0)
    path = out_dir / "text_generation_attribution.png"
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(ax.figure)
    files[str(path)] = (f"generation attribution of the tiny LM: each token it wrote after "
                        f"{_PROMPT!r} (rows) attributed to the prompt and earlier tokens (columns)")
    text = "".join(g.tokens[0][g.prompt_lengths[0]:])
    lines.append(f"tiny LM: {_PROMPT!r} -> {text!r}; gradient x input of each generated token's "
                 f"log-probability over the earlier tokens: {path.name}")


def text_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Token attributions on the text world and on MiniLM, measured.

    Parameters
    ----------
    out_dir : Path
        Where the highlights (HTML), attention views and the generation heat map go.
    quick : bool, default False
        The tour: 8 reviews, cheaper settings, no MiniLM part (``lumos demo text`` runs it).
    files : dict, optional
        Receives ``path -> what it shows`` for every file written.

    Returns
    -------
    list of str
        The faithfulness table (MoRF, LeRF, their difference, evidence and shortcut shares) of
        attention, rollout, gradient x input, integrated gradients, occlusion and AttnLRP; the
        attention-vs-attribution agreement table and the permutation test; the generation.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    lines: list[str] = []
    from ..core.execution import torch_threads

    with torch_threads(1):  # tiny models on shared cores: one thread is faster and steadier
        _world(out_dir, quick, files, lines)
        _generation(out_dir, quick, files, lines)
        if quick:
            lines.append("(the MiniLM part runs with `lumos demo text`)")
        else:
            _minilm(out_dir, files, lines)
    return ["  " + ln for ln in lines]
