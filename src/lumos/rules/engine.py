"""The rules engine: change how gradients pass through *operations*, not modules.

Guided backprop, DeconvNet, LRP and DeepLIFT all keep the forward pass and change the backward
pass of some operations (ReLU, linear, convolution, pooling, addition...). Hooking modules (what
peers do) misses ``F.relu``, ``torch.relu``, ``x.relu()``, ``x + skip``, a module called twice and
any layer outside a fixed list. Here a :class:`torch.overrides.TorchFunctionMode` sees every torch
call made during the forward pass, classifies it (:data:`KINDS`), and lets a :class:`Composite`
pick a :class:`Rule` for it; the rule computes the same forward value through a custom
``autograd.Function`` whose backward is the rule. While a rule runs, the mode is off, so the
``torch.relu`` inside ``F.relu`` (inside ``nn.ReLU``) is transformed exactly once.

>>> from lumos import rules
>>> with rules.apply(model, rules.GUIDED) as session:
...     out = model(x)                 # only the forward pass inside the block
>>> grad = torch.autograd.grad(out[:, c].sum(), x)[0]

In-place operations (``relu_``, ``+=``, ``ReLU(inplace=True)``) are executed out of place under a
rule, because rules keep the tensors their backward needs; the returned value is the same. When
this happened, the methods compare the output with a plain forward pass and raise if a discarded
in-place result changed it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.execution import check_batch_size, chunks
from ..core.inputs import unwrap
from ..core.layout import layout_for, run_in_layout
from ..core.targets import resolve_target
from ..core.torch_model import (
    NonFiniteOutputError, Prepared, check_finite, check_not_compiled, forward, frozen_parameters,
    require_grad_path, torch_call,
)

__all__ = [
    "KINDS", "OpCall", "Rule", "Composite", "Session", "apply", "UnsupportedOperationError",
    "classify", "func_name", "propagate", "check_visible", "depends_on_input",
    "check_attributions", "rules_call", "target_on_batch", "grad_path_name",
]


class UnsupportedOperationError(TypeError):
    """An operation on the path from input to output that the active rules cannot handle."""


class RuleParameterError(ValueError):
    """A rule's parameter does not fit the operation it meets (e.g. zB bounds)."""


def _forward(model, x, name="inputs", rows=None):
    """The core forward call, without hiding the errors rules raise on purpose."""
    try:
        return forward(model, x, name=name, rows=rows)
    except ValueError as e:
        if isinstance(e.__cause__, RuleParameterError):
            raise e.__cause__ from None
        raise


