"""Shapley values of black-box models: exact_shapley, kernel_shap, permutation_shap."""
import re
import warnings
from itertools import combinations
from math import factorial

import numpy as np
import pandas as pd
import pytest

import lumos
from lumos.agnostic.maskers import ImageMasker, TabularMasker, TextMasker
from lumos.agnostic.shapley._common import PairedSampler, kernel_solve
from lumos.agnostic.shapley.exact import shapley_from_table


@pytest.fixture(autouse=True)
def _one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


RNG = np.random.default_rng(0)
W = np.array([1.5, -2.0, 0.5, 0.0, 3.0, -1.0])
BG = RNG.normal(size=(20, 6))
X = RNG.normal(size=(4, 6))


def linear(X):
    return np.asarray(X) @ W + 0.7


# a model with interactions up to order 3 on 10 features
_r = np.random.default_rng(1)
A3, B3, C3 = _r.normal(size=10), _r.normal(size=(10, 10)) * 0.5, _r.normal(size=(10, 10, 10)) * 0.3
BG10, X10 = _r.normal(size=(10, 10)), _r.normal(size=(3, 10))


def cubic(X):
    X = np.asarray(X)
    quad = np.einsum("ni,ni->n", X @ B3, X)
    cub = np.einsum("nj,nj->n", (X @ C3.reshape(10, 100)).reshape(-1, 10, 10).__matmul__(X[:, :, None])[..., 0], X)
    return X @ A3 + quad + cub


def pairwise(X):
    X = np.asarray(X)
    return X @ A3 + np.einsum("ni,ni->n", X @ B3, X) + np.sin(X[:, 0])


@pytest.fixture(scope="module")
def cubic_exact():
    return lumos.explain(cubic, X10, method="exact_shapley", background=BG10)


def naive_shapley(f, x, bg):
    """Reference: the Shapley formula over all subsets, one model call per coalition, float64."""
    M = len(x)

    def v(S):
        Z = bg.copy()
        Z[:, list(S)] = x[list(S)]
        return f(Z).mean()

    phi = np.zeros(M)
    for j in range(M):
        others = [k for k in range(M) if k != j]
        for s in range(M):
            for S in combinations(others, s):
                w = factorial(s) * factorial(M - s - 1) / factorial(M)
                phi[j] += w * (v(S + (j,)) - v(S))
    return phi


# ---------------------------------------------------------------- closed forms and axioms
@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_linear_model_closed_form(method):
    e = lumos.explain(linear, X, method=method, background=BG)
    expected = W * (X - BG.mean(0))
    se = e.meta.get("stderr", np.zeros_like(expected))
    assert np.all(np.abs(e.values - expected) <= 1e-9 + 3 * np.nan_to_num(se))
    assert np.abs(e.values - expected).max() < 1e-9  # additive game: every estimator is exact
    np.testing.assert_allclose(e.baseline_output, linear(BG).mean(), atol=1e-12)
    np.testing.assert_allclose(e.output, linear(X), atol=1e-12)
    assert e.feature_names == [f"x{j}" for j in range(6)]


def test_exact_matches_naive_reference():
    f = lambda Z: np.tanh(Z[:, 0] * Z[:, 1]) + Z[:, 2] ** 2 * Z[:, 3] - np.abs(Z[:, 4])  # noqa: E731
    bg = RNG.normal(size=(7, 5))
    x = RNG.normal(size=(2, 5))
    e = lumos.explain(f, x, method="exact_shapley", background=bg)
    for i in range(2):
        np.testing.assert_allclose(e.values[i], naive_shapley(f, x[i], bg), atol=1e-12)


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_efficiency(method, cubic_exact):
    if method == "exact_shapley":
        e = cubic_exact
    else:
        e = lumos.explain(cubic, X10, method=method, background=BG10, budget=200)
    assert e.completeness_gap.max() < 1e-6
    np.testing.assert_allclose(e.baseline_output, cubic(BG10).mean(), atol=1e-10)


def test_dummy_and_symmetric_features():
    # x3 is ignored; x0 and x1 enter symmetrically and have equal values in x and background
    def f(Z):
        return (Z[:, 0] + Z[:, 1]) ** 2 + Z[:, 0] * Z[:, 1] * Z[:, 2] + np.sin(Z[:, 4]) * Z[:, 2]

    bg = RNG.normal(size=(9, 5))
    bg[:, 1] = bg[:, 0]
    x = RNG.normal(size=(3, 5))
    x[:, 1] = x[:, 0]
    e = lumos.explain(f, x, method="exact_shapley", background=bg)
    assert np.all(e.values[:, 3] == 0.0)
    np.testing.assert_allclose(e.values[:, 0], e.values[:, 1], atol=1e-12)
    assert np.abs(e.values[:, 0]).min() > 1e-3
    k = lumos.explain(f, x, method="kernel_shap", background=bg, budget=16)
    assert np.all(np.abs(k.values[:, 3]) <= 1e-9 + 3 * k.meta["stderr"][:, 3])


# ---------------------------------------------------------------- kernel_shap
def test_kernel_error_falls_with_budget_and_se_covers(cubic_exact):
    errs, ratios = [], []
    for budget in (64, 256, 1000):
        e_b = []
        for seed in range(5):
            k = lumos.explain(cubic, X10, method="kernel_shap", background=BG10, budget=budget, seed=seed)
            err = k.values - cubic_exact.values
            e_b.append(np.linalg.norm(err, axis=1).mean())
            assert np.all(k.meta["stderr"] > 0) and np.all(k.meta["n_coalitions"] == budget)
            ratios.append(np.abs(err) / k.meta["stderr"])
        errs.append(np.mean(e_b))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.35 * errs[0]  # measured: 1.27, 0.39, 0.14 on this model
    r = np.concatenate(ratios).ravel()  # 450 errors in units of their standard error
    assert 0.88 <= np.mean(r < 2) <= 0.995  # measured 0.95 (nominal 0.954)
    assert 0.55 <= np.mean(r < 1) <= 0.80  # measured 0.69 (nominal 0.683)


