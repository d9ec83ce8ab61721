"""Global effects: partial dependence / ICE, ALE, permutation importance, Friedman's H.

Closed forms (parabola, slopes, additive components, products), brute "set the feature and
average" references computed by hand in float64, scikit-learn's partial_dependence and PyALE as
references, and the correlated-features case where ALE must stay on the data and PDP must not.
"""
import ast
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumos.effects import (ALE, HStatistic, PartialDependence, PermutationImportance, ale, h_statistic,
                           partial_dependence, permutation_importance)

RNG = np.random.default_rng(12345)


class Counting:
    """A callable model that counts its calls and rows."""

    def __init__(self, fn):
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, X):
        self.calls += 1
        self.rows += len(X)
        return self.fn(np.asarray(X, dtype=np.float64))


def uniform(n, p, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, size=(n, p))


# ------------------------------------------------------------------------ partial dependence

def test_pd_of_parabola_is_the_parabola():
    X = uniform(200, 2, -2, 2)
    res = partial_dependence(lambda X: X[:, 0] ** 2, X, 0)
    g = res.grid[0]
    assert len(g) == 50 and res.method == "brute"
    np.testing.assert_allclose(res.average, g ** 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.ice, np.broadcast_to(g ** 2, res.ice.shape), rtol=0, atol=1e-12)
    assert res.ice.shape == (200, 50) and res.n_evals == 200 * 50


def test_pd_slope_is_the_weight_and_dice_is_constant():
    w = np.array([1.5, -2.0, 0.5])
    X = uniform(150, 3, seed=1)
    model = lambda X: X @ w + 3.0  # noqa: E731
    for j in range(3):
        res = partial_dependence(model, X, j, grid="quantile", grid_resolution=25)
        slope = np.diff(res.average) / np.diff(res.grid[0])
        np.testing.assert_allclose(slope, w[j], rtol=0, atol=1e-10)
        np.testing.assert_allclose(res.derivative_ice(), w[j], rtol=0, atol=1e-9)
        c = res.centred_ice()
        np.testing.assert_allclose(c[:, 0], 0, atol=1e-12)  # anchored at the first grid point
        np.testing.assert_allclose(c, np.broadcast_to(c[0], c.shape), atol=1e-12)  # additive: one shape


def test_pd_slope_of_a_torch_linear_model_per_output(linear_model):
    from conftest import assert_same_state, model_state

    before = model_state(linear_model)
    X = uniform(60, 6, seed=19).astype(np.float32)
    W = linear_model.weight.detach().double().numpy()
    for t in (0, 2):
        res = partial_dependence(linear_model, X, 3, target=t, grid_resolution=7, max_rows=40, seed=1)
        slope = np.diff(res.average) / np.diff(res.grid[0])
        np.testing.assert_allclose(slope, W[t, 3], rtol=0, atol=1e-5)  # float32 model
        assert res.output_name == "torch forward" and res.n_rows == 40
    assert_same_state(before, model_state(linear_model))


