"""Attention extraction, rollout, flow, agreement with saliency and the permutation test."""
import numpy as np
import pytest
import torch
from torch import nn

from lumos.text.attention import (Attentions, agreement, attentions, flow,
                                  kendall_tau, permutation_test, rollout, shuffle_permutation)


def _random_attention(L=3, B=2, H=2, T=5, seed=0):
    g = np.random.default_rng(seed)
    a = g.random((L, B, H, T, T)) + 0.05
    return a / a.sum(-1, keepdims=True)


# --- rollout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_of_identity_attention_is_identity(fusion):
    a = np.broadcast_to(np.eye(4), (3, 2, 2, 4, 4))
    r = rollout(a, head_fusion=fusion)
    np.testing.assert_allclose(r, np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-15)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_rows_sum_to_one_and_match_the_product(fusion):
    a = _random_attention()
    r = rollout(a, head_fusion=fusion)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-12)
    f = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](a, axis=2)
    aug = 0.5 * f + 0.5 * np.eye(5)
    aug /= aug.sum(-1, keepdims=True)
    expected = aug[2] @ aug[1] @ aug[0]
    np.testing.assert_allclose(r, expected, atol=1e-12)


def test_rollout_accepts_tuple_stacked_and_torch_alike():
    a = _random_attention()
    ref = rollout(a)
    np.testing.assert_allclose(rollout(tuple(torch.tensor(x) for x in a)), ref, atol=1e-15)
    np.testing.assert_allclose(rollout(torch.tensor(a)), ref, atol=1e-15)
    np.testing.assert_allclose(rollout(a, residual=0.0),
                               np.einsum("bij,bjk->bik", a[2].mean(1),
                                         np.einsum("bij,bjk->bik", a[1].mean(1), a[0].mean(1))),
                               atol=1e-12)


def test_rollout_and_flow_with_padding_equal_the_unpadded_example():
    a = _random_attention(T=4, B=1)
    padded = np.zeros((3, 1, 2, 6, 6))
    padded[..., :4, :4] = a
    mask = np.array([[1, 1, 1, 1, 0, 0]])
    for fn in (rollout, flow):
        got = fn(padded, attention_mask=mask)
        np.testing.assert_allclose(got[:, :4, :4], fn(a), atol=1e-12)
        assert np.all(got[:, 4:, :] == 0) and np.all(got[:, :, 4:] == 0)


def test_bad_attention_is_refused_clearly():
    with pytest.raises(ValueError, match="layers, batch, heads, T, T"):
        rollout(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="square"):
        rollout(np.ones((1, 1, 1, 3, 4)))
    with pytest.raises(ValueError, match="same shape"):
        rollout((np.ones((1, 1, 3, 3)), np.ones((1, 2, 3, 3))))
    with pytest.raises(ValueError, match="head_fusion"):
        rollout(_random_attention(), head_fusion="median")
    with pytest.raises(ValueError, match="residual"):
        rollout(_random_attention(), residual=1.5)
    with pytest.raises(ValueError, match="attention_mask"):
        rollout(_random_attention(), attention_mask=np.ones((2, 3)))


# --- flow --------------------------------------------------------------------------------------

def test_flow_on_a_hand_made_graph():
    # one head, no residual; A_l[i, j] is the capacity of edge (l-1, j) -> (l, i)
    a1 = np.array([[0.5, 0.5], [0.2, 0.8]])
    a2 = np.array([[1.0, 0.0], [0.3, 0.7]])
    a = np.stack([a1, a2])[:, None, None]
    f = flow(a, residual=0.0)[0]
    # in0 -> out0: via mid0 min(.5, 1) + via mid1 min(.2, 0) = .5
    # in0 -> out1: via mid0 min(.5, .3) + via mid1 min(.2, .7) = .5
    # in1 -> out0: via mid0 min(.5, 1) + via mid1 min(.8, 0) = .5
    # in1 -> out1: via mid0 min(.5, .3) + via mid1 min(.8, .7) = 1.0
    expected = np.array([[0.5, 0.5], [0.5, 1.0]])
    np.testing.assert_allclose(f, expected, atol=2 / 2 ** 20)
    np.testing.assert_allclose(flow(a, residual=0.0, normalize=True)[0],
                               expected / expected.sum(1, keepdims=True), atol=4e-6)


def test_flow_of_one_layer_is_the_augmented_attention():
    a = _random_attention(L=1)
    aug = 0.5 * a[0].mean(1) + 0.5 * np.eye(5)
    aug /= aug.sum(-1, keepdims=True)
    np.testing.assert_allclose(flow(a), aug, atol=1 / 2 ** 20)


# --- agreement ---------------------------------------------------------------------------------

def test_kendall_tau_identical_reversed_and_random():
    g = np.random.default_rng(1)
    x = g.random((3, 12))
    np.testing.assert_allclose(kendall_tau(x, x), 1.0, atol=1e-12)
    np.testing.assert_allclose(kendall_tau(x, -x), -1.0, atol=1e-12)
    n, draws = 20, 4000
    tau = kendall_tau(g.random((draws, n)), g.random((draws, n)))
    sd = np.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))  # null sd of tau
    assert abs(tau.mean()) < 4 * sd / np.sqrt(draws)  # ~0.011
    assert abs(tau.std() - sd) < 0.1 * sd


