"""Perturbation methods with several inputs, extra forward arguments and Neuron targets (issue 13).

- feature ablation of a model of two inputs equals feature ablation of the same function written
  on their concatenation (tuple and dict inputs, groups per input and across inputs, per-input
  and per-sample fills, background per input);
- a per-sample extra argument is expanded to every perturbed row (occlusion windows, RISE masks,
  ablated groups, learned masks): the batch result equals a loop over samples, each explained
  alone with its own argument, and does not depend on ``batch_size``;
- predict functions take forward arguments too (also when BlackBox splits a call in chunks);
- methods that need one input's layout refuse several inputs with a clear message;
- ``target=lumos.Neuron(layer, index)``: closed forms on a linear unit.
"""
import numpy as np
import pytest
import torch
from torch import nn

import lumos
from conftest import assert_same_state, model_state

TOL = 1e-12  # float64 models: the two computations differ by rounding only


# --------------------------------------------------------------------------- two inputs vs one
class Two(nn.Module):
    """A non-linear function of an image-like input ``a`` (2, 2, 3) and a table row ``b`` (4,)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(16, 3, generator=g, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64))

    def forward(self, a, b, scale=None):
        z = torch.cat([a.flatten(1), b], 1)
        h = torch.tanh(z @ self.w) + (z[:, :5] * z[:, 5:10]).sum(1, keepdim=True)
        out = h @ self.v
        return out if scale is None else out * scale[:, None]


class Cat(nn.Module):
    """The same function of the concatenation ``[a.flatten(), b]`` (16 columns)."""

    def __init__(self, two):
        super().__init__()
        self.two = two

    def forward(self, z, scale=None):
        return self.two(z[:, :12].reshape(-1, 2, 2, 3), z[:, 12:], scale)


def _ab(n=4):
    g = torch.Generator().manual_seed(3)
    return (torch.rand(n, 2, 2, 3, generator=g, dtype=torch.float64),
            torch.rand(n, 4, generator=g, dtype=torch.float64))


def _flat(values):
    parts = list(values.values()) if isinstance(values, dict) else list(values)
    return np.concatenate([np.asarray(p).reshape(len(p), -1) for p in parts], 1)


@pytest.mark.parametrize("as_dict", [False, True])
def test_feature_ablation_of_two_inputs_equals_the_concatenated_model(as_dict):
    two = Two()
    a, b = _ab()
    z = torch.cat([a.flatten(1), b], 1)
    inputs = {"a": a, "b": b} if as_dict else (a, b)
    e = lumos.explain(two, inputs, "feature_ablation", target=2)
    ref = lumos.explain(Cat(two), z, "feature_ablation", target=2)
    assert e.several and (isinstance(e.values, dict) == as_dict)
    parts = list(e.values.values()) if as_dict else list(e.values)
    assert parts[0].shape == (4, 2, 2, 3) and parts[1].shape == (4, 4)
    assert np.abs(_flat(e.values) - ref.values).max() <= TOL
    assert np.abs(_flat(e.inputs) - z.numpy()).max() == 0
    assert np.abs(e.output - ref.output).max() <= TOL
    # the part of one input is an Explanation of that input
    assert e.part("b" if as_dict else 1).values.shape == (4, 4)


def test_groups_per_input_and_across_inputs_equal_the_concatenated_groups():
    two = Two()
    a, b = _ab()
    z = torch.cat([a.flatten(1), b], 1)
    # a: one group per channel (labels 0..2, shared by the 2x2 positions); b: columns 0-1 join
    # a's group 1 (a group spanning both inputs), columns 2-3 a group of their own (7)
    ga = np.broadcast_to(np.arange(3), (2, 2, 3))
    gb = np.array([1, 1, 7, 7])
    for groups, inputs in (((ga, gb), (a, b)), ({"b": gb, "a": ga}, {"a": a, "b": b})):
        e = lumos.explain(two, inputs, "feature_ablation", target=0, groups=groups)
        # per-sample labels (4, 16): values per element (a (16,) mask would give one per group)
        ref = lumos.explain(Cat(two), z, "feature_ablation", target=0,
                            groups=np.tile(np.concatenate([ga.reshape(-1), gb]), (4, 1)))
        assert np.abs(_flat(e.values) - ref.values).max() <= TOL
        assert e.meta["n_groups"].tolist() == [4] * 4
        # the spanning group: its drop sits on a's channel 1 and on b's columns 0, 1
        v = _flat(e.values)
        assert np.abs(v[:, [1, 4, 7, 10, 12, 13]] - v[:, [1]]).max() == 0
        assert np.abs(e.meta["group_values"] - ref.meta["group_values"]).max() <= TOL


def test_none_groups_of_one_input_are_single_elements_after_the_given_labels():
    two = Two()
    a, b = _ab()
    z = torch.cat([a.flatten(1), b], 1)
    e = lumos.explain(two, (a, b), "feature_ablation", target=1, groups=(None, np.array([0, 0, 1, 1])))
    labels = np.concatenate([np.arange(2, 14), [0, 0, 1, 1]])
    ref = lumos.explain(Cat(two), z, "feature_ablation", target=1, groups=np.tile(labels, (4, 1)))
    assert np.abs(_flat(e.values) - ref.values).max() <= TOL


def test_per_input_and_per_sample_fills_and_background_per_input():
    two = Two()
    a, b = _ab()
    z = torch.cat([a.flatten(1), b], 1)
    g = torch.Generator().manual_seed(5)
    fa = torch.rand(4, 2, 2, 3, generator=g, dtype=torch.float64)  # one fill per sample
    fb = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)  # given once
    e = lumos.explain(two, {"a": a, "b": b}, "feature_ablation", target=2, fill={"a": fa, "b": fb})
    ref = lumos.explain(Cat(two), z, "feature_ablation", target=2,
                        fill=torch.cat([fa.flatten(1), fb.expand(4, 4)], 1))
    assert np.abs(_flat(e.values) - ref.values).max() <= TOL
    # a scalar per input
    e = lumos.explain(two, (a, b), "feature_ablation", target=2, fill=(0.3, -0.7))
    ref = lumos.explain(Cat(two), z, "feature_ablation", target=2,
                        fill=torch.tensor([0.3] * 12 + [-0.7] * 4, dtype=torch.float64))
    assert np.abs(_flat(e.values) - ref.values).max() <= TOL
    # the mean of a background given per input
    ba = torch.rand(6, 2, 2, 3, generator=g, dtype=torch.float64)
    bb = torch.rand(6, 4, generator=g, dtype=torch.float64)
    e = lumos.explain(two, (a, b), "feature_ablation", target=2, fill="mean", background=(ba, bb))
    ref = lumos.explain(Cat(two), z, "feature_ablation", target=2, fill="mean",
                        background=torch.cat([ba.flatten(1), bb], 1))
    assert np.abs(_flat(e.values) - ref.values).max() <= TOL


def test_several_inputs_with_a_per_sample_forward_argument_and_model_left_as_found():
    two = Two()
    a, b = _ab()
    z = torch.cat([a.flatten(1), b], 1)
    scale = torch.tensor([0.5, 2.0, -1.0, 3.0], dtype=torch.float64)
    before = model_state(two)
    e = lumos.explain(two, (a, b), "feature_ablation", target=0, forward_args={"scale": scale},
                      batch_size=5)
    assert_same_state(before, model_state(two))
    ref = lumos.explain(Cat(two), z, "feature_ablation", target=0, forward_args={"scale": scale})
    assert np.abs(_flat(e.values) - ref.values).max() <= TOL
    plain = lumos.explain(Cat(two), z, "feature_ablation", target=0)
    assert np.abs(ref.values - plain.values * scale.numpy()[:, None]).max() <= 1e-12


def test_several_inputs_errors_name_the_argument():
    two = Two()
    a, b = _ab()
    with pytest.raises(ValueError, match="groups='slic': superpixels are made of one image"):
        lumos.explain(two, (a, b), "feature_ablation", groups="slic")
    with pytest.raises(ValueError, match="groups: with several inputs give one integer label array"):
        lumos.explain(two, (a, b), "feature_ablation", groups=(np.zeros((2, 2, 3), int),))
    with pytest.raises(ValueError, match=r"groups: give one label array \(or None\) per input \['a', 'b'\]"):
        lumos.explain(two, {"a": a, "b": b}, "feature_ablation", groups={"a": None, "c": None})
    with pytest.raises(ValueError, match=r"groups\['1'\] of shape \(3,\) must broadcast"):
        lumos.explain(two, (a, b), "feature_ablation", groups=(None, np.arange(3)))
    with pytest.raises(ValueError, match=r"groups\['0'\] must hold integer labels"):
        lumos.explain(two, (a, b), "feature_ablation", groups=(np.zeros((2, 2, 3)), None))
    for fill in ("blur", "noise"):
        with pytest.raises(ValueError, match=f"fill='{fill}' needs the layout"):
            lumos.explain(two, (a, b), "feature_ablation", fill=fill)
    with pytest.raises(ValueError, match="fill: with several inputs give one value per input"):
        lumos.explain(two, (a, b), "feature_ablation", fill=torch.zeros(16))


@pytest.mark.parametrize("method, kw", [
    ("occlusion", dict(window=2)),
    ("rise", dict(n_masks=16, grid=2)),
    ("meaningful_perturbation", dict(n_iter=2, fill="zero")),
])
def test_methods_that_need_one_layout_refuse_several_inputs(method, kw):
    with pytest.raises(ValueError, match=f"inputs: {method} explains one input tensor"):
        lumos.explain(Two(), _ab(), method, target=0, **kw)


def test_predict_functions_refuse_several_inputs_and_estimators_refuse_forward_args():
    a, b = _ab()
    with pytest.raises(ValueError, match="inputs: feature_ablation of a predict function explains one input"):
        lumos.explain(lambda x: x.sum(1), (a.numpy(), b.numpy()), "feature_ablation")
    with pytest.raises(ValueError, match="inputs: occlusion of a predict function explains one input"):
        lumos.explain(lambda x: x.sum(1), (b.numpy(), b.numpy()), "occlusion", window=1)
    from sklearn.linear_model import LinearRegression

    X = b.numpy()
    reg = LinearRegression().fit(X, X.sum(1))
    with pytest.raises(TypeError, match="forward_args: occlusion calls a scikit-learn estimator"):
        lumos.explain(reg, X, "occlusion", window=1, forward_args=(np.ones(4),))


# --------------------------------------------------------------------------- per-sample arguments
class Scaled(nn.Module):
    """An image model with a per-sample weight image ``w`` (positional) and ``shift`` (keyword)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1).double()

    def forward(self, x, w, shift=None):
        h = torch.relu(self.conv(x * w))
        out = torch.stack([h[:, 0].mean((1, 2)) + h[:, 1].amax((1, 2)), h.pow(2).mean((1, 2, 3))], 1)
        return out if shift is None else out + shift[:, None] * out.pow(2)