def _hand_pd(model, X, cols, points):
    out = np.empty((len(X), len(points)))
    for g, v in enumerate(points):
        Xc = X.astype(np.float64).copy()
        Xc[:, cols] = v
        out[:, g] = model(Xc)
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 64, None])
def test_brute_pd_equals_set_and_average_by_hand(batch_size):
    X = uniform(23, 3, seed=2)
    fn = lambda X: np.sin(X[:, 0]) * X[:, 1] + X[:, 2] ** 2  # noqa: E731
    model = Counting(fn)
    res = partial_dependence(model, X, 0, grid_resolution=9, batch_size=batch_size)
    ref = _hand_pd(fn, X, [0], res.grid[0])
    np.testing.assert_allclose(res.ice, ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(res.average, ref.mean(0), rtol=1e-13, atol=1e-13)
    bs = batch_size or 8192
    assert model.rows == 23 * 9 and model.calls == math.ceil(23 * 9 / bs)  # one call per chunk
    two = partial_dependence(fn, X, (0, 2), grid_resolution=5, batch_size=batch_size)
    pts = np.array([(a, b) for a in two.grid[0] for b in two.grid[1]])
    ref2 = _hand_pd(fn, X, [0, 2], pts).reshape(23, 5, 5)
    np.testing.assert_allclose(two.ice, ref2, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(two.average, ref2.mean(0), rtol=1e-13, atol=1e-13)


def test_centred_ice_with_an_anchor_off_the_grid():
    X = uniform(40, 2, seed=3)
    model = Counting(lambda X: X[:, 0] * X[:, 1])
    res = partial_dependence(model, X, 0, grid_resolution=11, anchor=0.123)
    assert res.anchor == 0.123 and model.rows == 40 * (len(res.grid[0]) + 1)
    expected = (res.grid[0][None, :] - 0.123) * X[:, 1:2]
    np.testing.assert_allclose(res.centred_ice(), expected, rtol=0, atol=1e-12)
    on_grid = partial_dependence(model, X, 0, grid_resolution=11, anchor=None)
    np.testing.assert_allclose(on_grid.anchor_output, on_grid.ice[:, 0], atol=0)


def test_pd_matches_scikit_learn_regressor_and_custom_grid():
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.inspection import partial_dependence as sk_pd

    X = pd.DataFrame(uniform(150, 3, seed=4), columns=["a", "b", "c"])
    y = X.a ** 2 + X.b * X.c
    model = GradientBoostingRegressor(n_estimators=15, max_depth=2, random_state=0).fit(X, y)
    ours = partial_dependence(model, X, "a", method="brute")
    ref = sk_pd(model, X, ["a"], kind="both", method="brute", grid_resolution=50)
    np.testing.assert_allclose(ours.grid[0], ref["grid_values"][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.ice, ref["individual"][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.average, ref["average"][0], rtol=0, atol=1e-12)
    grid = np.linspace(-0.9, 0.9, 7)
    ours = partial_dependence(model, X, ("b", "c"), grid_values=(grid, grid[:4]), kind="average", method="brute")
    ref = sk_pd(model, X, ["b", "c"], custom_values={"b": grid, "c": grid[:4]}, method="brute")
    np.testing.assert_allclose(ours.average, ref["average"][0], rtol=0, atol=1e-12)


def test_pd_matches_scikit_learn_classifier_pipeline_with_categories():
    from sklearn.compose import make_column_transformer
    from sklearn.inspection import partial_dependence as sk_pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(5)
    n = 160
    df = pd.DataFrame({"a": rng.normal(size=n), "n_items": rng.integers(0, 4, n),
                       "c": rng.choice(["u", "v", "w"], n)})
    y = (df.a + (df.c == "v") + 0.3 * df.n_items + rng.normal(size=n) * 0.5 > 0.5).astype(int)
    pipe = make_pipeline(make_column_transformer((OneHotEncoder(), ["c"]), remainder="passthrough"),
                         LogisticRegression()).fit(df, y)
    ours = partial_dependence(pipe, df, "c")
    ref = sk_pd(pipe, df, ["c"], categorical_features=["c"], kind="both")
    assert list(ours.grid[0]) == list(ref["grid_values"][0]) == ["u", "v", "w"]
    assert ours.target.startswith("predict_proba[:, 1]") and ours.output_name == "predict_proba"
    np.testing.assert_allclose(ours.ice, ref["individual"][0], rtol=0, atol=1e-12)
    ours = partial_dependence(pipe, df, ("a", "c"), kind="average")
    ref = sk_pd(pipe, df, ["a", "c"], categorical_features=["c"], grid_resolution=20)
    np.testing.assert_allclose(ours.average, ref["average"][0], rtol=0, atol=1e-12)
    ints = partial_dependence(pipe, df, "n_items")  # few unique integers: the values themselves
    np.testing.assert_array_equal(ints.grid[0], [0, 1, 2, 3])


def test_recursion_used_only_where_it_equals_brute():
    from sklearn.ensemble import GradientBoostingRegressor

    X = uniform(300, 3, seed=6)
    X[:, 1] = X[:, 0] + 0.1 * X[:, 1]  # correlated
    y = X[:, 0] ** 2 + X[:, 1] * X[:, 2]
    stumps = GradientBoostingRegressor(n_estimators=30, max_depth=1, random_state=0).fit(X, y)
    fast = partial_dependence(stumps, X, 1, kind="average")
    brute = partial_dependence(stumps, X, 1, kind="average", method="brute")
    assert fast.method == "recursion" and brute.method == "brute"
    np.testing.assert_allclose(fast.average, brute.average, rtol=0, atol=1e-10)
    deep = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    auto = partial_dependence(deep, X, 1, kind="average")
    assert auto.method == "brute"  # recursion would differ here: it is not used
    forced = partial_dependence(deep, X, 1, kind="average", method="recursion")
    assert np.abs(forced.average - auto.average).max() > 1e-3
    with pytest.raises(ValueError, match="kind='average'"):
        partial_dependence(stumps, X, 1, method="recursion")
    # explicit recursion on histogram-boosted stumps: scikit-learn leaves the baseline out; lumos adds it
    from sklearn.ensemble import HistGradientBoostingRegressor

    hist = HistGradientBoostingRegressor(max_depth=1, max_iter=30, random_state=0).fit(X, y)
    forced = partial_dependence(hist, X, 1, kind="average", method="recursion")
    brute = partial_dependence(hist, X, 1, kind="average", method="brute")
    assert forced.method == "recursion"
    np.testing.assert_allclose(forced.average, brute.average, rtol=0, atol=1e-10)


def test_dataframe_reaches_the_model_with_names_and_dtypes():
    df = pd.DataFrame({"age": np.arange(30) % 7 + 20, "income": np.linspace(1, 3, 30),
                       "city": ["x", "y", "z"] * 10})
    before = df.copy()
    seen = []

    def model(D):
        assert isinstance(D, pd.DataFrame) and list(D.columns) == ["age", "income", "city"]
        seen.append(D.dtypes.to_dict())
        return D["age"].to_numpy() * 0.1 + D["income"].to_numpy() + (D["city"] == "y").to_numpy()

    res = partial_dependence(model, df, "age", grid_resolution=4, grid="uniform")
    assert all(d["age"] == df.dtypes["age"] for d in seen)
    assert np.all(res.grid[0] == np.round(res.grid[0]))  # an integer column keeps integer grid values
    pd.testing.assert_frame_equal(df, before)
    cat = partial_dependence(model, df, "city")
    np.testing.assert_allclose(cat.average - cat.average[0], [0, 1, 0], atol=1e-12)
    frame = res.to_frame()
    assert list(frame.columns[:2]) == ["age", "average"] and len(frame) == len(res.grid[0])
    long = res.to_frame("individual")
    assert len(long) == 30 * len(res.grid[0]) and "centred" in long


def test_pd_errors_name_the_argument():
    X = uniform(20, 3)
    f = lambda X: X[:, 0]  # noqa: E731
    with pytest.raises(ValueError, match="features: unknown feature 'x9'"):
        partial_dependence(f, X, "x9")
    with pytest.raises(ValueError, match="a tuple is a pair of features"):
        partial_dependence(f, X, (0, 1, 2))
    with pytest.raises(ValueError, match="a pair of features is a tuple"):
        partial_dependence(f, X, [[0, 1]])
    with pytest.raises(ValueError, match="grid_values must hold one grid per feature"):
        partial_dependence(f, X, (0, 1), grid_values=[np.zeros(3)])
    with pytest.raises(ValueError, match="kind must be"):
        partial_dependence(f, X, 0, kind="ice")
    with pytest.raises(ValueError, match="anchor applies"):
        partial_dependence(f, X, (0, 1), anchor=0.0)
    multi = lambda X: np.stack([X[:, 0], X[:, 1], X[:, 2]], 1)  # noqa: E731
    with pytest.raises(ValueError, match="target: the model has 3 outputs"):
        partial_dependence(multi, X, 0)
    with pytest.raises(ValueError, match="target='predicted' is not defined"):
        partial_dependence(multi, X, 0, target="predicted")
    res = partial_dependence(multi, X, 0, target=2)  # an explicit column is fine
    np.testing.assert_allclose(res.average, X[:, 2].mean(), atol=1e-12)
    with pytest.raises(ValueError, match="target out of range"):
        partial_dependence(multi, X, 0, target=3)


def test_multiclass_target_by_index_or_label():
    from sklearn.linear_model import LogisticRegression

    X = uniform(120, 2, seed=7)
    labels = np.array(["cat", "dog", "eel"])[np.digitize(X[:, 0], [-0.33, 0.33])]
    clf = LogisticRegression().fit(X, labels)
    by_index = partial_dependence(clf, X, 0, target=2, grid_resolution=6)
    by_label = partial_dependence(clf, X, 0, target="eel", grid_resolution=6)
    np.testing.assert_array_equal(by_index.average, by_label.average)
    assert "eel" in by_label.target and np.all(np.diff(by_index.average) > 0)


# ----------------------------------------------------------------------------------- ALE

def _centre(values_at_edges, counts):
    return (counts * (values_at_edges[:-1] + values_at_edges[1:]) / 2).sum() / counts.sum()


def test_ale_recovers_additive_components_exactly_and_h_is_zero():
    rng = np.random.default_rng(8)
    x0 = rng.uniform(-1, 1, 400)
    X = np.stack([x0, x0 + 0.3 * rng.normal(size=400), rng.normal(size=400)], 1)  # correlated
    parts = [lambda v: v ** 2, lambda v: np.sin(3 * v), lambda v: 2 * v]
    model = lambda X: sum(g(X[:, j]) for j, g in enumerate(parts))  # noqa: E731
    for j, g in enumerate(parts):
        res = ale(model, X, j, n_bootstrap=0)
        e = res.grid[0]
        assert res.kind == "numeric" and len(e) == 21 and res.n_evals == 800
        np.testing.assert_allclose(res.values, g(e) - g(e[0]) - _centre(g(e) - g(e[0]), res.counts),
                                   rtol=0, atol=1e-10)
        assert abs(_centre(res.values, res.counts)) < 1e-12  # centred
    second = ale(model, X, (0, 1), n_bootstrap=0)
    np.testing.assert_allclose(second.values, 0, atol=1e-10)
    h = h_statistic(model, X, n_rows=40)
    assert np.all(h.h2_pairwise < 1e-20) and np.all(h.h2_total < 1e-20)


def test_product_model_h_and_second_order_ale():
    X = uniform(1500, 3, seed=9)
    model = lambda X: X[:, 0] * X[:, 1] + X[:, 2]  # noqa: E731
    h = h_statistic(model, X, n_rows=60)
    pairs = dict(zip(h.pairs, h.h2_pairwise))
    assert pairs[("x0", "x1")] > 0.9  # measured 0.99 (a pure product is nearly all interaction)
    assert pairs[("x0", "x2")] < 1e-20 and pairs[("x1", "x2")] < 1e-20
    # total: Var(x0 x1) / Var(f) = (1/9) / (1/9 + 1/3) = 0.25 for independent U(-1, 1)
    assert h.h2_total[2] < 1e-20 and abs(h.h2_total[0] - 0.25) < 0.04 and abs(h.h2_total[1] - 0.25) < 0.04
    res = ale(model, X, (0, 1), bins=8, n_bootstrap=50)
    assert res.kind == "second-order" and res.n_empty_cells == 0 and res.values.shape == (9, 9)
    e1, e2 = res.grid
    dd = res.values[1:, 1:] - res.values[:-1, 1:] - res.values[1:, :-1] + res.values[:-1, :-1]
    np.testing.assert_allclose(dd, np.outer(np.diff(e1), np.diff(e2)), rtol=0, atol=1e-12)
    # the pure interaction is close to (x0 - mean)(x1 - mean): large at the corners
    assert res.values[0, 0] > 0.5 and res.values[0, -1] < -0.5
    assert res.std.shape == (9, 9) and np.all(res.upper >= res.lower)


def test_correlated_features_ale_stays_on_data_pdp_does_not():
    rng = np.random.default_rng(10)
    x1 = rng.uniform(0, 1, 600)
    X = np.stack([x1, x1 + rng.uniform(-0.05, 0.05, 600)], 1)

    def model(X):  # x1 + x2 on the data (|x1 - x2| <= 0.05); wild where they disagree
        return X[:, 0] + X[:, 1] + 50 * np.maximum(np.abs(X[:, 0] - X[:, 1]) - 0.15, 0) ** 2

    res = ale(model, X, 0, n_bootstrap=0)
    assert np.diff(res.grid[0]).max() < 0.1  # every local move stays within the data's band
    np.testing.assert_allclose(np.diff(res.values), np.diff(res.grid[0]), rtol=0, atol=1e-12)  # slope 1
    pdp = partial_dependence(model, X, 0, grid_resolution=30)
    on_data = pdp.grid[0] + X[:, 1].mean()
    # measured: PDP is pulled 3.3 above the on-data effect at the ends by impossible rows
    assert np.abs(pdp.average - on_data).max() > 2.0
    mid = np.argmin(np.abs(pdp.grid[0] - 0.5))
    assert abs(pdp.average[mid] - on_data[mid]) < np.abs(pdp.average - on_data).max() / 3


def test_ale_matches_pyale_on_the_same_bins():
    PyALE = pytest.importorskip("PyALE")
    from PyALE._src.lib import quantile_ied
    from sklearn.ensemble import GradientBoostingRegressor

    X = pd.DataFrame(uniform(300, 2, seed=11), columns=["a", "b"])
    model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(X, X.a ** 2 + X.b)
    ref = PyALE.ale(X, model, ["a"], grid_size=15, plot=False, include_CI=False)
    edges = np.unique([X.a.min()] + quantile_ied(X.a, np.linspace(0, 1, 16)).to_list())
    ours = ale(model, X, "a", bins=edges, n_bootstrap=0)
    np.testing.assert_allclose(ours.grid[0], ref.index.to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.values, ref["eff"].to_numpy(), rtol=0, atol=1e-10)


def test_categorical_ale_orders_levels_by_similarity_and_recovers_jumps():
    rng = np.random.default_rng(12)
    n = 600
    level = rng.choice(["hi", "lo", "mid"], n)
    shift = {"lo": 0.0, "mid": 1.0, "hi": 2.0}
    x = np.array([shift[v] for v in level]) + rng.uniform(0, 1, n)
    df = pd.DataFrame({"x": x, "level": level})
    effect = {"lo": 0.0, "mid": 0.5, "hi": 3.0}
    model = lambda D: D["x"].to_numpy() + np.array([effect[v] for v in D["level"]])  # noqa: E731
    res = ale(model, df, "level", n_bootstrap=100)
    order = list(res.grid[0])
    assert order in (["lo", "mid", "hi"], ["hi", "mid", "lo"])  # by the distribution of x
    target = np.array([effect[v] for v in order])
    np.testing.assert_allclose(np.diff(res.values), np.diff(target), rtol=0, atol=1e-12)
    assert abs((res.counts * res.values).sum()) < 1e-9 and res.counts.sum() == n
    assert res.kind == "categorical" and np.all(res.upper - res.lower >= 0)
    given = ale(model, df, "level", order=["mid", "lo", "hi"], n_bootstrap=0)
    assert list(given.grid[0]) == ["mid", "lo", "hi"]
    ordered = df.assign(level=pd.Categorical(df.level, categories=["mid", "hi", "lo"], ordered=True))
    assert list(ale(model, ordered, "level", n_bootstrap=0).grid[0]) == ["mid", "hi", "lo"]


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_ale_bootstrap_is_seeded_and_independent_of_batch_size(batch_size):
    X = uniform(50, 2, seed=13)
    model = lambda X: X[:, 0] * X[:, 1] + X[:, 0]  # noqa: E731
    ref = ale(model, X, 0, bins=6, n_bootstrap=40, seed=3)
    res = ale(model, X, 0, bins=6, n_bootstrap=40, seed=3, batch_size=batch_size)
    np.testing.assert_allclose(res.values, ref.values, rtol=0, atol=1e-14)
    np.testing.assert_allclose(res.lower, ref.lower, rtol=0, atol=1e-14)
    other = ale(model, X, 0, bins=6, n_bootstrap=40, seed=4)
    assert np.abs(other.lower - ref.lower).max() > 1e-6
    assert np.all(ref.upper - ref.lower > 0) and ref.std.shape == ref.values.shape
    frame = ref.to_frame()
    assert list(frame.columns) == ["x0", "effect", "count", "lower", "upper", "std"]


def test_ale_errors():
    X = uniform(30, 3)
    f = lambda X: X[:, 0]  # noqa: E731
    with pytest.raises(ValueError, match="bins for 'x0' must span the data"):
        ale(f, X, 0, bins=[0.0, 0.5])
    df = pd.DataFrame({"a": X[:, 0], "c": ["p", "q"] * 15})
    with pytest.raises(ValueError, match="second-order ALE needs two numeric features"):
        ale(lambda D: D["a"].to_numpy(), df, ("a", "c"))
    with pytest.raises(ValueError, match="order must list each level"):
        ale(lambda D: D["a"].to_numpy(), df, "c", order=["p"])
    Xn = X.copy()
    Xn[0, 1] = np.nan
    with pytest.raises(ValueError, match="missing values"):
        ale(f, Xn, 1)


# --------------------------------------------------------------------- permutation importance

def _regression_world(n=300, seed=14):
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    y = 2 * x1 + 0.5 * rng.normal(size=n)
    X = pd.DataFrame({"signal": x1, "noise": rng.normal(size=n), "target_copy": y})
    return X, y


def test_permutation_importance_ranks_copy_first_and_noise_last():
    from sklearn.linear_model import Ridge

    X, y = _regression_world()
    model = Ridge(alpha=30.0).fit(X, y)
    res = permutation_importance(model, X, y, metric="r2", n_repeats=4)
    assert res.ranking()[0] == "target_copy" and res.ranking()[-1] == "noise"
    assert res.importances.shape == (3, 4) and res.greater_is_better
    assert np.all(res.std[:1] > 0) and abs(res.mean[1]) < 0.01
    frame = res.to_frame()
    assert list(frame.feature) == res.ranking() and {"mean", "std", "min", "max"} <= set(frame)


def test_permutation_importance_equals_a_hand_loop_and_scorer_equals_callable():
    from sklearn.metrics import mean_squared_error

    X, y = _regression_world(n=80)
    w = np.array([1.0, 0.2, 0.5])
    model = lambda D: np.asarray(D, dtype=float) @ w  # noqa: E731
    res = permutation_importance(model, X, y, metric=mean_squared_error, n_repeats=3, seed=7)
    assert not res.greater_is_better and res.metric == "mean_squared_error"
    gen = np.random.default_rng(7)
    perms = [[gen.permutation(80) for _ in range(3)] for _ in range(3)]
    Xa = X.to_numpy()
    base = mean_squared_error(y, Xa @ w)
    for j in range(3):
        for r in range(3):
            Xp = Xa.copy()
            Xp[:, j] = Xa[perms[j][r], j]
            assert abs(res.importances[j, r] - (mean_squared_error(y, Xp @ w) - base)) < 1e-12
    scorer = permutation_importance(model, X, y, metric="neg_mean_squared_error", n_repeats=3, seed=7)
    np.testing.assert_allclose(scorer.importances, res.importances, rtol=0, atol=1e-12)
    for bs in (1, 7, 64):  # the first group's draws come first: permuting it alone gives the same numbers
        again = permutation_importance(model, X, y, metric=mean_squared_error, n_repeats=3, seed=7,
                                       batch_size=bs, features=["signal"])
        np.testing.assert_allclose(again.importances, res.importances[:1], rtol=0, atol=1e-12)


def test_scorer_names_give_the_scorer_on_each_permuted_copy():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import get_scorer

    X, y = _regression_world(n=120)
    labels = np.array(["bad", "good"])[(y > 0).astype(int)]
    clf = LogisticRegression().fit(X, labels)
    gen = np.random.default_rng(3)
    perms = [[gen.permutation(120) for _ in range(2)] for _ in range(3)]
    for name in ("accuracy", "roc_auc", "neg_log_loss"):
        res = permutation_importance(clf, X, labels, metric=name, n_repeats=2, seed=3)
        scorer = get_scorer(name)
        base = scorer(clf, X, labels)
        assert res.baseline_score == pytest.approx(base, abs=1e-12) and res.greater_is_better
        for j in range(3):
            for r in range(2):
                Xp = X.copy()
                Xp.iloc[:, j] = X.iloc[perms[j][r], j].to_numpy()
                assert abs(res.importances[j, r] - (base - scorer(clf, Xp, labels))) < 1e-12, name


def test_permutation_importance_groups_classifiers_and_errors():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    X, y = _regression_world(n=200)
    grouped = permutation_importance(lambda D: D.to_numpy() @ np.array([1.0, 0, 1.0]), X, y,
                                     metric="r2", groups={"both": ["signal", "target_copy"], "noise": ["noise"]})
    single = permutation_importance(lambda D: D.to_numpy() @ np.array([1.0, 0, 1.0]), X, y, metric="r2")
    assert grouped.groups == {"both": ["signal", "target_copy"], "noise": ["noise"]}
    assert grouped.mean[0] > single.mean.max() and grouped.mean[1] == 0
    labels = (y > 0).astype(int)
    clf = LogisticRegression().fit(X[["signal", "noise"]], labels)
    acc = permutation_importance(clf, X[["signal", "noise"]], labels)  # default: accuracy
    assert acc.metric == "accuracy" and acc.mean[0] > 0.2 and abs(acc.mean[1]) < 0.05
    auc = permutation_importance(clf, X[["signal", "noise"]], labels, metric=roc_auc_score)
    assert auc.greater_is_better and auc.target.startswith("predict_proba[:, 1]") and auc.mean[0] > 0.2
    ll = permutation_importance(clf, X[["signal", "noise"]], labels, metric=log_loss, groups=[["signal", "noise"]])
    assert ll.feature_names == ["signal+noise"] and ll.mean[0] > 0.2
    with pytest.raises(ValueError, match="greater_is_better"):
        permutation_importance(clf, X[["signal", "noise"]], labels, metric=lambda a, b: 0.0)
    with pytest.raises(ValueError, match="metric"):
        permutation_importance(clf, X[["signal", "noise"]], labels, metric="no_such_scorer")
    with pytest.raises(ValueError, match="y must have one value per row"):
        permutation_importance(clf, X[["signal", "noise"]], labels[:-1])


# ------------------------------------------------------------------------------ H-statistic

def _hand_h(f, X):
    """Friedman & Popescu's H² by explicit loops, float64."""
    m, p = X.shape

    def pd_at(cols, point):
        Xc = X.copy()
        Xc[:, cols] = point
        return f(Xc).mean()

    def centred(v):
        return v - v.mean()

    own = {j: centred(np.array([pd_at([j], X[l, j]) for l in range(m)])) for j in range(p)}
    rest = {}
    for j in range(p):
        vals = []
        for i in range(m):
            Xc = np.repeat(X[i:i + 1], m, axis=0)
            Xc[:, j] = X[:, j]
            vals.append(f(Xc).mean())
        rest[j] = centred(np.array(vals))
    fx = centred(f(X))
    pair = {}
    for a in range(p):
        for b in range(a + 1, p):
            joint = centred(np.array([pd_at([a, b], X[l, [a, b]]) for l in range(m)]))
            pair[(a, b)] = ((joint - own[a] - own[b]) ** 2).sum() / (joint ** 2).sum()
    total = [((fx - own[j] - rest[j]) ** 2).sum() / (fx ** 2).sum() for j in range(p)]
    return pair, np.array(total)


def test_h_statistic_equals_the_formula_by_hand():
    X = uniform(12, 3, seed=15)
    f = lambda X: X[:, 0] * X[:, 1] + np.sin(X[:, 2]) * X[:, 0] + X[:, 1] ** 2  # noqa: E731
    res = h_statistic(f, X, n_rows=None, batch_size=7)
    pair, total = _hand_h(f, X)
    np.testing.assert_allclose(res.h2_pairwise, [pair[(0, 1)], pair[(0, 2)], pair[(1, 2)]], rtol=1e-10, atol=1e-20)
    np.testing.assert_allclose(res.h2_total, total, rtol=1e-10)
    assert res.n_evals == 12 + (3 + 3) * 144
    M = res.matrix()
    assert M[0, 1] == M[1, 0] == res.h2_pairwise[0] and np.isnan(M[0, 0])
    only = h_statistic(f, X, pairs=[("x0", "x2")], total=False, n_rows=None)
    assert only.pairs == [("x0", "x2")] and only.h2_total is None
    np.testing.assert_allclose(only.h2_pairwise, [pair[(0, 2)]], rtol=1e-10)
    assert res.to_frame().iloc[0].h2 == np.nanmax(res.h2_pairwise)


def test_h_statistic_samples_rows_with_the_seed():
    X = uniform(500, 2, seed=16)
    f = Counting(lambda X: X[:, 0] * X[:, 1])
    a = h_statistic(f, X, n_rows=30, seed=1)
    b = h_statistic(lambda X: X[:, 0] * X[:, 1], X, n_rows=30, seed=1)
    assert a.n_rows == 30 and f.rows == 30 + 3 * 900
    np.testing.assert_array_equal(a.h2_pairwise, b.h2_pairwise)
    nothing = h_statistic(lambda X: X[:, 0] * 0.0, X, n_rows=20)
    assert np.isnan(nothing.h2_pairwise).all()  # no effect at all: the share is undefined, not 0


# ---------------------------------------------------------------------------------- display

def test_displays_draw_on_the_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lumos.display.effects import (ALEDisplay, ImportanceDisplay, InteractionDisplay,
                                       PartialDependenceDisplay)

    X = uniform(120, 3, seed=17)
    f = lambda X: X[:, 0] ** 2 + X[:, 1] * X[:, 2]  # noqa: E731
    df = pd.DataFrame({"a": X[:, 0], "c": np.array(["p", "q", "r"])[np.arange(120) % 3]})
    g = lambda D: D["a"].to_numpy() + (D["c"] == "q").to_numpy()  # noqa: E731
    fig, axes = plt.subplots(3, 4)
    ax = iter(axes.ravel())
    d = partial_dependence(f, X, 0).plot(ax=next(ax), max_ice=30)
    assert isinstance(d, PartialDependenceDisplay) and len(d.ice_lines_) == 30 and d.line_ is not None
    assert d.rug_ is not None and d.ax_.figure is fig
    assert partial_dependence(f, X, 0).plot(ax=next(ax), centred=True).line_ is not None
    assert partial_dependence(f, X, 0).plot(ax=next(ax), derivative=True).line_ is not None
    assert partial_dependence(f, X, (1, 2)).plot(ax=next(ax)).contour_ is not None
    assert partial_dependence(g, df, "c").plot(ax=next(ax)).bars_ is not None
    a = ale(f, X, 0).plot(ax=next(ax))
    assert isinstance(a, ALEDisplay) and a.band_ is not None and a.rug_ is not None
    assert ale(g, df, "c").plot(ax=next(ax)).errorbar_ is not None
    assert ale(f, X, (1, 2), bins=5).plot(ax=next(ax)).contour_ is not None
    imp = permutation_importance(f, X, f(X), metric="r2").plot(ax=next(ax))
    assert isinstance(imp, ImportanceDisplay) and len(imp.bars_) == 3
    h = h_statistic(f, X, n_rows=15)
    assert isinstance(h.plot(ax=next(ax)), InteractionDisplay)
    assert h.plot(ax=next(ax), kind="matrix").image_ is not None
    assert len(h.plot(ax=next(ax), kind="pairwise").bars_) == 3
    plt.close("all")


def test_compute_modules_do_not_import_matplotlib():
    root = Path(__file__).resolve().parents[1] / "src" / "lumos" / "effects"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; plotting imports sit inside functions
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any("matplotlib" in n or "display" in n for n in names), path.name


def test_results_are_the_documented_types():
    X = uniform(40, 2, seed=18)
    f = lambda X: X[:, 0] + X[:, 1]  # noqa: E731
    assert isinstance(partial_dependence(f, X, 0), PartialDependence)
    assert isinstance(ale(f, X, 0), ALE)
    assert isinstance(permutation_importance(f, X, f(X), metric="r2"), PermutationImportance)
    assert isinstance(h_statistic(f, X, n_rows=10), HStatistic)


# ------------------------------------------------------------------------ weights, lists, groups

def test_weighted_pd_equals_weighted_brute_reference_and_row_repetition():
    X = uniform(31, 3, seed=8)
    fn = lambda X: np.sin(2 * X[:, 0]) * X[:, 1] + X[:, 2] ** 2  # noqa: E731
    w = np.random.default_rng(4).integers(0, 4, size=31).astype(float)
    w[0] = 5.0
    grid = np.linspace(-1, 1, 7)
    res = partial_dependence(fn, X, 0, grid_values=grid, sample_weight=w)
    ref = _hand_pd(fn, X, [0], grid)
    np.testing.assert_allclose(res.ice, ref, rtol=0, atol=1e-13)  # the curves are not weighted
    np.testing.assert_allclose(res.average, (w[:, None] * ref).sum(0) / w.sum(), rtol=0, atol=1e-13)
    assert np.abs(res.average - ref.mean(0)).max() > 1e-2  # the weights matter here
    rep = partial_dependence(fn, np.repeat(X, w.astype(int), axis=0), 0, grid_values=grid)
    np.testing.assert_allclose(res.average, rep.average, rtol=0, atol=1e-13)
    two = partial_dependence(fn, X, (0, 2), grid_values=(grid, grid[:3]), kind="average", sample_weight=w)
    two_rep = partial_dependence(fn, np.repeat(X, w.astype(int), axis=0), (0, 2), grid_values=(grid, grid[:3]),
                                 kind="average")
    np.testing.assert_allclose(two.average, two_rep.average, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="sample_weight must have one weight per row"):
        partial_dependence(fn, X, 0, sample_weight=w[:5])
    with pytest.raises(ValueError, match="non-negative"):
        partial_dependence(fn, X, 0, sample_weight=-w)


def test_weighted_pd_recursion_is_checked_against_the_weighted_average():
    from sklearn.ensemble import GradientBoostingRegressor

    X = uniform(300, 3, seed=6)
    y = X[:, 0] ** 2 + X[:, 1] * X[:, 2]
    stumps = GradientBoostingRegressor(n_estimators=30, max_depth=1, random_state=0).fit(X, y)
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=300)
    auto = partial_dependence(stumps, X, 1, kind="average", sample_weight=w)
    brute = partial_dependence(stumps, X, 1, kind="average", sample_weight=w, method="brute")
    # the trees' training fractions are unweighted: with weights they differ, so "auto" is brute
    assert auto.method == "brute"
    np.testing.assert_allclose(auto.average, brute.average, rtol=0, atol=1e-12)
    ones = partial_dependence(stumps, X, 1, kind="average", sample_weight=np.full(300, 2.0))
    assert ones.method == "recursion"  # constant weights keep the fractions: still exact
    plain = partial_dependence(stumps, X, 1, kind="average", method="brute")
    np.testing.assert_allclose(ones.average, plain.average, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="sample_weight was given"):
        partial_dependence(stumps, X, 1, kind="average", sample_weight=w, method="recursion")


def test_pd_of_a_list_of_features_is_one_result_per_feature():
    X = pd.DataFrame(uniform(40, 3, seed=3), columns=["a", "b", "c"])
    fn = lambda D: np.asarray(D, dtype=float) @ np.array([1.0, -2.0, 0.5])  # noqa: E731
    many = partial_dependence(fn, X, ["a", "c", ("a", "b")], grid_resolution=5)
    assert isinstance(many, list) and [r.feature_names for r in many] == [["a"], ["c"], ["a", "b"]]
    for r, single in zip(many, [partial_dependence(fn, X, "a", grid_resolution=5),
                                partial_dependence(fn, X, "c", grid_resolution=5),
                                partial_dependence(fn, X, ("a", "b"), grid_resolution=5)]):
        np.testing.assert_array_equal(r.average, single.average)
    np.testing.assert_allclose(np.diff(many[1].average) / np.diff(many[1].grid[0]), 0.5, atol=1e-12)
    custom = partial_dependence(fn, X, ["a", "b"], grid_values=[[0.0, 1.0], [0.0, 2.0]])
    np.testing.assert_allclose(custom[1].average[1] - custom[1].average[0], -4.0, atol=1e-12)
    with pytest.raises(ValueError, match="one grid per entry"):
        partial_dependence(fn, X, ["a", "b"], grid_values=[[0.0, 1.0]])


def _draws(seed, n_groups, n_repeats, n):
    gen = np.random.default_rng(seed)
    return [[gen.permutation(n) for _ in range(n_repeats)] for _ in range(n_groups)]


def test_weighted_permutation_importance_equals_a_weighted_hand_loop_and_repetition():
    from sklearn.metrics import mean_squared_error

    X, y = _regression_world(n=60)
    coef = np.array([1.0, 0.2, 0.5])
    model = lambda D: np.asarray(D, dtype=float) @ coef  # noqa: E731
    w = np.random.default_rng(9).integers(1, 4, size=60).astype(float)
    res = permutation_importance(model, X, y, metric=mean_squared_error, n_repeats=2, seed=5, sample_weight=w)
    Xa = X.to_numpy()
    base = mean_squared_error(y, Xa @ coef, sample_weight=w)
    assert abs(res.baseline_score - base) < 1e-12
    # integer weights: the score of the data with each row repeated
    reps = w.astype(int)
    assert abs(base - mean_squared_error(np.repeat(y, reps), np.repeat(Xa, reps, axis=0) @ coef)) < 1e-12
    perms = _draws(5, 3, 2, 60)
    for j in range(3):
        for r in range(2):
            Xp = Xa.copy()
            Xp[:, j] = Xa[perms[j][r], j]
            loss = np.sum(w * (y - Xp @ coef) ** 2) / w.sum()
            assert abs(res.importances[j, r] - (loss - base)) < 1e-12
    scorer = permutation_importance(model, X, y, metric="neg_mean_squared_error", n_repeats=2, seed=5,
                                    sample_weight=w)
    np.testing.assert_allclose(scorer.importances, res.importances, rtol=0, atol=1e-12)
    unweighted = permutation_importance(model, X, y, metric=mean_squared_error, n_repeats=2, seed=5)
    assert np.abs(unweighted.importances - res.importances).max() > 1e-3
    with pytest.raises(TypeError, match="does not take sample_weight"):
        permutation_importance(model, X, y, metric=lambda a, b: float(np.mean((a - b) ** 2)),
                               greater_is_better=False, sample_weight=w)


def test_permutation_importance_groups_are_permuted_together_and_named():
    X, y = _regression_world(n=50)
    coef = np.array([1.0, 0.2, 0.5])
    model = lambda D: np.asarray(D, dtype=float) @ coef  # noqa: E731
    from sklearn.metrics import mean_squared_error

    res = permutation_importance(model, X, y, metric=mean_squared_error, n_repeats=2, seed=1,
                                 groups=[["signal", "noise"], ["target_copy"]])
    assert res.feature_names == ["signal+noise", "target_copy"]
    assert res.groups == {"signal+noise": ["signal", "noise"], "target_copy": ["target_copy"]}
    perms = _draws(1, 2, 2, 50)
    Xa = X.to_numpy()
    base = mean_squared_error(y, Xa @ coef)
    for g, cols in enumerate([[0, 1], [2]]):
        for r in range(2):
            Xp = Xa.copy()
            Xp[:, cols] = Xa[perms[g][r]][:, cols]  # one permutation for the whole group
            assert abs(res.importances[g, r] - (mean_squared_error(y, Xp @ coef) - base)) < 1e-12
    named = permutation_importance(model, X, y, metric=mean_squared_error, n_repeats=2, seed=1,
                                   features=["target_copy"], groups={"pair": ["signal", "noise"]})
    assert named.feature_names == ["target_copy", "pair"]
    with pytest.raises(TypeError, match="pass groups="):
        permutation_importance(model, X, y, metric=mean_squared_error, features=[["signal", "noise"]])


def test_permutation_importance_of_a_torch_classifier_defaults_to_accuracy():
    import torch

    X = uniform(120, 3, seed=11).astype(np.float32)
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 0.1]]))
        model.bias.zero_()
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(X)).argmax(1).numpy()
    y[:12] = (y[:12] + 1) % 3  # some mistakes: the baseline accuracy is 0.9
    res = permutation_importance(model, X, y, n_repeats=3, seed=2)
    assert res.metric == "accuracy" and res.greater_is_better
    assert abs(res.baseline_score - 0.9) < 1e-12
    perms = _draws(2, 3, 3, 120)
    W = model.weight.detach().numpy()
    for j in range(3):
        for r in range(3):
            Xp = X.copy()
            Xp[:, j] = X[perms[j][r], j]
            acc = np.mean((Xp @ W.T).argmax(1) == y)
            assert abs(res.importances[j, r] - (0.9 - acc)) < 1e-12
    assert res.ranking()[-1] == "x2"
    with pytest.raises(ValueError, match="integer class indices"):
        permutation_importance(model, X, y + 0.5, n_repeats=1)