# --------------------------------------------------------------------------- classification
# Each torch callable the mode may see is mapped to a kind. Several callables share a kind
# (F.relu, torch.relu, Tensor.relu, relu_ ...); the rules are written per kind.
_NAMES: dict[str, tuple[str, ...]] = {
    "relu": ("relu", "relu_"),
    "clamp": ("clamp", "clamp_", "clamp_min", "clamp_min_", "clip", "clip_"),
    "activation": (
        "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu", "mish", "elu", "elu_", "selu",
        "selu_", "celu", "celu_", "leaky_relu", "leaky_relu_", "softplus", "hardtanh", "hardtanh_",
        "relu6", "hardsigmoid", "hardswish", "logsigmoid", "softsign", "tanhshrink", "threshold",
        "threshold_", "rrelu", "prelu",
    ),
    "linear": ("linear",),
    "conv": ("conv1d", "conv2d", "conv3d"),
    "conv_transpose": ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    "matmul": ("matmul", "mm", "bmm", "__matmul__", "__rmatmul__"),
    "batch_norm": ("batch_norm",),
    "avg_pool": ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                 "adaptive_avg_pool2d", "adaptive_avg_pool3d"),
    "sum": ("sum", "mean"),
    "max_pool": ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
                 "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool1d_with_indices",
                 "max_pool2d_with_indices", "max_pool3d_with_indices",
                 "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
                 "adaptive_max_pool3d_with_indices"),
    "add": ("add", "add_", "__add__", "__radd__", "__iadd__"),
    "sub": ("sub", "sub_", "subtract", "__sub__", "__rsub__", "rsub", "__isub__"),
    "mul": ("mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__"),
    "div": ("div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__", "__div__"),
    "neg": ("neg", "neg_", "negative", "__neg__"),
    "softmax": ("softmax", "log_softmax", "softmin"),
    "norm": ("layer_norm", "group_norm", "instance_norm", "local_response_norm", "rms_norm"),
    # Normalisation statistics and products of several tensors: only composites with a rule for
    # them (lumos.rules.transformer) accept them; strict composites refuse them by name.
    "stat": ("var", "std", "rsqrt", "rsqrt_", "sqrt", "sqrt_", "pow", "pow_", "__pow__",
             "square", "square_", "norm"),
    "einsum": ("einsum",),
    # bias + x @ W (Hugging Face's Conv1D in GPT-2): a linear layer written as a matrix product
    "addmm": ("addmm",),
    # Pure data movement: every output element is one input element (or a sum of copies), so the
    # plain gradient moves relevance and multipliers correctly for every method.
    "struct": (
        "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose",
        "swapaxes", "swapdims", "movedim", "moveaxis", "t", "squeeze", "unsqueeze", "contiguous",
        "clone", "expand", "expand_as", "broadcast_to", "cat", "concat", "concatenate", "stack",
        "hstack", "vstack", "split", "chunk", "unbind", "narrow", "select", "__getitem__",
        "index_select", "gather", "take_along_dim", "to", "float", "double", "half", "bfloat16",
        "type", "type_as", "detach", "flip", "roll", "repeat", "tile", "pad", "dropout",
        "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
        "identity", "squeeze_", "unsqueeze_", "t_", "transpose_", "tensor_split",
        "unsafe_split", "split_with_sizes", "expand_copy", "ravel", "atleast_1d", "atleast_2d",
        "atleast_3d", "cpu", "cuda",
    ),
}

KINDS: dict[Any, str] = {}
_RULE_ONLY = ("stat", "einsum", "addmm")  # kinds that a strict composite must give a rule


def _build_kinds() -> None:
    spaces = [torch, torch.Tensor, F, torch._C._nn, torch._C._VariableFunctions]
    for kind, names in _NAMES.items():
        for name in names:
            for sp in spaces:
                fn = getattr(sp, name, None)
                if fn is None or not callable(fn) or isinstance(fn, type):
                    continue
                try:
                    KINDS.setdefault(fn, kind)
                except TypeError:  # pragma: no cover - unhashable callables
                    pass


_build_kinds()

_FUNC_NAMES: dict[Any, str] = {}


def func_name(func: Any) -> str:
    """A readable name for a torch callable: ``torch.relu``, ``Tensor.add``, ``F.conv2d``."""
    if func in _FUNC_NAMES:
        return _FUNC_NAMES[func]
    name = getattr(func, "__name__", None) or repr(func)
    qual = getattr(func, "__qualname__", "") or ""
    mod = getattr(func, "__module__", None) or ""
    if qual.startswith(("TensorBase.", "Tensor.")):
        out = "Tensor." + name
    elif mod == "torch.nn.functional" or "boolean_dispatch" in qual:
        out = "F." + name if name != "fn" else "F.(max_pool)"
    elif mod.startswith("torch._C._nn"):
        out = "F." + name
    else:
        out = "torch." + name
    try:
        _FUNC_NAMES[func] = out
    except TypeError:  # pragma: no cover
        pass
    return out


def _is_inplace(func: Any, kwargs: dict) -> bool:
    name = getattr(func, "__name__", "") or ""
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or bool(
        kwargs.get("inplace", False))


def _first_tensor(args, kwargs) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    for key in ("input", "self"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    return None


def _any_grad(args, kwargs) -> bool:
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.requires_grad:
                return True
        elif isinstance(a, (list, tuple)):
            if any(isinstance(t, torch.Tensor) and t.requires_grad for t in a):
                return True
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in kwargs.values())


def depends_on_input(t: Any) -> bool:
    """``t`` is a tensor computed from the explained input.

    During a method's forward pass the model's parameters are frozen (:func:`frozen_parameters`),
    so ``requires_grad`` marks exactly the input-dependent tensors; a trainable parameter met
    under :func:`apply` outside a method (``nn.Parameter``) is a constant too.
    """
    return isinstance(t, torch.Tensor) and t.requires_grad and not isinstance(t, nn.Parameter)


