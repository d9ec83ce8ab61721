"""Metrics of a sparse dictionary, each one its textbook definition (and tested against it).

On activations ``x`` (rows, d), reconstructions ``x_hat`` and codes ``f`` (rows, n_features):

* ``l0``: mean number of non-zero codes per row; ``l1``: mean ``sum_i |f_i|`` per row.
* ``mse``: mean over rows **and** dimensions of ``(x - x_hat)**2``.
* ``explained_variance``: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` with the mean over the
  rows evaluated (pooled over dimensions). A predictor that always returns the mean scores 0, a
  perfect reconstruction 1. (SAELens computed the denominator about zero, ``sum ||x||^2``, for a
  while: that scores a mean predictor well above 0 whenever the activations have a mean.)
* ``cosine``: mean over rows of ``cos(x, x_hat)``.
* ``feature_density``: per feature, the fraction of rows where it fires; ``dead_fraction`` the share
  of features that never fire on the rows evaluated; ``dense_fraction`` the share firing on more than
  ``dense_threshold`` of the rows; :func:`density_histogram` the histogram of ``log10`` densities.
* :func:`loss_recovered`: ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``: the model's loss with the
  layer's activation replaced by its reconstruction, against the loss with the activation zeroed and
  the clean loss. The replacement is a forward hook removed on exit, also when the model raises,
  and the model is left exactly as found (:class:`~lumos.core.torch_model.ModelGuard`).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.execution import progress_bar
from ..core.modules import get_module
from ..core.torch_model import ModelGuard, check_finite, model_device, model_dtype
from ..core.validation import check_number
from .cache import flatten_positions, model_batches, unflatten_positions

__all__ = ["l0", "l1", "mse", "explained_variance", "cosine_similarity", "feature_density",
           "dead_fraction", "dense_fraction", "density_histogram", "evaluate", "SAEMetrics",
           "loss_recovered", "LossRecovered", "splice", "next_token_loss", "classification_loss"]


def _t(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.array(x, dtype=np.float64))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a (rows, dims) array; got shape {tuple(t.shape)}")
    return t.detach().to(torch.float64)


def _pair(x, x_hat):
    x, x_hat = _t(x, "x"), _t(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat must have the shape of x {tuple(x.shape)}; got {tuple(x_hat.shape)}")
    return x, x_hat


def l0(codes) -> float:
    """Mean number of non-zero codes per row."""
    return float((_t(codes, "codes") != 0).sum(1).double().mean())


def l1(codes) -> float:
    """Mean L1 norm of the codes per row."""
    return float(_t(codes, "codes").abs().sum(1).mean())


def mse(x, x_hat) -> float:
    """Mean squared error over rows and dimensions."""
    x, x_hat = _pair(x, x_hat)
    return float((x - x_hat).pow(2).mean())


def explained_variance(x, x_hat) -> float:
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (about the mean of the rows; pooled)."""
    x, x_hat = _pair(x, x_hat)
    total = float((x - x.mean(0)).pow(2).sum())
    if total == 0:
        raise ValueError("x: every row is the same; explained variance is undefined")
    return 1.0 - float((x - x_hat).pow(2).sum()) / total


def cosine_similarity(x, x_hat) -> float:
    """Mean over rows of the cosine between a row and its reconstruction (0 for a zero row)."""
    x, x_hat = _pair(x, x_hat)
    return float(F.cosine_similarity(x, x_hat, dim=1, eps=1e-30).mean())


def feature_density(codes) -> np.ndarray:
    """Per feature, the fraction of rows where its code is non-zero (``(n_features,)``)."""
    return (_t(codes, "codes") != 0).double().mean(0).numpy()


def dead_fraction(density) -> float:
    """Share of features that never fire (density 0)."""
    return float((np.asarray(density) == 0).mean())


def dense_fraction(density, dense_threshold: float = 0.1) -> float:
    """Share of features firing on more than ``dense_threshold`` of the rows."""
    check_number(dense_threshold, "dense_threshold", low=0, high=1)
    return float((np.asarray(density) > dense_threshold).mean())


def density_histogram(density, bins: int = 30, low: float = -8.0) -> dict:
    """Histogram of ``log10(density)`` of the features that fire, and the count of dead ones.

    Returns ``{"counts": (bins,), "edges": (bins+1,), "n_dead": int}``; edges span ``[low, 0]``
    (densities below ``10**low`` fall in the first bin).
    """
    d = np.asarray(density, dtype=np.float64)
    alive = d[d > 0]
    logs = np.clip(np.log10(alive), low, 0.0)
    counts, edges = np.histogram(logs, bins=int(bins), range=(low, 0.0))
    return {"counts": counts, "edges": edges, "n_dead": int((d == 0).sum())}


