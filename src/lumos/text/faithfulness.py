"""Faithfulness of token attributions: token deletion curves (MoRF / LeRF) and token shares.

Does the model's output follow what a token attribution says matters? Remove the tokens of a
text in the order of the attribution and follow the explained score:

* **MoRF** (most relevant first): a faithful attribution makes the score fall fast (low area);
* **LeRF** (least relevant first): the score should survive removing the least relevant
  tokens (high area);
* the **area between** the two curves, ``AUC(LeRF) - AUC(MoRF)``, summarises both (Samek et al.,
  2017, "Evaluating the visualization of what a deep neural network has learned", for the two
  orders; the area between them as in Schulz et al., 2020, "Restricting the flow"). The token
  version of these curves is the "comprehensiveness" / "sufficiency" family of ERASER (DeYoung et
  al., 2020).

:func:`token_share` is the share of an attribution's positive mass on given tokens (a planted
shortcut token, the tokens that decide the label): localisation measured against ground truth.

Conventions (tested in ``tests/test_text_faithfulness.py``):

* Works on any token explanation made by :func:`lumos.explain` on strings (the
  :mod:`lumos.text.adapter` layout: ``inputs`` are the right-padded token ids, ``meta`` holds
  ``attention_mask``, ``special_tokens`` and, for a continuation target, ``continuation``).
* Special tokens (``[CLS]``, ``[SEP]``, BOS ...), padding and the tokens of a continuation target
  are never removed; the curve's x axis is the fraction of the *removable* tokens removed.
* ``fill``: ``"pad"`` (default) puts the pad id in place of a removed token and hides it from
  the attention (mask 0), the adapter's occlusion convention, so step 1 of a per-token MoRF curve
  equals the leave-one-out drop of the top token; ``"mask"`` (the mask id) or an int id replaces
  the token and keeps it visible; ``"delete"`` removes the token: the rest shift left and the
  attention mask shrinks with them (an encoder then sees a shorter text with other position ids;
  causal-LM targets read positions and refuse it).
* Ties in the ranking are broken at random by ``seed`` (:func:`lumos.metrics.streams.random_order`),
  per text, so constant attributions do not remove tokens left to right.
* Every changed text is a row of its own, right-padded, with its attention mask: rows are
  evaluated in batches of ``batch_size`` and a text's curve does not depend on the batch size or
  on the other texts of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..core.execution import check_batch_size, chunks
from ..core.explanation import Explanation
from ..core.torch_model import ModelGuard, check_finite, model_device, warn_if_training
from ..core.validation import check_choice, check_number
from ..metrics.results import MetricResult
from ..metrics.streams import random_order
from .targets import TextBatch, TextTarget

__all__ = ["token_deletion", "token_faithfulness", "TokenFaithfulness", "token_share",
           "faithfulness_table", "attention_explanation", "removable_tokens"]

_ORDERS = ("morf", "lerf")
_SCALES = ("auto", "probability", "raw")


# --------------------------------------------------------------------------------------------
# The explanation's layout
# --------------------------------------------------------------------------------------------

def _check_token_explanation(explanation: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, attention mask, values)`` of a token explanation, checked."""
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation must be a lumos Explanation of tokens (from lumos.explain on "
                        f"strings); got {type(explanation).__name__}")
    if "attention_mask" not in explanation.meta or explanation.inputs is None:
        raise ValueError("explanation: not a token explanation (no token ids in inputs and no "
                         "meta['attention_mask']); explain strings with lumos.explain(model, texts, "
                         "method, tokenizer=tok)")
    values = np.asarray(explanation.values, dtype=np.float64)
    ids = np.asarray(explanation.inputs)
    mask = np.asarray(explanation.meta["attention_mask"]).astype(bool)
    if values.ndim != 2 or ids.shape != values.shape or mask.shape != values.shape:
        raise ValueError(f"explanation: token values, ids and attention mask must share one (n, T) "
                         f"shape; got {values.shape}, {ids.shape}, {mask.shape}")
    return ids.astype(np.int64), mask, values


