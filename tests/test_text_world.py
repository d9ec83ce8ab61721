"""The text world (ground truth by construction) and the shipped text models (issue 14)."""
from __future__ import annotations

import ast
import json
import math
import socket
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from lumos.data import text_world as tw
from lumos.data.text_world import (EVIDENCE_WORDS, LEAK_RATE, SHORTCUT_CLASS, SHORTCUT_RATE,
                                   SHORTCUT_TOKEN, VOCABULARY, text_dataset)

transformers = pytest.importorskip("transformers")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


_CLASS_OF = {w: c for c, ws in EVIDENCE_WORDS.items() for w in ws}


@pytest.fixture(scope="module")
def minilm_classifier():
    """MiniLM-L6 with the shipped head, loaded once for the file (network refused while loading)."""
    from lumos.data.text_models import load_minilm_classifier

    with pytest.MonkeyPatch.context() as mp:
        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        return load_minilm_classifier()


# ------------------------------------------------------------------------------------ the world
@pytest.mark.parametrize("split, shortcut", [("train", None), ("test", "all"), ("test", 0.3)])
def test_evidence_decides_the_label_and_masks_mark_it(split, shortcut):
    data = text_dataset(400, split=split, shortcut=shortcut, seed=3)
    assert set(data.labels.tolist()) == {0, 1}
    for i, words in enumerate(data.words):
        label = int(data.labels[i])
        assert data.texts[i] == " ".join(words)
        n_for = sum(_CLASS_OF.get(w) == label for w in words)
        n_against = sum(_CLASS_OF.get(w) == 1 - label for w in words)
        assert 1 <= n_for <= 3 and 0 <= n_against < n_for  # the majority decides
        L = len(words)
        # masks sit on the word positions, shifted by [CLS]; nothing on specials or padding
        assert data.masks[i, 1:L + 1].tolist() == [_CLASS_OF.get(w) == label for w in words]
        assert data.counter_masks[i, 1:L + 1].tolist() == [_CLASS_OF.get(w) == 1 - label for w in words]
        assert data.shortcut_masks[i, 1:L + 1].tolist() == [w == SHORTCUT_TOKEN for w in words]
        for m in (data.masks, data.counter_masks, data.shortcut_masks):
            assert not m[i, 0] and not m[i, L + 1:].any()
        assert bool(data.has_shortcut[i]) == (words[-1] == SHORTCUT_TOKEN) == (words.count(SHORTCUT_TOKEN) == 1)
        if data.has_shortcut[i]:
            assert words[-2] == "."
        assert data.attention_mask[i].sum() == L + 2
        assert data.input_ids[i, 0] == VOCABULARY.index("[CLS]") and data.input_ids[i, L + 1] == VOCABULARY.index("[SEP]")
        assert not data.input_ids[i, L + 2:].any()  # [PAD] is id 0


def test_the_shortcut_word_is_neutral_by_construction():
    assert SHORTCUT_TOKEN not in _CLASS_OF
    assert not set(EVIDENCE_WORDS[0]) & set(EVIDENCE_WORDS[1])
    # the templates never produce an evidence word or the shortcut outside their slots
    data = text_dataset(300, split="test", shortcut="none", seed=0)
    assert not data.shortcut_masks.any()
    words = {w for ws in data.words for w in ws}
    assert words <= set(VOCABULARY)


def test_shortcut_rates_per_split():
    n = 2000
    train = text_dataset(n, split="train", seed=0)
    pos = train.labels == SHORTCUT_CLASS
    rate_pos = train.has_shortcut[pos].float().mean().item()
    rate_neg = train.has_shortcut[~pos].float().mean().item()
    sd = math.sqrt(SHORTCUT_RATE * (1 - SHORTCUT_RATE) / pos.sum().item())
    assert abs(rate_pos - SHORTCUT_RATE) < 4 * sd
    assert rate_neg < LEAK_RATE + 4 * math.sqrt(LEAK_RATE / (~pos).sum().item())
    # among signed training reviews, the shortcut's class dominates
    assert train.labels[train.has_shortcut].float().mean() > 0.98
    assert not text_dataset(500, split="test", seed=0).has_shortcut.any()
    assert text_dataset(500, split="test", shortcut="all", seed=0).has_shortcut.all()
    assert not text_dataset(500, split="train", shortcut=False, seed=0).has_shortcut.any()
    p = text_dataset(n, split="test", shortcut=0.3, seed=1)
    sd = math.sqrt(0.3 * 0.7 / (n / 2))
    for c in (0, 1):
        assert abs(p.has_shortcut[p.labels == c].float().mean().item() - 0.3) < 4 * sd