def _images(n=3):
    g = torch.Generator().manual_seed(11)
    x = torch.rand(n, 2, 8, 8, generator=g, dtype=torch.float64)
    w = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64) * 2
    shift = torch.rand(n, generator=g, dtype=torch.float64)
    return x, w, shift


CASES = [
    ("occlusion", dict(window=3, stride=2)),
    ("occlusion", dict(window=[2, 4], fill="blur", sigma=1.0)),
    ("rise", dict(n_masks=64, grid=4, seed=3)),
    ("rise", dict(n_masks=40, grid=(None, 2, 4), fill="noise", seed=1)),
    ("feature_ablation", dict()),
    ("feature_ablation", dict(groups=np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1))),
]


@pytest.mark.parametrize("method, kw", CASES)
def test_per_sample_forward_args_equal_a_loop_over_samples(method, kw):
    model = Scaled()
    x, w, shift = _images()
    fa = lumos.Args(w, shift=shift)
    e = lumos.explain(model, x, method, target=0, forward_args=fa, batch_size=7, **kw)
    for i in range(len(x)):
        one = lumos.explain(model, x[i:i + 1], method, target=0,
                            forward_args=lumos.Args(w[i:i + 1], shift=shift[i:i + 1]), **kw)
        assert np.abs(e.values[i] - one.values[0]).max() <= TOL, i
        assert abs(e.output[i] - one.output[0]) <= TOL
    # the argument matters: without it the map differs (a test that could fail)
    other = lumos.explain(model, x, method, target=0, forward_args=lumos.Args(w.flip(0), shift=shift),
                          batch_size=7, **kw)
    assert np.abs(other.values - e.values).max() > 1e-3