def test_kernel_full_enumeration_is_exact(cubic_exact):
    k = lumos.explain(cubic, X10, method="kernel_shap", background=BG10, budget=2 ** 10 - 2)
    np.testing.assert_allclose(k.values, cubic_exact.values, atol=1e-9)
    assert np.all(k.meta["stderr"] == 0) and np.all(k.meta["converged"])


def test_kernel_exact_for_pairwise_interactions():
    # paired sampling: the antisymmetric part of a pairwise game is additive, so any design is exact
    ex = lumos.explain(pairwise, X10, method="exact_shapley", background=BG10)
    k = lumos.explain(pairwise, X10, method="kernel_shap", background=BG10, budget=40, seed=3)
    np.testing.assert_allclose(k.values, ex.values, atol=1e-9)


def test_kernel_auto_stop(cubic_exact):
    k = lumos.explain(cubic, X10, method="kernel_shap", background=BG10, tol=0.02)
    assert np.all(k.meta["converged"])
    assert np.all(k.meta["stop_ratio"] < 0.02)
    spread = k.values.max(1) - k.values.min(1)
    assert np.all(k.meta["stderr"].max(1) < 0.02 * spread)
    assert np.all(k.meta["n_coalitions"] > 64)  # the first round was not enough here
    # the stated precision holds against the truth
    err = np.abs(k.values - cubic_exact.values).max(1)
    assert np.all(err < 4 * 0.02 * spread)
    with pytest.warns(UserWarning, match="did not reach tol"):
        lumos.explain(cubic, X10[:1], method="kernel_shap", background=BG10, tol=1e-6, max_budget=100)


def test_kernel_no_silent_truncation():
    # 30 features, all with an effect: every one gets its value (shap's default keeps 10)
    w = np.linspace(1, 3, 30)
    bg = np.zeros((1, 30))
    x = np.ones((1, 30))
    k = lumos.explain(lambda Z: Z @ w + 0.1 * Z[:, 0] * Z[:, 1], x, method="kernel_shap",
                      background=bg, budget=200)
    np.testing.assert_allclose(k.values[0], w + 0.05 * (np.arange(30) < 2), atol=1e-9)


def test_many_features_pairwise_closed_form():
    # 60 features: strata too large to enumerate are sampled by rejection, the jackknife uses
    # low-rank updates; a pairwise game is still exact for any paired design
    r = np.random.default_rng(6)
    M = 60
    w, C = r.normal(size=M), r.normal(size=(M, M)) * 0.1
    bg, x = r.normal(size=(4, M)), r.normal(size=(2, M))
    S = (C + C.T) / 2
    bbar, bb = bg.mean(0), bg.T @ bg / len(bg)
    truth = w * (x - bbar)
    for i in range(2):
        xi = x[i]
        pair = np.outer(xi, xi) - np.outer(bbar, xi) + np.outer(xi, bbar) - bb
        np.fill_diagonal(pair, 0.0)
        truth[i] += (S * pair).sum(1) + np.diag(S) * (xi ** 2 - np.diag(bb))
    f = lambda Z: Z @ w + np.einsum("ni,ni->n", Z @ C, Z)  # noqa: E731
    k = lumos.explain(f, x, method="kernel_shap", background=bg, budget=300)
    np.testing.assert_allclose(k.values, truth, atol=1e-8)
    p = lumos.explain(f, x, method="permutation_shap", background=bg, budget=2 * (M - 1))
    np.testing.assert_allclose(p.values, truth, atol=1e-8)


