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
    assert [t.get_text() for t in d.texts_] == [f"{v:+.3g}" for v in d.values_]


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
    np.testing.assert_allclose(drawn, phi[seg])                       # in the values' units
    assert d.image_.norm.vmin == -2.0 and d.image_.norm.vmax == 2.0    # scale: max |phi|
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


# ----------------------------------------------------------------------------- readable labels
def _drawn_texts(fig):
    """Every text the renderer draws (tick labels only for the ticks it draws), after a draw."""
    from matplotlib.text import Text

    fig.canvas.draw()
    all_ticks, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                all_ticks.update((tick.label1, tick.label2))
            for tick in axis._update_ticks():      # what Axis.draw draws
                drawn.update((tick.label1, tick.label2))
    return [t for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and (t not in all_ticks or t in drawn)]


def _assert_readable(fig, tol=0.5):
    """No two drawn texts overlap and every one lies inside the figure."""
    renderer = fig.canvas.get_renderer()
    texts = _drawn_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    w, h = fig.bbox.width, fig.bbox.height
    for t, b in zip(texts, boxes):
        assert b.x0 >= -tol and b.y0 >= -tol and b.x1 <= w + tol and b.y1 <= h + tol, \
            f"{t.get_text()!r} is clipped: {b} outside (0, 0, {w}, {h})"
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            if a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol:
                raise AssertionError(f"{texts[i].get_text()!r} overlaps {texts[j].get_text()!r}")
    return len(texts)


def _assert_readable_saved(fig):
    """Readable as drawn, and saved with bbox_inches="tight" nothing lies outside the figure."""
    import io

    n = _assert_readable(fig)
    fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
    fig.canvas.draw()
    tight = fig.get_tightbbox(fig.canvas.get_renderer())
    assert tight.x0 >= -0.02 and tight.y0 >= -0.02 and tight.x1 <= fig.get_figwidth() + 0.02 \
        and tight.y1 <= fig.get_figheight() + 0.02, f"drawn outside the figure: {tight}"
    assert _assert_readable(fig) == n
    return n


def _hard_tab(n=40, d=40, seed=3):
    """Long names, both signs, magnitudes from 1e-4 to 1e4, a base value far from zero."""
    r = np.random.default_rng(seed)
    mag = 10.0 ** np.linspace(4, -4, d)
    v = r.choice([-1.0, 1.0], size=(n, d)) * mag * r.uniform(0.5, 1.5, size=(n, d))
    x = r.normal(size=(n, d)) * 1000
    names = [("monthly income after taxes in the applicant's household, in euros " if j % 3 == 0
              else f"f{j}") + f" #{j}" for j in range(d)]
    base = np.full(n, -12345.6)
    return Explanation(values=v, inputs=x, output=base + v.sum(1), baseline_output=base,
                       method="toy", feature_names=names)


@pytest.mark.parametrize("kind", ["waterfall", "bar", "force", "beeswarm"])
@pytest.mark.parametrize("max_display", [5, 25])
def test_one_panel_has_no_clipped_or_overlapping_text(kind, max_display):
    e = _hard_tab()
    if kind == "force":
        d = force(e, index=1)
    elif kind == "beeswarm":
        d = beeswarm(e, max_display=max_display)
    else:
        d = {"waterfall": waterfall, "bar": bar}[kind](e, index=1, max_display=max_display)
    assert _assert_readable_saved(d.figure_) >= 4


def test_several_panels_have_no_clipped_or_overlapping_text():
    e = _hard_tab()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    waterfall(e, index=0, ax=axes[0])
    bar(e, index=2, ax=axes[1])
    beeswarm(e, ax=axes[2])
    assert _assert_readable_saved(fig) > 30
    fig, axes = plt.subplots(3, 1, figsize=(9, 7))
    for i, ax in enumerate(axes):
        force(e, index=i, ax=ax)
    assert _assert_readable_saved(fig) > 10
    # the demo's picture: a waterfall beside a beeswarm, saved tight
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    WaterfallDisplay.from_explanation(e, index=0).plot(ax=axes[0])
    BeeswarmDisplay.from_explanation(e).plot(ax=axes[1])
    assert _assert_readable_saved(fig) > 20