@pytest.mark.parametrize("method, kw", CASES)
def test_forward_args_results_do_not_depend_on_batch_size(method, kw):
    model = Scaled()
    x, w, shift = _images()
    runs = [lumos.explain(model, x, method, target=1, forward_args=(w,), batch_size=bs, **kw).values
            for bs in (1, 5, None)]
    for v in runs[1:]:
        assert np.abs(v - runs[0]).max() <= TOL


def test_meaningful_perturbation_learns_each_mask_with_its_own_argument():
    model = Scaled()
    x, w, shift = _images(2)
    kw = dict(n_iter=5, fill="zero", mask_shape=4, probabilities=False)
    e = lumos.explain(model, x, "meaningful_perturbation", target=0,
                      forward_args={"w": w, "shift": shift}, **kw)
    for i in range(len(x)):
        one = lumos.explain(model, x[i:i + 1], "meaningful_perturbation", target=0,
                            forward_args={"w": w[i:i + 1], "shift": shift[i:i + 1]}, **kw)
        assert np.abs(e.values[i] - one.values[0]).max() <= TOL
        assert abs(e.meta["score_perturbed"][i] - one.meta["score_perturbed"][0]) <= TOL


class Projected(nn.Module):
    """A table model with a projection matrix argument ``proj`` (features, 2)."""

    def forward(self, x, proj):
        return torch.tanh(x @ proj)