def _out_needs_grad(out) -> bool:
    if isinstance(out, torch.Tensor):
        return out.requires_grad
    if isinstance(out, (list, tuple)):
        return any(isinstance(t, torch.Tensor) and t.requires_grad for t in out)
    return False


def _clamp_is_relu(func, args, kwargs) -> bool:
    """``clamp(x, min=0)`` / ``clamp_min(x, 0)`` with no upper bound is a ReLU."""
    name = getattr(func, "__name__", "")
    lo = args[1] if len(args) > 1 else kwargs.get("min")
    hi = None if name.startswith("clamp_min") else (args[2] if len(args) > 2 else kwargs.get("max"))
    return (isinstance(lo, (int, float)) and not isinstance(lo, bool) and lo == 0 and hi is None)


def classify(func: Any, args: tuple = (), kwargs: dict | None = None) -> str | None:
    """The kind of a torch call (``"relu"``, ``"conv"``, ``"add"``, ``"struct"`` ...) or ``None``."""
    kind = KINDS.get(func)
    if kind == "clamp":
        return "relu" if _clamp_is_relu(func, args, kwargs or {}) else "activation"
    if kind is None and getattr(func, "__name__", "") == "__get__":
        return "attr"  # attribute access (x.T, x.data, x.shape ...): plain

    return kind


# --------------------------------------------------------------------------- calls and rules
@dataclass
class OpCall:
    """One operation met during the forward pass, as a rule and a composite see it.

    Attributes
    ----------
    kind : str
        The operation kind (see :data:`KINDS`): ``"relu"``, ``"linear"``, ``"conv"``, ``"add"``...
    func, args, kwargs
        The torch call itself; ``run()`` evaluates it unchanged.
    module_name : str
        Dotted name of the innermost module whose forward made the call (``""`` for the root).
    module : nn.Module or None
    index : int
        Order of this call among the calls handed to the composite in this forward pass.
    first : bool
        This is the first linear/convolution operation of the forward pass (the input layer).
    inplace : bool
        The call was in place (``relu_``, ``+=``, ``inplace=True``); rules run it out of place.
    """

    kind: str
    func: Any
    args: tuple
    kwargs: dict
    module_name: str = ""
    module: nn.Module | None = None
    index: int = 0
    first: bool = False
    inplace: bool = False
    session: "Session | None" = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return func_name(self.func)

    @property
    def where(self) -> str:
        return f"{self.name} in module {self.module_name or '<root>'!r}" + (
            f" ({type(self.module).__name__})" if self.module is not None else "")

    @property
    def input(self) -> torch.Tensor:
        t = _first_tensor(self.args, self.kwargs)
        if t is None:  # pragma: no cover - classified ops always take a tensor
            raise TypeError(f"{self.name}: no tensor argument")
        return t

    def run(self, *args, **kwargs):
        """Evaluate the original operation (with replaced arguments when given)."""
        if args or kwargs:
            return self.func(*args, **kwargs)
        return self.func(*self.args, **self.kwargs)

    def run_out_of_place(self):
        """The original operation, computed out of place (in-place calls return a new tensor)."""
        if not self.inplace:
            return self.run()
        kw = dict(self.kwargs)
        if "inplace" in kw:
            kw["inplace"] = False
            return self.func(*self.args, **kw)
        args = list(self.args)
        args[0] = args[0].clone()  # the in-place method then writes into a copy
        return self.func(*args, **kw)