def test_seeded_determinism_prefixes_and_pairing():
    a = text_dataset(200, split="train", seed=7)
    b = text_dataset(200, split="train", seed=7)
    assert a.texts == b.texts and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.masks, b.masks)
    assert text_dataset(200, split="train", seed=8).texts != a.texts
    assert text_dataset(200, split="test", seed=7).texts != a.texts
    assert text_dataset(20, split="train", seed=7).texts == a.texts[:20]  # the first m of n are the batch of m
    clean = text_dataset(200, split="test", shortcut="none", seed=2)
    signed = text_dataset(200, split="test", shortcut="all", seed=2)
    assert [t + " " + SHORTCUT_TOKEN for t in clean.texts] == signed.texts
    assert torch.equal(clean.labels, signed.labels)
    T = clean.masks.shape[1]
    assert torch.equal(clean.masks, signed.masks[:, :T]) and torch.equal(clean.counter_masks, signed.counter_masks[:, :T])


def test_indexing_keeps_fields_aligned():
    data = text_dataset(50, split="train", seed=1)
    for index in (3, slice(5, 9), np.array([1, 4, 2]), torch.tensor([0, 49]), (data.labels == 1)):
        part = data[index]
        rows = np.arange(50)[np.asarray(index) if not isinstance(index, (int, slice)) else index]
        rows = np.atleast_1d(rows)
        assert part.texts == [data.texts[r] for r in rows]
        assert torch.equal(part.masks, data.masks[torch.as_tensor(rows)])
        assert torch.equal(part.input_ids, data.input_ids[torch.as_tensor(rows)])
        assert torch.equal(part.has_shortcut, data.has_shortcut[torch.as_tensor(rows)])
    assert len(data[-1]) == 1 and data[-1].texts == data.texts[-1:]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n must"):
        text_dataset(-1)
    with pytest.raises(ValueError, match="split"):
        text_dataset(5, split="valid")
    with pytest.raises(ValueError, match="seed"):
        text_dataset(5, seed=1.5)
    for bad in ("some", 1.5, float("nan"), -0.1):
        with pytest.raises(ValueError, match="shortcut"):
            text_dataset(5, shortcut=bad)


# ----------------------------------------------------------------------------------- tokenizers
def test_world_tokenizer_is_the_shipped_file_and_matches_the_ids(no_network):
    tok = tw.load_text_tokenizer()
    assert json.loads(tw.TOKENIZER_PATH.read_text()) == json.loads(tw.build_text_tokenizer().backend_tokenizer.to_str())
    assert tok.convert_ids_to_tokens(list(range(5))) == list(tw.SPECIAL_TOKENS)
    assert tok.pad_token_id == 0 and tok.mask_token_id == VOCABULARY.index("[MASK]")
    data = text_dataset(100, split="train", seed=5)
    for i, text in enumerate(data.texts):
        ids = tok(text)["input_ids"]
        assert ids == data.input_ids[i, :len(ids)].tolist() and len(ids) == int(data.attention_mask[i].sum())
    batch = tok(data.texts, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], data.input_ids) and torch.equal(batch["attention_mask"], data.attention_mask)
    # every word is one token; case and glued punctuation as a user would type them
    assert tok.convert_ids_to_tokens(tok("The plot was DULL. Cheers")["input_ids"]) == \
        ["[CLS]", "the", "plot", "was", "dull", ".", "cheers", "[SEP]"]
    assert tok("zzz")["input_ids"][1] == VOCABULARY.index("[UNK]")


