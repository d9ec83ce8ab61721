"""Core services every method relies on: argument checks, checked model evaluations, the model
lock for threads, inference mode, input dtypes and names, batch sizing, and safe loading."""
from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import lumos
from lumos.core.execution import BATCH_BYTES, DEFAULT_BATCH_SIZE, check_batch_size, torch_generator
from lumos.core.explanation import ExplanationFileError
from lumos.core.torch_model import NonFiniteOutputError, check_finite, model_lock
from lumos.core.validation import RENAMED, check_choice, check_kwargs, check_number


# ------------------------------------------------------------------ argument checks
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "1", None, [1.0]])
def test_check_number_rejects_non_numbers_nan_inf_and_bools(bad):
    with pytest.raises(ValueError, match="epsilon"):
        check_number(bad, "epsilon", low=0)


def test_check_number_ranges_and_ints():
    assert check_number(0, "eps", low=0) == 0.0
    assert check_number(np.float32(0.5), "p", low=0, high=1) == 0.5
    assert check_number(torch.tensor(2.0), "x") == 2.0
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        check_number(0, "eps", low=0, low_open=True)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        check_number(1.5, "p", low=0, high=1)
    assert check_number(3.0, "n", integer=True) == 3 and isinstance(check_number(3.0, "n", integer=True), int)
    with pytest.raises(ValueError, match="n must be an int"):
        check_number(2.5, "n", integer=True)


def test_check_choice_suggests():
    assert check_choice("mean", "fill", ["mean", "blur"]) == "mean"
    with pytest.raises(ValueError, match=r"fill must be one of 'mean', 'blur'; got 'blurr'.*'blur'"):
        check_choice("blurr", "fill", ["mean", "blur"])


def test_check_kwargs_did_you_mean_and_renamed():
    def f(model, inputs, *, n_steps=8, background=None):
        pass

    check_kwargs(f, {"n_steps": 2}, "f")
    with pytest.raises(TypeError, match=r"f: unknown parameter 'nsteps' \(did you mean 'n_steps'\?\)"):
        check_kwargs(f, {"nsteps": 2}, "f")
    with pytest.raises(TypeError, match=r"'data' is now called 'background'"):
        check_kwargs(f, {"data": 1}, "f")
    assert RENAMED["data"] == "background"


def test_explain_rejects_unknown_keywords_with_a_suggestion(linear_model):
    x = torch.rand(3, 6)
    with pytest.raises(TypeError, match=r"integrated_gradients: unknown parameter 'nsteps' \(did you mean 'n_steps'"):
        lumos.explain(linear_model, x, "integrated_gradients", nsteps=4)


# ------------------------------------------------------------------ checked evaluations
def test_check_finite_names_the_evaluation():
    check_finite(torch.ones(3), "the baselines")
    with pytest.raises(NonFiniteOutputError, match=r"2 NaN or Inf values on the baselines \(of 3\)"):
        check_finite(torch.tensor([1.0, float("nan"), float("inf")]), "the baselines")
    # a finite tensor whose sum overflows is not an error
    check_finite(torch.full((4,), 3e38), "large but finite values")
    check_finite(torch.arange(3), "integers")


def test_nan_output_at_the_inputs_is_named(linear_model):
    class NaNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 3)

        def forward(self, x):
            return self.lin(x) * torch.nan

    with pytest.raises(NonFiniteOutputError, match="on the inputs"):
        lumos.explain(NaNModel(), torch.rand(2, 6), "saliency")


# ------------------------------------------------------------------ inputs
def test_float64_arrays_tensors_and_dataframes_work_on_a_float32_model(linear_model):
    x = np.random.default_rng(0).random((4, 6))  # float64
    ref = lumos.explain(linear_model, torch.tensor(x, dtype=torch.float32), "integrated_gradients")
    for inputs in (x, torch.tensor(x), pd.DataFrame(x, columns=list("abcdef"))):
        e = lumos.explain(linear_model, inputs, "integrated_gradients")
        assert e.values.dtype == np.float32
        np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-6)
    assert e.feature_names == list("abcdef")  # a DataFrame's columns name the features


def test_feature_names_for_tabular_tensors(linear_model):
    e = lumos.explain(linear_model, torch.rand(2, 6), "saliency", feature_names=list("uvwxyz"))
    assert e.feature_names == list("uvwxyz") and e[1].feature_names == list("uvwxyz")
    with pytest.raises(ValueError, match="feature_names has 2 names but the explanation's last axis has 6"):
        lumos.explain(linear_model, torch.rand(2, 6), "saliency", feature_names=["a", "b"])


def test_gradient_methods_work_inside_inference_mode(linear_model):
    x = torch.rand(3, 6)
    ref = lumos.explain(linear_model, x, "integrated_gradients", target=1)
    with torch.inference_mode():
        xi = torch.rand(3, 6) * 0 + x  # an inference tensor
        for method in ("saliency", "integrated_gradients", "smoothgrad", "guided_backprop", "lrp", "deeplift"):
            e = lumos.explain(linear_model, xi, method, target=1)
            assert np.isfinite(e.values).all() and np.abs(e.values).sum() > 0, method
        e = lumos.explain(linear_model, xi, "integrated_gradients", target=1)
    np.testing.assert_allclose(e.values, ref.values, atol=1e-6)
    assert torch.is_inference_mode_enabled() is False


