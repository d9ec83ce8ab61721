"""Shared machinery of the class-activation maps: which layer, its activation and gradient, the
upsampled map and the :class:`~lumos.Explanation`.

A CAM method only supplies its mathematics: a function of the layer's activation ``A`` (and, for
the gradient methods, the gradient ``G`` of the target scalar with respect to ``A``) that returns
the map at the layer's resolution. Everything else lives here:

- The layer: ``at=`` names it (a dotted module name or the module itself); when omitted, one
  forward pass of the first sample with hooks on every module records output shapes, and the last
  module (in execution order) whose output is spatial, ``(batch, channels, *spatial)`` with the
  input's number of spatial axes and more than one position, is taken. Where a container and its
  last child return the same tensor, the innermost module is named. Modules that run more than
  once in one forward pass are never chosen (their activation would be ambiguous).
- Hooks: one forward hook on the chosen module, removed in ``finally``; :class:`ModelGuard`
  (through :func:`torch_call`) restores the model also when a method raises.
- Gradients: the hook replaces the layer's output by a detached leaf ``A`` (and hands a copy
  downstream, so in-place operations after the layer cannot touch it), and
  ``torch.autograd.grad(target.sum(), A)`` gives the gradient. Nothing is retained; the backward
  pass stops at the layer and computes no parameter gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...core.execution import check_batch_size, chunks
from ...core.inputs import unwrap
from ...core.targets import resolve_target
from ...core.torch_model import Prepared, check_finite, forward, frozen_parameters, get_module
from ..gradient import row_bytes, slice_target

__all__ = [
    "Layer", "find_spatial_layers", "resolve_layer", "upsample", "capture", "activation_and_gradient",
    "gradient_cam", "finish", "slice_target", "Layout", "spatial_dims", "weighted_sum", "FAMILY",
    "row_bytes",
]

FAMILY = "cam"
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass
class Layer:
    """The layer a CAM is read at."""

    name: str
    module: nn.Module
    shape: tuple | None  # output shape for one sample, (channels, *spatial); None until checked
    auto: bool           # found automatically (at=None)
    method: str = ""

    def meta(self) -> dict:
        return {"layer": self.name, "layer_auto": self.auto, "layer_shape": list(self.shape)}


def spatial_dims(x: torch.Tensor) -> int:
    """Number of spatial axes of the input batch ``(batch, channels, *spatial)``."""
    nd = x.ndim - 2
    if nd not in _INTERP:
        raise ValueError(
            f"inputs must have shape (batch, channels, length), (batch, channels, height, width) or "
            f"(batch, channels, depth, height, width) for class-activation maps; got shape "
            f"{tuple(x.shape)}"
        )
    return nd


def _is_spatial(out: Any, nd: int) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == nd + 2 and math.prod(out.shape[2:]) > 1


@dataclass
class _Call:
    name: str
    module: nn.Module
    calls: int
    done: int            # completion order of the last call
    out: Any             # the output of the last call (first sample only; no graph)


def _record_calls(model: nn.Module, x1: torch.Tensor, row: int = 0) -> list[_Call]:
    """One forward pass of ``x1`` with a hook on every module; calls in completion order.

    ``model`` may be lumos's view of the user's model (bound forward arguments, a Neuron
    target's :class:`~lumos.core.units.ActivationModel`): the modules are the user's, named as
    the user names them, and ``x1`` is sample ``row`` (for its per-sample forward arguments).
    """
    seen: dict[str, _Call] = {}
    counter = [0]

    def make(name, mod):
        def hook(_m, _inp, out):
            counter[0] += 1
            rec = seen.get(name)
            if rec is None:
                seen[name] = _Call(name, mod, 1, counter[0], out)
            else:
                rec.calls += 1
                rec.done, rec.out = counter[0], out
        return hook

    handles = [m.register_forward_hook(make(n, m)) for n, m in unwrap(model).named_modules() if n]
    try:
        with torch.no_grad():
            forward(model, x1, rows=[row])
    finally:
        for h in handles:
            h.remove()
    return sorted(seen.values(), key=lambda c: c.done)


def find_spatial_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Dotted names of the layers with a spatial output for ``inputs``, in execution order.

    Only layers that run once per forward pass are listed (those are the ones a CAM can use).
    """
    x = torch.as_tensor(inputs)
    nd = spatial_dims(x)
    return [c.name for c in _record_calls(model, x[:1]) if c.calls == 1 and _is_spatial(c.out, nd)]


def _shape_str(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return str(("batch",) + tuple(out.shape[1:]))
    return f"a {type(out).__name__}, not a tensor"


def resolve_layer(model: nn.Module, x: torch.Tensor, at: Any, method: str,
                  probe: bool = True, row: int = 0) -> Layer:
    """The layer named by ``at`` (checked), or the last spatial layer when ``at`` is None.

    Finding or checking the layer takes one forward pass of the first sample with a hook on every
    module. With ``probe=False`` and ``at`` given that pass is skipped: the layer is checked on
    the method's own first pass instead (:func:`_validate`), which re-runs this function to
    explain a failure. ``row``: the sample that ``x[0]`` is (for per-sample forward arguments).
    """
    nd = spatial_dims(x)
    want = "(batch, channels, " + ("length" if nd == 1 else "height, width" if nd == 2
                                   else "depth, height, width") + ")"
    if at is not None and not isinstance(at, (str, nn.Module)):
        raise TypeError(f"at must be a dotted layer name (str), a submodule or None; got "
                        f"{type(at).__name__}")
    user = unwrap(model)  # layer names are the user's, also through lumos's wrappers
    module = None if at is None else get_module(user, at)
    if module is not None and not probe:
        name = next((n for n, m in user.named_modules() if m is module), str(at))
        return Layer(name, module, None, False, method)
    calls = _record_calls(model, x[:1], row)
    spatial = [c for c in calls if c.calls == 1 and _is_spatial(c.out, nd)]
    listing = ", ".join(repr(c.name) for c in spatial[-6:]) or "none"
    if module is None:
        if not spatial:
            raise ValueError(
                f"at: no layer of the model has a spatial output {want} for inputs of shape "
                f"{tuple(x.shape)}; {method} needs a convolutional layer. lumos.layers(model, "
                "inputs) lists the layers with their output shapes."
            )
        last = spatial[-1]
        # A container returns its last child's tensor: name the innermost module that made it.
        same = [c for c in spatial if c.out is last.out]
        chosen = same[0]
        return Layer(chosen.name, chosen.module, tuple(chosen.out.shape[1:]), True, method)
    name = next((n for n, m in user.named_modules() if m is module), str(at))
    rec = next((c for c in calls if c.module is module), None)
    if rec is None:
        raise ValueError(f"at: layer {name!r} does not run when the model is called on inputs of "
                         f"shape {tuple(x.shape)}; layers with a spatial output: {listing}")
    if rec.calls > 1:
        raise ValueError(
            f"at: layer {name!r} runs {rec.calls} times in one forward pass (one module reused at "
            "several places), so its activation is ambiguous; choose a layer that runs once "
            f"(layers with a spatial output: {listing})"
        )
    if not _is_spatial(rec.out, nd):
        raise ValueError(
            f"at: layer {name!r} has output shape {_shape_str(rec.out)}, which is not spatial; "
            f"{method} needs a layer whose output has shape {want} with more than one position. "
            f"Layers with a spatial output: {listing} (the last one is the usual choice, and is "
            "taken when at= is omitted)"
        )
    return Layer(name, module, tuple(rec.out.shape[1:]), False, method)


def upsample(layer_map: torch.Tensor, size) -> torch.Tensor:
    """(Bi/tri)linear interpolation of ``(batch, 1, *layer_spatial)`` maps to ``size``.

    ``align_corners=False``: pixel centres are aligned, as for image resizing.
    """
    size = tuple(int(s) for s in size)
    if tuple(layer_map.shape[2:]) == size:
        return layer_map.clone()
    return F.interpolate(layer_map, size=size, mode=_INTERP[len(size)], align_corners=False)


class _Hook:
    """Forward hook on the chosen layer that captures its output.

    With ``grad=True`` the output is swapped for a detached leaf that requires grad, so the
    gradient of the target with respect to the activation is one ``autograd.grad`` call that
    stops at the layer; a copy goes downstream so in-place operations there (ReLU(inplace=True))
    cannot modify the leaf. With ``grad=False`` a copy is kept for the same reason.
    """

    def __init__(self, grad: bool):
        self.grad = grad
        self.act: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, _m, _inp, out):
        self.calls += 1
        if not isinstance(out, torch.Tensor):
            return None
        if self.grad:
            self.act = out.detach().requires_grad_(True)
            return self.act.clone()
        self.act = out.detach().clone()
        return None


def _validate(hook: _Hook, layer: Layer, model: nn.Module, x: torch.Tensor,
              what: str = "the inputs", rows=None) -> None:
    """The layer ran once and gave a spatial, finite output; otherwise the error that explains why.

    Non-finite activations (an input so large that the layer overflows) are reported as such,
    before any check of the network's structure could blame the architecture.
    """
    if hook.calls == 1 and hook.act is not None and _is_spatial(hook.act, x.ndim - 2):
        if layer.shape is None:
            layer.shape = tuple(hook.act.shape[1:])
        check_finite(hook.act, f"{what}, at layer {layer.name!r} (its activations overflow)")
        return
    row = 0 if rows is None else int(torch.as_tensor(rows).reshape(-1)[0])
    resolve_layer(model, x, layer.module, layer.method, row=row)  # raises the detailed error
    raise ValueError(
        f"at: layer {layer.name!r} ran {hook.calls} times on this batch (once was expected); "
        "the model's control flow depends on the input, choose another layer"
    )


class Layout:
    """Runs model passes in channels-last layout where that is faster, falling back once.

    Conv nets on CPU run about twice as fast on channels-last float32 images (oneDNN's NHWC
    kernels); the numbers agree to float32 rounding. Every pass of one call uses the same layout
    (so results stay independent of ``batch_size``); a model that cannot take channels-last inputs
    (a ``.view`` on its activations) is run as it is, from the failing pass on.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.channels_last = (x.ndim == 4 and x.device.type == "cpu" and x.dtype == torch.float32
                              and any(isinstance(m, nn.Conv2d) for m in model.modules()))

    def run(self, fn: Callable, xb: torch.Tensor, *args, **kwargs):
        if self.channels_last:
            try:
                return fn(xb.contiguous(memory_format=torch.channels_last), *args, **kwargs)
            except ValueError as err:
                if not isinstance(err.__cause__, RuntimeError):  # not the model failing
                    raise
                self.channels_last = False
        return fn(xb.contiguous(), *args, **kwargs)

    @property
    def name(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"


def capture(model: nn.Module, x: torch.Tensor, layer: Layer,
            extra_hooks: dict[nn.Module, Callable] | None = None,
            what: str = "the inputs", rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass without gradients: ``(output, activation)`` at ``layer``, both checked
    finite (``what`` names the evaluation in the error). ``rows[k]``: the sample of row ``k``
    (for per-sample forward arguments; ``None``: the rows are the samples)."""
    hook = _Hook(grad=False)
    handles = [layer.module.register_forward_hook(hook)]
    for mod, fn in (extra_hooks or {}).items():
        handles.append(mod.register_forward_hook(fn))
    try:
        with torch.no_grad():
            out = forward(model, x, rows=rows)
    finally:
        for h in handles:
            h.remove()
    _validate(hook, layer, model, x, what, rows)
    check_finite(out, what)
    return out, hook.act


def activation_and_gradient(model: nn.Module, x: torch.Tensor, select: Callable,
                            layer: Layer, rows=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activation ``A`` at ``layer``, the gradient of each row's target scalar w.r.t. ``A``, and
    the model output (detached), from one forward and one backward pass.

    ``select(output) -> (rows,)`` picks the target scalar of each row; ``rows[k]`` is the sample
    of row ``k`` (per-sample forward arguments; ``None``: the rows are the samples). The model's parameters
    must not require grad (the caller switches that off under ModelGuard) so that no graph is
    built below the layer.
    """
    hook = _Hook(grad=True)
    handle = layer.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = forward(model, x, rows=rows)
            _validate(hook, layer, model, x, rows=rows)
            check_finite(out.detach(), "the inputs")
            s = select(out)
            if not (isinstance(s, torch.Tensor) and s.requires_grad):
                raise ValueError(
                    f"target: the explained scalar does not depend on layer {layer.name!r} (no "
                    "gradient path from the layer to the target); choose a layer the output uses"
                )
            (g,) = torch.autograd.grad(s.sum(), hook.act, allow_unused=True)
    finally:
        handle.remove()
    if g is None:
        raise ValueError(f"target: the explained scalar does not depend on layer {layer.name!r}")
    check_finite(g, f"the inputs (the gradient of the target at layer {layer.name!r})")
    return hook.act.detach(), g, out.detach()


def gradient_cam(p: Prepared, *, method: str, at: Any, batch_size: int | None,
                 progress: bool | None, combine: Callable, params: dict,
                 meta: dict | None = None):
    """Run a gradient-based CAM over the batch and build the :class:`Explanation`.

    ``combine(A, G) -> (layer_map, channel_weights or None)`` with ``A``, ``G`` of shape
    ``(m, channels, *spatial)`` returns the map ``(m, 1, *spatial)`` (signed, unscaled) and
    optionally the weights ``(m, channels)``.

    Under ``torch_call(..., clean_forward=False)`` (``p.target`` is None) the target is resolved
    on each chunk's own output and ``p.resolve`` gets the whole output at the end: one forward
    and one backward pass (stopping at the layer) per chunk, nothing more.
    """
    layer = resolve_layer(p.model, p.x, at, method, probe=False)
    frozen_parameters(p.model)  # only d(target)/d(activation); the guard restores the flags
    layout = Layout(p.model, p.x)
    fused = p.target is None
    maps, weights, outs = [], [], []
    bs = check_batch_size(batch_size, row_bytes=row_bytes(p.x))
    for sl in chunks(p.n, bs, desc=method, progress=progress):
        rows = torch.arange(sl.start, sl.stop)
        if fused:
            spec = slice_target(p.target_spec, sl, p.n)

            def select(out, spec=spec):
                return resolve_target(spec, out.detach()).select(out)
        else:
            def select(out, rows=rows):
                return p.target.select(out, rows)
        a, g, out = layout.run(
            lambda xb, sel=select: activation_and_gradient(p.model, xb, sel, layer, rows), p.x[sl])
        outs.append(out)
        m, w = combine(a, g)
        maps.append(m)
        if w is not None:
            weights.append(w)
    if fused:
        p.resolve(torch.cat(outs))
    layer_map = torch.cat(maps)
    return finish(p, layer, layer_map, method, params, {"memory_format": layout.name, **(meta or {})},
                  {"channel_weights": torch.cat(weights)} if weights else None)


def finish(p: Prepared, layer: Layer, layer_map: torch.Tensor, method: str, params: dict,
           meta: dict | None = None, sample_meta: dict | None = None):
    """Upsample the layer map to the input and wrap everything in an :class:`Explanation`."""
    values = upsample(layer_map, p.x.shape[2:])
    m = layer.meta()
    m["upsampling"] = _INTERP[p.x.ndim - 2] + " (align_corners=False)"
    m.update(meta or {})
    sm = {"layer_map": layer_map}
    sm.update(sample_meta or {})
    # params record what was asked for: at=None when the layer was found automatically.
    params = {"at": None if layer.auto else layer.name, **params}
    return p.explanation(values, method, params, meta=m, sample_meta=sm)


def weighted_sum(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[:, k] * a[:, k]`` as a ``(m, 1, *spatial)`` map."""
    w = weights.reshape(weights.shape + (1,) * (a.ndim - 2))
    return (w * a).sum(1, keepdim=True)