class Rule:
    """How one operation passes gradients (or relevance, or multipliers) backward.

    A rule is called with the :class:`OpCall` instead of the operation and returns the operation's
    output, computed through a custom ``autograd.Function`` whose backward is the rule.
    """

    def __call__(self, call: OpCall):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class Composite:
    """Decides which rule applies to each operation.

    Parameters
    ----------
    rules : dict
        Maps an operation kind (``"relu"``, ``"conv"``...) to a :class:`Rule` (or ``None`` for the
        plain gradient).
    strict : bool, default False
        Operations of unknown kind that carry gradient raise :class:`UnsupportedOperationError`
        (relevance and multipliers would be silently wrong through them). When False they use their
        plain gradient and are listed in ``session.plain_ops``.
    needs_names : bool, default False
        Track the module each call comes from (forward hooks, removed afterwards); needed by
        composites that choose by module name and for error messages.
    name : str
        Shown in reprs and metadata.
    """

    def __init__(self, rules: dict[str, Rule | None] | None = None, *, strict: bool = False,
                 needs_names: bool = False, name: str = "composite"):
        self.rules = dict(rules or {})
        self.strict = strict
        self.needs_names = needs_names
        self.name = name
        # Hand every classified call to the composite, also without gradient (DeepLIFT records
        # the reference's forward pass under no_grad and replays it in call order).
        self.see_all = False

    def rule_for(self, call: OpCall) -> Rule | None:
        """The rule for ``call``; ``None`` runs the operation unchanged (plain gradient)."""
        return self.rules.get(call.kind)

    def unsupported(self, call: OpCall) -> str | None:
        """A message when ``call`` cannot be handled (checked before :meth:`rule_for`)."""
        return None

    def observe(self, session: "Session", args: tuple, kwargs: dict) -> None:
        """See the arguments of every computing call (for canonisers tracking tensor uses)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Session:
    """What happened during one forward pass under a composite (returned by :func:`apply`)."""

    def __init__(self, model: nn.Module | None, composite: Composite, method: str):
        self.model = model
        self.composite = composite
        self.method = method
        self.counts: dict[str, int] = {}      # kind -> calls handed to the composite
        self.plain_ops: set[str] = set()      # unknown operations that kept their plain gradient
        self.inplace_replaced = False
        self.n_calls = 0
        self.first_seen = False
        self.stack: list[tuple[str, nn.Module]] = []
        self.records: list = []               # filled by rules that log per-layer information
        self.state: dict = {}                 # free space for rules (pairs, canonisation ...)
        # With ``only_inside`` (see :func:`apply`), calls made outside the model's own forward
        # (lumos's wrappers: unpacking several inputs, expanding forward arguments) run plainly.
        self.only_inside = False
        self.depth = 0

    def _where(self) -> tuple[str, nn.Module | None]:
        return self.stack[-1] if self.stack else ("", None)

    def dispatch(self, func, args, kwargs):
        if self.only_inside and not self.depth:
            return func(*args, **kwargs)
        see_all = self.composite.see_all
        if not see_all and not torch.is_grad_enabled():
            return func(*args, **kwargs)
        kind = classify(func, args, kwargs)
        if kind == "attr":
            return func(*args, **kwargs)
        if kind is None:
            out = func(*args, **kwargs)
            if _out_needs_grad(out) and _any_grad(args, kwargs):
                self.composite.observe(self, args, kwargs)
                name = func_name(func)
                if self.composite.strict:
                    mname, mod = self._where()
                    where = f" in module {mname or '<root>'!r}" if self.composite.needs_names else ""
                    raise UnsupportedOperationError(
                        f"model: {self.method} has no rule for the operation {name}{where}, met on "
                        "the path from the input to the output; its plain gradient would give a "
                        "silently wrong result. Supported: linear, convolution, pooling, batch "
                        "norm (eval), addition, element-wise products, ReLU-type activations and "
                        "reshaping. Rewrite that step with supported operations or use a "
                        "gradient method (saliency, integrated_gradients)."
                    )
                self.plain_ops.add(name)
            return out
        self.composite.observe(self, args, kwargs)
        if kind == "struct" or not (see_all or _any_grad(args, kwargs)):
            return func(*args, **kwargs)
        mname, mod = self._where()
        first = False
        if kind in ("linear", "conv", "conv_transpose", "matmul") and not self.first_seen:
            first = self.first_seen = True
        call = OpCall(kind, func, args, kwargs, mname, mod, self.n_calls, first,
                      _is_inplace(func, kwargs), self)
        self.n_calls += 1
        self.counts[kind] = self.counts.get(kind, 0) + 1
        msg = self.composite.unsupported(call)
        if msg:
            raise UnsupportedOperationError(f"model: {self.method}: {msg} ({call.where})")
        rule = self.composite.rule_for(call)
        if rule is None:
            if kind in _RULE_ONLY and self.composite.strict and _any_grad(args, kwargs):
                raise UnsupportedOperationError(
                    f"model: {self.method} has no rule for the operation {call.where}, met on the "
                    "path from the input to the output; its plain gradient would give a silently "
                    "wrong result (LRP through transformers: composite='attnlrp' or 'cp_lrp')")
            if kind in ("activation", "softmax", "norm") + _RULE_ONLY:
                self.plain_ops.add(call.name)  # a non-linearity without a rule: plain gradient
            return func(*args, **kwargs)
        if call.inplace:
            self.inplace_replaced = True
        return rule(call)


class _RuleMode(TorchFunctionMode):
    def __init__(self, session: Session):
        super().__init__()
        self.session = session

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # The mode is popped while this runs: calls made by rules are not seen again.
        try:
            return self.session.dispatch(func, args, kwargs or {})
        except UnsupportedOperationError as e:
            # Tensor.__matmul__, __add__ ... turn a TypeError into NotImplemented ("unsupported
            # operand type(s)"); apply() re-raises this one instead
            self.session.error = e
            raise


def check_visible(model: Any, method: str) -> None:
    """Refuse models whose operations the mode cannot see (TorchScript, torch.compile)."""
    check_not_compiled(model, method)
    if isinstance(model, nn.Module):
        for name, m in model.named_modules():
            if isinstance(m, torch.jit.ScriptModule) or type(m).__name__ == "OptimizedModule":
                raise TypeError(
                    f"model: its submodule {name!r} is compiled ({type(m).__name__}); {method} "
                    "changes how gradients pass through each operation, which cannot be seen "
                    "inside compiled code (it would silently return a wrong map). Use the "
                    "original nn.Module."
                )


@contextlib.contextmanager
def apply(model: nn.Module | None, composite: Composite, *, method: str = "rules",
          only_inside: bool = False) -> Iterator[Session]:
    """Apply ``composite`` to every operation of the forward passes run inside the block.

    Parameters
    ----------
    model : nn.Module or None
        Checked for compiled parts; when the composite chooses by module name, each submodule gets
        a forward hook for the duration of the block (removed on exit, also on error).
    composite : Composite
        The rules (for example ``rules.GUIDED``, ``rules.DECONV`` or an LRP composite).
    method : str
        Named in error messages.
    only_inside : bool, default False
        Rules apply only to the operations made inside ``model``'s own forward pass; operations
        of code that calls it (lumos's wrappers for several inputs, forward arguments, layer
        splices) run unchanged and are not counted. The methods call the wrapped model with the
        user's ``model`` here, so the rules see exactly the user's operations.

    Yields
    ------
    Session
        Counts of the operations seen, the plain-gradient operations, per-layer records.

    Notes
    -----
    Only the forward pass belongs inside the block; the backward pass may run after it.
    """
    if model is not None:
        check_visible(model, method)
    session = Session(model, composite, method)
    handles = []
    if model is not None and only_inside:
        session.only_inside = True
        handles.append(model.register_forward_pre_hook(_enter(session)))
        handles.append(model.register_forward_hook(_leave(session), always_call=True))
    if model is not None and composite.needs_names:
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(_push(session, name)))
            handles.append(m.register_forward_hook(_pop(session), always_call=True))
    try:
        with _RuleMode(session):
            yield session
    except TypeError as e:
        err = getattr(session, "error", None)
        if err is not None and e is not err:
            raise err from None
        raise
    finally:
        for h in handles:
            h.remove()
        # the forward pass's bookkeeping (which operation produced which tensor) holds every
        # ruled operation's inputs; drop it so that memory is bounded by one chunk's graph
        session.state.pop("producers", None)


def _enter(session: Session):
    def hook(module, args):
        session.depth += 1
    return hook


def _leave(session: Session):
    def hook(module, args, output):
        session.depth -= 1
    return hook


def _push(session: Session, name: str):
    def hook(module, args):
        session.stack.append((name, module))
    return hook


def _pop(session: Session):
    def hook(module, args, output):
        if session.stack:
            session.stack.pop()
    return hook


# --------------------------------------------------------------------------- running a method
def check_attributions(values: torch.Tensor, method: str) -> None:
    """Raise a clear error instead of returning NaN or Inf attributions."""
    if torch.isfinite(values.sum()):
        return
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise NonFiniteOutputError(
            f"{method}: {bad} of the {values.numel()} attributions are NaN or Inf although the "
            "model's outputs are finite (an overflow in the backward pass: inputs or activations "
            "too large for the model's float precision). Rescale the inputs or use float64."
        )


def _select_grad(target, out: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d s / d out, s)`` for the target scalar ``s`` of each row (a small autograd graph)."""
    o = out.detach().requires_grad_(True)
    with torch.enable_grad():
        s = target.select(o, rows)
        if not s.requires_grad:
            raise ValueError("target: the selected scalar does not depend on the model output")
        (g,) = torch.autograd.grad(s.sum(), o)
    return g, s.detach()