@pytest.mark.parametrize("M,budget", [(7, 60), (16, 48)])  # direct inverses; Woodbury updates
def test_jackknife_matches_naive_refits(M, budget):
    rng = np.random.default_rng(5)
    sampler = PairedSampler(M, rng)
    sampler.grow(budget)
    Z = sampler.Z
    y = Z @ rng.normal(size=M) + 0.3 * (Z[:, 0] & Z[:, 1] & Z[:, 2]) + 0.2 * (Z[:, 3] & Z[:, 4] & Z[:, 5])
    w = sampler.weights()
    total = 1.3
    phi, se = kernel_solve(Z, y, w, total, sampler.stratum, sampler.n, sampler.N)

    def solve(Z, y, w):  # the constrained WLS via its KKT system
        K = np.zeros((M + 1, M + 1))
        K[:M, :M] = (Z * w[:, None]).T @ Z
        K[:M, M] = K[M, :M] = 1
        return np.linalg.solve(K, np.append((Z * w[:, None]).T @ y, total))[:M]

    Zf = Z.astype(float)
    np.testing.assert_allclose(phi, solve(Zf, y, w), atol=1e-10)
    var = np.zeros(M)
    open_ = sampler.n < sampler.N
    for k in np.flatnonzero(open_ & (sampler.n >= 2)):
        units = np.flatnonzero(sampler.stratum == k)
        n = len(units)
        reps = []
        for u in units:
            keep = np.ones(len(Z), bool)
            keep[[2 * u, 2 * u + 1]] = False
            w2 = w.copy()
            in_k = np.repeat(sampler.stratum == k, 2)
            w2[in_k] *= n / (n - 1)
            reps.append(solve(Zf[keep], y[keep], w2[keep]))
        reps = np.array(reps)
        var += (1 - n / sampler.N[k]) * (n - 1) / n * ((reps - reps.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(se, np.sqrt(var), rtol=1e-7, atol=1e-12)


def test_sampler_design():
    s = PairedSampler(8, np.random.default_rng(0))
    s.grow(40)
    s.grow(120)
    assert s.n_coalitions == 120
    codes = {row.tobytes() for row in s.Z}
    assert len(codes) == 120  # without replacement
    assert np.all(s.Z[0::2] == ~s.Z[1::2])  # complementary pairs
    np.testing.assert_array_equal(s.n, [8, 18, 17, 17])  # size 1 enumerated, the rest equal
    # weights: a stratum's total equals its Shapley-kernel mass
    w = s.weights()
    sizes = s.Z.sum(1)
    for k in range(1, 8):
        assert np.isclose(w[sizes == k].sum(), 7 / (k * (8 - k)))


# ---------------------------------------------------------------- permutation_shap
def test_one_antithetic_permutation_exact_for_pairwise():
    ex = lumos.explain(pairwise, X10, method="exact_shapley", background=BG10)
    p = lumos.explain(pairwise, X10, method="permutation_shap", background=BG10, budget=18, seed=7)
    assert np.all(p.meta["n_permutations"] == 2)
    np.testing.assert_allclose(p.values, ex.values, atol=1e-9)
    # but not for a third-order model
    c = lumos.explain(cubic, X10, method="permutation_shap", background=BG10, budget=18)
    assert np.abs(c.values - lumos.explain(cubic, X10, method="exact_shapley", background=BG10).values).max() > 1e-3


def test_permutation_converges(cubic_exact):
    p = lumos.explain(cubic, X10, method="permutation_shap", background=BG10, budget=3000, seed=1)
    err = np.abs(p.values - cubic_exact.values)
    assert np.mean(err / p.meta["stderr"] < 2) > 0.85
    assert np.linalg.norm(err, axis=1).max() < 0.15 * np.linalg.norm(cubic_exact.values, axis=1).min()


# ---------------------------------------------------------------- determinism and batching
@pytest.mark.parametrize("method", ["kernel_shap", "permutation_shap"])
def test_seed_and_batch_size(method):
    ref = lumos.explain(cubic, X10, method=method, background=BG10, budget=120, seed=4)
    for bs in (1, 7, 64):
        e = lumos.explain(cubic, X10, method=method, background=BG10, budget=120, seed=4, batch_size=bs)
        # same coalitions whatever the batch size; only BLAS rounding inside the model may differ
        np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-11)
    again = lumos.explain(cubic, X10, method=method, background=BG10, budget=120, seed=4)
    np.testing.assert_array_equal(again.values, ref.values)
    other = lumos.explain(cubic, X10, method=method, background=BG10, budget=120, seed=5)
    assert not np.allclose(other.values, ref.values)
    # a sample's values do not depend on the samples explained beside it
    alone = lumos.explain(cubic, X10[:1], method=method, background=BG10, budget=120, seed=4)
    np.testing.assert_allclose(alone.values[0], ref.values[0], rtol=0, atol=1e-11)


def test_inputs_not_modified():
    x = X.copy()
    bg = BG.copy()
    lumos.explain(linear, x, method="kernel_shap", background=bg, budget=30)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(bg, BG)


# ---------------------------------------------------------------- real models and data frames
def _credit_frame(n=300, seed=0):
    r = np.random.default_rng(seed)
    return pd.DataFrame({
        "income": r.normal(40, 10, n).round(1),
        "age": r.integers(20, 70, n),
        "job": pd.Series(r.choice(["clerk", "chef", "pilot"], n), dtype="str"),
        "city": pd.Categorical(r.choice(["north", "south"], n)),
        "married": r.random(n) < 0.5,
    })


def test_pipeline_with_categorical_strings_end_to_end():
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    df = _credit_frame()
    y = ((df.income > 40) ^ (df.job == "pilot")).astype(int)
    pipe = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["job", "city", "married"]),
                                (StandardScaler(), ["income", "age"])),
        LogisticRegression()).fit(df, y)
    rows = df.iloc[:3]
    ex = lumos.explain(pipe, rows, method="exact_shapley", background=df.iloc[:30], target=1)
    k = lumos.explain(pipe, rows, method="kernel_shap", background=df.iloc[:30], target=1)
    assert ex.feature_names == list(df.columns)
    assert ex.meta["score"] == "predict_proba"
    np.testing.assert_allclose(ex.output, pipe.predict_proba(rows)[:, 1], atol=1e-12)
    np.testing.assert_allclose(ex.baseline_output, pipe.predict_proba(df.iloc[:30])[:, 1].mean(), atol=1e-12)
    assert ex.completeness_gap.max() < 1e-9 and k.completeness_gap.max() < 1e-9
    np.testing.assert_allclose(k.values, ex.values, atol=1e-9)  # 5 features: kernel enumerates
    assert list(ex.meta["feature_values"][0]) == [f"{rows.income.iloc[0]:.4g}", str(rows.age.iloc[0]),
                                                 rows.job.iloc[0], rows.city.iloc[0], str(rows.married.iloc[0])]
    assert ex.meta["categories"]["job"] == sorted(ex.meta["categories"]["job"], key=list(df.job.unique()).index)


