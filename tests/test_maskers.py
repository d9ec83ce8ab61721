"""Maskers and the tabular layout shared by LIME, KernelSHAP and feature ablation."""
import numpy as np
import pandas as pd
import pytest

from lumos.agnostic._tabular import TabularData
from lumos.agnostic.maskers import ImageMasker, TabularMasker, TextMasker, default_masker


@pytest.fixture(autouse=True)
def _one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _frame(n=50, seed=0):
    r = np.random.default_rng(seed)
    return pd.DataFrame({
        "f": r.normal(size=n),
        "i": r.integers(0, 9, n),
        "s": pd.Series(r.choice(["a", "b", "c"], n), dtype="str"),
        "cat": pd.Categorical(r.choice(["lo", "hi"], n), categories=["lo", "hi", "unused"]),
        "b": r.random(n) < 0.5,
        "o": pd.Series(r.choice(["x", None], n), dtype=object),
    })


# ---------------------------------------------------------------- tabular layout
def test_dataframe_roundtrip_keeps_names_dtypes_and_values():
    df = _frame()
    t = TabularData.from_data(df)
    assert t.names == list(df.columns)
    np.testing.assert_array_equal(t.categorical, [False, False, True, True, True, True])
    Z = t.encode(df)
    assert Z.dtype == np.float64 and Z.shape == (50, 6)
    back = t.decode(Z)
    pd.testing.assert_frame_equal(back.drop(columns="o"), df.drop(columns="o"))
    # a missing value comes back missing (as NaN: pandas' factorize does not keep None apart)
    np.testing.assert_array_equal(back["o"].isna(), df["o"].isna())
    assert (back["o"][df["o"].notna()] == "x").all()
    assert t.categories[3].tolist() == ["lo", "hi", "unused"]  # a categorical dtype keeps its order


def test_object_and_numeric_arrays():
    A = np.array([[1.5, "red", 3], [2.0, "blue", 4]], dtype=object)
    t = TabularData.from_data(A, feature_names=["w", "colour", "n"])
    np.testing.assert_array_equal(t.categorical, [False, True, False])
    out = t.decode(t.encode(A))
    assert out.dtype == object and out[1, 1] == "blue" and float(out[0, 0]) == 1.5
    N = np.arange(6).reshape(3, 2)
    tn = TabularData.from_data(N, categorical=[1])
    dec = tn.decode(tn.encode(N))
    assert dec.dtype == N.dtype  # the model gets the type it was given
    np.testing.assert_array_equal(dec, N)
    with pytest.raises(ValueError, match="categorical"):
        TabularData.from_data(N, categorical=["nope"])
    with pytest.raises(ValueError, match="feature_names"):
        TabularData.from_data(N, feature_names=["a"])


# ---------------------------------------------------------------- tabular masker
def test_tabular_masker_mixes_rows():
    df = _frame()
    m = TabularMasker(df.iloc[:5]).bind(df.iloc[10:12])
    Z = np.array([[True, False, True, False, True, False], [False] * 6])
    out = m.masked(np.array([1, 0]), Z)
    assert len(out) == 2 * 5 and list(out.columns) == list(df.columns)
    first = out.iloc[:5]
    x = df.iloc[11]
    assert (first["f"] == x["f"]).all() and (first["s"] == x["s"]).all() and (first["b"] == x["b"]).all()
    np.testing.assert_array_equal(first["i"].to_numpy(), df["i"].iloc[:5].to_numpy())
    pd.testing.assert_frame_equal(out.iloc[5:, :5].reset_index(drop=True), df.iloc[:5, :5].reset_index(drop=True))
    np.testing.assert_allclose(m.weights, 0.2)


def test_background_summaries():
    df = _frame(300)
    s = TabularMasker(df, background_size=40, seed=1).bind(df.iloc[:2])
    assert s.n_background == 40 and np.isclose(s.weights.sum(), 1)
    assert s.background_meta() == {"background": "a random sample of 40 of 300 rows (seed 1)",
                                   "n_background_given": 300}
    k = TabularMasker(df, background_size=8, summary="kmeans").bind(df.iloc[:2])
    assert k.n_background <= 8 and np.isclose(k.weights.sum(), 1)
    enc = k.table.encode(df)
    for j in range(6):  # every summary value is a real value of its column
        assert set(k.background[:, j]) <= set(enc[:, j]) | {np.nan}
    np.testing.assert_allclose(np.sort(k.weights * 300), np.sort(np.round(k.weights * 300)))
    full = TabularMasker(df).bind(df.iloc[:2])  # by default every row is used
    assert full.n_background == 300
    assert full.background_meta()["background"] == "all 300 rows"
    with pytest.raises(ValueError, match="summary"):
        TabularMasker(df, summary="median")


