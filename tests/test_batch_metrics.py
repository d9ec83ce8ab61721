"""lumos.batch metrics: per-row metric scores computed in the job, and their exact distributions."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import lumos  # noqa: E402
import lumos.batch as lb  # noqa: E402
import lumos.metrics as lm  # noqa: E402
from lumos.batch.stats import distribution  # noqa: E402
from lumos.batch.task import metric_seed  # noqa: E402
from test_batch import (BG, KS, X, count_shards, files_of, linear_logistic, make_model,  # noqa: E402
                        make_model4, rows)

METRICS = {"sparseness": {}, "deletion": {"n_steps": 4, "fill": 0.0}}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "ks"
    res = lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, metrics=list(METRICS),
                             metric_params={"deletion": METRICS["deletion"]}, **KS)
    return out, res


def direct_scores(name: str) -> np.ndarray:
    """The metric called directly on each row's explanation, seeded by the row as the job seeds it."""
    got = []
    for i in range(len(X)):
        expl = lumos.explain(linear_logistic, X[i:i + 1], "kernel_shap", seed=lb.row_seed(0, i), **KS)
        params = dict(METRICS[name])
        if name == "deletion":
            got.append(lm.deletion(linear_logistic, expl, seed=metric_seed(0, i, name), **params).scores)
        else:
            got.append(lm.sparseness(expl, **params).scores)
    return np.concatenate(got)


def test_scores_equal_direct_calls_for_any_shard_size(scored, tmp_path):
    out, res = scored
    assert res.metric_names == ["deletion", "sparseness"]
    for name in METRICS:
        assert np.array_equal(res.metric(name), direct_scores(name)), name  # bit for bit
    other = lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "k8", shard_size=8, metrics=METRICS, **KS)
    for name in METRICS:
        assert np.array_equal(other.metric(name), res.metric(name))
    # the metric seed is used: another job seed gives other deletion draws... and other explanations
    assert len(set(metric_seed(0, i, "deletion") for i in range(50))) == 50
    assert metric_seed(0, 3, "deletion") != metric_seed(0, 3, "insertion") != lb.row_seed(0, 3)
    man = json.loads((out / "manifest.json").read_text())
    assert man["metrics"] == {"deletion": {"n_steps": 4, "fill": 0.0}, "sparseness": {}}
    # the scores are in the checksummed shard files: columns beside the attributions
    import pyarrow.parquet as pq

    cols = pq.read_table(out / "shard-00000.parquet").column_names
    assert "metric:deletion" in cols and "metric:sparseness" in cols


def test_distribution_of_a_job_equals_numpy_on_all_rows(scored):
    _, res = scored
    for name in METRICS:
        scores = direct_scores(name)
        d = res.metric_distribution(name, bins=7, quantiles=(0, 0.1, 0.5, 0.9, 1))
        assert d.count == len(X) and d.nonfinite == 0
        assert [d.quantiles[q] for q in (0, 0.1, 0.5, 0.9, 1)] == np.quantile(scores, [0, 0.1, 0.5, 0.9, 1]).tolist()
        assert d.mean == math.fsum(scores) / len(scores) and abs(d.mean - scores.mean()) <= 1e-15
        assert abs(d.std - scores.std()) <= 1e-14 * scores.std()
        counts, edges = np.histogram(scores, bins=7)
        assert np.array_equal(d.counts, counts) and np.array_equal(d.edges, edges)
        assert d.direction == lm.get_metric(name).direction
    summary = res.summary()["metrics"]
    assert set(summary) == set(METRICS) and summary["deletion"]["count"] == 23
    assert summary["sparseness"]["quantiles"]["0.5"] == float(np.median(direct_scores("sparseness")))
    with pytest.raises(ValueError, match="metric"):
        res.metric_distribution("insertion")


