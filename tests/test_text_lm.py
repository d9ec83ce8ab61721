"""Language models (issue 14): logit lens, direct logit attribution, generation attribution."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lumos.text.lm import direct_logit_attribution, generation_attribution, logit_lens  # noqa: E402

V = 50


def _gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, bos_token_id=0, eos_token_id=0,
                                   pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


MODELS = {"gpt2": _gpt2, "llama": _llama}


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()])


def _same_state(model, state):
    sd, training, req = state
    assert model.training == training
    assert [p.requires_grad for p in model.parameters()] == req
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.fixture
def ids():
    return torch.randint(0, V, (3, 7), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------- logit lens

@pytest.mark.parametrize("arch", MODELS)
def test_logit_lens_last_layer_is_the_models_logits(arch, ids):
    model = _gpt2() if arch == "gpt2" else _llama()
    model.train()  # left as found: training mode comes back
    state = _state(model)
    lens = logit_lens(model, ids, top_k=3)
    _same_state(model, state)
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids).logits.numpy()
    assert lens.logits.shape == (3, 3, 7, V)
    assert np.abs(lens.logits[-1] - ref).max() <= 1e-5
    # earlier layers are different read-outs (the lens is not a constant copy of the output)
    assert np.abs(lens.logits[0] - ref).max() > 1e-2
    np.testing.assert_allclose(np.exp(lens.log_probs).sum(-1), 1.0, atol=1e-5)
    # top tokens are the arg-sorted log-probs
    # (compared by value: a random tiny model may tie two logits)
    np.testing.assert_array_equal(lens.top_log_probs[..., 0], lens.log_probs.max(-1))
    np.testing.assert_array_equal(
        np.take_along_axis(lens.log_probs, lens.top_ids, -1), lens.top_log_probs)
    assert (np.diff(lens.top_log_probs, axis=-1) <= 0).all()
    assert lens.top_tokens[2][1][4] == [str(i) for i in lens.top_ids[2, 1, 4]]
    assert lens.layer_names == ["embeddings", "block 0", "block 1"]


def test_logit_lens_layer_zero_is_the_unembedded_embeddings(ids):
    model = _gpt2()
    lens = logit_lens(model, ids)
    with torch.no_grad():
        t = model.transformer
        h0 = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))[None]
        ref = model.lm_head(t.ln_f(h0)).numpy()
    assert np.abs(lens.logits[0] - ref).max() <= 1e-5


def test_tuned_lens_applies_the_translator(ids):
    model = _gpt2()
    torch.manual_seed(3)
    maps = [torch.nn.Linear(16, 16) for _ in range(2)]
    lens = logit_lens(model, ids, translator=maps)
    plain = logit_lens(model, ids)
    assert lens.tuned and not plain.tuned
    # the last stream is read as it is, the earlier ones through their map
    assert np.abs(lens.logits[-1] - plain.logits[-1]).max() <= 1e-6
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        ref = model.lm_head(model.transformer.ln_f(maps[1](hs[1]))).numpy()
    assert np.abs(lens.logits[1] - ref).max() <= 1e-5
    # identity translators give the plain lens
    eye = [torch.nn.Identity(), None, lambda h: h]
    assert np.abs(logit_lens(model, ids, translator=eye).logits - plain.logits).max() == 0


def test_logit_lens_padding_does_not_change_a_prompt(ids):
    model = _gpt2()
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    both = logit_lens(model, ids, attention_mask=mask)
    alone = logit_lens(model, ids[:1, :4])
    assert np.abs(both.logits[:, 0, :4] - alone.logits[:, 0]).max() <= 1e-5


def test_logit_lens_errors(ids):
    model = _gpt2()
    with pytest.raises(ValueError, match="translator: expected one map per residual stream"):
        logit_lens(model, ids, translator=[None])
    with pytest.raises(TypeError, match="translator: entries \\[0\\]"):
        logit_lens(model, ids, translator=[3, None])
    with pytest.raises(ValueError, match="translator\\[0\\] must return a tensor of shape"):
        logit_lens(model, ids, translator=[lambda h: h[..., :3], None])
    with pytest.raises(ValueError, match="inputs: expected token ids"):
        logit_lens(model, torch.rand(2, 3))
    with pytest.raises(ValueError, match="attention_mask: expected right padding"):
        logit_lens(model, ids, attention_mask=torch.tensor([[0] + [1] * 6] * 3))
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, ids, top_k=0)
    with pytest.raises(ValueError, match="no a ModuleList of blocks"):
        logit_lens(torch.nn.Linear(3, 3), ids)
    with pytest.raises(ValueError, match="strings need tokenizer="):
        logit_lens(model, "hello")


# ---------------------------------------------------------------------------- direct logit attribution

@pytest.mark.parametrize("arch", MODELS)
def test_dla_sums_to_the_logit(arch, ids):
    model = MODELS[arch]()
    state = _state(model)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    d = direct_logit_attribution(model, ids, attention_mask=mask)
    _same_state(model, state)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    np.testing.assert_array_equal(d.positions, [6, 4, 6])
    np.testing.assert_array_equal(d.target_ids, logits[[0, 1, 2], [6, 4, 6]].argmax(-1).numpy())
    ref = logits[[0, 1, 2], [6, 4, 6], d.target_ids].numpy()
    assert np.abs(d.logit - ref).max() <= 1e-5
    assert np.abs(d.values.sum(1) - ref).max() <= 1e-4
    assert d.component_names == ["embeddings", "attn 0", "mlp 0", "attn 1", "mlp 1", "bias"]
    # heads (plus the projection's bias) make up each attention term
    attn = d.values[:, [1, 3]]
    assert np.abs(d.heads.sum(-1) + d.head_bias - attn).max() <= 1e-6
    assert d.heads.shape == (3, 2, 2)
    # the terms are not trivially equal (each component writes its own share)
    assert np.abs(np.diff(d.values[:, :-1], axis=1)).max() > 1e-3


def test_dla_with_unembedding_bias_and_contrast(ids):
    model = _gpt2()
    model.lm_head.bias = torch.nn.Parameter(torch.randn(V, generator=torch.Generator().manual_seed(5)))
    d = direct_logit_attribution(model, ids, target=[3, 4, 5], alternative=7, position=2)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, 2]
    ref = (logits[[0, 1, 2], [3, 4, 5]] - logits[:, 7]).numpy()
    assert np.abs(d.values.sum(1) - ref).max() <= 1e-4
    # the bias term holds the unembedding bias difference and the final norm's shift
    beta = model.transformer.ln_f.bias.detach().double()
    W, b = model.lm_head.weight.detach().double(), model.lm_head.bias.detach().double()
    exp = [float((W[t] - W[7]) @ beta + b[t] - b[7]) for t in (3, 4, 5)]
    assert np.abs(d.values[:, -1] - exp).max() <= 1e-9


def test_dla_per_head_equals_a_head_ablation_of_the_frozen_readout(ids):
    """A head's term == the change of the linearised read-out when only its z is removed."""
    model = _gpt2()
    d = direct_logit_attribution(model, ids, position=-1)
    zs = {}
    h = model.transformer.h[1].attn.c_proj.register_forward_pre_hook(
        lambda m, a: zs.__setitem__("z", a[0]))
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    z = zs["z"][:, -1].double()
    W = model.transformer.h[1].attn.c_proj.weight.detach().double()
    u = model.lm_head.weight.detach().double()[torch.as_tensor(d.target_ids)]
    g = model.transformer.ln_f.weight.detach().double()
    for head in range(2):
        zh = torch.zeros_like(z)
        zh[:, head * 8:(head + 1) * 8] = z[:, head * 8:(head + 1) * 8]
        c = zh @ W
        c = c - c.mean(-1, keepdim=True)
        ref = ((c * g * u).sum(-1) / torch.as_tensor(d.scale)).numpy()
        assert np.abs(d.heads[:, 1, head] - ref).max() <= 1e-9


