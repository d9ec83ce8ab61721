"""DeepLIFT rules on operations: the Rescale rule and its companions.

Shrikumar, Greenside & Kundaje (2017), "Learning Important Features Through Propagating Activation
Differences". DeepLIFT propagates *multipliers* ``m = Δy / Δx`` (differences from a reference
input) instead of gradients. Linear operations (linear, convolution, batch norm in eval mode,
average pooling, additions, constant scalings, reshaping) already have their gradient as exact
multiplier; only the non-linear operations get a rule:

- element-wise activations (ReLU, sigmoid, tanh, GELU ...), the Rescale rule:
  ``m = (g(x) − g(x₀)) / (x − x₀)``, the derivative ``g'(x)`` where ``|x − x₀| <= eps``;
- max pooling: each window's ``Δy = x_a − x₀_b`` (``a``, ``b``: the winners at the input and at
  the reference) is written exactly as ``λ Δx_a + (1 − λ) Δx_b`` with
  ``λ = (x_a − x_b) / ((x_a − x_b) + (x₀_b − x₀_a)) ∈ [0, 1]`` (½ on ties);
- products of two input-dependent tensors: ``Δ(ab) = Δa (b + b₀)/2 + Δb (a + a₀)/2`` (exact,
  the Shapley split of the two factors).

Summation-to-delta then holds exactly (up to float error and the ``eps`` fallback).

The reference's forward pass runs first, under ``no_grad``, and records the inputs of each
non-linear operation; the input's pass then replays them in call order. So each row costs one
forward pass without graph, one with, and one backward pass — about 1.5 gradient computations.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from .engine import Composite, OpCall, Rule, UnsupportedOperationError

__all__ = ["DeepLiftComposite", "Rescale", "MaxPoolRescale", "ProductRescale"]

_WITH_INDICES = {
    F.max_pool1d: F.max_pool1d_with_indices, F.max_pool2d: F.max_pool2d_with_indices,
    F.max_pool3d: F.max_pool3d_with_indices,
    F.adaptive_max_pool1d: F.adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d: F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d: F.adaptive_max_pool3d_with_indices,
}


def _run_with(call: OpCall, u: torch.Tensor):
    """The call's operation on ``u`` instead of its first tensor argument, out of place."""
    args = list(call.args)
    kwargs = dict(call.kwargs)
    if "inplace" in kwargs:
        kwargs["inplace"] = False
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            args[i] = u
            break
    else:
        kwargs["input" if "input" in kwargs else "self"] = u
    if call.inplace and "inplace" not in call.kwargs:
        u = u.clone()
        args[0] = u
    return call.func(*args, **kwargs)


def _derivative(call: OpCall, u: torch.Tensor) -> torch.Tensor:
    if call.kind == "relu":
        return (u > 0).to(u.dtype)
    with torch.enable_grad():
        uu = u.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(_run_with(call, uu * 1).sum(), uu)
    return d


class _RescaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, call, u0, y0, eps):
        y = call.run_out_of_place()
        du = u - u0
        if call.kind == "relu":
            # The ReLU's secant lies in [0, 1] however small Δx is (1 or 0 on one side of zero),
            # so only Δx = 0 (0/0) needs the derivative [x > 0] = [relu(x) > 0].
            m = torch.where(du == 0, (y > 0).to(y.dtype), (y - y0).div_(du))
        else:
            m = (y - y0).div_(du)
            adu = du.abs_()
            if bool(adu.amin() <= eps):  # one reduction; the mask only where it is needed
                m = torch.where(adu <= eps, _derivative(call, u), m)
        ctx.m = m
        return y

    @staticmethod
    def backward(ctx, g):
        return g * ctx.m, None, None, None, None


