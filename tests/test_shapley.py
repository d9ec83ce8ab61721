"""Shapley values of black-box models: exact_shapley, kernel_shap, permutation_shap."""
import re
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
    masker = TabularMasker(Xtr, summary="kmeans", max_samples=12)
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
