"""Layer-wise relevance propagation rules, attached to operations.

Bach, Binder, Montavon, Klauschen, Müller & Samek (2015), "On Pixel-Wise Explanations for
Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation"; Montavon, Binder, Lapuschkin,
Samek & Müller (2019), "Layer-Wise Relevance Propagation: An Overview"; Montavon, Lapuschkin,
Binder, Samek & Müller (2017), "Explaining Nonlinear Classification Decisions with Deep Taylor
Decomposition".

Every rule is implemented as the "gradient trick" (as in Zennit): the operation's forward value is
unchanged; its backward maps the relevance ``R`` of the output ``z`` to the relevance of the input.
For an operation affine in its input, ``z_k = sum_j x_j w_jk + b_k`` (linear, convolution,
transposed convolution, batch norm, average pooling, sums, products with a constant matrix):

===========  ===============================================================================
rule         relevance of input ``j``
===========  ===============================================================================
LRP-0        ``x_j sum_k w_jk R_k / z_k``
ε            ``x_j sum_k w_jk R_k / (z_k + ε sign(z_k))``
γ            ``x_j sum_k (w_jk + γ w_jk⁺) R_k / (sum_j x_j (w_jk + γ w_jk⁺) + b_k + γ b_k⁺)``
αβ           ``sum_k (α (x_j w_jk)⁺ / z_k⁺ − β (x_j w_jk)⁻ / z_k⁻) R_k`` with
             ``z_k^± = sum_j (x_j w_jk)^± + b_k^±``, α − β = 1
z⁺           αβ with α = 1, β = 0
zᴮ           ``sum_k (x_j w_jk − l_j w_jk⁺ − h_j w_jk⁻) R_k / (z_k − sum_j (l_j w_jk⁺ + h_j w_jk⁻))``
flat         ``sum_k R_k / sum_j 1`` over the receptive field of ``k``
w²           ``sum_k w_jk² R_k / sum_j w_jk²``
===========  ===============================================================================

All denominators are stabilised as ``z + s sign(z)`` (``sign(0) = 1``) with a tiny ``s``
(``stabilizer``, default 1e-6; LRP-0 uses none and maps 0/0 to 0). Weight-free linear maps
(average pooling, sums, means) have implicit non-negative weights, so there ``w⁺ = w``, ``w⁻ = 0``
and flat / w² distribute uniformly over the window. Additions split the relevance in proportion
to each summand (ε-stabilised); constants and biases keep their share (the "leak").
"""
from __future__ import annotations

import weakref
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core.validation import check_number
from .engine import (
    OpCall, Rule, RuleParameterError, UnsupportedOperationError, row_sums, depends_on_input,
)

__all__ = [
    "LRPRule", "Epsilon", "Zero", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "Flat", "WSquare", "Pass",
    "AddRule", "ProductRule",
]