def test_dla_errors(ids):
    model = _gpt2()
    with pytest.raises(ValueError, match="position: 7 lies outside a prompt"):
        direct_logit_attribution(model, ids, position=7)
    with pytest.raises(ValueError, match="target: token ids must lie in"):
        direct_logit_attribution(model, ids, target=V)
    with pytest.raises(ValueError, match="alternative: expected a token id"):
        direct_logit_attribution(model, ids, alternative=[1, 2])
    with pytest.raises(ValueError, match="target: tokens given as strings need tokenizer="):
        direct_logit_attribution(model, ids, target="Paris")


# ---------------------------------------------------------------------------- generation attribution

class OnePositionLM(torch.nn.Module):
    """Every next-token distribution reads only the token at position ``pos`` (by construction)."""

    def __init__(self, vocab=12, hidden=6, pos=1):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.head = torch.nn.Linear(hidden, vocab)
        self.pos = pos

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        h = torch.tanh(e[:, self.pos:self.pos + 1]).expand(-1, e.shape[1], -1)
        return types.SimpleNamespace(logits=self.head(h))


@pytest.mark.parametrize("method", ["gradient_x_input", "integrated_gradients"])
def test_generation_mass_on_the_position_the_model_reads(method):
    model = OnePositionLM()
    prompts = torch.tensor([[3, 7, 1, 4, 2], [5, 9, 2, 8, 8]])
    state = _state(model)
    g = generation_attribution(model, prompts, n_tokens=3, method=method, n_steps=16)
    _same_state(model, state)
    for i, m in enumerate(g.matrices):
        assert m.shape == (3, 8)
        for j in range(3):
            row = m[j, :5 + j]
            assert np.isnan(m[j, 5 + j:]).all()
            assert row[1] != 0 and np.abs(np.delete(row, 1)).max() == 0
    # the greedy tokens are the model's arg-max at each step
    with torch.no_grad():
        first = model(input_ids=prompts).logits[:, -1].argmax(-1).numpy()
    np.testing.assert_array_equal(g.generated_ids[:, 0], first)
    assert g.token_ids[0][:5] == [3, 7, 1, 4, 2] and len(g.token_ids[0]) == 8