def check_same_output(out: torch.Tensor, expected: torch.Tensor, method: str) -> None:
    """The forward pass under the rules must reproduce the model's output."""
    scale = expected.abs().max().item() + 1e-12
    diff = (out.detach() - expected).abs().max().item()
    if diff > 1e-4 * scale + 1e-6:
        raise RuntimeError(
            f"model: its output under the {method} rules differs from its plain output (max "
            f"difference {diff:.3g}). An in-place operation whose result the model discards "
            "(e.g. a bare `x.relu_()`) cannot be run under rules; use the returned value "
            "(`x = x.relu()`)."
        )


def propagate(model: Any, inputs: Any, target: Any, composite: Composite, *, method: str,
              start: str = "gradient", batch_size: int | None = None,
              progress: bool | None = None, forward_args: Any = None, at: Any = None,
              layer_side: str = "output") -> tuple[Prepared, torch.Tensor, list[Session]]:
    """Validate, guard the model, and backpropagate the target through ``composite``.

    One forward pass under the rules per chunk (the target is resolved on its output) and one
    backward pass. ``start="gradient"`` starts the backward pass from ``d target / d output``
    (guided backprop, DeconvNet; for a class index the one-hot vector); ``start="relevance"``
    from ``output * d target / d output`` (LRP: the one-hot output times the explained logit).
    Each session's ``state["start_total"]`` holds the per-sample sum of that start.

    ``forward_args``, several inputs (a tuple or dict), ``at``/``layer_side`` and
    :class:`~lumos.core.units.Neuron` targets are handled as in
    :func:`~lumos.core.torch_model.torch_call` (see :func:`rules_call`): the rules apply to the
    operations of the user's model only, those after the splice with ``at=`` and those before
    the unit's layer with a Neuron target.

    Returns
    -------
    (Prepared, Tensor, list of Session)
        The prepared call (output, target, scalar; ``packing`` for several inputs), the propagated
        map of ``Prepared.x``'s shape (the packed inputs, or the layer's activation with ``at=``),
        and the session of each chunk.
    """
    if start not in ("gradient", "relevance"):  # pragma: no cover - internal
        raise ValueError(f"start must be 'gradient' or 'relevance'; got {start!r}")
    with rules_call(model, inputs, target, method, forward_args=forward_args, at=at,
                    layer_side=layer_side) as p:
        net, x, user = p.model, p.x, unwrap(p.model)
        what = grad_path_name(p)
        n = len(x)
        bs = check_batch_size(batch_size, row_bytes=row_bytes(x))
        n_chunks = -(-n // bs)  # chunks() is iterated in the loop: it reports progress as it goes
        # several chunks: resolve the target on the whole batch first ("predicted", ranges)
        tgt = target_on_batch(net, x, p.target_spec, bs) if n_chunks > 1 else None
        values = torch.empty_like(x, memory_format=torch.contiguous_format)
        outputs, sessions = [], []
        fmt = layout_for(net, x)

        def one_pass(xs, sl, tgt):
            rows = torch.arange(sl.start, sl.stop)
            xg = xs.detach().requires_grad_(True)
            with torch.enable_grad():
                with apply(user, composite, method=method, only_inside=True) as session:
                    out = _forward(net, xg, rows=rows)
                check_finite(out.detach(), "the inputs")
                if session.inplace_replaced:
                    with torch.no_grad():
                        check_same_output(out, forward(net, xs, rows=rows), method)
                if tgt is None:
                    tgt = resolve_target(p.target_spec, out.detach())
                g, s = _select_grad(tgt, out, rows)
                init = g if start == "gradient" else g * out.detach()
                session.state["start_total"] = row_sums(init)
                require_grad_path(out, what)
                (v,) = torch.autograd.grad(out, xg, grad_outputs=init, allow_unused=True)
            if v is None:
                require_grad_path(None, what)
            return v.detach(), out.detach(), tgt, session

        for sl in chunks(n, bs, desc=method, progress=progress):
            # channels-last batches where the model takes them (faster CPU convolutions)
            v, out, tgt, session = run_in_layout(
                net, lambda xs, sl=sl, t=tgt: one_pass(xs, sl, t), x[sl], fmt)
            values[sl] = v
            outputs.append(out)
            sessions.append(session)
        check_attributions(values, method)
        p.resolve(torch.cat(outputs), tgt)
        return p, values, sessions


@contextlib.contextmanager
def rules_call(model: Any, inputs: Any, target: Any, method: str, *, forward_args: Any = None,
               at: Any = None, layer_side: str = "output") -> Iterator[Prepared]:
    """The set-up every rules method shares, on :func:`~lumos.core.torch_model.torch_call`.

    Checks the model (an ``nn.Module`` whose operations the mode can see, submodules included),
    guards it (state and buffers restored, the per-model lock held), binds several inputs and
    ``forward_args`` (:mod:`lumos.core.inputs`), applies ``at=`` and Neuron targets
    (:mod:`lumos.core.units`), and freezes the parameters for the call
    (:class:`~lumos.core.torch_model.frozen_parameters`: ``requires_grad`` then marks exactly the
    tensors that depend on what is explained).

    Yields the :class:`~lumos.core.torch_model.Prepared` of ``torch_call(...,
    clean_forward=False)``: ``p.model`` is the model to evaluate (pass ``rows=`` for every batch
    whose rows are not the samples), ``p.x`` the tensor to attribute to, ``p.target_spec`` the
    target to resolve (:func:`target_on_batch`), and ``unwrap(p.model)`` the user's model to hand
    to :func:`apply` with ``only_inside=True``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: {method} needs a torch.nn.Module (it changes backward rules of its "
            f"operations); got {type(model).__name__}"
        )
    check_visible(model, method)
    with torch_call(model, inputs, target, method=method, rules=True, clean_forward=False,
                    forward_args=forward_args, several=True, at=at,
                    layer_side=layer_side) as p:
        frozen_parameters(p.model)  # restored by torch_call's ModelGuard
        yield p


def grad_path_name(p: Prepared) -> str:
    """What a rules method attributes to, for the 'does not depend on' error."""
    at = p.meta.get("at")
    return "the input" if at is None else f"layer {at!r}'s {p.meta.get('layer_side', 'output')}"


def target_on_batch(model: nn.Module, x: torch.Tensor, target: Any, batch_size: int):
    """The target resolved on the model's output for the whole batch (plain forward passes in
    chunks, each told its rows, checked for NaN/Inf): needed before chunking for
    ``"predicted"`` and ranges."""
    with torch.no_grad():
        outs = torch.cat([forward(model, x[sl], rows=torch.arange(sl.start, sl.stop))
                          for sl in chunks(len(x), batch_size, progress=False)])
    check_finite(outs, "the inputs")
    return resolve_target(target, outs)


def row_bytes(x: torch.Tensor) -> int:
    """Bytes of one sample of ``x`` (sizes the default batch, see ``check_batch_size``)."""
    return int(x[0].numel() * x.element_size()) if len(x) else 1


def row_sums(t: torch.Tensor) -> torch.Tensor:
    """Per-sample sums over every non-batch axis (no reshape: a channels-last tensor is not
    copied)."""
    t = t.detach()
    if t.ndim == 0:
        return t.reshape(1)
    return t.sum(dim=tuple(range(1, t.ndim))) if t.ndim > 1 else t