@dataclass
class SAEMetrics:
    """Metrics of an SAE on a set of activations (see the module docs for each definition)."""

    n_rows: int
    l0: float
    l1: float
    mse: float
    explained_variance: float
    cosine: float
    dead_fraction: float
    dense_fraction: float
    density: np.ndarray = field(repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["density"] = self.density.tolist()
        return d


@torch.no_grad()
def evaluate(sae, activations, *, batch_size: int = 4096, dense_threshold: float = 0.1,
             progress: bool | None = None) -> SAEMetrics:
    """All the row metrics of ``sae`` on ``activations`` (an array/tensor (rows, d_in) or an
    :class:`~lumos.dictionary.cache.ActivationCache`), streamed in batches, float64 sums.

    The SAE is evaluated in eval mode (BatchTopK by its threshold) and left in its mode.
    """
    from .cache import ActivationCache

    bs = check_number(batch_size, "batch_size", low=1, integer=True)
    was = sae.training
    sae.eval()
    n = 0
    s_x = s_xx = None
    s_err = s_l0 = s_l1 = s_cos = 0.0
    fired = torch.zeros(sae.n_features, dtype=torch.float64)
    try:
        if isinstance(activations, ActivationCache):
            it = activations.batches(bs, shuffle=False)
            total = len(activations)
        else:
            a = activations if isinstance(activations, torch.Tensor) else torch.as_tensor(np.asarray(activations))
            if a.ndim != 2:
                raise ValueError(f"activations must be (rows, d_in); got shape {tuple(a.shape)}")
            it = (a[s:s + bs] for s in range(0, len(a), bs))
            total = len(a)
        with progress_bar(total, "evaluate SAE", progress if progress is not None else False, "rows") as bar:
            for xb in it:
                out = sae(xb)
                x = xb.detach().to(torch.float64).cpu()
                r = out.recon.detach().to(torch.float64).cpu()
                c = out.codes.detach().cpu()
                s_x = x.sum(0) if s_x is None else s_x + x.sum(0)
                s_xx = x.pow(2).sum(0) if s_xx is None else s_xx + x.pow(2).sum(0)
                s_err += float((x - r).pow(2).sum())
                nz = c != 0
                s_l0 += float(nz.sum())
                s_l1 += float(c.to(torch.float64).abs().sum())
                s_cos += float(F.cosine_similarity(x, r, dim=1, eps=1e-30).sum())
                fired += nz.sum(0).to(torch.float64)
                n += len(x)
                bar.update(len(x))
    finally:
        sae.train(was)
    if n == 0:
        raise ValueError("activations: no rows")
    total_var = float((s_xx - s_x.pow(2) / n).sum())
    density = (fired / n).numpy()
    return SAEMetrics(n_rows=n, l0=s_l0 / n, l1=s_l1 / n, mse=s_err / (n * sae.d_in),
                      explained_variance=(1.0 - s_err / total_var) if total_var > 0 else float("nan"),
                      cosine=s_cos / n, dead_fraction=dead_fraction(density),
                      dense_fraction=dense_fraction(density, dense_threshold), density=density)


# ---------------------------------------------------------------------- splicing into the model
def _reconstructor(sae) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(sae, "reconstruct"):
        return sae.reconstruct
    if callable(sae):
        return sae
    raise TypeError(f"sae must be an SAE or a callable rows -> reconstructions; got {type(sae).__name__}")


@contextlib.contextmanager
def splice(model: nn.Module, at: str, replace: Callable[[torch.Tensor], torch.Tensor] | str
           ) -> Iterator[None]:
    """Within the block, layer ``at``'s output is replaced: by ``replace(rows) -> rows`` applied to
    its positions flattened to rows ``(n, d)`` (an SAE's reconstruction), or zeroed (``"zero"``).

    The hook is removed on exit, also when the block raises.
    """
    layer = get_module(model, at)
    zero = isinstance(replace, str)
    if zero and replace != "zero":
        raise ValueError(f"replace must be a callable or 'zero'; got {replace!r}")

    def swap(t: torch.Tensor) -> torch.Tensor:
        if zero:
            return torch.zeros_like(t)
        rows, _ = flatten_positions(t)
        new = replace(rows)
        if not isinstance(new, torch.Tensor) or new.shape != rows.shape:
            raise ValueError(f"replace: expected reconstructions of shape {tuple(rows.shape)}; got "
                             f"{tuple(getattr(new, 'shape', ()))}")
        return unflatten_positions(new.to(t.dtype), t.shape)

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor):
            return swap(out)
        if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
            return (swap(out[0]),) + tuple(out[1:])
        raise TypeError(f"at: layer {at!r} returns {type(out).__name__}; splicing needs a tensor")

    h = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model returns {type(out).__name__}; give loss_fn=")