def test_agreement_is_one_for_the_attention_itself_and_respects_padding():
    a = _random_attention(B=2, T=6)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    a = a * mask[None, :, None, :, None] * mask[None, :, None, None, :]
    a = np.divide(a, a.sum(-1, keepdims=True), out=np.zeros_like(a), where=a.sum(-1, keepdims=True) > 0)
    last = a[-1].mean(1)[:, 0]
    r = rollout(a, attention_mask=mask)[:, 0]
    noise = np.where(mask, 0, 123.0)  # garbage at padding must not matter
    ag = agreement(a, {"last": last + noise, "roll": r + noise}, attention_mask=mask,
                   kinds=("last", "rollout"))
    np.testing.assert_allclose(ag.tau[("last", "last")], 1.0, atol=1e-12)
    np.testing.assert_allclose(ag.tau[("rollout", "roll")], 1.0, atol=1e-12)
    assert "rollout" in ag.table()
    with pytest.raises(ValueError, match="padded position"):
        agreement(a, {"x": last}, attention_mask=mask, query=5)
    with pytest.raises(ValueError, match=r"shape \(batch, T\)"):
        agreement(a, {"x": np.ones((2, 6, 3))}, attention_mask=mask)


# --- Hugging Face models -------------------------------------------------------------------------

def _bert(**kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  initializer_range=0.5, **kw)
    return transformers.BertForSequenceClassification(cfg).eval()


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_attentions_of_a_bert_model_forces_eager_and_leaves_the_model_as_found():
    m = _bert()
    assert m.config._attn_implementation == "sdpa"
    before = _state(m)
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    A = attentions(m, {"input_ids": ids, "attention_mask": mask}, tokens=[["t"] * 7] * 2)
    assert isinstance(A, Attentions) and A.shape == (2, 2, 2, 7, 7)
    assert m.config._attn_implementation == "sdpa"
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    hooks = [(mod, dict(mod._forward_hooks)) for mod in m.modules()]
    sums = A.values.sum(-1)
    np.testing.assert_allclose(sums[:, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(sums[:, 1, :, :5], 1.0, atol=1e-6)
    assert np.all(A.values[:, 1, :, 5:, :] == 0) and np.all(A.values[:, 1, :, :, 5:] == 0)
    # the padded example equals the same text alone
    alone = attentions(m, ids[1:, :5])
    np.testing.assert_allclose(A.example(1)[0], alone.values[:, 0], atol=1e-6)
    # a second call (and the user's own output_attentions calls) still get attentions: Hugging
    # Face's lazily installed capturing hooks are not stripped by the guard
    assert all(dict(mod._forward_hooks) == h for mod, h in hooks)
    assert not any(mod._forward_pre_hooks for mod in m.modules())
    # equals the model's own eager attentions
    m.set_attn_implementation("eager")
    with torch.no_grad():
        ref = m(input_ids=ids[:1], output_attentions=True).attentions
    np.testing.assert_allclose(A.values[:, 0], torch.stack(ref)[:, 0].numpy(), atol=1e-6)


def test_attentions_refuses_bad_inputs():
    m = _bert()
    with pytest.raises(ValueError, match="tokenizer="):
        attentions(m, ["a text"])
    with pytest.raises(ValueError, match="token ids"):
        attentions(m, torch.rand(2, 3))
    with pytest.raises(TypeError, match="torch module"):
        attentions(lambda x: x, torch.zeros(1, 3, dtype=torch.long))


def test_permutation_test_on_a_hand_written_attention_matches_the_closed_form():
    class OneAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([0.3, -1.2, 2.0, 0.7]))

        def forward(self, input_ids, attention_mask=None):
            x = input_ids.float()  # (B, T) values of each token
            scores = (x[:, :, None] * x[:, None, :] * 0.1)[:, None]  # (B, 1, T, T)
            att = torch.softmax(scores, dim=-1)
            ctx = (att @ x[:, None, :, None])[:, 0, 0, 0]  # query 0
            return ctx[:, None] * self.w  # (B, 4) logits

    m = OneAttention()
    ids = torch.tensor([[1, 4, 2, 7, 3]])
    res = permutation_test(m, ids, n_samples=4, seed=5, modules=[m])
    x = ids[0].double()
    att = torch.softmax(x[0] * x * 0.1, 0)
    p0 = torch.softmax(((att * x).sum() * m.w.double()), 0)
    for s in range(4):
        perm = torch.as_tensor(shuffle_permutation(5, s, 5))
        p = torch.softmax(((att[perm] * x).sum() * m.w.double()), 0)
        assert abs(res.tvd[0, s] - 0.5 * (p - p0).abs().sum().item()) < 1e-6
    assert res.tvd.max() > 1e-3  # the shuffles do change this output


def test_permutation_test_on_bert_is_seeded_batch_independent_and_leaves_the_model():
    m = _bert()
    before = _state(m)
    ids = torch.randint(5, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    inp = {"input_ids": ids, "attention_mask": mask}
    r1 = permutation_test(m, inp, layers=[0, 1], n_samples=3, seed=3)
    r2 = permutation_test(m, inp, layers=[0, 1], n_samples=3, seed=3)
    np.testing.assert_array_equal(r1.tvd, r2.tvd)
    assert r1.tvd.min() > 1e-4
    alone = permutation_test(m, ids[1:, :4], layers=[0, 1], n_samples=3, seed=3)
    np.testing.assert_allclose(r1.tvd[1], alone.tvd[0], atol=1e-6)
    assert m.config._attn_implementation == "sdpa"
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert not any(mod._forward_pre_hooks for mod in m.modules())
    assert attentions(m, ids).shape == (2, 2, 2, 6, 6)


def test_permutation_test_of_uniform_attention_changes_nothing():
    m = _bert()
    with torch.no_grad():  # zero queries: every score equal, attention uniform over real keys
        for layer in m.bert.encoder.layer:
            layer.attention.self.query.weight.zero_()
            layer.attention.self.query.bias.zero_()
    ids = torch.randint(5, 50, (1, 6))
    res = permutation_test(m, ids, layers=[0, 1], n_samples=3, seed=0)
    assert res.tvd.max() < 1e-6


# --- causal language models: GPT-2 and Llama from random configs ---------------------------------

def _causal(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=32, max_position_embeddings=32,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_attentions_of_causal_lms_are_causal_rows_sum_to_one_and_eager_is_restored(kind):
    m = _causal(kind)
    assert m.config._attn_implementation == "sdpa"
    before = _state(m)
    ids = torch.randint(3, 40, (3, 6))
    A = attentions(m, ids)
    assert A.shape == (2, 3, 2, 6, 6)
    np.testing.assert_allclose(A.values.sum(-1), 1.0, atol=1e-6)
    assert np.all(np.triu(A.values, 1) == 0)          # no query looks at a later token
    np.testing.assert_allclose(A.values[..., 0, 0], 1.0, atol=1e-6)  # the first token sees itself
    assert A.values[..., 1:, :].max() < 1 - 1e-3        # not a trivial (identity) map
    assert m.config._attn_implementation == "sdpa"
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    # equals the model's own eager attention
    m.set_attn_implementation("eager")
    with torch.no_grad():
        ref = torch.stack(m(input_ids=ids, output_attentions=True).attentions)
    np.testing.assert_allclose(A.values, ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_attentions_of_causal_lms_do_not_depend_on_the_padding_side(kind, side):
    # GPT-2 numbers positions from the first column: before the inputs were packed to the right,
    # a left-padded text got other position embeddings and attention than the same text alone
    m = _causal(kind)
    g = torch.Generator().manual_seed(1)
    short, long = torch.randint(3, 40, (4,), generator=g), torch.randint(3, 40, (7,), generator=g)
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    ids[1], mask[1] = long, 1
    cols = slice(3, 7) if side == "left" else slice(0, 4)
    ids[0, cols], mask[0, cols] = short, 1
    A = attentions(m, {"input_ids": ids, "attention_mask": mask})
    alone = [attentions(m, t[None]).values[:, 0] for t in (short, long)]
    for b in range(2):
        np.testing.assert_allclose(A.example(b)[0], alone[b], atol=1e-6)
    assert np.all(A.values[:, 0][..., 0 if side == "left" else 6, :] == 0)  # padded query row
    np.testing.assert_allclose(A.values.sum(-1)[:, 0][..., cols], 1.0, atol=1e-6)


def test_query_mean_averages_the_real_query_rows_only():
    """``query="mean"`` (mean-pooling models): each key's weight averaged over the real query
    rows; padded query rows do not count, and agreement uses the same scores."""
    from lumos.text.attention import agreement, query_scores

    rng = np.random.default_rng(0)
    a = rng.random((1, 2, 1, 4, 4))  # (layers, batch, heads, T, T)
    a /= a.sum(-1, keepdims=True)
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    a[:, 1, :, :, 3] = 0.0
    a[:, 1, :, 3, :] = 0.0
    got = query_scores(a[0, :, 0], "mean", mask)
    np.testing.assert_allclose(got[0], a[0, 0, 0].mean(0), atol=1e-15)
    np.testing.assert_allclose(got[1], a[0, 1, 0, :3].mean(0), atol=1e-15)
    np.testing.assert_allclose(query_scores(a[0, :, 0], "first", mask), a[0, :, 0, 0], atol=0)
    ag = agreement(a, {"same": got}, attention_mask=mask, kinds=("last",), query="mean")
    np.testing.assert_allclose(ag.tau[("last", "same")], 1.0)
    with pytest.raises(ValueError, match="query"):
        agreement(a, {"same": got}, attention_mask=mask, kinds=("last",), query="middle")
