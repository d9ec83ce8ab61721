"""Language models (issue 14): logit lens, direct logit attribution, generation attribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lumos.text.lm import direct_logit_attribution, logit_lens  # noqa: E402

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
