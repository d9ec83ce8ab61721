"""TreeSHAP: exact against brute-force enumeration of both games, and equal to shap's C++."""
import itertools
import re
import math
import warnings

import numpy as np
import pytest
from sklearn.ensemble import (
    ExtraTreesRegressor, GradientBoostingClassifier, GradientBoostingRegressor,
    HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression
from sklearn.tree import DecisionTreeRegressor

import lumos
from lumos.agnostic.tree_shap import parse_trees, tree_shap


# ----------------------------------------------------------------------------- data
def _data(n=300, d=5, seed=0, nan=0.0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(n, d))
    y = X[:, 0] + X[:, 1] * X[:, 2] + np.sin(2 * X[:, 3]) + 0.1 * r.normal(size=n)
    if nan:
        X[r.random(X.shape) < nan] = np.nan
    return X, y


def _classes(y, k=3):
    return np.digitize(y, np.quantile(y, np.linspace(0, 1, k + 1)[1:-1]))


# ----------------------------------------------------------------------------- brute force
def _shapley(value, M):
    """Exact Shapley values of the set function ``value(mask)`` by enumerating all subsets."""
    v = {S: value(np.array(S, dtype=bool)) for S in itertools.product((0, 1), repeat=M)}
    phi = np.zeros(M)
    for S, vs in v.items():
        s = sum(S)
        for i in range(M):
            if not S[i]:
                T = S[:i] + (1,) + S[i + 1:]
                phi[i] += math.factorial(s) * math.factorial(M - s - 1) / math.factorial(M) * (v[T] - vs)
    return phi


def _cond_exp(tree, value, x, S):
    """Lundberg et al. (2018) Algorithm 1: E[f | x_S] under the tree's training cover."""
    left, right, feat, thr = tree.children_left, tree.children_right, tree.feature, tree.threshold
    w = tree.weighted_n_node_samples

    def rec(n):
        if left[n] < 0:
            return value[n]
        if S[feat[n]]:
            return rec(left[n] if np.float32(x[feat[n]]) <= thr[n] else right[n])
        return (w[left[n]] * rec(left[n]) + w[right[n]] * rec(right[n])) / w[n]

    return rec(0)


def _forest_value(model, k=None):
    """Per-tree leaf values in the explained output space (probability or raw/margin)."""
    out = []
    if hasattr(model, "init_"):  # gradient boosting: learning_rate x raw tree value
        col = 0 if k is None else k
        for e in model.estimators_[:, col]:
            out.append((e.tree_, e.tree_.value[:, 0, 0] * model.learning_rate))
        return out
    ests = [model] if hasattr(model, "tree_") else model.estimators_
    for e in ests:
        v = e.tree_.value[:, 0, :]
        v = v / v.sum(1, keepdims=True) if k is not None else v[:, 0]
        out.append((e.tree_, (v[:, k] if k is not None else v) / len(ests)))
    return out


def _brute_path_dependent(model, x, k=None):
    trees = _forest_value(model, k)
    return _shapley(lambda S: sum(_cond_exp(t, v, x, S) for t, v in trees), len(x))


def _brute_interventional(f, x, bg):
    return _shapley(lambda S: f(np.where(S, x, bg)).mean(), len(x))


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("make,kind", [
    (lambda: DecisionTreeRegressor(max_depth=6, random_state=0), "reg"),
    (lambda: RandomForestRegressor(n_estimators=5, max_depth=5, random_state=0), "reg"),
    (lambda: ExtraTreesRegressor(n_estimators=4, max_depth=6, random_state=0), "reg"),
    (lambda: GradientBoostingRegressor(n_estimators=8, max_depth=3, random_state=0), "reg"),
    (lambda: RandomForestClassifier(n_estimators=5, max_depth=5, random_state=0), "clf"),
    (lambda: GradientBoostingClassifier(n_estimators=6, max_depth=3, random_state=0), "clf"),
])
def test_path_dependent_equals_enumeration(make, kind):
    X, y = _data()
    yy = _classes(y) if kind == "clf" else y
    model = make().fit(X, yy)
    k = 2 if kind == "clf" else None            # both classifiers have three classes here
    expl = tree_shap(model, X[:4], target=k)
    for i in range(4):
        ref = _brute_path_dependent(model, X[i], k)
        np.testing.assert_allclose(expl.values[i], ref, atol=1e-12, rtol=0)
    # efficiency: the base value is the model's output averaged over the cover distribution
    np.testing.assert_allclose(expl.baseline_output + expl.values.sum(1), expl.output, atol=1e-12)


def test_repeated_features_on_a_path_are_merged():
    # one informative feature split many times: every path repeats it
    r = np.random.default_rng(1)
    X = r.normal(size=(400, 3))
    y = np.sin(3 * X[:, 0]) + 0.3 * X[:, 1]
    model = DecisionTreeRegressor(max_depth=8, random_state=0).fit(X, y)
    expl = tree_shap(model, X[:5])
    for i in range(5):
        np.testing.assert_allclose(expl.values[i], _brute_path_dependent(model, X[i]), atol=1e-12)


@pytest.mark.parametrize("n_bg", [1, 7])
@pytest.mark.parametrize("make,kind", [
    (lambda: RandomForestRegressor(n_estimators=5, max_depth=6, random_state=0), "reg"),
    (lambda: GradientBoostingClassifier(n_estimators=6, random_state=0), "clf2"),
    (lambda: RandomForestClassifier(n_estimators=4, max_depth=6, random_state=0), "clf"),
    (lambda: HistGradientBoostingRegressor(max_iter=10, random_state=0), "hgb"),
])
def test_interventional_equals_enumeration(make, kind, n_bg):
    X, y = _data(nan=0.05 if kind == "hgb" else 0.0)
    yy = {"reg": y, "hgb": y, "clf2": (y > 0).astype(int), "clf": _classes(y)}[kind]
    model = make().fit(X, yy)
    f = {"reg": model.predict, "clf2": getattr(model, "decision_function", None),
         "clf": lambda Z: model.predict_proba(Z)[:, 1],
         "hgb": lambda Z: model._raw_predict(Z)[:, 0]}[kind]
    bg = X[100:100 + n_bg]
    expl = tree_shap(model, X[:3], background=bg, target=1 if kind == "clf" else None)
    for i in range(3):
        ref = _brute_interventional(f, X[i], bg)
        np.testing.assert_allclose(expl.values[i], ref, atol=1e-10)
    np.testing.assert_allclose(expl.baseline_output, f(bg).mean(), atol=1e-12)
    assert expl.meta["completeness_gap"].max() < 1e-12


@pytest.mark.parametrize("perturbation", ["tree_path_dependent", "interventional"])
def test_table_and_direct_algorithms_agree(perturbation):
    X, y = _data(n=400, d=8, nan=0.03)
    model = RandomForestRegressor(n_estimators=3, random_state=0).fit(np.nan_to_num(X), y)
    bg = X[300:330] if perturbation == "interventional" else None
    a = tree_shap(model, X[:40], background=bg, algorithm="table")
    b = tree_shap(model, X[:40], background=bg, algorithm="direct")
    c = tree_shap(model, X[:40], background=bg)
    np.testing.assert_allclose(a.values, b.values, atol=1e-12)
    np.testing.assert_allclose(a.values, c.values, atol=1e-12)
    assert max(a.meta["completeness_gap"].max(), b.meta["completeness_gap"].max()) < 1e-12


def test_dummy_features_get_zero_and_sanity_on_linear_data():
    r = np.random.default_rng(0)
    X = r.normal(size=(500, 4))
    y = 3 * X[:, 0] - 1 * X[:, 2]               # features 1 and 3 are never used
    model = DecisionTreeRegressor(max_depth=4, random_state=0).fit(X, y)
    expl = tree_shap(model, X[:50])
    unused = set(range(4)) - set(model.tree_.feature[model.tree_.feature >= 0])
    assert unused == {1, 3}
    assert np.all(expl.values[:, [1, 3]] == 0.0)
    # the strong feature carries most of the attribution and its sign follows x0
    assert np.abs(expl.values[:, 0]).mean() > 2 * np.abs(expl.values[:, 2]).mean()
    assert np.corrcoef(expl.values[:, 0], X[:50, 0])[0, 1] > 0.9
    np.testing.assert_allclose(expl.values.sum(1) + expl.baseline_output, model.predict(X[:50]),
                               atol=1e-10)


def test_per_sample_targets_and_dataframe_names():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    model = RandomForestClassifier(n_estimators=5, max_depth=5, random_state=0).fit(df, _classes(y))
    expl = lumos.explain(model, df.iloc[:20], "tree_shap")          # predicted class per row
    assert expl.feature_names == list(df.columns)
    pred = model.predict_proba(df.iloc[:20]).argmax(1)
    np.testing.assert_array_equal(expl.target, pred)
    np.testing.assert_allclose(expl.output, model.predict_proba(df.iloc[:20])[np.arange(20), pred])
    for k in range(3):
        one = tree_shap(model, df.iloc[:20], target=k)
        np.testing.assert_allclose(expl.values[pred == k], one.values[pred == k], atol=1e-14)
    assert expl.meta["model_output"] == "predict_proba"


def test_gradient_boosting_explains_the_margin_with_init():
    X, y = _data()
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(X, (y > 0.3).astype(int))
    expl = tree_shap(model, X[:30])
    np.testing.assert_allclose(expl.output, model.decision_function(X[:30]), atol=1e-10)
    prior = np.log(np.mean(y > 0.3) / (1 - np.mean(y > 0.3)))
    assert abs(parse_trees(model).offset[0] - prior) < 1e-12   # init log-odds in the base value
    assert expl.meta["output_space"] == "log-odds"


def test_errors_name_the_argument():
    X, y = _data()
    model = RandomForestRegressor(n_estimators=2, max_depth=3, random_state=0).fit(X, y)
    with pytest.raises(TypeError, match="kernel_shap"):
        tree_shap(LinearRegression().fit(X, y), X[:2])
    with pytest.raises(ValueError, match="features"):
        tree_shap(model, X[:2, :3])
    with pytest.raises(ValueError, match="background"):
        tree_shap(model, X[:2], feature_perturbation="interventional")
    with pytest.raises(ValueError, match="background"):
        tree_shap(model, X[:2], background=X[:5], feature_perturbation="tree_path_dependent")
    with pytest.raises(ValueError, match="feature_perturbation"):
        tree_shap(model, X[:2], feature_perturbation="observational")
    with pytest.raises(ValueError, match="2-D"):
        tree_shap(model, X[0])
    Xc = np.c_[X[:, :4], np.random.default_rng(0).integers(0, 4, len(X))]
    hgb = HistGradientBoostingRegressor(max_iter=3, categorical_features=[4]).fit(Xc, y)
    with pytest.raises(ValueError, match="categorical"):
        tree_shap(hgb, Xc[:2])


# ----------------------------------------------------------------------------- against shap
def _shap_values(explainer, X, k):
    sv = np.asarray(explainer.shap_values(X, check_additivity=False))
    if sv.ndim == 3:                      # (n, d, classes) in shap >= 0.45
        sv = sv[..., k] if sv.shape[0] == len(X) else sv[k]
    return sv


@pytest.mark.parametrize("name", ["rf_reg", "rf_clf", "gb_clf", "gb_reg", "hgb_reg", "hgb_clf",
                                  "xgb", "xgb_multi", "lgbm", "lgbm_clf"])
def test_equals_shap_tree_explainer(name):
    shap = pytest.importorskip("shap")
    X, y = _data(n=400, d=6, nan=0.05 if name.startswith(("hgb", "xgb", "lgbm")) else 0.0)
    yc = (y > 0).astype(int)
    k = None
    if name == "rf_reg":
        model = RandomForestRegressor(n_estimators=10, max_depth=8, random_state=0).fit(X, y)
    elif name == "rf_clf":
        model, k = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, _classes(y)), 1
    elif name == "gb_clf":
        model = GradientBoostingClassifier(n_estimators=20, max_depth=4, random_state=0).fit(X, yc)
    elif name == "gb_reg":
        model = GradientBoostingRegressor(n_estimators=20, random_state=0).fit(X, y)
    elif name == "hgb_reg":
        model = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(X, y)
    elif name == "hgb_clf":
        model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, yc)
    elif name.startswith("xgb"):
        xgb = pytest.importorskip("xgboost")
        if name == "xgb":
            model = xgb.XGBRegressor(n_estimators=20, max_depth=4, random_state=0, n_jobs=1).fit(X, y)
        else:
            model, k = xgb.XGBClassifier(n_estimators=10, max_depth=4, n_jobs=1).fit(X, _classes(y)), 2
    else:
        lgb = pytest.importorskip("lightgbm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name == "lgbm":
                model = lgb.LGBMRegressor(n_estimators=20, verbose=-1, n_jobs=1).fit(X, y)
            else:
                model = lgb.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1).fit(X, yc)
    Xe, bg = X[:60], X[200:250]
    ours = tree_shap(model, Xe, target=k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _shap_values(shap.TreeExplainer(model), Xe, k)
    assert np.abs(ours.values - ref).max() < 1e-6
    assert ours.meta["completeness_gap"].max() < 1e-9
    if name.startswith("hgb"):
        # shap's interventional HistGradientBoosting compares features in float32 against the
        # float64 thresholds and disagrees with brute force (test_interventional_equals_enumeration
        # checks ours there); the path-dependent values above are exact.
        return
    ours = tree_shap(model, Xe, target=k, background=bg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _shap_values(shap.TreeExplainer(model, data=bg, feature_perturbation="interventional"),
                           Xe, k)
    assert np.abs(ours.values - ref).max() < 1e-6


def test_non_tree_error_suggests_only_registered_methods():
    # issue 11: the message named `exact_shap`, which does not exist (the method is exact_shapley)
    X, y = _data(n=50)
    with pytest.raises(TypeError) as err:
        tree_shap(LinearRegression().fit(X, y), X[:2])
    msg = str(err.value)
    suggested = re.findall(r"\b([a-z]+(?:_[a-z]+)+)\b", msg.split("use one of")[-1])
    assert "exact_shapley" in suggested and "kernel_shap" in suggested
    known = {m.name for m in lumos.methods()}
    assert set(suggested) <= known, set(suggested) - known


# ----------------------------------------------------------------------------- output spaces
def _binary_models():
    X, y = _data(n=400, d=5)
    yc = (y > 0.2).astype(int)
    out = [("gb", GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(X, yc))]
    try:
        import xgboost as xgb
        out.append(("xgb", xgb.XGBClassifier(n_estimators=15, max_depth=3, n_jobs=1).fit(X, yc)))
    except ImportError:
        pass
    try:
        import lightgbm as lgb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(("lgbm", lgb.LGBMClassifier(n_estimators=15, verbose=-1, n_jobs=1).fit(X, yc)))
    except ImportError:
        pass
    return X, out


def test_probability_output_is_efficient_and_rescales_each_pair():
    X, models = _binary_models()
    bg = X[300:340]
    for name, model in models:
        e = tree_shap(model, X[:20], background=bg, model_output="probability")
        p = model.predict_proba(X[:20])[:, 1]
        np.testing.assert_allclose(e.output, p, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(e.baseline_output, model.predict_proba(bg)[:, 1].mean(), atol=1e-6)
        # efficiency in probability space: values sum to p(x) - E_b p(b)
        assert e.meta["completeness_gap"].max() < 1e-12, name
        assert e.meta["output_space"] == "probability"
    # one background row: the values are that pair's margin values times the pair's factor
    name, gb = models[0]
    m = tree_shap(gb, X[:5], background=bg[:1])
    pr = tree_shap(gb, X[:5], background=bg[:1], model_output="probability")
    mx, mb = gb.decision_function(X[:5]), gb.decision_function(bg[:1])
    s = lambda t: 1 / (1 + np.exp(-t))   # noqa: E731
    factor = (s(mx) - s(mb)) / (mx - mb)
    np.testing.assert_allclose(pr.values, m.values * factor[:, None], atol=1e-14)
    # log_odds is the margin of a logistic model
    lo = tree_shap(gb, X[:5], background=bg[:1], model_output="log_odds")
    np.testing.assert_array_equal(lo.values, m.values)


def test_output_space_errors():
    X, y = _data(n=200)
    reg = GradientBoostingRegressor(n_estimators=3, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="model_output"):
        tree_shap(reg, X[:2], background=X[:5], model_output="probability")
    clf = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, (y > 0).astype(int))
    with pytest.raises(ValueError, match="interventional"):
        tree_shap(clf, X[:2], model_output="probability")
    multi = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, _classes(y))
    with pytest.raises(ValueError, match="softmax"):
        tree_shap(multi, X[:2], background=X[:5], model_output="probability")
    with pytest.raises(ValueError, match="model_output"):
        tree_shap(clf, X[:2], model_output="proba")
    rf = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, (y > 0).astype(int))
    a = tree_shap(rf, X[:3], target=1, background=X[:5], model_output="probability")
    b = tree_shap(rf, X[:3], target=1, background=X[:5])
    np.testing.assert_array_equal(a.values, b.values)   # forests already explain probabilities


def test_probability_output_equals_shap():
    shap = pytest.importorskip("shap")
    X, models = _binary_models()
    bg = X[300:350]
    for name, model in models:
        ours = tree_shap(model, X[:40], background=bg, model_output="probability")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex = shap.TreeExplainer(model, data=bg, feature_perturbation="interventional",
                                    model_output="probability")
            ref = np.asarray(ex.shap_values(X[:40], check_additivity=False))
        if ref.ndim == 3:
            ref = ref[..., 1]
        tol = 1e-6
        assert np.abs(ours.values - ref).max() < tol, (name, np.abs(ours.values - ref).max())
        assert abs(float(np.ravel(ex.expected_value)[-1]) - ours.baseline_output[0]) < tol, name


def test_interventional_uses_every_background_row():
    X, y = _data(n=900)
    model = RandomForestRegressor(n_estimators=3, max_depth=4, random_state=0).fit(X, y)
    e = tree_shap(model, X[:3], background=X[100:700])
    assert e.meta["n_background"] == 600
    np.testing.assert_allclose(e.baseline_output, model.predict(X[100:700]).mean(), atol=1e-12)
