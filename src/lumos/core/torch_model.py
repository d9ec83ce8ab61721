"""The torch model adapter: input checks, layers by dotted name, and the promise to leave the
model exactly as found.

Methods for torch models run inside :func:`torch_call`, which validates the inputs, resolves the
target on the model's output, and restores the model (training flags, ``requires_grad``, hooks)
on exit, also when the method raises half-way.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from .explanation import Explanation
from .inputs import BoundModel, ForwardArgsError, Packing, Wrapper, bind, is_several, rows_of, unwrap
from .modules import get_module  # noqa: F401 (re-exported: methods import it from here)
from .targets import Target, resolve_target
from .units import ActivationModel, Neuron, SpliceModel

__all__ = [
    "ModelGuard", "torch_call", "Prepared", "as_tensor", "get_module", "layers", "model_device",
    "check_not_compiled", "gradient", "check_finite", "NonFiniteOutputError", "model_dtype",
    "frozen_parameters", "require_grad_path",
]


class NonFiniteOutputError(ValueError):
    """The model returned NaN or Inf on an evaluation a method made."""


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`NonFiniteOutputError` naming ``what`` when ``t`` holds NaN or Inf.

    Every model evaluation a method makes goes through this check (``what`` says which one:
    "the inputs", "the baselines", "integrated-gradients path points", "occluded inputs"...), so a
    NaN produced away from the input never comes back as a finite but wrong number.
    """
    if t.is_floating_point() or t.is_complex():
        # one reduction is cheap and non-finite whenever any element is; count only then
        if torch.isfinite(t.sum()):
            return
        bad = int((~torch.isfinite(t)).sum())
        if not bad:  # the sum overflowed, the elements are finite
            return
        raise NonFiniteOutputError(
            f"model returned {bad} NaN or Inf value{'s' * (bad != 1)} on {what} (of {t.numel()}); "
            "explanations need finite outputs there. Check the model on such inputs (an overflow, "
            "a log of zero, a division by a masked-out statistic)."
        )

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
    "_state_dict_hooks", "_load_state_dict_pre_hooks",
)


_STATEFUL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)

# One re-entrant lock per model. Hooks, requires_grad flags and training modes are properties of
# the model shared by every thread, so two threads explaining one model at once would see each
# other's hooks (a wrong map, silently). ModelGuard holds the model's lock for the whole call:
# concurrent calls on one model are serialised; calls on different models run in parallel.
_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises lumos calls on ``model`` across threads."""
    model = unwrap(model)
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class ModelGuard:
    """Snapshot a module's mutable state and restore it on exit.

    Restores each submodule's ``training`` flag, each parameter's ``requires_grad`` and ``.grad``,
    and removes any hook that was added while the guard was active (on any submodule). Parameter
    values are not copied (methods never write them); code that must change them temporarily
    (batch-norm folding) restores them itself. Buffers of submodules in training mode and of every
    batch/instance-norm layer are copied and restored, because a forward pass in training mode
    writes them (running statistics), also when a method switches the mode itself; other buffers
    are not written by standard modules in eval mode and are not copied.

    The guard also holds the model's lock (:func:`model_lock`): lumos calls on one model from
    several threads run one after another, never interleaved.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> "ModelGuard":
        self._lock = model_lock(self.model)
        self._lock.acquire()
        # Inside a caller's torch.inference_mode() block every tensor lumos makes would be an
        # inference tensor without autograd history: gradient methods would see a "detached"
        # model. The guarded call runs with inference mode off; the caller's mode is restored.
        self._inference = torch.inference_mode(False)
        self._inference.__enter__()
        try:
            return self._snapshot()
        except BaseException:
            self._inference.__exit__(None, None, None)
            self._lock.release()
            raise

    def _snapshot(self) -> "ModelGuard":
        hf_capturing_hooks(self.model)
        mods = list(self.model.modules())
        self._training = [(m, m.training) for m in mods]
        self._params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        # (hook dict, keys before): every hook dict of every submodule, by reference, so that
        # the exit check is a length comparison for the untouched ones (this runs on every call)
        self._hooks = [(h, tuple(h.keys()) if h else ()) for m in mods
                       for h in (m.__dict__.get(d) for d in _HOOK_DICTS) if h is not None]
        self._buffers = [(b, b.detach().clone()) for m in mods
                         if m.training or isinstance(m, _STATEFUL_NORMS)
                         for b in m.buffers(recurse=False)]
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._restore()
        finally:
            self._inference.__exit__(None, None, None)
            self._lock.release()

    def _restore(self) -> None:
        for m, flag in self._training:
            if m.training != flag:
                m.training = flag
        for p, req, grad in self._params:
            if p.requires_grad != req:
                p.requires_grad_(req)
            if p.grad is not grad:
                p.grad = grad
        with torch.no_grad():
            for b, saved in self._buffers:
                if not torch.equal(b, saved):
                    b.copy_(saved)
        for hooks, keys in self._hooks:
            if len(hooks) == len(keys) and all(k in hooks for k in keys):
                continue
            keep = set(keys)
            for k in [k for k in hooks.keys() if k not in keep]:
                del hooks[k]


