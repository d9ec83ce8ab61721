"""Text models in, token explanations out: strings explained through a Hugging Face model.

``lumos.explain(hf_model, texts, method=..., tokenizer=tok, target=...)`` routes here when
``inputs`` is a string or a list of strings. Each text is tokenised on its own (with the
tokenizer's special tokens) and the batch is padded **on the right** by lumos, whatever the
tokenizer's ``padding_side``: the real tokens of every text then sit at positions ``0 .. L-1``
with their usual position ids, padding is masked (``attention_mask``) or, in a causal model,
after every real token, so padding and batching never change a text's result.

Where the attributions are taken:

* gradient methods (saliency, gradient_x_input, integrated_gradients, smoothgrad) at the output
  of the model's input-embedding module (``model.get_input_embeddings()``; the core's ``at=``
  splice), then summed over the hidden dimension to one value per token. The per-dimension
  values stay in ``meta["embedding_values"]`` (shape ``(n, T, H)``).
* rules methods (lrp with ``composite="attnlrp"`` / ``"cp_lrp"``, deeplift) at the same place;
  a text target is linearised at the explained text's output for them (LRP starts from
  ``∂target/∂output ⊙ output``; a class index: the logit). Eager attention is forced for the call.
* token-removal methods (occlusion, i.e. leave-one-out of each token or span) on the token ids
  themselves: a token is hidden (the pad id with attention mask 0) or replaced by the mask
  token id, through the core's integer-input path.
* model-agnostic methods (lime, kernel_shap, permutation_shap, exact_shapley) with the tokens or
  words as players, removed by :class:`lumos.text.masker.TokenMasker`.

``Explanation.values`` has shape ``(n, T)`` (``T``: the longest text's token count); positions
after a text's last token are 0. ``Explanation.inputs`` holds the token ids. ``meta`` holds per
text: ``tokens`` (strings, "" at padding), ``special_tokens`` and ``attention_mask`` (booleans),
and, for a :func:`~lumos.text.targets.continuation` target, ``continuation`` (booleans).
``feature_names`` are the tokens when every text has the same tokens (always for one text).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.explanation import Explanation
from ..core.inputs import Wrapper
from ..core.registry import get_method, register_inputs
from ..core.torch_model import ModelGuard, model_device
from ..rules.engine import UnsupportedOperationError
from .attention import eager_attention
from .targets import TextBatch, TextTarget, cosine_similarity, mean_pool, next_token

__all__ = ["is_text", "explain_text", "TextModel", "GRADIENT_METHODS", "PROPAGATION_METHODS",
           "TOKEN_METHODS", "MASK_METHODS", "TEXT_METHODS", "encode"]

# methods that attribute to the token embeddings (through ``at=``)
GRADIENT_METHODS = ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad")
# rules methods (lumos.rules) at the token embeddings: text targets are linearised for them
PROPAGATION_METHODS = ("lrp", "deeplift")
# methods that remove tokens (replace their ids)
TOKEN_METHODS = ("occlusion",)
# model-agnostic methods on the tokens, through lumos.text.masker.TokenMasker
MASK_METHODS = ("lime", "kernel_shap", "permutation_shap", "exact_shapley")
_BASELINES = ("pad", "mask", "zero")
TEXT_METHODS = GRADIENT_METHODS + PROPAGATION_METHODS + TOKEN_METHODS + MASK_METHODS
# the id occlusion writes for fill="pad": the model gets the pad token with attention mask 0
HIDDEN = -1


def is_text(inputs: Any) -> bool:
    """A string, or a non-empty list/tuple of strings."""
    if isinstance(inputs, str):
        return True
    return isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(isinstance(t, str) for t in inputs)


class TextModel(Wrapper):
    """A Hugging Face model seen as ``f(input_ids, **kwargs) -> tensor`` (never seen by the user).

    Returns the logits (sequence classifiers, causal LMs) or the last hidden state (encoders);
    with a bound text target ``head`` it returns the target's scalar per row, computed with the
    text each row belongs to (``rows`` set by the enclosing wrappers).
    """

    def __init__(self, model: nn.Module, head: Callable | None = None, pad_id: int = 0):
        super().__init__(model)
        self.head = head
        self.pad_id = int(pad_id)

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if input_ids.is_floating_point():  # token ids carried as floats by the core
            input_ids = input_ids.round().long()
        hidden = input_ids == HIDDEN
        if bool(hidden.any()):  # occluded with fill="pad": the pad token, hidden by the mask
            input_ids = input_ids.masked_fill(hidden, self.pad_id)
            kwargs["attention_mask"] = kwargs["attention_mask"].masked_fill(hidden, 0)
        raw = raw_output(self.model(input_ids=input_ids, **kwargs))
        if self.head is None:
            return raw
        rows = self._rows if self._rows is not None else torch.arange(len(raw))
        return self.head(raw, kwargs["attention_mask"], rows)


def raw_output(out: Any) -> torch.Tensor:
    """Logits when the model has them, else the last hidden state."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        val = getattr(out, key, None)
        if isinstance(val, torch.Tensor):
            return val
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model: returned {type(out).__name__}, with neither logits nor a last hidden state")


