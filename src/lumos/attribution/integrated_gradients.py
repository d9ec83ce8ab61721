"""Integrated gradients (Sundararajan, Taly & Yan, 2017), with averaging over several baselines.

For a sample ``x`` and a baseline ``x'`` the attribution of input element ``j`` is

    IG_j(x) = (x_j - x'_j) * integral_0^1 df(x' + a (x - x')) / dx_j da,

approximated by a quadrature rule (:mod:`lumos.attribution._approximation`). With ``k`` baselines
the attributions are averaged over them (expected gradients, Erion et al. 2021, when the baselines
are drawn from data). Completeness, ``sum_j IG_j = f(x) - f(x')``, holds for the exact integral;
the quadrature error is measured and reported for every sample in ``meta["completeness_gap"]``.

The work is a table of rows ``(sample, step, baseline)``; rows are evaluated ``batch_size`` at a
time and every random draw (random baselines) is made before batching, so the result does not
depend on ``batch_size``. :func:`_path_attributions` evaluates an arbitrary table of path points and
is shared with gradient SHAP / expected gradients; :func:`_ig_core` builds the standard table.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.execution import check_batch_size, chunks, rng
from ..core.inputs import Wrapper
from ..core.registry import register
from ..core.targets import Target
from ..core.torch_model import check_finite, forward, torch_call
from ._approximation import check_integration, integration_points
from ._baselines import BaselineSet, make_baselines
from ..core.layout import BatchLayout, run_in_layout
from .gradient import checked_gradient, row_bytes

__all__ = ["integrated_gradients"]


def _path_attributions(model: torch.nn.Module, target: Target, *, inputs: torch.Tensor,
                       bank: torch.Tensor, input_idx: torch.Tensor, baseline_idx: torch.Tensor,
                       alphas: torch.Tensor, weights: torch.Tensor, out_idx: torch.Tensor,
                       target_rows: torch.Tensor, n_out: int, batch_size: int | None = None,
                       progress: bool | None = None, shared_diff: bool = False,
                       desc: str = "integrated gradients",
                       what: str = "integrated-gradients path points") -> torch.Tensor:
    """Sum of weighted gradient × difference terms over an arbitrary table of path points.

    Row ``r`` of the table is the point ``b + alphas[r] * (x - b)`` with ``x = inputs[input_idx[r]]``
    and ``b = bank[baseline_idx[r]]``; it contributes
    ``weights[r] * grad f_t(point) * (x - b)`` to output row ``out_idx[r]``, where ``f_t`` is the
    target scalar of original sample ``target_rows[r]``.

    Parameters
    ----------
    inputs : Tensor, shape (m_in, ...)
    bank : Tensor, shape (m_b, ...)
    input_idx, baseline_idx, out_idx, target_rows : LongTensor, shape (R,)
    alphas, weights : Tensor, shape (R,)
        Path positions in [0, 1] and quadrature weights.
    n_out : int
        Number of output rows.
    batch_size : int, optional
        Table rows per forward+backward pass (default: sized by memory, at most 64).
    shared_diff : bool, default False
        Every row of an output row has the same ``x`` and ``b`` (one baseline per sample): the
        weighted gradients are summed first and multiplied by ``x - b`` once at the end, which
        saves a pass over every row.
    what : str
        The evaluations, as named when the model returns NaN or Inf there.

    Returns
    -------
    Tensor, shape (n_out, ...), the dtype and memory layout of ``inputs``
    """
    dev, dtype = inputs.device, inputs.dtype
    view = (-1,) + (1,) * (inputs.ndim - 1)
    lay = BatchLayout(model, inputs)
    inputs, bank = lay.internal(inputs), lay.internal(bank)
    acc = inputs.new_zeros((n_out,) + tuple(inputs.shape[1:]))
    alphas = alphas.to(device=dev, dtype=dtype)
    weights = weights.to(device=dev, dtype=dtype)
    input_idx, baseline_idx, out_idx = input_idx.to(dev), baseline_idx.to(dev), out_idx.to(dev)
    bs = check_batch_size(batch_size, row_bytes=row_bytes(inputs))
    for sl in chunks(len(alphas), bs, desc=desc, progress=progress):
        xi = inputs.index_select(0, input_idx[sl])
        bi = bank.index_select(0, baseline_idx[sl])
        diff = xi.sub_(bi)
        points = torch.addcmul(bi, alphas[sl].view(view), diff)
        rows = target_rows[sl]
        g = lay.from_model(run_in_layout(model, lambda t: checked_gradient(model, t, target, rows, what),
                                         lay.model_view(points), lay.fmt))
        g = g * weights[sl].view(view)
        if not shared_diff:
            g.mul_(diff)
        acc.index_add_(0, out_idx[sl], g)
    if shared_diff:
        first = torch.full((n_out,), -1, dtype=torch.long, device=dev)
        first.scatter_(0, out_idx, torch.arange(len(out_idx), device=dev)).clamp_(min=0)
        acc.mul_(inputs.index_select(0, input_idx[first]) - bank.index_select(0, baseline_idx[first]))
    return lay.user(acc)


def _ig_core(model: torch.nn.Module, x: torch.Tensor, baselines: BaselineSet, target: Target,
             alphas: np.ndarray, weights: np.ndarray, *, rows: torch.Tensor | None = None,
             batch_size: int | None = None, progress: bool | None = None,
             desc: str = "integrated gradients") -> torch.Tensor:
    """Integrated gradients of every row of ``x``, averaged over its baselines.

    Rows of the work table are ``(sample, step, baseline)`` flattened in that order.

    Parameters
    ----------
    x : Tensor, shape (n, ...)
    baselines : BaselineSet
        ``k`` baselines per sample.
    alphas, weights : ndarray, shape (S,)
        Quadrature points and weights on [0, 1].
    rows : LongTensor, shape (n,), optional
        Original sample of each row of ``x`` for the target (``None``: row ``i`` is sample ``i``).

    Returns
    -------
    Tensor, shape (n, ...), the dtype of ``x``
    """
    n, k, s = len(x), baselines.k, len(alphas)
    sample = torch.arange(n).repeat_interleave(s * k)
    step = torch.arange(s).repeat_interleave(k).repeat(n)
    b = torch.arange(k).repeat(n * s)
    a = torch.as_tensor(alphas, dtype=torch.float64)[step]
    w = torch.as_tensor(weights, dtype=torch.float64)[step] / k
    tr = sample if rows is None else torch.as_tensor(rows).cpu()[sample]
    return _path_attributions(
        model, target, inputs=x, bank=baselines.bank, input_idx=sample,
        baseline_idx=baselines.index[sample, b], alphas=a, weights=w, out_idx=sample,
        target_rows=tr, n_out=n, batch_size=batch_size, progress=progress, desc=desc,
        shared_diff=k == 1,
    )


def _baseline_outputs(model: torch.nn.Module, baselines: BaselineSet, target: Target, *,
                      rows: torch.Tensor | None = None, batch_size: int | None = None,
                      what: str = "the baselines") -> torch.Tensor:
    """Mean target scalar over each sample's baselines, shape (n,), float64.

    Each distinct bank row is evaluated once; the scalar is then picked per (sample, baseline)
    pair, because the target may differ per sample. When the model itself depends on the sample
    (per-sample forward arguments, an attribution to a layer: ``model.per_sample``), the output
    at a baseline is the sample's own, so every (sample, baseline) pair is evaluated, with its
    sample's ``rows``. The outputs are checked finite (a NaN here would make ``baseline_output``
    and the completeness gap NaN).
    """
    n, k = baselines.n, baselines.k
    sample = torch.arange(n).repeat_interleave(k)
    tr = sample if rows is None else torch.as_tensor(rows).cpu()[sample]
    if isinstance(model, Wrapper) and model.per_sample:
        used, inverse, fwd_rows = baselines.index.reshape(-1), torch.arange(n * k), tr
    else:
        used, inverse = torch.unique(baselines.index.reshape(-1), return_inverse=True)
        fwd_rows = None
    outs = []
    bs = check_batch_size(batch_size, row_bytes=row_bytes(baselines.bank))
    with torch.no_grad():
        for sl in chunks(len(used), bs, progress=False):
            out = forward(model, baselines.bank.index_select(0, used[sl].to(baselines.bank.device)),
                          name="baselines", rows=None if fwd_rows is None else fwd_rows[sl])
            check_finite(out, what)
            outs.append(out)
    out = torch.cat(outs)[inverse.to(outs[0].device)]
    with torch.no_grad():
        vals = target.select(out, tr).to(torch.float64)
    return vals.view(n, k).mean(1)


def _packed_baselines(p, baselines: Any, background: Any) -> tuple[Any, Any]:
    """``baselines`` and ``background`` in the packed form of ``p.x`` (several inputs: one entry
    per input, see :meth:`lumos.core.inputs.Packing.pack_param`); ``"blur"`` needs the spatial
    layout of one input and is refused there."""
    if p.packing is not None and isinstance(baselines, str) and baselines.strip().lower() == "blur":
        raise ValueError(
            "baselines='blur' blurs the spatial axes of one image, but the inputs are several "
            f"tensors {list(p.packing.names)}; give baselines per input (a tuple/dict: one "
            "tensor or number each, e.g. blurred images for the image input) or another baseline")
    return p.pack_param(baselines, "baselines"), p.pack_param(background, "background")


def _describe(value: Any) -> Any:
    """A parameter as recorded in ``Explanation.params``: names and numbers as given, arrays by
    shape (one per input for a tuple/dict of them)."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)) and value and all(
            isinstance(v, (torch.Tensor, np.ndarray, int, float)) for v in value) and any(
            isinstance(v, (torch.Tensor, np.ndarray)) for v in value):
        return [_describe(v) for v in value]
    return f"<array {tuple(getattr(value, 'shape', np.shape(value)))}>"