def test_default_masker_choice_and_errors():
    assert isinstance(default_masker(["a text"]), TextMasker)
    assert isinstance(default_masker(np.zeros((2, 3, 8, 8))), ImageMasker)
    assert isinstance(default_masker(np.zeros((2, 3)), background=np.zeros((4, 3))), TabularMasker)
    with pytest.raises(ValueError, match="background"):
        default_masker(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="either"):
        default_masker(np.zeros((2, 3)), TabularMasker(np.zeros((2, 3))), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="masker"):
        default_masker(np.zeros((2, 3)), masker="tabular")


# ---------------------------------------------------------------- images
def test_image_masker_fills_and_layout():
    r = np.random.default_rng(0)
    imgs = r.random((2, 3, 8, 8)).astype(np.float32)
    m = ImageMasker(segmentation="grid", n_segments=4, fill="mean").bind(imgs)
    np.testing.assert_array_equal(m.n_features, [4, 4])
    seg = m.segments[0]
    assert np.all(seg[:4, :4] == seg[0, 0]) and len(np.unique(seg)) == 4
    for s in range(4):  # mean fill: each superpixel shows its own mean colour
        np.testing.assert_allclose(m.fill[0][:, seg == s], imgs[0][:, seg == s].mean(1, keepdims=True)
                                   * np.ones((1, 16)), rtol=1e-5)
    all_on = m.masked(np.array([0, 1]), np.ones((2, 4), bool))
    np.testing.assert_array_equal(all_on, imgs)
    one_off = m.masked(np.array([1]), np.array([[True, False, True, True]]))[0]
    off = m.segments[1] == 1
    np.testing.assert_array_equal(one_off[:, off], m.fill[1][:, off])
    np.testing.assert_array_equal(one_off[:, ~off], imgs[1][:, ~off])
    values, fields = m.layout(np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 8.0]]))
    assert values.shape == imgs.shape
    np.testing.assert_allclose(values.reshape(2, -1).sum(1), [10.0, 8.0])
    np.testing.assert_allclose(values[1, :, m.segments[1] == 3], 8.0 / (3 * 16))


def test_image_masker_variants():
    r = np.random.default_rng(1)
    yy, xx = np.mgrid[:24, :24]
    smooth = np.stack([np.sin(xx / 5.0), np.cos(yy / 7.0), (xx + yy) / 48.0], -1)[None].astype(np.float32)
    last = ImageMasker(n_segments=9).bind(smooth)  # SLIC on a channels-last image
    assert last.axis == 3 and 3 <= last.max_features <= 30
    gray = ImageMasker(segmentation="grid", n_segments=4, fill="blur").bind(r.random((1, 16, 16)))
    assert gray.axis is None and gray.fill.shape == (1, 16, 16) and gray.fill.std() < 0.2
    labels = np.repeat(np.arange(4), 4)[None, :].repeat(16, 0)
    given = ImageMasker(segmentation=labels, fill=0.5).bind(r.random((2, 1, 16, 16)))
    np.testing.assert_array_equal(given.segments[1], labels)
    assert np.all(given.fill == 0.5)
    # four colour blocks: LIME's quickshift settings (kernel 4) need blocks larger than 12 pixels
    # to keep them apart (on 24x24 LIME itself gives one segment)
    blocks = np.zeros((1, 3, 48, 48), np.float32)
    blocks[0, 0, :24] = 1.0
    blocks[0, 1, :, :24] = 1.0
    qs = ImageMasker(segmentation="quickshift").bind(blocks)
    assert qs.axis == 1 and qs.max_features >= 4
    with pytest.raises(ValueError, match="channel"):
        ImageMasker().bind(np.zeros((1, 5, 6, 7)))
    with pytest.raises(ValueError, match="segmentation"):
        ImageMasker(segmentation="watershed")
    with pytest.raises(ValueError, match="fill"):
        ImageMasker(fill=np.zeros(5)).bind(np.zeros((1, 3, 8, 8)))


# ---------------------------------------------------------------- texts
def test_text_masker_removal_and_mask_token():
    texts = ["The film was not good.", "ok"]
    m = TextMasker().bind(texts)
    np.testing.assert_array_equal(m.n_features, [5, 1])
    Z = np.array([[True, False, True, True, True], [True, True, False, False, True]])
    assert m.masked(np.array([0, 0]), Z) == ["The was not good.", "The film good."]
    assert m.masked(np.array([0]), np.zeros((1, 5), bool)) == ["."]
    t = TextMasker(mask_token="[MASK]").bind(texts)
    assert t.masked(np.array([0]), Z[:1]) == ["The [MASK] was not good."]
    tok = t.tokens()
    assert tok.shape == (2, 5) and tok[1].tolist() == ["ok", "", "", "", ""]
    sub = TextMasker(tokenizer=lambda s: ["the", "##m", "good"]).bind(["them good"])
    assert sub.masked(np.array([0]), np.array([[True, False, True]])) == ["the good"]
    with pytest.raises(ValueError, match="no tokens"):
        TextMasker().bind(["...", "fine"])
    with pytest.raises(ValueError, match="list of texts"):
        TextMasker().bind("one text")