def _flat(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A view of ``(N, C, *spatial)`` with the spatial axes flattened, without copying:
    ``(N, C, L)`` (gather dim 2) for contiguous tensors, ``(N, L, C)`` (dim 1) for channels-last."""
    if t.is_contiguous():
        return t.flatten(2), 2
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).flatten(1, 2), 1
    if t.ndim == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return t.permute(0, 2, 3, 4, 1).flatten(1, 3), 1
    return t.contiguous().flatten(2), 2


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` in the memory layout of ``ref`` (so that their flat views line up)."""
    if ref.is_contiguous() or t.ndim not in (4, 5):
        return t.contiguous()
    fmt = torch.channels_last if t.ndim == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


class _MaxPoolFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, f, bound, u0, y0, idx0):
        y, idx = f(*bound.args, **bound.kwargs)
        uf, d = _flat(u)
        ia = _flat(_like(idx, u))[0]
        u0f = _flat(_like(u0, u))[0]
        ib = _flat(_like(idx0, u))[0]
        yf = _flat(_like(y, u))[0]
        y0f = _flat(_like(y0, u))[0]
        if u0f.shape[0] != uf.shape[0]:  # one shared reference: broadcast views, no copies
            u0f, ib, y0f = u0f.expand_as(uf), ib.expand_as(ia), y0f.expand_as(yf)
        # x_a = y and x0_b = y0 are the pooled outputs; two gathers give the other two values
        gap_x = yf - uf.gather(d, ib)                       # >= 0: a wins at the input
        gap_0 = y0f - u0f.gather(d, ia)                     # >= 0: b wins at the reference
        # Ties: when a also wins at the reference (or b at the input), that one position takes
        # the whole difference, whatever index the pooling kernel reported for the tie.
        tie_b = gap_0 == 0
        ib = torch.where(tie_b, ia, ib)
        ia = torch.where((gap_x == 0) & ~tie_b, ib, ia)
        # λ = gap_x / (gap_x + gap_0); 0/0 (a tie on both sides) is the only NaN: split evenly
        lam = gap_x.div_(gap_0.add_(gap_x)).nan_to_num_(nan=0.5)
        ctx.ia, ctx.ib, ctx.lam, ctx.d = ia, ib, lam, d
        ctx.shapes, ctx.fmt_u = (u.shape, uf.shape), u
        return y

    @staticmethod
    def backward(ctx, g):
        d = ctx.d
        shape, flat_shape = ctx.shapes
        gf = _flat(_like(g, ctx.fmt_u))[0]
        out = torch.zeros(flat_shape, dtype=g.dtype, device=g.device)
        out.scatter_add_(d, ctx.ia, gf * ctx.lam)
        out.scatter_add_(d, ctx.ib, gf * (1 - ctx.lam))
        if d == 2:
            return out.reshape(shape), None, None, None, None, None
        n, c = shape[0], shape[1]
        spatial = tuple(shape[2:])
        full = out.reshape((n,) + spatial + (c,))
        order = (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
        return full.permute(order), None, None, None, None, None


class _ProductFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, call, a0, b0):
        ctx.ma, ctx.mb = (b + b0) / 2, (a + a0) / 2
        ctx.sa, ctx.sb = a.shape, b.shape
        return call.run_out_of_place()

    @staticmethod
    def backward(ctx, g):
        return ((g * ctx.ma).sum_to_size(ctx.sa), (g * ctx.mb).sum_to_size(ctx.sb),
                None, None, None)


class _DLRule(Rule):
    def __init__(self, composite: "DeepLiftComposite"):
        self._c = composite

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Rescale(_DLRule):
    """The Rescale rule on an element-wise non-linearity."""

    def __call__(self, call: OpCall):
        c = self._c
        if c.mode == "record":
            y = call.run_out_of_place()
            c.records.append((call.kind, call.input.detach(), y.detach()))
            return y
        u0, y0 = c.take(call)
        u = call.input
        if not u.requires_grad:
            return call.run_out_of_place()
        c.check_shape(call, u, u0)
        return _RescaleFn.apply(u, call, u0, y0, c.eps)


class MaxPoolRescale(_DLRule):
    """Max pooling: the window's difference split exactly between the two winners."""

    def __call__(self, call: OpCall):
        f = _WITH_INDICES.get(call.func)
        if f is None:
            raise UnsupportedOperationError(
                f"model: deeplift supports max pooling through torch.nn.functional / nn.MaxPool "
                f"only ({call.where})")
        bound = inspect.signature(f).bind(*call.args, **call.kwargs)
        if bound.arguments.get("return_indices"):
            raise UnsupportedOperationError(
                f"model: deeplift has no rule for max pooling that returns indices ({call.where})")
        bound.arguments["return_indices"] = True
        c = self._c
        u = bound.arguments["input"]
        if u.ndim < 3:
            raise UnsupportedOperationError(
                f"model: deeplift needs batched max pooling input (batch, channels, ...) "
                f"({call.where})")
        if c.mode == "record":
            y, idx = f(*bound.args, **bound.kwargs)
            c.records.append((call.kind, u.detach(), (y.detach(), idx)))
            return y
        u0, (y0, idx0) = c.take_pair(call)
        if not u.requires_grad:
            return f(*bound.args, **bound.kwargs)[0]
        c.check_shape(call, u, u0)
        return _MaxPoolFn.apply(u, f, bound, u0, y0, idx0)