def _divide(R: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``R / (z + eps sign z)`` with ``sign(0) = 1``; with ``eps == 0`` a zero denominator gives 0
    (LRP-0)."""
    if eps == 0:
        return torch.where(z == 0, torch.zeros_like(R), R / torch.where(z == 0, torch.ones_like(z), z))
    # |z| + eps carrying the sign of z, then R / it: in-place passes over one buffer
    den = z.abs().add_(eps).copysign_(z)
    return torch.div(R, den, out=den)


def _divide_pos(R: torch.Tensor, zp: torch.Tensor, eps: float, fresh: bool = False) -> torch.Tensor:
    """``R / (zp + eps)`` for a non-negative denominator (``sign(zp) = 1``)."""
    if eps == 0:
        return _divide(R, zp, 0.0)
    den = zp.add_(eps) if fresh else zp + eps
    return torch.div(R, den, out=den)


# --------------------------------------------------------------------------- affine adapters
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONVT_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")


def _bind(call: OpCall, names: Sequence[str], defaults: dict) -> dict:
    out = dict(defaults)
    out.update(zip(names, call.args))
    out.update(call.kwargs)
    return out


def _const_param(t, what: str, call: OpCall):
    if depends_on_input(t):
        raise UnsupportedOperationError(
            f"model: the {what} of {call.where} is computed from the input; LRP rules treat "
            "weights as constants (a product of two inputs has no linear rule)"
        )
    return t.detach() if isinstance(t, torch.Tensor) else t


def _ntuple(v, n):
    if isinstance(v, (list, tuple)):
        return [int(a) for a in v] if len(v) == n else [int(v[0])] * n
    return [int(v)] * n


class Affine:
    """An operation affine in its input ``x``: ``z = fwd(x, W) + b`` (``W`` may be implicit).

    ``fwd(x, W)`` is the linear part with weights ``W`` (``None``: the op's own, weight-free),
    ``vjp(s, W)`` its transpose applied to ``s``; ``add_bias(z, b)`` broadcasts a bias.
    """

    param_free = False

    def __init__(self, call: OpCall):
        self.call = call
        self.x: torch.Tensor = call.input
        self.W: torch.Tensor | None = None
        self.b: torch.Tensor | None = None

    def fwd(self, x, W):  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, s, W):
        # Generic transpose through autograd (one extra cheap linear pass).
        with torch.enable_grad():
            xx = torch.zeros_like(self.x).requires_grad_(True)
            (g,) = torch.autograd.grad(self.fwd(xx, W), xx, s)
        return g

    def add_bias(self, z, b):
        return z if b is None else z + b

    def fwd_bias(self, x, W, b):
        """``fwd(x, W) + b`` (fused into the operation where it takes a bias)."""
        return self.add_bias(self.fwd(x, W), b)

    def vjp_multi(self, s, Ws):
        """``[vjp(s, W) for W in Ws]``. (Stacking the weights into one transposed convolution
        was measured slower on CPU, in both memory layouts.)"""
        return [self.vjp(s, W) for W in Ws]

    def n_out(self) -> int | None:
        """Length of the bias vector (output channels); ``None`` when the op takes no bias."""
        return None if self.W is None or self.param_free else int(self.W.shape[0])

    # weight modifiers; weight-free ops have implicit non-negative weights
    def pos(self, W):
        return W if W is None else W.clamp(min=0)

    def neg(self, W):
        return None if W is None else W.clamp(max=0)

    def ones(self):
        return None if self.W is None else torch.ones_like(self.W)

    def square(self):
        return None if self.W is None else self.W * self.W


class LinearOp(Affine):
    def __init__(self, call):
        super().__init__(call)
        a = _bind(call, ("input", "weight", "bias"), {"bias": None})
        self.W = _const_param(a["weight"], "weight", call)
        self.b = _const_param(a["bias"], "bias", call)

    def fwd(self, x, W):
        if W is None:
            return torch.zeros(*x.shape[:-1], self.W.shape[0], dtype=x.dtype, device=x.device)
        return F.linear(x, W)

    def vjp(self, s, W):
        return s @ W

    def fwd_bias(self, x, W, b):
        return F.linear(x, W, b)



class ConvOp(Affine):
    def __init__(self, call, nd, transposed=False):
        super().__init__(call)
        self.nd, self.transposed = nd, transposed
        names = _CONVT_ARGS if transposed else _CONV_ARGS
        a = _bind(call, names, {"bias": None, "stride": 1, "padding": 0, "dilation": 1,
                                "groups": 1, "output_padding": 0})
        self.W = _const_param(a["weight"], "weight", call)
        self.b = _const_param(a["bias"], "bias", call)
        self.a = a
        self.fast = not isinstance(a["padding"], str)
        self.func = call.func

    def fwd(self, x, W):
        a = self.a
        if W is None:  # pragma: no cover - convolutions always have weights
            raise AssertionError
        if self.transposed:
            return self.func(x, W, None, a["stride"], a["padding"], a["output_padding"],
                             a["groups"], a["dilation"])
        return self.func(x, W, None, a["stride"], a["padding"], a["dilation"], a["groups"])

    def n_out(self):
        return int(self.W.shape[1] * self.a["groups"]) if self.transposed else int(self.W.shape[0])

    def fwd_bias(self, x, W, b):
        a = self.a
        if self.transposed:
            return self.func(x, W, b, a["stride"], a["padding"], a["output_padding"],
                             a["groups"], a["dilation"])
        return self.func(x, W, b, a["stride"], a["padding"], a["dilation"], a["groups"])

    def vjp(self, s, W):
        if not self.fast:
            return super().vjp(s, W)
        a, n = self.a, self.nd
        return torch.ops.aten.convolution_backward(
            s, self.x, W, None, _ntuple(a["stride"], n), _ntuple(a["padding"], n),
            _ntuple(a["dilation"], n), self.transposed, _ntuple(a["output_padding"], n),
            int(a["groups"]), [True, False, False])[0]

    def add_bias(self, z, b):
        return z if b is None else z + b.view(1, -1, *([1] * self.nd))


class MatmulOp(Affine):
    """``x @ W`` or ``W @ x`` with a constant ``W``."""

    def __init__(self, call):
        super().__init__(call)
        a, b = call.args[0], call.args[1]
        if depends_on_input(a) and depends_on_input(b):
            raise UnsupportedOperationError(
                f"model: LRP has no rule for a product of two input-dependent matrices "
                f"({call.where}) in this composite; attention: composite='attnlrp' or 'cp_lrp'"
            )
        self.left = depends_on_input(a)
        self.x = a if self.left else b
        self.W = _const_param(b if self.left else a, "matrix", call)

    def fwd(self, x, W):
        return x @ W if self.left else W @ x

    def n_out(self):
        return None

    def vjp(self, s, W):
        if self.left:
            g = s @ W.transpose(-1, -2) if W.ndim > 1 else s[..., None] * W
        else:
            g = W.transpose(-1, -2) @ s if W.ndim > 1 else W[:, None] * s[..., None, :]
        return g.sum_to_size(self.x.shape) if g.shape != self.x.shape else g


class BatchNormOp(Affine):
    """Batch norm with running statistics: a per-channel diagonal map ``x * a + shift``."""

    def __init__(self, call):
        super().__init__(call)
        if call.func is F.batch_norm:
            a = _bind(call, ("input", "running_mean", "running_var", "weight", "bias", "training",
                             "momentum", "eps"), {"weight": None, "bias": None, "training": False,
                                                  "momentum": 0.1, "eps": 1e-5})
        else:  # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
            a = _bind(call, ("input", "weight", "bias", "running_mean", "running_var", "training",
                             "momentum", "eps", "cudnn_enabled"), {})
        if a["training"] or a["running_mean"] is None:
            raise UnsupportedOperationError(
                f"model: batch norm in training mode (batch statistics) is not a per-sample "
                f"map ({call.where}); call model.eval() first"
            )
        var, mean = a["running_var"].detach(), a["running_mean"].detach()
        scale = torch.rsqrt(var + a["eps"])
        if a["weight"] is not None:
            scale = scale * _const_param(a["weight"], "weight", call)
        shift = -mean * scale
        if a["bias"] is not None:
            shift = shift + _const_param(a["bias"], "bias", call)
        self.W, self.b = scale, shift
        self.nd = self.x.ndim - 2

    def _view(self, t):
        return t.view(1, -1, *([1] * self.nd))

    def fwd(self, x, W):
        return x * self._view(W)

    def vjp(self, s, W):
        return s * self._view(W)

    def add_bias(self, z, b):
        return z if b is None else z + self._view(b)


class FreeOp(Affine):
    """A weight-free linear map (average pooling, sum, mean): ``z = op(x)``."""

    param_free = True

    def __init__(self, call):
        super().__init__(call)
        self.rest = list(call.args)
        self.index = next(i for i, a in enumerate(call.args) if isinstance(a, torch.Tensor)) \
            if any(isinstance(a, torch.Tensor) for a in call.args) else None
        kw = dict(call.kwargs)
        if self.index is None:
            key = "input" if "input" in kw else "self"
            self.key = key
        self.kw = kw

    def fwd(self, x, W="w"):
        if W is _ZERO:
            return torch.zeros_like(self._run(x))
        return self._run(x)

    def _run(self, x):
        if self.index is not None:
            args = list(self.rest)
            args[self.index] = x
            return self.call.func(*args, **self.kw)
        kw = dict(self.kw)
        kw[self.key] = x
        return self.call.func(*self.rest, **kw)

    def vjp(self, s, W="w"):
        if W is _ZERO:
            return torch.zeros_like(self.x)
        with torch.enable_grad():
            xx = torch.zeros_like(self.x).requires_grad_(True)
            (g,) = torch.autograd.grad(self._run(xx), xx, s)
        # the gradient of a sum is an expanded view; the rules write into what vjp returns
        return g.contiguous() if 0 in g.stride() else g

    def pos(self, W):
        return "w"

    def neg(self, W):
        return _ZERO

    def ones(self):
        return "w"

    def square(self):
        return "w"


_ZERO = object()


def affine_for(call: OpCall) -> Affine:
    """The affine adapter of a linear-type call."""
    k = call.kind
    if k == "linear":
        return LinearOp(call)
    if k in ("conv", "conv_transpose"):
        nd = int(getattr(call.func, "__name__", "conv2d")[-2])
        return ConvOp(call, nd, transposed=(k == "conv_transpose"))
    if k == "matmul":
        return MatmulOp(call)
    if k == "batch_norm":
        return BatchNormOp(call)
    if k in ("avg_pool", "sum"):
        return FreeOp(call)
    raise UnsupportedOperationError(f"model: no affine form for {call.where}")  # pragma: no cover


# --------------------------------------------------------------------------- the Function
class Holder:
    """What the backward pass of one ruled operation needs (mutable: canonisers fold into it)."""

    __slots__ = ("rule", "op", "z", "label", "session", "index", "folded", "terms", "__weakref__")

    def __init__(self, rule, op, label, session, index):
        self.rule, self.op, self.label, self.session, self.index = rule, op, label, session, index
        self.z = None
        self.folded = False
        self.terms = None


def _record(holder: Holder, R_in: torch.Tensor) -> None:
    """Log the relevance that reaches the operation's input, per sample (``layer_relevance``)."""
    if holder.session is not None:
        holder.session.records.append((holder.index, holder.label, row_sums(R_in)))


class _AffineFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, holder):
        z = holder.rule.forward(holder.op)
        # keep the output only for rules whose backward reads it (less memory held through the
        # pass: the z⁺, flat and w² rules recompute what they need)
        holder.z = z.detach() if holder.rule.uses_output(holder.op) else None
        ctx.holder = holder
        return z

    @staticmethod
    def backward(ctx, R):
        h = ctx.holder
        R_in = h.rule.relevance(h.op, h.op.x.detach(), h.z, R)
        _record(h, R_in)
        return R_in, None


def _label(call: OpCall) -> str:
    return f"{call.module_name or '<root>'}:{call.kind}#{call.index}"


class LRPRule(Rule):
    """Base of the rules for affine operations (linear, conv, batch norm, pooling, sums)."""

    def __call__(self, call: OpCall):
        op = affine_for(call)
        self.check(op)
        holder = Holder(self, op, _label(call), call.session, call.index)
        out = _AffineFn.apply(op.x, holder)
        if call.session is not None:
            prod = call.session.state.setdefault("producers", {})
            prod[id(out)] = [weakref.ref(out), holder, 0]
        return out

    def check(self, op: Affine) -> None:
        """Validate the rule's parameters against the operation (forward time)."""

    def forward(self, op: Affine) -> torch.Tensor:
        """The operation's output (the original call: the same numbers as the model's)."""
        return op.call.run_out_of_place()

    def uses_output(self, op: Affine) -> bool:
        """Whether :meth:`relevance` reads the operation's output ``z`` (kept until then)."""
        return True

    def relevance(self, op: Affine, x: torch.Tensor, z: torch.Tensor, R: torch.Tensor):
        raise NotImplementedError  # pragma: no cover


class Epsilon(LRPRule):
    """LRP-ε (Bach et al., 2015): ``R_j = x_j Σ_k w_jk R_k / (z_k + ε sign z_k)``.

    Parameters
    ----------
    epsilon : float, default 1e-6
        Absorbs weak or contradictory contributions; ``epsilon=0`` is LRP-0.
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = check_number(epsilon, "epsilon", low=0)

    def relevance(self, op, x, z, R):
        return op.vjp(_divide(R, z, self.epsilon), op.W).mul_(x)


class Zero(Epsilon):
    """LRP-0 (Bach et al., 2015): ``R_j = x_j Σ_k w_jk R_k / z_k`` (0/0 := 0)."""

    def __init__(self):
        super().__init__(0.0)

    def __repr__(self) -> str:
        return "Zero()"


class Gamma(LRPRule):
    """LRP-γ (Montavon et al., 2019): favour positive weights, ``w + γ w⁺`` and ``b + γ b⁺``.

    Meant for layers with non-negative inputs (after a ReLU).
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        self.gamma = check_number(gamma, "gamma", low=0)
        self.stabilizer = check_number(stabilizer, "stabilizer", low=0)

    def uses_output(self, op):
        return op.param_free

    def relevance(self, op, x, z, R):
        g = self.gamma
        if op.param_free:  # implicit non-negative weights: w + γ w⁺ = (1 + γ) w
            return op.vjp(_divide(R, (1 + g) * z, self.stabilizer), "w").mul_(x).mul_(1 + g)
        W2 = op.W + g * op.W.clamp(min=0)
        b2 = None if op.b is None else op.b + g * op.b.clamp(min=0)
        z2 = op.fwd_bias(x, W2, b2)
        return op.vjp(_divide(R, z2, self.stabilizer), W2).mul_(x)


class AlphaBeta(LRPRule):
    """LRP-αβ (Bach et al., 2015): positive and negative contributions weighted α and −β.

    ``z_k^± = Σ_j (x_j w_jk)^± + b_k^±``;
    ``R_j = Σ_k (α (x_j w_jk)⁺ / z_k⁺ − β (x_j w_jk)⁻ / z_k⁻) R_k``. Requires ``α − β = 1``.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        self.alpha = check_number(alpha, "alpha", low=1)
        self.beta = check_number(beta, "beta", low=0)
        if abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(f"alpha - beta must be 1 (conservation); got alpha={alpha}, beta={beta}")
        self.stabilizer = check_number(stabilizer, "stabilizer", low=0)

    def uses_output(self, op):
        return self.beta != 0  # z⁻ = z − z⁺ after a ReLU

    def relevance(self, op, x, z, R):
        a, b, eps = self.alpha, self.beta, self.stabilizer
        Wp, Wn = op.pos(op.W), op.neg(op.W)
        bp = None if op.b is None else op.b.clamp(min=0)
        bn = None if op.b is None else op.b.clamp(max=0)
        if bool(x.amin() >= 0):  # amin: ~10x faster than min() on CPU
            # after a ReLU: (x w)⁺ = x w⁺, and z⁻ = z − z⁺ (the biases' parts cancel): one extra
            # forward pass; the bias and the stabiliser are fused into it
            n_out = op.n_out()
            if n_out is None or eps == 0:
                zp = op.add_bias(op.fwd(x, Wp), bp)
                zn = (z - zp) if b else None
                s = _divide_pos(R, zp, eps)
            else:
                shift = torch.full((n_out,), eps, dtype=x.dtype, device=x.device) \
                    if bp is None else bp + eps
                zp = op.fwd_bias(x, Wp, shift)               # z⁺ + eps > 0
                zn = (z - zp).add_(eps) if b else None        # z⁻ = z − z⁺
                s = torch.div(R, zp, out=zp)
            g = op.vjp(s, Wp)
            if a != 1:
                g.mul_(a)
            if b:
                g.sub_(op.vjp(_divide(R, zn, eps), Wn), alpha=b)
            return g.mul_(x)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        zp = op.add_bias(op.fwd(xp, Wp) + op.fwd(xn, Wn), bp)
        g_pp, g_pn = op.vjp_multi(_divide(R, zp, eps), [Wp, Wn])
        out = g_pp.mul_(xp).add_(g_pn.mul_(xn)).mul_(a)
        if b:
            zn = op.add_bias(op.fwd(xp, Wn) + op.fwd(xn, Wp), bn)
            g_nn, g_np = op.vjp_multi(_divide(R, zn, eps), [Wn, Wp])
            out.sub_(g_nn.mul_(xp).add_(g_np.mul_(xn)), alpha=b)
        return out


class ZPlus(AlphaBeta):
    """The z⁺ rule (Montavon et al., 2017): only positive contributions, i.e. αβ with α=1, β=0."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(1.0, 0.0, stabilizer)

    def __repr__(self) -> str:
        return f"ZPlus(stabilizer={self.stabilizer})"


class ZBox(LRPRule):
    """The zᴮ rule for inputs bounded by ``low <= x <= high`` (Montavon et al., 2017).

    ``R_j = Σ_k (x_j w_jk − l_j w_jk⁺ − h_j w_jk⁻) R_k / Σ_j (...)`` (the bias stays in the
    denominator, as for the other rules).

    Parameters
    ----------
    low, high : float, Tensor or None
        Bounds broadcastable to the layer input (one sample, or the whole batch). ``None``: the
        smallest / largest value of each sample (so that the bounds always hold).
    """

    def __init__(self, low: Any = None, high: Any = None, stabilizer: float = 1e-6):
        self.low, self.high = check_bound(low, "low"), check_bound(high, "high")
        self.stabilizer = check_number(stabilizer, "stabilizer", low=0)

    def _bounds(self, x):
        """``low``, ``high`` broadcastable to ``x``: per-sample scalars ``(n, 1, ...)``, one
        shared sample ``(1, ...)`` or one per sample ``(n, ...)``."""
        one = (len(x),) + (1,) * (x.ndim - 1)

        def get(v, name, reduce):
            if v is None:
                return reduce(x.detach(), dim=tuple(range(1, x.ndim))).view(one)
            t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
            if t.ndim == 0:
                t = t.reshape((1,) * x.ndim)
            elif t.ndim == x.ndim - 1:
                t = t.unsqueeze(0)
            try:
                ok = t.ndim == x.ndim and torch.broadcast_shapes(t.shape, x.shape) == x.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise RuleParameterError(
                    f"{name} has shape {tuple(torch.as_tensor(v).shape)}, not broadcastable to one "
                    f"sample of the first layer's input, of shape {tuple(x.shape[1:])}")
            return t

        return get(self.low, "low", torch.amin), get(self.high, "high", torch.amax)

    def check(self, op):
        x = op.x.detach()
        if self.low is None and self.high is None:
            return  # each sample's own range: the bounds hold by construction
        lo, hi = self._bounds(x)
        if bool((x - lo).amin() < -1e-6) or bool((hi - x).amin() < -1e-6):
            raise RuleParameterError(
                "low/high: the zB rule needs low <= inputs <= high at the first layer; the inputs "
                f"range over [{x.min().item():.4g}, {x.max().item():.4g}]"
            )

    @staticmethod
    def _fwd_bound(op, t, x, W, like):
        """``fwd(t, W)`` for a bound ``t``, computed on one sample when ``t`` allows it."""
        if t.shape[0] == 1:  # one shared sample (or a number): one sample's pass, broadcast
            return op.fwd(t.expand((1,) + tuple(x.shape[1:])), W)
        if all(d == 1 for d in t.shape[1:]):  # a number per sample: scale one pass of ones
            base = op.fwd(torch.ones_like(x[:1]), W)
            return base * t.reshape((len(x),) + (1,) * (like.ndim - 1))
        return op.fwd(t.expand_as(x), W)

    def relevance(self, op, x, z, R):
        lo, hi = self._bounds(x)
        Wp, Wn = op.pos(op.W), op.neg(op.W)
        zb = self._fwd_bound(op, lo, x, Wp, z)
        zb = torch.sub(z, zb).sub_(self._fwd_bound(op, hi, x, Wn, z))
        s = _divide(R, zb, self.stabilizer)
        gx, gp, gn = op.vjp_multi(s, [op.W, Wp, Wn])
        return gx.mul_(x).sub_(gp.mul_(lo)).sub_(gn.mul_(hi))

    def __repr__(self) -> str:
        return f"ZBox(low={_short(self.low)}, high={_short(self.high)})"


def check_bound(v: Any, name: str) -> Any:
    """A zᴮ bound: ``None``, a finite number, or a finite tensor / array."""
    if v is None:
        return None
    if isinstance(v, (torch.Tensor, np.ndarray, list, tuple)):
        try:
            t = torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else np.asarray(v),
                                dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a number, a tensor or an array of numbers; got "
                             f"{type(v).__name__}") from None
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite; it holds NaN or Inf values")
        return v
    return check_number(v, name)