@pytest.mark.parametrize("seed", range(6))
def test_streamed_distribution_is_exact_for_any_chunking(seed):
    """Against all values at once: quantiles and histogram bit for bit, the mean equal to
    fsum / n, with ties, NaN, values across many magnitudes, and budgets small enough to force
    the narrowing passes."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 2500))
    x = rng.normal(size=n) * 10.0 ** rng.uniform(-6, 6, size=n)
    if seed % 3 == 1:
        x = np.round(x / np.abs(x).max() * 5)  # few distinct values: heavy ties
    if seed % 3 == 2:
        x[rng.random(n) < 0.1] = np.nan
        x[:3] = np.inf
    finite = x[np.isfinite(x)]
    qs = (0, 0.01, 0.1, 1 / 3, 0.5, 0.77, 0.999, 1)
    for chunk in (3, 250, n):
        chunks = [x[i:i + chunk] for i in range(0, n, chunk)]
        for budget in (2, 50, 1 << 16):
            d = distribution(lambda: iter(chunks), bins=11, quantiles=qs, budget=budget)
            if len(finite) == 0:
                assert d.count == 0 and math.isnan(d.mean)
                continue
            assert [d.quantiles[q] for q in qs] == np.quantile(finite, qs).tolist(), (chunk, budget)
            assert d.count == len(finite) and d.nonfinite == n - len(finite)
            assert d.mean == math.fsum(finite) / len(finite)
            assert d.std == math.sqrt(math.fsum((finite - d.mean) ** 2) / len(finite))
            assert abs(d.std - finite.std()) <= 1e-12 * finite.std() + 1e-300
            counts, edges = np.histogram(finite, bins=11)
            assert np.array_equal(d.counts, counts) and np.array_equal(d.edges, edges)
            assert (d.min, d.max) == (finite.min(), finite.max())
            if budget >= n:
                assert d.passes == 2  # one pass for the extremes and the sum, one for the rest


def test_distribution_narrows_instead_of_holding_more_than_the_budget():
    x = np.random.default_rng(0).normal(size=5000)
    d = distribution(lambda: (x[i:i + 100] for i in range(0, 5000, 100)), budget=64)
    assert d.passes > 2  # 5000 values > 64: the quantiles' intervals were narrowed by histograms
    assert [d.quantiles[q] for q in d.quantiles] == np.quantile(x, list(d.quantiles)).tolist()


def test_resume_after_interruption_gives_the_same_bytes(scored, tmp_path, monkeypatch):
    ref_out, _ = scored

    out = tmp_path / "ks"
    kw = dict(shard_size=5, metrics=list(METRICS), metric_params={"deletion": METRICS["deletion"]}, **KS)
    with pytest.raises(OSError, match="disk went away"):
        lb.explain_dataset(make_model, rows(fail_at=12), "kernel_shap", out, **kw)
    calls = count_shards(monkeypatch)
    lb.explain_dataset(make_model, rows(), "kernel_shap", out, **kw)
    assert calls == [10, 15, 20]
    a, b = files_of(out), files_of(ref_out)
    ma, mb = (json.loads(d.pop("manifest.json")) for d in (a, b))
    for m in (ma, mb):
        m["data"].pop("kind"), m["data"].pop("name")
    assert a == b and ma == mb


def test_changed_metrics_are_refused(scored, tmp_path):
    ref_out, _ = scored
    out = tmp_path / "ks"
    shutil.copytree(ref_out, out)
    before = files_of(out)
    with pytest.raises(ValueError, match=r"metrics\.deletion\.n_steps: 4 in the output, 5 now"):
        lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5,
                           metrics={"sparseness": {}, "deletion": {"n_steps": 5, "fill": 0.0}}, **KS)
    with pytest.raises(ValueError, match=r"metrics\.entropy: absent in the output, asked now"):
        lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5,
                           metrics={**METRICS, "entropy": {}}, **KS)
    with pytest.raises(ValueError, match=r"metrics\.deletion: scored in the output, absent now"):
        lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **KS)
    assert files_of(out) == before


def test_metric_arguments_are_checked(tmp_path):
    kw = dict(shard_size=5, **KS)
    with pytest.raises(ValueError, match="metric.*'sparsenes'"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", metrics=["sparsenes"], **kw)
    with pytest.raises(TypeError, match="n_step"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", metrics={"deletion": {"n_step": 3}}, **kw)
    with pytest.raises(TypeError, match="seed is explain_dataset's own argument"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", metrics={"deletion": {"seed": 3}}, **kw)
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", metrics=["pointing_game"], **kw)
    with pytest.raises(ValueError, match="metric_params: 'entropy' is not among"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", metrics=["sparseness"],
                           metric_params={"entropy": {}}, **kw)
    assert not (tmp_path / "a").exists()  # refused before anything was written


def test_metrics_that_rerun_the_method_use_the_jobs_parameters(tmp_path):
    """avg_sensitivity re-explains noisy copies: the job's method with its background array."""
    bg = BG[:, :4]
    res = lb.explain_dataset(make_model4, X[:, :4], "exact_shapley", tmp_path / "o", shard_size=6, background=bg,
                             metrics={"avg_sensitivity": {"n_samples": 3}})
    model = make_model4()
    for i in (0, 7, 22):
        expl = lumos.explain(model, X[i:i + 1, :4], "exact_shapley", background=bg)
        direct = lm.avg_sensitivity(model, expl, explainer="exact_shapley", method_params={"background": bg},
                                    n_samples=3, seed=metric_seed(0, i, "avg_sensitivity"))
        assert res.metric("avg_sensitivity")[i] == direct.scores[0]


def test_localisation_metric_on_images_with_one_mask_per_row(tmp_path):
    import torch

    from test_batch import _tiny_cnn

    rng = np.random.default_rng(0)
    x = rng.random((7, 3, 8, 8)).astype(np.float32)
    masks = np.zeros((7, 8, 8), dtype=bool)
    for i in range(7):
        masks[i, i:i + 3, :4] = True
    np.save(tmp_path / "masks.npy", masks)
    mm = np.load(tmp_path / "masks.npy", mmap_mode="r")  # sliced per shard, never loaded whole
    res = lb.explain_dataset(_tiny_cnn, x, "gradient_x_input", tmp_path / "o", shard_size=3, target=1,
                             metrics={"relevance_mass_accuracy": {"masks": mm}, "pointing_game": {"masks": mm}})
    direct = lumos.explain(_tiny_cnn().eval(), torch.from_numpy(x), "gradient_x_input", target=1)
    for name, fn in (("relevance_mass_accuracy", lm.relevance_mass_accuracy), ("pointing_game", lm.pointing_game)):
        assert np.allclose(res.metric(name), fn(direct, masks=masks).scores, atol=1e-6, rtol=0), name
    assert res.shards[0]["file"].endswith(".npz") and res.manifest["metrics"]["pointing_game"]["masks"]["shape"] == [7, 8, 8]
    with pytest.raises(ValueError, match=r"metrics\['pointing_game'\]: masks has 5 rows; the data has 7"):
        lb.explain_dataset(_tiny_cnn, x, "gradient_x_input", tmp_path / "p", shard_size=3, target=1,
                           metrics={"pointing_game": {"masks": masks[:5]}}, max_retries=0)
