"""LRP through transformers (AttnLRP, CP-LRP): each rule against a naive float64 reference,
conservation through attention blocks (hand-written and Hugging Face BERT), clear errors."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from lumos.attribution.lrp import lrp
from lumos.rules import UnsupportedOperationError, apply
from lumos.rules.engine import propagate
from lumos.rules.transformer import attnlrp, cp_lrp

EPS = 1e-3  # a visible ε in the rule tests, so that the stabiliser is checked too
D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _run(composite, fn, *inputs, R):
    """Relevance of each input under ``composite`` for the output relevance ``R``."""
    xs = [t.clone().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        with apply(None, composite, method="lrp") as session:
            out = fn(*xs)
        grads = torch.autograd.grad(out, xs, R, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads)], out, session


def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


# ------------------------------------------------------------------ naive references
def naive_softmax(x, R, eps):
    """``R_i = x_i Σ_j (∂s_j/∂x_i) R_j / (s_j + ε)`` row by row, the Jacobian written out."""
    out = np.zeros_like(x)
    for idx in itertools.product(*[range(n) for n in x.shape[:-1]]):
        xr, Rr = x[idx], R[idx]
        s = np.exp(xr - xr.max())
        s /= s.sum()
        n = len(s)
        for i in range(n):
            out[idx + (i,)] = sum(xr[i] * s[j] * ((i == j) - s[i]) * Rr[j] / (s[j] + eps)
                                  for j in range(n))
    return out


def naive_bilinear(A, B, R, eps):
    """``z_ik = Σ_j A_ij B_jk``: each product A_ij B_jk gets its ε-LRP share of R_ik, half of
    it to each factor (batched over leading axes)."""
    RA, RB = np.zeros_like(A), np.zeros_like(B)
    for b in range(A.shape[0]):
        z = A[b] @ B[b]
        for i, j, k in itertools.product(range(A.shape[1]), range(A.shape[2]), range(B.shape[2])):
            share = A[b, i, j] * B[b, j, k] * R[b, i, k] / _stab(z[i, k], eps)
            RA[b, i, j] += share / 2
            RB[b, j, k] += share / 2
    return RA, RB


def naive_constant_matmul(A, V, R, eps):
    """ε-LRP of ``z = A V`` with ``A`` a constant matrix: relevance of ``V`` only."""
    RV = np.zeros_like(V)
    for b in range(A.shape[0]):
        z = A[b] @ V[b]
        for i, j, k in itertools.product(range(A.shape[1]), range(A.shape[2]), range(V.shape[2])):
            RV[b, j, k] += A[b, i, j] * V[b, j, k] * R[b, i, k] / _stab(z[i, k], eps)
    return RV


def naive_norm(x, gamma, beta, R, eps, ln_eps, centre):
    """The norm as the explicit affine map ``y = M x + β`` with σ held constant,
    ``M = diag(γ / σ) (I − 11ᵀ / n)`` (RMS norm: no centring), then the ε rule."""
    out = np.zeros_like(x)
    n = x.shape[-1]
    for idx in itertools.product(*[range(m) for m in x.shape[:-1]]):
        xr = x[idx]
        if centre:
            sigma = np.sqrt(((xr - xr.mean()) ** 2).mean() + ln_eps)
            C = np.eye(n) - np.ones((n, n)) / n
        else:
            sigma = np.sqrt((xr ** 2).mean() + ln_eps)
            C = np.eye(n)
        M = (gamma / sigma)[:, None] * C
        Z = M * xr[None, :]
        z = Z.sum(1) + beta
        out[idx] = (Z * (R[idx] / _stab(z, eps))[:, None]).sum(0)
    return out


# ------------------------------------------------------------------ each rule = its reference
def test_softmax_rule_equals_naive_reference():
    g = _gen(1)
    x = torch.randn(2, 3, 5, generator=g, dtype=D) * 2
    R = torch.randn(2, 3, 5, generator=g, dtype=D)
    (Rx,), _, _ = _run(attnlrp(EPS), lambda t: F.softmax(t, dim=-1), x, R=R)
    ref = naive_softmax(x.numpy(), R.numpy(), EPS)
    np.testing.assert_allclose(Rx.numpy(), ref, rtol=0, atol=1e-10)
    # ε → 0: the closed form x_i (R_i − s_i Σ_j R_j) of the paper, for every spelling
    s = F.softmax(x, -1)
    closed = x * (R - s * R.sum(-1, keepdim=True))
    for fn in (lambda t: t.softmax(-1), lambda t: torch.softmax(t, -1)):
        (Rx0,), _, _ = _run(attnlrp(0.0), fn, x, R=R)
        assert (Rx0 - closed).abs().max() <= 1e-10
    # the rule is not the gradient (which would be x ⊙ J R, without the 1/s)
    assert (Rx0 - x * torch.autograd.functional.vjp(lambda t: F.softmax(t, -1), x, R)[1]
            ).abs().max() > 1e-2


def test_bilinear_matmul_and_einsum_equal_naive_uniform_rule():
    g = _gen(2)
    A = torch.randn(2, 3, 4, generator=g, dtype=D)
    B = torch.randn(2, 4, 5, generator=g, dtype=D)
    R = torch.randn(2, 3, 5, generator=g, dtype=D)
    RA_ref, RB_ref = naive_bilinear(A.numpy(), B.numpy(), R.numpy(), EPS)
    for fn in (torch.matmul, lambda a, b: a @ b, torch.bmm,
               lambda a, b: torch.einsum("bij,bjk->bik", a, b),
               lambda a, b: torch.einsum("bij,bjk->bik", [a, b])):
        (RA, RB), _, _ = _run(attnlrp(EPS), fn, A, B, R=R)
        np.testing.assert_allclose(RA.numpy(), RA_ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(RB.numpy(), RB_ref, rtol=0, atol=1e-10)
    # an einsum with a constant weight is the ε rule of a bias-free linear map
    W = torch.randn(4, 5, generator=g, dtype=D)
    (RA,), _, _ = _run(attnlrp(EPS), lambda a: torch.einsum("bij,jk->bik", a, W), A, R=R[:, :, :5])
    Wb = W.expand(2, 4, 5).numpy()
    ref = np.zeros_like(A.numpy())
    for b, i, j, k in itertools.product(range(2), range(3), range(4), range(5)):
        z = A[b, i].numpy() @ Wb[b][:, k]
        ref[b, i, j] += A[b, i, j].item() * Wb[b, j, k] * R[b, i, k].item() / _stab(z, EPS)
    np.testing.assert_allclose(RA.numpy(), ref, rtol=0, atol=1e-10)


def test_cp_lrp_softmax_is_constant_and_value_path_carries_relevance():
    g = _gen(3)
    S = torch.randn(2, 3, 4, generator=g, dtype=D)
    V = torch.randn(2, 4, 5, generator=g, dtype=D)
    R = torch.randn(2, 3, 5, generator=g, dtype=D)
    (RS, RV), _, _ = _run(cp_lrp(EPS), lambda s, v: F.softmax(s, -1) @ v, S, V, R=R)
    assert RS.abs().max() == 0
    ref = naive_constant_matmul(F.softmax(S, -1).numpy(), V.numpy(), R.numpy(), EPS)
    np.testing.assert_allclose(RV.numpy(), ref, rtol=0, atol=1e-10)
    # AttnLRP gives the scores their share instead
    (RS2, _), _, _ = _run(attnlrp(EPS), lambda s, v: F.softmax(s, -1) @ v, S, V, R=R)
    assert RS2.abs().max() > 1e-3


@pytest.mark.parametrize("centre", [True, False])
def test_layer_and_rms_norm_identity_rule_equal_naive_reference(centre):
    g = _gen(4)
    x = torch.randn(2, 3, 6, generator=g, dtype=D) * 3 + 1
    R = torch.randn(2, 3, 6, generator=g, dtype=D)
    gamma = torch.randn(6, generator=g, dtype=D)
    beta = torch.randn(6, generator=g, dtype=D) * 0.3
    if centre:
        fn = lambda t: F.layer_norm(t, (6,), gamma, beta, 1e-5)  # noqa: E731
        b = beta.numpy()
    else:
        fn = lambda t: F.rms_norm(t, (6,), gamma, 1e-5)  # noqa: E731
        b = np.zeros(6)
    (Rx,), _, _ = _run(attnlrp(EPS), fn, x, R=R)
    ref = naive_norm(x.numpy(), gamma.numpy(), b, R.numpy(), EPS, 1e-5, centre)
    np.testing.assert_allclose(Rx.numpy(), ref, rtol=0, atol=1e-10)


def _hand_layer_norm(t, gamma, eps=1e-5):
    mu = t.mean(-1, keepdim=True)
    c = t - mu
    var = c.pow(2).mean(-1, keepdim=True)
    return c / torch.sqrt(var + eps) * gamma


def _hand_rms_norm(t, gamma, eps=1e-6):  # as Llama writes it
    var = t.pow(2).mean(-1, keepdim=True)
    return gamma * (t * torch.rsqrt(var + eps))


def test_norms_written_with_torch_ops_equal_the_fused_rule():
    g = _gen(5)
    x = torch.randn(2, 3, 6, generator=g, dtype=D) + 0.5
    R = torch.randn(2, 3, 6, generator=g, dtype=D)
    gamma = torch.randn(6, generator=g, dtype=D)
    pairs = [(lambda t: _hand_layer_norm(t, gamma), lambda t: F.layer_norm(t, (6,), gamma, None, 1e-5)),
             (lambda t: _hand_rms_norm(t, gamma), lambda t: F.rms_norm(t, (6,), gamma, 1e-6))]
    for hand, fused in pairs:
        (a,), _, _ = _run(attnlrp(0.0), hand, x, R=R)
        (b,), _, _ = _run(attnlrp(0.0), fused, x, R=R)
        assert (a - b).abs().max() <= 1e-10
        assert abs(a.sum() - R.sum()) <= 1e-10 * R.abs().sum()  # conservative without β


@pytest.mark.parametrize("act", [F.gelu, F.silu, torch.tanh, lambda t: F.gelu(t, approximate="tanh")])
def test_elementwise_activations_pass_relevance_unchanged(act):
    g = _gen(6)
    x = torch.randn(3, 7, generator=g, dtype=D)
    R = torch.randn(3, 7, generator=g, dtype=D)
    (Rx,), _, _ = _run(attnlrp(EPS), act, x, R=R)
    assert (Rx - R).abs().max() == 0
    # GELU written as x Φ(x) (uniform rule on the gate) also gives R back, element by element
    (Rx2,), _, _ = _run(attnlrp(EPS), lambda t: t * torch.sigmoid(1.702 * t), x, R=R)
    assert (Rx2 - R).abs().max() <= 1e-12


# ------------------------------------------------------------------ whole blocks
class Block(nn.Module):
    """Single-head self-attention + layer norm + GELU MLP, all linear layers bias-free."""

    def __init__(self, d=8, n_cls=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.ln1 = nn.LayerNorm(d, elementwise_affine=True, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.up, self.down = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)
        self.head = nn.Linear(d, n_cls, bias=False)
        with torch.no_grad():
            self.ln1.weight.normal_(1, 0.3)
            self.head.weight.mul_(3)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        h = self.ln1(x + self.o(a @ v))
        h = self.ln2(h + self.down(F.gelu(self.up(h))))
        return self.head(h.sum(1))


def _tokens(n=3, t=5, d=8, seed=7):
    return torch.randn(n, t, d, generator=_gen(seed), dtype=D)


def _conservation(model, x, comp, target=0):
    p, values, sessions = propagate(model, x, target, comp, method="lrp", start="relevance")
    start = torch.cat([s.state["start_total"] for s in sessions]).double()
    total = values.reshape(len(values), -1).sum(1).double()
    absorbed = torch.cat([s.state["absorbed"] for s in sessions]) if "absorbed" in sessions[0].state \
        else torch.zeros_like(total)
    return start, total, absorbed, values


def test_cp_lrp_conserves_through_a_hand_written_block():
    model = Block().double().eval()
    x = _tokens()
    start, total, absorbed, _ = _conservation(model, x, cp_lrp(0.0))
    assert absorbed.abs().max() == 0
    assert ((start - total).abs() <= 1e-4 * start.abs()).all()
    assert start.abs().min() > 1e-3  # a logit that is not ~0, so the check means something


def test_attnlrp_conserves_up_to_the_softmax_bias_through_a_block():
    model = Block().double().eval()
    x = _tokens()
    start, total, absorbed, _ = _conservation(model, x, attnlrp(0.0))
    assert ((start - total - absorbed).abs() <= 1e-4 * start.abs()).all()
    assert absorbed.abs().max() > 1e-6  # the softmax's bias term does take a share here


def test_cp_lrp_without_nonlinearities_is_gradient_times_input_with_constant_attention():
    """With the attention weights constant and no other non-linearity, the model is linear and
    bias-free in x: LRP-0 is then gradient × input of that linear map."""
    torch.manual_seed(3)
    q, k, v, head = (nn.Linear(6, 6, bias=False).double() for _ in range(4))

    class Att(nn.Module):
        def __init__(self, detach):
            super().__init__()
            self.q, self.k, self.v, self.head, self.detach = q, k, v, head, detach

        def forward(self, x):
            a = F.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1)
            if self.detach:
                a = a.detach()
            return self.head(a @ self.v(x)).sum(1)

    x = _tokens(2, 4, 6, seed=9)
    e = lrp(Att(False).eval(), x, target=2, composite=cp_lrp(0.0))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(Att(True)(xg)[:, 2].sum(), xg)
    assert np.abs(e.values - (g * x).numpy()).max() <= 1e-10


def test_selectable_by_name_and_plain_lrp_refuses_attention():
    model = Block().double().eval()
    x = _tokens()
    for name, make in (("attnlrp", attnlrp), ("cp_lrp", cp_lrp), ("AttnLRP", attnlrp),
                       ("cp-lrp", cp_lrp)):
        e = lumos.explain(model, x, "lrp", target=1, composite=name, epsilon=1e-9)
        ref = lrp(model, x, target=1, composite=make(1e-9))
        assert np.abs(e.values - ref.values).max() == 0
        assert e.meta["composite"] == make().name
        assert not e.meta["passed_ops"]  # GELU's identity rule is a derived rule: no warning
    e1 = lrp(model, x, target=1, composite="attnlrp")
    e2 = lrp(model, x, target=1, composite="cp_lrp")
    assert np.abs(e1.values - e2.values).max() > 1e-4  # the two variants differ
    with pytest.raises(UnsupportedOperationError, match="product of two input-dependent"):
        lrp(model, x, target=1)  # q @ kᵀ comes first
    with pytest.raises(UnsupportedOperationError, match="attnlrp"):
        lrp(model, x, target=1)

    class SoftOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(8, 8, bias=False)

        def forward(self, x):
            return (F.softmax(self.w(x), -1) * x).sum(1)

    with pytest.raises(UnsupportedOperationError, match=r"softmax.*'attnlrp'"):
        lrp(SoftOnly().double().eval(), x, target=0)

    class RMS(nn.Module):
        def forward(self, x):
            return _hand_rms_norm(x, 1.0).sum(1)

    with pytest.raises(UnsupportedOperationError, match=r"torch\.rsqrt|Tensor\.pow"):
        lrp(RMS(), x, target=0)
    with pytest.raises(UnsupportedOperationError, match=r"torch\.einsum"):
        lrp(lambda_module(lambda t: torch.einsum("btd,bsd->bd", t, t)), x, target=0)
    # log-softmax inside the model has no rule under the transformer composites either
    with pytest.raises(UnsupportedOperationError, match="log_softmax"):
        lrp(lambda_module(lambda t: F.log_softmax(t, -1).sum(1)), x, target=0, composite="attnlrp")


def lambda_module(fn):
    class M(nn.Module):
        def forward(self, x):
            return fn(x)
    return M()


# ------------------------------------------------------------------ Hugging Face BERT
def _bert(attn="eager"):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3,
                                  max_position_embeddings=16, attn_implementation=attn)
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(cfg).double().eval()
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "LayerNorm.weight" in name:
                p.normal_(1, 0.2)

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, embeds):
            return self.bert(inputs_embeds=embeds).logits

    return Logits().eval()


def test_bert_conservation_cp_lrp_and_attnlrp():
    model = _bert()
    x = torch.randn(2, 6, 16, generator=_gen(11), dtype=D)
    for target in (0, 2):
        start, total, absorbed, _ = _conservation(model, x, cp_lrp(0.0), target)
        assert absorbed.abs().max() == 0
        assert ((start - total).abs() <= 1e-4 * start.abs()).all()
        start, total, absorbed, _ = _conservation(model, x, attnlrp(0.0), target)
        assert ((start - total - absorbed).abs() <= 1e-4 * start.abs()).all()
        assert absorbed.abs().max() > 1e-8
        assert start.abs().min() > 1e-4


def test_bert_with_fused_attention_is_refused_by_name():
    model = _bert("sdpa")
    x = torch.randn(1, 4, 16, generator=_gen(12), dtype=D)
    with pytest.raises(UnsupportedOperationError, match="scaled_dot_product_attention"):
        lrp(model, x, target=0, composite="attnlrp")


def test_plain_lrp_through_a_sum_over_tokens():
    """Defect: the ε rule wrote in place into the expanded gradient of ``sum`` (RuntimeError)."""
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False).double()
    model = lambda_module(lambda t: lin(t).sum(1)).eval()
    model.lin = lin
    x = _tokens(2, 5, 4, seed=1)
    e = lrp(model, x, target=1, composite="epsilon", epsilon=0.0)
    np.testing.assert_allclose(e.values, (x * lin.weight[1]).detach().numpy(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ GPT-2 and Llama operations
def naive_linear(x, W, b, R, eps):
    """ε-LRP of ``z = x W + b`` (W: (d_in, d_out)) written out: ``R_j = Σ_k x_j W_jk R_k / z_k``."""
    out = np.zeros_like(x)
    for idx in itertools.product(*[range(m) for m in x.shape[:-1]]):
        z = x[idx] @ W + b
        for j, k in itertools.product(range(W.shape[0]), range(W.shape[1])):
            out[idx + (j,)] += x[idx + (j,)] * W[j, k] * R[idx + (k,)] / _stab(z[k], eps)
    return out


def test_addmm_of_gpt2_conv1d_is_the_linear_rule():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    g = _gen(21)
    conv = Conv1D(5, 4).double()  # nf=5 outputs, nx=4 inputs: weight (4, 5)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(4, 5, generator=g, dtype=D))
        conv.bias.copy_(torch.randn(5, generator=g, dtype=D) * 0.3)
    x = torch.randn(2, 3, 4, generator=g, dtype=D)
    R = torch.randn(2, 3, 5, generator=g, dtype=D)
    W, b = conv.weight.detach(), conv.bias.detach()
    (Rx,), out, session = _run(attnlrp(EPS), conv, x, R=R)
    assert session.counts.get("addmm") == 1  # Conv1D is torch.addmm
    ref = naive_linear(x.numpy(), W.numpy(), b.numpy(), R.numpy(), EPS)
    np.testing.assert_allclose(Rx.numpy(), ref, rtol=0, atol=1e-10)
    # alpha / beta scale the product and the bias
    (Rx2,), _, _ = _run(attnlrp(EPS), lambda t: torch.addmm(b, t, W, beta=0.5, alpha=2.0),
                        x[0], R=R[0])
    ref2 = naive_linear(x[0].numpy(), 2 * W.numpy(), 0.5 * b.numpy(), R[0].numpy(), EPS)
    np.testing.assert_allclose(Rx2.numpy(), ref2, rtol=0, atol=1e-10)
    # plain LRP composites name it instead of passing a plain gradient
    with pytest.raises(UnsupportedOperationError, match="addmm"):
        _run(lumos.rules.composites.PRESETS["epsilon"](), conv, x, R=R)
    # a weight that depends on the input is a bilinear product plus a bias: refused
    with pytest.raises(UnsupportedOperationError, match="addmm"):
        _run(attnlrp(EPS), lambda t, w: torch.addmm(b, t, w), x[0], W, R=R[0])


def test_rotary_embedding_is_the_linear_rule_with_fixed_cos_sin():
    """Llama's rotary embedding ``q cos + rotate_half(q) sin`` is linear in q: the rules give the
    ε rule of its explicit rotation matrix."""
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    g = _gen(22)
    b, h, t, d = 1, 2, 3, 4
    q = torch.randn(b, h, t, d, generator=g, dtype=D)
    k = torch.randn(b, h, t, d, generator=g, dtype=D)
    theta = torch.rand(b, t, d // 2, generator=g, dtype=D) * 3
    cos = torch.cat([theta.cos(), theta.cos()], -1)
    sin = torch.cat([theta.sin(), theta.sin()], -1)
    R = torch.randn(b, h, t, d, generator=g, dtype=D)
    (Rq,), _, _ = _run(attnlrp(EPS), lambda x: apply_rotary_pos_emb(x, k, cos, sin)[0], q, R=R)
    ref = np.zeros((b, h, t, d))
    for i, hh, p in itertools.product(range(b), range(h), range(t)):
        c, s = cos[i, p].numpy(), sin[i, p].numpy()
        M = np.diag(c)  # out = M q: out_k = c_k q_k ∓ s_k q_partner
        for kk in range(d // 2):
            M[kk, kk + d // 2] = -s[kk]
            M[kk + d // 2, kk] = s[kk + d // 2]
        ref[i, hh, p] = naive_linear(q[i, hh, p].numpy()[None], M.T, np.zeros(d),
                                     R[i, hh, p].numpy()[None], EPS)[0]
    np.testing.assert_allclose(Rq.numpy(), ref, rtol=0, atol=1e-10)


def test_silu_gated_mlp_is_the_bilinear_rule_on_gate_times_up():
    """Llama's MLP ``down(silu(gate x) ⊙ up x)``: ε on the three projections, the product
    split in halves (uniform rule), SiLU passing relevance unchanged."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = transformers.LlamaConfig(hidden_size=4, intermediate_size=6, num_attention_heads=1,
                                   num_key_value_heads=1)
    torch.manual_seed(23)
    mlp = LlamaMLP(cfg).double()
    x = torch.randn(2, 3, 4, generator=_gen(23), dtype=D)
    R = torch.randn(2, 3, 4, generator=_gen(24), dtype=D)
    (Rx,), _, _ = _run(attnlrp(EPS), mlp, x, R=R)
    Wg, Wu, Wd = (m.weight.detach().numpy().T for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    xn = x.numpy()
    gate, up = xn @ Wg, xn @ Wu
    prod = gate / (1 + np.exp(-gate)) * up
    R_prod = naive_linear(prod, Wd, np.zeros(4), R.numpy(), EPS)
    ref = (naive_linear(xn, Wg, np.zeros(6), R_prod / 2, EPS)
           + naive_linear(xn, Wu, np.zeros(6), R_prod / 2, EPS))
    np.testing.assert_allclose(Rx.numpy(), ref, rtol=0, atol=1e-10)
