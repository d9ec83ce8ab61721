"""Tabular, text and superpixel displays: they draw the explanation's numbers and leave no state."""
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lumos import Explanation  # noqa: E402
from lumos.display.segments import SegmentsDisplay, plot_segments, segment_values  # noqa: E402
from lumos.display.shap_plots import (  # noqa: E402
    BarDisplay, BeeswarmDisplay, ForceDisplay, WaterfallDisplay, bar, beeswarm, force, waterfall,
)
from lumos.display.text import TextDisplay, text_html  # noqa: E402


@pytest.fixture(autouse=True)
def _no_figures_left():
    before = set(plt.get_fignums())
    yield
    plt.close("all")
    assert set(plt.get_fignums()) <= before


def _tab(n=30, d=12, seed=0):
    r = np.random.default_rng(seed)
    v = r.normal(size=(n, d)) * np.linspace(3, 0.1, d)
    x = r.normal(size=(n, d))
    base = np.full(n, 0.7)
    return Explanation(values=v, inputs=x, output=base + v.sum(1), baseline_output=base,
                       method="toy", feature_names=[f"f{j}" for j in range(d)])


def test_waterfall_draws_the_values_and_closes_at_the_output():
    e = _tab()
    before = e.values.copy()
    d = WaterfallDisplay.from_explanation(e, index=3, max_display=5)
    fig, ax = plt.subplots()
    assert d.plot(ax=ax) is d and d.ax_ is ax and d.figure_ is fig
    np.testing.assert_array_equal(e.values, before)               # nothing changed
    row = e.values[3]
    top = np.argsort(-np.abs(row))[:4]
    np.testing.assert_allclose(d.values_[:4], row[top])
    np.testing.assert_allclose(d.values_[4], np.delete(row, top).sum())   # "8 other features"
    assert d.labels_[4] == "8 other features" and d.labels_[0].startswith(f"f{top[0]} = ")
    widths = np.array([b.get_width() for b in d.bars_])
    np.testing.assert_allclose(widths, d.values_)
    # the bars chain from the base value to f(x)
    top_bar = d.bars_[0]
    np.testing.assert_allclose(top_bar.get_x() + top_bar.get_width(), e.output[3])
    np.testing.assert_allclose(d.bars_[-1].get_x(), 0.7)
    assert [t.get_text() for t in d.texts_][-1] == f"{d.values_[0]:+.3g}"


def test_bar_single_row_and_global_mean_abs():
    e = _tab()
    d = bar(e, index=2, max_display=20)
    heights = np.array([b.get_width() for b in d.bars_])
    order = np.argsort(-np.abs(e.values[2]))
    np.testing.assert_allclose(heights, e.values[2][order])
    g = BarDisplay.from_explanation(e, index=None, max_display=3).plot()
    mean_abs = np.abs(e.values).mean(0)
    o = np.argsort(-mean_abs)
    np.testing.assert_allclose([b.get_width() for b in g.bars_],
                               np.r_[mean_abs[o[:2]], mean_abs[o[2:]].sum()])
    assert g.labels_[:2] == [f"f{o[0]}", f"f{o[1]}"] and g.labels_[2] == "sum of 10 other features"
    # the bars stand at the y tick of their label
    ticks = dict(zip([t.get_text() for t in g.ax_.get_yticklabels()], g.ax_.get_yticks()))
    for b, lab in zip(g.bars_, g.labels_):
        assert np.isclose(b.get_y() + b.get_height() / 2, ticks[lab])


def test_beeswarm_positions_are_the_values_and_colours_follow_feature_values():
    e = _tab(n=60, d=5)
    d = beeswarm(e, max_display=5)
    order = np.argsort(-np.abs(e.values).mean(0))
    assert d.labels_ == [f"f{j}" for j in order]
    for c, j in enumerate(order):
        offs = d.collections_[c].get_offsets()
        np.testing.assert_allclose(np.asarray(offs)[:, 0], e.values[:, j])
        y = np.asarray(offs)[:, 1]
        assert np.all(np.abs(y - (4 - c)) <= 0.4 + 1e-12)            # stays in its own row
        # colour: redder for higher feature values (coolwarm goes blue -> red)
        red = d.collections_[c].get_facecolors()[:, 0]
        x = e.inputs[:, j]
        assert red[np.argmax(x)] > red[np.argmin(x)]
    assert d.colorbar_ is not None
    # deterministic: same picture twice
    d2 = BeeswarmDisplay.from_explanation(e).plot()
    np.testing.assert_array_equal(d.collections_[0].get_offsets(), d2.collections_[0].get_offsets())


def test_force_strip_closes_from_base_to_output():
    e = _tab(d=6)
    d = force(e, index=1)
    vals = e.values[1]
    np.testing.assert_allclose(np.sort(d.values_), np.sort(vals))
    widths = np.array([p.get_width() for p in d.patches_])
    np.testing.assert_allclose(widths, np.abs(d.values_))
    pos = [p for p, v in zip(d.patches_, d.values_) if v > 0]
    neg = [p for p, v in zip(d.patches_, d.values_) if v < 0]
    # positive pushes end at f(x), negative ones start there
    assert np.isclose(max(p.get_x() + p.get_width() for p in pos), e.output[1])
    assert np.isclose(min(p.get_x() for p in neg), e.output[1])
    assert np.isclose(min(p.get_x() for p in pos), e.output[1] - vals[vals > 0].sum())
    assert np.isclose(max(p.get_x() + p.get_width() for p in neg), e.output[1] - vals[vals < 0].sum())
    assert d.base_value_ == pytest.approx(0.7)


