"""LRP through transformers: rules for softmax, normalisation, bilinear products (AttnLRP, CP-LRP).

Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin & Samek (2024), "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers"; Ali, Schnake, Eberle, Montavon, Müller & Wolf
(2022), "XAI for Transformers: Better Explanations through Conservative Propagation" (CP-LRP).

The rules attach to *operations*, like every rule of :mod:`lumos.rules`, so any transformer
written with torch operations is covered (Hugging Face's eager attention, hand-written blocks):

====================  ====================================================================
operation             rule (``R``: relevance of the output ``z``; ``G = R / (z + ε sign z)``)
====================  ====================================================================
softmax ``s(x)``      AttnLRP: the ε-stabilised Taylor expansion at the input with its bias
                      term, ``R_i = x_i (v_i − s_i Σ_j v_j)``, ``v = s R / (s + ε)``, i.e.
                      ``x_i (R_i − s_i Σ_j R_j)`` for ε → 0 (not conservative: the bias
                      absorbs the rest). CP-LRP: the attention weights are constants, the
                      softmax passes no relevance (the value path carries all of it).
``A @ B``, einsum     the uniform rule: every product ``a_i b_j`` of the ε-LRP of the sum gets
(both input-          split in equal parts, ``R_A = ½ A ⊙ (G @ Bᵀ)``, ``R_B = ½ B ⊙ (Aᵀ @ G)``
dependent)            (an einsum of ``n`` input-dependent operands: ``1/n`` each). With one
                      input-dependent operand (a weight) this is the ε rule.
layer norm,           the identity rule on the normalisation: the division by the standard
RMS norm              deviation is a constant, so the norm is the affine map
                      ``γ ⊙ C x / σ + β`` (``C`` the centring; none for RMS norm) and gets the
                      ε rule (β leaks like any bias).
var, std, rsqrt,      normalisation statistics computed with torch operations (RMS norm as
sqrt, pow, square,    Llama writes it): constants, so ``x * rsqrt(var + eps)`` and
norm                  ``(x − μ) / sqrt(var + eps)`` pass relevance as the identity rule does.
GELU, SiLU, tanh ...  the identity rule (relevance passes unchanged; AttnLRP Prop. 3.2).
====================  ====================================================================

Element-wise products of two input-dependent tensors (gates, GELU written as ``x * Φ(x)``) use
the uniform rule of :class:`~lumos.rules.lrp.ProductRule`; linear layers the ε rule.

Only fused kernels hide the operations: ``F.scaled_dot_product_attention`` (Hugging Face's
``"sdpa"`` attention) is refused with an error naming it; build the model with
``attn_implementation="eager"``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .composites import PRESETS, WEIGHTED, LRPComposite
from .engine import OpCall, Rule, UnsupportedOperationError, depends_on_input, row_sums
from .lrp import AddRule, Epsilon, Holder, Pass, _const_param, _divide, _label, _record
from ..core.validation import check_number

__all__ = ["AttnSoftmax", "ConstantSoftmax", "Bilinear", "NormIdentity", "Statistic", "Addmm",
           "TransformerComposite", "attnlrp", "cp_lrp"]


def _absorbed(holder: Holder, R_out: torch.Tensor, R_in: torch.Tensor) -> None:
    """Per-sample relevance a rule did not pass on (``session.state["absorbed"]``)."""
    if holder.session is not None:
        lost = row_sums(R_out).to(torch.float64) - row_sums(R_in).to(torch.float64)
        st = holder.session.state
        st["absorbed"] = st["absorbed"] + lost if "absorbed" in st else lost


# --------------------------------------------------------------------------- softmax
def _softmax_dim(call: OpCall) -> int:
    dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise UnsupportedOperationError(
            f"model: the softmax rule needs an explicit integer dim ({call.where}); got {dim!r}")
    return dim


class _OneInputFn(torch.autograd.Function):
    """The operation run as it is, its output kept for the rule (``holder.z``) with its input."""

    @staticmethod
    def forward(ctx, x, holder):
        y = holder.op.run_out_of_place()
        holder.z = y.detach()
        ctx.holder, ctx.x = holder, x.detach()
        return y


class _SoftmaxFn(_OneInputFn):

    @staticmethod
    def backward(ctx, R):
        h, x = ctx.holder, ctx.x
        s, dim = h.z, h.terms
        v = s * _divide(R, s, h.rule.epsilon)
        R_in = (v - s * v.sum(dim, keepdim=True)).to(x.dtype)
        # masked scores (-inf, or a large negative number) have s = 0 and get nothing
        R_in = torch.where(torch.isfinite(x) & (s > 0), R_in * x, torch.zeros_like(R_in))
        _record(h, R_in)
        _absorbed(h, R, R_in)
        return R_in, None


class AttnSoftmax(Rule):
    """AttnLRP's softmax rule (Achtibat et al., 2024, Prop. 3.1).

    ``R_i = x_i Σ_j (∂s_j/∂x_i) R_j / (s_j + ε) = x_i (v_i − s_i Σ_j v_j)`` with
    ``v_j = s_j R_j / (s_j + ε)``: the Taylor expansion at the input, whose bias term keeps
    the rest (``ε → 0``: ``x_i (R_i − s_i Σ_j R_j)``).

    Parameters
    ----------
    epsilon : float, default 1e-6
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = check_number(epsilon, "epsilon", low=0)

    def __call__(self, call: OpCall):
        holder = Holder(self, call, _label(call), call.session, call.index)
        holder.terms = _softmax_dim(call)
        return _SoftmaxFn.apply(call.input, holder)


