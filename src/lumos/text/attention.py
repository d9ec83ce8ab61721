"""Attention of transformers: extraction, rollout, flow, and how far attention agrees with saliency.

- :func:`attentions` runs a Hugging Face model once with ``output_attentions=True`` (eager attention
  forced for the call where the model uses a fused kernel, then restored) and returns every layer's
  and head's attention as one ``(layers, batch, heads, T, T)`` array with the tokens.
- :func:`rollout` and :func:`flow` are attention rollout and attention flow (Abnar & Zuidema,
  "Quantifying Attention Flow in Transformers", 2020).
- :func:`agreement` scores, per example, the Kendall τ between the token ranking of attention (raw
  last layer, rollout, flow) and of any token attribution (gradient, IG, leave-one-out, LRP, ...).
- :func:`permutation_test` is the test of Jain & Wallace ("Attention is not Explanation", 2019):
  shuffle the attention weights of a layer and measure how much the output distribution changes.

Every function that takes attention accepts it as Hugging Face returns it (a tuple of per-layer
``(batch, heads, T, T)`` tensors), as one stacked ``(layers, batch, heads, T, T)`` tensor or array,
or as the :class:`Attentions` returned by :func:`attentions`.

Padding: row ``i`` of an attention map is where query token ``i`` looks. Hugging Face models give
padded *keys* zero weight but still compute rows for padded *queries*; :func:`attentions` sets the
rows and columns of padded positions to 0, so the rows of real tokens sum to 1 and the rows of
padded tokens are 0. Rollout, flow and agreement are computed on each example's real tokens only
(given ``attention_mask``), so padding never changes a result.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core.torch_model import hf_capturing_hooks  # noqa: F401 (installed by ModelGuard)
from ..core.torch_model import ModelGuard, check_finite, unwrap, warn_if_training
from ..core.validation import check_choice, check_number

__all__ = ["Attentions", "attentions", "as_attention", "rollout", "flow", "kendall_tau",
           "agreement", "Agreement", "permutation_test", "PermutationTest", "eager_attention",
           "shuffle_permutation"]

HEAD_FUSIONS = ("mean", "max", "min")


@dataclass(repr=False)
class Attentions:
    """Every layer's and head's attention for a batch of token sequences.

    Attributes
    ----------
    values : ndarray of shape (layers, batch, heads, T, T)
        ``values[l, b, h, i, j]``: weight of key token ``j`` in query token ``i``'s attention, layer
        ``l``, head ``h``. Rows and columns of padded positions are 0.
    attention_mask : ndarray of bool, shape (batch, T)
        True at real tokens.
    tokens : list of list of str or None
        The tokens of each example (all ``T`` positions, padding included), when known.
    """

    values: np.ndarray
    attention_mask: np.ndarray
    tokens: list[list[str]] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def example(self, index: int) -> tuple[np.ndarray, list[str] | None]:
        """Example ``index`` on its real tokens only: ``(layers, heads, n, n)`` and its n tokens."""
        keep = np.flatnonzero(self.attention_mask[index])
        a = self.values[:, index][:, :, keep][:, :, :, keep]
        toks = None if self.tokens is None else [self.tokens[index][k] for k in keep]
        return a, toks

    def __repr__(self) -> str:
        L, B, H, T, _ = self.values.shape
        return f"Attentions(layers={L}, batch={B}, heads={H}, tokens={T})"


# ---------------------------------------------------------------------------------------------
# Attention in: tuple of per-layer maps, a stacked tensor, or Attentions
# ---------------------------------------------------------------------------------------------

def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must hold numbers (tensors or arrays); got {type(x).__name__}") from e


def as_attention(attention: Any, attention_mask: Any = None,
                 name: str = "attention") -> tuple[np.ndarray, np.ndarray]:
    """Attention as a float64 ``(layers, batch, heads, T, T)`` array and a ``(batch, T)`` bool mask.

    ``attention`` is an :class:`Attentions`, a tuple/list of per-layer ``(batch, heads, T, T)``
    tensors or arrays (what Hugging Face returns), or one stacked 5-d tensor or array. Without a
    mask (and not an :class:`Attentions`), every position is a real token. The input is not
    modified.
    """
    if isinstance(attention, Attentions):
        a = np.asarray(attention.values, dtype=np.float64)
        if attention_mask is None:
            attention_mask = attention.attention_mask
    elif isinstance(attention, (tuple, list)):
        if len(attention) == 0:
            raise ValueError(f"{name} is an empty sequence; expected one (batch, heads, T, T) map "
                             "per layer")
        layers = [_to_numpy(x, f"{name}[{i}]") for i, x in enumerate(attention)]
        for i, x in enumerate(layers):
            if x.ndim != 4:
                raise ValueError(f"{name}[{i}] must have shape (batch, heads, T, T); got {x.shape}")
            if x.shape != layers[0].shape:
                raise ValueError(f"{name}: every layer must have the same shape; layer 0 has "
                                 f"{layers[0].shape}, layer {i} has {x.shape}")
        a = np.stack(layers)
    else:
        a = _to_numpy(attention, name)
        if a.ndim != 5:
            raise ValueError(f"{name} must be a tuple of per-layer (batch, heads, T, T) maps or one "
                             f"(layers, batch, heads, T, T) array; got an array of shape {a.shape}")
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(f"{name}: attention maps must be square (T, T); got {a.shape[-2:]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} NaN or Inf values")
    if (a < 0).any():
        raise ValueError(f"{name} holds negative weights (min {a.min():.3g}); attention weights "
                         "are probabilities")
    B, T = a.shape[1], a.shape[-1]
    if attention_mask is None:
        mask = np.ones((B, T), dtype=bool)
    else:
        mask = _to_numpy(attention_mask, "attention_mask")
        if mask.shape != (B, T):
            raise ValueError(f"attention_mask must have shape (batch, T) = {(B, T)}; got "
                             f"{mask.shape}")
        mask = mask != 0
        if not mask.any(axis=1).all():
            raise ValueError("attention_mask: every example needs at least one real token; "
                             f"examples {np.flatnonzero(~mask.any(axis=1)).tolist()} have none")
    return a, mask


def _fuse_heads(a: np.ndarray, head_fusion: str) -> np.ndarray:
    """(..., heads, n, n) -> (..., n, n)."""
    check_choice(head_fusion, "head_fusion", HEAD_FUSIONS)
    return {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion](a, axis=-3)


def _with_residual(a: np.ndarray, residual: float) -> np.ndarray:
    """(1 - r)·A + r·I, rows renormalised to sum to 1 (rows of 0 stay 0 only if r = 0)."""
    n = a.shape[-1]
    out = (1.0 - residual) * a + residual * np.eye(n)
    s = out.sum(axis=-1, keepdims=True)
    return np.divide(out, s, out=np.zeros_like(out), where=s > 0)


# ---------------------------------------------------------------------------------------------
# Extraction from a Hugging Face model
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def eager_attention(model: Any):
    """Run ``model`` with eager (materialised softmax) attention inside the block.

    Fused kernels (SDPA, flash attention) never form the attention weights, so they cannot be
    returned or shuffled. The model's ``config._attn_implementation`` is switched to ``"eager"``
    (``set_attn_implementation`` where the model has it) and restored on exit, also on error.
    Models without a Hugging Face config are left untouched.
    """
    config = getattr(model, "config", None)
    old = getattr(config, "_attn_implementation", None) if config is not None else None
    if old is None or old == "eager":
        yield model
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter("eager")
        else:
            config._attn_implementation = "eager"
        yield model
    finally:
        if setter is not None:
            setter(old)
        else:
            config._attn_implementation = old


def _model_inputs(model: Any, inputs: Any, tokenizer: Any, attention_mask: Any) -> dict:
    """Keyword inputs for a Hugging Face model: dict, input ids, or strings with a tokenizer."""
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs
                                   and all(isinstance(s, str) for s in inputs)):
        if tokenizer is None:
            raise ValueError("inputs are strings: pass tokenizer= (the model's tokenizer) to "
                             "tokenise them")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        kw = dict(tokenizer(texts, return_tensors="pt", padding=True))
    elif isinstance(inputs, Mapping):
        if "input_ids" not in inputs and "inputs_embeds" not in inputs:
            raise ValueError("inputs: a dict of model inputs needs 'input_ids' (or "
                             f"'inputs_embeds'); got keys {sorted(inputs)}")
        kw = {k: (torch.as_tensor(v) if isinstance(v, np.ndarray) else v)
              for k, v in inputs.items()}
    elif isinstance(inputs, (torch.Tensor, np.ndarray)):
        ids = torch.as_tensor(inputs)
        if ids.dtype.is_floating_point or ids.ndim not in (1, 2):
            raise ValueError("inputs must be token ids of shape (batch, T) (integers), a dict of "
                             f"model inputs, or strings; got {ids.dtype} of shape "
                             f"{tuple(ids.shape)}")
        kw = {"input_ids": ids[None] if ids.ndim == 1 else ids}
    else:
        raise TypeError("inputs must be strings (with tokenizer=), token ids (batch, T), or a dict "
                        f"of model inputs; got {type(inputs).__name__}")
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(attention_mask)
    return kw


def _device(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _packed_right(kw: dict) -> tuple[dict, np.ndarray | None]:
    """The inputs with every example's real tokens moved to the front (right padding).

    A model with absolute position embeddings (GPT-2, BERT) numbers positions from the first
    column, so on a left-padded batch its real tokens would get other positions than the same
    text alone. Packing the real tokens to the front gives every text positions ``0 .. n-1``.
    Returns ``(inputs, order)`` with ``order[b]`` the original column of each packed column, or
    ``(kw, None)`` when the batch is already right-padded. Every ``(batch, T, ...)`` tensor in the
    inputs (ids, masks, token types, position ids, embeddings) is permuted alike.
    """
    mask = kw.get("attention_mask")
    if mask is None:
        return kw, None
    m = torch.as_tensor(mask).cpu() != 0
    if m.ndim != 2:
        return kw, None
    right = torch.arange(m.shape[1])[None] < m.sum(1, keepdim=True)
    if bool((m == right).all()):
        return kw, None
    order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)
    B, T = m.shape
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 2 and tuple(v.shape[:2]) == (B, T):
            idx = order.to(v.device).view(B, T, *([1] * (v.ndim - 2))).expand(v.shape)
            v = torch.gather(v, 1, idx)
        out[k] = v
    return out, order.numpy()


def attentions(model: Any, inputs: Any, *, tokenizer: Any = None, attention_mask: Any = None,
               tokens: Sequence[Sequence[str]] | None = None, **forward_kwargs) -> Attentions:
    """Every layer's and head's attention of a Hugging Face model on ``inputs``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Any model that accepts ``output_attentions=True`` (encoders, classifiers, causal LMs).
        Eager attention is forced for the call (see :func:`eager_attention`); the model is left
        exactly as found (configuration, modes, hooks, parameters).
    inputs : str, list of str, token ids (batch, T) or dict of model inputs
        Strings need ``tokenizer=``; a dict is passed as keywords (``input_ids``,
        ``attention_mask``, ...).
    tokenizer : optional
        The model's tokenizer: tokenises strings (padding the batch) and names the tokens.
    attention_mask : array (batch, T), optional
        1 at real tokens, 0 at padding; overrides the one in ``inputs``. Padding may be on
        either side: a left-padded batch is run with each example's real tokens moved to the
        front (so models with absolute positions, GPT-2 or BERT, see each text at positions
        ``0 .. n-1`` as when it is alone) and the maps are returned in the layout given.
    tokens : list of list of str, optional
        Token strings when no tokenizer is given.
    **forward_kwargs
        Passed to the model's forward.

    Returns
    -------
    Attentions
        ``values`` of shape (layers, batch, heads, T, T), float64, with the rows and columns of
        padded positions set to 0.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch module (a Hugging Face model); got "
                        f"{type(model).__name__}")
    kw = _model_inputs(model, inputs, tokenizer, attention_mask)
    device = _device(model)
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    warn_if_training(model)
    hf_capturing_hooks(model)
    run_kw, order = _packed_right(kw)
    with ModelGuard(unwrap(model)), eager_attention(model), torch.no_grad():
        out = model(**run_kw, **forward_kwargs, output_attentions=True)
    att = getattr(out, "attentions", None)
    if att is None and isinstance(out, Mapping):
        att = out.get("attentions")
    if not att or any(a is None for a in att):
        raise ValueError(f"{type(model).__name__} returned no attention weights with "
                         "output_attentions=True (a fused kernel that eager attention could not "
                         "replace, or a model without attention)")
    for i, a in enumerate(att):
        check_finite(a, f"the attention weights of layer {i}")
    ids = kw.get("input_ids")
    mask = kw.get("attention_mask")
    a, mask = as_attention(tuple(att), None if mask is None else mask.cpu())
    if order is not None:  # back from the packed (right-padded) layout to the one given
        inv = np.argsort(order, axis=1)
        a = np.stack([a[:, b][:, :, inv[b]][:, :, :, inv[b]] for b in range(a.shape[1])], 1)
    a = a * mask[None, :, None, :, None] * mask[None, :, None, None, :]
    if tokens is None and tokenizer is not None and ids is not None:
        tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids.cpu()]
    if tokens is not None:
        tokens = [list(map(str, t)) for t in tokens]
        if len(tokens) != a.shape[1] or any(len(t) != a.shape[-1] for t in tokens):
            raise ValueError(f"tokens must be {a.shape[1]} lists of {a.shape[-1]} strings")
    return Attentions(a, mask, tokens, meta={"model": type(model).__name__})