def hf_capturing_hooks(model: nn.Module) -> None:
    """Install Hugging Face's output-capturing hooks now, as its first forward would.

    transformers 5 collects ``output_attentions``/``output_hidden_states`` through forward hooks
    installed lazily on the first forward, then flags the model as hooked. Installed inside a
    :class:`ModelGuard`, they would be removed on exit while the flag stays, and every later call
    of the user's would return empty attentions. The guard installs them before its snapshot,
    leaving the model as Hugging Face itself would. A no-op unless transformers is imported.
    """
    import sys

    if "transformers" not in sys.modules:
        return
    try:
        from transformers import PreTrainedModel
        from transformers.utils.output_capturing import (_CAN_RECORD_REGISTRY,
                                                         maybe_install_capturing_hooks)
    except ImportError:  # older transformers: outputs are returned, not captured by hooks
        return
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and _CAN_RECORD_REGISTRY.get(m):
            maybe_install_capturing_hooks(m)


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's first floating parameter or buffer (None if it has none)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    for t in model.buffers():
        if t.is_floating_point():
            return t.dtype
    return None


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def check_not_compiled(model: Any, method: str) -> None:
    """Methods that change backward rules on operations cannot see inside compiled code."""
    compiled = isinstance(model, torch.jit.ScriptModule) or type(model).__name__ == "OptimizedModule"
    if compiled:
        raise TypeError(
            f"model: {method} changes how gradients pass through each ReLU/linear operation, which "
            "cannot be seen inside a TorchScript or torch.compile model (it would silently return "
            "the plain gradient). Pass the original nn.Module, or use a method that needs no rules "
            "(saliency, integrated_gradients, occlusion...)."
        )