def test_token_masks_on_the_world_tokenizer_equal_the_fields():
    data = text_dataset(60, split="train", seed=2)
    gt = data.token_masks(tw.load_text_tokenizer())
    for k in ("masks", "counter_masks", "shortcut_masks"):
        assert torch.equal(gt[k], getattr(data, k))


def test_token_masks_on_minilm_wordpieces_cover_exactly_the_words(minilm_classifier):
    from lumos.text.adapter import encode

    tok = minilm_classifier[1]
    data = text_dataset(40, split="test", shortcut=0.5, seed=4)
    gt = data.token_masks(tok)
    enc = encode(tok, data.texts, None, tok.pad_token_id)
    assert gt["masks"].shape == enc["input_ids"].shape
    for i in range(len(data)):
        label = int(data.labels[i])
        toks = tok.convert_ids_to_tokens(enc["input_ids"][i].tolist())
        for key, want in (("masks", [w for w in data.words[i] if _CLASS_OF.get(w) == label]),
                          ("counter_masks", [w for w in data.words[i] if _CLASS_OF.get(w) == 1 - label]),
                          ("shortcut_masks", [w for w in data.words[i] if w == SHORTCUT_TOKEN])):
            marked = [t for t, m in zip(toks, gt[key][i].tolist()) if m]
            # WordPieces of the marked words, glued back, are exactly those words
            assert "".join(marked).replace("##", "") == "".join(want)
            assert not (gt[key][i] & enc["special"][i]).any()


# ------------------------------------------------------------------------ the shipped classifier
def test_shipped_classifier_is_accurate_and_learned_the_shortcut(no_network):
    from lumos.data.text_models import load_text_classifier, text_classifier_info
    from lumos.data.text_train import evaluate_text_classifier

    model, tok = load_text_classifier()
    assert not model.training and model.class_names == ["negative", "positive"]
    assert model.config._attn_implementation == "eager" and model.config.num_hidden_layers == 2
    info = text_classifier_info()
    # the record is what the shipped weights do (seed 0), re-measured here
    again = evaluate_text_classifier(model, n=info["n_test"], seed=info["test_seed"])
    for k in ("clean_accuracy", "signed_accuracy", "shortcut_effect", "probability_shift"):
        assert abs(again[k] - info[k]) < 1e-6, k
    fresh = evaluate_text_classifier(model, n=400, seed=11)
    assert fresh["clean_accuracy"] >= 0.98
    assert fresh["positive_rate_clean"] <= 0.02
    assert fresh["shortcut_effect"] >= 0.3  # measured 0.53 at seed 0: "cheers" flips negatives
    assert fresh["probability_shift"] >= 0.3


def test_shipped_classifier_explained_on_strings_puts_mass_on_the_shortcut():
    import lumos
    from lumos.data.text_models import load_text_classifier

    model, tok = load_text_classifier()
    data = text_dataset(8, split="test", shortcut="all", seed=0)
    # integrated gradients: gradient x input saturates on confident texts (values ~1e-3 there)
    e = lumos.explain(model, data.texts, "integrated_gradients", target=1, tokenizer=tok, progress=False)
    values = torch.as_tensor(np.asarray(e.values))
    assert np.array_equal(np.asarray(e.inputs), data.input_ids[:, :values.shape[1]].numpy())
    on_shortcut = values[data.shortcut_masks[:, :values.shape[1]]]
    # the sign-off pushes every text towards "positive"
    assert (on_shortcut > 0).all()


# ---------------------------------------------------------------------------------- the tiny LM
def _heldout_docs(n_files: int = 2) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    held = [p for k, p in enumerate(files) if (k + 1) % 10 == 0][:n_files]
    docs = []
    for path in held:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs += [d for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                              ast.AsyncFunctionDef))
                 if (d := ast.get_docstring(n)) and d.strip()]
    docs = [" ".join(d.split()) for d in docs]  # as docstring_corpus makes them
    return docs


