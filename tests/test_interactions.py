"""Shapley interaction values: exact enumeration and TreeSHAP, against closed forms, brute force
and shap; and their pictures."""
import itertools
import math
import warnings

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.tree import DecisionTreeRegressor

import lumos
from lumos.agnostic.shapley.interactions import interactions_from_table
from lumos.agnostic.tree_shap import tree_shap, tree_shap_interactions

R = np.random.default_rng(0)
X = R.normal(size=(6, 3))
BG = R.normal(size=(30, 3))
A, B = 2.0, -3.0


def f(Z):
    Z = np.asarray(Z)
    return A * Z[:, 0] * Z[:, 1] + B * Z[:, 2]


def _naive(v, M):
    """The definition, coalition by coalition (Lundberg et al. 2020, eq. for Φ_ij)."""
    val = {S: v[sum(1 << j for j in range(M) if S[j])] for S in itertools.product((0, 1), repeat=M)}
    out = np.zeros((M, M))
    for i, j in itertools.permutations(range(M), 2):
        for S in val:
            if S[i] or S[j]:
                continue
            s = sum(S)
            w = math.factorial(s) * math.factorial(M - s - 2) / (2 * math.factorial(M - 1))
            Sij = list(S); Sij[i] = Sij[j] = 1
            Si = list(S); Si[i] = 1
            Sj = list(S); Sj[j] = 1
            out[i, j] += w * (val[tuple(Sij)] - val[tuple(Si)] - val[tuple(Sj)] + val[S])
    return out


def test_interactions_from_table_is_the_definition():
    M = 4
    v = np.random.default_rng(1).normal(size=(1 << M))
    out = interactions_from_table(v, M)
    ref = _naive(v, M)
    off = ~np.eye(M, dtype=bool)
    np.testing.assert_allclose(out[off], ref[off], atol=1e-14)


def test_exact_interactions_closed_form():
    e = lumos.explain(f, X, "exact_shapley_interactions", background=BG)
    assert e.values.shape == (6, 3, 3) and e.feature_names == ["x0", "x1", "x2"]
    Eb = BG.mean(0)
    E01 = (BG[:, 0] * BG[:, 1]).mean()
    x0, x1, x2 = X.T
    # the product's interaction, split in half between (0, 1) and (1, 0); none with x2
    np.testing.assert_allclose(e.values[:, 0, 1], A / 2 * (x0 * x1 - x0 * Eb[1] - Eb[0] * x1 + E01),
                               atol=1e-12)
    np.testing.assert_allclose(e.values[:, 1, 0], e.values[:, 0, 1], atol=0)
    np.testing.assert_allclose(e.values[:, [0, 1], 2], 0.0, atol=1e-13)
    np.testing.assert_allclose(e.values[:, 2, 2], B * (x2 - Eb[2]), atol=1e-12)
    # rows sum to the Shapley values; the whole matrix to f(x) - E f(b)
    sv = lumos.explain(f, X, "exact_shapley", background=BG)
    np.testing.assert_allclose(e.values.sum(2), sv.values, atol=1e-12)
    np.testing.assert_allclose(e.baseline_output + e.values.sum((1, 2)), f(X), atol=1e-12)


def test_exact_interactions_errors():
    with pytest.raises(ValueError, match="max_features"):
        lumos.explain(f, X, "exact_shapley_interactions", background=BG, max_features=2)


# ----------------------------------------------------------------------------- trees
def _tree_data(n=400, d=5):
    r = np.random.default_rng(2)
    Xt = r.normal(size=(n, d))
    y = Xt[:, 0] + 2 * Xt[:, 1] * Xt[:, 2] + np.sin(2 * Xt[:, 3])
    return Xt, y


def _path_dependent_table(model, x):
    """v(S) of every coalition by Lundberg et al.'s Algorithm 1 (cover-weighted expectation)."""
    from test_tree_shap import _cond_exp, _forest_value

    M = len(x)
    trees = _forest_value(model)
    v = np.empty(1 << M)
    for c in range(1 << M):
        S = np.array([(c >> j) & 1 for j in range(M)], dtype=bool)
        v[c] = sum(_cond_exp(t, val, x, S) for t, val in trees)
    return v


@pytest.mark.parametrize("make", [
    lambda: DecisionTreeRegressor(max_depth=6, random_state=0),
    lambda: GradientBoostingRegressor(n_estimators=6, max_depth=4, random_state=0),
])
def test_tree_interactions_equal_brute_force(make):
    Xt, y = _tree_data()
    model = make().fit(Xt, y)
    e = tree_shap_interactions(model, Xt[:3])
    for i in range(3):
        ref = interactions_from_table(_path_dependent_table(model, Xt[i]), Xt.shape[1])
        np.testing.assert_allclose(e.values[i], ref, atol=1e-12)


def test_tree_interactions_sum_to_the_values_and_are_symmetric():
    Xt, y = _tree_data()
    model = RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0).fit(Xt, y > 0)
    e = tree_shap_interactions(model, Xt[:25], target=1)
    np.testing.assert_array_equal(e.values, e.values.transpose(0, 2, 1))
    np.testing.assert_allclose(e.values.sum(2), tree_shap(model, Xt[:25], target=1).values,
                               atol=1e-14)
    assert e.meta["completeness_gap"].max() < 1e-12
    np.testing.assert_allclose(e.meta["shapley_values"], e.values.sum(2), atol=1e-14)
    assert e[:2].values.shape == (2, 5, 5)