def _short(v):
    return f"<tensor {tuple(v.shape)}>" if isinstance(v, torch.Tensor) and v.numel() > 4 else repr(v)


class Flat(LRPRule):
    """The flat rule (Lapuschkin et al., 2019): relevance spread uniformly over the receptive field,
    ``R_j = Σ_k R_k / Σ_j 1``. The denominators are positive counts, so no stabiliser is needed
    by default (an all-zero row gives 0)."""

    def __init__(self, stabilizer: float = 0.0):
        self.stabilizer = check_number(stabilizer, "stabilizer", low=0)

    def uses_output(self, op):
        return False

    def _weights(self, op):
        return op.ones()

    def relevance(self, op, x, z, R):
        W = self._weights(op)
        ones = torch.ones_like(x)
        zf = op.fwd(ones, W)
        return op.vjp(_divide(R, zf, self.stabilizer), W)


class WSquare(Flat):
    """The w² rule (Montavon et al., 2017): ``R_j = Σ_k w_jk² R_k / Σ_j w_jk²``."""

    def _weights(self, op):
        return op.square()


class _PassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, call):
        ctx.shape = x.shape
        out = call.run_out_of_place()
        if out.shape != x.shape and not _broadcasts(x.shape, out.shape):
            raise UnsupportedOperationError(
                f"model: the rule Pass hands relevance on unchanged, but {call.where} maps shape "
                f"{tuple(x.shape)} to {tuple(out.shape)}; use a rule for weighted operations "
                "(Epsilon, ZPlus ...) there")
        return out

    @staticmethod
    def backward(ctx, R):
        # broadcast against a constant: the copies' relevance is summed back
        return (R if R.shape == ctx.shape else R.sum_to_size(ctx.shape)), None