def test_generation_ig_completeness_on_gpt2():
    model = _gpt2()
    prompts = torch.tensor([[1, 2, 3, 4], [9, 8, 7, 6]])
    g = generation_attribution(model, prompts, n_tokens=3, method="integrated_gradients",
                               n_steps=48, alternative=5)
    for i, m in enumerate(g.matrices):
        sums = np.nansum(m, axis=1)
        gap = np.abs(sums - (g.scores[i] - g.baseline_scores[i]))
        assert gap.max() <= 1e-3 * max(1.0, np.abs(sums).max()), gap
    # scores are the contrast log p(token) - log p(5) at the input
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=prompts).logits[:, -1], -1)
    ref = (lp[[0, 1], g.generated_ids[:, 0]] - lp[:, 5]).numpy()
    assert np.abs(g.scores[:, 0] - ref).max() <= 1e-5


@pytest.mark.parametrize("method", ["gradient_x_input", "integrated_gradients"])
def test_generation_batched_equals_one_by_one(method):
    model = _gpt2(1)
    prompts = [[1, 2, 3, 4, 5], [7, 3], [4, 4, 9]]
    ids, mask = torch.zeros(3, 5, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p)
        mask[i, :len(p)] = 1
    kw = dict(n_tokens=3, method=method, n_steps=8)
    both = generation_attribution(model, ids, attention_mask=mask, batch_size=5, **kw)
    for i, p in enumerate(prompts):
        one = generation_attribution(model, torch.tensor([p]), batch_size=3, **kw)
        assert one.token_ids[0] == both.token_ids[i]
        np.testing.assert_array_equal(np.isnan(one.matrices[0]), np.isnan(both.matrices[i]))
        assert np.nanmax(np.abs(one.matrices[0] - both.matrices[i])) <= 1e-5
        assert np.abs(one.scores[0] - both.scores[i]).max() <= 1e-5


def test_generation_gradient_x_input_is_the_embedding_gradient_times_embedding():
    model = _gpt2()
    prompt = torch.tensor([[3, 1, 4, 1]])
    g = generation_attribution(model, prompt, n_tokens=2)
    seq = torch.tensor([g.token_ids[0][:5]])
    e = model.transformer.wte(seq).detach().requires_grad_(True)
    lp = torch.log_softmax(model(inputs_embeds=e).logits[0, -1], -1)[g.generated_ids[0, 1]]
    (gr,) = torch.autograd.grad(lp, e)
    ref = (gr * e).sum(-1)[0].detach().numpy()
    assert np.abs(g.matrices[0][1, :5] - ref).max() <= 1e-5
    assert abs(g.scores[0, 1] - float(lp.detach())) <= 1e-5


def test_generation_heatmap_draws():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = generation_attribution(OnePositionLM(), torch.tensor([[3, 7, 1]]), n_tokens=2)
    ax = g.plot()
    fig = ax.figure
    assert [t.get_text() for t in ax.get_xticklabels()] == g.tokens[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == g.tokens[0][3:]
    assert len(fig.axes) == 2  # the colour bar
    im = ax.images[0]
    lo, hi = im.get_clim()
    assert -lo == hi == np.nanmax(np.abs(g.matrices[0])) > 0
    plt.close(fig)


def test_generation_errors():
    model = _gpt2()
    ids = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="method"):
        generation_attribution(model, ids, method="lrp")
    with pytest.raises(ValueError, match="n_tokens"):
        generation_attribution(model, ids, n_tokens=0)
    with pytest.raises(ValueError, match="baselines: expected 'zero' or a token id"):
        generation_attribution(model, ids, method="integrated_gradients", baselines="pad")
    with pytest.raises(ValueError, match="baselines: token id 99"):
        generation_attribution(model, ids, method="integrated_gradients", baselines=99)
    with pytest.raises(TypeError, match="get_input_embeddings"):
        generation_attribution(torch.nn.Linear(2, 2), ids)


def test_generation_heatmap_draws_dollar_tokens_as_text():
    """A token like "$x$" is a label, not a formula (mathtext would draw an italic x)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = generation_attribution(OnePositionLM(), torch.tensor([[3, 7, 1]]), n_tokens=1)
    g.tokens[0][0] = "$x$"
    ax = g.plot()
    labels = ax.get_xticklabels()
    assert labels[0].get_text() == "$x$"
    ax.figure.canvas.draw()
    assert not labels[0]._preprocess_math("$x$")[1]  # drawn as plain text
    plt.close(ax.figure)
