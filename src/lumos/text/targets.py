"""Targets for text models: which scalar per text is explained.

Besides the core targets (an int class index of a sequence classifier, ``"predicted"``, any
callable of the model output), text models need targets that know the tokens of each text:

* :func:`next_token` -- the log-probability a causal language model gives one token at one
  position (by default the position right after the prompt: "why this next token?");
* :func:`continuation` -- the log-probability of a whole continuation appended to the prompt;
* :func:`contrast` -- a difference of two such scores, log p(A) - log p(B) ("why Paris and not
  Lyon?"), or of two class logits of a classifier;
* :func:`probability` -- a class probability of a classifier (softmax of the logits);
* :func:`cosine_similarity` -- the cosine similarity of a text's mean-pooled embedding with a
  reference sentence (or vector), as sentence-embedding models (MiniLM) compare sentences.

A text target is *bound* by :func:`lumos.text.adapter.explain_text` to the tokenised batch; the
bound target is evaluated inside the model wrapper, where it knows which text each internal row
(an integration step, an occluded copy) belongs to, so per-text positions and token ids follow
their text through every method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["TextTarget", "next_token", "continuation", "contrast", "probability",
           "cosine_similarity", "mean_pool", "TextBatch"]


@dataclass
class TextBatch:
    """What a bound text target may use: the tokenised texts (right-padded).

    Attributes
    ----------
    lengths : Tensor of int, shape (n,)
        Number of real tokens of each text (prompt and continuation).
    prompt_lengths : Tensor of int, shape (n,)
        Number of tokens before the continuation (= ``lengths`` without one).
    continuation_ids : list of list of int
        The continuation's token ids per text (empty without a continuation target).
    embed : callable
        ``embed(texts) -> (k, H)`` mean-pooled embeddings by the same model and tokenizer.
    token_id : callable
        ``token_id(token, name) -> int``: a token given as a string or an id, checked.
    kind : str
        ``"classifier"``, ``"lm"`` or ``"encoder"``.
    raw : Tensor
        The model's raw output at the texts themselves (logits or last hidden state), detached.
    """

    lengths: torch.Tensor
    prompt_lengths: torch.Tensor
    continuation_ids: list
    embed: Callable
    token_id: Callable
    kind: str
    raw: torch.Tensor


Head = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class TextTarget:
    """A target that needs the tokens: ``bind(batch) -> head(raw, attention_mask, rows) -> (m,)``.

    ``raw`` is the model's raw output for ``m`` rows (logits, or the last hidden state of an
    encoder), ``attention_mask`` their mask and ``rows`` the text each row belongs to.
    """

    description = "text target"
    continuation_text: Any = None  # a continuation to append to every prompt

    def bind(self, batch: TextBatch) -> Head:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.description


def _need(batch: TextBatch, kinds: Sequence[str], what: str) -> None:
    if batch.kind not in kinds:
        names = {"lm": "a causal language model", "classifier": "a sequence classifier",
                 "encoder": "an encoder (sentence-embedding) model"}
        raise ValueError(f"target: {what} needs {' or '.join(names[k] for k in kinds)}; this model "
                         f"is {names[batch.kind]}")


def _per_text(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"target: {name} has {len(value)} entries but there are {n} texts")
        return list(value)
    return [value] * n


class next_token(TextTarget):
    """Log-probability of ``token`` at one position of a causal language model.

    Parameters
    ----------
    token : str, int, "predicted", or a list of those (one per text)
        The token (a string that the tokenizer maps to exactly one token, or an id);
        ``"predicted"``: the model's most likely token there.
    position : int or None, default None
        Index of the token being predicted, counted in the text's tokens from 0 (the logits at
        ``position - 1`` score it). ``None``: the position right after the prompt (the next
        token). Negative values count from the end of each text's tokens (``-1`` is the last
        real token).
    """

    def __init__(self, token: Any = "predicted", position: int | None = None):
        if position is not None and (isinstance(position, bool) or not isinstance(position, (int, np.integer))):
            raise TypeError(f"next_token: position must be an int or None; got {position!r}")
        self.token, self.position = token, position
        self.description = f"log p({token!r}" + (f" at {position})" if position is not None else " next)")

    def _positions(self, batch: TextBatch) -> torch.Tensor:
        """Index of the logits that score the token, per text."""
        if self.position is None:
            return batch.prompt_lengths - 1
        pos = torch.full_like(batch.lengths, int(self.position))
        if self.position < 0:
            pos = batch.lengths + pos
        bad = (pos < 1) | (pos > batch.lengths)
        if bool(bad.any()):
            raise ValueError(f"next_token: position {self.position} is outside the texts' tokens "
                             f"(1 .. number of tokens; lengths {batch.lengths.tolist()})")
        return pos - 1

    def _ids(self, batch: TextBatch) -> list:
        n = len(batch.lengths)
        return [None if t == "predicted" else batch.token_id(t, "next_token: token")
                for t in _per_text(self.token, n, "token")]

    def bind(self, batch: TextBatch) -> Head:
        _need(batch, ("lm",), "next_token")
        where = self._positions(batch)
        ids = self._ids(batch)
        # "predicted": the most likely token at the texts themselves, fixed for every row
        best = batch.raw[torch.arange(len(batch.raw)), where.to(batch.raw.device)].argmax(-1).cpu()
        tok = torch.as_tensor([best[i] if t is None else t for i, t in enumerate(ids)])

        def head(raw, mask, rows):
            r = rows.to(raw.device)
            logp = torch.log_softmax(raw[torch.arange(len(raw), device=raw.device),
                                         where.to(raw.device)[r]], -1)
            return logp.gather(1, tok.to(raw.device)[r][:, None])[:, 0]

        return head


class continuation(TextTarget):
    """Log-probability of a whole continuation of the prompt (sum over its tokens).

    The continuation's tokens are appended to each prompt (so they are explained too: their
    attributions say how the earlier continuation tokens help predict the later ones);
    ``Explanation.meta["continuation"]`` marks them.

    Parameters
    ----------
    text : str or list of str (one per prompt)
        Tokenised without special tokens.
    """

    def __init__(self, text: str | Sequence[str]):
        if not (isinstance(text, str) or (isinstance(text, (list, tuple)) and text
                                          and all(isinstance(t, str) for t in text))):
            raise TypeError(f"continuation: text must be a string or a list of strings; got {text!r}")
        self.continuation_text = text
        self.description = f"log p(continuation {text!r})"

    def bind(self, batch: TextBatch) -> Head:
        _need(batch, ("lm",), "continuation")
        n = len(batch.lengths)
        k = max(len(c) for c in batch.continuation_ids)
        if min(len(c) for c in batch.continuation_ids) == 0:
            raise ValueError("continuation: the text has no tokens")
        # positions of the logits scoring each continuation token, and the token ids (padded)
        pos = torch.zeros(n, k, dtype=torch.long)
        tok = torch.zeros(n, k, dtype=torch.long)
        valid = torch.zeros(n, k, dtype=torch.bool)
        for i, c in enumerate(batch.continuation_ids):
            L = int(batch.prompt_lengths[i])
            pos[i, :len(c)] = torch.arange(L - 1, L - 1 + len(c))
            tok[i, :len(c)] = torch.as_tensor(c)
            valid[i, :len(c)] = True

        def head(raw, mask, rows):
            r = rows.to(raw.device)
            p, t, v = pos.to(raw.device)[r], tok.to(raw.device)[r], valid.to(raw.device)[r]
            logits = raw.gather(1, p[:, :, None].expand(-1, -1, raw.shape[-1]))
            lp = torch.log_softmax(logits, -1).gather(2, t[:, :, None])[:, :, 0]
            return (lp * v).sum(1)

        return head


class contrast(TextTarget):
    """``score(a) - score(b)``: why ``a`` rather than ``b``.

    On a causal language model ``a`` and ``b`` are tokens (strings or ids) scored by
    :func:`next_token` at ``position`` (log p(a) - log p(b)); on a sequence classifier they are
    class indices (the logit difference, which equals the log-probability difference).
    """

    def __init__(self, a: Any, b: Any, position: int | None = None):
        self.a, self.b, self.position = a, b, position
        self.description = f"contrast {a!r} - {b!r}"

    def bind(self, batch: TextBatch) -> Head:
        _need(batch, ("lm", "classifier"), "contrast")
        if batch.kind == "lm":
            ha = next_token(self.a, self.position).bind(batch)
            hb = next_token(self.b, self.position).bind(batch)
            return lambda raw, mask, rows: ha(raw, mask, rows) - hb(raw, mask, rows)
        if self.position is not None:
            raise ValueError("contrast: position is for causal language models, not classifiers")
        a, b = (_class(v, "contrast") for v in (self.a, self.b))

        def head(raw, mask, rows):
            _check_class(raw, (a, b))
            return raw[:, a] - raw[:, b]

        return head


def _class(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: classes of a classifier are int indices; got {value!r}")
    return int(value)


def _check_class(raw: torch.Tensor, classes: Sequence[int]) -> None:
    for c in classes:
        if not 0 <= c < raw.shape[-1]:
            raise ValueError(f"target: class {c} is out of range; the model has {raw.shape[-1]} classes")


class probability(TextTarget):
    """The softmax probability of class ``k`` of a sequence classifier (an int target explains the logit)."""

    def __init__(self, k: int):
        self.k = _class(k, "probability")
        self.description = f"probability of class {self.k}"

    def bind(self, batch: TextBatch) -> Head:
        _need(batch, ("classifier",), "probability")

        def head(raw, mask, rows):
            _check_class(raw, (self.k,))
            return torch.softmax(raw, -1)[:, self.k]

        return head


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the real tokens, ``(m, T, H), (m, T) -> (m, H)``.

    The pooling of sentence-transformers' MiniLM (``1_Pooling``: mean over the attention mask).
    """
    w = mask.to(hidden.dtype)[:, :, None]
    return (hidden * w).sum(1) / w.sum(1).clamp_min(1e-9)