def _special_ids(tokenizer: Any) -> set:
    ids = getattr(tokenizer, "all_special_ids", None) or []
    return {int(i) for i in ids}


def encode(tokenizer: Any, texts: Sequence[str], continuations: Sequence[str] | None = None,
           pad_id: int = 0) -> dict:
    """Tokenise each text on its own and right-pad the batch with ``pad_id``.

    Returns a dict with ``input_ids`` and ``attention_mask`` (``(n, T)`` int64 tensors),
    ``lengths`` and ``prompt_lengths`` (``(n,)``), ``continuation_ids`` (list of lists) and
    ``special`` (``(n, T)`` bool: the tokenizer's special tokens).
    """
    ids, conts, words = [], [], []
    for k, text in enumerate(texts):
        e = tokenizer(text, add_special_tokens=True)
        ids.append(list(e["input_ids"]))
        w = _words(tokenizer, e, text, 0)
        if continuations is not None:
            ec = tokenizer(continuations[k], add_special_tokens=False)
            conts.append(list(ec["input_ids"]))
            w = w + _words(tokenizer, ec, continuations[k], 1 + max([i for i, _ in w if i >= 0], default=-1))
        else:
            conts.append([])
        words.append(w)
    full = [a + c for a, c in zip(ids, conts)]
    n, T = len(full), max(len(f) for f in full)
    if T == 0:
        raise ValueError("inputs: the tokenizer produced no tokens for these texts")
    input_ids = torch.full((n, T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    special = torch.zeros((n, T), dtype=torch.bool)
    specials = _special_ids(tokenizer)
    word_index = np.full((n, T), -1, dtype=np.int64)
    word_text = np.full((n, T), "", dtype=object)
    for i, f in enumerate(full):
        units: dict = {}
        toks = tokenizer.convert_ids_to_tokens(f)
        for j, (wid, label) in enumerate(words[i]):
            key = ("word", wid) if wid >= 0 else ("token", j)  # special tokens: units of their own
            word_index[i, j] = units.setdefault(key, len(units))
            word_text[i, j] = label if wid >= 0 else toks[j]
        input_ids[i, :len(f)] = torch.as_tensor(f, dtype=torch.long)
        mask[i, :len(f)] = 1
        special[i, :len(ids[i])] = torch.as_tensor([t in specials for t in ids[i]], dtype=torch.bool)
    return {"input_ids": input_ids, "attention_mask": mask,
            "lengths": torch.as_tensor([len(f) for f in full]),
            "prompt_lengths": torch.as_tensor([len(a) for a in ids]),
            "continuation_ids": conts, "special": special,
            "word_index": word_index, "word_text": word_text.astype(str)}


def _words(tokenizer: Any, enc: Any, text: str, first: int) -> list:
    """``(word id or -1, word text)`` per token of one tokenisation (word ids from ``first``)."""
    try:
        wids = enc.word_ids()
    except (AttributeError, ValueError):
        raise TypeError("tokenizer: word-level grouping needs a fast tokenizer (one that reports "
                        "word_ids()); load it with use_fast=True") from None
    spans: dict = {}
    for j, w in enumerate(wids):
        if w is not None:
            a, b = enc.token_to_chars(j) or (0, 0)
            lo, hi = spans.get(w, (a, b))
            spans[w] = (min(lo, a), max(hi, b))
    return [(-1, "") if w is None else (first + w, text[spans[w][0]:spans[w][1]]) for w in wids]


def _embedding_name(model: nn.Module) -> str:
    getter = getattr(model, "get_input_embeddings", None)
    emb = getter() if callable(getter) else None
    if emb is None:
        raise ValueError(
            "model: lumos takes token attributions at the input-embedding module, found with "
            "model.get_input_embeddings(); this model has none. Pass a Hugging Face model, or "
            "give embeddings= (the dotted name of the token-embedding module).")
    return next(n for n, m in model.named_modules() if m is emb)


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


def _token_id_fn(tokenizer: Any, vocab: int) -> Callable:
    def token_id(token: Any, name: str) -> int:
        if isinstance(token, str):
            ids = tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                toks = tokenizer.convert_ids_to_tokens(ids)
                raise ValueError(f"{name}: {token!r} is {len(ids)} tokens {toks}, not one; give a "
                                 "single token (or its id), or use a continuation target")
            return int(ids[0])
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise TypeError(f"{name} must be a token string or an int id; got {token!r}")
        if not 0 <= int(token) < vocab:
            raise ValueError(f"{name}: id {int(token)} is outside the vocabulary (0 .. {vocab - 1})")
        return int(token)

    return token_id


_KINDS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def _kind(raw: torch.Tensor, out: Any, vocab: int | None = None) -> str:
    """``"lm"``, ``"classifier"`` or ``"encoder"``; a plain module's 3-d output is a causal LM's
    logits when its last axis is the vocabulary (``vocab``), else token states."""
    if getattr(out, "logits", None) is not None and raw.ndim == 3:
        return "lm"
    if getattr(out, "logits", None) is not None:
        return "classifier"
    if raw.ndim == 3:  # a plain module's tensor: logits over the vocabulary, or token states
        return "lm" if raw.shape[-1] == vocab else "encoder"
    return "classifier"


def explain_text(model: Any, texts: Any, method: str = "integrated_gradients", target: Any = None, *,
                 tokenizer: Any = None, embeddings: str | None = None, **params: Any) -> Explanation:
    """Explain a text model on strings; what :func:`lumos.explain` does when ``inputs`` are strings.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face model (sequence classifier, encoder / sentence-embedding model, causal LM)
        or any module called as ``model(input_ids=..., attention_mask=...)`` that returns logits
        or a last hidden state.
    texts : str or list of str
    method : str
        One of :data:`GRADIENT_METHODS` and :data:`PROPAGATION_METHODS` (attributions at the
        token embeddings), :data:`TOKEN_METHODS` (tokens removed by replacing their ids) or
        :data:`MASK_METHODS` (tokens or words as players; ``masker=TokenMasker(...)``).
    target : int, "predicted", callable, :class:`~lumos.text.targets.TextTarget` or None
        A classifier: as for any model (an int class explains its logit). A causal LM: a text
        target; an int or a string is :func:`~lumos.text.targets.next_token` of that token,
        ``None`` the predicted next token. An encoder: a callable of the last hidden state
        ``(m, T, H)`` or a text target such as :func:`~lumos.text.targets.cosine_similarity`.
    tokenizer : a Hugging Face tokenizer
        The model's tokenizer (required).
    embeddings : str, optional
        Dotted name of the token-embedding module (default: ``model.get_input_embeddings()``).
    **params
        The method's parameters. Integrated gradients' ``baselines`` may be ``"pad"`` (default),
        ``"mask"`` or ``"zero"``: every real, non-special token's embedding is replaced by the pad
        token's embedding, the mask token's embedding, or zeros (special tokens and padding keep
        their own, so their attribution is exactly 0); or an activation tensor ``(n, T, H)``.
        Occlusion's ``fill`` may be ``"pad"`` (default: hidden by the attention mask) or
        ``"mask"`` (or a token id, seen by the model). DeepLIFT takes the same ``baselines`` as
        integrated gradients. Saliency's ``mode`` defaults to ``"abs"`` on text.

    Returns
    -------
    Explanation
        ``values`` of shape ``(n, T)``; see the module docs for ``meta``.
    """
    from ..core.validation import check_kwargs

    if tokenizer is None:
        raise ValueError("tokenizer: strings are explained through the model's tokenizer; pass "
                         "tokenizer= (e.g. AutoTokenizer.from_pretrained(...))")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: text methods need a torch.nn.Module (a Hugging Face model); got "
                        f"{type(model).__name__}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not is_text(texts):
        raise TypeError("inputs: give a string or a list of strings")
    info = get_method(method)
    if info.name not in TEXT_METHODS:
        raise ValueError(f"method: {info.name!r} is not available on text; text methods are "
                         f"{list(TEXT_METHODS)}")
    owned = ("at", "forward_args", "layer_side") + (
        ("background", "background_size", "groups", "output") if info.name in MASK_METHODS else ())
    for own in owned:
        if own in params:
            raise ValueError(f"{own}: set by lumos for text inputs (attributions go to the token "
                             "embeddings, the attention mask is passed for you)")
    check_kwargs(info.func, params, info.name, skip=("model", "inputs", "target"))

    pad = _pad_id(tokenizer)
    cont = getattr(target, "continuation_text", None) if isinstance(target, TextTarget) else None
    if cont is not None:
        cont = [cont] * len(texts) if isinstance(cont, str) else list(cont)
        if len(cont) != len(texts):
            raise ValueError(f"target: {len(cont)} continuations for {len(texts)} texts")
    enc = encode(tokenizer, texts, cont, pad)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    dev = model_device(model)
    emb_name = embeddings if embeddings is not None else _embedding_name(model)
    vocab = int(dict(model.named_modules())[emb_name].weight.shape[0]) if hasattr(
        dict(model.named_modules()).get(emb_name), "weight") else 1 << 62
    if int(ids.max()) >= vocab:
        raise ValueError(f"tokenizer: token id {int(ids.max())} is outside the model's vocabulary "
                         f"of {vocab}; is this the model's tokenizer?")

    # the rules methods need the attention's operations: fused kernels (sdpa) are swapped for
    # eager attention for the call, and restored
    eager = eager_attention(model) if info.name in PROPAGATION_METHODS else contextlib.nullcontext()
    # The user's model is guarded here whenever this function runs it itself (the probing forward,
    # text targets, the masked predict function of the model-agnostic methods). A gradient,
    # propagation or occlusion method on a class target only runs the model inside its own
    # torch_call, whose ModelGuard covers the wrapper and the model in it (and takes the same
    # lock): a second guard around it would snapshot and restore the whole model twice (5 ms a
    # call on MiniLM, the difference to Captum's time).
    kind = _KINDS.get(model)
    probe = kind is None or kind == "lm" or isinstance(target, TextTarget)
    # (without the guard, inference mode is still switched off: the baselines built here must be
    # ordinary tensors when the caller is inside torch.inference_mode())
    outer = ModelGuard(model) if probe or info.name in MASK_METHODS else torch.inference_mode(False)
    with outer, eager:
        # the output kind of a model never changes: one probing forward per model, not per call
        # (it was a third of gradient x input's time); text targets still need the raw output
        raw = None
        if probe:
            with torch.no_grad():
                out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
                raw = raw_output(out).detach()
            kind = _KINDS.setdefault(model, _kind(raw, out, vocab))

        def embed(other: Sequence[str]) -> torch.Tensor:
            e = encode(tokenizer, other, None, pad)
            with torch.no_grad():
                h = raw_output(model(input_ids=e["input_ids"].to(dev),
                                     attention_mask=e["attention_mask"].to(dev)))
            return mean_pool(h, e["attention_mask"].to(dev)).detach()

        if kind == "lm" and not isinstance(target, TextTarget) and not callable(target):
            target = next_token("predicted" if target is None else target)
        if kind == "encoder" and target is None:
            raise ValueError("target: an encoder returns token states, not one score; give a text "
                             "target (e.g. lumos.text.targets.cosine_similarity(other_sentence)) or "
                             "a callable of the last hidden state (m, T, H) -> (m,)")
        head, core_target = None, target
        if isinstance(target, TextTarget):
            batch = TextBatch(enc["lengths"], enc["prompt_lengths"], enc["continuation_ids"],
                              embed, _token_id_fn(tokenizer, vocab), kind, raw)
            if info.name in PROPAGATION_METHODS and isinstance(target, cosine_similarity):
                raise ValueError(
                    f"target: {info.name} starts from the target linearised at the model output, "
                    "and a cosine similarity is scale-invariant (its linearisation sums to 0); use "
                    "a gradient method (integrated_gradients, gradient_x_input) for it")
            head, core_target = target.bind(batch), None
            if info.name in PROPAGATION_METHODS:
                head = _linearised(head, raw, mask.to(dev), info.name == "lrp")
        wrapped = TextModel(model, head, pad)
        fargs = {"attention_mask": mask.to(dev)}
        if info.name in MASK_METHODS:
            expl = _masked(info, wrapped, texts, enc, tokenizer, pad, kind, core_target, params, dev)
            return _token_explanation(expl, np.asarray(expl.values), None, enc, tokenizer, target,
                                      emb_name)
        if info.name in GRADIENT_METHODS + PROPAGATION_METHODS:
            if info.name in ("integrated_gradients", "deeplift"):
                params["baselines"] = _ig_baselines(model, emb_name, tokenizer, enc,
                                                    params.get("baselines", "pad"), dev)
            if info.name == "saliency":
                # the signed gradient summed over the hidden dimension is exactly 0 when a layer
                # norm follows the embeddings (its gradient is orthogonal to the ones vector):
                # text saliency is |gradient| summed over the dimension (its L1 norm) by default
                params.setdefault("mode", "abs")
            try:
                expl = info.func(wrapped, ids.to(dev), target=core_target, at=emb_name,
                                 forward_args=fargs, **params)
            except UnsupportedOperationError as err:
                if info.name != "deeplift":
                    raise
                raise UnsupportedOperationError(
                    f"{err} -- DeepLIFT has rules for piecewise-linear networks only; on this "
                    "text model use integrated_gradients (its path-integral counterpart) or "
                    "lrp with composite='attnlrp'") from None
            hidden = np.asarray(expl.values)
            values = hidden.sum(-1)
        else:
            params["window"] = params.get("window", 1)
            params["stride"] = params.get("stride", 1)
            params["fill"] = _fill(tokenizer, params.get("fill", "pad"))
            expl = info.func(wrapped, ids.to(dev), target=core_target, forward_args=fargs, **params)
            hidden, values = None, np.asarray(expl.values)
    return _token_explanation(expl, values, hidden, enc, tokenizer, target, emb_name)


class _LinearHeadLRP(torch.autograd.Function):
    """``s = Σ w ⊙ z`` per row, passing relevance back by the ε rule: ``R_z = w ⊙ z R_s / s``."""

    @staticmethod
    def forward(ctx, z, w):
        s = (w * z).reshape(len(z), -1).sum(1)
        ctx.save_for_backward(z, w, s)
        return s

    @staticmethod
    def backward(ctx, R):
        z, w, s = ctx.saved_tensors
        tiny = torch.finfo(s.dtype).tiny
        stab = torch.where(s >= 0, s + tiny, s - tiny)
        return w * z * (R / stab).reshape((-1,) + (1,) * (z.ndim - 1)), None


def _masked(info, wrapped: TextModel, texts: list, enc: dict, tokenizer: Any, pad: int, kind: str,
            target: Any, params: dict, dev) -> Explanation:
    """A model-agnostic method on the tokens: the players are the model's own tokens (or words)."""
    from .masker import TokenMasker

    masker = params.pop("masker", None)
    masker = TokenMasker() if masker is None else masker
    if not isinstance(masker, TokenMasker):
        raise TypeError(f"masker: for text explained through a tokenizer give a "
                        f"lumos.text.masker.TokenMasker; got {type(masker).__name__}")
    masker = masker.prepared(enc, tokenizer, pad, kind)

    def predict(X: np.ndarray, text: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(X), dtype=torch.long, device=dev)
        with torch.no_grad(), wrapped.rows(torch.as_tensor(np.asarray(text), dtype=torch.long)):
            out = wrapped(x[:, 0], attention_mask=x[:, 1])
        return out.detach().cpu().numpy()

    return info.func(predict, texts, target=target, masker=masker,
                     forward_args={"text": np.arange(len(texts))}, **params)


def _linearised(head: Callable, raw: torch.Tensor, mask: torch.Tensor, lrp: bool) -> Callable:
    """The text target as a fixed linear map of the model output, taken at the explained texts.

    ``h(z) = Σ g ⊙ z`` with ``g = ∂target/∂output`` at each explained text's own output ``z``
    (the same map for every row of that text). LRP then starts from ``g ⊙ z`` at the model
    output (for a class index or a class contrast: the logit (difference) itself; for a token's
    log-probability ``z_t − Σ_k p_k z_k``), and DeepLIFT's multipliers through the map are exact
    (its attributions sum to ``h(x) − h(baseline)``).
    """
    o = raw.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(head(o, mask, torch.arange(len(o))).sum(), o)
    g = g.detach()

    def linear(out, m, rows):
        w = g.to(out.device, out.dtype)[rows.to(out.device)]
        if lrp:
            return _LinearHeadLRP.apply(out, w)
        return (w * out).reshape(len(out), -1).sum(1)

    return linear


def _ig_baselines(model: nn.Module, emb_name: str, tokenizer: Any, enc: dict, spec: Any, dev) -> Any:
    if not isinstance(spec, str):
        return spec  # an activation tensor (n, T, H) or a set of them, as the core takes
    if spec not in _BASELINES:
        raise ValueError(f"baselines: for text give one of {list(_BASELINES)} or an embedding "
                         f"tensor of shape (n, T, H); got {spec!r}")
    emb = dict(model.named_modules())[emb_name]
    ids = enc["input_ids"].to(dev)
    with torch.no_grad():
        act = emb(ids).detach().clone()
        if spec == "zero":
            fill = torch.zeros_like(act[0, 0])
        else:
            tid = getattr(tokenizer, f"{spec}_token_id", None)
            if tid is None:
                raise ValueError(f"baselines={spec!r}: the tokenizer has no {spec} token; use "
                                 f"{[b for b in _BASELINES if b != spec]} or an embedding tensor")
            fill = emb(torch.as_tensor([[int(tid)]], device=dev))[0, 0].detach()
    replace = (enc["attention_mask"].bool() & ~enc["special"]).to(dev)
    act[replace] = fill.to(act.dtype)
    return act


def _fill(tokenizer: Any, fill: Any) -> float:
    if isinstance(fill, str):
        if fill not in ("pad", "mask"):
            raise ValueError(f"fill: for text give 'pad', 'mask' or a token id; got {fill!r}")
        if fill == "pad":
            return float(HIDDEN)
        tid = getattr(tokenizer, "mask_token_id", None)
        if tid is None:
            raise ValueError("fill='mask': the tokenizer has no mask token; use 'pad' or a token id")
        return float(tid)
    if isinstance(fill, bool) or not isinstance(fill, (int, np.integer)):
        raise TypeError(f"fill: for text give 'pad', 'mask' or an int token id; got {fill!r}")
    return float(fill)


def _token_explanation(expl: Explanation, values: np.ndarray, hidden: np.ndarray | None, enc: dict,
                       tokenizer: Any, target: Any, emb_name: str) -> Explanation:
    mask = enc["attention_mask"].numpy().astype(bool)
    values = np.where(mask, values, 0).astype(values.dtype)
    ids = enc["input_ids"].numpy()
    n, T = ids.shape
    tokens = np.full((n, T), "", dtype=object)
    for i in range(n):
        L = int(enc["lengths"][i])
        tokens[i, :L] = tokenizer.convert_ids_to_tokens(ids[i, :L].tolist())
    tokens = tokens.astype(str)
    meta = dict(expl.meta)
    keys = list(expl.sample_keys)
    extra = {"tokens": tokens, "special_tokens": enc["special"].numpy(), "attention_mask": mask,
             "word_index": enc["word_index"], "word_text": enc["word_text"]}
    if hidden is not None:
        extra["embedding_values"] = np.where(mask[:, :, None], hidden, 0).astype(hidden.dtype)
        meta["embeddings"] = emb_name
    if enc["continuation_ids"] and any(enc["continuation_ids"]):
        cont = np.zeros((n, T), dtype=bool)
        for i, c in enumerate(enc["continuation_ids"]):
            p = int(enc["prompt_lengths"][i])
            cont[i, p:p + len(c)] = True
        extra["continuation"] = cont
    meta.update(extra)
    keys += [k for k in extra if k not in keys]
    meta["padding"] = "right (by lumos)"
    if isinstance(target, TextTarget):
        meta["target"] = target.description
    same = all(list(tokens[i]) == list(tokens[0]) for i in range(n))
    params = dict(expl.params)
    return Explanation(
        values=values, inputs=ids, target=expl.target, output=expl.output,
        baseline_output=expl.baseline_output, method=expl.method, params=params, meta=meta,
        sample_keys=tuple(keys), feature_names=list(tokens[0]) if same else None)


def _routes_here(model: Any, inputs: Any, params: dict) -> bool:
    """Strings with a tokenizer, or strings handed to a torch module (which cannot read them).

    A predict function on strings without a tokenizer stays with the model-agnostic methods
    (LIME and the Shapley methods mask words themselves).
    """
    return is_text(inputs) and ("tokenizer" in params or isinstance(model, nn.Module))


register_inputs(_routes_here, explain_text)