def removable_tokens(explanation: Explanation) -> np.ndarray:
    """(n, T) bool: real tokens that are neither special tokens nor a continuation target's."""
    _, mask, _ = _check_token_explanation(explanation)
    keep = mask.copy()
    for key in ("special_tokens", "continuation"):
        if key in explanation.meta:
            keep &= ~np.asarray(explanation.meta[key]).astype(bool)
    return keep


# --------------------------------------------------------------------------------------------
# Scoring changed texts
# --------------------------------------------------------------------------------------------

class _Scorer:
    """The explained scalar of rows of (ids, attention mask), each belonging to one text."""

    def __init__(self, model: nn.Module, explanation: Explanation, ids: torch.Tensor,
                 mask: torch.Tensor, target: Any, tokenizer: Any, scale: str):
        from .adapter import _kind, _token_id_fn, encode, raw_output, _pad_id
        from .targets import mean_pool

        self.model, self.raw_output = model, raw_output
        self.dev = model_device(model)
        with torch.no_grad():
            out = model(input_ids=ids.to(self.dev), attention_mask=mask.to(self.dev))
        raw = raw_output(out).detach()
        check_finite(raw, "the texts")
        self.kind = _kind(raw, out)
        described = explanation.meta.get("target")
        self.head, self.classes = None, None
        if target is None and explanation.target is None and isinstance(described, str):
            raise ValueError(f"target: the explanation explains {described!r}; pass the same "
                             f"target object again (target=...) so its score can be followed")
        if isinstance(target, TextTarget):
            if tokenizer is None:
                raise ValueError("tokenizer: a text target is scored through the model's "
                                 "tokenizer; pass tokenizer=")
            n = len(ids)
            lengths = mask.sum(1)
            cont = np.asarray(explanation.meta.get("continuation", np.zeros(ids.shape, bool)), bool)
            cont_ids = [ids[i][torch.as_tensor(cont[i])].tolist() for i in range(n)]
            pad = _pad_id(tokenizer)

            def embed(other: Sequence[str]) -> torch.Tensor:
                e = encode(tokenizer, other, None, pad)
                with torch.no_grad():
                    h = raw_output(model(input_ids=e["input_ids"].to(self.dev),
                                         attention_mask=e["attention_mask"].to(self.dev)))
                return mean_pool(h, e["attention_mask"].to(self.dev)).detach()

            vocab = int(model.get_input_embeddings().weight.shape[0])
            batch = TextBatch(lengths, lengths - torch.as_tensor(cont.sum(1)), cont_ids, embed,
                              _token_id_fn(tokenizer, vocab), self.kind, raw)
            self.head = target.bind(batch)
        elif callable(target):
            self.head = lambda raw, m, rows: target(raw)
        else:
            if self.kind != "classifier":
                raise ValueError("target: this model's output is not one score per class; pass the "
                                 "text target the explanation was made with (target=...)")
            t = explanation.target if target is None else target
            if t is None:
                raise ValueError("target: the explanation has no class target; pass target=")
            t = np.asarray(t, dtype=np.int64).reshape(-1)
            t = np.broadcast_to(t, (len(ids),)) if t.size == 1 else t
            if len(t) != len(ids) or t.min() < 0 or t.max() >= raw.shape[-1]:
                raise ValueError(f"target: expected one class in 0 .. {raw.shape[-1] - 1} per text "
                                 f"({len(ids)} texts); got {t.tolist()}")
            self.classes = torch.as_tensor(t.copy())
        scale = check_choice(scale, "scale", _SCALES)
        if scale == "probability" and self.classes is None:
            raise ValueError("scale='probability' needs a class target of a classifier; text "
                             "targets are followed on their own (log-probability) scale")
        self.scale = ("probability" if self.classes is not None and raw.shape[-1] >= 2 else "raw") \
            if scale == "auto" else scale
        self.f0 = self.score(raw, mask.to(self.dev), torch.arange(len(ids))).cpu().numpy()

    def score(self, raw: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.head(raw, mask, rows).double()
        out = torch.softmax(raw.double(), -1) if self.scale == "probability" else raw.double()
        return out[torch.arange(len(raw), device=raw.device), self.classes.to(raw.device)[rows.to(raw.device)]]

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            raw = self.raw_output(self.model(input_ids=ids.to(self.dev), attention_mask=mask.to(self.dev)))
            check_finite(raw, "token-deleted texts")
            return self.score(raw, mask.to(self.dev), rows).cpu()


def _fill_id(fill: Any, tokenizer: Any) -> int | None:
    """The replacement id, or None for ``fill="delete"``."""
    if isinstance(fill, str):
        check_choice(fill, "fill", ("pad", "mask", "delete"))
        if fill == "delete":
            return None
        if tokenizer is None:
            raise ValueError(f"fill={fill!r}: the {fill} token's id comes from the tokenizer; pass "
                             "tokenizer= or an int token id as fill")
        if fill == "pad":
            from .adapter import _pad_id

            return _pad_id(tokenizer)
        tid = getattr(tokenizer, "mask_token_id", None)
        if tid is None:
            raise ValueError("fill='mask': the tokenizer has no mask token; use 'pad', 'delete' or "
                             "a token id")
        return int(tid)
    if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or fill < 0:
        raise TypeError(f"fill: give 'pad', 'mask', 'delete' or a non-negative int token id; got {fill!r}")
    return int(fill)


def _changed_rows(ids: torch.Tensor, mask: torch.Tensor, removed: torch.Tensor,
                  fill_id: int | None, pad_id: int, hide: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with the ``removed`` tokens replaced by ``fill_id`` (and hidden from the attention
    when ``hide``), or (``fill_id=None``) deleted."""
    if fill_id is not None:
        new_ids = torch.where(removed, torch.full_like(ids, fill_id), ids)
        return new_ids, (mask.masked_fill(removed, 0) if hide else mask)
    keep = mask.bool() & ~removed
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in order
    new_ids = torch.gather(ids, 1, order)
    new_mask = torch.gather(keep, 1, order)
    new_ids = torch.where(new_mask, new_ids, torch.full_like(new_ids, pad_id))
    return new_ids, new_mask.to(mask.dtype)


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------

def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    ok = np.isfinite(x)
    if ok.sum() < 2:
        return float("nan")
    xs, ys = x[ok], y[ok]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def token_deletion(model: nn.Module, explanation: Explanation, *, order: str = "morf",
                   fill: Any = "pad", n_steps: int | None = None, tokenizer: Any = None,
                   target: Any = None, scale: str = "auto", seed: int = 0,
                   batch_size: int | None = None, progress: bool | None = None) -> MetricResult:
    """Token deletion curve of a token explanation and the area under it.

    The removable tokens of each text (real, not special, not a continuation target's) are
    ranked by their attribution (``order="morf"``: largest signed value first; ``"lerf"``:
    smallest first; ties broken at random by ``seed``). Step ``s`` removes the first ``k_s``
    tokens of the ranking and records the explained score.

    Parameters
    ----------
    model : torch.nn.Module
        The Hugging Face model that was explained (called as ``model(input_ids=...,
        attention_mask=...)``).
    explanation : Explanation
        A token explanation from :func:`lumos.explain` on strings (see the module docs).
    order : {"morf", "lerf"}, default "morf"
    fill : {"pad", "mask", "delete"} or int, default "pad"
        How a token is removed (see the module docs).
    n_steps : int, optional
        ``None`` (default): one token per step, ``k_s = s`` for ``s = 0 .. F`` (``F`` the text's
        removable tokens), so step 1 removes exactly the top token. An int: ``n_steps + 1``
        points at ``k_s = round(s / n_steps · F)``, the same grid for every text.
    tokenizer : Hugging Face tokenizer, optional
        Needed for ``fill="pad"``/``"mask"`` and for text targets.
    target : optional
        The scored target. ``None``: the explanation's class target (classifiers). A text
        explanation made with a :class:`~lumos.text.targets.TextTarget` (next token,
        continuation, contrast, cosine similarity ...) needs the same target object again; a
        callable of the raw output ``(m, ...) -> (m,)`` is used as it is.
    scale : {"auto", "probability", "raw"}, default "auto"
        Class targets: the softmax probability (``"auto"`` with two or more classes, as
        :func:`lumos.metrics.deletion`) or the logit; text targets keep their own scale.
    seed : int, default 0
        Tie-breaking.
    batch_size : int, optional
        Changed texts per model call (default 64).

    Returns
    -------
    MetricResult
        ``scores``: area under the curve per text, the x axis being the fraction of removable
        tokens removed (0 to 1); NaN for a text with no removable token. ``curves``: ``x`` and
        ``y`` of shape ``(n, S)`` (NaN after a text's last step when ``n_steps=None``).
        ``direction``: ``"lower"`` for MoRF, ``"higher"`` for LeRF. ``meta``: ``f0`` (the score of
        each text unchanged), ``n_removable``, ``n_evals``.
    """
    order = check_choice(order, "order", _ORDERS)
    seed = check_number(seed, "seed", low=0, integer=True)
    if n_steps is not None:
        n_steps = check_number(n_steps, "n_steps", low=1, integer=True)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: token deletion runs a torch module (the explained Hugging Face "
                        f"model); got {type(model).__name__}")
    ids_np, mask_np, values = _check_token_explanation(explanation)
    valid = removable_tokens(explanation)
    fill_id = _fill_id(fill, tokenizer)
    bs = check_batch_size(batch_size)
    n, T = ids_np.shape
    F = valid.sum(1)
    ranks = random_order(np.where(valid, values, 0.0), valid, seed, descending=(order == "morf"))
    if n_steps is None:
        S = int(F.max()) + 1
        ks = np.tile(np.arange(S), (n, 1))
        x = np.where(ks <= F[:, None], ks / np.maximum(F, 1)[:, None], np.nan)
        ks = np.minimum(ks, F[:, None])
    else:
        S = n_steps + 1
        frac = np.arange(S) / n_steps
        ks = np.floor(frac[None, :] * F[:, None] + 0.5).astype(np.int64)
        x = np.tile(frac, (n, 1))
    x[F == 0] = np.nan
    # rows to evaluate: (text, step) for steps 1 .. S-1 that exist for that text
    todo = [(i, s) for i in range(n) for s in range(1, S) if F[i] > 0 and np.isfinite(x[i, s])]
    ids, mask = torch.as_tensor(ids_np), torch.as_tensor(mask_np.astype(np.int64))
    ranks_t, ks_t = torch.as_tensor(ranks), torch.as_tensor(ks)
    rows_i = torch.as_tensor([i for i, _ in todo], dtype=torch.long)
    rows_s = torch.as_tensor([s for _, s in todo], dtype=torch.long)
    y = np.full((n, S), np.nan)
    warn_if_training(model)
    with ModelGuard(model):
        sc = _Scorer(model, explanation, ids, mask, target, tokenizer, scale)
        if fill_id is None and sc.kind == "lm":
            raise ValueError("fill='delete': a causal-LM target reads token positions, which "
                             "deletion shifts; use fill='pad' or 'mask'")
        from .adapter import _pad_id

        pad = _pad_id(tokenizer) if tokenizer is not None else (fill_id or 0)
        y[:, 0] = sc.f0
        for sl in chunks(len(todo), bs, desc=f"token deletion ({order})", progress=progress):
            i, s = rows_i[sl], rows_s[sl]
            removed = ranks_t[i] < ks_t[i, s][:, None]
            r_ids, r_mask = _changed_rows(ids[i], mask[i], removed, fill_id, pad, fill == "pad")
            y[i.numpy(), s.numpy()] = sc(r_ids, r_mask, i).numpy()
    y[F == 0] = np.nan
    auc = np.array([_trapezoid(y[i], x[i]) for i in range(n)])
    return MetricResult(
        name="token_deletion" if order == "morf" else "token_deletion_lerf", scores=auc,
        direction="lower" if order == "morf" else "higher", method=explanation.method,
        params={"order": order, "fill": fill if isinstance(fill, str) else int(fill),
                "n_steps": n_steps, "scale": sc.scale, "seed": seed},
        curves={"x": x, "y": y},
        meta={"f0": sc.f0, "n_removable": F, "n_evals": len(todo) + n})


@dataclass(repr=False)
class TokenFaithfulness:
    """MoRF and LeRF token deletion of one explanation, and the area between them."""

    morf: MetricResult
    lerf: MetricResult

    @property
    def area_between(self) -> np.ndarray:
        """Per text ``AUC(LeRF) - AUC(MoRF)``: higher is more faithful; 0 is what a random order
        gives on average."""
        return self.lerf.scores - self.morf.scores

    def summary(self) -> dict:
        """Means over texts (NaN texts ignored)."""
        ab = self.area_between[np.isfinite(self.area_between)]
        return {"morf": self.morf.mean, "lerf": self.lerf.mean,
                "area_between": float(ab.mean()) if len(ab) else float("nan"),
                "area_between_sem": float(ab.std(ddof=1) / np.sqrt(len(ab))) if len(ab) > 1 else float("nan")}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"TokenFaithfulness({self.morf.method!r}: MoRF {s['morf']:.4g} ↓, LeRF {s['lerf']:.4g} ↑, "
                f"LeRF - MoRF {s['area_between']:.4g} ↑ over {len(self.morf)} texts, "
                f"{self.morf.scale} scale)")


def token_faithfulness(model: nn.Module, explanation: Explanation, **kwargs: Any) -> TokenFaithfulness:
    """Both token deletion curves (MoRF and LeRF) of one explanation; see :func:`token_deletion`
    for the parameters. ``result.area_between`` is ``AUC(LeRF) - AUC(MoRF)`` per text."""
    if "order" in kwargs:
        raise TypeError("token_faithfulness: computes both orders; use token_deletion(order=...) for one")
    return TokenFaithfulness(token_deletion(model, explanation, order="morf", **kwargs),
                             token_deletion(model, explanation, order="lerf", **kwargs))


def faithfulness_table(results: Mapping[str, TokenFaithfulness], shares: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """A printed table: one row per method, MoRF ↓, LeRF ↑, LeRF − MoRF ↑ (± standard error),
    and optional share columns (``shares[column][method]``: per-text arrays, averaged)."""
    shares = dict(shares or {})
    head = f"{'method':<26}{'MoRF ↓':>9}{'LeRF ↑':>9}{'LeRF-MoRF ↑':>19}"
    head += "".join(f"{c:>16}" for c in shares)
    lines = [head]
    for name, r in results.items():
        s = r.summary()
        row = (f"{name:<26}{s['morf']:>9.3f}{s['lerf']:>9.3f}"
               f"{s['area_between']:>11.3f} ± {s['area_between_sem']:<5.3f}")
        for c, per in shares.items():
            v = np.asarray(per.get(name, np.nan), dtype=np.float64)
            v = v[np.isfinite(v)]
            row += f"{(v.mean() if len(v) else float('nan')):>16.3f}"
        lines.append(row)
    first = next(iter(results.values()), None)
    if first is not None:
        lines.append(f"({len(first.morf)} texts, {first.morf.scale} scale, fill={first.morf.params['fill']!r}, "
                     f"area over the fraction of removable tokens removed)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Shares on ground-truth tokens
# --------------------------------------------------------------------------------------------

def token_share(explanation: Explanation, masks: Any) -> np.ndarray:
    """Share of the positive attribution of each text that falls on the tokens in ``masks``.

    ``share = Σ_{j in mask} max(v_j, 0) / Σ_j max(v_j, 0)`` over the text's real tokens: the
    fraction of the evidence *for* the target that the attribution puts on, for example, a
    planted shortcut token (the shortcut share) or the tokens that decide the label (the evidence
    share). Positive parts only, as the image demo's evidence share, so the numbers are not
    normalised or signed differently per method.

    Parameters
    ----------
    explanation : Explanation
        Token values ``(n, T)`` (from :func:`lumos.explain` on strings, or any ``(n, T)`` values).
    masks : bool array ``(n, T)``, or a list of n bool sequences (one per text, each at most ``T``
        long, padded with False)
        The ground-truth tokens, at the explanation's token positions.

    Returns
    -------
    ndarray of shape (n,)
        NaN for a text without positive attribution.
    """
    v = np.asarray(explanation.values if isinstance(explanation, Explanation) else explanation,
                   dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"explanation: token values of shape (n, T) expected; got {v.shape}")
    n, T = v.shape
    if isinstance(masks, (list, tuple)) and len(masks) and not isinstance(masks[0], (bool, np.bool_)):
        if len(masks) != n:
            raise ValueError(f"masks: {len(masks)} masks for {n} texts")
        m = np.zeros((n, T), dtype=bool)
        for i, row in enumerate(masks):
            row = np.asarray(row, dtype=bool).reshape(-1)
            if len(row) > T:
                raise ValueError(f"masks[{i}] has {len(row)} entries, more than the {T} token positions")
            m[i, :len(row)] = row
    else:
        m = np.asarray(masks)
        if m.dtype != bool or m.shape != (n, T):
            raise ValueError(f"masks: a bool array of shape {(n, T)} (one flag per token position) "
                             f"expected; got {m.dtype} {m.shape}")
    if isinstance(explanation, Explanation) and "attention_mask" in explanation.meta:
        real = np.asarray(explanation.meta["attention_mask"]).astype(bool)
        v = np.where(real, v, 0.0)
    pos = np.clip(v, 0, None)
    total = pos.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * m).sum(1) / total, np.nan)


# --------------------------------------------------------------------------------------------
# Attention as a token attribution
# --------------------------------------------------------------------------------------------

def attention_explanation(model: nn.Module, like: Explanation, kind: str = "last", *,
                          query: Any = "first", head_fusion: str = "mean",
                          residual: float = 0.5) -> Explanation:
    """Attention read as a token attribution, on the texts (and positions) of ``like``.

    ``kind="last"``: the ``query`` token's row of the last layer's attention, heads fused
    (``head_fusion``); ``"rollout"``: its row of the attention rollout (Abnar & Zuidema, 2020).
    The values are non-negative weights (they say how much, not in which direction); the result
    has ``like``'s layout (ids, masks, tokens), so it goes through :func:`token_deletion` and
    :func:`lumos.text.attention.agreement` like any token explanation.
    """
    from .attention import _fuse_heads, _query_rows, attentions, query_scores, rollout

    check_choice(kind, "kind", ("last", "rollout"))
    ids, mask, _ = _check_token_explanation(like)
    if not (isinstance(query, str) and query == "mean"):
        _query_rows(query, mask)  # checks the query before the model runs
    att = attentions(model, {"input_ids": torch.as_tensor(ids),
                             "attention_mask": torch.as_tensor(mask.astype(np.int64))})
    if kind == "last":
        m = _fuse_heads(att.values[-1], head_fusion)
    else:
        m = rollout(att, head_fusion=head_fusion, residual=residual)
    values = np.where(mask, query_scores(m, query, mask), 0.0)
    meta = dict(like.meta)
    meta.pop("embedding_values", None)
    meta.pop("embeddings", None)
    keys = tuple(k for k in like.sample_keys if k in meta)
    return replace(like, values=values, output=None, baseline_output=None,
                   method=f"attention_{kind}", params={"query": query, "head_fusion": head_fusion,
                                                      **({"residual": residual} if kind == "rollout" else {})},
                   meta=meta, sample_keys=keys)