def next_token_loss(output: Any, batch) -> torch.Tensor:
    """Per-token cross-entropy of predicting token ``t+1`` from logits at ``t`` (padding skipped).

    ``output``: logits ``(B, T, V)`` (or an object with ``.logits``); the token ids are the batch's
    ``input_ids`` (or its first positional argument); ``attention_mask`` drops padded targets.
    """
    logits = _logits(output)
    ids = batch.kwargs.get("input_ids", batch.args[0] if batch.args else None)
    if ids is None or logits.ndim != 3:
        raise ValueError("loss_fn: next_token_loss needs (B, T, V) logits and token ids")
    lp = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                         reduction="none")
    if batch.mask is not None:
        keep = batch.mask[:, 1:].reshape(-1).bool()
        lp = lp[keep]
    return lp


def classification_loss(output: Any, batch) -> torch.Tensor:
    """Per-sample cross-entropy of the logits ``(B, C)`` against the batch's labels."""
    if batch.labels is None:
        raise ValueError("labels: classification_loss needs labels (give labels= or (inputs, labels) batches)")
    return F.cross_entropy(_logits(output).float(), batch.labels.to(_logits(output).device).long(),
                           reduction="none")


@dataclass
class LossRecovered:
    """``loss_recovered = (ce_zero - ce_sae) / (ce_zero - ce_clean)`` and its three losses."""

    loss_recovered: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    n: int  # losses averaged (tokens or samples)


@torch.no_grad()
def loss_recovered(model: nn.Module, sae, data: Any, at: str, *, labels: Any = None,
                   loss_fn: Callable | None = None, batch_size: int | None = None,
                   progress: bool | None = None) -> LossRecovered:
    """Downstream loss recovered when layer ``at``'s activation is replaced by ``sae``'s reconstruction.

    Parameters
    ----------
    model : nn.Module
        Left exactly as found (:class:`~lumos.core.torch_model.ModelGuard`); the splice hook is
        removed after each pass, also on error.
    sae : SAE or callable
        Its ``reconstruct`` (or the callable) maps rows ``(n, d)`` to reconstructions.
    data
        As for :func:`~lumos.dictionary.cache.cache_activations`: a tensor/array, a dict of tensors
        (tokenizer output), a DataLoader or an iterable of batches.
    at : str
        The layer (dotted name) whose output is spliced.
    labels : array, optional
        Class labels for tensor data (classification loss).
    loss_fn : callable, optional
        ``loss_fn(output, batch) -> per-item losses (1-D)``; default :func:`classification_loss`
        when labels exist, else :func:`next_token_loss`.
    """
    rec = _reconstructor(sae)
    get_module(model, at)  # a clear error for a wrong name before any work
    dev, dt = model_device(model), model_dtype(model)
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n = 0
    with ModelGuard(model):
        for batch in model_batches(data, batch_size, dev, dt, labels=labels, progress=progress,
                                   desc="loss recovered"):
            fn = loss_fn or (classification_loss if batch.labels is not None else next_token_loss)
            for key, rep in (("clean", None), ("sae", rec), ("zero", "zero")):
                ctx = splice(model, at, rep) if rep is not None else contextlib.nullcontext()
                with ctx, torch.no_grad():  # the guard switches inference mode off; no graph is needed
                    out = model(*batch.args, **batch.kwargs)
                    losses = fn(out, batch).detach()
                check_finite(losses, f"the losses ({key})")
                sums[key] += float(losses.double().sum())
                if key == "clean":
                    n += losses.numel()
    if n == 0:
        raise ValueError("data: no losses were computed")
    ce = {k: v / n for k, v in sums.items()}
    denom = ce["zero"] - ce["clean"]
    rec_frac = (ce["zero"] - ce["sae"]) / denom if denom != 0 else float("nan")
    return LossRecovered(rec_frac, ce["clean"], ce["sae"], ce["zero"], n)