def test_gradcam_inside_inference_mode(small_cnn, images):
    ref = lumos.explain(small_cnn, images, "gradcam", target=0)
    with torch.inference_mode():
        e = lumos.explain(small_cnn, images, "gradcam", target=0)
    np.testing.assert_allclose(e.values, ref.values, atol=1e-6)


# ------------------------------------------------------------------ threads
@pytest.mark.parametrize("method", ["gradcam", "deeplift", "guided_backprop", "lrp"])
def test_threads_sharing_one_model_get_the_single_threaded_map(small_cnn, images, method):
    ref = lumos.explain(small_cnn, images, method, target=1).values
    results, errors = {}, []
    barrier = threading.Barrier(4)

    def work(k):
        try:
            barrier.wait()
            for _ in range(3):
                results.setdefault(k, []).append(lumos.explain(small_cnn, images, method, target=1).values)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for maps in results.values():
        for v in maps:
            np.testing.assert_allclose(v, ref, rtol=1e-5, atol=1e-6)
    # every hook was removed and the lock is free again
    assert all(not m._forward_hooks and not m._backward_hooks for m in small_cnn.modules())
    assert model_lock(small_cnn).acquire(blocking=False)
    model_lock(small_cnn).release()


# ------------------------------------------------------------------ execution
def test_default_batch_size_is_sized_by_bytes():
    assert check_batch_size(None) == DEFAULT_BATCH_SIZE
    assert check_batch_size(None, row_bytes=3 * 32 * 32 * 4) == DEFAULT_BATCH_SIZE
    assert check_batch_size(None, row_bytes=3 * 128 * 128 * 4) == BATCH_BYTES // (3 * 128 * 128 * 4)
    assert check_batch_size(None, row_bytes=10 * BATCH_BYTES) == 1
    assert check_batch_size(7, row_bytes=10 * BATCH_BYTES) == 7  # the user's choice wins
    with pytest.raises(ValueError, match="batch_size"):
        check_batch_size(0)


@pytest.mark.parametrize("seed", ["abc", 1.5, True])
def test_bad_seed_names_seed(seed):
    with pytest.raises(ValueError, match="seed must be"):
        torch_generator(seed)


# ------------------------------------------------------------------ loading
@pytest.fixture
def saved(tmp_path, linear_model):
    e = lumos.explain(linear_model, torch.rand(3, 6), "integrated_gradients", feature_names=list("abcdef"))
    path = e.save(tmp_path / "e.npz")
    return path, json.loads(path.with_suffix(".json").read_text())


def _write(path, doc):
    path.with_suffix(".json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


@pytest.mark.parametrize("change, message", [
    (lambda d: [d], "expected a JSON object, got list"),
    (lambda d: {k: v for k, v in d.items() if k != "meta"}, "field 'meta' is missing"),
    (lambda d: {**d, "params": [1, 2]}, "field 'params' must be a dict"),
    (lambda d: {**d, "feature_names": {"a": 1}}, "field 'feature_names' must be null or a list"),
    (lambda d: {**d, "meta_arrays": d["meta_arrays"] + ["ghost"]}, "meta_arrays names 'ghost'"),
    (lambda d: {**d, "format": "other/1"}, "not a lumos explanation"),
    (lambda d: {**d, "feature_names": ["a"]}, "inconsistent"),
    (lambda d: {**d, "sample_keys": ["nope"]}, "inconsistent"),
])
def test_load_rejects_malformed_side_files_naming_file_and_field(saved, change, message):
    path, doc = saved
    _write(path, change(doc))
    with pytest.raises(ExplanationFileError, match=message) as info:
        lumos.load(path)
    assert "e.json" in str(info.value) or "e.npz" in str(info.value)


def test_load_rejects_deep_nesting_and_bad_json(saved):
    path, doc = saved
    _write(path, '{"format": "lumos.explanation/1", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ExplanationFileError, match="nested deeper"):
        lumos.load(path)
    _write(path, "{not json")
    with pytest.raises(ExplanationFileError, match="not valid JSON"):
        lumos.load(path)


def test_load_round_trip_still_works(saved):
    path, _ = saved
    e = lumos.load(path)
    assert e.feature_names == list("abcdef") and e.method == "integrated_gradients"


def test_torch_threads_sets_and_restores_also_on_error():
    import torch

    from lumos.core.execution import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive int"):
            torch_threads(bad)


def test_seeded_global_rng_seeds_the_block_and_restores_the_callers_stream():
    import torch

    from lumos.core.execution import seeded_global_rng

    torch.manual_seed(11)
    expected_after = torch.rand(3)
    torch.manual_seed(11)
    with seeded_global_rng(4):
        a = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_after)  # the caller's stream continues untouched
    with seeded_global_rng(4):
        assert torch.equal(torch.rand(3), a)            # same seed, same draws
    with pytest.raises(RuntimeError, match="boom"):
        with seeded_global_rng(4):
            raise RuntimeError("boom")
