"""Heatmaps: aggregation and scaling are display-only, the numbers stay raw."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lumos import Explanation  # noqa: E402
from lumos.display.heatmap import (  # noqa: E402
    HeatmapDisplay, aggregate_channels, image_for_display, plot_grid, scale_map,
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
