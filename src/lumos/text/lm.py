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


# --------------------------------------------------------------------------------------------
# Direct logit attribution
# --------------------------------------------------------------------------------------------

@dataclass
class DirectLogitAttribution:
    """The logit (or logit difference) written by each component of the residual stream.

    Attributes
    ----------
    values : ndarray, shape (batch, components)
        One term per component (``component_names``: ``"embeddings"``, then ``"attn l"`` and
        ``"mlp l"`` per block, then ``"bias"``: the final norm's shift and the unembedding's
        bias). ``values.sum(1) == logit``.
    component_names : list of str
    heads : ndarray, shape (batch, layers, heads)
        The attention terms split by head through the output projection;
        ``heads[:, l].sum(-1) + head_bias[:, l]`` is the ``"attn l"`` term.
    head_bias : ndarray, shape (batch, layers)
        The output projection's bias term of each attention block.
    logit : ndarray, shape (batch,)
        The model's own logit of ``target_ids`` (minus that of ``alternative_ids``).
    target_ids, alternative_ids : ndarray of int, shape (batch,); alternative_ids may be None
    positions : ndarray of int, shape (batch,)
        The read position of each prompt.
    scale : ndarray, shape (batch,)
        The final norm's frozen scale (the standard deviation, or the RMS, of the final stream
        plus its epsilon) at that position.
    """

    values: np.ndarray
    component_names: list
    heads: np.ndarray
    head_bias: np.ndarray
    logit: np.ndarray
    target_ids: np.ndarray
    alternative_ids: np.ndarray | None
    positions: np.ndarray
    scale: np.ndarray


def _norm_kind(norm: nn.Module) -> tuple[bool, float, torch.Tensor | None, torch.Tensor | None]:
    """(centres?, eps, weight, bias) of a LayerNorm or an RMS norm."""
    if isinstance(norm, nn.LayerNorm):
        return True, float(norm.eps), norm.weight, norm.bias
    if "rms" in type(norm).__name__.lower() or isinstance(norm, getattr(nn, "RMSNorm", ())):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        if eps is None:
            eps = torch.finfo(torch.float32).eps
        return False, float(eps), getattr(norm, "weight", None), None
    raise ValueError(f"model: the final norm is a {type(norm).__name__}; direct logit "
                     "attribution linearises a LayerNorm or an RMS norm only")