def test_shared_argument_of_batch_length_is_the_same_for_every_row():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(4, 4, generator=g, dtype=torch.float64)
    proj = torch.randn(4, 2, generator=g, dtype=torch.float64)  # first axis == batch length
    e = lumos.explain(Projected(), x, "occlusion", target=1, window=1,
                      forward_args=(lumos.Shared(proj),))
    # closed form of single-feature occlusion (fill 0): f(x) - f(x with x_j = 0)
    full = torch.tanh(x @ proj)[:, 1]
    expected = torch.stack([full - torch.tanh((x - x * (torch.arange(4) == j)) @ proj)[:, 1]
                            for j in range(4)], 1)
    assert np.abs(e.values - expected.numpy()).max() <= TOL
    # without Shared the matrix is taken per sample: the model fails, and the error says where
    with pytest.raises(ValueError, match="could not be evaluated on occluded inputs"):
        lumos.explain(Projected(), x, "occlusion", target=1, window=1, forward_args=(proj,))


def _predict(X, w, shift=0.0):
    """A numpy predict function with a per-sample weight row and a keyword shift."""
    return np.tanh(X * w).sum(1) + np.asarray(shift) * (X ** 2).mean(1)


@pytest.mark.parametrize("method, kw", [
    ("occlusion", dict(window=1)),
    ("rise", dict(n_masks=32, grid=(4,))),
    ("feature_ablation", dict(groups=np.repeat(np.arange(8), 8))),
])
def test_predict_function_with_per_sample_forward_args_equals_a_loop(method, kw):
    g = np.random.default_rng(0)
    X, W, S = g.random((5, 64)), g.random((5, 64)), g.random(5)
    e = lumos.explain(_predict, X, method, forward_args=lumos.Args(W, shift=S), batch_size=13, **kw)
    for i in range(5):
        one = lumos.explain(_predict, X[i:i + 1], method,
                            forward_args=lumos.Args(W[i:i + 1], shift=S[i:i + 1]), **kw)
        assert np.abs(e.values[i] - one.values[0]).max() <= TOL


def test_predict_function_forward_args_survive_blackbox_chunks():
    # 80 x 64 single-feature occlusions = 5120 rows in one call: BlackBox evaluates them in its
    # own chunks of 4096; the row ids must follow the chunks.
    g = np.random.default_rng(1)
    X, W = g.random((80, 64)), g.random((80, 64))
    e = lumos.explain(_predict, X, "occlusion", window=1, forward_args=(W,), batch_size=80 * 64)
    # closed form: tanh(x w) - tanh(0) for each single feature
    assert np.abs(e.values - np.tanh(X * W)).max() <= 1e-12