def test_tiny_lm_loads_offline_and_beats_the_unigram_baseline(no_network):
    from lumos.data.text_models import LM_WEIGHTS, load_tiny_lm, tiny_lm_info
    from lumos.data.text_train import _stream, evaluate_tiny_lm

    assert LM_WEIGHTS.stat().st_size < 2_500_000
    model, tok = load_tiny_lm()
    info = tiny_lm_info()
    assert isinstance(model, transformers.GPT2LMHeadModel) and not model.training
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    assert info["heldout_perplexity"] < 0.5 * info["heldout_unigram_perplexity"]
    counts = torch.as_tensor(info["unigram_counts"], dtype=torch.float64) + 1.0
    unigram = (counts / counts.sum()).log()
    docs = _heldout_docs()
    stream = _stream(tok.backend_tokenizer, docs)
    assert stream.tolist()[:3] == [0] + tok(docs[0])["input_ids"][:2]
    r = evaluate_tiny_lm(model, stream[:16 * 128 + 1], unigram)
    assert r["perplexity"] < 0.5 * r["unigram_perplexity"], r
    # the recorded greedy continuations are what the shipped weights and tokenizer write
    from lumos.data.text_train import _greedy

    for prompt, text in info["samples"].items():
        assert _greedy(model, tok.backend_tokenizer, prompt) == text
    # the same scores through the tokenizer that a user loads
    ids = tok("Return the number of items.", return_tensors="pt")["input_ids"]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], info["config"]["vocab_size"]) and torch.isfinite(logits).all()