def _projection_in_out(proj: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output projection as an (in, out) matrix and its bias."""
    if isinstance(proj, nn.Linear):
        return proj.weight.T, proj.bias
    if type(proj).__name__ == "Conv1D":  # Hugging Face GPT-2: y = x @ W + b, W of shape (in, out)
        return proj.weight, proj.bias
    raise ValueError(f"model: the attention output projection is a {type(proj).__name__}; "
                     "expected nn.Linear or Hugging Face Conv1D")


def _token_ids(spec: Any, n: int, tokenizer: Any, name: str, vocab: int) -> torch.Tensor:
    if isinstance(spec, str) or (isinstance(spec, (list, tuple)) and spec
                                 and all(isinstance(s, str) for s in spec)):
        if tokenizer is None:
            raise ValueError(f"{name}: tokens given as strings need tokenizer=")
        words = [spec] * n if isinstance(spec, str) else list(spec)
        out = []
        for w in words:
            enc = tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise ValueError(f"{name}: {w!r} is {len(enc)} tokens, not one")
            out.append(enc[0])
        spec = out
    t = torch.as_tensor(np.asarray(spec))
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,) or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected a token id, a token string or one per prompt ({n}); "
                         f"got {spec!r}")
    t = t.long()
    if bool(((t < 0) | (t >= vocab)).any()):
        raise ValueError(f"{name}: token ids must lie in [0, {vocab}); got {t.tolist()}")
    return t


def _positions(position: Any, lengths: torch.Tensor) -> torch.Tensor:
    n = len(lengths)
    p = torch.as_tensor(np.asarray(position))
    if p.dim() == 0:
        p = p.expand(n)
    if p.shape != (n,) or p.dtype.is_floating_point or p.dtype == torch.bool:
        raise ValueError(f"position: expected an int or one int per prompt ({n}); got {position!r}")
    p = torch.where(p < 0, lengths + p, p).long()
    if bool(((p < 0) | (p >= lengths)).any()):
        raise ValueError(f"position: {position!r} lies outside a prompt (lengths "
                         f"{lengths.tolist()})")
    return p


def direct_logit_attribution(model: nn.Module, inputs: Any, *, target: Any = None,
                             alternative: Any = None, position: Any = -1,
                             attention_mask: Any = None, tokenizer: Any = None
                             ) -> DirectLogitAttribution:
    """Split a next-token logit into the terms written by each layer and attention head.

    The final residual stream is ``x = e + sum_l (a_l + m_l)`` (embeddings, attention and MLP
    outputs of every block; ``a_l = sum_h z_h W_O^h + b_O``). The final norm
    ``(x - mean x) / s * gamma + beta`` (``s`` the standard deviation plus epsilon; an RMS norm
    has no mean and no ``beta``) is linear in ``x`` once ``s`` is frozen at its actual value, so
    ``logit = sum_c u . ((c - mean c) / s * gamma) + u . beta + b_U`` with ``u`` the target's
    unembedding row: one term per component ``c``, exactly summing to the model's logit.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM laid out like Hugging Face GPT-2 or Llama (blocks with ``attn``/``c_proj``
        or ``self_attn``/``o_proj`` and ``mlp``).
    inputs : token ids (batch, tokens), tokenizer dict, or strings with ``tokenizer=``
    target : int, str, or one per prompt; default the model's most likely next token
    alternative : int, str, or one per prompt, optional
        Attribute the logit difference ``target - alternative`` ("why this and not that").
    position : int or one int per prompt, default -1
        The position read; negative values count back from each prompt's last real token.
    attention_mask : right padding, optional
    tokenizer : optional

    Returns
    -------
    DirectLogitAttribution
    """
    anat = _anatomy(model)
    ids, mask = _as_ids(inputs, tokenizer, attention_mask)
    n, n_layers = len(ids), len(anat.blocks)
    pos = _positions(position, mask.sum(1))
    centre, eps, gamma, beta = _norm_kind(anat.norm)
    parts = []
    for b in anat.blocks:
        found = next(((getattr(b, a), getattr(getattr(b, a), p), getattr(b, m)) for a, p, m in _ATTN
                      if hasattr(b, a) and hasattr(getattr(b, a), p) and hasattr(b, m)), None)
        if found is None:
            raise ValueError(f"model: a block ({type(b).__name__}) has no attn/c_proj or "
                             "self_attn/o_proj and mlp; its residual stream cannot be decomposed")
        parts.append(found)
    n_heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if not isinstance(n_heads, int):
        raise ValueError("model: direct logit attribution per head needs "
                         "model.config.num_attention_heads")
    rows = torch.arange(n)
    with ModelGuard(model), torch.no_grad():
        model.eval()
        dev = _device(model)
        acts: dict = {}

        def hooks():
            hs = []
            for l, (attn, proj, mlp) in enumerate(parts):
                hs.append(attn.register_forward_hook(
                    lambda m, a, o, l=l: acts.__setitem__(("attn", l), _first(o))))
                hs.append(proj.register_forward_pre_hook(
                    lambda m, a, l=l: acts.__setitem__(("z", l), a[0])))
                hs.append(mlp.register_forward_hook(
                    lambda m, a, o, l=l: acts.__setitem__(("mlp", l), _first(o))))
            return hs

        streams, logits = _residual_streams(model, anat, ids.to(dev), mask.to(dev), hooks)
        check_finite(logits, "the inputs")
        vocab = logits.shape[-1]
        last = logits[rows, pos].float()
        tgt = (last.argmax(-1).cpu() if target is None
               else _token_ids(target, n, tokenizer, "target", vocab))
        alt = None if alternative is None else _token_ids(alternative, n, tokenizer,
                                                           "alternative", vocab)
        W = anat.unembed.weight.detach().double()
        u = W[tgt.to(dev)] - (W[alt.to(dev)] if alt is not None else 0)  # (n, H)
        b_u = getattr(anat.unembed, "bias", None)
        logit = last[rows, tgt] - (last[rows, alt] if alt is not None else 0)

        def at(t):
            return t[rows, pos].double()

        x = at(streams[-1])
        comps = [at(streams[0])]
        for l in range(n_layers):
            comps += [at(acts[("attn", l)]), at(acts[("mlp", l)])]
        gap = (sum(comps) - x).abs().max() / x.abs().max().clamp_min(1e-12)
        if gap > 1e-4:
            raise ValueError(f"model: its final residual stream is not the sum of the embeddings "
                             f"and the attention and MLP outputs (relative gap {float(gap):.2g}); "
                             "direct logit attribution needs a decomposable residual stream")
        if centre:
            s = torch.sqrt(x.var(-1, unbiased=False) + eps)
        else:
            s = torch.sqrt(x.pow(2).mean(-1) + eps)
        g = gamma.detach().double() if gamma is not None else torch.ones_like(x[0])
        ug = u * g  # (n, H)

        def project(c):  # c: (..., n, H) -> (..., n)
            if centre:
                c = c - c.mean(-1, keepdim=True)
            return (c * ug).sum(-1) / s

        values = torch.stack([project(c) for c in comps]
                             + [(u * beta.detach().double()).sum(-1) if beta is not None
                                else torch.zeros(n, dtype=torch.float64, device=dev)], 1)
        if b_u is not None:
            values[:, -1] += b_u.detach().double()[tgt.to(dev)] - (
                b_u.detach().double()[alt.to(dev)] if alt is not None else 0)
        heads, head_bias = [], []
        for l, (attn, proj, mlp) in enumerate(parts):
            w, bias = _projection_in_out(proj)
            z = at(acts[("z", l)])  # (n, heads * d_head)
            if z.shape[-1] % n_heads:
                raise ValueError(f"model: the attention output projection's input ({z.shape[-1]}) "
                                 f"does not split into {n_heads} heads")
            d = z.shape[-1] // n_heads
            per_head = torch.einsum("nhd,hdo->hno", z.view(n, n_heads, d),
                                    w.detach().double().reshape(n_heads, d, -1))
            heads.append(project(per_head).T)  # (n, heads)
            head_bias.append(project(bias.detach().double().expand(n, -1)) if bias is not None
                             else torch.zeros(n, dtype=torch.float64, device=dev))
    names = ["embeddings"] + [f"{k} {l}" for l in range(n_layers) for k in ("attn", "mlp")] + ["bias"]
    return DirectLogitAttribution(
        values=values.cpu().numpy(), component_names=names,
        heads=torch.stack(heads, 1).cpu().numpy(), head_bias=torch.stack(head_bias, 1).cpu().numpy(),
        logit=logit.double().cpu().numpy(), target_ids=tgt.numpy(),
        alternative_ids=None if alt is None else alt.numpy(), positions=pos.numpy(),
        scale=s.cpu().numpy())


# --------------------------------------------------------------------------------------------
# Generation attribution
# --------------------------------------------------------------------------------------------

@dataclass
class GenerationAttribution:
    """Attribution of each generated token to the prompt and to the earlier generated tokens.

    Attributes
    ----------
    matrices : list of ndarray, one of shape (k, T_prompt + k) per prompt
        ``matrices[i][j, t]``: the share of token ``t`` (prompt tokens first, then the generated
        ones) in the score of generated token ``j``, summed over the embedding dimension. Tokens
        that do not exist yet at step ``j`` (``t >= T_prompt + j``) are NaN.
    token_ids : list of list of int
        Prompt and generated token ids of each prompt.
    prompt_lengths : ndarray of int, shape (batch,)
    generated_ids : ndarray of int, shape (batch, k)
    scores : ndarray, shape (batch, k)
        The explained score of each generated token: its log-probability, minus the
        alternative's with a contrast.
    baseline_scores : ndarray, shape (batch, k), or None
        The score at the baseline embeddings (integrated gradients): each row of a matrix sums
        to ``scores - baseline_scores`` up to the quadrature error (completeness).
    tokens : list of list of str
        Decoded tokens (ids as strings without a tokenizer), for the axes of :meth:`plot`.
    method : str
    """

    matrices: list
    token_ids: list
    prompt_lengths: np.ndarray
    generated_ids: np.ndarray
    scores: np.ndarray
    baseline_scores: np.ndarray | None
    tokens: list
    method: str
    params: dict = field(default_factory=dict)

    def plot(self, index: int = 0, ax: Any = None, cmap: str = "RdBu_r", colorbar: bool = True):
        """Heat map of one prompt's matrix: generated tokens down, all tokens across.

        The colour scale is symmetric about zero (the largest magnitude of the matrix); a
        vertical line separates the prompt from the generated tokens. Returns the axes.
        """
        import matplotlib.pyplot as plt

        m = np.ma.masked_invalid(self.matrices[index])
        k, width = m.shape
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.45 * width + 2), max(2.5, 0.4 * k + 1.5)))
        vmax = float(np.abs(m).max()) if m.count() else 1.0
        vmax = vmax or 1.0
        im = ax.imshow(m, cmap=cmap, vmin=-vmax, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        toks = self.tokens[index]
        ax.set_xticks(range(width))
        # tokens as text, never as mathtext: a "$x$" token is drawn as written
        ax.set_xticklabels([repr(t)[1:-1] for t in toks], rotation=60, ha="right", fontsize=8,
                           parse_math=False)
        ax.set_yticks(range(k))
        ax.set_yticklabels([repr(t)[1:-1] for t in toks[width - k:]], fontsize=8, parse_math=False)
        ax.axvline(self.prompt_lengths[index] - 0.5, color="black", linewidth=1)
        ax.set_xlabel("prompt and generated tokens")
        ax.set_ylabel("generated token")
        ax.set_title(f"generation attribution ({self.method})")
        if colorbar:
            ax.figure.colorbar(im, ax=ax, label="attribution to the score")
        return ax


_GEN_METHODS = ("gradient_x_input", "integrated_gradients")


def generation_attribution(model: nn.Module, inputs: Any, *, n_tokens: int = 5,
                           method: str = "gradient_x_input", alternative: Any = None,
                           n_steps: int = 32, integration: str = "gausslegendre",
                           baselines: Any = "zero", batch_size: int | None = None,
                           attention_mask: Any = None, tokenizer: Any = None,
                           progress: bool | None = None) -> GenerationAttribution:
    """Greedy-generate ``n_tokens`` tokens and attribute each one to all tokens before it.

    At generation step ``j`` the model reads the prompt and the ``j`` tokens generated so far;
    the explained score is the log-probability of the greedy (arg-max) token, or with
    ``alternative`` the contrast ``log p(token) - log p(alternative)``. Its gradient with
    respect to the input embeddings gives, per earlier token, gradient x input (summed over the
    embedding dimension) or integrated gradients from ``baselines`` (Sundararajan et al. 2017).
    Steps run one after another, each with its own graph (no key/value cache and no graph kept
    across steps), and integration points in chunks of ``batch_size`` rows: memory is that of
    one forward and backward pass of ``batch_size`` sequences.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM with the Hugging Face interface: ``get_input_embeddings()`` and
        ``model(inputs_embeds=..., attention_mask=...).logits`` of shape (batch, tokens, vocab).
    inputs : token ids (batch, tokens), tokenizer dict, or strings with ``tokenizer=``
        The prompts (right padding with ``attention_mask``).
    n_tokens : int, default 5
        ``k``, the number of tokens generated (greedy, no sampling, no stop at end-of-text).
    method : {"gradient_x_input", "integrated_gradients"}
    alternative : int, str or one per prompt, optional
        Contrast token: the score becomes ``log p(token) - log p(alternative)`` at every step.
    n_steps : int, default 32
        Integration points of integrated gradients.
    integration : str, default "gausslegendre"
        Quadrature rule (see :mod:`lumos.attribution._approximation`).
    baselines : "zero" or int, default "zero"
        The integrated-gradients reference: the zero embedding, or every token replaced by this
        token id's embedding (e.g. the pad or mask token).
    batch_size : int, optional
        Sequences per forward/backward pass (default by a memory budget).
    attention_mask, tokenizer, progress : optional

    Returns
    -------
    GenerationAttribution
    """
    method = check_choice(method, "method", _GEN_METHODS)
    k = int(check_number(n_tokens, "n_tokens", low=1, integer=True))
    ig = method == "integrated_gradients"
    if ig:
        n_steps = int(check_number(n_steps, "n_steps", low=1, integer=True))
        integration = check_integration(integration)
        alphas, weights = integration_points(n_steps, integration)
    else:
        alphas, weights = np.ones(1), np.ones(1)
    if not (isinstance(baselines, str) and baselines == "zero") and not (
            isinstance(baselines, (int, np.integer)) and not isinstance(baselines, bool)):
        raise ValueError(f"baselines: expected 'zero' or a token id; got {baselines!r}")
    if not isinstance(model, nn.Module) or not hasattr(model, "get_input_embeddings"):
        raise TypeError("model must be a torch causal LM with get_input_embeddings() and "
                        f"inputs_embeds=; got {type(model).__name__}")
    ids, mask = _as_ids(inputs, tokenizer, attention_mask)
    n = len(ids)
    lengths = mask.sum(1)
    embed = model.get_input_embeddings()
    vocab = embed.weight.shape[0]
    alt = None if alternative is None else _token_ids(alternative, n, tokenizer, "alternative",
                                                       vocab)
    if not isinstance(baselines, str) and not 0 <= int(baselines) < vocab:
        raise ValueError(f"baselines: token id {baselines} outside the vocabulary [0, {vocab})")
    n_alpha = len(alphas)
    hidden = embed.weight.shape[1]
    bs = check_batch_size(batch_size, row_bytes=int((int(lengths.max()) + k) * hidden
                                                    * embed.weight.element_size() * 8))
    seqs = [ids[i, :lengths[i]].tolist() for i in range(n)]
    mats = [np.full((k, int(lengths[i]) + k), np.nan) for i in range(n)]
    gen = np.zeros((n, k), dtype=np.int64)
    scores = np.zeros((n, k))
    base_scores = np.zeros((n, k)) if ig else None
    with ModelGuard(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        dev = _device(model)
        a_t = torch.as_tensor(alphas, dtype=embed.weight.dtype, device=dev)
        w_t = torch.as_tensor(weights, dtype=torch.float64, device=dev)
        for j in chunks(k, 1, desc="generation steps", progress=progress, unit="token"):
            j = j.start
            cur, cmask = _pad_right(seqs)
            cur, cmask = cur.to(dev), cmask.to(dev)
            read = cmask.sum(1) - 1  # the last real token predicts the next one
            r = torch.arange(n, device=dev)
            with torch.no_grad():
                emb = embed(cur)
                if ig:
                    logits = model(inputs_embeds=emb, attention_mask=cmask).logits
                    check_finite(logits, f"generation step {j}")
                    nxt = logits[r, read].float().argmax(-1)
                else:  # gradient x input reads the greedy token off its own pass (one forward, not two)
                    nxt = torch.zeros(n, dtype=torch.long, device=dev)
            base = (torch.zeros_like(emb) if isinstance(baselines, str)
                    else embed(torch.full_like(cur, int(baselines))))
            # rows: sample-major, then integration point
            row_s = torch.arange(n, device=dev).repeat_interleave(n_alpha)
            row_a = torch.arange(n_alpha, device=dev).repeat(n)
            attr = torch.zeros(cur.shape, dtype=torch.float64, device=dev)
            score = torch.zeros(n, dtype=torch.float64, device=dev)
            bscore = torch.zeros(n, dtype=torch.float64, device=dev)
            for sl in chunks(n * n_alpha, bs, progress=False):
                s, a = row_s[sl], row_a[sl]
                x = (base[s] + a_t[a][:, None, None] * (emb[s] - base[s])).detach()
                x.requires_grad_(True)
                with torch.enable_grad():
                    out = model(inputs_embeds=x, attention_mask=cmask[s]).logits
                    check_finite(out, "integrated-gradients path points" if ig
                                 else f"generation step {j}")
                    logp = torch.log_softmax(out[torch.arange(len(s), device=dev), read[s]]
                                             .float(), -1)
                    if not ig:  # one row per sample, at the input itself: its greedy token
                        nxt[s] = logp.detach().argmax(-1)
                    val = logp.gather(1, nxt[s][:, None])[:, 0]
                    if alt is not None:
                        val = val - logp.gather(1, alt.to(dev)[s][:, None])[:, 0]
                    (g,) = torch.autograd.grad(val.sum(), x)
                delta = (emb[s] - base[s]) if ig else emb[s]
                contrib = (g.double() * delta.double()).sum(-1) * w_t[a][:, None]
                attr.index_add_(0, s, contrib)
                if not ig:  # one row per sample: its score at the input
                    score[s] = val.detach().double()
            if ig:
                with torch.no_grad():
                    for which, x in ((score, emb), (bscore, base)):
                        out = model(inputs_embeds=x, attention_mask=cmask).logits
                        check_finite(out, "the baselines" if which is bscore else "the inputs")
                        logp = torch.log_softmax(out[r, read].float(), -1)
                        v = logp[r, nxt] - (logp[r, alt.to(dev)] if alt is not None else 0)
                        which.copy_(v.double())
            attr = attr.cpu().numpy()
            for i in range(n):
                t = int(lengths[i]) + j
                mats[i][j, :t] = attr[i, :t]
                seqs[i].append(int(nxt[i]))
            gen[:, j] = nxt.cpu().numpy()
            scores[:, j] = score.cpu().numpy()
            if ig:
                base_scores[:, j] = bscore.cpu().numpy()
    return GenerationAttribution(
        matrices=mats, token_ids=seqs, prompt_lengths=lengths.numpy(), generated_ids=gen,
        scores=scores, baseline_scores=base_scores,
        tokens=[_decode(tokenizer, s) for s in seqs], method=method,
        params={"n_tokens": k, "method": method, "n_steps": n_steps if ig else None,
                "integration": integration if ig else None,
                "baselines": baselines if ig else None,
                "alternative": None if alt is None else alt.tolist()})