def test_displays_need_per_feature_values_and_a_base():
    img = Explanation(values=np.zeros((1, 3, 8, 8)), method="img")
    with pytest.raises(ValueError, match="features"):
        WaterfallDisplay.from_explanation(img)
    nobase = Explanation(values=np.ones((2, 3)), method="x")
    with pytest.raises(ValueError, match="baseline_output"):
        WaterfallDisplay.from_explanation(nobase)
    with pytest.raises(ValueError, match="max_display"):
        BarDisplay.from_explanation(_tab(), max_display=0)
    with pytest.raises(IndexError):
        ForceDisplay.from_explanation(_tab(n=3), index=5)


def test_tree_shap_waterfall_end_to_end():
    from sklearn.ensemble import GradientBoostingRegressor

    from lumos.agnostic.tree_shap import tree_shap

    r = np.random.default_rng(0)
    X = r.normal(size=(200, 4))
    y = X[:, 0] - 2 * X[:, 1]
    model = GradientBoostingRegressor(n_estimators=10, random_state=0).fit(X, y)
    e = tree_shap(model, X[:5])
    d = waterfall(e, index=0)
    np.testing.assert_allclose(d.base_value_ + d.values_.sum(), model.predict(X[:1])[0], atol=1e-10)
    assert e.plot(index=0).bars_                                    # the lead's dispatcher


# ----------------------------------------------------------------------------- text
def _text_expl():
    tokens = np.array([["I", "<script>alert(1)</script>", "love", "&", ""],
                       ["no", "way", "", "", ""]])
    v = np.array([[0.1, -2.0, 1.0, 0.0, 0.0], [0.5, -0.5, 0, 0, 0]])
    return Explanation(values=v, method="toy", meta={"tokens": tokens, "n_tokens": np.array([4, 2])},
                       sample_keys=("tokens", "n_tokens"))


def test_text_html_is_escaped_and_shaded_by_value():
    e = _text_expl()
    html = text_html(e, 0)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&amp;" in html and html.count("<span") == 4
    # opacity proportional to |value| / max |value|; red for positive, blue for negative
    assert 'rgba(0, 139, 251, 0.800)' in html                      # the -2.0 token
    assert 'rgba(255, 0, 81, 0.400)' in html                       # the +1.0 token
    assert 'title="-2"' in html
    both = text_html(e)
    assert both.count('class="lumos-text"') == 2
    d = TextDisplay.from_explanation(e, 1)
    assert d.tokens == ["no", "way"] and d._repr_html_() == d.to_html()


def test_text_plot_draws_every_token():
    e = _text_expl()
    d = TextDisplay.from_explanation(e, 0).plot()
    assert [t.get_text() for t in d.texts_] == ["I", "<script>alert(1)</script>", "love", "&"]
    alphas = [t.get_bbox_patch().get_facecolor()[3] for t in d.texts_]
    np.testing.assert_allclose(alphas, 0.8 * np.abs([0.1, -2.0, 1.0, 0.0]) / 2.0)
    with pytest.raises(ValueError, match="tokens"):
        TextDisplay.from_explanation(Explanation(values=np.ones((1, 3))), 0)


# ----------------------------------------------------------------------------- superpixels
def _segment_expl():
    seg = np.repeat(np.repeat(np.arange(4).reshape(2, 2), 4, 0), 4, 1)     # 4 blocks of 4x4
    phi = np.array([1.0, -2.0, 0.5, 0.0])
    # spread as the maskers do: each element holds phi_s / (channels * pixels_s)
    v = np.stack([phi[seg] / (3 * 16)] * 3)
    img = np.random.default_rng(0).uniform(size=(1, 3, 8, 8))
    return Explanation(values=v[None], inputs=img, method="toy"), seg, phi


def test_segments_recover_the_segment_values_and_shade_them():
    e, seg, phi = _segment_expl()
    np.testing.assert_allclose(segment_values(e.values[0], seg), phi)
    d = plot_segments(e, 0, segments=seg, alpha=0.6)
    np.testing.assert_allclose(d.values, phi)
    drawn = np.asarray(d.image_.get_array())
    np.testing.assert_allclose(drawn, (phi / 2.0)[seg])               # scaled by max |phi|
    assert d.background_ is not None and d.boundaries_ is not None
    assert set(d.shown_) == {0, 1, 2}
    top = SegmentsDisplay.from_explanation(e, 0, segments=seg).plot(top_k=1, boundaries=False)
    assert list(top.shown_) == [1]
    pos = SegmentsDisplay.from_explanation(e, 0, segments=seg).plot(positive_only=True)
    assert set(pos.shown_) == {0, 2}
    # the masker layout: labels and exact per-segment values in meta
    e2 = Explanation(values=e.values, inputs=e.inputs, method="toy",
                     meta={"segments": seg[None], "segment_values": phi[None]},
                     sample_keys=("segments", "segment_values"))
    np.testing.assert_allclose(SegmentsDisplay.from_explanation(e2).values, phi)
    with pytest.raises(ValueError, match="segments"):
        SegmentsDisplay.from_explanation(Explanation(values=e.values))


def test_import_lumos_does_not_import_matplotlib():
    code = ("import sys, lumos, lumos.agnostic.tree_shap, "
            "lumos.display.shap_plots, lumos.display.text, lumos.display.segments; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
