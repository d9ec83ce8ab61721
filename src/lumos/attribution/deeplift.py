"""DeepLIFT (Rescale rule) and DeepSHAP, with rules on operations."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..core.execution import check_batch_size, chunks
from ..core.inputs import BoundModel, Shared, Wrapper, unwrap
from ..core.layout import layout_for, run_in_layout
from ..core.registry import register
from ..core.targets import resolve_target
from ..core.torch_model import as_tensor, check_finite, forward, require_grad_path
from ..core.units import SpliceModel
from ..core.validation import check_number
from ..rules.deeplift import DeepLiftComposite
from ..rules.engine import (
    _select_grad, apply, check_attributions, check_same_output, grad_path_name, row_bytes,
    rules_call, target_on_batch,
)

__all__ = ["deeplift", "deep_shap"]


def _record(net, user, refs: torch.Tensor, eps: float, method: str, rows):
    """The reference's forward pass under ``no_grad``, recording each non-linearity's input.

    ``net`` is the model evaluated (lumos's wrapper of the user's model ``user``, whose
    operations alone get rules); ``rows[k]``: the sample that reference row ``k`` belongs to
    (``None`` when the references do not depend on the sample, see :func:`_per_sample`).
    """
    comp = DeepLiftComposite(eps)
    with torch.no_grad():
        with apply(user, comp, method=method, only_inside=True) as session:
            out0 = forward(net, refs, name="baselines", rows=rows)
        check_finite(out0, "the baselines")
        if session.inplace_replaced:
            check_same_output(out0, forward(net, refs, name="baselines", rows=rows), method)
    return comp, out0


def _replay(net, user, comp, x: torch.Tensor, refs: torch.Tensor, ref_index, out0, target, tgt,
            rows: torch.Tensor, method: str, what: str):
    """DeepLIFT attributions of rows ``x`` (of samples ``rows``) against the recorded references.

    Row ``r`` pairs with reference ``ref_index[r]`` (``None``: reference ``r``, or the single
    shared reference). Returns ``(attributions, f_target(x), f_target(ref), output(x), target)``.
    """
    comp.replay(ref_index)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        with apply(user, comp, method=method, only_inside=True) as session:
            out = forward(net, xg, rows=rows)
        check_finite(out.detach(), "the inputs")
        comp.finish()
        if session.inplace_replaced:
            with torch.no_grad():
                check_same_output(out, forward(net, x, rows=rows), method)
        if tgt is None:
            tgt = resolve_target(target, out.detach())
        g, s = _select_grad(tgt, out, rows)
        require_grad_path(out, what)
        (grad,) = torch.autograd.grad(out, xg, grad_outputs=g, allow_unused=True)
    if grad is None:
        require_grad_path(None, what)
    b = refs if ref_index is None else refs.index_select(0, ref_index)
    o0 = out0 if ref_index is None else out0.index_select(0, ref_index)
    if len(o0) == 1:
        o0 = o0.expand((len(x),) + tuple(o0.shape[1:]))
    with torch.no_grad():
        s0 = tgt.select(o0, rows)
    return grad.mul_(x - b), s, s0.detach(), out.detach(), tgt


def _per_sample(net) -> bool:
    """The model evaluated depends on the sample beyond its rows: per-sample forward arguments,
    or a layer splice (the layers before it run on the sample's input). The references' pass
    must then be made for each sample with its own arguments, not once for all."""
    while isinstance(net, Wrapper):
        if isinstance(net, SpliceModel):
            return True
        if isinstance(net, BoundModel):
            for a in [*net.args, *net.kwargs.values()]:
                if (not isinstance(a, Shared) and isinstance(a, (torch.Tensor, np.ndarray))
                        and a.ndim >= 1 and a.shape[0] == net.n):
                    return True
        net = net.model
    return False


def _run(model, inputs, target, make_refs, *, method: str, eps: float, batch_size, progress,
         forward_args=None, at=None, layer_side="output"):
    """Shared driver of deeplift and deep_shap.

    ``make_refs(p) -> (refs, k, shared)`` (``p``: the :class:`Prepared` call): ``k`` references
    per sample (row ``r`` pairs sample ``r // k`` with reference ``r % k``; ``k = 1`` and one row:
    one reference for all samples). ``shared``: the references are the same for every sample,
    and their pass is recorded once for all rows unless the model depends on the sample
    (:func:`_per_sample`); otherwise (one reference per sample) once per chunk, each reference
    with its sample's forward arguments.
    """
    with rules_call(model, inputs, target, method, forward_args=forward_args, at=at,
                    layer_side=layer_side) as p:
        net, x, user = p.model, p.x, unwrap(p.model)
        what = grad_path_name(p)
        n = len(x)
        refs, k, shared = make_refs(p)
        total = n * k
        bs = check_batch_size(batch_size, row_bytes=row_bytes(x))
        n_chunks = -(-total // bs)  # chunks() is iterated in the loop: it reports progress as it goes
        tgt = (target_on_batch(net, x, p.target_spec, bs) if n_chunks > 1 or k > 1
               else None)
        fmt = layout_for(net, x)  # channels-last batches where the model takes them
        once = shared and not _per_sample(net)

        def record(r, rows):
            return run_in_layout(net, lambda t: _record(net, user, t, eps, method, rows), r, fmt)

        comp = out0 = None
        if once:
            comp, out0 = record(refs, None)
        attr = torch.empty((total,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)  # contiguous
        f_x = torch.empty(total, dtype=x.dtype, device=x.device)
        f_b = torch.empty(total, dtype=x.dtype, device=x.device)
        outputs = []
        for sl in chunks(total, bs, desc=method, progress=progress):
            r = torch.arange(sl.start, sl.stop, device=x.device)
            rows = r // k
            if once:
                idx = (r % k) if len(refs) > 1 else None
                chunk_refs, chunk_comp, chunk_out0 = refs, comp, out0
            else:  # this chunk's references, each recorded with its sample's arguments
                idx = None
                chunk_refs = refs[(r % len(refs)) if shared else rows]
                chunk_comp, chunk_out0 = record(chunk_refs, rows)
            a, s, s0, out, tgt = run_in_layout(
                net, lambda xs, c=chunk_comp, b=chunk_refs, i=idx, o=chunk_out0, t=tgt, r=rows:
                _replay(net, user, c, xs, b, i, o, p.target_spec, t, r, method, what),
                x[rows], fmt)
            attr[sl], f_x[sl], f_b[sl] = a, s, s0
            outputs.append(out)
        check_attributions(attr, method)
        values = attr.reshape((n, k) + tuple(x.shape[1:])).mean(1)
        fx = f_x.reshape(n, k)[:, 0]
        fb = f_b.reshape(n, k).mean(1)
        p.resolve(torch.cat(outputs)[::k], tgt)
        delta = values.reshape(n, -1).sum(1) - (fx - fb)
        return p, values, fb, delta


def _baselines(x: torch.Tensor, baselines: Any, name: str = "baselines") -> torch.Tensor:
    """``(refs, shared)``: one shared reference ``(1, ...)`` (``None`` = zeros, a number, one
    sample) or one per sample ``(n, ...)``."""
    if isinstance(baselines, str):
        raise ValueError(f"{name} must be None, a number or a tensor/array; got the string "
                         f"{baselines!r}")
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
             eps: float = 1e-6, batch_size: int | None = None, progress: bool | None = None,
             forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
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
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs (a model ``model(x1, x2)`` or ``model(a=..., b=...)``) give one values
        array per input; summation-to-delta holds over all of them together.
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
        ``lumos.Neuron("layer", index)`` explains a unit inside the network (for a linear unit
        ``j``: ``w_j ⊙ (x − x₀)``). For a callable target that is non-linear in the output, the multiplier at the output is
        its gradient at ``x`` and summation-to-delta holds only approximately (see ``delta``).
    baselines : None, float, Tensor or ndarray, default None
        The reference: ``None`` (zeros), a number, one sample ``inputs.shape[1:]`` or one per
        sample ``inputs.shape``; for several inputs a tuple/dict with one such entry per input
        (or a number for all).
    eps : float, default 1e-6
        Where ``|x − x₀| <= eps`` at a non-linearity, its derivative replaces the secant.
    batch_size : int, optional
        Input/baseline pairs per pass (default: 64, fewer for large inputs, sized by a memory
        budget).
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag); per-sample ones
        (first axis of batch length) go with their sample, for the input's pass and for the
        references' pass (which is then made per sample).
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation instead
        of the inputs: the references are then *activations* of that layer (``None``: the zero
        activation; ``lumos.core.torch_model.through(model, at, input_baselines)`` maps input
        baselines through the layer, Captum's ``LayerDeepLift`` convention), the rules apply to
        the operations after it, and summation-to-delta holds in the layer's space.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Explanation
        ``values`` (shape of ``inputs``; one array per input for several inputs; the
        activation's shape with ``at=``), ``baseline_output`` = the target at the baseline,
        ``meta["delta"]`` per sample: ``values.sum() − (output − baseline_output)``.
    """
    eps = check_number(eps, "eps", low=0)

    def make_refs(p):
        refs, shared = _baselines(p.x, p.pack_param(baselines, "baselines"))
        return refs, 1, shared

    p, values, fb, delta = _run(model, inputs, target, make_refs, method="deeplift", eps=eps,
                                batch_size=batch_size, progress=progress,
                                forward_args=forward_args, at=at, layer_side=layer_side)
    params = {"baselines": _describe(baselines), "eps": eps, "rule": "rescale"}
    return p.explanation(values, "deeplift", params, baseline_output=fb,
                         meta={"max_abs_delta": float(delta.abs().max())},
                         sample_meta={"delta": delta})


@register("deep_shap", "propagation",
          "DeepSHAP: DeepLIFT averaged over a set of baselines (Lundberg & Lee, 2017)")
def deep_shap(model: nn.Module, inputs: Any, target: Any = None, *, background: Any = None,
              eps: float = 1e-6, batch_size: int | None = None, progress: bool | None = None,
              forward_args: Any = None, at: str | None = None, layer_side: str = "output"):
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
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
    background : Tensor or ndarray, shape (k, ...)
        The background set (required), ``k >= 1`` samples shaped like ``inputs[0]`` (e.g. 10-200
        training samples); for several inputs a tuple/dict with one ``(k, ...)`` set per input;
        with ``at=``, activations of that layer.
    eps : float, default 1e-6
    batch_size : int, optional
        Input/reference pairs per pass (default: 64, fewer for large inputs, sized by a memory
        budget); ``batch * k`` pairs in all.
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag); per-sample ones
        (first axis of batch length) go with their sample, for the input's pass and for the
        references' pass (which is then made per sample).
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation instead
        of the inputs: the references are then *activations* of that layer (``None``: the zero
        activation; ``lumos.core.torch_model.through(model, at, input_baselines)`` maps input
        baselines through the layer, Captum's ``LayerDeepLift`` convention), the rules apply to
        the operations after it, and summation-to-delta holds in the layer's space.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Explanation
        ``values`` (shape of ``inputs``, per input, or of the activation), ``baseline_output`` =
        the mean target over the
        background, ``meta["delta"]`` per sample.
    """
    eps = check_number(eps, "eps", low=0)
    if background is None:
        raise ValueError("background: deep_shap needs a background set of shape (k, ...) (e.g. "
                         "50 training samples)")
    n_bg = []

    def make_refs(p):
        x = p.x
        b = p.pack_param(background, "background")
        if isinstance(b, (str, int, float)) or callable(b):
            raise ValueError("background must be samples of shape (k, ...) (a tensor or array, or "
                             f"one per input for several inputs); got {b!r}")
        b = as_tensor(b, x.device, name="background", dtype=x.dtype)
        if tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"background must have shape (k, {', '.join(map(str, x.shape[1:]))}); "
                             f"got {tuple(b.shape)}")
        n_bg.append(len(b))
        return b, len(b), True  # the same set for every sample

    p, values, fb, delta = _run(model, inputs, target, make_refs, method="deep_shap", eps=eps,
                                batch_size=batch_size, progress=progress,
                                forward_args=forward_args, at=at, layer_side=layer_side)
    k = n_bg[0]
    return p.explanation(values, "deep_shap", {"n_background": k, "eps": eps}, baseline_output=fb,
                         meta={"max_abs_delta": float(delta.abs().max())},
                         sample_meta={"delta": delta})


def _describe(b):
    if b is None or isinstance(b, (int, float)):
        return b
    if isinstance(b, Mapping):
        return {str(k): _describe(v) for k, v in b.items()}
    if isinstance(b, (tuple, list)) and b and all(isinstance(v, (torch.Tensor, np.ndarray))
                                                  for v in b):
        return [_describe(v) for v in b]
    return f"<array {tuple(np.shape(b))}>"