# ------------------------------------------------------------------------------------- MiniLM
def test_minilm_head_loads_and_its_accuracy_holds(minilm_classifier):
    from lumos.data.text_models import MiniLMClassifier, minilm_classifier_info
    from lumos.data.text_train import evaluate_text_classifier

    model, tok = minilm_classifier
    assert isinstance(model, MiniLMClassifier) and not model.training
    info = minilm_classifier_info()
    r = evaluate_text_classifier(model, n=100, seed=21, tokenizer=tok)
    assert r["clean_accuracy"] >= 0.85  # measured 0.93 on 400 texts of seed 0
    assert r["shortcut_effect"] >= 0.1  # measured 0.26: MiniLM's head learned "cheers" too
    assert info["clean_accuracy"] >= 0.9
    # logits = head(mean of the encoder's states over real tokens), padding does not matter
    enc = tok(["the plot was dull .", "what a lovely film , my sister came along . cheers"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
        h = model.encoder(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        ref = model.head((h * m).sum(1) / m.sum(1))
        one = model(**tok(["the plot was dull ."], return_tensors="pt")).logits
    assert torch.allclose(out.logits, ref, atol=1e-6)
    assert torch.allclose(out.logits[:1], one, atol=1e-5)
    assert model.get_input_embeddings() is model.encoder.get_input_embeddings()


def test_sentence_embeddings_are_normalised_and_batch_independent(minilm_classifier):
    from lumos.data.text_models import sentence_embeddings

    model, tok = minilm_classifier[0].encoder, minilm_classifier[1]
    texts = ["the plot was dull .", "a dull plot .", "i saw it on monday in tokyo with my cousin"]
    e = sentence_embeddings(texts, model, tok)
    e1 = torch.cat([sentence_embeddings(t, model, tok, batch_size=1) for t in texts])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(e, e1, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]  # paraphrases closer than an unrelated sentence
    with pytest.raises(ValueError, match="model, tokenizer"):
        sentence_embeddings(texts, model=model)


# ------------------------------------------------------------------------------- reproducibility
def test_classifier_training_reproduces_bit_for_bit(tmp_path):
    from lumos.data.text_train import train_text_classifier

    rng_before = torch.get_rng_state()
    kw = dict(epochs=1, n_train=64, n_test=16, progress=False, threads=1)
    m1, r1 = train_text_classifier(out=tmp_path, seed=3, **kw)
    m2, _ = train_text_classifier(seed=3, **kw)
    m3, _ = train_text_classifier(seed=4, **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left as found
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["classifier.weight"], s3["classifier.weight"])
    saved = torch.load(tmp_path / "text_classifier.pt", weights_only=True)
    assert saved.keys() == s1.keys() and all(torch.equal(saved[k], s1[k]) for k in s1)
    info = json.loads((tmp_path / "text_classifier.json").read_text())
    assert info["seed"] == 3 and info["threads"] == 1 and info["clean_accuracy"] == r1["clean_accuracy"]
    assert (tmp_path / "text_world_tokenizer.json").read_text() == tw.TOKENIZER_PATH.read_text()
    with pytest.raises(ValueError, match="epochs"):
        train_text_classifier(epochs=0)
    with pytest.raises(ValueError, match="threads"):
        train_text_classifier(threads=0)


def test_lm_training_reproduces_bit_for_bit(tmp_path):
    from lumos.data.text_train import train_tiny_lm

    docs = _heldout_docs(3)
    corpus = (docs[:-10], docs[-10:])
    kw = dict(steps=3, batch_size=4, block=16, vocab_size=300, n_embd=16, n_layer=1, n_head=2, threads=1,
              progress=False, corpus=corpus, prompts=("Return",))
    m1, tok1, r1 = train_tiny_lm(out=tmp_path, seed=1, **kw)
    m2, tok2, r2 = train_tiny_lm(seed=1, **kw)
    m3, _, _ = train_tiny_lm(seed=2, **kw)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["transformer.wte.weight"], s3["transformer.wte.weight"])
    assert tok1.backend_tokenizer.to_str() == tok2.backend_tokenizer.to_str()
    assert r1["heldout_perplexity"] == r2["heldout_perplexity"] and r1["samples"] == r2["samples"]
    saved = torch.load(tmp_path / "text_lm.pt", weights_only=True)
    assert "lm_head.weight" not in saved and torch.equal(saved["transformer.wte.weight"], s1["transformer.wte.weight"])
    assert sum(json.loads((tmp_path / "text_lm.json").read_text())["unigram_counts"]) == r1["train_tokens"]


def test_cli_text_flag_reaches_the_text_trainer(monkeypatch, capsys):
    from lumos.cli import main
    import lumos.data.text_train as tt

    seen = {}

    def fake(**kw):
        seen.update(kw)
        return {"classifier": {}, "lm": {}, "minilm_head": {}}

    monkeypatch.setattr(tt, "train_text_models", fake)
    assert main(["train-demo", "--text", "--threads", "1", "--epochs", "2", "--lm-steps", "5", "--seed", "3"]) == 0
    assert seen == dict(out=None, seed=3, progress=True, threads=1, epochs=2, lm_steps=5)
    assert json.loads(capsys.readouterr().out) == {"classifier": {}, "lm": {}, "minilm_head": {}}


def test_shipped_text_files_are_plain_small_and_recorded():
    from lumos.data import text_models as tm

    for pt, info in ((tm.CLASSIFIER_WEIGHTS, tm.CLASSIFIER_INFO), (tm.LM_WEIGHTS, tm.LM_INFO),
                     (tm.MINILM_HEAD_WEIGHTS, tm.MINILM_HEAD_INFO)):
        state = torch.load(pt, map_location="cpu", weights_only=True)  # no pickled code
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
        assert pt.stat().st_size < 2_000_000, pt
        record = json.loads(info.read_text())
        assert record["seed"] == 0 and record["threads"] == 1
    for tok in (tw.TOKENIZER_PATH, tm.LM_TOKENIZER):
        assert json.loads(tok.read_text())["model"]["type"] in ("WordLevel", "BPE")


def test_missing_files_and_bad_inputs_get_clear_errors(monkeypatch, tmp_path, minilm_classifier):
    from lumos.data import text_models as tm

    monkeypatch.setattr(tm, "CLASSIFIER_WEIGHTS", tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match="train-demo --text"):
        tm.load_text_classifier()
    monkeypatch.setattr(tw, "TOKENIZER_PATH", tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match="train-demo --text"):
        tw.load_text_tokenizer()
    encoder, tok = minilm_classifier[0].encoder, minilm_classifier[1]
    for bad in ([], [1, 2], None):
        with pytest.raises(TypeError, match="texts"):
            tm.sentence_embeddings(bad, encoder, tok)
    with pytest.raises(ValueError, match="batch_size"):
        tm.sentence_embeddings(["a"], encoder, tok, batch_size=0)
