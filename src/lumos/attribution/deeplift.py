"""DeepLIFT (Rescale rule) and DeepSHAP, with rules on operations."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.execution import check_batch_size, chunks
from ..core.layout import layout_for, run_in_layout
from ..core.registry import register
from ..core.targets import resolve_target
from ..core.torch_model import Prepared, as_tensor, check_finite, forward
from ..core.validation import check_number
from ..rules.deeplift import DeepLiftComposite
from ..rules.engine import (
    _select_grad, apply, check_attributions, check_same_output, row_bytes, rules_call,
    target_on_batch,
)

__all__ = ["deeplift", "deep_shap"]


def _record(model, refs: torch.Tensor, eps: float, method: str):
    """The reference's forward pass under ``no_grad``, recording each non-linearity's input."""
    comp = DeepLiftComposite(eps)
    with torch.no_grad():
        with apply(model, comp, method=method) as session:
            out0 = forward(model, refs, name="baselines")
        check_finite(out0, "the baselines")
        if session.inplace_replaced:
            check_same_output(out0, forward(model, refs, name="baselines"), method)
    return comp, out0


def _replay(model, comp, x: torch.Tensor, refs: torch.Tensor, ref_index, out0, target, tgt,
            rows: torch.Tensor, method: str):
    """DeepLIFT attributions of rows ``x`` against the recorded references.

    Row ``r`` pairs with reference ``ref_index[r]`` (``None``: reference ``r``, or the single
    shared reference). Returns ``(attributions, f_target(x), f_target(ref), output(x), target)``.
    """
    comp.replay(ref_index)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with apply(model, comp, method=method) as session:
            out = forward(model, xg)
        check_finite(out.detach(), "the inputs")
        comp.finish()
        if session.inplace_replaced:
            with torch.no_grad():
                check_same_output(out, forward(model, x), method)
        if tgt is None:
            tgt = resolve_target(target, out.detach())
        g, s = _select_grad(tgt, out, rows)
        if not out.requires_grad:
            raise ValueError("model: its output does not depend on the input")
        (grad,) = torch.autograd.grad(out, xg, grad_outputs=g, allow_unused=True)
    if grad is None:
        raise ValueError("model: its output does not depend on the input")
    b = refs if ref_index is None else refs.index_select(0, ref_index)
    o0 = out0 if ref_index is None else out0.index_select(0, ref_index)
    if len(o0) == 1:
        o0 = o0.expand((len(x),) + tuple(o0.shape[1:]))
    with torch.no_grad():
        s0 = tgt.select(o0, rows)
    return grad.mul_(x - b), s, s0.detach(), out.detach(), tgt


def _run(model, inputs, target, make_refs, *, method: str, eps: float, batch_size, progress):
    """Shared driver of deeplift and deep_shap.

    ``make_refs(x) -> (refs, k, shared)``: ``k`` references per sample (row ``r`` pairs sample
    ``r // k`` with reference ``r % k``; ``k = 1`` and one row: one reference for all samples).
    ``shared``: the references' pass is recorded once for all rows; otherwise (one reference
    per sample) once per chunk.
    """
    with rules_call(model, inputs, method) as x:
        n = len(x)
        refs, k, shared = make_refs(x)
        total = n * k
        bs = check_batch_size(batch_size, row_bytes=row_bytes(x))
        slices = list(chunks(total, bs, desc=method, progress=progress))
        tgt = target_on_batch(model, x, target, bs) if len(slices) > 1 or k > 1 else None
        fmt = layout_for(model, x)  # channels-last batches where the model takes them

        def record(r):
            return run_in_layout(model, lambda t: _record(model, t, eps, method), r, fmt)

        comp = out0 = None
        if shared:
            comp, out0 = record(refs)
        attr = torch.empty((total,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)  # contiguous
        f_x = torch.empty(total, dtype=x.dtype, device=x.device)
        f_b = torch.empty(total, dtype=x.dtype, device=x.device)
        outputs = []
        for sl in slices:
            r = torch.arange(sl.start, sl.stop, device=x.device)
            rows = r // k
            if shared:
                idx = (r % k) if len(refs) > 1 else None
                chunk_refs, chunk_comp, chunk_out0 = refs, comp, out0
            else:  # one reference per sample: record this chunk's references
                idx = None
                chunk_refs = refs[rows]
                chunk_comp, chunk_out0 = record(chunk_refs)
            a, s, s0, out, tgt = run_in_layout(
                model, lambda xs, c=chunk_comp, b=chunk_refs, i=idx, o=chunk_out0, t=tgt, r=rows:
                _replay(model, c, xs, b, i, o, target, t, r, method), x[rows], fmt)
            attr[sl], f_x[sl], f_b[sl] = a, s, s0
            outputs.append(out)
        check_attributions(attr, method)
        values = attr.reshape((n, k) + tuple(x.shape[1:])).mean(1)
        fx = f_x.reshape(n, k)[:, 0]
        fb = f_b.reshape(n, k).mean(1)
        output = torch.cat(outputs)[::k]
        p = Prepared(model, x, output, tgt, fx, meta={"target": tgt.description})
        delta = values.reshape(n, -1).sum(1) - (fx - fb)
        return p, values, fb, delta


def _baselines(x: torch.Tensor, baselines: Any, name: str = "baselines") -> torch.Tensor:
    """``(refs, shared)``: one shared reference ``(1, ...)`` (``None`` = zeros, a number, one
    sample) or one per sample ``(n, ...)``."""
    if baselines is None:
        return torch.zeros_like(x[:1]), True
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return torch.full_like(x[:1], check_number(baselines, name)), True
    b = torch.as_tensor(baselines.detach() if isinstance(baselines, torch.Tensor) else
                        np.asarray(baselines)).to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(b).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    if tuple(b.shape) == tuple(x.shape[1:]):
        return b.unsqueeze(0).clone(), True
    if b.ndim == x.ndim and b.shape[0] == 1 and tuple(b.shape[1:]) == tuple(x.shape[1:]):
        return b.clone(), True
    if tuple(b.shape) == tuple(x.shape):
        return b.clone(), False
    raise ValueError(
        f"{name} must be None, a number, one sample of shape {tuple(x.shape[1:])} or one per "
        f"sample of shape {tuple(x.shape)}; got shape {tuple(b.shape)}"
    )


@register("deeplift", "propagation",
          "DeepLIFT Rescale: multipliers of differences from a baseline (Shrikumar et al., 2017)")
def deeplift(model: nn.Module, inputs: Any, target: Any = None, *, baselines: Any = None,
             eps: float = 1e-6, batch_size: int | None = None, progress: bool | None = None):
    """DeepLIFT with the Rescale rule: how the difference of the target from its value at a
    baseline is carried by each input's difference from the baseline.

    Shrikumar, Greenside & Kundaje (2017), "Learning Important Features Through Propagating
    Activation Differences". Rules attach to the non-linear *operations* (element-wise
    activations however they are called, max pooling, products of two input-dependent tensors;
    see :mod:`lumos.rules.deeplift`); linear operations keep their gradient, which is their exact
    multiplier. Summation-to-delta holds: ``values.sum() == f(x) − f(baseline)`` up to float
    error (``meta["delta"]``). The RevealCancel rule is not implemented.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (batch statistics are refused), not compiled, returning logits.
    inputs : Tensor or ndarray, shape (batch, ...)
    target : int, sequence of int, "predicted", callable or None
        For a callable target that is non-linear in the output, the multiplier at the output is
        its gradient at ``x`` and summation-to-delta holds only approximately (see ``delta``).
    baselines : None, float, Tensor or ndarray, default None
        The reference: ``None`` (zeros), a number, one sample ``inputs.shape[1:]`` or one per
        sample ``inputs.shape``.
    eps : float, default 1e-6
        Where ``|x − x₀| <= eps`` at a non-linearity, its derivative replaces the secant.
    batch_size : int, optional
        Input/baseline pairs per pass (default: 64, fewer for large inputs, sized by a memory
        budget).
    progress : bool, optional

    Returns
    -------
    Explanation
        ``values`` (shape of ``inputs``), ``baseline_output`` = the target at the baseline,
        ``meta["delta"]`` per sample: ``values.sum() − (output − baseline_output)``.
    """
    eps = check_number(eps, "eps", low=0)

    def make_refs(x):
        refs, shared = _baselines(x, baselines)
        return refs, 1, shared

    p, values, fb, delta = _run(model, inputs, target, make_refs, method="deeplift", eps=eps,
                                batch_size=batch_size, progress=progress)
    params = {"baselines": _describe(baselines), "eps": eps, "rule": "rescale"}
    return p.explanation(values, "deeplift", params, baseline_output=fb,
                         meta={"max_abs_delta": float(delta.abs().max())},
                         sample_meta={"delta": delta})


@register("deep_shap", "propagation",
          "DeepSHAP: DeepLIFT averaged over a set of baselines (Lundberg & Lee, 2017)")
def deep_shap(model: nn.Module, inputs: Any, target: Any = None, *, background: Any = None,
              eps: float = 1e-6, batch_size: int | None = None, progress: bool | None = None):
    """DeepSHAP: DeepLIFT (Rescale) attributions averaged over a background set.

    Lundberg & Lee (2017), "A Unified Approach to Interpreting Model Predictions" (DeepExplainer):
    with the references drawn from the data, the average of DeepLIFT against each approximates
    SHAP values; they sum to ``f(x) − mean_j f(b_j)``.

    The reference set is a sample of the data distribution, so it is called ``background`` as
    everywhere in lumos (:func:`~lumos.attribution.gradient_shap.gradient_shap`, the Shapley and
    LIME methods); every row of it is used, as a DeepLIFT baseline, for every sample.
    ``deeplift(baselines=...)`` takes one baseline (or one per sample), as integrated gradients.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...)
    target : int, sequence of int, "predicted", callable or None
    background : Tensor or ndarray, shape (k, ...)
        The background set (required), ``k >= 1`` samples shaped like ``inputs[0]`` (e.g. 10-200
        training samples).
    eps : float, default 1e-6
    batch_size : int, optional
        Input/reference pairs per pass (default: 64, fewer for large inputs, sized by a memory
        budget); ``batch * k`` pairs in all.
    progress : bool, optional

    Returns
    -------
    Explanation
        ``values`` (shape of ``inputs``), ``baseline_output`` = the mean target over the
        background, ``meta["delta"]`` per sample.
    """
    eps = check_number(eps, "eps", low=0)
    if background is None:
        raise ValueError("background: deep_shap needs a background set of shape (k, ...) (e.g. "
                         "50 training samples)")
    bg = as_tensor(background, name="background")
    k = len(bg)

    def make_refs(x):
        b = bg.to(device=x.device, dtype=x.dtype)
        if tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"background must have shape (k, {', '.join(map(str, x.shape[1:]))}); "
                             f"got {tuple(b.shape)}")
        return b, k, True  # the background's pass is recorded once, for every sample

    p, values, fb, delta = _run(model, inputs, target, make_refs, method="deep_shap", eps=eps,
                                batch_size=batch_size, progress=progress)
    return p.explanation(values, "deep_shap", {"n_background": k, "eps": eps}, baseline_output=fb,
                         meta={"max_abs_delta": float(delta.abs().max())},
                         sample_meta={"delta": delta})


def _describe(b):
    if b is None or isinstance(b, (int, float)):
        return b
    return f"<array {tuple(np.shape(b))}>"