def test_kmeans_background_and_regressor():
    from sklearn.ensemble import GradientBoostingRegressor

    r = np.random.default_rng(2)
    Xtr = r.normal(size=(400, 5))
    gbr = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(
        Xtr, Xtr[:, 0] * Xtr[:, 1] + Xtr[:, 2])
    masker = TabularMasker(Xtr, background_size=12, summary="kmeans")
    e = lumos.explain(gbr, Xtr[:2], method="kernel_shap", masker=masker)
    assert e.meta["n_background"] == 12 and e.meta["score"] == "predict"
    assert e.completeness_gap.max() < 1e-9
    bound = masker.bind(Xtr[:2])
    np.testing.assert_allclose(e.baseline_output, gbr.predict(bound.background) @ bound.weights, atol=1e-12)


def test_xgboost_and_lightgbm():
    xgb = pytest.importorskip("xgboost")
    lgb = pytest.importorskip("lightgbm")
    r = np.random.default_rng(3)
    Xtr = r.normal(size=(300, 4))
    y = Xtr[:, 0] - 2 * Xtr[:, 1] * (Xtr[:, 2] > 0)
    bg, rows = Xtr[:15], Xtr[100:102]
    for model in (xgb.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(Xtr, y),
                  lgb.LGBMRegressor(n_estimators=20, verbose=-1, n_jobs=1).fit(Xtr, y)):
        ex = lumos.explain(model, rows, method="exact_shapley", background=bg)
        np.testing.assert_allclose(ex.output, model.predict(rows), rtol=1e-6)
        assert ex.completeness_gap.max() < 1e-5  # the boosters predict in float32
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(Xtr, label=y), num_boost_round=5)
    e = lumos.explain(booster, rows, method="kernel_shap", background=bg)
    np.testing.assert_allclose(e.output, booster.predict(xgb.DMatrix(rows)), rtol=1e-6)


# ---------------------------------------------------------------- images and texts
def test_image_superpixels_layout_and_completeness():
    r = np.random.default_rng(4)
    imgs = r.random((2, 3, 12, 12)).astype(np.float32)

    def f(x):  # class 0 looks at the top-left 6x6 block of channel 0
        return np.stack([x[:, 0, :6, :6].sum((1, 2)), x.mean((1, 2, 3))], 1)

    masker = ImageMasker(segmentation="grid", n_segments=16, fill=0.0)
    ex = lumos.explain(f, imgs, method="exact_shapley", masker=masker, target=0)
    assert ex.values.shape == imgs.shape
    assert ex.meta["segments"].shape == (2, 12, 12) and ex.meta["segment_values"].shape == (2, 16)
    np.testing.assert_allclose(ex.values.reshape(2, -1).sum(1), ex.meta["segment_values"].sum(1), atol=1e-9)
    assert ex.completeness_gap.max() < 1e-6
    # the model is additive over cells: each cell's value is its own contribution
    seg = ex.meta["segments"][0]
    for s in range(16):
        np.testing.assert_allclose(ex.meta["segment_values"][0, s], imgs[0, 0][:6, :6][seg[:6, :6] == s].sum(), atol=1e-5)
    k = lumos.explain(f, imgs, method="kernel_shap", masker=masker, target=0, budget=64)
    np.testing.assert_allclose(k.meta["segment_values"], ex.meta["segment_values"], atol=1e-6)


