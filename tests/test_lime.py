"""LIME on tables, images and texts."""
import re

import numpy as np
import pandas as pd
import pytest

import lumos
from lumos.agnostic._surrogate import fit_surrogate
from lumos.agnostic.maskers import ImageMasker, TabularMasker


@pytest.fixture(autouse=True)
def _one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


RNG = np.random.default_rng(0)
TRAIN = RNG.normal(size=(500, 6)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
X = RNG.normal(size=(3, 6))
W = np.array([2.0, -1.0, 0.0, 4.0, 0.5, 0.0])


def linear(Z):
    return np.asarray(Z) @ W + 1.0


def hinge(Z):
    """Linear near the explained point (x0 = -1), with a kink 2.5 sd away."""
    Z = np.asarray(Z)
    return Z @ W + 5.0 * np.maximum(Z[:, 0] - 1.5, 0.0)


# ---------------------------------------------------------------- tables
def test_continuous_mode_recovers_local_slopes():
    e = lumos.explain(linear, X, method="lime", background=TRAIN, discretizer=None, alpha=0.0)
    np.testing.assert_allclose(e.meta["slopes"], np.tile(W, (3, 1)), atol=1e-9)
    np.testing.assert_allclose(e.meta["r2"], 1.0, atol=1e-12)
    np.testing.assert_allclose(e.meta["local_prediction"], linear(X), atol=1e-9)
    np.testing.assert_allclose(e.values, np.tile(W * TRAIN.std(0), (3, 1)), atol=1e-8)  # per sd
    # a model that is only locally linear: the slopes near x, not the kink 3 sd away
    x = np.array([[-1.0, 0.5, 0.0, 0.2, 1.0, -0.3]])
    h = lumos.explain(hinge, x, method="lime", background=TRAIN, discretizer=None)
    np.testing.assert_allclose(h.meta["slopes"][0], W, atol=0.02)
    assert 0.99 < h.meta["r2"][0] <= 1.0


def test_weighted_r2_is_the_surrogate_fidelity():
    from sklearn.linear_model import Ridge

    r = np.random.default_rng(1)
    R = r.random((300, 4)) < 0.5
    y = R @ np.array([1.0, -2.0, 0.0, 0.5]) + 0.8 * (R[:, 0] & R[:, 1]) + r.normal(0, 0.1, 300)
    w = r.random(300)
    fit = fit_surrogate(R.astype(float), y, w, np.ones(4), None, "none", alpha=1.0)
    ref = Ridge(alpha=1.0).fit(R, y, sample_weight=w)
    pred = ref.predict(R)
    ybar = np.average(y, weights=w)
    r2 = 1 - np.sum(w * (y - pred) ** 2) / np.sum(w * (y - ybar) ** 2)
    np.testing.assert_allclose(fit["r2"], r2, atol=1e-12)
    np.testing.assert_allclose(fit["coef"], ref.coef_, atol=1e-12)
    assert 0.5 < fit["r2"] < 0.999


@pytest.mark.parametrize("selection", ["lars", "forward", "highest_weights"])
def test_selection_finds_the_used_features(selection):
    def f(Z):
        Z = np.asarray(Z)
        return 3 * Z[:, 1] - 2 * Z[:, 4] + 0.05 * Z[:, 0]

    e = lumos.explain(f, X, method="lime", background=TRAIN, n_features=2, selection=selection)
    assert np.all(e.meta["selected"].sum(1) == 2)
    assert np.all(e.meta["selected"][:, [1, 4]])
    assert np.all(e.values[:, [0, 2, 3, 5]] == 0)


def test_same_seed_same_explanation_and_batch_independence():
    a = lumos.explain(hinge, X, method="lime", background=TRAIN, seed=3)
    b = lumos.explain(hinge, X, method="lime", background=TRAIN, seed=3, batch_size=7)
    np.testing.assert_array_equal(a.values, b.values)
    c = lumos.explain(hinge, X, method="lime", background=TRAIN, seed=4)
    assert not np.allclose(a.values, c.values)
    alone = lumos.explain(hinge, X[:1], method="lime", background=TRAIN, seed=3)
    np.testing.assert_allclose(alone.values[0], a.values[0], atol=1e-10)


def test_discretizers_and_conditions():
    def f(Z):
        Z = np.asarray(Z)
        return (Z[:, 0] > 0.5).astype(float) * 3 + Z[:, 3]

    for disc in ("quartile", "decile", "entropy"):
        e = lumos.explain(f, X, method="lime", background=TRAIN, discretizer=disc, n_samples=2000)
        assert e.values.shape == (3, 6) and e.meta["representation"] == "binary"
        assert np.argmax(np.abs(e.values[0])) in (0, 3)
    e = lumos.explain(f, X, method="lime", background=TRAIN, discretizer="entropy",
                      labels=(TRAIN[:, 0] > 0.5).astype(int), n_samples=2000)
    # the entropy bins of x0 split exactly where the labels change
    cond = e.meta["conditions"][:, 0]
    cuts = [float(re.findall(r"-?\d+\.\d+", c)[-1]) for c in cond]
    assert np.all(np.abs(np.array(cuts) - 0.5) < 0.02), cond
    q = lumos.explain(f, X, method="lime", background=TRAIN, discretizer="quartile", n_samples=500)
    edges = np.percentile(TRAIN[:, 1], [25, 50, 75])
    k = np.searchsorted(edges, X[0, 1])
    assert q.meta["conditions"][0, 1] in (f"x1 <= {edges[0]:.4g}", f"x1 > {edges[-1]:.4g}",
                                          f"{edges[k - 1]:.4g} < x1 <= {edges[min(k, 2)]:.4g}")


def test_stability_on_request():
    def f(Z):
        Z = np.asarray(Z)
        return 3 * Z[:, 1] - 2 * Z[:, 4] + 0.01 * Z[:, 2]

    e = lumos.explain(f, X, method="lime", background=TRAIN, n_features=2, stability=3, n_samples=1000)
    np.testing.assert_array_equal(e.meta["stability"], 1.0)
    np.testing.assert_array_equal(e.meta["selection_frequency"][:, [1, 4]], 1.0)
    noisy = lumos.explain(lambda Z: np.asarray(Z) @ np.full(6, 1.0), X, method="lime", background=TRAIN,
                          n_features=2, stability=4, n_samples=200)
    assert np.all((0 <= noisy.meta["stability"]) & (noisy.meta["stability"] <= 1))
    assert "stability" not in lumos.explain(f, X, method="lime", background=TRAIN, n_samples=200).meta


def test_categorical_pipeline_end_to_end():
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    r = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame({
        "income": r.normal(40, 10, n), "age": r.integers(20, 70, n),
        "job": pd.Series(r.choice(["clerk", "chef", "pilot"], n), dtype="str"),
        "owner": r.random(n) < 0.5,
    })
    y = ((df.job == "pilot") | (df.income > 50)).astype(int)
    pipe = make_pipeline(make_column_transformer((OneHotEncoder(), ["job", "owner"]), remainder="passthrough"),
                         HistGradientBoostingClassifier(max_iter=20, random_state=0)).fit(df, y)
    rows = df[df.job == "pilot"].iloc[:2]
    e = lumos.explain(pipe, rows, method="lime", background=df, target=1, n_samples=2000)
    assert e.feature_names == ["income", "age", "job", "owner"]
    assert e.meta["score"] == "predict_proba"
    assert e.meta["conditions"][0, 2] == "job = pilot"
    assert np.argmax(e.values[0]) == 2  # being a pilot is what keeps the probability up
    np.testing.assert_allclose(e.output, pipe.predict_proba(rows)[:, 1])
    assert np.all(e.meta["n_evals"] == 2001)
    # masker mode: coalitions over a background instead of LIME's distribution sampling
    m = lumos.explain(pipe, rows, method="lime", masker=TabularMasker(df.iloc[:20]), target=1, n_samples=500)
    assert m.values.shape == (2, 4) and np.argmax(m.values[0]) == 2


# ---------------------------------------------------------------- images and texts
def test_image_lime_finds_the_segment():
    r = np.random.default_rng(3)
    imgs = r.random((2, 3, 16, 16)).astype(np.float32)

    def f(x):
        return np.stack([x[:, :, 8:, :8].mean((1, 2, 3)), x[:, :, :8, 8:].mean((1, 2, 3))], 1)

    masker = ImageMasker(segmentation="grid", n_segments=4, fill=0.0)
    e = lumos.explain(f, imgs, method="lime", masker=masker, target=0, n_samples=300)
    assert e.values.shape == imgs.shape
    seg = e.meta["segments"][0]
    top = int(np.argmax(e.meta["segment_values"][0]))
    assert np.all(seg[8:, :8] == top)
    np.testing.assert_allclose(e.values.reshape(2, -1).sum(1), e.meta["segment_values"].sum(1), atol=1e-9)
    assert np.all(e.meta["r2"] > 0.99)  # the model is linear in the segments


def test_text_lime():
    def f(texts):
        words = [re.findall(r"\w+", t) for t in texts]
        return np.array([w.count("great") * 2.0 - w.count("boring") for w in words])

    e = lumos.explain(f, ["a great but boring film", "great"], method="lime", n_samples=500)
    assert e.meta["tokens"][0].tolist() == ["a", "great", "but", "boring", "film"]
    assert np.argmax(e.values[0]) == 1 and np.argmin(e.values[0]) == 3
    np.testing.assert_allclose(e.values[0, [1, 3]], [2.0, -1.0], atol=0.05)
    assert e.values[1, 1:].tolist() == [0.0] * 4


# ---------------------------------------------------------------- errors
def test_lime_errors():
    with pytest.raises(ValueError, match="background"):
        lumos.explain(linear, X, method="lime")
    with pytest.raises(ValueError, match="selection"):
        lumos.explain(linear, X, method="lime", background=TRAIN, selection="best")
    with pytest.raises(ValueError, match="discretizer"):
        lumos.explain(linear, X, method="lime", background=TRAIN, discretizer="octile")
    with pytest.raises(ValueError, match="n_features"):
        lumos.explain(linear, X, method="lime", background=TRAIN, n_features=0)
    with pytest.raises(ValueError, match="one row per input"):
        lumos.explain(lambda Z: np.ones(2), X, method="lime", background=TRAIN)
    with pytest.raises(ValueError, match="NaN"):
        lumos.explain(lambda Z: np.full(len(Z), np.nan), X, method="lime", background=TRAIN)
    with pytest.raises(ValueError, match="labels"):
        lumos.explain(linear, X, method="lime", background=TRAIN, discretizer="entropy", labels=[0, 1])


# ---------------------------------------------------------------- surrogates, kernels, samplers
def test_ridge_surrogate_with_a_tiny_kernel_recovers_the_coefficients():
    # continuous mode: the representation is (z - x) / sd, so coefficient / sd is the slope
    e = lumos.explain(linear, X, method="lime", background=TRAIN, discretizer=None,
                      surrogate="ridge", alpha=0.0, kernel_width=0.3, n_samples=400)
    np.testing.assert_allclose(e.meta["slopes"], np.tile(W, (3, 1)), atol=1e-9)
    assert e.meta["kernel_width"] == 0.3


def test_lasso_path_surrogate_is_the_path_point_with_k_features():
    def f(Z):
        Z = np.asarray(Z)
        return 3 * Z[:, 1] - 2 * Z[:, 4] + 0.05 * Z[:, 0]

    e = lumos.explain(f, X, method="lime", background=TRAIN, surrogate="lasso_path",
                      n_features=2, discretizer=None)
    assert np.all(e.meta["selected"].sum(1) == 2) and np.all(e.meta["selected"][:, [1, 4]])
    r = lumos.explain(f, X, method="lime", background=TRAIN, surrogate="ridge", n_features=2,
                      discretizer=None, alpha=0.0)
    # the path's coefficients are shrunk towards 0; the ridge refit on the same two is not
    assert np.all(np.abs(e.values[:, [1, 4]]) < np.abs(r.values[:, [1, 4]]))
    assert np.all(np.abs(e.values[:, [1, 4]]) > 0.5 * np.abs(r.values[:, [1, 4]]))


def test_a_scikit_learn_regressor_surrogate_gives_its_coef():
    from sklearn.linear_model import HuberRegressor

    fitted = []

    class Spy(HuberRegressor):
        def fit(self, X, y, sample_weight=None):
            super().fit(X, y, sample_weight=sample_weight)
            fitted.append((self.coef_.copy(), sample_weight is not None))
            return self

    e = lumos.explain(hinge, X[:2], method="lime", background=TRAIN, surrogate=Spy(),
                      discretizer=None, n_samples=300)
    assert len(fitted) == 2 and all(weighted for _, weighted in fitted)
    np.testing.assert_array_equal(e.values, np.stack([c for c, _ in fitted]))
    with pytest.raises(TypeError, match="surrogate"):
        from sklearn.tree import DecisionTreeRegressor
        lumos.explain(linear, X, method="lime", background=TRAIN, surrogate=DecisionTreeRegressor())
    with pytest.raises(ValueError, match="surrogate"):
        lumos.explain(linear, X, method="lime", background=TRAIN, surrogate="lasso")


def test_custom_kernel_and_sampler_are_used():
    seen = {"kernel": 0, "sampler": 0}

    def kernel(d):
        seen["kernel"] += 1
        return np.ones_like(d)  # every sample counts alike

    def sampler(x, n, gen):
        seen["sampler"] += 1
        return x + gen.normal(size=(n, len(x)))

    e = lumos.explain(linear, X, method="lime", background=TRAIN, discretizer=None, alpha=0.0,
                      kernel=kernel, sampler=sampler, n_samples=50)
    assert seen == {"kernel": 3, "sampler": 3}
    np.testing.assert_allclose(e.meta["slopes"], np.tile(W, (3, 1)), atol=1e-9)
    # a sampler's samples are what the model sees: a constant sampler makes a constant target
    flat = lumos.explain(linear, X, method="lime", background=TRAIN, discretizer=None,
                         sampler=lambda x, n, gen: np.tile(x, (n, 1)), n_samples=20)
    np.testing.assert_array_equal(flat.values, 0.0)
    with pytest.raises(ValueError, match="sampler"):
        lumos.explain(linear, X, method="lime", background=TRAIN, sampler=lambda x, n, g: x)
    with pytest.raises(ValueError, match="kernel"):
        lumos.explain(linear, X, method="lime", background=TRAIN, kernel=lambda d: -d)


def test_image_lime_with_a_custom_pattern_sampler():
    imgs = np.random.default_rng(3).random((1, 3, 16, 16)).astype(np.float32)
    calls = []

    def sampler(M, n, gen):
        calls.append(M)
        return gen.random((n, M)) < 0.8

    masker = ImageMasker(segmentation="grid", n_segments=4, fill=0.0)
    e = lumos.explain(lambda x: x[:, :, 8:, :8].mean((1, 2, 3)), imgs, method="lime",
                      masker=masker, sampler=sampler, n_samples=100)
    assert calls == [4] and e.values.shape == imgs.shape


def test_groups_give_one_value_per_group():
    def f(Z):
        Z = np.asarray(Z)
        return 2 * Z[:, 0] + Z[:, 1] - 3 * Z[:, 3]

    groups = {"ab": [0, 1], "unused": ["x2", "x4"]}
    e = lumos.explain(f, X, method="lime", background=TRAIN, groups=groups, n_samples=5000)
    assert e.values.shape == (3, 4)
    assert e.feature_names == ["ab", "unused", "x3", "x5"]
    assert e.meta["groups"]["unused"] == ["x2", "x4"]
    # the groups the model ignores get (almost) nothing next to those it uses
    assert np.all(np.abs(e.values[:, 1]) < 0.1 * np.abs(e.values[:, [0, 2]]).max(1))
    assert np.all(np.abs(e.values[:, 3]) < 0.1 * np.abs(e.values[:, [0, 2]]).max(1))
    # a removed group is one training row's values: "ab" off moves f by 2 x0 + x1 - E[2 x0 + x1]
    np.testing.assert_allclose(e.values[:, 0], 2 * X[:, 0] + X[:, 1] - (2 * TRAIN[:, 0] + TRAIN[:, 1]).mean(),
                               atol=0.35)
    lists = lumos.explain(f, X, method="lime", background=TRAIN, groups=[[0, 1], [2, 4]], n_samples=200)
    assert lists.feature_names == ["x0+x1", "x2+x4", "x3", "x5"]
    with pytest.raises(ValueError, match="groups"):
        lumos.explain(f, X, method="lime", background=TRAIN, groups=[[0, 1], [1, 2]])


def test_whole_background_is_used_and_recorded():
    big = np.random.default_rng(5).normal(size=(3000, 6))
    e = lumos.explain(linear, X, method="lime", background=big, discretizer=None, n_samples=100)
    assert e.meta["n_background"] == 3000
    np.testing.assert_allclose(e.meta["scale"], big.std(0))   # statistics of all 3000 rows


def test_old_name_data_is_refused_with_the_new_name():
    with pytest.raises(TypeError, match="background"):
        lumos.explain(linear, X, method="lime", data=TRAIN)


def test_non_numeric_outputs_get_the_shared_message():
    with pytest.raises(ValueError, match="numeric"):
        lumos.explain(lambda Z: np.array(["yes"] * len(Z)), X, method="lime", background=TRAIN)