# ---------------------------------------------------------------------------------------------
# Rollout and flow (Abnar & Zuidema 2020)
# ---------------------------------------------------------------------------------------------

def _per_example(a: np.ndarray, mask: np.ndarray, head_fusion: str, residual: float):
    """Yield (b, keep, per-layer (L, n, n) augmented maps) of each example's real tokens."""
    residual = check_number(residual, "residual", low=0.0, high=1.0)
    for b in range(a.shape[1]):
        keep = np.flatnonzero(mask[b])
        sub = a[:, b][:, :, keep][:, :, :, keep]  # (L, H, n, n)
        yield b, keep, _with_residual(_fuse_heads(sub, head_fusion), residual)


def rollout(attention: Any, *, attention_mask: Any = None, head_fusion: str = "mean",
            residual: float = 0.5) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): attention composed through the layers.

    Each layer's heads are fused (``head_fusion``: mean, max or min over heads), the residual
    connection is added as ``Ã = (1 - residual)·A + residual·I`` with rows renormalised to sum to
    1, and the layers are multiplied: ``R = Ã_L ⋯ Ã_2 Ã_1``. ``R[b, i, j]`` is how much token ``i``
    of the last layer draws on input token ``j``; every row of a real token sums to 1.

    Parameters
    ----------
    attention : tuple of (batch, heads, T, T), array (layers, batch, heads, T, T) or Attentions
    attention_mask : array (batch, T), optional
        Real tokens (default: all, or those of an :class:`Attentions`). Each example is rolled out
        on its real tokens only; rows and columns of padded positions are 0.
    head_fusion : {"mean", "max", "min"}
    residual : float in [0, 1], default 0.5
        Weight of the identity (the paper's 0.5); 0 multiplies the raw attention maps.

    Returns
    -------
    ndarray of shape (batch, T, T), float64
    """
    a, mask = as_attention(attention, attention_mask)
    out = np.zeros(a.shape[1:2] + a.shape[-2:])
    for b, keep, layers in _per_example(a, mask, head_fusion, residual):
        r = np.eye(len(keep))
        for layer in layers:
            r = layer @ r
        out[b][np.ix_(keep, keep)] = r
    return out


_FLOW_SCALE = 2 ** 20


def _max_flow_layers(layers: np.ndarray, scale: int) -> np.ndarray:
    """Max flow from every input token to every output token through (L, n, n) layer maps."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_flow

    L, n, _ = layers.shape
    # node (l, t) = l * n + t, l = 0 (inputs) .. L; edge (l-1, j) -> (l, i) carries A_l[i, j]
    cap = np.rint(layers * scale).astype(np.int64)
    rows, cols, vals = [], [], []
    for l in range(L):
        i, j = np.nonzero(cap[l])
        rows.append(l * n + j)
        cols.append((l + 1) * n + i)
        vals.append(cap[l][i, j])
    N = (L + 1) * n
    graph = csr_matrix((np.concatenate(vals).astype(np.int32),
                        (np.concatenate(rows), np.concatenate(cols))), shape=(N, N))
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = maximum_flow(graph, j, L * n + i).flow_value
    return out / scale


def flow(attention: Any, *, attention_mask: Any = None, head_fusion: str = "mean",
         residual: float = 0.5, normalize: bool = False, resolution: int = _FLOW_SCALE) -> np.ndarray:
    """Attention flow (Abnar & Zuidema 2020): the max flow from each input token to each output.

    The layers form a graph with one node per (layer, token), layer 0 being the input tokens;
    the edge from token ``j`` of layer ``l-1`` to token ``i`` of layer ``l`` has capacity
    ``Ã_l[i, j]`` (heads fused, residual added and rows renormalised exactly as in
    :func:`rollout`). ``F[b, i, j]`` is the value of the maximum flow from input token ``j`` to
    token ``i`` of the last layer. With one layer, ``F = Ã``.

    Max flows are computed with :func:`scipy.sparse.csgraph.maximum_flow`, which needs integer
    capacities: each capacity is rounded to a multiple of ``1 / resolution`` (default ``2**20``,
    about 1e-6), so a flow value is exact for the rounded graph and within
    ``0.5 · n_cut / resolution`` of the real one, ``n_cut`` being the number of edges of a minimum
    cut (at most ``T``). It costs ``T²`` max-flow problems per example: meant for short texts.

    Parameters
    ----------
    attention, attention_mask, head_fusion, residual
        As in :func:`rollout`.
    normalize : bool, default False
        Divide each output token's row by its sum, as the authors' code does before plotting. The
        default returns the flow values themselves.
    resolution : int, default 2**20
        Capacity units per unit of attention weight.

    Returns
    -------
    ndarray of shape (batch, T, T), float64 (rows and columns of padded positions are 0)
    """
    resolution = check_number(resolution, "resolution", low=1, integer=True)
    a, mask = as_attention(attention, attention_mask)
    T = a.shape[-1]
    if resolution * (T + 1) >= 2 ** 31:
        raise ValueError(f"resolution={resolution} is too large for {T} tokens: scipy's max flow "
                         f"uses int32 capacities; use at most {(2 ** 31 - 1) // (T + 1)}")
    out = np.zeros(a.shape[1:2] + a.shape[-2:])
    for b, keep, layers in _per_example(a, mask, head_fusion, residual):
        f = _max_flow_layers(layers, resolution)
        if normalize:
            s = f.sum(axis=1, keepdims=True)
            f = np.divide(f, s, out=np.zeros_like(f), where=s > 0)
        out[b][np.ix_(keep, keep)] = f
    return out


# ---------------------------------------------------------------------------------------------
# Attention versus saliency: rank agreement (Kendall tau)
# ---------------------------------------------------------------------------------------------

def _token_scores(x: Any, name: str, shape: tuple[int, int]) -> np.ndarray:
    v = getattr(x, "values", x)
    v = _to_numpy(v, name)
    if v.shape != shape:
        raise ValueError(f"{name} must be token scores of shape (batch, T) = {shape}; got "
                         f"{v.shape} (sum per-dimension embedding attributions over the hidden "
                         "dimension first)")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN or Inf values")
    return v


def kendall_tau(a: Any, b: Any, *, attention_mask: Any = None) -> np.ndarray:
    """Per-example Kendall τ-b between two token scorings of shape (batch, T), on real tokens.

    1 for identical rankings, -1 for reversed ones, about 0 for independent ones; NaN where a
    scoring is constant over an example's tokens or the example has fewer than 2 tokens.
    """
    from scipy.stats import kendalltau

    a = _to_numpy(a, "a")
    if a.ndim != 2:
        raise ValueError(f"a must have shape (batch, T); got {a.shape}")
    b = _token_scores(b, "b", a.shape)
    mask = (np.ones(a.shape, bool) if attention_mask is None
            else _to_numpy(attention_mask, "attention_mask") != 0)
    if mask.shape != a.shape:
        raise ValueError(f"attention_mask must have shape {a.shape}; got {mask.shape}")
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        k = mask[i]
        if k.sum() >= 2 and np.ptp(a[i, k]) > 0 and np.ptp(b[i, k]) > 0:
            out[i] = kendalltau(a[i, k], b[i, k]).statistic
    return out


ATTENTION_KINDS = ("last", "rollout", "flow")


@dataclass(repr=False)
class Agreement:
    """Kendall τ per example between attention rankings and attribution rankings.

    ``tau[(kind, name)]`` is a (batch,) array: ``kind`` in ``"last"`` (raw last layer, heads
    fused), ``"rollout"``, ``"flow"``; ``name`` a key of the attributions given.
    """

    tau: dict
    query: Any
    meta: dict = field(default_factory=dict)

    def table(self) -> str:
        """Mean ± standard deviation of τ over examples (NaN ignored), one row per attention kind."""
        kinds = list(dict.fromkeys(k for k, _ in self.tau))
        names = list(dict.fromkeys(n for _, n in self.tau))
        width = max(12, *(len(n) + 2 for n in names))
        lines = ["attention".ljust(10) + "".join(n.rjust(width) for n in names)]
        for k in kinds:
            cells = []
            for n in names:
                t = self.tau[(k, n)]
                ok = t[np.isfinite(t)]
                cells.append((f"{ok.mean():+.3f}±{ok.std():.3f}" if len(ok) else "nan").rjust(width))
            lines.append(k.ljust(10) + "".join(cells))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "Agreement (Kendall tau, mean±sd over examples)\n" + self.table()


def query_scores(m: np.ndarray, query: Any, mask: np.ndarray) -> np.ndarray:
    """Each key token's weight seen from the ``query``: ``m`` (batch, T, T) maps -> (batch, T).

    ``query`` is ``"first"`` (the first real token: ``[CLS]``), ``"last"`` (the last real token: a
    causal LM's predicting position), ``"mean"`` (the mean over every real query row: models that
    pool the mean of all tokens, such as sentence-embedding models) or a position.
    """
    mask = np.asarray(mask, bool)
    if isinstance(query, str) and query == "mean":
        w = mask.astype(np.float64)
        return np.einsum("bi,bij->bj", w, m) / w.sum(1, keepdims=True)
    return m[np.arange(len(m)), _query_rows(query, mask)]


def _query_rows(query: Any, mask: np.ndarray) -> np.ndarray:
    if isinstance(query, str):
        check_choice(query, "query", ("first", "last", "mean"))
        if query == "mean":
            raise ValueError("query='mean' averages rows; use query_scores()")
        idx = [np.flatnonzero(m) for m in mask]
        return np.array([k[0] if query == "first" else k[-1] for k in idx])
    q = check_number(query, "query", integer=True)
    T = mask.shape[1]
    if not -T <= q < T:
        raise ValueError(f"query must be a token position in [-{T}, {T}); got {q}")
    q = q % T
    if not mask[:, q].all():
        raise ValueError(f"query={q} is a padded position in examples "
                         f"{np.flatnonzero(~mask[:, q]).tolist()}; use query='first' or 'last'")
    return np.full(len(mask), q)


def agreement(attention: Any, attributions: Mapping[str, Any], *, attention_mask: Any = None,
              kinds: Sequence[str] = ATTENTION_KINDS, query: Any = "first",
              head_fusion: str = "mean", residual: float = 0.5,
              absolute: bool = True) -> Agreement:
    """Per-example rank agreement (Kendall τ) between attention and token attributions.

    The attention score of token ``j`` is the weight the ``query`` token gives it: in the last
    layer's map with heads fused (``"last"``), in the rollout (``"rollout"``) or in the flow
    (``"flow"``) — see :func:`rollout` and :func:`flow`. Each attribution (gradient, IG,
    leave-one-out, LRP, ...) ranks tokens by ``|value|`` (``absolute=True``: attention weights
    are non-negative and say *how much*, not in which direction) or by its signed value.

    Parameters
    ----------
    attention : tuple, array or Attentions
        As in :func:`rollout`.
    attributions : dict of name -> (batch, T) array or Explanation
        Token scores of the same examples and positions as the attention.
    kinds : subset of ("last", "rollout", "flow")
    query : "first", "last", "mean" or int, default "first"
        The query token whose attention is compared: the first real token (``[CLS]`` of an
        encoder classifier), the last real token (the predicting position of a causal LM), the
        mean over all real query rows (models that mean-pool their tokens, e.g. MiniLM sentence
        embeddings), or a position.
    head_fusion, residual : as in :func:`rollout` (``residual`` is not used by ``"last"``).
    absolute : bool, default True

    Returns
    -------
    Agreement
        ``tau[(kind, name)]``: (batch,) Kendall τ-b on each example's real tokens.
    """
    a, mask = as_attention(attention, attention_mask)
    if not isinstance(attributions, Mapping) or not attributions:
        raise TypeError("attributions must be a non-empty dict of name -> (batch, T) token scores")
    kinds = [check_choice(k, "kinds", ATTENTION_KINDS) for k in kinds]
    if not (isinstance(query, str) and query == "mean"):
        _query_rows(query, mask)  # checks the query before any work
    B, T = mask.shape
    scores = {}
    for k in kinds:
        if k == "last":
            m = _fuse_heads(a[-1], head_fusion)
        elif k == "rollout":
            m = rollout(a, attention_mask=mask, head_fusion=head_fusion, residual=residual)
        else:
            m = flow(a, attention_mask=mask, head_fusion=head_fusion, residual=residual)
        scores[k] = query_scores(m, query, mask)
    tau = {}
    for name, attr in attributions.items():
        v = _token_scores(attr, f"attributions[{name!r}]", (B, T))
        v = np.abs(v) if absolute else v
        for k in kinds:
            tau[(k, str(name))] = kendall_tau(scores[k], v, attention_mask=mask)
    return Agreement(tau, query, meta={"head_fusion": head_fusion, "residual": residual,
                                       "absolute": absolute})


# ---------------------------------------------------------------------------------------------
# Permutation test (Jain & Wallace 2019)
# ---------------------------------------------------------------------------------------------

@dataclass(repr=False)
class PermutationTest:
    """Output change when a layer's attention weights are shuffled.

    ``tvd[b, s]``: total variation distance ``½ Σ |p - p_s|`` between example ``b``'s output
    distribution and its distribution under shuffle ``s``.
    """

    tvd: np.ndarray
    layers: list[int]
    seed: int
    meta: dict = field(default_factory=dict)

    @property
    def median(self) -> np.ndarray:
        """Median TVD over shuffles, per example (the statistic Jain & Wallace plot)."""
        return np.median(self.tvd, axis=1)

    def __repr__(self) -> str:
        return (f"PermutationTest(examples={self.tvd.shape[0]}, shuffles={self.tvd.shape[1]}, "
                f"layers={self.layers}, median TVD={np.round(self.median, 4).tolist()})")


def _attention_modules(model: torch.nn.Module, modules: Any) -> list[torch.nn.Module]:
    from ..core.modules import get_module

    if modules is not None:
        return [get_module(model, m) if isinstance(m, str) else m for m in modules]
    named = [m for m in model.modules() if type(m).__name__.lower().endswith("attention")]
    leaves = [m for m in named if not any(o is not m and o in set(m.modules()) for o in named)]
    return leaves


def shuffle_permutation(seed: int, draw: int, n: int) -> np.ndarray:
    """The key permutation of shuffle ``draw`` for an example with ``n`` real tokens.

    ``numpy.random.default_rng([seed, draw, n]).permutation(n)``: it depends only on the seed,
    the draw and the length, never on the batch an example is in.
    """
    return np.random.default_rng([seed, draw, n]).permutation(n)


class _ShuffleSoftmax(torch.overrides.TorchFunctionMode):
    """Permutes the key axis of the softmax made inside an active attention module."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.index = index  # (batch, T): new position j takes the weight of key index[b, j]
        self.active = 0
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.active and func in (torch.nn.functional.softmax, torch.softmax,
                                    torch.Tensor.softmax):
            B, T = self.index.shape
            if out.ndim != 4 or out.shape[0] != B or out.shape[-1] != T:
                raise ValueError(f"permutation_test: a softmax of shape {tuple(out.shape)} inside "
                                 f"an attention module is not a (batch, heads, T, T) map with "
                                 f"T={T}; pass modules= naming the attention modules")
            self.calls += 1
            out = torch.gather(out, -1, self.index[:, None, None, :].expand(out.shape))
        return out


def _distribution(out: Any, mask: torch.Tensor) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"permutation_test: the model output has no logits tensor; got "
                        f"{type(out).__name__}")
    if logits.ndim == 3:  # (batch, T, vocab): the next-token distribution of the last real token
        last = (mask.long().cumsum(1).argmax(1)).to(logits.device)
        logits = logits[torch.arange(len(logits)), last]
    if logits.ndim != 2:
        raise ValueError(f"permutation_test: expected logits of shape (batch, classes) or (batch, "
                         f"T, vocab); got {tuple(logits.shape)}")
    return torch.softmax(logits.double(), dim=-1)


def permutation_test(model: Any, inputs: Any, *, layers: Any = -1, n_samples: int = 20,
                     seed: int = 0, tokenizer: Any = None, attention_mask: Any = None,
                     modules: Sequence[Any] | None = None, **forward_kwargs) -> PermutationTest:
    """The permutation test of Jain & Wallace (2019): shuffle attention, measure the output change.

    For each of ``n_samples`` shuffles, the attention weights of the chosen layer(s) are permuted
    along the key axis — the same permutation of an example's real tokens for every head and
    query row (padded keys stay in place with weight 0), drawn by :func:`shuffle_permutation` —
    and the output distribution (softmax of the logits; for a causal LM, the next-token
    distribution at the last real token) is compared with the unshuffled one by total variation
    distance. Small TVDs mean the output hardly depends on where this layer attends.

    The shuffle is applied to the softmax computed inside each selected attention module (eager
    attention is forced for the call); hooks and the attention implementation are removed and
    restored afterwards, so the model is left exactly as found.

    Parameters
    ----------
    model : torch module (Hugging Face model)
    inputs : as in :func:`attentions`
    layers : int or list of int, default -1
        Indices into the attention modules (the last layer by default).
    n_samples : int, default 20
        Number of shuffles.
    seed : int, default 0
    modules : list of modules or dotted names, optional
        The attention modules, one per layer, each computing one softmax over keys. By default the
        innermost modules whose class name ends with "Attention".

    Returns
    -------
    PermutationTest
        ``tvd`` of shape (batch, n_samples).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch module; got {type(model).__name__}")
    n_samples = check_number(n_samples, "n_samples", low=1, integer=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int; got {seed!r}")
    mods = _attention_modules(model, modules)
    if not mods:
        raise ValueError(f"permutation_test: no attention module found in {type(model).__name__}; "
                         "pass modules=")
    chosen = [layers] if not isinstance(layers, (list, tuple)) else list(layers)
    idx = []
    for l in chosen:
        l = check_number(l, "layers", integer=True)
        if not -len(mods) <= l < len(mods):
            raise ValueError(f"layers must index the {len(mods)} attention modules; got {l}")
        idx.append(l % len(mods))
    kw = _model_inputs(model, inputs, tokenizer, attention_mask)
    device = _device(model)
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    first = next(v for k, v in kw.items() if k in ("input_ids", "inputs_embeds"))
    B, T = first.shape[:2]
    mask = kw.get("attention_mask")
    mask = torch.ones(B, T, dtype=torch.bool) if mask is None else mask.cpu() != 0
    warn_if_training(model)
    hf_capturing_hooks(model)
    tvd = np.zeros((B, n_samples))
    with ModelGuard(unwrap(model)), eager_attention(model), torch.no_grad():
        p0 = _distribution(model(**kw, **forward_kwargs), mask)
        check_finite(p0, "the inputs")
        for s in range(n_samples):
            index = torch.arange(T).repeat(B, 1)
            for b in range(B):
                keep = torch.nonzero(mask[b]).flatten()
                perm = torch.as_tensor(shuffle_permutation(int(seed), s, len(keep)))
                index[b, keep] = keep[perm]
            mode = _ShuffleSoftmax(index.to(device))
            handles = []

            def enter(*_):
                mode.active += 1

            def leave(*_):
                mode.active -= 1
            try:
                for i in idx:
                    handles.append(mods[i].register_forward_pre_hook(enter))
                    handles.append(mods[i].register_forward_hook(leave))
                with mode:
                    p = _distribution(model(**kw, **forward_kwargs), mask)
            finally:
                for h in handles:
                    h.remove()
            if mode.calls != len(idx):
                raise ValueError(f"permutation_test: expected one attention softmax in each of "
                                 f"the {len(idx)} selected modules, saw {mode.calls} (a fused "
                                 "kernel, or modules= naming the wrong modules)")
            check_finite(p, "the shuffled-attention inputs")
            tvd[:, s] = 0.5 * (p - p0).abs().sum(-1).cpu().numpy()
    return PermutationTest(tvd, idx, int(seed), meta={"n_samples": n_samples})