@pytest.mark.parametrize("name", ["gb_reg", "rf_clf", "xgb", "lgbm"])
def test_tree_interactions_equal_shap(name):
    shap = pytest.importorskip("shap")
    Xt, y = _tree_data()
    k, tol = None, 1e-6
    if name == "gb_reg":
        model = GradientBoostingRegressor(n_estimators=20, max_depth=4, random_state=0).fit(Xt, y)
    elif name == "rf_clf":
        model, k = RandomForestClassifier(n_estimators=8, max_depth=7, random_state=0).fit(Xt, y > 0), 1
    elif name == "xgb":
        xgb = pytest.importorskip("xgboost")
        model = xgb.XGBRegressor(n_estimators=20, max_depth=4, n_jobs=1).fit(Xt, y)
        tol = 1e-5   # shap hands XGBoost models to XGBoost's own float32 pred_interactions
    else:
        lgb = pytest.importorskip("lightgbm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = lgb.LGBMRegressor(n_estimators=20, verbose=-1, n_jobs=1).fit(Xt, y)
    ours = tree_shap_interactions(model, Xt[:30], target=k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(shap.TreeExplainer(model).shap_interaction_values(Xt[:30]))
    if ref.ndim == 4:
        ref = ref[..., k] if ref.shape[0] == 30 else ref[k]
    assert np.abs(ours.values - ref).max() < tol, np.abs(ours.values - ref).max()


# ----------------------------------------------------------------------------- pictures
def _inside(fig):
    """Everything drawn (tick labels, axis labels, titles, colour bars, cell numbers) lies inside
    the figure after drawing: each axes' tight box (only what is drawn) and every text of it."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    bad = []
    boxes = [(f"axes {k}", ax.get_tightbbox(r)) for k, ax in enumerate(fig.axes)]
    boxes += [(t.get_text(), t.get_window_extent(r)) for ax in fig.axes for t in ax.texts]
    for name, b in boxes:
        if b.x0 < -0.5 or b.y0 < -0.5 or b.x1 > W + 0.5 or b.y1 > H + 0.5:
            bad.append((name, tuple(np.round(b.extents, 1))))
    return bad


def _explained():
    import pandas as pd

    Xt, y = _tree_data()
    cols = ["income", "debt ratio of the household (share)", "age", "years at the current employer",
            "late payments"]
    df = pd.DataFrame(Xt, columns=cols)
    model = GradientBoostingRegressor(n_estimators=50, max_depth=4, random_state=0).fit(df, y)
    return lumos.explain(model, df.iloc[:60], "tree_shap_interactions"), cols


def test_interaction_heatmap_draws_readable_labels():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lumos.display.interactions import InteractionHeatmapDisplay, interaction_heatmap

    e, cols = _explained()
    d = interaction_heatmap(e)
    assert d.image_ is not None and d.colorbar_ is not None
    assert d.colorbar_.ax.get_ylabel() == "mean |interaction value|"
    # the strongest pair is (x1, x2): the model's product term
    m = InteractionHeatmapDisplay.from_explanation(e, main_effects=True).matrix_
    names = InteractionHeatmapDisplay.from_explanation(e).labels_
    off = m.copy()
    np.fill_diagonal(off, 0)
    i, j = np.unravel_index(np.argmax(off), off.shape)
    assert {names[i], names[j]} == {cols[1], cols[2]}
    np.testing.assert_allclose(np.diag(m), np.abs(e.values).mean(0)[[cols.index(n) for n in names],
                                                                     [cols.index(n) for n in names]])
    assert np.isnan(np.diag(d.matrix_)).all()
    assert len(d.ax_.get_xticklabels()) == 5
    assert _inside(d.figure_) == []
    plt.close("all")


def test_interaction_dependence_is_coloured_by_the_strongest_partner():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lumos.display.interactions import interaction_dependence

    e, cols = _explained()
    d = interaction_dependence(e, cols[1])
    assert d.interaction_ == cols[2]
    np.testing.assert_allclose(d.y_, e.meta["shapley_values"][:, 1], atol=1e-12)
    np.testing.assert_array_equal(d.x_, e.inputs[:, 1])
    np.testing.assert_array_equal(d.collection_.get_array(), e.inputs[:, 2])
    assert d.colorbar_ is not None
    assert _inside(d.figure_) == []
    # beside other axes in one figure, with a tight bounding box
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    interaction_dependence(e, 0, ax=axes[0])
    from lumos.display.interactions import interaction_heatmap

    interaction_heatmap(e, ax=axes[1])
    assert _inside(fig) == []
    with pytest.raises(ValueError, match="feature"):
        interaction_dependence(e, "nope")
    with pytest.raises(ValueError, match="interaction"):
        interaction_dependence(lumos.explain(GradientBoostingRegressor(n_estimators=2).fit(
            *_tree_data()), _tree_data()[0][:5], "tree_shap"), 0)
    plt.close("all")