def as_tensor(inputs: Any, device: torch.device | None = None, name: str = "inputs",
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Convert ``inputs`` to a float tensor on ``device`` (a copy: the user's tensor is never touched).

    Raises a ValueError naming ``name`` for non-numeric, empty, NaN or Inf inputs.
    """
    if isinstance(inputs, torch.Tensor):
        t = inputs.detach()
    else:
        try:
            arr = np.asarray(inputs)
        except Exception as e:  # pragma: no cover - exotic objects
            raise TypeError(f"{name} must be a tensor or array; got {type(inputs).__name__}") from e
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.ndim == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch axis; got shape {tuple(t.shape)}")
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.float32
    t = t.to(device=device if device is not None else t.device, dtype=dtype).clone()
    # A sum is one fast pass and is finite whenever every element is (NaN and Inf propagate);
    # only a non-finite sum (or an overflow of huge values) needs the element-wise check, which
    # costs several times more on CPU.
    if t.is_floating_point() and not torch.isfinite(t.sum()):
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            raise ValueError(f"{name} contains {bad} NaN or Inf values; explanations need finite inputs")
    return t


def _first_conv(model: nn.Module):
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m
        if isinstance(m, (nn.Linear, nn.Embedding, nn.RNNBase, nn.MultiheadAttention)):
            return None
    return None


def check_input_shape(model: nn.Module, x: torch.Tensor, name: str = "inputs") -> None:
    """Catch the silent cases: a conv net given an unbatched image, or the wrong channel count."""
    if isinstance(model, BoundModel):
        if model.packing is not None:  # several inputs, packed: the model checks their shapes
            return
        model = model.model
    conv = _first_conv(model)
    if conv is None:
        return
    nd = next(d for cls, d in ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3)) if isinstance(conv, cls))
    want = "(batch, channels" + ", length" * (nd == 1) + ", height, width" * (nd == 2) + ", depth, height, width" * (nd == 3) + ")"
    if x.ndim != nd + 2:
        raise ValueError(
            f"{name} must have shape {want} for this model (its first layer is a {type(conv).__name__}); "
            f"got shape {tuple(x.shape)}. A single image needs a batch axis: inputs[None]."
        )
    if x.shape[1] != conv.in_channels:
        raise ValueError(
            f"{name} has {x.shape[1]} channels but the model's first layer expects {conv.in_channels}; "
            f"got shape {tuple(x.shape)}"
        )


def forward(model: nn.Module, x: torch.Tensor, name: str = "inputs", rows=None) -> torch.Tensor:
    """Call the model, turning a deep torch error on bad input into one that names ``name``.

    ``rows[k]`` is the sample that row ``k`` of ``x`` belongs to: a model with per-sample forward
    arguments (:mod:`lumos.core.inputs`) gives each row its sample's arguments.
    """
    try:
        with rows_of(model, rows):
            out = model(x)
    except ForwardArgsError:
        raise
    except (RuntimeError, ValueError, IndexError) as e:
        raise ValueError(
            f"the model could not be evaluated on {name} of shape {tuple(x.shape)}: {e}"
        ) from e
    if not isinstance(out, torch.Tensor):
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        else:
            raise TypeError(f"model must return a tensor; got {type(out).__name__}")
    if out.ndim == 0 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"model returned shape {tuple(out.shape)} for {x.shape[0]} samples; the first axis of "
            "the output must be the batch"
        )
    return out


def gradient(model: nn.Module, x: torch.Tensor, target: Target, rows=None,
             create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the selected target scalar of each row with respect to ``x``.

    Returns ``(grad, scalars)``, both detached; ``grad`` has the shape of ``x``.
    Raises ValueError when the output does not depend on the input.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = forward(model, x, rows=rows)
        s = target.select(out, rows)
        require_grad_path(s)
        (g,) = torch.autograd.grad(s.sum(), x, allow_unused=True, create_graph=create_graph)
    if g is None:
        require_grad_path(None)
    return (g if create_graph else g.detach()), s.detach()


def activation(model: nn.Module, x: torch.Tensor, at: Any, layer_side: str = "output",
               rows=None) -> torch.Tensor:
    """The activation of layer ``at`` (its output, or its first input) at ``x``, detached."""
    with torch.no_grad():
        return forward(ActivationModel(model, at, layer_side), x, rows=rows).detach()


def through(model: nn.Module, at: Any, inputs: Any, layer_side: str = "output") -> torch.Tensor:
    """Inputs (e.g. baselines in input space) mapped to layer ``at``'s activation.

    With ``at=`` a method's baselines are activations; ``baselines=through(model, at, x0)`` gives
    Captum's LayerIntegratedGradients convention (input baselines mapped through the layer).
    """
    with ModelGuard(model):
        x = as_tensor(inputs, model_device(model), name="inputs", dtype=model_dtype(model))
        return activation(model, x, at, layer_side)


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple | None
    n_params: int

    def __str__(self) -> str:
        return f"{self.name:<28} {self.kind:<20} {str(self.output_shape):<22} {self.n_params}"


class LayerTable(list):
    def __str__(self) -> str:
        head = f"{'layer':<28} {'type':<20} {'output shape':<22} params"
        return "\n".join([head, "-" * len(head)] + [str(r) for r in self])


def layers(model: nn.Module, inputs: Any = None) -> LayerTable:
    """List the model's layers by dotted name, with their output shapes when ``inputs`` is given.

    Shapes are recorded with one forward pass under ``torch.no_grad``; the model is left as found.
    """
    shapes: dict[str, tuple] = {}
    if inputs is not None:
        with ModelGuard(model):
            x = as_tensor(inputs, model_device(model), dtype=model_dtype(model))
            def record(name):
                def hook(mod, inp, out):
                    shapes.setdefault(name, tuple(out.shape) if isinstance(out, torch.Tensor) else None)
                return hook

            for name, m in model.named_modules():
                if name:
                    m.register_forward_hook(record(name))
            with torch.no_grad():
                forward(model, x)
    return LayerTable(
        LayerInfo(name, type(m).__name__, shapes.get(name),
                  sum(p.numel() for p in m.parameters(recurse=False)))
        for name, m in model.named_modules() if name
    )


@dataclass
class Prepared:
    """What every torch method starts from: a checked input, the output there, the target."""

    model: nn.Module
    x: torch.Tensor            # (n, ...) float, on the model's device, detached copy
    output: torch.Tensor       # model output at x, detached (None until resolve() when
    target: Target             # torch_call(..., clean_forward=False))
    scalar: torch.Tensor       # (n,) explained scalar at x
    meta: dict = field(default_factory=dict)
    target_spec: Any = None    # the user's target, kept for resolve()
    feature_names: list[str] | None = None  # a DataFrame's columns
    packing: Packing | None = None  # several inputs packed into the columns of x

    @property
    def n(self) -> int:
        return len(self.x)

    def resolve(self, output: torch.Tensor, target: Target | None = None) -> Target:
        """Set ``output``, ``target`` and ``scalar`` from the model output at ``x``.

        For methods run under ``torch_call(..., clean_forward=False)`` that take the output from
        their own forward pass (with gradients) instead of paying for a separate clean pass.
        ``target``: the target already resolved (and the output checked) on this very output.
        """
        output = output.detach()
        if target is None:
            check_finite(output, "the inputs")
        tgt = resolve_target(self.target_spec, output) if target is None else target
        self.output, self.target, self.scalar = output, tgt, tgt.select(output).detach()
        self.meta["target"] = tgt.description
        return tgt

    def pack_param(self, value: Any, name: str) -> Any:
        """A per-input parameter (baselines, background, fills) in the form of ``x``.

        With several inputs a tuple/dict with one entry per input is packed like the inputs
        (strings, scalars and ``None`` pass through; see
        :meth:`~lumos.core.inputs.Packing.pack_param`). With one input (or with ``at=``, where
        the parameter is an activation) a tuple/dict of several tensors is refused with a clear
        message instead of being read as a batch.
        """
        if self.packing is not None:
            return self.packing.pack_param(value, name, self.x.dtype, self.x.device)
        if isinstance(value, Mapping) or (
                isinstance(value, (tuple, list)) and value
                and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in value)
                and len({tuple(np.shape(v)) for v in value}) > 1):
            where = (f"attributions go to layer {self.meta['at']!r}, so {name} are activations of "
                     "that layer (one tensor)" if "at" in self.meta else "the model takes one input")
            raise ValueError(f"{name}: one value per input was given, but {where}; got "
                             f"{type(value).__name__} of {len(value)} entries")
        return value

    def explanation(self, values, method: str, params: dict, meta: dict | None = None,
                    baseline_output=None, sample_meta: dict | None = None,
                    inputs=None) -> Explanation:
        """Build the :class:`Explanation`; ``sample_meta`` holds per-sample arrays."""
        m = dict(self.meta)
        m.update(meta or {})
        m.update(sample_meta or {})
        inputs = self.x if inputs is None else inputs
        if self.packing is not None:  # one array per input, as the user gave them
            values = self.packing.unpack_values(values)
            inputs = self.packing.unpack_values(inputs, cast=True)
        return Explanation(
            values=values, inputs=inputs,
            target=self.target.indices, output=self.scalar,
            baseline_output=baseline_output, method=method, params=_clean_params(params), meta=m,
            sample_keys=tuple((sample_meta or {}).keys()),
            feature_names=self.feature_names if self.feature_names is not None
            and self.packing is None and np.shape(values)[-1:] == (len(self.feature_names),) else None,
        )


def _clean_params(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, torch.Tensor):
            out[k] = f"<tensor {tuple(v.shape)}>" if v.numel() > 16 else v.tolist()
        elif callable(v) and not isinstance(v, type):
            out[k] = getattr(v, "__name__", repr(v))
        else:
            out[k] = v
    return out


_RANDOM_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def warn_if_training(model: nn.Module, stacklevel: int = 3) -> None:
    """Warn when dropout or batch norm in training mode would make an explanation random."""
    if any(m.training and isinstance(m, _RANDOM_IN_TRAINING) for m in model.modules()):
        warnings.warn(
            "model is in training mode: dropout and batch-norm statistics make the explanation "
            "random and batch-dependent. Call model.eval() first (lumos leaves the mode as found).",
            stacklevel=stacklevel,
        )


def feature_names_of(inputs: Any) -> list[str] | None:
    """Column names of a DataFrame (kept as the Explanation's feature names), else None."""
    cols = getattr(inputs, "columns", None)
    if cols is not None and hasattr(inputs, "iloc"):
        return [str(c) for c in cols]
    return None


@contextlib.contextmanager
def torch_call(model: Any, inputs: Any, target: Any, *, method: str,
               rules: bool = False, clean_forward: bool = True, forward_args: Any = None,
               several: bool = False, at: Any = None, layer_side: str = "output",
               keep_integer: bool = False) -> Iterator[Prepared]:
    """Validate, resolve the target, and guard the model for the duration of a method.

    The inputs (a tensor, an array of any numeric dtype, or a DataFrame) are copied and cast to the
    model's floating dtype (float64 arrays for a float32 model work); a DataFrame's column names
    become the Explanation's ``feature_names``. The call runs with ``torch.inference_mode``
    switched off, so gradient methods also work when called inside an inference-mode block, and
    under the model's lock (see :class:`ModelGuard`).

    Parameters
    ----------
    rules : bool
        The method changes backward rules on operations; compiled models are refused.
    clean_forward : bool, default True
        Evaluate the model once at the inputs (no gradients) to get the output and resolve the
        target. ``False`` skips that pass for methods whose only work is one forward+backward at
        the inputs (saliency): they call :meth:`Prepared.resolve` with their own output, and
        ``output``, ``target`` and ``scalar`` are ``None`` until then.
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (:mod:`lumos.core.inputs`). The method
        then works on ``Prepared.model``, a :class:`~lumos.core.inputs.BoundModel`, and must pass
        ``rows=`` to :func:`forward` / :func:`gradient` for batches that are not the samples.
    several : bool, default False
        The method supports several explained inputs (a tuple or dict of tensors): they are
        packed into the columns of ``Prepared.x`` and the Explanation holds one array per input.
        Methods that need the spatial layout of one input leave it False: several inputs are
        then refused with a clear error.
    at, layer_side : str (a dotted layer name), {"output", "input"}
        Attribute to that layer's output (input) activation instead of the inputs
        (:mod:`lumos.core.units`): ``Prepared.x`` is then the activation and ``Prepared.model``
        the map from it to the output. A :class:`~lumos.core.units.Neuron` target explains a
        unit inside the network instead of an output.
    keep_integer : bool, default False
        For methods that replace input values and never differentiate them (perturbation): an
        integer input (token ids) reaches the model in its own dtype; ``Prepared.x`` carries it as
        floats. Gradient methods leave it False (integer inputs are cast to the model's dtype).
    """
    if layer_side not in ("output", "input"):
        raise ValueError(f"layer_side must be 'output' or 'input'; got {layer_side!r}")
    if is_several(inputs) and not several:
        raise ValueError(
            f"inputs: {method} explains one input tensor (it needs the layout of an image or a "
            "table); this model takes several inputs. Use a method that supports several inputs "
            "(saliency, gradient_x_input, integrated_gradients, smoothgrad, ...) or explain one "
            "input with the others passed as forward_args=.")
    if not isinstance(model, nn.Module):
        if callable(model):
            raise TypeError(
                f"model: {method} needs a torch.nn.Module (it uses gradients or layers); got "
                f"{type(model).__name__}. For a black-box predict function use a model-agnostic "
                "method (occlusion, lime, kernel_shap...)."
            )
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if rules:
        check_not_compiled(model, method)
    warn_if_training(model, stacklevel=4)
    names = feature_names_of(inputs)
    with ModelGuard(model):  # also switches inference mode off for the call
        if isinstance(model, Wrapper):  # a method running another on a batch it built
            model.check_batch(len(inputs) if hasattr(inputs, "__len__") else -1)
        # With ``at=`` the gradient is taken at a layer, never at the inputs: integer inputs (token
        # ids into an embedding) must reach the model as integers.
        model, inputs, packing = bind(model, inputs, forward_args, dtype=model_dtype(model),
                                      device=model_device(model),
                                      keep_integer=keep_integer or at is not None)
        x = as_tensor(inputs, model_device(model), dtype=model_dtype(model))
        if not x.is_floating_point():  # pragma: no cover - as_tensor casts ints to float
            raise TypeError("inputs must be floating point for gradient methods")
        check_input_shape(model, x)
        meta: dict = {}
        if isinstance(target, Neuron):  # explain a unit: the model ends at its layer
            model = ActivationModel(model, target.at, target.layer_side)
            with torch.no_grad():
                shape = tuple(forward(model, x[:1], rows=[0]).shape)
            meta["neuron"] = repr(target)
            target = target.target(shape)
        if at is not None:  # attribute to a layer: the model starts at its activation
            act = activation(model, x, at, layer_side)
            model = SpliceModel(model, at, x, layer_side)
            meta.update(at=model.name, layer_side=layer_side)
            x, packing, names = act, None, None
        if not clean_forward:
            yield Prepared(model, x, None, None, None, meta=meta, target_spec=target,
                           feature_names=names, packing=packing)
            return
        with torch.no_grad():
            out = forward(model, x)
        check_finite(out, "the inputs")
        tgt = resolve_target(target, out)
        with torch.no_grad():
            scalar = tgt.select(out)
        meta["target"] = tgt.description
        yield Prepared(model, x, out, tgt, scalar.detach(), meta=meta,
                       target_spec=target, feature_names=names, packing=packing)


class frozen_parameters:
    """Switch ``requires_grad`` off on every parameter of ``model`` (at construction).

    Methods that need gradients only with respect to inputs (or activations, or a mask) freeze the
    parameters: no graph is kept for the weights, and ``requires_grad`` then marks exactly the
    tensors that depend on what is explained (the rules engine relies on this; a weight computed
    by a parametrisation is a constant too). Used as a context manager, the flags are restored
    on exit; called plainly inside a :class:`ModelGuard` (every torch method runs in one), the
    guard restores them when the method ends.

    >>> with frozen_parameters(model):
    ...     out = model(x.requires_grad_())   # out depends on x only
    """

    def __init__(self, model: nn.Module):
        self._flags = [(prm, prm.requires_grad) for prm in model.parameters()]
        for prm, _ in self._flags:
            prm.requires_grad_(False)

    def __enter__(self) -> "frozen_parameters":
        return self

    def __exit__(self, *exc) -> None:
        for prm, flag in self._flags:
            if prm.requires_grad != flag:
                prm.requires_grad_(flag)


def require_grad_path(scalar: Any, what: str = "the input") -> None:
    """Raise a clear ValueError when the explained ``scalar`` has no gradient path back to ``what``.

    A model that ignores its input, detaches it or takes an ``argmax`` on the way would otherwise
    give a deep autograd traceback or an all-zero map.

    Parameters
    ----------
    scalar : Tensor or None
        The explained scalars (or the output) computed from a tensor that requires gradients; or
        ``None``, what ``torch.autograd.grad(..., allow_unused=True)`` returns for a tensor the
        result does not use (``if g is None: require_grad_path(None, what)``).
    what : str, default "the input"
        What the attribution is taken with respect to ("the input", "layer 'fc1'"), named in the
        message.
    """
    if scalar is None or (isinstance(scalar, torch.Tensor) and not scalar.requires_grad):
        raise ValueError(
            f"model: its output does not depend on {what} (no gradient path from {what} to the "
            "target: unused or detached, or an argmax inside the model); check that the model "
            "uses it and is not detached"
        )