class cosine_similarity(TextTarget):
    """Cosine similarity of each text's mean-pooled embedding with a reference.

    Parameters
    ----------
    other : str, list of str (one per text), or array-like of shape (H,) or (n, H)
        The reference sentence(s), embedded by the same model and tokenizer (mean pooling, as
        MiniLM), or reference embedding vectors.
    """

    def __init__(self, other: Any):
        self.other = other
        self.description = (f"cosine similarity with {other!r}" if isinstance(other, (str, list, tuple))
                            else "cosine similarity with a vector")

    def bind(self, batch: TextBatch) -> Head:
        _need(batch, ("encoder",), "cosine_similarity")
        n = len(batch.lengths)
        if isinstance(self.other, str) or (isinstance(self.other, (list, tuple)) and self.other
                                           and all(isinstance(o, str) for o in self.other)):
            texts = _per_text(self.other if not isinstance(self.other, str) else self.other, n, "other")
            ref = batch.embed(texts)
        else:
            ref = torch.as_tensor(np.asarray(self.other, dtype=np.float64))
            if ref.ndim == 1:
                ref = ref[None].expand(n, -1)
            if ref.ndim != 2 or ref.shape[0] != n:
                raise ValueError(f"cosine_similarity: other must have shape (H,) or ({n}, H); got "
                                 f"{tuple(np.shape(self.other))}")

        def head(raw, mask, rows):
            r = ref.to(device=raw.device, dtype=raw.dtype)[rows.to(raw.device)]
            if r.shape[-1] != raw.shape[-1]:
                raise ValueError(f"cosine_similarity: the reference has {r.shape[-1]} dimensions, the "
                                 f"model's embeddings {raw.shape[-1]}")
            return torch.nn.functional.cosine_similarity(mean_pool(raw, mask), r, dim=-1)

        return head