class ConstantSoftmax(Rule):
    """CP-LRP's softmax (Ali et al., 2022): the attention weights are constants.

    The output is computed without a graph, so the products that use it (``A @ V``) see a
    constant matrix and give all their relevance to the value path; queries and keys get none.
    """

    def __call__(self, call: OpCall):
        with torch.no_grad():
            return call.run_out_of_place()


# --------------------------------------------------------------------------- bilinear products
def _operands(call: OpCall) -> tuple[list, list[int], bool]:
    """The operands of a matmul / einsum call, the positions of the input-dependent ones, and
    whether they came in one list (``torch.einsum(eq, [a, b])``)."""
    args = list(call.args)
    is_einsum = getattr(call.func, "__name__", "") == "einsum"
    listed = is_einsum and len(args) == 2 and isinstance(args[1], (list, tuple))
    ops = list(args[1]) if listed else (args[1:] if is_einsum else args)
    pos = [i for i, t in enumerate(ops) if depends_on_input(t)]
    return ops, pos, listed


class _MultilinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, holder, *tensors):
        z = holder.op.run_out_of_place()
        holder.z = z.detach()
        ctx.holder = holder
        return z

    @staticmethod
    def backward(ctx, R):
        h = ctx.holder
        call, (ops, pos, listed) = h.op, h.terms
        G = _divide(R, h.z, h.rule.epsilon)
        leaves = [ops[i].detach().requires_grad_(True) for i in pos]
        new = list(ops)
        for i, leaf in zip(pos, leaves):
            new[i] = leaf
        is_einsum = getattr(call.func, "__name__", "") == "einsum"
        args = [call.args[0], new] if listed else ([call.args[0], *new] if is_einsum else new)
        with torch.enable_grad():
            z = call.func(*args, **call.kwargs)
            grads = torch.autograd.grad(z, leaves, G)
        n = len(leaves)
        out = [(leaf.detach() * g / n) for leaf, g in zip(leaves, grads)]
        if h.session is not None:
            h.session.records.append((h.index, h.label, sum(row_sums(r) for r in out)))
        return (None, *out)


