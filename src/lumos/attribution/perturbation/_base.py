"""The shared machinery of the perturbation methods.

A perturbation method hides parts of the input and watches the explained score. Everything that
is not its mathematics lives here:

- :func:`perturbation_call` validates the inputs and the target and yields a :class:`Run` that
  scores stacks of perturbed inputs. For a torch module it runs inside
  :func:`lumos.core.torch_model.torch_call` (no gradients, the model left as found); for any other
  callable (a predict function, a scikit-learn estimator) it goes through
  :class:`lumos.core.blackbox.BlackBox`, which gets the perturbed rows in the type of the user's
  inputs (tensor, array or DataFrame).
- :meth:`Run.evaluate` builds the perturbed inputs chunk by chunk (vectorised, never all copies at
  once) and evaluates each chunk of ``batch_size`` rows in one model call.
- :func:`axes_spec` reads per-axis shapes (windows, strides, mask grids), :func:`make_fill`
  builds what hidden elements are replaced with.

Forward arguments (``forward_args=``, :mod:`lumos.core.inputs`) reach the model on both paths:
every perturbed row is scored with the arguments of the sample it was built from (the ``rows``
each ``build`` returns), whatever the chunking. Several explained inputs (a tuple or dict) are
packed into the columns of ``Run.x`` for methods that pass ``several=True`` (feature ablation);
the others refuse them with the error of :func:`~lumos.core.torch_model.torch_call`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ...core.images import gaussian_blur  # noqa: F401 (re-exported)
from ...core.blackbox import BlackBox
from ...core.inputs import Packing, is_several
from ...core.units import Neuron
from ...core.execution import check_batch_size, chunks, rng
from ...core.explanation import Explanation
from ...core.targets import resolve_target
from ...core.validation import check_number
from ...core.torch_model import (Prepared, _clean_params, as_tensor, check_finite, forward,
                                torch_call)

__all__ = ["Run", "perturbation_call", "axes_spec", "make_fill", "constant_fill", "gaussian_blur", "FILLS"]

FILLS = ("zero", "mean", "blur", "noise")


class Run:
    """A model seen as ``f(perturbed inputs) -> explained scalar per row``.

    Attributes
    ----------
    x : Tensor, shape (n, ...)
        The explained inputs (a float copy; for torch models on the model's device).
    scalar : Tensor of float64, shape (n,)
        The explained scalar at ``x``.
    n_evals : int
        Rows evaluated by the model so far, the ``n`` rows at ``x`` included.
    """

    def __init__(self, x: torch.Tensor, scalar: torch.Tensor, score: Callable, build_explanation: Callable,
                 meta: dict):
        self.x = x
        self.scalar = scalar.to(torch.float64)
        self._score = score
        self._build_explanation = build_explanation
        self.meta = meta
        self.n_evals = len(x)
        self.packing: Packing | None = None  # several inputs packed into the columns of x

    memory_format = torch.contiguous_format

    def prepare(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (the inputs, a fill) in the layout chunks are evaluated in, so that gathering
        rows from it builds a chunk that needs no further copy."""
        return t.contiguous(memory_format=self.memory_format)

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def score(self, xb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Explained scalar (float64, on ``x``'s device) of each perturbed row; ``rows[k]`` is its sample."""
        s = self._score(xb, rows)
        self.n_evals += len(xb)
        return s

    def batch_size(self, batch_size: int | None) -> int:
        """Rows per model call: ``batch_size``, or by default as many as fit the memory budget of
        :func:`~lumos.core.execution.check_batch_size` (64 small rows, fewer large images: on
        128x128 images 64-row chunks made occlusion 2.4x slower than 8-row ones)."""
        return check_batch_size(batch_size, row_bytes=self.x[0].numel() * self.x.element_size())

    def evaluate(self, total: int, build: Callable[[slice], tuple], batch_size: int | None,
                 progress: bool | None = None, desc: str = "",
                 consume: Callable | None = None) -> torch.Tensor:
        """Score ``total`` perturbed rows, built and evaluated ``batch_size`` at a time.

        ``build(sl)`` returns ``(xb, rows, ctx)`` for the flat perturbation indices ``sl``;
        ``consume(sl, scores, ctx)``, when given, sees every chunk's scores (for accumulating
        maps on the fly). Returns the scores of all rows, shape (total,), float64.
        """
        out = torch.empty(total, dtype=torch.float64, device=self.x.device)
        bs = self.batch_size(batch_size)
        for sl in chunks(total, bs, desc=desc, progress=progress, unit="input"):
            xb, rows, ctx = build(sl)
            s = self.score(xb, rows)
            out[sl] = s
            if consume is not None:
                consume(sl, s, ctx)
        return out

    def explanation(self, values, method: str, params: dict, meta: dict | None = None,
                    sample_meta: dict | None = None, feature_names: list[str] | None = None) -> Explanation:
        """The result; ``feature_names`` name the last axis of ``values`` (default: a DataFrame's
        columns when ``values`` has one value per column)."""
        m = dict(self.meta)
        m.update(meta or {})
        m["n_evals"] = int(self.n_evals)
        return self._build_explanation(values, method, params, m, sample_meta or {}, feature_names)


@contextlib.contextmanager
def perturbation_call(model: Any, inputs: Any, target: Any, *, method: str, what: str,
                      forward_args: Any = None, several: bool = False) -> Iterator[Run]:
    """Validate ``inputs`` and ``target`` for a perturbation method and yield a :class:`Run`.

    A torch module is evaluated under ``torch.inference_mode`` inside :func:`torch_call` (the
    model is left as found, also on error), conv nets on CPU with channels-last image chunks
    (``meta["memory_format"]``); anything else callable is wrapped in :class:`BlackBox`.
    Every model evaluation is checked: numeric (black boxes) and finite outputs, the error naming
    the evaluation (``"the inputs"`` or ``what``, e.g. ``"occluded inputs"``).

    ``forward_args`` are the model's extra arguments (:mod:`lumos.core.inputs`): per-sample ones
    are expanded to the rows of every perturbed batch. A predict function gets them too
    (``predict(X, *args, **kwargs)``, one row of each per-sample argument per row of ``X``); a
    scikit-learn estimator cannot take them. ``several=True``: the method takes several inputs
    of a torch model (packed, ``Run.packing``); predict functions take one input.
    """
    if isinstance(model, nn.Module):
        with torch_call(model, inputs, target, method=method, clean_forward=False,
                        forward_args=forward_args, several=several, keep_integer=True) as p:
            yield _torch_run(p, what)
        return
    if not callable(model) and not hasattr(model, "predict"):
        raise TypeError(
            "model must be a torch.nn.Module, a predict function that scores a batch, or a "
            f"scikit-learn estimator; got {type(model).__name__}"
        )
    if isinstance(target, Neuron):
        raise TypeError(
            f"target: {target!r} is a unit of a layer, which needs a torch.nn.Module; a predict "
            f"function ({type(model).__name__}) has no layers. Explain one of its outputs instead.")
    if is_several(inputs):
        raise ValueError(
            f"inputs: {method} of a predict function explains one input array (a tuple or dict of "
            "inputs was given). Several inputs work with a torch module"
            + (" (feature_ablation)" if several else "")
            + "; for a predict function explain one input and pass the others with forward_args=, "
            "or write it as a function of their concatenation."
        )
    if forward_args is not None and not (callable(model) and not hasattr(model, "fit")):
        raise TypeError(
            f"forward_args: {method} calls a scikit-learn estimator as predict(X) only; extra "
            "arguments are for torch modules and plain predict functions predict(X, *args, **kwargs)"
        )
    yield _blackbox_run(model, inputs, target, method, what, forward_args)


def _channels_last_helps(model: nn.Module, x: torch.Tensor) -> bool:
    """Conv nets on CPU run about twice as fast on channels-last float32 images (oneDNN's NHWC
    kernels); the values agree to float32 rounding."""
    return (x.ndim == 4 and x.device.type == "cpu" and x.dtype == torch.float32
            and any(isinstance(m, nn.Conv2d) for m in model.modules()))


def _torch_run(p: Prepared, what: str) -> Run:
    """``p`` from ``torch_call(..., clean_forward=False)``: f(x) is evaluated here, once, in the
    layout the perturbed inputs will have (so that differences carry no layout rounding)."""
    model = p.model
    layout = {"cl": _channels_last_helps(model, p.x)}

    def outputs(xb, name, rows=None):
        # inference_mode: only the scores are kept, never differentiated (a little faster);
        # rows: the sample of each row, for per-sample forward arguments
        with torch.inference_mode():
            if layout["cl"]:
                xb = xb.contiguous(memory_format=torch.channels_last)
            return forward(model, xb, name=name, rows=rows)

    if layout["cl"]:
        # a model that cannot take channels-last inputs (a .view on its activations) is run as it is
        try:
            out = outputs(p.x, "inputs")
        except ValueError:
            layout["cl"] = False
    if not layout["cl"]:
        out = outputs(p.x, "inputs")
    target = p.resolve(out.clone())  # checks the outputs at the inputs are finite

    def score(xb, rows):
        out = outputs(xb, what, rows)
        check_finite(out, what)
        return target.select(out, rows).to(torch.float64)

    def build(values, method, params, meta, sample_meta, feature_names):
        if feature_names is not None:
            p.feature_names = feature_names
        return p.explanation(values, method, params, meta=meta, sample_meta=sample_meta)

    meta = dict(p.meta)
    meta["memory_format"] = "channels_last" if layout["cl"] else "contiguous"
    run = Run(p.x, p.scalar, score, build, meta)
    run.packing = p.packing
    if layout["cl"]:
        run.memory_format = torch.channels_last
    return run


def _blackbox_run(model: Any, inputs: Any, target: Any, method: str, what: str,
                  forward_args: Any = None) -> Run:
    columns = None
    if hasattr(inputs, "columns") and hasattr(inputs, "dtypes"):  # a DataFrame
        columns = [str(c) for c in inputs.columns]
        try:
            arr = inputs.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "inputs: perturbation methods replace feature values by numbers, so every column "
                "of the DataFrame must be numeric (encode categories first)"
            ) from e
        x, kind, np_dtype = as_tensor(arr), "frame", np.float64
    elif isinstance(inputs, torch.Tensor):
        x, kind, np_dtype = as_tensor(inputs), "tensor", None
    else:
        arr = np.asarray(inputs)
        np_dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
        x, kind = as_tensor(inputs, dtype=torch.float64 if arr.dtype.kind != "f" else None), "array"
    # BlackBox hands the model a copy of every batch (a predict function that normalises its
    # argument in place cannot change the inputs the perturbations are built from, nor
    # Explanation.inputs) and checks every answer: numeric, finite, named by ``what``.
    # Per-sample forward arguments are expanded by BlackBox from the explained sample of each row.
    frame = inputs if kind == "frame" else None
    bb = BlackBox(model, columns=None if frame is None else list(frame.columns),
                  dtypes=None if frame is None else frame.dtypes.to_dict(), method=method,
                  forward_args=forward_args, inputs=x if forward_args is not None else None)

    def to_user(xb: torch.Tensor):
        # The model gets what the user gave: tensors stay tensors, arrays come back as arrays
        # of the user's float dtype, DataFrames are rebuilt by BlackBox from the columns.
        return xb if kind == "tensor" else xb.detach().cpu().numpy().astype(np_dtype, copy=False)

    output = bb(to_user(x), what="the inputs")
    tgt = resolve_target(target, output)
    scalar = torch.as_tensor(np.asarray(tgt.select(output), dtype=np.float64), device=x.device)

    def score(xb, rows):
        out = bb(to_user(xb), what=what, rows=None if forward_args is None else rows.cpu().numpy())
        s = np.asarray(tgt.select(out, rows.cpu().numpy()), dtype=np.float64)
        return torch.as_tensor(s, device=xb.device)

    meta = {"target": tgt.description, "model_output": bb.score_name}

    def build(values, method, params, meta, sample_meta, feature_names):
        m = dict(meta)
        m.update(sample_meta)
        return Explanation(
            values=values, inputs=x, target=tgt.indices, output=scalar, method=method,
            params=_clean_params(params), meta=m,
            feature_names=feature_names if feature_names is not None else columns,
            sample_keys=tuple(sample_meta.keys()),
        )

    return Run(x, scalar, score, build, meta)


# ---------------------------------------------------------------------------- shapes per axis
def axes_spec(spec: Any, sample_shape: Sequence[int], name: str, allow_none: bool = True
              ) -> tuple[int | None, ...]:
    """Read a per-axis size (window, stride, mask grid) for samples of ``sample_shape``.

    An ``int`` k means k along every axis of a 1-D sample, and ``(None, k, k, ...)`` for samples
    with 3 or more axes (images ``(C, H, W)``, volumes: the leading channel axis is covered whole).
    A tuple gives one entry per sample axis; ``None`` means "the whole axis" (the mask is shared
    along it). For samples of 3+ axes a tuple one shorter leaves out the channel axis. 2-D samples
    are ambiguous (``(channels, length)`` signals vs ``(tokens, dim)`` embeddings) and need a tuple.
    """
    nd = len(sample_shape)
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if nd == 1:
            spec = (int(spec),)
        elif nd >= 3:
            spec = (None,) + (int(spec),) * (nd - 1)
        else:
            raise ValueError(
                f"{name}: samples of shape {tuple(sample_shape)} are 2-D; give a tuple, e.g. "
                f"(None, {spec}) for a (channels, length) signal or ({spec}, None) for "
                "(tokens, dim) embeddings (None covers the whole axis)"
            )
    if not isinstance(spec, (tuple, list)):
        raise ValueError(f"{name} must be an int or a tuple of ints/None, one per input axis; got {spec!r}")
    spec = tuple(spec)
    if nd >= 3 and len(spec) == nd - 1:
        spec = (None,) + spec
    if len(spec) != nd:
        raise ValueError(
            f"{name} has {len(spec)} entries but samples have {nd} axes (shape "
            f"{tuple(sample_shape)}); give one entry per axis, None for a whole axis"
        )
    out = []
    for a, (v, size) in enumerate(zip(spec, sample_shape)):
        if v is None:
            if not allow_none:
                raise ValueError(f"{name}: entry {a} is None; give an int per axis")
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: entry {a} must be a positive int or None; got {v!r}")
        out.append(int(v))
    return tuple(out)


# ---------------------------------------------------------------------------- fills
def make_fill(fill: Any, x: torch.Tensor, *, blur_axes: Sequence[int], sigma: float | Sequence[float] = 5.0,
              background: Any = None, seed: int | None = 0) -> tuple[torch.Tensor, str]:
    """What hidden elements are replaced with: a tensor of the shape of ``x`` (n, ...).

    Parameters
    ----------
    fill : {"zero", "mean", "blur", "noise"}, float, or array/Tensor
        ``"zero"`` (or ``0``), a constant, ``"mean"`` (the per-element mean of ``background``
        over its first axis: a dataset mean image), ``"blur"`` (a Gaussian-blurred copy of each
        input, std ``sigma`` along ``blur_axes``), ``"noise"`` (one fixed Gaussian noise pattern
        drawn from ``seed``, the same for every sample, scaled to each sample's mean and std: a
        sample's fill does not depend on the other samples of the batch), or an array: with the inputs'
        number of axes it is **per sample** (leading axis ``n``, or 1 for all), e.g. one baseline
        image per input (n, C, H, W) or one constant per input (n, 1, 1, 1); with fewer axes it is
        one sample's fill given once and broadcast to every sample (a mean image (C, H, W), a
        per-channel mean (C, 1, 1), per-column values (F,) of a table).
    Returns ``(fill tensor, description)``.
    """
    n, shape = len(x), tuple(x.shape[1:])
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, a number or an array; got {fill!r}")
        if fill == "zero":
            return torch.zeros_like(x), "zero"
        if fill == "blur":
            sig = [sigma] * len(blur_axes) if np.isscalar(sigma) else list(sigma)
            for s in sig:
                check_number(s, "sigma", low=0, low_open=True)
            return gaussian_blur(x, sigma, blur_axes), f"blur(sigma={sigma})"
        if fill == "noise":
            flat = x.detach().reshape(n, -1).to(torch.float64).cpu().numpy()
            mu = flat.mean(1)
            sd = flat.std(1) if flat.shape[1] > 1 else np.ones(n)
            # one standard-normal pattern for every sample: a sample's fill then does not depend
            # on its place in the batch (a draw per row gave sample i of a batch another noise
            # than the same sample explained alone)
            z = rng(seed).standard_normal((1, flat.shape[1]))
            noise = (mu[:, None] + sd[:, None] * z).reshape(x.shape)
            return torch.as_tensor(noise, dtype=x.dtype, device=x.device), f"noise(seed={seed})"
        if background is None:
            raise ValueError(
                "fill='mean' needs background=: a dataset (samples along the first axis) whose "
                "mean replaces hidden elements; or pass the mean itself as fill="
            )
        d = as_tensor(background, x.device, name="background", dtype=x.dtype)
        if tuple(d.shape[1:]) != shape:
            raise ValueError(f"background must have samples of shape {shape} like inputs; got "
                             f"{tuple(d.shape)}")
        return d.mean(0, keepdim=True).expand_as(x).clone(), "mean"
    if isinstance(fill, (bool, int, float, np.integer, np.floating)):
        value = check_number(fill, "fill")
        return torch.full_like(x, value), f"constant({value:g})"
    f = as_tensor(fill, x.device, name="fill", dtype=x.dtype)
    per_sample = f.ndim == x.ndim
    ok = f.ndim <= x.ndim and (not per_sample or f.shape[0] in (1, n))
    if ok:
        try:
            out = torch.broadcast_to(f, x.shape)
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"fill of shape {tuple(f.shape)} broadcasts neither to one sample {shape} (a fill "
            f"given once) nor, with a leading axis of {n} (one per sample) or 1, to the inputs "
            f"{tuple(x.shape)}"
        )
    return out.clone(), "per-sample array" if per_sample and f.shape[0] == n and n > 1 else "array"


def constant_fill(fill: Any) -> float | None:
    """The number a fill is when it is one number (zero or a constant): chunks then skip gathering
    a fill tensor per row."""
    if isinstance(fill, str):
        return 0.0 if fill == "zero" else None
    if isinstance(fill, (int, float, np.integer, np.floating)) and not isinstance(fill, bool):
        return float(fill)
    return None


def spatial_axes(sample_shape: Sequence[int]) -> list[int]:
    """The axes a blur runs along when nothing says otherwise: all but a leading channel axis of
    3+-D samples (images, volumes); every axis of 1-D and 2-D samples."""
    nd = len(sample_shape)
    return list(range(1, nd)) if nd >= 3 else list(range(nd))


def upsample(grid: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(m, *g) -> (m, *size) by (bi/tri)linear interpolation (half-pixel centres)."""
    modes = {1: "linear", 2: "bilinear", 3: "trilinear"}
    d = grid.ndim - 1
    if d not in modes:
        raise ValueError(f"masks can vary along at most 3 axes; got {d} (set the others to None)")
    return torch.nn.functional.interpolate(grid[:, None], size=tuple(size), mode=modes[d],
                                           align_corners=False)[:, 0]


def expand_mask(mask: torch.Tensor, spec: Sequence[int | None]) -> torch.Tensor:
    """A mask over the masked axes (m, *L_masked) -> (m, *[L or 1 per sample axis]) to broadcast."""
    shape = [mask.shape[0]]
    it = iter(mask.shape[1:])
    for v in spec:
        shape.append(1 if v is None else next(it))
    return mask.reshape(shape)


def checkpoints(total: int, smallest: int = 16) -> list[int]:
    """Checkpoints total, total/2, total/4, ... down to ``smallest`` (ascending, unique)."""
    cps = [total]
    while cps[-1] // 2 >= smallest:
        cps.append(cps[-1] // 2)
    return sorted(set(cps))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
