"""Counterfactuals (issue 16): every returned counterfactual flips the prediction and respects
every constraint (checked here independently of the library's own checks), the gradient method
matches the closed-form closest point on linear models, the k-d tree search equals brute force,
budgets and time limits end the search with an explained "not found", seeds decide the result,
and user strings are escaped in HTML."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from lumos.data.credit import credit_dataset
from lumos.examples import Counterfactuals, counterfactuals


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def credit():
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    world = credit_dataset(700, seed=3)
    X, y = world.X, world.y
    cats = ["employment", "housing", "district"]
    nums = [c for c in X.columns if c not in cats]
    prep = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), cats), (StandardScaler(), nums))
    model = make_pipeline(prep, LogisticRegression(max_iter=500)).fit(X.iloc[:500], y[:500])
    p = model.predict_proba(X.iloc[500:])[:, 1]
    rejected = [500 + i for i in np.argsort(p)[:6]]
    return model, X.iloc[:500].reset_index(drop=True), X, rejected


CONSTRAINTS = dict(immutable=["district", "age"],
                   ranges={"income": (10.0, 150.0), "housing": ["own", "rent"]},
                   monotone={"late_payments": "decrease", "years_employed": "increase"})


def mad(B: np.ndarray) -> np.ndarray:
    s = np.median(np.abs(B - np.median(B, 0)), 0)
    fallback = np.mean(np.abs(B - B.mean(0)), 0)
    return np.where(s > 0, s, np.where(fallback > 0, fallback, 1.0))


def frame_distance(Z: pd.DataFrame, x: pd.DataFrame, background: pd.DataFrame) -> np.ndarray:
    """MAD-scaled L1 + 1 per changed category, written out independently of the library."""
    num = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
    cat = [c for c in x.columns if c not in num]
    m = mad(background[num].to_numpy(float))
    d = (np.abs(Z[num].to_numpy(float) - x[num].to_numpy(float)) / m).sum(1)
    return d + (Z[cat].to_numpy(object) != x[cat].to_numpy(object)).sum(1)


def check_constraints(cf: pd.DataFrame, x: pd.DataFrame, X: pd.DataFrame) -> None:
    x0 = x.iloc[0]
    for c in CONSTRAINTS["immutable"]:
        assert (cf[c] == x0[c]).all(), c
    assert ((cf["income"] >= 10.0) & (cf["income"] <= 150.0)).all()
    assert cf["housing"].isin(["own", "rent"]).all()
    assert (cf["late_payments"] <= x0["late_payments"]).all()
    assert (cf["years_employed"] >= x0["years_employed"]).all()
    for c in ["employment", "housing", "district"]:
        assert cf[c].isin(X[c].unique()).all()
    for c in ["age", "years_employed", "late_payments"]:
        assert pd.api.types.is_integer_dtype(cf[c])
    assert list(cf.columns) == list(x.columns)


# ---------------------------------------------------------------------- validity and constraints
@pytest.mark.parametrize("method", ["genetic", "random", "kdtree"])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_counterfactual_flips_and_respects_every_constraint(credit, method, seed):
    model, B, X, rejected = credit
    found = 0
    for i in rejected[:2]:
        x = X.iloc[[i]]
        before = x.copy()
        cf = counterfactuals(model, x, desired=1, method=method, background=B, n=3, seed=seed,
                             n_iter=12, population=24, **CONSTRAINTS)
        pd.testing.assert_frame_equal(x, before)   # inputs untouched
        if not cf.found:
            assert cf.reason and len(cf.counterfactuals) == 0
            continue
        found += 1
        Z = cf.counterfactuals
        assert (model.predict(Z) == 1).all()             # flips, by the model itself
        check_constraints(Z, x, X)
        assert cf.metrics["validity"].all() and cf.metrics["constraints_ok"].all()
        # metrics are what they say
        np.testing.assert_allclose(cf.metrics["proximity"], frame_distance(Z, x.reset_index(drop=True), B),
                                   rtol=1e-12)
        changed = (Z.to_numpy(object) != x.to_numpy(object)).sum(1)
        np.testing.assert_array_equal(cf.metrics["sparsity"], changed)
        assert changed.min() >= 1
    assert method == "kdtree" or found == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_counterfactuals_respect_constraints_and_integers(seed):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    rng = np.random.default_rng(seed)
    B = np.column_stack([rng.normal(0, 1, 400), rng.integers(0, 10, 400), rng.normal(0, 2, 400),
                         rng.integers(0, 3, 400), rng.normal(0, 1, 400)]).astype(np.float64)
    cls = net(torch.tensor(B, dtype=torch.float32)).argmax(1).numpy()
    x = B[np.flatnonzero(cls == 0)[0]]
    params = [(p, p.requires_grad) for p in net.parameters()]
    net.train()   # no dropout or batch norm: training mode changes nothing, but must be kept
    cf = counterfactuals(net, x, desired=1, method="gradient", background=B, n=3, seed=seed,
                         immutable=[4], integer=[1], categorical=[3], monotone={2: "increase"},
                         ranges={0: (-1.5, 1.5)})
    assert net.training and all(p.requires_grad == r for p, r in params)   # left as found
    assert cf.found
    Z = cf.counterfactuals
    assert isinstance(Z, np.ndarray)
    out = net(torch.tensor(Z, dtype=torch.float32)).argmax(1).numpy()
    assert (out == 1).all()
    assert (Z[:, 4] == x[4]).all() and (Z[:, 3] == x[3]).all()      # immutable; categorical held
    assert (Z[:, 1] == np.round(Z[:, 1])).all()                       # integer
    assert (Z[:, 2] >= x[2]).all()                                    # monotone
    assert ((Z[:, 0] >= -1.5) & (Z[:, 0] <= 1.5)).all()               # range


# ---------------------------------------------------------------------- closed forms
def _linear(w, b, two_class=False):
    d = len(w)
    lin = torch.nn.Linear(d, 2 if two_class else 1).double()
    with torch.no_grad():
        if two_class:   # logits (0, w.x + b): class 1 wins exactly where w.x + b > 0
            lin.weight.zero_()
            lin.bias.zero_()
            lin.weight[1] = torch.tensor(w)
            lin.bias[1] = b
        else:
            lin.weight[0] = torch.tensor(w)
            lin.bias[0] = b
    return lin


@pytest.mark.parametrize("two_class", [False, True])
def test_gradient_l1_matches_the_closed_form_on_a_linear_model(two_class):
    """min sum |d_j| / MAD_j subject to w.(x + d) + b >= 0: move only the feature of largest
    |w_j| MAD_j, exactly to the boundary."""
    rng = np.random.default_rng(1)
    B = rng.normal(size=(300, 5)) * np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    w = np.array([0.5, -0.4, 2.0, 0.1, -0.3])
    b = -1.0
    x = np.array([0.2, 0.5, -0.3, 1.0, 0.4])
    desired = 1 if two_class else (0.0, None)
    cf = counterfactuals(_linear(w, b, two_class), x, desired=desired, method="gradient",
                         background=B, n=1, ranges={j: (None, None) for j in range(5)})
    m = mad(B)
    j = int(np.argmax(np.abs(w) * m))
    z = x.copy()
    z[j] -= (w @ x + b) / w[j]
    assert cf.found
    np.testing.assert_allclose(cf.encoded[0], z, rtol=0, atol=1e-6)
    assert cf.metrics["sparsity"][0] == 1
    assert abs(cf.metrics["proximity"][0] - abs(z[j] - x[j]) / m[j]) < 1e-6


def test_gradient_l2_matches_the_projection_onto_the_hyperplane():
    """Without background the scales are 1: the L2 counterfactual is the orthogonal projection."""
    w = np.array([0.5, -0.4, 2.0, 0.1])
    b = -1.0
    x = np.array([0.2, 0.5, -0.3, 1.0])
    cf = counterfactuals(_linear(w, b), x, desired=(0.0, None), method="gradient", n=1, distance="l2")
    proj = x - (w @ x + b) / (w @ w) * w
    np.testing.assert_allclose(cf.encoded[0], proj, rtol=0, atol=1e-6)


def test_gradient_closed_form_moves_to_the_next_feature_when_the_best_is_immutable():
    rng = np.random.default_rng(2)
    B = rng.normal(size=(200, 3))
    w = np.array([3.0, 1.0, -0.5])
    x = np.array([-1.0, 0.0, 0.0])
    cf = counterfactuals(_linear(w, 0.0), x, desired=(0.0, None), method="gradient", background=B,
                         n=1, immutable=[0], ranges={1: (None, None), 2: (None, None)})
    m = mad(B)
    rest = [1, 2]
    j = rest[int(np.argmax(np.abs(w[rest]) * m[rest]))]
    z = x.copy()
    z[j] -= (w @ x) / w[j]
    np.testing.assert_allclose(cf.encoded[0], z, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- k-d tree == brute force
@pytest.mark.parametrize("constraints", [{}, CONSTRAINTS])
def test_kdtree_equals_brute_force(credit, constraints):
    model, B, X, rejected = credit
    x = X.iloc[[rejected[0]]].reset_index(drop=True)
    cf = counterfactuals(model, x, desired=1, method="kdtree", background=B, n=5, diversity=0,
                         **constraints)
    ok = model.predict(B) == 1
    if constraints:
        x0 = x.iloc[0]
        ok &= (B["district"] == x0["district"]).to_numpy() & (B["age"] == x0["age"]).to_numpy()
        ok &= ((B["income"] >= 10) & (B["income"] <= 150) & B["housing"].isin(["own", "rent"])).to_numpy()
        ok &= (B["late_payments"] <= x0["late_payments"]).to_numpy()
        ok &= (B["years_employed"] >= x0["years_employed"]).to_numpy()
    cand = B[ok].reset_index(drop=True)
    if not len(cand):
        assert not cf.found and "no background row" in cf.reason
        return
    d = frame_distance(cand, x, B)
    order = np.argsort(d, kind="stable")[:5]
    expected = cand.iloc[order].reset_index(drop=True)
    pd.testing.assert_frame_equal(cf.counterfactuals.reset_index(drop=True), expected)
    np.testing.assert_allclose(cf.metrics["proximity"], d[order], rtol=1e-12)


def test_plausibility_is_the_mean_distance_to_the_five_nearest_background_rows(credit):
    model, B, X, rejected = credit
    x = X.iloc[[rejected[1]]].reset_index(drop=True)
    cf = counterfactuals(model, x, desired=1, method="kdtree", background=B, n=3, diversity=0)
    for k in range(len(cf)):
        d = np.sort(frame_distance(B, cf.counterfactuals.iloc[[k]].reset_index(drop=True), B))
        assert d[0] == 0   # a real row of the background
        assert abs(cf.metrics["plausibility"][k] - d[:5].mean()) < 1e-9
    dx = np.sort(frame_distance(B, x, B))
    assert abs(cf.metrics["plausibility_x"] - dx[:5].mean()) < 1e-9


def test_kdtree_not_found_names_the_blocking_constraint(credit):
    model, B, X, rejected = credit
    x = X.iloc[[rejected[0]]]
    cf = counterfactuals(model, x, desired=1, method="kdtree", background=B,
                         immutable=["income", "debt_ratio"])
    assert not cf.found
    assert "income (immutable)" in cf.reason and "have the desired outcome" in cf.reason


# ---------------------------------------------------------------------- budgets
def test_budget_exhaustion_returns_an_explained_not_found_quickly():
    B = np.random.default_rng(0).normal(size=(100, 3))

    def never(X):   # class 0 whatever the input: no counterfactual exists
        X = np.asarray(X)
        return np.column_stack([np.ones(len(X)), np.zeros(len(X)) - np.abs(X).sum(1)])

    t = time.perf_counter()
    cf = counterfactuals(never, B[0], desired=1, background=B, budget=300, n_iter=10_000)
    assert time.perf_counter() - t < 3.0
    assert not cf.found and cf.metrics["n_evals"] <= 300
    assert "budget of 300" in cf.reason and "best margin reached was" in cf.reason
    assert cf.metrics["stopped"] == "budget"


def test_gradient_budget_and_seed():
    """The gradient method stops at its budget and says so; its restarts are seeded."""
    rng = np.random.default_rng(3)
    B = rng.normal(size=(200, 4))
    net = _linear(np.array([0.3, -0.2, 0.1, 0.4]), -50.0)   # needs a huge move: not within 40 rows
    cf = counterfactuals(net, np.zeros(4), desired=(0.0, None), method="gradient", background=B,
                         budget=40, ranges={j: (None, None) for j in range(4)})
    assert not cf.found and cf.metrics["n_evals"] <= 40 and "budget of 40" in cf.reason
    net = _linear(np.array([0.3, -0.2, 0.1, 0.4]), -1.0)
    a, b, c = (counterfactuals(net, np.zeros(4), desired=(0.0, None), method="gradient", background=B,
                               n=3, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.encoded, b.encoded)
    assert a.found and c.found and a.encoded.shape == c.encoded.shape


def test_time_limit_ends_a_slow_search():
    B = np.random.default_rng(0).normal(size=(100, 3))

    def slow(X):
        time.sleep(0.02)
        X = np.asarray(X)
        return np.column_stack([np.ones(len(X)), np.zeros(len(X))])

    t = time.perf_counter()
    cf = counterfactuals(slow, B[0], desired=1, background=B, time_limit=0.3, n_iter=10_000)
    assert time.perf_counter() - t < 2.0
    assert not cf.found and "time limit of 0.3 s" in cf.reason


def test_not_found_says_which_range_blocked():
    B = np.random.default_rng(0).uniform(0, 10, size=(200, 2))

    def f(X):   # class 1 needs x0 > 20, but the range stops x0 at 12
        X = np.asarray(X, float)
        return np.column_stack([np.zeros(len(X)), X[:, 0] - 20.0])

    cf = counterfactuals(f, np.array([1.0, 1.0]), desired=1, background=B, ranges={0: (0, 12)},
                         n_iter=20, seed=0)
    assert not cf.found
    assert "x0 (upper bound 12)" in cf.reason
    assert "-8" in cf.reason   # the best margin reached: 12 - 20


def test_x_already_desired_is_said():
    B = np.random.default_rng(0).normal(size=(50, 2))
    cf = counterfactuals(lambda X: np.column_stack([np.zeros(len(X)), np.ones(len(X))]), B[0],
                         desired=1, background=B)
    assert not cf.found and "already has the desired outcome" in cf.reason


# ---------------------------------------------------------------------- determinism, batches, types
def test_same_seed_same_result_other_seed_other_result(credit):
    model, B, X, rejected = credit
    x = X.iloc[[rejected[1]]]
    kw = dict(desired=1, background=B, n=3, n_iter=6, population=20)
    a = counterfactuals(model, x, seed=5, **kw)
    b = counterfactuals(model, x, seed=5, **kw)
    c = counterfactuals(model, x, seed=6, **kw)
    pd.testing.assert_frame_equal(a.counterfactuals, b.counterfactuals)
    assert not a.counterfactuals.equals(c.counterfactuals)
    d = counterfactuals(model, x, seed=np.random.default_rng(5), **kw)
    pd.testing.assert_frame_equal(a.counterfactuals, d.counterfactuals)
    e = counterfactuals(model, x, seed=5, batch_size=7, **kw)
    pd.testing.assert_frame_equal(a.counterfactuals, e.counterfactuals)


def test_array_and_tensor_inputs_come_back_in_their_form():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(200, 3))
    w = np.array([1.0, -2.0, 0.5])
    net = _linear(w, 0.0, two_class=True)
    x = np.array([-1.0, 0.5, 0.0])
    a = counterfactuals(net, x, desired=1, background=B, seed=0, n_iter=10)
    t = counterfactuals(net, torch.tensor(x), desired=1, background=torch.tensor(B), seed=0, n_iter=10)
    assert isinstance(a.counterfactuals, np.ndarray) and isinstance(t.counterfactuals, torch.Tensor)
    assert t.counterfactuals.dtype == torch.float64
    np.testing.assert_array_equal(a.counterfactuals, t.counterfactuals.numpy())
    assert ((a.counterfactuals @ w) > 0).all()


# ---------------------------------------------------------------------- diversity
def test_diversity_zero_gives_the_closest_and_diversity_spreads(credit):
    model, B, X, rejected = credit
    x = X.iloc[[rejected[2]]]
    near = counterfactuals(model, x, desired=1, method="kdtree", background=B, n=4, diversity=0)
    spread = counterfactuals(model, x, desired=1, method="kdtree", background=B, n=4, diversity=50)
    assert near.metrics["proximity"].mean() <= spread.metrics["proximity"].mean()
    assert spread.metrics["diversity"] >= near.metrics["diversity"]
    K = 1 / (1 + np.array([[frame_distance(spread.counterfactuals.iloc[[i]], spread.counterfactuals.iloc[[j]], B)[0]
                              for j in range(4)] for i in range(4)]))
    assert abs(np.linalg.det(K) - spread.metrics["diversity"]) < 1e-10


# ---------------------------------------------------------------------- errors
def test_clear_errors(credit):
    model, B, X, rejected = credit
    x = X.iloc[[rejected[0]]]
    with pytest.raises(ValueError, match="immutable: unknown feature 'incom'; did you mean 'income'"):
        counterfactuals(model, x, background=B, immutable=["incom"])
    with pytest.raises(TypeError, match="method='gradient' needs a torch.nn.Module"):
        counterfactuals(model, x, background=B, method="gradient")
    with pytest.raises(ValueError, match="background: method='genetic' needs background"):
        counterfactuals(model, x)
    with pytest.raises(ValueError, match="x must be one row"):
        counterfactuals(model, X.iloc[:2], background=B)
    with pytest.raises(ValueError, match="no value of feature 'income'"):
        counterfactuals(model, x, background=B, ranges={"income": (0, float(x["income"].iloc[0]) - 1)},
                        monotone={"income": "increase"})
    with pytest.raises(ValueError, match="monotone: feature 'housing' is categorical"):
        counterfactuals(model, x, background=B, monotone={"housing": "increase"})
    with pytest.raises(ValueError, match="unknown category 'castle'"):
        counterfactuals(model, x, background=B, ranges={"housing": ["castle"]})
    with pytest.raises(ValueError, match="desired must be a class index in 0..1"):
        counterfactuals(model, x, desired=2, background=B)
    with pytest.raises(ValueError, match="output range"):
        counterfactuals(lambda Z: np.zeros(len(Z)), np.zeros(2), desired=1, background=np.ones((5, 2)))
    with pytest.raises(ValueError, match="budget"):
        counterfactuals(model, x, background=B, budget=0)
    with pytest.raises(ValueError, match="method"):
        counterfactuals(model, x, background=B, method="dice")


# ---------------------------------------------------------------------- display
def test_table_styler_and_html_escape_user_strings():
    name = "<script>alert(1)</script>"
    rng = np.random.default_rng(0)
    B = pd.DataFrame({name: rng.normal(size=100), "b": rng.normal(size=100),
                      "c": rng.choice(["<b>x</b>", "y"], 100)})

    def f(X):
        s = X[name].to_numpy() + (X["c"] == "y").to_numpy()
        return np.column_stack([np.zeros(len(X)), s - 1.0])

    x = pd.DataFrame({name: [-1.0], "b": [0.0], "c": ["<b>x</b>"]})
    cf = counterfactuals(f, x, desired=1, background=B, n=2, n_iter=10)
    assert cf.found
    html = cf._repr_html_()
    styled = cf.styled().to_html()
    for h in (html, styled):
        assert "<script>" not in h and "<b>x</b>" not in h
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in h
    t = cf.table()
    assert list(t.index) == ["x", "cf 1", "cf 2"][:len(cf) + 1]
    assert list(t.columns) == [name, "b", "c", "outcome"]
    assert (t["outcome"].iloc[1:] == 1).all() and t["outcome"].iloc[0] == 0
    css = styled.split("</style>")[0]   # the highlighted cells are exactly the changed ones
    changed = np.concatenate([np.zeros((1, 3), bool), cf.changed()])
    for i in range(changed.shape[0]):
        for j in range(changed.shape[1]):
            assert (f"_row{i}_col{j}," in css or f"_row{i}_col{j} {{" in css) == changed[i, j]


def test_plot_draws_one_bar_per_changed_feature(credit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, B, X, rejected = credit
    cf = counterfactuals(model, X.iloc[[rejected[0]]], desired=1, background=B, n=2, n_iter=10)
    disp = cf.plot(index=1)
    assert len(disp.bars_) == cf.metrics["sparsity"][1]
    plt.close(disp.figure_)
    with pytest.raises(ValueError, match="index"):
        cf.plot(index=5)
    assert isinstance(cf, Counterfactuals) and "found" in repr(cf)