class Bilinear(Rule):
    """The uniform rule for products of input-dependent tensors (AttnLRP, Prop. 3.3).

    ``z = A @ B`` (or an einsum) is a sum of products ``a_i b_j``; the ε rule distributes ``R``
    over the products, and each product gives ``1/n`` to each of its ``n`` input-dependent
    factors: ``R_A = ½ A ⊙ ∂(G · z)/∂A`` with ``G = R / (z + ε sign z)``. With one
    input-dependent operand (an einsum with a weight) it is the ε rule of a bias-free linear map.

    Parameters
    ----------
    epsilon : float, default 1e-6
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = check_number(epsilon, "epsilon", low=0)

    def __call__(self, call: OpCall):
        ops, pos, listed = _operands(call)
        holder = Holder(self, call, _label(call), call.session, call.index)
        holder.terms = (ops, pos, listed)
        return _MultilinearFn.apply(holder, *[ops[i] for i in pos])


# --------------------------------------------------------------------------- normalisation
_NORM_ARGS = {
    "layer_norm": (("input", "normalized_shape", "weight", "bias", "eps"),
                   {"weight": None, "bias": None, "eps": 1e-5}),
    "rms_norm": (("input", "normalized_shape", "weight", "eps"), {"weight": None, "eps": None}),
}


class _NormFn(_OneInputFn):

    @staticmethod
    def backward(ctx, R):
        h, x = ctx.holder, ctx.x
        kind, dims, weight, eps_norm = h.terms
        u = _divide(R, h.z, h.rule.epsilon)
        if kind == "layer_norm":
            c = x - x.mean(dims, keepdim=True)
            sigma = torch.sqrt(c.pow(2).mean(dims, keepdim=True) + eps_norm)
        else:
            sigma = torch.sqrt(x.pow(2).mean(dims, keepdim=True) + eps_norm)
        if weight is not None:
            u = u * weight
        u = u / sigma
        if kind == "layer_norm":  # the transpose of the centring (symmetric)
            u = u - u.mean(dims, keepdim=True)
        R_in = x * u
        _record(h, R_in)
        return R_in, None


class NormIdentity(Rule):
    """Layer norm and RMS norm with the division by the standard deviation held constant
    (the identity rule on the normalisation; Ali et al., 2022; Achtibat et al., 2024).

    ``y = γ ⊙ C x / σ + β`` is then affine in ``x`` and gets the ε rule:
    ``R_j = x_j Σ_k (γ_k C_kj / σ) R_k / (y_k + ε sign y_k)``; ``C = I − 11ᵀ/n`` (layer norm,
    the centring) or ``I`` (RMS norm). Without ``β`` it conserves relevance.

    Parameters
    ----------
    epsilon : float, default 1e-6
    """

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = check_number(epsilon, "epsilon", low=0)

    def __call__(self, call: OpCall):
        kind = getattr(call.func, "__name__", "")
        names, defaults = _NORM_ARGS[kind]
        a = dict(defaults)
        a.update(zip(names, call.args))
        a.update(call.kwargs)
        x = a["input"]
        shape = a["normalized_shape"]
        n = 1 if isinstance(shape, int) else len(shape)
        dims = tuple(range(-n, 0))
        weight = _const_param(a["weight"], "weight", call)
        eps = a["eps"] if a["eps"] is not None else torch.finfo(x.dtype).eps
        holder = Holder(self, call, _label(call), call.session, call.index)
        holder.terms = (kind, dims, weight, float(eps))
        _const_param(a.get("bias"), "bias", call)
        return _NormFn.apply(x, holder)


class Statistic(Rule):
    """A normalisation statistic (``var``, ``std``, ``rsqrt``, ``sqrt``, ``pow``, ``norm``):
    computed as a constant, so the division or product that uses it passes relevance unchanged
    (the identity rule on normalisations written with torch operations)."""

    def __call__(self, call: OpCall):
        with torch.no_grad():
            return call.run_out_of_place()


# --------------------------------------------------------------------------- addmm (GPT-2's Conv1D)
class Addmm(Rule):
    """``torch.addmm(b, x, W)`` (``b + x @ W``; Hugging Face's ``Conv1D`` in GPT-2) is the linear
    layer ``F.linear(x, Wᵀ, b)`` and gets that layer's rule (the ε rule; ``b`` leaks like any
    bias). With ``W`` input-dependent too it is a bilinear product plus ``b`` and is refused.

    Parameters
    ----------
    linear : Rule
        The rule of linear layers (the composite's ε rule).
    """

    def __init__(self, linear: Rule):
        self.linear = linear

    def __call__(self, call: OpCall):
        names = ("input", "mat1", "mat2")
        a = dict(zip(names, call.args))
        a.update({k: v for k, v in call.kwargs.items() if k in names})
        beta, alpha = call.kwargs.get("beta", 1), call.kwargs.get("alpha", 1)
        b, x, W = a["input"], a["mat1"], a["mat2"]
        if depends_on_input(W) or depends_on_input(b) or not depends_on_input(x):
            raise UnsupportedOperationError(
                f"model: {call.session.method if call.session else 'lrp'} has a rule for "
                f"torch.addmm(bias, x, weight) with a constant bias and weight only ({call.where})")
        # constants (parameters outside a method's frozen pass too): detached, so the linear
        # rule sees them as weights
        b = b.detach() if isinstance(b, torch.Tensor) else b
        W = W.detach()
        bias = b if beta == 1 else b * beta
        weight = (W if alpha == 1 else W * alpha).t()
        lin = dataclasses.replace(call, kind="linear", func=F.linear, args=(x, weight, bias),
                                  kwargs={}, inplace=False)
        return self.linear(lin)


# --------------------------------------------------------------------------- composites
class TransformerComposite(LRPComposite):
    """LRP for transformers: AttnLRP (``variant="attnlrp"``) or CP-LRP (``variant="cp_lrp"``).

    ε (the same ``epsilon``) on linear layers, matrix products with a weight, sums and means,
    and in the additions' proportional split, as in :class:`~lumos.rules.composites.LRPComposite`; the rules of this module on softmax,
    bilinear products, layer / RMS norm and normalisation statistics; the identity rule on
    element-wise activations (GELU, SiLU, tanh ...), without the warning plain LRP gives.

    Parameters
    ----------
    variant : {"attnlrp", "cp_lrp"}
    epsilon : float, default 1e-6
    canonize : bool, default True
    """

    def __init__(self, variant: str = "attnlrp", epsilon: float = 1e-6, canonize: bool = True):
        if variant not in ("attnlrp", "cp_lrp"):
            raise ValueError(f"variant must be 'attnlrp' or 'cp_lrp'; got {variant!r}")
        eps = check_number(epsilon, "epsilon", low=0)
        mapping: dict = {k: Epsilon(eps) for k in WEIGHTED}
        mapping.update(add=AddRule(eps), sub=AddRule(eps), activation=Pass())
        super().__init__(mapping, canonize=canonize, name=variant)
        self.rules.update(
            softmax=AttnSoftmax(eps) if variant == "attnlrp" else ConstantSoftmax(),
            norm=NormIdentity(eps), stat=Statistic(), einsum=Bilinear(eps),
            addmm=Addmm(self.rules["linear"]))
        self.bilinear = Bilinear(eps)

    def _choose(self, call: OpCall) -> Rule | None:
        if call.kind == "matmul" and sum(depends_on_input(a) for a in call.args[:2]) == 2:
            return self.bilinear
        return super()._choose(call)

    def unsupported(self, call: OpCall) -> str | None:
        name = getattr(call.func, "__name__", "")
        if call.kind == "softmax" and name != "softmax":
            return (f"{self.name} has rules for softmax, not for {name} (a log-softmax on the way "
                    "to the output: explain the logits instead)")
        if call.kind == "norm" and name not in _NORM_ARGS:
            return f"{self.name} has rules for layer norm and RMS norm, not for {name}"
        return None


def attnlrp(epsilon: float = 1e-6, canonize: bool = True) -> TransformerComposite:
    """AttnLRP (Achtibat et al., 2024): relevance through softmax attention and bilinear
    products."""
    return TransformerComposite("attnlrp", epsilon, canonize)


def cp_lrp(epsilon: float = 1e-6, canonize: bool = True) -> TransformerComposite:
    """CP-LRP (Ali et al., 2022): attention weights held constant, relevance along the values."""
    return TransformerComposite("cp_lrp", epsilon, canonize)


PRESETS.update(attnlrp=attnlrp, cp_lrp=cp_lrp)