def _broadcasts(small, big) -> bool:
    try:
        return torch.broadcast_shapes(small, big) == big
    except RuntimeError:
        return False


class Pass(Rule):
    """Relevance passes unchanged (element-wise activations, scaling by a constant)."""

    def __call__(self, call: OpCall):
        # trainable parameters (a linear layer's weight and bias) are constants, not inputs
        xs = [a for a in (*call.args, *call.kwargs.values()) if depends_on_input(a)]
        if len(xs) != 1:
            raise UnsupportedOperationError(
                f"model: {call.name} combines {len(xs)} input-dependent tensors; no relevance "
                f"rule for it ({call.where})")
        if call.kind in ("div",) and not (call.args and call.args[0] is xs[0]):
            raise UnsupportedOperationError(
                f"model: division by an input-dependent tensor has no LRP rule ({call.where})")
        return _PassFn.apply(xs[0], call)


class _SumFn(torch.autograd.Function):
    """Addition / subtraction: relevance in proportion to each summand's contribution."""

    @staticmethod
    def forward(ctx, holder, *tensors):
        z = holder.op.run_out_of_place()
        ctx.holder = holder
        holder.z = z.detach()
        return z

    @staticmethod
    def backward(ctx, R):
        h = ctx.holder
        eps = h.rule.epsilon
        s = _divide(R, h.z, eps)
        grads = []
        for t, coef in h.terms:  # (tensor, signed coefficient) of each input-dependent summand
            grads.append(None if coef is None else (coef * t * s).sum_to_size(t.shape))
        out = [g for g in grads if g is not None]
        if h.session is not None:
            h.session.records.append((h.index, h.label, sum(row_sums(g) for g in out)))
        return (None, *grads)


