"""lumos.dictionary views: feature dashboards, attribution to features, SoLU, the toy model of
superposition, and the dictionary demo section (issue 17)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import headless_browser
import torch
from torch import nn

import lumos
from lumos.dictionary import SAE
from lumos.dictionary.attribution import feature_attribution, feature_target
from lumos.dictionary.dashboard import _OCTAVE_BINS, feature_dashboards
from lumos.dictionary.softmax_linear import SoLU, solu
from lumos.dictionary.superposition import (PHASES, feature_norms, phase_diagram, superposition_measure,
                                            train_toy_model)

XSS = "<script>alert(1)</script>"


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------- SoLU
def test_solu_is_layernorm_of_x_times_softmax():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    m = SoLU(10).double()
    with torch.no_grad():
        m.ln.weight.copy_(torch.linspace(0.5, 2.0, 10))
        m.ln.bias.copy_(torch.linspace(-1.0, 1.0, 10))
    # the definition written out: y = x * exp(x) / sum(exp(x)); LayerNorm(y) = (y - mean) / sqrt(var + eps) * g + b
    y = x * torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    ref = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
    ref = ref * m.ln.weight + m.ln.bias
    assert torch.allclose(m(x), ref, atol=1e-12, rtol=0)
    assert torch.allclose(SoLU(10, layer_norm=False)(x), y, atol=1e-15, rtol=0)
    assert torch.allclose(solu(x), y, atol=1e-15, rtol=0)
    # the softmax makes the largest entry dominate: a one-hot-ish input keeps its winner
    z = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    assert solu(z)[0, 0] > 4.9 and solu(z)[0, 1:].abs().max() < 0.04
    with pytest.raises(ValueError, match="width"):
        SoLU(10)(torch.randn(2, 9))
    with pytest.raises(ValueError, match="width"):
        SoLU(0)


# ---------------------------------------------------------------------- superposition
def test_superposition_measures_closed_form():
    W = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 2.0, 0.0, 0.0]])  # features 0 and 2 antipodal, 3 absent
    assert np.allclose(feature_norms(W), [1.0, 2.0, 1.0, 0.0])
    # feature 0: (W_0/1 . W_2)^2 = 1; feature 1: none; feature 3 (zero column): 0
    assert np.allclose(superposition_measure(W), [1.0, 0.0, 1.0, 0.0])
    assert np.allclose(superposition_measure(np.stack([W, 2 * W])), [[1, 0, 1, 0], [4, 0, 4, 0]])


def test_toy_model_dense_dedicated_sparse_superposed_and_seeded():
    m = train_toy_model(5, 2, [0.0, 0.9], 0.9, n_steps=600, batch_size=256, lr=3e-2, seed=0)
    norms = m.norms
    # dense: the two most important features get (orthogonal) dedicated directions, the rest ignored
    assert np.all(norms[0, :2] > 0.9) and np.all(norms[0, 2:] < 0.2)
    assert np.all(m.superposition[0, :2] < 0.05)
    gram = m.W[0].T @ m.W[0]
    assert abs(gram[0, 1]) < 0.05
    # sparse: more features than dimensions are represented
    assert m.n_represented()[1] > 2
    assert m.superposition[1][m.represented()[1]].max() > 0.5
    short = train_toy_model(5, 2, [0.0, 0.9], 0.9, n_steps=30, seed=0)
    again = train_toy_model(5, 2, [0.0, 0.9], 0.9, n_steps=30, seed=0)
    assert np.array_equal(again.W, short.W) and np.array_equal(again.b, short.b)
    other = train_toy_model(5, 2, [0.0, 0.9], 0.9, n_steps=30, seed=1)
    assert not np.array_equal(other.W, short.W)
    x = np.random.default_rng(0).random((3, 5))
    assert np.allclose(m.forward(x, 1), np.maximum(x @ m.W[1].T @ m.W[1] + m.b[1], 0))
    with pytest.raises(ValueError, match="sparsity"):
        train_toy_model(5, 2, 1.0)
    with pytest.raises(ValueError, match="importance"):
        train_toy_model(5, 2, 0.5, np.ones(4))


def test_phase_diagram_corners():
    pd = phase_diagram(density=[0.02, 1.0], relative_importance=[0.1, 1.0, 10.0], n_steps=600, seed=0)
    assert pd.phase.shape == (3, 2)
    name = lambda i, j: PHASES[pd.phase[i, j]] if pd.phase[i, j] >= 0 else "none"  # noqa: E731
    assert name(0, 1) == "ignored"      # dense, the extra feature 10x less important
    assert name(2, 1) == "dedicated"    # dense, the extra feature 10x more important
    assert name(1, 0) == "superposed"   # sparse, equal importance: both share the dimension
    # the label follows the measured norms
    assert pd.norms[1, 0].min() > 0.5 and pd.norms[0, 1, 1] <= 0.5 < pd.norms[0, 1, 0]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = pd.plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("superposed" in t for t in labels) and any("ignored" in t for t in labels)
    assert "density" in ax.get_xlabel() and "importance" in ax.get_ylabel()
    plt.close(ax.figure)


def test_view_modules_do_not_import_matplotlib():
    code = ("import sys, lumos.dictionary.superposition, lumos.dictionary.dashboard, "
            "lumos.dictionary.attribution, lumos.dictionary.softmax_linear; print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -------------------------------------------------------------------------- attribution
def _linear_setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)).double().eval()
    sae = SAE(8, 16, "relu", seed=1, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.fill_(0.2)
        sae.b_dec.copy_(torch.linspace(-0.3, 0.3, 8))
    return model, sae, torch.randn(6, 5, dtype=torch.float64)


def test_feature_attribution_closed_form_on_a_model_linear_in_the_features():
    model, sae, x = _linear_setup()
    before = _state(model)
    g = feature_attribution(model, x, sae, "0", target=1)
    a = feature_attribution(model, x, sae, "0", target=1, method="ablation")
    codes = sae.encode(model[0](x)).detach()
    w = model[1].weight[1].detach()
    closed = codes * (sae.W_dec.detach() @ w)[None, :]  # f_i * (w . d_i)
    assert codes.gt(0).sum() > 10  # features actually fire
    assert np.abs(g.values - closed.numpy()).max() < 1e-12
    assert np.abs(a.values - closed.numpy()).max() < 1e-12
    # completeness: features + the output at zero codes (error kept) = the output, which is the model's
    y = model(x)[:, 1].detach().numpy()
    assert np.abs(g.output - y).max() < 1e-12
    assert np.abs(g.values.sum(1) + g.meta["zero_codes_output"] - y).max() < 1e-12
    # the error term's share: w . (act - recon)
    err = model[0](x) - sae.reconstruct(model[0](x))
    assert np.abs(g.meta["error"] - (err @ w).detach().numpy()).max() < 1e-12
    assert _same_state(before, _state(model)) and not model.training
    assert not model[0]._forward_hooks
    assert all(p.grad is None for p in sae.parameters())


def test_feature_attribution_without_error_term_and_subset():
    model, sae, x = _linear_setup(1)
    e = feature_attribution(model, x, sae, "0", target=0, error_term=False, features=[3, 1, 7],
                            method="ablation")
    assert e.values.shape == (6, 3) and e.meta["features"] == [3, 1, 7]
    spliced = model[1](sae.reconstruct(model[0](x)))[:, 0].detach().numpy()
    assert np.abs(e.output - spliced).max() < 1e-12
    # a sample's attribution does not depend on the other samples of the batch
    one = feature_attribution(model, x[2:3], sae, "0", target=0, error_term=False, features=[3, 1, 7],
                              method="ablation")
    assert np.abs(one.values[0] - e.values[2]).max() < 1e-12
    with pytest.raises(ValueError, match="feature"):
        feature_attribution(model, x, sae, "0", features=[16])
    with pytest.raises(ValueError, match="method"):
        feature_attribution(model, x, sae, "0", method="shap")


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean((2, 3)))


def test_feature_target_reads_the_feature_for_any_method():
    torch.manual_seed(0)
    net = _ConvNet().double().eval()
    sae = SAE(4, 12, "relu", seed=2, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64)
    act = net.act(net.conv(x)).detach()
    codes = sae.encode(act.permute(0, 2, 3, 1).reshape(-1, 4)).detach().reshape(3, 36, 12)
    f = int(codes.sum((0, 1)).argmax())
    e = lumos.explain(net, x, method="integrated_gradients", target=feature_target(sae, "act", f), n_steps=64)
    assert np.abs(e.output - codes[:, :, f].sum(1).numpy()).max() < 1e-12
    assert e.values.shape == x.shape
    # completeness of IG: sum = F(x) - F(0)
    base = sae.encode(net.act(net.conv(torch.zeros_like(x))).permute(0, 2, 3, 1).reshape(-1, 4)
                      ).detach().reshape(3, 36, 12)[:, :, f].sum(1).numpy()
    assert np.abs(e.values.reshape(3, -1).sum(1) - (e.output - base)).max() < 0.05 * np.abs(e.output).max()
    s = lumos.explain(net, x, method="saliency", target=feature_target(sae, "act", f, reduce="max"))
    assert np.abs(s.output - codes[:, :, f].amax(1).numpy()).max() < 1e-12
    p = lumos.explain(net, x, method="saliency", target=feature_target(sae, "act", f, position=14))
    assert np.abs(p.output - codes[:, 14, f].numpy()).max() < 1e-12
    with pytest.raises(ValueError, match="feature"):
        feature_target(sae, "act", 12)
    with pytest.raises(ValueError, match="reduce"):
        feature_target(sae, "act", 0, reduce="median")


# ---------------------------------------------------------------------------- dashboards
class _TokModel(nn.Module):
    def __init__(self, vocab=20, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mid = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab)

    def forward(self, ids):
        return self.out(torch.relu(self.mid(self.emb(ids))))


class _Tok:
    def decode(self, ids):
        return XSS if ids[0] == 3 else f"t{ids[0]}"


def _token_setup():
    torch.manual_seed(0)
    model = _TokModel().eval()
    sae = SAE(8, 16, "relu", seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(-0.2)
    ids = torch.randint(0, 20, (60, 12), generator=torch.Generator().manual_seed(1))
    ids[5, 4] = 3
    return model, sae, ids


def test_dashboard_matches_brute_force_and_batch_size():
    model, sae, ids = _token_setup()
    before = _state(model)
    feats = [0, 2, 5, 9]
    d = feature_dashboards(model, sae, ids, "mid", feats, k=5, k_band=3, tokenizer=_Tok(), unembed=model.out,
                           batch_size=7, window=3)
    d2 = feature_dashboards(model, sae, ids, "mid", feats, k=5, k_band=3, tokenizer=_Tok(), unembed=model.out,
                            batch_size=60, window=3)
    assert _same_state(before, _state(model)) and not model.mid._forward_hooks
    codes = sae.encode(model.mid(model.emb(ids))).detach().double()  # (60, 12, 16)
    dec = sae.W_dec.detach().double()
    unit = dec / dec.norm(dim=1, keepdim=True)
    fired_any = False
    for f in feats:
        fd, fd2 = d[f], d2[f]
        c = codes[:, :, f]
        smax = c.amax(1).numpy()
        assert fd.density == pytest.approx(float((c > 0).double().mean()), abs=1e-15)
        assert fd.max_activation == pytest.approx(float(c.max().clamp_min(0)), abs=1e-12)
        # top-k: a full sort of per-sample maxima (ties: earlier sample first), whatever the batch size
        firing = np.flatnonzero(smax > 0)
        order = firing[np.lexsort((firing, -smax[firing]))][:5]
        assert [e.sample for e in fd.top] == order.tolist() == [e.sample for e in fd2.top]
        for e in fd.top:
            assert e.activation == pytest.approx(smax[e.sample], abs=1e-12)
            assert e.values[e.focus] == pytest.approx(smax[e.sample], abs=1e-12)
            assert c[e.sample, e.position] == pytest.approx(smax[e.sample], abs=1e-12)
            assert len(e.tokens) == len(e.values) <= 7
        # histogram: exact counts of the non-zero activations on equal bins of (0, max]
        v = c[c > 0].numpy()
        if v.size:
            fired_any = True
            ref, _ = np.histogram(v, bins=np.linspace(0, v.max(), 31))
            assert np.array_equal(fd.hist_counts, ref)
            # band edges: quantiles of the per-sample maxima within one log-bin (2.2 %)
            for (lo, hi, qlo, qhi, exs), (lo2, hi2, _, _, exs2) in zip(fd.bands, fd2.bands):
                for edge, q in ((lo, qlo), (hi, qhi)):
                    exact = np.quantile(smax[firing], q, method="inverted_cdf")
                    assert abs(edge - exact) <= exact * (2 ** (1 / _OCTAVE_BINS) - 1) + 1e-12
                assert all(lo - 1e-12 <= e.activation <= hi + 1e-12 for e in exs)
                assert [e.sample for e in exs] == [e.sample for e in exs2]  # seeded, batch independent
                upper = (smax <= hi) if qhi == 1.0 else (smax < hi)  # the last band is closed
                n_in = int(((smax >= lo) & upper & (smax > 0)).sum())
                assert len(exs) == min(3, n_in)
        # output effects and nearest features
        eff = (model.out.weight.detach().double() @ dec[f]).numpy()
        if fd.effects_pos:
            assert fd.effects_pos[0][1] == pytest.approx(eff.max(), abs=1e-12)
            assert fd.effects_pos[0][0] == (XSS if int(eff.argmax()) == 3 else f"t{int(eff.argmax())}")
        if fd.effects_neg:
            assert fd.effects_neg[0][1] == pytest.approx(eff.min(), abs=1e-12)
        cos = (unit[f] @ unit.T).numpy()
        cos[f] = -np.inf
        assert [g for g, _ in fd.neighbours] == np.argsort(-cos, kind="stable")[:5].tolist()
    assert fired_any


def test_dashboard_html_is_self_contained_and_escaped(tmp_path):
    model, sae, ids = _token_setup()
    codes = sae.encode(model.mid(model.emb(ids))).detach()
    f = int(codes[5, 4].argmax())  # a feature that fires on the XSS token
    d = feature_dashboards(model, sae, ids, "mid", [f], k=60, tokenizer=_Tok(), unembed=model.out,
                           title=XSS, window=12)
    assert any(XSS in e.tokens for e in d[f].top)
    html = d.to_html(f)
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower() and "http://" not in html and "https://" not in html
    assert "<svg" in html and "Nearest features" in html
    paths = d.save(tmp_path)
    assert paths == [tmp_path / f"feature_{f}.html"] and paths[0].read_text(encoding="utf-8") == html
    with pytest.raises(TypeError, match="iterator"):
        feature_dashboards(model, sae, iter([ids]), "mid", [f])
    with pytest.raises(ValueError, match="bands"):
        feature_dashboards(model, sae, ids, "mid", [f], bands=(0.5, 0.2))


def test_dashboard_image_crops_and_classifier_effects():
    from lumos.data import load_demo_model, shapes_dataset

    model = load_demo_model()
    data = shapes_dataset(12, split="test", seed=0)
    sae = SAE(64, 32, "topk", k=4, seed=0)
    d = feature_dashboards(model, sae, data.images, "features.10", [0, 1, 2], k=3, k_band=2)
    assert d.effects_source.startswith("classifier")
    fd = next(d[f] for f in (0, 1, 2) if d[f].top)
    ex = fd.top[0]
    assert ex.image is not None and ex.image.dtype == np.uint8 and ex.image.shape[-1] == 3
    eff = (model.classifier.weight.detach().double() @ sae.W_dec[fd.feature].detach().double()).numpy()
    labels = [n for n, _ in fd.effects_pos] + [n for n, _ in fd.effects_neg]
    assert set(labels) <= set(model.class_names)
    if fd.effects_pos:
        assert fd.effects_pos[0] == (model.class_names[int(eff.argmax())], pytest.approx(eff.max(), abs=1e-9))
    html = d.to_html(fd.feature)
    assert "data:image/png;base64," in html and "<script" not in html.lower()


# ------------------------------------------------------------------------------ the demo
def test_dictionary_demo_quick(tmp_path):
    from lumos.dictionary._demo import dictionary_demo

    files = {}
    lines = dictionary_demo(tmp_path, quick=True, files=files)
    text = "\n".join(lines)
    assert "explained variance" in text and "loss recovered" in text and "superposed" in text
    pages = sorted(tmp_path.glob("dictionary_feature_*.html"))
    assert len(pages) == 1 and (tmp_path / "dictionary_superposition.png").exists()
    assert set(files) == {str(pages[0]), str(tmp_path / "dictionary_superposition.png")}
    assert "<script" not in pages[0].read_text(encoding="utf-8").lower()


def test_dashboard_renders_in_a_real_browser_with_tokens_as_text(tmp_path):
    from html.parser import HTMLParser

    model, sae, ids = _token_setup()
    f = int(sae.encode(model.mid(model.emb(ids))).detach()[5, 4].argmax())
    d = feature_dashboards(model, sae, ids, "mid", [f], k=60, tokenizer=_Tok(), unembed=model.out, window=12)
    page = d.save(tmp_path)[0]
    cmd = headless_browser() + ["--dump-dom", page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    tags, texts = [], []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)

        def handle_data(self, data):
            texts.append(data)

    P(convert_charrefs=True).feed(res.stdout)
    n_xss = sum(t.count(XSS) for e in d[f].top for t in e.tokens)
    assert n_xss > 0 and "script" not in tags
    assert sum(t == XSS for t in texts) >= n_xss  # each shown as the text it is, in its own span
    assert tags.count("rect") == 30  # the histogram's bars


def test_feature_attribution_on_token_ids_with_a_callable_target():
    model, sae, ids = _token_setup()
    tgt = lambda out: out[:, -1, 5]  # noqa: E731 - the last token's logit of token 5
    g = feature_attribution(model, ids[:4], sae, "mid", target=tgt)
    a = feature_attribution(model, ids[:4], sae, "mid", target=tgt, method="ablation", features=[0, 1])
    assert g.values.shape == (4, 16) and a.values.shape == (4, 2)
    assert np.abs(g.output - model(ids[:4])[:, -1, 5].detach().numpy()).max() < 1e-6
    # the codes are summed over the 12 token positions
    codes = sae.encode(model.mid(model.emb(ids[:4]))).detach()
    assert np.abs(g.inputs - codes.sum(1).numpy()).max() < 1e-5
