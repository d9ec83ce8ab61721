"""`lumos.metrics.compare` and `lumos compare`: the ranking table, its files, the demo section."""
import json

import numpy as np
import pytest
import torch

import lumos.metrics as lm
from conftest import SmallCNN, assert_same_state, model_state
from lumos.cli import main
from lumos.metrics.comparison import _fmt


@pytest.fixture(scope="module")
def image_comparison():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    masks = np.zeros((5, 12, 12), dtype=bool)
    masks[:, 3:8, 2:9] = True
    before = model_state(model)
    comp = lm.compare(model, x, ["saliency", "gradient_x_input", "gradcam", "random"],
                      ["deletion", "insertion", "relevance_mass_accuracy", "randomisation", "sparseness"],
                      masks=masks, metric_params={"deletion": {"n_steps": 4}, "insertion": {"n_steps": 4}})
    assert_same_state(before, model_state(model))
    return model, x, masks, comp


def test_table_ranks_follow_each_metrics_direction(image_comparison):
    model, x, masks, comp = image_comparison
    ranks = comp.ranks()
    for k in comp.metrics:
        means = {m: comp.result(m, k).mean for m in comp.methods}
        best = min(ranks[k], key=ranks[k].get)
        pick = max if comp.direction(k) == "higher" else min
        assert means[best] == pick(means.values()), k
    mean_rank = comp.mean_ranks()
    for m in comp.methods:
        np.testing.assert_allclose(mean_rank[m], np.mean([ranks[k][m] for k in comp.metrics]))
    lines = comp.table()
    assert lines[0].split()[0] == "method" and "deletion ↓" in lines[0] and "insertion ↑" in lines[0]
    body = lines[2:2 + len(comp.methods)]
    assert [row.split()[0] for row in body] == comp.order()
    r = comp.result("saliency", "deletion")
    assert f"{_fmt(r.mean)} ± {_fmt(r.std)}" in "\n".join(lines)
    # every method explained the same classes; curve metrics scored probabilities
    targets = {m: tuple(e.target) for m, e in comp.explanations.items()}
    assert len(set(targets.values())) == 1
    assert comp.result("gradcam", "deletion").params["scale"] == "probability"
    assert comp.result("gradcam", "deletion").params["fill"].startswith("blur")
    # the random baseline is a constant function of the model: randomisation cannot change it
    np.testing.assert_allclose(comp.result("random", "randomisation").scores, 1.0)


def test_comparison_files(image_comparison, tmp_path):
    model, x, masks, comp = image_comparison
    written = comp.save(tmp_path)
    assert sorted(p.name for p in written) == ["comparison.json", "curves.png", "randomisation.png", "table.txt"]
    doc = json.loads((tmp_path / "comparison.json").read_text())
    assert doc["methods"] == comp.methods and doc["order"] == comp.order()
    got = doc["results"]["saliency"]["insertion"]
    assert got["direction"] == "higher"
    np.testing.assert_allclose(got["scores"], comp.result("saliency", "insertion").scores)
    np.testing.assert_allclose(got["curves"]["y"], comp.result("saliency", "insertion").curves["y"])
    assert (tmp_path / "table.txt").read_text().splitlines()[0] == comp.table()[0]


def test_display_draws_the_curves_as_computed(image_comparison):
    import matplotlib.pyplot as plt

    from lumos.display.metrics import CurvesDisplay, RandomisationDisplay

    model, x, masks, comp = image_comparison
    res = {m: comp.result(m, "deletion") for m in comp.methods}
    disp = CurvesDisplay.from_results(res).plot()
    line, _ = disp.lines_["saliency"]
    np.testing.assert_allclose(line.get_ydata(), res["saliency"].curves["y"].mean(0))
    plt.close(disp.figure_)
    rd = RandomisationDisplay.from_results({m: comp.result(m, "randomisation") for m in comp.methods},
                                           inputs=x, sample=2).plot()
    assert len(rd.axes_) == len(comp.methods) * (len(rd.layers) + 1)
    plt.close(rd.figure_)
    with pytest.raises(ValueError, match="no score curves"):
        CurvesDisplay.from_results({"s": comp.result("saliency", "sparseness")})


def test_missing_requirements_are_reported_not_raised():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5))
    y = X @ np.array([3.0, -2.0, 1.0, 0.0, 0.5])
    reg = LinearRegression().fit(X, y)
    comp = lm.compare(reg, X[:12], ["permutation_shap", "random"],
                      ["faithfulness_correlation", "pointing_game", "randomisation"],
                      target=None, method_params={"permutation_shap": {"background": X[:30]}})
    assert comp.results["random"]["pointing_game"] == "needs ground-truth masks"
    assert comp.results["random"]["randomisation"] == "needs a torch model"
    # Shapley values of a linear model beat noise on faithfulness
    assert comp.ranks()["faithfulness_correlation"] == {"permutation_shap": 1.0, "random": 2.0}
    assert comp.result("permutation_shap", "faithfulness_correlation").mean > 0.9
    assert "n/a random × pointing_game" in "\n".join(comp.table())
    with pytest.raises(ValueError, match="unknown metric"):
        lm.compare(reg, X[:4], ["random"], ["delition"])


MODULE = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
'''


def test_cli_compare_on_a_users_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "usermodel_cmp.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")
    rc = main(["compare", "--model", "usermodel_cmp:make", "--input", "x.pt", "--methods", "saliency,random",
               "--metrics", "deletion,sparseness", "--out", "out"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "saliency" in out and "random" in out and "deletion ↓" in out
    assert (tmp_path / "out" / "table.txt").exists() and (tmp_path / "out" / "curves.png").exists()
    doc = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert doc["n_samples"] == 3 and set(doc["results"]) == {"saliency", "random"}


def test_demo_section_quick(tmp_path):
    from lumos.metrics._demo import DEMO_METHODS, compare_demo

    lines = compare_demo(tmp_path, quick=True)
    text = "\n".join(lines)
    for m in DEMO_METHODS:
        assert m in text
    assert (tmp_path / "metrics_randomisation.png").exists() and (tmp_path / "metrics_curves.png").exists()
    doc = json.loads((tmp_path / "metrics.json").read_text())
    # the random baseline localises at chance: its relevance mass is the evidence's area
    assert doc["ranks"]["relevance_mass_accuracy"]["random"] == len(DEMO_METHODS)


def test_target_of_an_estimator_fitted_on_named_columns_is_resolved_with_the_names():
    """compare resolves the explained class once on the model's output: a DataFrame's column names
    go with the probe, so scikit-learn sees the names it was fitted on (no 'valid feature names'
    warning, and the same classes as predicting on the DataFrame)."""
    import warnings

    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LogisticRegression

    from lumos.metrics.comparison import _resolve_target

    X = pd.DataFrame(np.random.default_rng(0).normal(size=(40, 3)), columns=["age", "income", "debt"])
    model = LogisticRegression().fit(X, (X["age"] > 0).astype(int))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = _resolve_target(model, X.iloc[:6], "predicted")
    np.testing.assert_array_equal(resolved, model.predict(X.iloc[:6]))
