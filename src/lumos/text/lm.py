"""Language models: logit lens, direct logit attribution and generation attribution.

Three questions about a causal language model (Hugging Face ``*ForCausalLM``: GPT-2 and Llama
architectures, or any module with the same interface):

* :func:`logit_lens` -- what does the model "think" after each layer? The residual stream after
  every block is read out through the model's own final norm and unembedding (nostalgebraist
  2020, "interpreting GPT: the logit lens"); with a ``translator`` (one affine map per layer) it
  is the tuned lens (Belrose et al. 2023, "Eliciting latent predictions from transformers with
  the tuned lens").
* :func:`direct_logit_attribution` -- which layer and which attention head wrote a logit? The
  final residual stream is a sum (embeddings + every attention block's output + every MLP's
  output; an attention output is a sum over heads through the output projection), and the final
  norm is linear once its scale is frozen at the actual input (the standard linearisation of
  Elhage et al. 2021, "A mathematical framework for transformer circuits"), so the logit is a
  sum of one term per component.
* :func:`generation_attribution` -- which prompt tokens (and which earlier generated tokens) made
  the model write each token of a greedy continuation? One ``(k, T_prompt + k)`` matrix per
  prompt, by gradient x input or integrated gradients at the input embeddings, one generation
  step at a time (no graph is kept across steps), with a contrastive option
  ``log p(token) - log p(alternative)``.

Conventions. Token positions are those of the tokenised prompt, right-padded in a batch (causal
attention makes right padding exact: a pad after the read position cannot influence it, so a
prompt's numbers do not depend on the others in its batch). Every function runs the model in
eval mode under a :class:`~lumos.core.torch_model.ModelGuard` and leaves it as found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..attribution._approximation import check_integration, integration_points
from ..core.execution import chunks, check_batch_size
from ..core.torch_model import ModelGuard, check_finite
from ..core.validation import check_choice, check_number

__all__ = ["LogitLens", "logit_lens", "DirectLogitAttribution", "direct_logit_attribution",
           "GenerationAttribution", "generation_attribution"]


# --------------------------------------------------------------------------------------------
# Model anatomy: where the blocks, the final norm and the unembedding are
# --------------------------------------------------------------------------------------------

_BLOCKS = ("h", "layers", "blocks")
_FINAL_NORM = ("ln_f", "norm", "final_layernorm", "final_layer_norm")
# (attention module, its output projection, mlp module) per block, by attribute name
_ATTN = (("attn", "c_proj", "mlp"), ("self_attn", "o_proj", "mlp"))


@dataclass
class _Anatomy:
    blocks: Sequence[nn.Module]
    norm: nn.Module
    unembed: nn.Module


def _anatomy(model: nn.Module) -> _Anatomy:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a causal language model); got "
                        f"{type(model).__name__}")
    base = getattr(model, "base_model", model)
    blocks = next((getattr(base, n) for n in _BLOCKS
                   if isinstance(getattr(base, n, None), nn.ModuleList)), None)
    norm = next((getattr(base, n) for n in _FINAL_NORM
                 if isinstance(getattr(base, n, None), nn.Module)), None)
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    missing = [what for what, got in (("a ModuleList of blocks (h / layers / blocks)", blocks),
                                      ("a final norm (ln_f / norm)", norm),
                                      ("an unembedding (get_output_embeddings())", unembed))
               if got is None]
    if missing:
        raise ValueError(f"model: a {type(model).__name__} has no " + ", no ".join(missing) +
                         "; the logit lens and direct logit attribution need a causal LM laid out "
                         "like Hugging Face GPT-2 or Llama")
    return _Anatomy(list(blocks), norm, unembed)


def _first(o: Any) -> torch.Tensor:
    return o[0] if isinstance(o, (tuple, list)) else o


def _as_ids(inputs: Any, tokenizer: Any, attention_mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n, T) and attention mask (n, T) from ids, a tokenizer dict or strings."""
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs
                                   and all(isinstance(s, str) for s in inputs)):
        if tokenizer is None:
            raise ValueError("inputs: strings need tokenizer= (the model's tokenizer)")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return _pad_right(enc)
    if isinstance(inputs, dict) or hasattr(inputs, "keys"):
        if "input_ids" not in inputs:
            raise ValueError(f"inputs: a dict of model inputs needs 'input_ids'; got keys "
                             f"{sorted(inputs.keys())}")
        attention_mask = inputs.get("attention_mask", attention_mask)
        inputs = inputs["input_ids"]
    ids = torch.as_tensor(np.asarray(inputs.detach().cpu() if torch.is_tensor(inputs) else inputs))
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.numel() == 0:
        raise ValueError(f"inputs: expected token ids of shape (batch, tokens) with an integer "
                         f"dtype; got shape {tuple(ids.shape)} and dtype {ids.dtype}")
    ids = ids.long()
    if attention_mask is None:
        mask = torch.ones_like(ids)
    else:
        mask = torch.as_tensor(np.asarray(attention_mask.detach().cpu()
                                          if torch.is_tensor(attention_mask) else attention_mask))
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask: expected shape {tuple(ids.shape)} like the token "
                             f"ids; got {tuple(mask.shape)}")
        mask = mask.long()
        lengths = mask.sum(1)
        right = (mask == (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()).all()
        if not bool(right) or bool((lengths == 0).any()):
            raise ValueError("attention_mask: expected right padding (ones then zeros) and at "
                             "least one token per prompt; tokenize with padding_side='right'")
    return ids, mask


def _pad_right(seqs: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    if any(len(s) == 0 for s in seqs):
        raise ValueError("inputs: every prompt needs at least one token")
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _decode(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    return [tokenizer.decode([int(i)]) for i in ids]


def _residual_streams(model: nn.Module, anat: _Anatomy, ids: torch.Tensor, mask: torch.Tensor,
                      extra: Callable | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The residual stream entering block 0 and leaving every block, and the model's logits."""
    streams: list[torch.Tensor] = []
    handles = [anat.blocks[0].register_forward_pre_hook(
        lambda m, a, k: streams.append(_first(a) if a else k["hidden_states"]), with_kwargs=True)]
    handles += [b.register_forward_hook(lambda m, a, o: streams.append(_first(o)))
                for b in anat.blocks]
    if extra is not None:
        handles += extra()
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()
    return streams, logits


# --------------------------------------------------------------------------------------------
# Logit lens
# --------------------------------------------------------------------------------------------

@dataclass
class LogitLens:
    """The next-token distribution the residual stream gives after each layer.

    Attributes
    ----------
    logits : ndarray, shape (layers + 1, batch, tokens, vocab)
        ``unembed(final_norm(translator[l](h_l)))`` for the stream ``h_l`` entering the first
        block (``l = 0``, the embeddings) and leaving every block (``l = 1..layers``); the last
        layer equals the model's own logits.
    log_probs : ndarray, shape like ``logits``
        Their log-softmax over the vocabulary.
    top_ids, top_log_probs : ndarray, shape (layers + 1, batch, tokens, top_k)
        The ``top_k`` most likely next tokens per layer and position, most likely first.
    top_tokens : list
        ``top_tokens[l][i][t]`` the decoded top tokens (token ids as strings without tokenizer).
    input_ids, attention_mask : ndarray, shape (batch, tokens)
    layer_names : list of str
        ``"embeddings"``, ``"block 0"``, ..., for the first axis.
    tuned : bool
        Whether a translator was applied (tuned lens).
    """

    logits: np.ndarray
    log_probs: np.ndarray
    top_ids: np.ndarray
    top_log_probs: np.ndarray
    top_tokens: list
    input_ids: np.ndarray
    attention_mask: np.ndarray
    layer_names: list
    tuned: bool = False


def logit_lens(model: nn.Module, inputs: Any, *, attention_mask: Any = None,
               translator: Sequence[Callable | None] | None = None, top_k: int = 5,
               tokenizer: Any = None) -> LogitLens:
    """Read the residual stream after every layer out through the final norm and unembedding.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM laid out like Hugging Face GPT-2 (``transformer.h``, ``transformer.ln_f``)
        or Llama (``model.layers``, ``model.norm``), with ``get_output_embeddings()``.
    inputs : Tensor or ndarray of int, shape (batch, tokens); dict; str or list of str
        Token ids (right-padded, with ``attention_mask``), the dict a tokenizer returns, or
        strings (with ``tokenizer=``).
    attention_mask : array of 0/1, shape (batch, tokens), optional
        Right padding only (ones then zeros).
    translator : sequence of callables (or None), optional
        The tuned lens: ``translator[l]`` maps the stream ``h_l`` (``(..., hidden)``) before
        the final norm; one entry per stream (``layers + 1``) or per stream but the last
        (``layers``, the last stream is then read as it is); ``None`` entries are the identity.
        Typically an ``nn.Linear(hidden, hidden)`` per layer trained to match the final logits.
    top_k : int, default 5
    tokenizer : optional
        Decodes the top tokens.

    Returns
    -------
    LogitLens
    """
    top_k = int(check_number(top_k, "top_k", low=1, integer=True))
    anat = _anatomy(model)
    ids, mask = _as_ids(inputs, tokenizer, attention_mask)
    n_streams = len(anat.blocks) + 1
    if translator is not None:
        translator = list(translator)
        if len(translator) == n_streams - 1:
            translator = translator + [None]
        if len(translator) != n_streams:
            raise ValueError(f"translator: expected one map per residual stream ({n_streams}: the "
                             f"embeddings and {n_streams - 1} blocks) or one fewer; got "
                             f"{len(translator)}")
        bad = [i for i, t in enumerate(translator) if t is not None and not callable(t)]
        if bad:
            raise TypeError(f"translator: entries {bad} are neither callables nor None")
    with ModelGuard(model), torch.no_grad():
        model.eval()
        dev = _device(model)
        streams, _ = _residual_streams(model, anat, ids.to(dev), mask.to(dev))
        if len(streams) != n_streams:
            raise ValueError(f"model: expected {n_streams} residual streams from its blocks; saw "
                             f"{len(streams)} (a block was skipped or called twice)")
        logits = []
        for l, h in enumerate(streams):
            if translator is not None and translator[l] is not None:
                h2 = translator[l](h)
                if not torch.is_tensor(h2) or h2.shape != h.shape:
                    raise ValueError(f"translator[{l}] must return a tensor of shape "
                                     f"{tuple(h.shape)}; got {getattr(h2, 'shape', type(h2))}")
                h = h2
            logits.append(anat.unembed(anat.norm(h)))
        logits = torch.stack(logits).float()
        check_finite(logits, "the logit lens")
        logp = torch.log_softmax(logits, dim=-1)
        k = min(top_k, logits.shape[-1])
        top = logp.topk(k, dim=-1)
    top_ids = top.indices.cpu().numpy()
    top_tokens = [[[_decode(tokenizer, top_ids[l, i, t]) for t in range(top_ids.shape[2])]
                   for i in range(top_ids.shape[1])] for l in range(top_ids.shape[0])]
    return LogitLens(logits=logits.cpu().numpy(), log_probs=logp.cpu().numpy(), top_ids=top_ids,
                     top_log_probs=top.values.cpu().numpy(), top_tokens=top_tokens,
                     input_ids=ids.numpy(), attention_mask=mask.numpy(),
                     layer_names=["embeddings"] + [f"block {i}" for i in range(n_streams - 1)],
                     tuned=translator is not None)