def _check_steps(n_steps: Any) -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int; got {n_steps!r}")
    return int(n_steps)


@register("integrated_gradients", "gradient",
          "Path integral of gradients from a baseline (Sundararajan et al., 2017)")
def integrated_gradients(model: torch.nn.Module, inputs: Any, target: Any = None, *,
                         baselines: Any = "zero", n_steps: int = 50,
                         integration: str = "gausslegendre", n_baselines: int | None = None,
                         sigma: float | None = None, background: Any = None, seed: int | None = 0,
                         batch_size: int | None = None, progress: bool | None = None,
                         forward_args: Any = None, at: str | None = None,
                         layer_side: str = "output"):
    """Integrated gradients: gradients averaged along the straight path from a baseline.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks". With several
    baselines the result is their average (Erion et al. 2021, "expected gradients", when they are
    sampled from data).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs (a model ``model(x1, x2)`` or ``model(a=..., b=...)``) give one values
        array per input; completeness holds over all of them together.
    target : int, sequence, "predicted", callable, lumos.Neuron or None
        See :mod:`lumos.core.targets`; ``lumos.Neuron("layer", index)`` explains a unit inside
        the network (completeness then holds for that unit's activation).
    baselines : str, float or Tensor, or a tuple / dict of them, default "zero"
        ``"zero"``, a constant, ``"blur"``, ``"uniform"``, ``"gaussian"``, ``"mean"`` (with
        ``background``), a tensor broadcastable to the inputs, or a set of ``k`` baselines ``(k, ...)``
        / ``(batch, k, ...)`` to average over; see
        :func:`lumos.attribution._baselines.make_baselines` for every form. With several inputs:
        a name or number for all of them, or one entry per input (a tuple, or a dict with the
        inputs' names) -- each a number, one sample's shape, ``(batch, ...)`` or a set
        ``(k, ...)``; ``"blur"`` (which needs one image's layout) is refused, and the random
        baselines use the range of a sample's inputs taken together. With ``at=`` the baselines
        are *activations* of that layer (``"zero"``: the zero activation); Captum's
        ``LayerIntegratedGradients`` maps input baselines through the layer instead, which is
        ``baselines=lumos.core.torch_model.through(model, at, input_baselines)``.
    n_steps : int, default 50
        Quadrature points per path.
    integration : {"gausslegendre", "riemann_left", "riemann_right", "riemann_middle", \
"riemann_trapezoid"}, default "gausslegendre"
        The quadrature rule (called ``method`` in Captum; renamed here because ``method`` names
        the explanation method in :func:`lumos.explain`).
    n_baselines : int, optional
        Random draws for ``"uniform"`` / ``"gaussian"`` baselines, or baselines sampled from a
        given set.
    sigma : float, optional
        ``"blur"``: Gaussian width in pixels (default 5). ``"gaussian"``: noise standard deviation
        relative to each sample's value range (default 0.1).
    background : array-like, shape (m, ...), optional
        Reference data whose mean is the baseline for ``baselines="mean"`` (one array per input
        for several inputs).
    seed : int, default 0
        Seed of the random baselines (drawn before batching; shared by all samples).
    batch_size : int, optional
        Rows ``(sample, step, baseline)`` per forward+backward pass (default: sized by memory, at
        most 64).
    progress : bool, optional
        Progress bar; ``None`` shows one on a terminal for long work.
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag); per-sample ones
        (first axis of batch length) go with their sample to every integration step and
        baseline (see :mod:`lumos.core.inputs`).
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation instead of
        the inputs (a dotted name); ``values`` has the activation's shape and completeness holds
        in the layer's space: ``sum(values) = f(x) - f(baseline activation)``.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (one array per input for several inputs; the
        activation's shape with ``at=``); ``baseline_output`` is the mean of ``f`` over each
        sample's baselines. ``meta["completeness_gap"]`` (per sample) is
        ``|sum(values) - (output - baseline_output)|``, the quadrature error, and
        ``meta["relative_gap"]`` that gap divided by ``|output - baseline_output|`` (NaN where
        that difference is 0). The model's outputs at the baselines and along the paths are
        checked: NaN or Inf there raises :class:`~lumos.core.torch_model.NonFiniteOutputError`
        naming the evaluation (``the baselines``, ``integrated-gradients path points``) instead
        of returning a NaN ``baseline_output`` beside finite but wrong values.

    Notes
    -----
    On ReLU networks the integrand is piecewise constant along the path and every rule converges
    slowly (the gap falls roughly like ``1 / n_steps``); on smooth networks Gauss-Legendre
    converges much faster than the Riemann sums. Check ``meta["relative_gap"]`` and raise
    ``n_steps`` when it is above about 1%.

    Examples
    --------
    >>> expl = lumos.explain(model, images, "integrated_gradients", target=3, baselines="blur")
    >>> expl.meta["relative_gap"].max()
    """
    n_steps = _check_steps(n_steps)
    integration = check_integration(integration)
    alphas, weights = integration_points(n_steps, integration)
    rng(seed)  # a bad seed is an error even where no baseline is random
    check_batch_size(batch_size)
    params = {"baselines": _describe(baselines),
              "n_steps": n_steps, "integration": integration, "n_baselines": n_baselines,
              "sigma": sigma, "seed": seed}
    with torch_call(model, inputs, target, method="integrated_gradients", forward_args=forward_args,
                    several=True, at=at, layer_side=layer_side) as p:
        baselines, background = _packed_baselines(p, baselines, background)
        base = make_baselines(baselines, p.x, n_baselines=n_baselines, sigma=sigma,
                              background=background, seed=seed)
        values = _ig_core(p.model, p.x, base, p.target, alphas, weights, batch_size=batch_size,
                          progress=progress)
        f_base = _baseline_outputs(p.model, base, p.target, batch_size=batch_size)
        delta = p.scalar.to(torch.float64) - f_base
        gap = (values.reshape(p.n, -1).to(torch.float64).sum(1) - delta).abs()
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(delta.abs().cpu().numpy() > 0,
                           (gap / delta.abs()).cpu().numpy(), np.nan)
        meta = {"baselines": base.description, "n_baselines": base.k, "n_steps": n_steps,
                "integration": integration, "seed": seed,
                "n_model_rows": p.n * n_steps * base.k}
        meta.update(base.meta)
        return p.explanation(
            values.to(p.x.dtype), "integrated_gradients", params, meta=meta,
            baseline_output=f_base.to(p.x.dtype),
            sample_meta={"completeness_gap": gap.cpu().numpy(), "relative_gap": rel},
        )


def _ig_kernel(model, x: torch.Tensor, target: Target, rows, *, baselines: Any = "zero",
               n_steps: int = 50, integration: str = "gausslegendre",
               n_baselines: int | None = None, sigma: float | None = None, background: Any = None,
               seed: int | None = 0, batch_size: int | None = None,
               progress: bool | None = None) -> torch.Tensor:
    """Row kernel (see :mod:`lumos.attribution.gradient`): IG of every row of ``x``."""
    alphas, weights = integration_points(_check_steps(n_steps), integration)
    base = make_baselines(baselines, x, n_baselines=n_baselines, sigma=sigma, background=background,
                          seed=seed)
    return _ig_core(model, x, base, target, alphas, weights, rows=rows, batch_size=batch_size,
                    progress=progress)


integrated_gradients.row_kernel = _ig_kernel
