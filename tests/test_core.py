"""The core objects: Explanation, targets, registry, layers, and the promises every torch method
keeps (the model left as found, inputs untouched, clear errors naming the argument)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import lumos
from conftest import SmallCNN, assert_same_state, model_state
from lumos.core.explanation import Explanation, concatenate
from lumos.core.registry import get_method
from lumos.core.targets import resolve_target
from lumos.core.torch_model import get_module

# Every gradient method of this family, with small settings so the suite stays fast.
GRADIENT_CALLS = [
    ("saliency", {}),
    ("saliency", {"mode": "abs"}),
    ("gradient_x_input", {}),
    ("integrated_gradients", {"n_steps": 4, "batch_size": 6}),
    ("integrated_gradients", {"n_steps": 3, "baselines": "uniform", "n_baselines": 2}),
    ("smoothgrad", {"n_samples": 3, "batch_size": 4}),
    ("smoothgrad", {"n_samples": 2, "base": "integrated_gradients", "n_steps": 3}),
    ("smoothgrad_sq", {"n_samples": 3}),
    ("vargrad", {"n_samples": 3}),
]
IDS = [f"{m}-{'-'.join(map(str, p.values()))}" for m, p in GRADIENT_CALLS]


def _expl(n=4):
    rng = np.random.default_rng(0)
    return Explanation(
        values=rng.normal(size=(n, 3, 5, 5)).astype(np.float32),
        inputs=rng.random((n, 3, 5, 5)).astype(np.float32),
        target=np.arange(n) % 3,
        output=rng.normal(size=n),
        baseline_output=rng.normal(size=n),
        method="integrated_gradients",
        params={"n_steps": 7, "baselines": "zero", "nested": {"a": [1, 2]}},
        meta={"gap": rng.random(n), "seed": 3, "layer": "features.0", "grid": np.ones((2, 2))},
        sample_keys=("gap",),
    )


# ---------------------------------------------------------------------------------- Explanation
def test_explanation_len_array_and_slicing():
    e = _expl(5)
    assert len(e) == 5
    np.testing.assert_array_equal(np.asarray(e), e.values)
    assert np.asarray(e, dtype=np.float64).dtype == np.float64
    one = e[2]
    assert len(one) == 1 and one.values.shape == (1, 3, 5, 5)
    np.testing.assert_array_equal(one.values[0], e.values[2])
    np.testing.assert_array_equal(one.meta["gap"], e.meta["gap"][2:3])
    assert one.meta["seed"] == 3 and one.meta["grid"].shape == (2, 2)  # non-sample meta kept whole
    last = e[-1]
    np.testing.assert_array_equal(last.values[0], e.values[-1])
    mask = np.array([True, False, True, False, True])
    for index, rows in ((slice(1, 4), [1, 2, 3]), (mask, [0, 2, 4]), ([4, 0], [4, 0])):
        s = e[index]
        np.testing.assert_array_equal(s.values, e.values[rows])
        np.testing.assert_array_equal(s.inputs, e.inputs[rows])
        np.testing.assert_array_equal(s.target, e.target[rows])
        np.testing.assert_array_equal(s.output, e.output[rows])
        np.testing.assert_array_equal(s.baseline_output, e.baseline_output[rows])
        np.testing.assert_array_equal(s.meta["gap"], e.meta["gap"][rows])
        assert s.sample_keys == ("gap",) and s.method == e.method
    with pytest.raises(IndexError):
        e[0, 1]


def test_explanation_completeness_property():
    e = _expl(3)
    want = np.abs(e.values.reshape(3, -1).sum(1) - (e.output - e.baseline_output))
    np.testing.assert_allclose(e.completeness_gap, want, rtol=1e-6)
    assert Explanation(values=np.zeros((2, 3))).completeness_gap is None


def test_explanation_rejects_inconsistent_rows():
    with pytest.raises(ValueError, match="output"):
        Explanation(values=np.zeros((3, 2)), output=np.zeros(4))
    with pytest.raises(ValueError, match="gap"):
        Explanation(values=np.zeros((3, 2)), meta={"gap": np.zeros(2)}, sample_keys=("gap",))
    with pytest.raises(ValueError, match="not in meta"):
        Explanation(values=np.zeros((3, 2)), sample_keys=("gap",))
    with pytest.raises(ValueError, match="batch axis"):
        Explanation(values=np.float32(1.0))


def _assert_same_explanation(a, b):
    for name in ("values", "inputs", "target", "output", "baseline_output"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype, name
    assert a.method == b.method and a.sample_keys == b.sample_keys
    assert a.feature_names == b.feature_names
    assert set(a.meta) == set(b.meta)
    for k in a.meta:
        np.testing.assert_array_equal(np.asarray(a.meta[k]), np.asarray(b.meta[k]))


@pytest.mark.parametrize("where", ["folder", "file.npz"])
def test_explanation_save_load_roundtrip_without_pickle(tmp_path, where):
    e = _expl(4)
    e.feature_names = None
    path = e.save(tmp_path / where)
    assert path.suffix == ".npz" and path.exists() and path.with_suffix(".json").exists()
    with np.load(path, allow_pickle=False) as data:  # readable with pickling forbidden
        np.testing.assert_array_equal(data["values"], e.values)
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["params"] == {"n_steps": 7, "baselines": "zero", "nested": {"a": [1, 2]}}
    back = lumos.load(tmp_path / where)
    _assert_same_explanation(e, back)
    assert back.params == doc["params"]
    # slicing still follows the sample keys after a round trip
    np.testing.assert_array_equal(back[1:3].meta["gap"], e.meta["gap"][1:3])


def test_saved_real_explanation_roundtrip(tmp_path, small_cnn, images):
    e = lumos.explain(small_cnn, images, "integrated_gradients", target=1, n_steps=4)
    back = lumos.load(e.save(tmp_path / "ig.npz"))
    _assert_same_explanation(e, back)
    np.testing.assert_array_equal(back.meta["completeness_gap"], e.meta["completeness_gap"])


def test_feature_names_and_concatenate():
    e = Explanation(values=np.arange(6.0).reshape(3, 2), feature_names=["a", "b"],
                    meta={"s": np.arange(3)}, sample_keys=["s"])
    both = concatenate([e[:1], e[1:]])
    np.testing.assert_array_equal(both.values, e.values)
    np.testing.assert_array_equal(both.meta["s"], e.meta["s"])
    assert both.feature_names == ["a", "b"]


def test_load_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        lumos.load(tmp_path / "nothing.npz")
    np.savez(tmp_path / "x.npz", values=np.zeros(3))
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a lumos explanation"):
        lumos.load(tmp_path / "x.npz")


# ---------------------------------------------------------------------------------- targets
def test_target_kinds_resolve_to_the_right_scalar():
    out = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0], [0.0, 1.0, 9.0]])
    cases = {
        "int": (2, [2.0, 3.0, 9.0]),
        "list": ([0, 1, 2], [1.0, 0.0, 9.0]),
        "tuple": ((1, 1, 0), [5.0, 0.0, 0.0]),
        "ndarray": (np.array([2, 0, 1]), [2.0, 7.0, 1.0]),
        "tensor": (torch.tensor([1, 2, 2]), [5.0, 3.0, 9.0]),
        "predicted": ("predicted", [5.0, 7.0, 9.0]),
        "none": (None, [5.0, 7.0, 9.0]),
        "np-int": (np.int64(0), [1.0, 7.0, 0.0]),
    }
    for name, (spec, want) in cases.items():
        t = resolve_target(spec, out)
        np.testing.assert_array_equal(t.select(out).numpy(), want, err_msg=name)
        np.testing.assert_array_equal(t.select(out.numpy()), want, err_msg=name)  # numpy too
    assert resolve_target("predicted", out).indices.tolist() == [1, 0, 2]


def test_target_rows_pick_the_original_samples_target():
    out = torch.arange(12.0).view(4, 3)
    t = resolve_target([2, 0], out[:2])
    rows = torch.tensor([0, 0, 1, 1])
    np.testing.assert_array_equal(t.select(out, rows).numpy(), [2.0, 5.0, 6.0, 9.0])


def test_callable_and_regression_targets():
    out = torch.tensor([[1.0, 5.0], [7.0, 0.0]])
    t = resolve_target(lambda o: o[:, 0] - o[:, 1], out)
    assert t.indices is None
    np.testing.assert_array_equal(t.select(out).numpy(), [-4.0, 7.0])
    for reg in (torch.tensor([0.5, -1.0]), torch.tensor([[0.5], [-1.0]])):
        t = resolve_target(None, reg)
        np.testing.assert_array_equal(t.select(reg).numpy(), [0.5, -1.0])
        np.testing.assert_array_equal(resolve_target(0, reg).select(reg).numpy(), [0.5, -1.0])


@pytest.mark.parametrize("bad, match", [
    (3, "out of range"), (-1, "out of range"), ([0, 5], "out of range"), ([0, 1, 1], "3 entries"),
    ([[0, 1]], "1-D"), (1.5, "float64"), ("largest", "'predicted'"), (True, "bool"),
    (np.array([0.0, 1.0]), "dtype"),
])
def test_bad_targets_are_named(bad, match):
    out = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target") as err:
        resolve_target(bad, out)
    assert err.match(match)


def test_bad_target_callable_shape_and_regression_index():
    with pytest.raises(ValueError, match="one scalar per row"):
        resolve_target(lambda o: o, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="single output"):
        resolve_target(1, torch.zeros(2))


def test_targets_through_methods(linear_model):
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    w = linear_model.weight.detach()
    e = lumos.explain(linear_model, x, "saliency", target=lambda o: o[:, 0] - o[:, 2])
    np.testing.assert_allclose(e.values, (w[0] - w[2]).expand(3, 6).numpy(), rtol=1e-6, atol=1e-7)
    assert e.target is None and e.meta["target"] == "<lambda>"
    e = lumos.explain(linear_model, x, "saliency", target="predicted")
    pred = linear_model(x).argmax(1)
    np.testing.assert_array_equal(e.target, pred.numpy())
    np.testing.assert_allclose(e.values, w[pred].numpy(), rtol=1e-6)
    reg = nn.Linear(6, 1)
    e = lumos.explain(reg, x, "integrated_gradients")
    np.testing.assert_allclose(e.values, (reg.weight.detach() * x).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(e.output, reg(x)[:, 0].detach().numpy(), rtol=1e-6)
    for method in ("saliency", "integrated_gradients", "smoothgrad"):
        with pytest.raises(ValueError, match="target out of range"):
            lumos.explain(linear_model, x, method, target=3)
        with pytest.raises(ValueError, match="target has 2 entries"):
            lumos.explain(linear_model, x, method, target=[0, 1])


# ---------------------------------------------------------------------------------- registry
def test_registry_lists_the_gradient_methods():
    table = lumos.methods()
    names = {m.name for m in table}
    for name in ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad",
                 "smoothgrad_sq", "vargrad"):
        assert name in names
        assert get_method(name).family == "gradient"
    grads = lumos.methods("gradient")
    assert all(m.family == "gradient" for m in grads) and len(grads) >= 6
    text = str(table)
    assert text.splitlines()[0].startswith("method") and "integrated_gradients" in text
    assert get_method(" Integrated-Gradients ").name == "integrated_gradients"


def test_unknown_method_suggests_a_name(small_cnn, images):
    with pytest.raises(ValueError, match="Did you mean 'integrated_gradients'"):
        lumos.explain(small_cnn, images, "integrated_gradient")
    with pytest.raises(ValueError, match="method: unknown method 'xyzzy'"):
        lumos.get_method("xyzzy")
    with pytest.raises(TypeError, match="method must be a string"):
        lumos.get_method(3)


# ---------------------------------------------------------------------------------- layers
def test_layers_listing(small_cnn, images):
    before = model_state(small_cnn)
    table = lumos.layers(small_cnn, images)
    after = model_state(small_cnn)
    assert_same_state(before, after)
    rows = {r.name: r for r in table}
    assert list(rows) == ["features", "features.0", "features.1", "features.2", "features.3",
                          "pool", "classifier"]
    assert rows["features.2"].kind == "Conv2d"
    assert rows["features.2"].output_shape == (5, 8, 12, 12)
    assert rows["pool"].output_shape == (5, 8, 1, 1)
    assert rows["classifier"].output_shape == (5, 4)
    assert rows["classifier"].n_params == 8 * 4 + 4
    assert "features.3" in str(table)
    assert all(r.output_shape is None for r in lumos.layers(small_cnn))


def test_unknown_layer_name_suggests(small_cnn):
    assert get_module(small_cnn, "features.2") is small_cnn.features[2]
    with pytest.raises(ValueError, match="at: the model has no layer named 'feature.2'.*'features.2'"):
        get_module(small_cnn, "feature.2")
    with pytest.raises(TypeError, match="at must be"):
        get_module(small_cnn, 2)


# ---------------------------------------------------------------------------------- guarantees
def _unusual_state(model):
    """A model in a state worth preserving: frozen part, stale grads, a user hook, train flags."""
    model.features[0].weight.requires_grad_(False)
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 0.25)
    model.features[2].train()
    calls = []
    model.features[1].register_forward_hook(lambda m, i, o: calls.append(1))
    model.classifier.register_full_backward_hook(lambda m, gi, go: None)
    return calls


@pytest.mark.parametrize("method, params", GRADIENT_CALLS, ids=IDS)
def test_model_left_exactly_as_found(method, params, small_cnn, images):
    calls = _unusual_state(small_cnn)
    before = model_state(small_cnn)
    x = images.clone()
    e = lumos.explain(small_cnn, images, method, target=1, **params)
    assert_same_state(before, model_state(small_cnn))
    assert calls, "the user's hook stays active during the call"
    assert torch.equal(images, x), "inputs changed in place"
    assert e.values.shape == images.shape and np.isfinite(e.values).all()


class Flaky(nn.Module):
    """A model that raises on its ``fail_at``-th call."""

    def __init__(self, fail_at):
        super().__init__()
        self.net, self.calls, self.fail_at = SmallCNN(), 0, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom on call %d" % self.calls)
        return self.net(x)


@pytest.mark.parametrize("method, params", GRADIENT_CALLS, ids=IDS)
def test_model_left_as_found_when_the_call_raises(method, params, images):
    torch.manual_seed(0)
    model = Flaky(fail_at=2).eval()
    _unusual_state(model.net)
    before = model_state(model)
    with pytest.raises((RuntimeError, ValueError), match="boom"):
        lumos.explain(model, images, method, target=0, batch_size=2,
                      **{k: v for k, v in params.items() if k != "batch_size"})
    assert_same_state(before, model_state(model))

    state = {"n": 0}

    def target(out):  # fails on the second evaluation, half-way through the work
        state["n"] += 1
        if state["n"] == 2:
            raise KeyError("target failed")
        return out[:, 0]

    model.fail_at = -1
    with pytest.raises(KeyError, match="target failed"):
        lumos.explain(model, images, method, target=target, batch_size=2,
                      **{k: v for k, v in params.items() if k != "batch_size"})
    assert_same_state(before, model_state(model))


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.drop, self.lin = nn.Dropout(0.0), nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(self.drop(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


@pytest.mark.parametrize("method, params", GRADIENT_CALLS[::2], ids=IDS[::2])
def test_training_mode_warns_and_running_stats_are_restored(method, params, images):
    torch.manual_seed(0)
    model = BNNet().train()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    before = model_state(model)
    with pytest.warns(UserWarning, match="training mode"):
        lumos.explain(model, images, method, target=0, **params)
    after = model_state(model)
    assert_same_state(before, after)  # running_mean/var and num_batches_tracked included
    assert after["training"] == [True] * 5


@pytest.mark.parametrize("fail", [False, True])
def test_model_guard_undoes_everything_a_method_may_do(fail):
    from lumos.core.torch_model import ModelGuard

    torch.manual_seed(0)
    model = BNNet().eval()
    model.lin.register_forward_hook(lambda m, i, o: None)  # the user's own hook stays
    model.lin.weight.grad = torch.ones_like(model.lin.weight)
    before = model_state(model)
    try:
        with ModelGuard(model):
            model.train()
            model(torch.rand(2, 3, 6, 6))  # writes the batch-norm statistics
            model.conv.weight.requires_grad_(False)
            model.lin.weight.grad = None
            model.conv.bias.grad = torch.zeros_like(model.conv.bias)
            model.conv.register_forward_hook(lambda m, i, o: None)
            model.bn.register_forward_pre_hook(lambda m, i: None)
            model.lin.register_full_backward_hook(lambda m, gi, go: None)
            model.register_forward_hook(lambda m, i, o: None)
            if fail:
                raise KeyError("half-way")
    except KeyError:
        assert fail
    assert_same_state(before, model_state(model))
    assert len(model.lin._forward_hooks) == 1


def test_numpy_inputs_are_not_modified(small_cnn, images):
    arr = images.numpy().copy()
    keep = arr.copy()
    for method, params in GRADIENT_CALLS[:6]:
        lumos.explain(small_cnn, arr, method, target=0, **params)
    np.testing.assert_array_equal(arr, keep)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("method", ["saliency", "gradient_x_input", "integrated_gradients",
                                    "smoothgrad"])
def test_bad_inputs_name_the_argument(method, small_cnn, images):
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, channels, height, width\)"):
        lumos.explain(small_cnn, images[0], method)
    with pytest.raises(ValueError, match="inputs has 1 channels but the model's first layer expects 3"):
        lumos.explain(small_cnn, images[:, :1], method)
    for bad in (float("nan"), float("inf")):
        x = images.clone()
        x[1, 0, 2, 2] = bad
        with pytest.raises(ValueError, match="inputs contains 1 NaN or Inf"):
            lumos.explain(small_cnn, x, method)
    with pytest.raises(ValueError, match="target out of range"):
        lumos.explain(small_cnn, images, method, target=4)
    with pytest.raises(TypeError, match="model: .* needs a torch.nn.Module"):
        lumos.explain(lambda x: x.sum(1), images, method)
    with pytest.raises(TypeError, match="inputs must be numeric"):
        lumos.explain(small_cnn, np.array([["a"]]), method)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        lumos.explain(small_cnn, images, method, batch_size=0)


class Constant(nn.Module):
    """Output does not depend on the input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.bias = nn.Parameter(torch.tensor([0.5, -0.5, 1.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 3) + 0 * self.conv(x.detach()).sum()


@pytest.mark.parametrize("method", ["saliency", "gradient_x_input", "integrated_gradients",
                                    "smoothgrad"])
def test_output_independent_of_input_is_an_error(method, images):
    model = Constant()
    before = model_state(model)
    with pytest.raises(ValueError, match="model: its output does not depend on the input"):
        lumos.explain(model, images, method, target=0)
    assert_same_state(before, model_state(model))


def test_bad_method_parameters(small_cnn, images):
    cases = [
        ("saliency", {"mode": "max"}, "mode must be one of"),
        ("integrated_gradients", {"n_steps": 0}, "n_steps must be a positive int"),
        ("integrated_gradients", {"integration": "simpson"}, "integration must be one of"),
        ("integrated_gradients", {"integration": "riemann_trapezoid", "n_steps": 1}, "at least 2"),
        ("integrated_gradients", {"baselines": "black"}, "baselines must be one of"),
        ("integrated_gradients", {"baselines": torch.zeros(3, 5, 5)}, "cannot be broadcast"),
        ("integrated_gradients", {"baselines": torch.zeros(2, 2)}, r"baselines must have shape \(3, 12, 12\)"),
        ("integrated_gradients", {"baselines": "mean"}, "needs background="),
        ("integrated_gradients", {"sigma": 2.0}, "sigma is only used"),
        ("integrated_gradients", {"baselines": "blur", "sigma": -1.0}, "sigma must be"),
        ("integrated_gradients", {"n_baselines": 0, "baselines": "uniform"}, "n_baselines must be"),
        ("integrated_gradients", {"n_baselines": 2}, "n_baselines is for random"),
        ("integrated_gradients", {"seed": "x", "baselines": "uniform"}, "seed must be"),
        ("smoothgrad", {"noise_level": -0.1}, "noise_level must be"),
        ("smoothgrad", {"n_samples": 0}, "n_samples must be a positive int"),
        ("smoothgrad", {"variant": "median"}, "variant must be one of"),
        ("smoothgrad", {"base": "saliencyy"}, "Did you mean 'saliency'"),
        ("smoothgrad", {"base": "vargrad"}, "base must be a method other than"),
        ("smoothgrad", {"n_stepz": 3, "base": "integrated_gradients"}, "has no parameter"),
        ("smoothgrad", {"mode": "max"}, "mode must be one of"),
    ]
    for method, params, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            lumos.explain(small_cnn, images, method, **params)
