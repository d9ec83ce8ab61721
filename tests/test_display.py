"""Heatmaps: aggregation and scaling are display-only, the numbers stay raw."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lumos import Explanation  # noqa: E402
from lumos.display.heatmap import (  # noqa: E402
    GridDisplay, HeatmapDisplay, aggregate_channels, image_for_display, plot_grid, scale_map,
)


def _expl(seed=0, n=2):
    r = np.random.default_rng(seed)
    v = r.normal(size=(n, 3, 8, 8))
    x = r.uniform(size=(n, 3, 8, 8))
    return Explanation(values=v, inputs=x, method="toy")


def test_aggregations_match_their_definitions():
    v = np.random.default_rng(0).normal(size=(3, 4, 5))
    np.testing.assert_allclose(aggregate_channels(v, "sum"), v[0] + v[1] + v[2])
    np.testing.assert_allclose(aggregate_channels(v, "abs_sum"), np.abs(v).sum(0))
    np.testing.assert_allclose(aggregate_channels(v, "max_abs"), np.abs(v).max(0))
    np.testing.assert_allclose(aggregate_channels(v, "l2"), np.linalg.norm(v, axis=0))
    with pytest.raises(ValueError, match="aggregate"):
        aggregate_channels(v, "median")


def test_scale_map_percentile_and_sign():
    m = np.linspace(-2, 1, 101).reshape(1, -1)
    scaled, signed, scale = scale_map(m, percentile=100)
    assert signed and scale == 2.0
    np.testing.assert_allclose(scaled, m / 2)
    pos = np.abs(m)
    scaled, signed, _ = scale_map(pos, percentile=50)
    assert not signed and scaled.min() >= 0 and scaled.max() == 1.0
    with pytest.raises(ValueError, match="percentile"):
        scale_map(m, percentile=0)


def test_display_does_not_change_the_numbers():
    e = _expl()
    before = e.values.copy()
    d = HeatmapDisplay.from_explanation(e, index=1, aggregate="sum").plot(alpha=0.5)
    np.testing.assert_array_equal(e.values, before)
    np.testing.assert_allclose(d.heatmap, before[1].sum(0))
    assert d.ax_ is not None and d.figure_ is d.ax_.figure and d.image_ is not None
    assert d.background_ is not None  # drawn over the input image
    plt.close(d.figure_)


def test_display_on_given_axes_and_colour_maps():
    fig, ax = plt.subplots()
    e = Explanation(values=np.abs(np.random.default_rng(1).normal(size=(1, 6, 6))), method="mag")
    d = HeatmapDisplay.from_explanation(e).plot(ax=ax)
    assert d.ax_ is ax and d.image_.get_cmap().name == "inferno"  # magnitudes: sequential
    d2 = HeatmapDisplay.from_explanation(_expl()).plot(ax=ax)
    assert d2.image_.get_cmap().name == "RdBu_r"  # signed: diverging
    plt.close(fig)


def test_tabular_values_are_refused_by_the_heatmap():
    e = Explanation(values=np.ones((2, 3)), method="t", feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="not an image map"):
        HeatmapDisplay.from_explanation(e)


def test_grid_has_one_row_per_image_and_saves_png(tmp_path):
    a, b = _expl(0, 3), _expl(1, 3)
    path = tmp_path / "grid.png"
    fig = plot_grid({"a": a, "b": b}, indices=[0, 2], path=path)
    assert len(fig.axes) == 2 * 3  # 2 rows x (input + 2 methods)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close(fig)


def test_image_for_display_layouts():
    x = np.random.default_rng(0).uniform(2, 5, size=(3, 4, 5))
    im = image_for_display(x)
    assert im.shape == (4, 5, 3) and im.min() == 0 and im.max() == 1
    assert image_for_display(np.ones((1, 4, 5))).shape == (4, 5)


# ----------------------------------------------------------------------------- colour bars and scales
def test_heatmap_is_drawn_in_its_units_with_a_symmetric_colour_bar():
    e = _expl()
    d = HeatmapDisplay.from_explanation(e, index=0).plot(colorbar=True, percentile=90)
    heat = e.values[0].sum(0)
    scale = np.percentile(np.abs(heat), 90)
    np.testing.assert_allclose(np.asarray(d.image_.get_array()), heat)    # raw numbers drawn
    assert (d.image_.norm.vmin, d.image_.norm.vmax) == pytest.approx((-scale, scale))
    np.testing.assert_allclose(d.colorbar_.get_ticks(), [-scale, 0, scale])
    assert d.colorbar_.ax.get_ylabel() == "attribution (sum over channels)"
    assert d.scale_ == pytest.approx(scale)
    mag = Explanation(values=np.abs(e.values), method="m")
    d = HeatmapDisplay.from_explanation(mag).plot(colorbar=True, scale=2.5)
    assert (d.image_.norm.vmin, d.image_.norm.vmax) == (0.0, 2.5)
    np.testing.assert_allclose(d.colorbar_.get_ticks(), [0, 2.5])
    # an all-negative map is not blank: it is signed (diverging), not a clipped magnitude
    neg = Explanation(values=-np.abs(e.values), method="n")
    d = HeatmapDisplay.from_explanation(neg).plot()
    assert d.signed_ and d.image_.get_cmap().name == "RdBu_r"
    with pytest.raises(ValueError, match="scale"):
        HeatmapDisplay.from_explanation(e).plot(scale=0.0)
    plt.close("all")


def _mixed_sign_column():
    """Sample 0's map is all positive, sample 1's has both signs (as occlusion maps can be)."""
    r = np.random.default_rng(2)
    v = np.abs(r.normal(size=(2, 1, 8, 8)))
    v[1] -= 0.8
    return Explanation(values=v, inputs=r.uniform(size=(2, 3, 8, 8)), method="occlusion")


def test_grid_draws_each_column_with_one_colour_map():
    occ = _mixed_sign_column()
    mag = Explanation(values=np.abs(_expl(3).values), inputs=occ.inputs, method="mag")
    d = GridDisplay.from_explanations({"occlusion": occ, "mag": mag}).plot()
    names = {(r, c): d.displays_[r, c].image_.get_cmap().name for r in range(2) for c in ("occlusion", "mag")}
    assert names[0, "occlusion"] == names[1, "occlusion"] == "RdBu_r"
    assert names[0, "mag"] == names[1, "mag"] == "inferno"
    # each map keeps its own scale when no colour bar is asked for
    assert d.scales_["occlusion"][0] != d.scales_["occlusion"][1]
    plt.close(d.figure_)


def test_grid_colour_bars_per_column_group_and_relative(tmp_path):
    occ = _mixed_sign_column()
    other = Explanation(values=_expl(5).values * 100, inputs=occ.inputs, method="big")
    exps = {"occlusion": occ, "big": other}
    d = GridDisplay.from_explanations(exps, row_labels=["true: circle\nexplained: square", "b"]).plot(
        colorbar="column", percentile=100)
    assert len(d.colorbars_) == 2
    for bar, name in zip(d.colorbars_, exps):
        maps = np.stack([d.displays_[r, name].heatmap for r in range(2)])
        scale = np.abs(maps).max()
        assert d.scales_[name] == [scale, scale]                   # one scale down the column
        np.testing.assert_allclose(bar.get_ticks(), [-scale, 0, scale])
    assert d.axes_[0, 0].get_ylabel() == "true: circle\nexplained: square"
    g = GridDisplay.from_explanations(exps).plot(colorbar="grid", percentile=100)
    assert len(g.colorbars_) == 1
    assert g.scales_["occlusion"] == g.scales_["big"]
    grp = GridDisplay.from_explanations(exps).plot(colorbar=[["big"]], cmap={"big": "PuOr"})
    assert len(grp.colorbars_) == 1 and grp.cmaps_["big"] == "PuOr"
    rel = GridDisplay.from_explanations(exps).plot(colorbar="relative")
    assert len(rel.colorbars_) == 1 and rel.colorbars_[0].get_ticks().tolist() == [-1, 0, 1]
    assert len({m for m in rel.cmaps_.values()}) == 1
    with pytest.raises(ValueError, match="colorbar"):
        GridDisplay.from_explanations(exps).plot(colorbar=[["nope"]])
    with pytest.raises(ValueError, match="colorbar"):
        GridDisplay.from_explanations(exps).plot(colorbar="rows")
    with pytest.raises(ValueError, match="row_labels"):
        GridDisplay.from_explanations(exps, row_labels=["one"])
    fig = plot_grid(exps, path=tmp_path / "g.png", colorbar="column")
    assert len(fig.axes) == 2 * 3 + 2
    plt.close("all")


# ----------------------------------------------------------------------------- Explanation.plot
def _table(n=6, d=4, names=None):
    r = np.random.default_rng(0)
    v = r.normal(size=(n, d))
    base = np.full(n, 0.5)
    return Explanation(values=v, inputs=r.normal(size=(n, d)), output=base + v.sum(1),
                       baseline_output=base, method="tab",
                       feature_names=names or [f"x{j}" for j in range(d)])


def test_plot_of_a_batch_draws_the_batch():
    from lumos.display.shap_plots import BarDisplay, BeeswarmDisplay, ForceDisplay, WaterfallDisplay

    imgs = _expl(0, 3)
    g = imgs.plot()
    assert isinstance(g, GridDisplay) and g.axes_.shape == (3, 2)
    np.testing.assert_allclose(g.displays_[2, "toy"].heatmap, imgs.values[2].sum(0))
    assert isinstance(imgs[1].plot(), HeatmapDisplay)
    assert isinstance(imgs.plot(index=1), HeatmapDisplay)
    many = _expl(0, 20)
    big = many.plot()
    assert big.axes_.shape[0] == 16 and "16 of 20" in big.figure_.get_suptitle()
    tab = _table()
    assert isinstance(tab.plot(), BeeswarmDisplay)
    w = tab[2].plot()
    assert isinstance(w, WaterfallDisplay)
    np.testing.assert_allclose(np.sort(w.values_), np.sort(tab.values[2]))
    assert isinstance(tab.plot("waterfall", index=2), WaterfallDisplay)
    assert isinstance(tab[0].plot("force"), ForceDisplay)
    b = tab.plot(kind="bar")
    assert isinstance(b, BarDisplay) and b.xlabel == "mean |attribution|"
    nobase = Explanation(values=tab.values, method="lime")
    assert isinstance(nobase[0].plot(), BarDisplay)
    with pytest.raises(ValueError, match="index"):
        tab.plot(kind="waterfall")
    with pytest.raises(ValueError, match="waterfal"):
        tab.plot(kind="waterfal")
    with pytest.raises(TypeError, match="max_display"):
        tab.plot(kind="beeswarm", max_dispaly=3)
    with pytest.raises(IndexError):
        tab.plot(index=6)
    plt.close("all")


# ----------------------------------------------------------------------------- repr
def test_reprs_are_short():
    big = Explanation(values=np.zeros((64, 3, 224, 224), np.float32), inputs=np.zeros((64, 3, 224, 224)),
                      target=np.arange(64), output=np.zeros(64), method="integrated_gradients",
                      params={"n_steps": 50}, meta={"completeness_gap": np.zeros(64)})
    text = repr(big)
    assert len(text) < 300 and "integrated_gradients" in text and "(64, 3, 224, 224)" in text
    assert "target=[0, 1, 2, 3, …]" in text
    d = HeatmapDisplay.from_explanation(big, index=0)
    assert len(repr(d)) < 300 and "array(224, 224)" in repr(d)
    from lumos.display.shap_plots import WaterfallDisplay

    w = WaterfallDisplay.from_explanation(_table(n=3, d=500), index=0)
    assert len(repr(w)) < 300


def test_explanation_html_has_a_picture_and_escapes_text():
    import base64
    import re

    before = set(plt.get_fignums())
    e = _table(n=5, names=["<script>alert(1)</script>", "a & b", "x2", "x3"])
    page = e._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &amp; b" in page
    m = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert m is not None
    assert base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table" in page and "tab" in page
    assert set(plt.get_fignums()) == before                          # no figure left for the notebook
    img = _expl(0, 12)._repr_html_()
    assert 'src="data:image/png;base64,' in img
    odd = Explanation(values=np.zeros((2, 3, 4, 5, 6)), method="odd")
    assert "no picture" in odd._repr_html_()


def test_several_inputs_repr_and_plot_say_which_parts():
    r = np.random.default_rng(0)
    e = Explanation(values={"image": r.normal(size=(2, 3, 8, 8)), "meta": r.normal(size=(2, 5))},
                    method="ig")
    text = repr(e)
    assert "image: (2, 3, 8, 8)" in text and "meta: (2, 5)" in text and len(text) < 300
    with pytest.raises(ValueError, match="part"):
        e.plot()
    page = e._repr_html_()
    assert "e.part(name) draws one" in page and "<img" not in page
    assert isinstance(e.part("image").plot(), GridDisplay)
    plt.close("all")


def test_metric_result_repr_is_short_and_html_is_an_escaped_table():
    from lumos.metrics.results import MetricResult

    scores = np.r_[np.linspace(0, 1, 9999), np.nan]
    res = MetricResult("deletion", scores, "lower", method="<b>ig</b>",
                       params={"n_steps": 20, "scale": "probability", "model": object()},
                       curves={"x": np.linspace(0, 1, 21), "y": np.zeros((10000, 21))})
    assert len(repr(res)) < 300 and "deletion" in repr(res)
    page = res._repr_html_()
    assert page.startswith("<table") and "<b>" not in page and "&lt;b&gt;ig&lt;/b&gt;" in page
    assert "0.5 ± 0.0029" in page                        # mean ± standard error of the mean
    assert "10000 (1 undefined)" in page and "probability" in page
    assert "y (10000, 21)" in page and "model=&lt;object&gt;" in page