class ProductRescale(_DLRule):
    """Products of two input-dependent tensors (gates); products with constants are linear."""

    def __call__(self, call: OpCall):
        c = self._c
        a = call.args[0]
        b = call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
        if c.mode == "record":
            c.records.append((call.kind, _det(a), _det(b)))
            return call.run_out_of_place()
        a0, b0 = c.take(call)
        ga = isinstance(a, torch.Tensor) and a.requires_grad
        gb = isinstance(b, torch.Tensor) and b.requires_grad
        if not (ga and gb):
            return call.run_out_of_place()
        return _ProductFn.apply(a, b, call, a0, b0)


def _det(t):
    return t.detach() if isinstance(t, torch.Tensor) else t


class DeepLiftComposite(Composite):
    """The DeepLIFT Rescale rules; record the reference's pass, then replay it for the input's.

    Parameters
    ----------
    eps : float, default 1e-6
        Below this ``|x − x₀|`` the Rescale multiplier falls back to the derivative.
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__({}, strict=True, needs_names=True, name="deeplift_rescale")
        self.see_all = True
        self.eps = float(eps)
        self.mode = "record"
        self.records: list = []
        self.pos = 0
        self.ref_index: torch.Tensor | None = None
        rescale = Rescale(self)
        self.rules = {"relu": rescale, "activation": rescale, "max_pool": MaxPoolRescale(self),
                      "mul": ProductRescale(self)}

    def replay(self, ref_index: torch.Tensor | None = None) -> None:
        """Replay the records; row ``r`` of the input pairs with reference ``ref_index[r]``
        (``None``: row ``r`` with reference ``r``, or the single shared reference)."""
        self.mode, self.pos, self.ref_index = "replay", 0, ref_index

    def _select(self, t):
        if self.ref_index is None or not isinstance(t, torch.Tensor) or t.ndim == 0 \
                or t.shape[0] == 1:
            return t
        return t.index_select(0, self.ref_index)

    def take(self, call: OpCall):
        if self.pos >= len(self.records) or self.records[self.pos][0] != call.kind:
            raise UnsupportedOperationError(
                f"model: deeplift: the forward pass of the input took a different path than the "
                f"reference's at {call.where} (data-dependent control flow); DeepLIFT needs the "
                "same operations in the same order for both")
        rec = self.records[self.pos]
        self.pos += 1
        return self._select(rec[1]), self._select(rec[2])

    def take_pair(self, call: OpCall):
        """Like :meth:`take`, for records whose second entry is a pair of tensors."""
        u0, pair = self.take(call)
        return u0, tuple(self._select(t) for t in pair)

    def check_shape(self, call: OpCall, u, u0) -> None:
        if u0.shape[1:] != u.shape[1:] or u0.shape[0] not in (1, u.shape[0]):
            raise UnsupportedOperationError(
                f"model: deeplift: {call.where} sees shape {tuple(u.shape)} for the input but "
                f"{tuple(u0.shape)} for the reference")

    def finish(self) -> None:
        if self.pos != len(self.records):
            raise UnsupportedOperationError(
                "model: deeplift: the input's forward pass met fewer non-linear operations than "
                "the reference's (data-dependent control flow)")

    def unsupported(self, call: OpCall) -> str | None:
        k = call.kind
        if k == "softmax":
            return ("DeepLIFT explains a logit: the model applies a softmax on the way to the "
                    "output; pass the model without it")
        if k == "norm":
            return "layer/group/instance normalisation has no DeepLIFT rule in lumos"
        if k == "div":
            den = call.args[1] if len(call.args) > 1 else call.kwargs.get("other")
            if isinstance(den, torch.Tensor) and den.requires_grad:
                return "division by an input-dependent tensor has no DeepLIFT rule"
        if k == "matmul" and all(isinstance(a, torch.Tensor) and a.requires_grad
                                 for a in call.args[:2]):
            return "a product of two input-dependent matrices has no DeepLIFT rule"
        if k == "batch_norm":
            from .lrp import BatchNormOp

            BatchNormOp(call)  # raises for batch statistics (training mode)
        return None