class AddRule(Rule):
    """Addition ``a + b`` of two input-dependent tensors (residual connections):
    ``R_a = a R / (a + b)``, ``R_b = b R / (a + b)``, ε-stabilised (subtraction likewise).

    With a constant summand (a shift such as input normalisation ``x - mean``, or a Python
    number) the relevance stays with the variable summand unchanged, as with the plain gradient;
    biases *inside* linear and convolution operations are handled by those operations' rules.
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = check_number(epsilon, "epsilon", low=0)

    def __call__(self, call: OpCall):
        name = getattr(call.func, "__name__", "")
        args = list(call.args)
        alpha = call.kwargs.get("alpha", 1)
        if len(args) < 2:
            args.append(call.kwargs.get("other"))
        a, b = args[0], args[1]
        if call.kind == "add":
            ca, cb = 1.0, float(alpha)
        elif name in ("__rsub__", "rsub"):  # other - alpha * self
            ca, cb = -float(alpha), 1.0
        else:
            ca, cb = 1.0, -float(alpha)
        terms = []
        for t, c in ((a, ca), (b, cb)):
            if depends_on_input(t):
                terms.append((t.detach(), c))
            else:
                terms.append((t, None))
        variables = [t for t in (a, b) if depends_on_input(t)]
        if len(variables) == 1:
            return _PassFn.apply(variables[0], call)
        holder = Holder(self, call, _label(call), call.session, call.index)
        holder.terms = terms
        tensors = [t if isinstance(t, torch.Tensor) else torch.zeros(()) for t in (a, b)]
        return _SumFn.apply(holder, *tensors)


class _ProductFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, a, b):
        ctx.shapes = (a.shape, b.shape)
        return call.run_out_of_place()

    @staticmethod
    def backward(ctx, R):
        half = R / 2
        return None, half.sum_to_size(ctx.shapes[0]), half.sum_to_size(ctx.shapes[1])


class ProductRule(Rule):
    """Element-wise products. With a constant factor the relevance passes unchanged
    (``z = c x`` gives ``x c R / z = R``); a product of two input-dependent tensors (a gate)
    splits it equally, the uniform rule of Achtibat et al. (2024), "AttnLRP"."""

    def __call__(self, call: OpCall):
        ts = [a for a in call.args[:2] if depends_on_input(a)]
        if len(ts) == 2 and call.kind == "mul":
            return _ProductFn.apply(call, call.args[0], call.args[1])
        return Pass()(call)