def test_text_tokens_and_values():
    def model(texts):
        words = [re.findall(r"\w+", t) for t in texts]
        return np.array([[w.count("good") * 2.0 - w.count("bad"), len(w)] for w in words])

    texts = ["a good film, not bad", "good good"]
    e = lumos.explain(model, texts, method="exact_shapley", target=0)
    assert e.values.shape == (2, 5)
    assert e.meta["tokens"].tolist() == [["a", "good", "film", "not", "bad"], ["good", "good", "", "", ""]]
    np.testing.assert_allclose(e.values[0], [0, 2, 0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(e.values[1], [2, 2, 0, 0, 0], atol=1e-12)
    np.testing.assert_array_equal(e.meta["n_tokens"], [5, 2])
    m = lumos.explain(model, texts, method="kernel_shap", target=0, masker=TextMasker(mask_token="[MASK]"))
    np.testing.assert_allclose(m.values, e.values, atol=1e-9)
    one = e[1]
    assert one.meta["tokens"].tolist() == [["good", "good", "", "", ""]]


def test_save_and_load_roundtrip(tmp_path):
    e = lumos.explain(cubic, X10, method="kernel_shap", background=BG10, budget=100)
    back = lumos.load(e.save(tmp_path / "k.npz"))
    np.testing.assert_array_equal(back.values, e.values)
    np.testing.assert_array_equal(back.meta["stderr"], e.meta["stderr"])
    np.testing.assert_array_equal(back.baseline_output, e.baseline_output)
    assert back.feature_names == e.feature_names


# ---------------------------------------------------------------- the credit world
def test_credit_world_true_shapley():
    from lumos.data.credit import FEATURES, credit_dataset

    world = credit_dataset(400, seed=1)
    assert list(world.X.columns) == list(FEATURES)
    assert world.X["employment"].dtype == "str"
    bg, rows = world.X.iloc[:25], world.X.iloc[100:104]
    ex = lumos.explain(world.score_fn, rows, method="exact_shapley", background=bg)
    np.testing.assert_allclose(ex.values, world.true_shapley(rows, bg), atol=1e-10)
    assert np.all(ex.values[:, FEATURES.index("age")] == 0)
    # the proxy: district carries the protected attribute into the score
    score_b = world.score[world.protected == "B"].mean()
    score_a = world.score[world.protected == "A"].mean()
    assert score_b < score_a - 0.3
    np.testing.assert_allclose(world.score, world.score_fn(world.X))


# ---------------------------------------------------------------- errors
def test_clear_errors():
    with pytest.raises(ValueError, match="background"):
        lumos.explain(linear, X, method="kernel_shap")
    with pytest.raises(ValueError, match="one row per input"):
        lumos.explain(lambda Z: np.zeros(3), X, method="kernel_shap", background=BG)
    bad = lambda Z: np.where(np.asarray(Z)[:, 0] > 1, np.nan, 1.0)  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        lumos.explain(bad, np.vstack([X, np.full((1, 6), 0.5)]), method="kernel_shap", background=BG + 5)
    with pytest.raises(ValueError, match="budget"):
        lumos.explain(linear, X, method="kernel_shap", background=BG, budget=0)
    with pytest.raises(ValueError, match="max_features"):
        lumos.explain(linear, X, method="exact_shapley", background=BG, max_features=4)
    with pytest.raises(ValueError, match="columns"):
        lumos.explain(linear, X, method="kernel_shap", background=BG[:, :5])
    with pytest.raises(ValueError, match="2-D"):
        lumos.explain(linear, X[0], method="exact_shapley", background=BG)
    with pytest.raises(ValueError, match="target"):
        lumos.explain(lambda Z: np.ones((len(Z), 2)), X, method="kernel_shap", background=BG, target=5)
    df = _credit_frame(20)
    with pytest.raises(ValueError, match="not seen"):
        TabularMasker(df).bind(df).table.encode(df.assign(job="astronaut"))


def test_shapley_from_table_small():
    # two players, v = {∅: 0, {0}: 1, {1}: 2, {0,1}: 5}: phi = (2, 3)
    np.testing.assert_allclose(shapley_from_table(np.array([0.0, 1.0, 2.0, 5.0]), 2), [2.0, 3.0])


def test_torch_module_as_black_box(small_cnn, images):
    from conftest import assert_same_state, model_state

    before = model_state(small_cnn)
    masker = ImageMasker(segmentation="grid", n_segments=9, fill=0.0)
    ex = lumos.explain(small_cnn, images, method="exact_shapley", masker=masker, target="predicted")
    k = lumos.explain(small_cnn, images, method="kernel_shap", masker=masker, target="predicted", budget=80)
    assert_same_state(before, model_state(small_cnn))
    assert ex.values.shape == tuple(images.shape) and ex.meta["score"] == "torch forward"
    import torch

    with torch.no_grad():
        out = small_cnn(images)
    np.testing.assert_array_equal(ex.target, out.argmax(1).numpy())
    assert ex.completeness_gap.max() < 1e-5  # float32 model
    np.testing.assert_allclose(k.meta["segment_values"], ex.meta["segment_values"],
                               atol=1e-5 + 4 * k.meta["stderr"].max())


# ================================================================ old per-row KernelSHAP solver
# (kept verbatim as the naive reference of the vectorised kernel_solve_rows)
def _old_kernel_solve(Z: np.ndarray, y: np.ndarray, w: np.ndarray, total: float,
                 unit_stratum: np.ndarray | None = None, n_units: np.ndarray | None = None,
                 N_units: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares ``y ≈ Z φ`` subject to ``sum(φ) = total``, and standard errors.

    The constraint is solved exactly by eliminating the last coordinate. Standard errors come
    from the stratified delete-one-unit jackknife (each unit a pair of coalitions; a deleted
    unit's stratum is reweighted by n/(n-1); finite-population correction 1 - n/N), computed with
    rank-2 Woodbury updates so that it costs O(units · M²). Strata drawn once only are pooled.

    Parameters
    ----------
    Z : bool array (R, M), rows in unit pairs (2k, 2k+1)
    y : array (R,)   ``v(S) - v(∅)``
    w : array (R,)   regression weights
    total : float    ``v(N) - v(∅)``
    unit_stratum, n_units, N_units : the design (optional: no standard errors without them)

    Returns
    -------
    phi : (M,), se : (M,) (zeros when every stratum is enumerated, NaN when not estimable)
    """
    M = Z.shape[1]
    if M == 1:
        return np.array([total]), np.zeros(1)
    Zf = Z.astype(np.float64)
    X = Zf[:, :-1] - Zf[:, -1:]
    yt = y - Zf[:, -1] * total
    Xw = X * w[:, None]
    H = Xw.T @ X
    g = Xw.T @ yt
    beta = _old_solve(H, g)
    phi = np.append(beta, total - beta.sum())
    se = np.full(M, np.nan)
    if unit_stratum is None:
        return phi, se
    # variance groups: strata with 2+ units drawn but not all; single-draw strata pooled
    open_ = n_units < N_units
    groups = np.where(open_ & (n_units >= 2), np.arange(len(n_units)), -1)
    pooled = open_ & (n_units == 1)
    if pooled.sum() >= 2:
        groups[pooled] = len(n_units)
    elif pooled.any():  # one unit alone carries variance we cannot estimate
        return phi, se
    unit_group = groups[unit_stratum]
    var = np.zeros(M)
    try:
        H0inv = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return phi, se
    Xu = X.reshape(-1, 2, M - 1)
    wu = w.reshape(-1, 2)
    yu = yt.reshape(-1, 2)
    for grp in np.unique(unit_group[unit_group >= 0]):
        units = np.flatnonzero(unit_group == grp)
        n = len(units)
        U = Xu[units]                     # (n, 2, p)
        c = wu[units] * n / (n - 1)       # (n, 2)
        Hs = np.einsum("nrp,nr,nrq->pq", U, wu[units], U)
        gs = np.einsum("nrp,nr,nr->p", U, wu[units], yu[units])
        gp = g + gs / (n - 1)
        try:
            P = _old_inverse_update(H, H0inv, Hs / (n - 1), U, wu[units] / (n - 1))
        except np.linalg.LinAlgError:
            return phi, np.full(M, np.nan)
        bp = P @ gp
        A = U @ P                                           # (n, 2, p) = U P
        cy = c * yu[units]
        Ph = bp - np.einsum("nrp,nr->np", A, cy)
        UPh = np.einsum("nrp,np->nr", U, Ph)
        K = -np.einsum("nrp,nsp->nrs", A, U)
        K[:, 0, 0] += 1 / c[:, 0]
        K[:, 1, 1] += 1 / c[:, 1]
        try:
            sol = np.linalg.solve(K, UPh[..., None])[..., 0]
        except np.linalg.LinAlgError:
            return phi, np.full(M, np.nan)
        b = Ph + np.einsum("nrp,nr->np", A, sol)            # (n, p) delete-one estimates
        reps = np.hstack([b, total - b.sum(1, keepdims=True)])
        f = n / float(np.sum(N_units[np.flatnonzero(groups == grp)]))
        var += (1 - min(f, 1.0)) * (n - 1) / n * ((reps - reps.mean(0)) ** 2).sum(0)
    return phi, np.sqrt(var)


def _old_inverse_update(H, Hinv, Hs, U, c) -> np.ndarray:
    """``(H + Hs)^-1`` with ``Hs = sum_k U_k^T diag(c_k) U_k``: directly when the update has
    high rank, else by the Woodbury identity from ``Hinv`` (O(p² r) instead of O(p³))."""
    p = H.shape[0]
    V = U.reshape(-1, p)                 # (r, p) rows of the update
    cr = c.reshape(-1)
    if len(V) * 2 >= p:
        return np.linalg.inv(H + Hs)
    A = V @ Hinv                         # (r, p)
    K = np.diag(1.0 / cr) + A @ V.T      # (r, r)
    return Hinv - A.T @ np.linalg.solve(K, A)


def _old_solve(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(H, g)
    except np.linalg.LinAlgError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.linalg.lstsq(H, g, rcond=None)[0]




@pytest.mark.parametrize("M, budget, rows", [(6, 40, 5), (6, 62, 4), (12, 300, 6), (30, 400, 3), (9, 40, 3)])
def test_vectorised_solver_equals_per_row_reference(M, budget, rows):
    """kernel_solve_rows (all samples at once, units reordered) == the old per-row solve, 1e-10."""
    from lumos.agnostic.shapley._common import kernel_solve_rows
    from lumos.agnostic.shapley.kernel import _fit

    r = np.random.default_rng(M + budget)
    samplers = [PairedSampler(M, np.random.default_rng(100 + i)) for i in range(rows)]
    for s in samplers:
        s.grow(budget)
    base, full = r.normal(size=rows), r.normal(size=rows)
    ys = [base[i] + r.normal(size=s.n_coalitions) + s.Z @ r.normal(size=M) for i, s in enumerate(samplers)]
    fits = _fit(samplers, np.arange(rows), ys, base, full)
    for i, s in enumerate(samplers):
        ref_phi, ref_se = _old_kernel_solve(s.Z, ys[i] - base[i], s.weights(), full[i] - base[i],
                                            s.stratum, s.n, s.N)
        phi, se = fits[i]
        np.testing.assert_allclose(phi, ref_phi, rtol=0, atol=1e-10)
        np.testing.assert_allclose(se, ref_se, rtol=0, atol=1e-10)  # NaN where not estimable, alike
    # stacked rows sharing one design (a complete enumeration) use one factorisation
    if samplers[0].complete:
        s = samplers[0]
        Y = np.stack([r.normal(size=s.n_coalitions) for _ in range(3)])
        phi, se = kernel_solve_rows(s.Z, Y, s.weights(), np.ones(3), s.stratum, s.n, s.N)
        for k in range(3):
            ref = _old_kernel_solve(s.Z, Y[k], s.weights(), 1.0, s.stratum, s.n, s.N)
            np.testing.assert_allclose(phi[k], ref[0], rtol=0, atol=1e-10)


# ================================================================ background use (issue 11)
def test_whole_background_by_default_and_recorded():
    """exact_shapley is exact for the background passed: 150 rows (above the old cap of 100)."""
    r = np.random.default_rng(7)
    bg = r.normal(size=(150, 4))
    x = r.normal(size=(2, 4))
    f = lambda Z: np.tanh(np.asarray(Z) @ W[:4]) * np.asarray(Z)[:, 0]  # noqa: E731
    e = lumos.explain(f, x, method="exact_shapley", background=bg)
    for i in range(2):
        np.testing.assert_allclose(e.values[i], naive_shapley(f, x[i], bg), rtol=0, atol=1e-12)
    assert e.meta["n_background"] == 150 and e.meta["background"] == "all 150 rows"
    s = lumos.explain(f, x, method="kernel_shap", background=bg, background_size=40, budget=14)
    assert s.meta["n_background"] == 40 and s.meta["n_background_given"] == 150
    assert s.meta["background"] == "a random sample of 40 of 150 rows (seed 0)"
    with pytest.raises(TypeError, match="'max_samples' is now called 'background_size'"):
        lumos.explain(f, x, method="kernel_shap", background=bg, max_samples=40)
    with pytest.raises(ValueError, match="background_size"):
        lumos.explain(f, x, method="kernel_shap", background=bg, background_size=0)


# ================================================================ types kept, null players (issue 11)
def _digit_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    r = np.random.default_rng(3)
    n = 200
    A = np.empty((n, 4), dtype=object)
    A[:, 0] = r.choice(["0", "1", "2"], n)        # digit strings: categories, not numbers
    A[:, 1] = r.normal(size=n)
    A[:, 2] = "7"                                 # a constant string column
    A[:, 3] = r.choice(["a", "b"], n)
    y = (A[:, 0] == "1") ^ (A[:, 1].astype(float) > 0)
    ct = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="error"), [0, 2, 3])],
                           remainder="passthrough")
    return make_pipeline(ct, LogisticRegression()).fit(A, y), A


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_digit_strings_reach_the_pipeline_as_strings(method):
    model, A = _digit_pipeline()
    seen = []

    def f(Z):
        seen.append(Z)
        return model.predict_proba(Z)

    e = lumos.explain(f, A[:3], method=method, background=A[50:70], target=1)
    assert all(z.dtype == object and isinstance(z[0, 0], str) and isinstance(z[0, 2], str) for z in seen)
    assert np.all(e.values[:, 2] == 0.0)  # the constant column: exactly zero, not 1e-17
    assert e.completeness_gap.max() < 1e-12
    ref = lumos.explain(f, A[:3], method="exact_shapley", background=A[50:70], target=1)
    # three players left: kernel_shap enumerates them; permutation sampling is an estimate
    np.testing.assert_allclose(e.values, ref.values, atol=1e-12 if method != "permutation_shap" else 1e-3)


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_constant_column_is_exactly_zero(method):
    """A column equal in the input and every background row cannot change any masked input."""
    bg, x = BG10.copy(), X10.copy()
    bg[:, 4] = 0.25
    x[:, 4] = 0.25
    e = lumos.explain(cubic, x, method=method, background=bg, budget=200 if method != "exact_shapley" else None) \
        if method != "exact_shapley" else lumos.explain(cubic, x, method=method, background=bg)
    assert np.all(e.values[:, 4] == 0.0)
    assert e.completeness_gap.max() < 1e-10
    assert e.values.shape == (3, 10) and e.meta["stderr"][:, 4].tolist() == [0.0] * 3 if "stderr" in e.meta else True
    ex = lumos.explain(cubic, x, method="exact_shapley", background=bg)
    if method == "kernel_shap":  # one player fewer: 9 players, 200 coalitions per sample
        assert (e.meta["n_coalitions"] <= 200).all()
    if method == "exact_shapley":
        assert (e.meta["n_coalitions"] == 2 ** 9 - 2).all()
    np.testing.assert_allclose(ex.values, _exact_by_formula(cubic, x, bg), atol=1e-10)


def _exact_by_formula(f, x, bg):
    return np.stack([naive_shapley(f, xi, bg) for xi in x])


# ================================================================ torch modules through the adapter
class _Tab(torch_nn_module := __import__("torch").nn.Module):
    """A tabular net with batch norm; ``kind`` chooses the output form."""

    def __init__(self, kind="tensor"):
        import torch

        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                                        torch.nn.Linear(8, 3))

    def forward(self, x):
        out = self.body(x)
        if self.kind == "tuple":
            return out, out.sum()
        if self.kind == "logits":
            from types import SimpleNamespace

            return SimpleNamespace(logits=out)
        return out


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_torch_module_guarded_and_unpacked(method):
    import torch

    from conftest import assert_same_state, model_state

    plain = _Tab().eval()
    ref = lumos.explain(plain, X, method=method, background=BG, target=1, budget=64) \
        if method != "exact_shapley" else lumos.explain(plain, X, method=method, background=BG, target=1)
    kw = {} if method == "exact_shapley" else {"budget": 64}
    for kind in ("tuple", "logits"):
        m = _Tab(kind).eval()
        e = lumos.explain(m, X, method=method, background=BG, target=1, **kw)
        np.testing.assert_array_equal(e.values, ref.values)
    train = _Tab()  # training mode: batch norm would update its running statistics
    before = model_state(train)
    with pytest.warns(UserWarning, match="training mode"):
        lumos.explain(train, X, method=method, background=BG, target=1, **kw)
    assert_same_state(before, model_state(train))
    assert train.training and torch.equal(train.body[1].running_mean, torch.zeros(8))


def test_torch_adapter_input_errors(small_cnn, images):
    masker = ImageMasker(segmentation="grid", n_segments=4, fill=0.0)
    with pytest.raises(ValueError, match="inputs must have shape \\(batch, channels, height, width\\)"):
        lumos.explain(small_cnn, images[0], method="kernel_shap", masker=masker, budget=8)


def test_torch_adapter_leaks_no_warning():
    import warnings

    import torch

    # a DataFrame for a torch module: no library warning (pandas' read-only arrays once made
    # torch warn about non-writable NumPy arrays)
    df = pd.DataFrame(X.astype(np.float32), columns=list("abcdef"))
    bgdf = pd.DataFrame(BG.astype(np.float32), columns=list("abcdef"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = lumos.explain(_Tab().eval(), df, method="kernel_shap", background=bgdf, target=0, budget=30)
        assert e.feature_names == list("abcdef")
        with torch.inference_mode():  # also inside a caller's inference-mode block
            lumos.explain(_Tab().eval(), X, method="permutation_shap", background=BG, target=0, budget=30)


def test_blackbox_shared_checks():
    """The adapter every black-box method uses (LIME too): numeric outputs, copies, unpacking."""
    from lumos.core.blackbox import BlackBox

    with pytest.raises(ValueError, match="numeric outputs"):
        BlackBox(lambda Z: np.array(["yes"] * len(Z)), method="lime")(X)
    bb = BlackBox(_Tab("tuple").eval())
    assert bb(X).shape == (4, 3) and bb.score_name == "torch forward"
    with pytest.raises(ValueError, match="output"):
        BlackBox(_Tab(), output="predict_proba")


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_in_place_predict_does_not_corrupt_inputs(method):
    mu, sd = BG.mean(0), BG.std(0)

    def normalising(Z):
        Z -= mu  # in place, as some user code does
        Z /= sd
        return Z @ W

    def clean(Z):
        return ((Z - mu) / sd) @ W

    kw = {} if method == "exact_shapley" else {"budget": 40}
    x0, bg0 = X.copy(), BG.copy()
    e = lumos.explain(normalising, X, method=method, background=BG, **kw)
    ref = lumos.explain(clean, X, method=method, background=BG, **kw)
    np.testing.assert_array_equal(X, x0)
    np.testing.assert_array_equal(BG, bg0)
    np.testing.assert_array_equal(e.inputs, X)
    np.testing.assert_allclose(e.values, ref.values, atol=1e-12)
    np.testing.assert_allclose(e.output, ref.output, atol=1e-12)


# ================================================================ groups (issue 13)
def _group_shapley(f, x, bg, groups):
    """Reference: Shapley values of the game whose players are the groups, by the formula."""
    G = len(groups)

    def v(T):
        Z = bg.copy()
        cols = [c for g in T for c in groups[g]]
        Z[:, cols] = x[cols]
        return f(Z).mean()

    phi = np.zeros(G)
    for j in range(G):
        others = [k for k in range(G) if k != j]
        for s in range(G):
            for T in combinations(others, s):
                w = factorial(s) * factorial(G - s - 1) / factorial(G)
                phi[j] += w * (v(T + (j,)) - v(T))
    return phi


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_groups_are_players(method):
    groups = [[0, 3], [1, 2, 7], [4], [5, 6], [8, 9]]
    kw = {} if method == "exact_shapley" else {"budget": 10_000}
    e = lumos.explain(pairwise, X10, method=method, background=BG10, groups=groups, **kw)
    assert e.values.shape == (3, 5)
    assert e.feature_names == ["x0+x3", "x1+x2+x7", "x4", "x5+x6", "x8+x9"]
    assert e.meta["groups"]["x1+x2+x7"] == ["x1", "x2", "x7"]
    for i in range(3):
        ref = _group_shapley(pairwise, X10[i], BG10, groups)
        np.testing.assert_allclose(e.values[i], ref, rtol=0, atol=1e-10)
    assert e.completeness_gap.max() < 1e-10


def test_group_forms_and_errors():
    df = _credit_frame(40)
    bg, rows = df.iloc[:20], df.iloc[20:23]
    f = lambda Z: Z["income"].to_numpy() / 1e4 + (Z["job"] == "clerk") * 1.0 + Z["age"] / 50  # noqa: E731
    by_dict = lumos.explain(f, rows, method="exact_shapley", background=bg,
                            groups={"money": ["income"], "life": ["age", "job", "married"]})
    assert by_dict.feature_names == ["money", "life", "city"]  # a column in no group plays alone
    ids = ["money", "life", "life", "city", "life"]   # one id per column: income, age, job, city, married
    by_id = lumos.explain(f, rows, method="exact_shapley", background=bg, groups=ids)
    assert by_id.feature_names == ["money", "life", "city"]
    np.testing.assert_allclose(by_id.values, by_dict.values, atol=1e-12)
    assert by_dict.values[:, 2].tolist() == [0.0] * 3   # city: not in the model
    assert "age=" in by_dict.meta["feature_values"][0, 1]
    with pytest.raises(ValueError, match="two groups"):
        lumos.explain(f, rows, method="exact_shapley", background=bg, groups=[["age"], ["age", "job"]])
    with pytest.raises(ValueError, match="unknown column 'salary'"):
        lumos.explain(f, rows, method="kernel_shap", background=bg, groups=[["salary"]])
    with pytest.raises(ValueError, match="groups"):
        lumos.explain(f, ["a text"], method="kernel_shap", groups=[[0]])


# ================================================================ output links (issue 13)
def _proba(Z):
    return 1.0 / (1.0 + np.exp(-(np.asarray(Z) @ W * 0.5 + np.sin(np.asarray(Z)[:, 0]))))


@pytest.mark.parametrize("method", ["exact_shapley", "kernel_shap", "permutation_shap"])
def test_logit_link_efficiency_in_log_odds(method):
    kw = {} if method == "exact_shapley" else {"budget": 200}
    e = lumos.explain(_proba, X, method=method, background=BG, link="logit", **kw)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(e.output, logit(_proba(X)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.baseline_output, logit(_proba(BG).mean()), rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.values.sum(1), logit(_proba(X)) - logit(_proba(BG).mean()), rtol=0, atol=1e-10)
    assert e.meta["link"] == "logit" and e.params["link"] == "logit"
    with pytest.raises(ValueError, match="link='logit' needs probabilities"):
        lumos.explain(linear, X, method=method, background=BG, link="logit", **kw)
    with pytest.raises(ValueError, match="link must be one of"):
        lumos.explain(_proba, X, method=method, background=BG, link="probit", **kw)


def test_logit_link_matches_shap_kernel():
    shap = pytest.importorskip("shap")
    bg, x = BG[:8], X[:2]
    e = lumos.explain(_proba, x, method="exact_shapley", background=bg, link="logit")
    ke = shap.KernelExplainer(_proba, bg, link="logit")
    ref = np.asarray(ke.shap_values(x, nsamples=2 ** 6, silent=True))  # 6 features: enumerated
    np.testing.assert_allclose(e.values, ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(e.baseline_output, ke.expected_value, rtol=0, atol=1e-10)