# --------------------------------------------------------------------------- Neuron targets
class Mlp(nn.Module):
    def __init__(self, d=12, h=5):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.fc1 = nn.Linear(d, h).double()
        self.fc2 = nn.Linear(h, 3).double()
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(h, d, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_occlusion_of_a_linear_unit_is_weight_times_difference_over_the_window():
    m = Mlp()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 12, generator=g, dtype=torch.float64)
    fill = 0.3
    e = lumos.explain(m, x, "occlusion", target=lumos.Neuron("fc1", 2), window=3, stride=3, fill=fill)
    w = m.fc1.weight[2].detach()
    contrib = (w * (x - fill)).reshape(4, 4, 3).sum(2)          # per window
    expected = contrib.repeat_interleave(3, 1).numpy()          # carried by each of its elements
    assert np.abs(e.values - expected).max() <= TOL
    unit = (x @ m.fc1.weight.T + m.fc1.bias)[:, 2].detach().numpy()
    assert np.abs(e.output - unit).max() <= TOL
    assert "Neuron('fc1', 2)" in e.meta["neuron"]


@pytest.mark.parametrize("method, kw", [
    ("rise", dict(n_masks=64, grid=(4,), seed=2)),
    ("feature_ablation", dict(groups=np.repeat(np.arange(4), 3), fill=0.1)),
])
def test_neuron_target_equals_the_model_cut_at_that_unit(method, kw):
    m = Mlp()
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 12, generator=g, dtype=torch.float64)
    cut = nn.Linear(12, 1).double()
    with torch.no_grad():
        cut.weight.copy_(m.fc1.weight[4:5])
        cut.bias.copy_(m.fc1.bias[4:5])
    e = lumos.explain(m, x, method, target=lumos.Neuron("fc1", 4), **kw)
    ref = lumos.explain(cut, x, method, target=0, **kw)
    assert np.abs(np.asarray(e.values) - np.asarray(ref.values)).max() <= TOL


def test_neuron_target_of_a_predict_function_is_a_clear_error():
    X = np.random.default_rng(0).random((3, 4))
    with pytest.raises(TypeError, match=r"target: Neuron\('fc', 1\) is a unit of a layer, which needs a torch"):
        lumos.explain(lambda a: a, X, "occlusion", window=1, target=lumos.Neuron("fc", 1))


def test_meaningful_perturbation_of_a_neuron_scores_the_raw_activation():
    m = Mlp()
    x = torch.rand(2, 12, dtype=torch.float64)
    e = lumos.explain(m, x, "meaningful_perturbation", target=lumos.Neuron("fc1", 1), n_iter=3,
                      mask_shape=(4,), fill="zero")
    assert e.meta["score"] == "raw"


class TokenModel(nn.Module):
    """A text classifier: token ids (int) with an attention mask (keyword, per sample)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4).double()
        self.out = nn.Linear(4, 2).double()

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask[..., None]
        return self.out(torch.tanh(h.sum(1) / attention_mask.sum(1, keepdim=True)))


def test_token_ids_with_a_per_sample_attention_mask():
    ids = torch.tensor([[3, 5, 7, 1, 0], [2, 9, 4, 0, 0], [8, 8, 6, 5, 2]])
    mask = (ids != 0).double()
    m = TokenModel()
    # a tuple of one input keeps the ids' integer dtype (packed, cast back for the model)
    e = lumos.explain(m, (ids,), "feature_ablation", target=1, fill=0,
                      forward_args={"attention_mask": mask}, batch_size=4)
    with torch.no_grad():
        full = m(ids, mask)[:, 1]
        expected = torch.stack([full - m(ids * (torch.arange(5) != j), mask)[:, 1] for j in range(5)], 1)
    assert e.values[0].dtype == np.float64 and e.values[0].shape == (3, 5)
    assert np.abs(e.values[0] - expected.numpy()).max() <= TOL
