"""Canonisation: rewrite the network into a form the LRP rules were derived for.

Batch norm with running statistics is an affine map per channel. When it directly follows a
convolution or linear operation (and nothing else reads that operation's output), the pair is
one affine map ``a (W x + b) + shift = (a W) x + (a b + shift)``; the rule chosen for the
convolution is then applied to the merged weights (Guillemot et al., 2020, "Breaking Batch
Normalization for better explainability of Deep Neural Networks through Layer-wise Relevance
Propagation"; Zennit's ``MergeBatchNorm``). The merge is done on the *operations* during the call:
no parameter of the model is ever written, so the model is trivially left as found, and batch norms
called functionally or from a reused module are merged as well.
"""
from __future__ import annotations

import torch

from .engine import OpCall, Rule, UnsupportedOperationError
from .lrp import BatchNormOp, ConvOp, LinearOp

__all__ = ["FoldBatchNorm", "track_uses"]


class _FoldedFn(torch.autograd.Function):
    """Forward: the batch norm itself; backward: relevance passes to the merged operation."""

    @staticmethod
    def forward(ctx, x, call, holder):
        y = call.run_out_of_place()
        if holder.z is not None:  # the merged operation's output is the batch norm's output
            holder.z = y.detach()
        return y

    @staticmethod
    def backward(ctx, R):
        return R, None, None


class FoldBatchNorm(Rule):
    """Merge a batch norm into the convolution / linear operation that produced its input.

    Parameters
    ----------
    fallback : Rule
        Used when the batch norm cannot be merged (its input is not the direct, sole-use output of
        a convolution or linear operation): the batch norm is then an affine layer of its own.
    """

    def __init__(self, fallback: Rule):
        self.fallback = fallback

    def __call__(self, call: OpCall):
        bn = BatchNormOp(call)
        x = bn.x
        producers = call.session.state.get("producers", {}) if call.session else {}
        entry = producers.get(id(x))
        if entry is None or entry[0]() is not x or entry[2] != 1:
            return self.fallback(call)
        holder = entry[1]
        op = holder.op
        mergeable = (isinstance(op, LinearOp) and x.ndim == 2) or (
            isinstance(op, ConvOp) and not op.transposed)
        if holder.folded or not mergeable or op.W.shape[0] != bn.W.shape[0]:
            return self.fallback(call)
        shape = (-1,) + (1,) * (op.W.ndim - 1)
        op.W = op.W * bn.W.view(shape)
        op.b = bn.b if op.b is None else op.b * bn.W + bn.b
        holder.folded = True
        holder.label = holder.label + "+bn"
        call.session.state.setdefault("folded", []).append(call.module_name or "<root>")
        return _FoldedFn.apply(x, call, holder)


def track_uses(session, args, kwargs) -> None:
    """Count the uses of each ruled operation's output; a merged output read elsewhere is an error."""
    producers = session.state.get("producers")
    if not producers:
        return
    for a in _tensors(args, kwargs):
        entry = producers.get(id(a))
        if entry is None or entry[0]() is not a:
            continue
        if entry[1].folded:
            raise UnsupportedOperationError(
                f"model: lrp canonisation merged a batch norm into {entry[1].label}, whose output "
                "is also read by another operation; pass canonize=False"
            )
        entry[2] += 1


def _tensors(args, kwargs):
    for a in args:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            yield v
