"""The gradient family (saliency, gradient x input, integrated gradients, SmoothGrad / SmoothGrad² /
VarGrad, gradient SHAP) on models of several inputs, with forward arguments, Neuron targets and
attributions to a layer (issue 13).

Every check is a closed form, an axiom (completeness) or an equality with the same function
written another way (on the concatenated inputs, one sample at a time, another batch size), in
float64 with tight tolerances.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lumos
from lumos.core.inputs import Args
from lumos.core.torch_model import through

TOL = 1e-12
N = 5


class Cat(nn.Module):
    """A smooth (tanh) MLP on one flat input of 7 features, with optional extra arguments:
    ``scale`` (per sample, multiplies the output) and ``mask`` (per sample, gates the features)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(7, 6)
        self.fc2 = nn.Linear(6, 5)
        self.fc3 = nn.Linear(5, 3)
        self.double().eval()

    def forward(self, z, scale=None, mask=None):
        if mask is not None:
            z = z * mask
        out = self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(z)))))
        return out if scale is None else out * scale[:, None]


class Two(nn.Module):
    """``Cat`` on the concatenation of ``a`` (3,) and ``b`` (2, 2)."""

    def __init__(self, cat: Cat):
        super().__init__()
        self.net = cat

    def forward(self, a, b, scale=None, mask=None):
        return self.net(torch.cat([a.flatten(1), b.flatten(1)], 1), scale, mask)


class TwoKw(Two):
    """The same with keyword inputs (a dict of inputs)."""

    def forward(self, *, img, tab, scale=None):
        return self.net(torch.cat([img.flatten(1), tab.flatten(1)], 1), scale)


class Linear7(nn.Module):
    """``W [a; b] + c``: closed forms for every method."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(7, 3)
        self.double()

    def forward(self, a, b):
        return self.lin(torch.cat([a.flatten(1), b.flatten(1)], 1))


def _data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, generator=g, dtype=torch.float64)
    b = torch.randn(n, 2, 2, generator=g, dtype=torch.float64)
    return a, b


def _cat(values) -> np.ndarray:
    parts = list(values.values()) if isinstance(values, dict) else list(values)
    return np.concatenate([np.asarray(v).reshape(len(v), -1) for v in parts], 1)


def _flat(a, b):
    return torch.cat([a.flatten(1), b.flatten(1)], 1)


# method -> (params for the two-input model, params for the concatenated one)
def _cases(a, b):
    g = torch.Generator().manual_seed(7)
    bg_a = torch.randn(6, 3, generator=g, dtype=torch.float64)
    bg_b = torch.randn(6, 2, 2, generator=g, dtype=torch.float64)
    base_a, base_b = torch.full((3,), 0.25, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    return {
        "saliency": ({}, {}),
        "gradient_x_input": ({}, {}),
        "integrated_gradients": ({"baselines": (base_a, base_b), "n_steps": 16},
                                 {"baselines": _flat(base_a[None], base_b[None])[0], "n_steps": 16}),
        "integrated_gradients_set": ({"baselines": (bg_a, bg_b), "n_steps": 8},
                                     {"baselines": _flat(bg_a, bg_b), "n_steps": 8}),
        "smoothgrad": ({"n_samples": 6, "noise_level": 0.2}, {"n_samples": 6, "noise_level": 0.2}),
        "smoothgrad_ig": ({"base": "integrated_gradients", "n_steps": 4, "n_samples": 3,
                           "baselines": (base_a, base_b)},
                          {"base": "integrated_gradients", "n_steps": 4, "n_samples": 3,
                           "baselines": _flat(base_a[None], base_b[None])[0]}),
        "smoothgrad_guided": ({"base": "guided_backprop", "n_samples": 3},
                              {"base": "guided_backprop", "n_samples": 3}),
        "smoothgrad_sq": ({"n_samples": 5}, {"n_samples": 5}),
        "vargrad": ({"n_samples": 5}, {"n_samples": 5}),
        "gradient_shap": ({"background": (bg_a, bg_b), "n_samples": 7, "noise_std": 0.1},
                          {"background": _flat(bg_a, bg_b), "n_samples": 7, "noise_std": 0.1}),
    }


_METHOD = {"integrated_gradients_set": "integrated_gradients", "smoothgrad_ig": "smoothgrad",
           "smoothgrad_guided": "smoothgrad"}
CASES = list(_cases(*_data()))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_two_inputs_equal_the_function_on_their_concatenation(case, kind):
    a, b = _data()
    cat = Cat()
    p2, p1 = _cases(a, b)[case]
    if kind == "dict":
        model, inputs = TwoKw(cat), {"img": a, "tab": b}
        p2 = {k: (dict(zip(("img", "tab"), v)) if isinstance(v, tuple) else v) for k, v in p2.items()}
    else:
        model, inputs = Two(cat), (a, b)
    method = _METHOD.get(case, case)
    e2 = lumos.explain(model, inputs, method, target=1, **p2)
    e1 = lumos.explain(cat, _flat(a, b), method, target=1, **p1)
    assert isinstance(e2.values, dict if kind == "dict" else tuple)
    shapes = [np.shape(v) for v in (e2.values.values() if kind == "dict" else e2.values)]
    assert shapes == [(N, 3), (N, 2, 2)]
    np.testing.assert_allclose(_cat(e2.values), e1.values, rtol=0, atol=TOL)
    np.testing.assert_allclose(e2.output, e1.output, rtol=0, atol=TOL)
    if e1.baseline_output is not None:
        np.testing.assert_allclose(e2.baseline_output, e1.baseline_output, rtol=0, atol=TOL)


def test_integrated_gradients_completeness_over_both_inputs():
    a, b = _data()
    cat = Cat()
    model = Two(cat)
    base = (torch.full((3,), -0.5, dtype=torch.float64), torch.full((2, 2), 0.3, dtype=torch.float64))
    e = lumos.explain(model, (a, b), "integrated_gradients", target=2, baselines=base, n_steps=64)
    total = e.values[0].reshape(N, -1).sum(1) + e.values[1].reshape(N, -1).sum(1)
    with torch.no_grad():
        fx = model(a, b)[:, 2].numpy()
        fb = model(base[0].expand(N, 3), base[1].expand(N, 2, 2))[:, 2].numpy()
    np.testing.assert_allclose(total, fx - fb, rtol=0, atol=1e-11)
    np.testing.assert_allclose(e.baseline_output, fb, rtol=0, atol=TOL)
    assert e.meta["completeness_gap"].max() < 1e-11


def test_gradient_shap_closed_form_and_completeness_over_both_inputs_on_a_linear_model():
    a, b = _data()
    model = Linear7()
    g = torch.Generator().manual_seed(5)
    bg = (torch.randn(9, 3, generator=g, dtype=torch.float64),
          torch.randn(9, 2, 2, generator=g, dtype=torch.float64))
    e = lumos.explain(model, (a, b), "gradient_shap", target=0, background=bg, n_samples=40)
    idx = e.meta["background_index"]  # (N, n_samples)
    w = model.lin.weight[0].detach().numpy()
    xb = _flat(*bg).numpy()
    x = _flat(a, b).numpy()
    # phi = w * (x - mean of the drawn background rows), exactly, whatever the path points
    ref = w[None] * (x - xb[idx].mean(1))
    np.testing.assert_allclose(_cat(e.values), ref, rtol=0, atol=TOL)
    # completeness in expectation: the estimate sums to f(x) - mean of f at the drawn rows, and
    # the reported E_b f(b) is the mean over the whole background
    with torch.no_grad():
        fb_all = model(*bg)[:, 0].numpy()
    np.testing.assert_allclose(_cat(e.values).sum(1), e.output - fb_all[idx].mean(1), rtol=0, atol=TOL)
    np.testing.assert_allclose(e.baseline_output, np.full(N, fb_all.mean()), rtol=0, atol=TOL)


def test_blur_baselines_with_several_inputs_are_refused_naming_baselines():
    a, b = _data()
    with pytest.raises(ValueError, match=r"baselines='blur' .* several tensors \['0', '1'\]"):
        lumos.explain(Two(Cat()), (a, b), "integrated_gradients", baselines="blur")
    with pytest.raises(ValueError, match=r"baselines: with several inputs give one value per input"):
        lumos.explain(Two(Cat()), (a, b), "integrated_gradients", baselines=(torch.zeros(3),))


# ---- per-sample forward arguments: every internal row gets its own sample's argument ---------

def _args(n=N):
    g = torch.Generator().manual_seed(11)
    scale = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    mask = (torch.rand(n, 7, generator=g) > 0.3).double()
    return scale, mask


PER_SAMPLE = {
    "saliency": {},
    "gradient_x_input": {},
    "integrated_gradients": {"n_steps": 12, "baselines": 0.1},
    "integrated_gradients_random": {"n_steps": 6, "baselines": "uniform", "n_baselines": 2},
    "smoothgrad": {"n_samples": 7, "noise_level": 0.3},
    "smoothgrad_ig": {"base": "integrated_gradients", "n_steps": 5, "n_samples": 4},
    "smoothgrad_guided": {"base": "guided_backprop", "n_samples": 4},
    "vargrad": {"n_samples": 6},
    "gradient_shap": {"n_samples": 9, "noise_std": 0.2},
}
_PS_METHOD = {"integrated_gradients_random": "integrated_gradients", "smoothgrad_ig": "smoothgrad",
              "smoothgrad_guided": "smoothgrad"}


@pytest.mark.parametrize("case", list(PER_SAMPLE))
def test_per_sample_forward_args_match_a_loop_over_samples(case):
    """IG steps, SmoothGrad noise draws, gradient-SHAP draws: each row gets its sample's argument
    (checked against each sample explained alone with its own argument, same seed), whatever the
    batch size."""
    cat = Cat()
    x = _flat(*_data())
    scale, mask = _args()
    method = _PS_METHOD.get(case, case)
    params = dict(PER_SAMPLE[case])
    if method == "gradient_shap":
        params["background"] = torch.randn(4, 7, generator=torch.Generator().manual_seed(2),
                                           dtype=torch.float64)
    fa = Args(scale, mask=mask)
    runs = [lumos.explain(cat, x, method, target=0, forward_args=fa, batch_size=bs, **params)
            for bs in (None, 1, 3)]
    alone = np.concatenate([
        lumos.explain(cat, x[i:i + 1], method, target=0,
                      forward_args=Args(scale[i:i + 1], mask=mask[i:i + 1]), **params).values
        for i in range(N)])
    for e in runs:
        np.testing.assert_allclose(e.values, alone, rtol=0, atol=TOL)
    # and the argument matters: without it the values differ
    plain = lumos.explain(cat, x, method, target=0, **params).values
    assert np.abs(plain - alone).max() > 0.05 * np.abs(alone).max()


def test_per_sample_forward_args_with_several_inputs_and_baseline_outputs():
    """Two inputs plus a per-sample keyword argument: IG's baseline output is each sample's own
    (the model depends on the sample's argument), so completeness holds per sample."""
    a, b = _data()
    cat = Cat()
    scale, _ = _args()
    e = lumos.explain(Two(cat), (a, b), "integrated_gradients", target=1, n_steps=64,
                      forward_args={"scale": scale}, baselines=(0.2, -0.1), batch_size=5)
    with torch.no_grad():
        x0 = torch.cat([torch.full((N, 3), 0.2, dtype=torch.float64),
                        torch.full((N, 4), -0.1, dtype=torch.float64)], 1)
        fb = cat(x0, scale)[:, 1].numpy()
        fx = cat(_flat(a, b), scale)[:, 1].numpy()
    np.testing.assert_allclose(e.baseline_output, fb, rtol=0, atol=TOL)
    np.testing.assert_allclose(_cat(e.values).sum(1), fx - fb, rtol=0, atol=1e-11)


# ---- attribution to a layer and Neuron targets ----------------------------------------------

@pytest.mark.parametrize("side,layer", [("output", "fc1"), ("input", "fc2"), ("output", "fc2")])
def test_layer_integrated_gradients_completeness_in_the_layer_space(side, layer):
    """sum(values) = f(x) - f(baseline activation), the activation spliced in at the layer."""
    cat = Cat()
    x = _flat(*_data())
    e = lumos.explain(cat, x, "integrated_gradients", target=2, at=layer, layer_side=side,
                      baselines=0.1, n_steps=64)
    with torch.no_grad():
        if (layer, side) == ("fc1", "output"):
            act = cat.fc1(x)
            rest = lambda h: cat.fc3(torch.tanh(cat.fc2(torch.tanh(h))))  # noqa: E731
        elif (layer, side) == ("fc2", "input"):
            act = torch.tanh(cat.fc1(x))
            rest = lambda h: cat.fc3(torch.tanh(cat.fc2(h)))  # noqa: E731
        else:
            act = cat.fc2(torch.tanh(cat.fc1(x)))
            rest = lambda h: cat.fc3(torch.tanh(h))  # noqa: E731
        fb = rest(torch.full_like(act, 0.1))[:, 2].numpy()
        fx = rest(act)[:, 2].numpy()
    assert e.values.shape == tuple(act.shape)
    np.testing.assert_allclose(e.inputs, act.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(e.baseline_output, fb, rtol=0, atol=TOL)
    np.testing.assert_allclose(e.values.sum(1), fx - fb, rtol=0, atol=1e-11)
    assert e.meta["at"] == layer and e.meta["layer_side"] == side


def test_layer_integrated_gradients_with_captums_convention_through_the_layer():
    """baselines=through(model, at, x0): input baselines mapped through the layer, so the values
    sum to f(x) - f(x0) (Captum's LayerIntegratedGradients convention)."""
    a, b = _data()
    cat = Cat()
    model = Two(cat)
    x0 = torch.full((N, 7), -0.2, dtype=torch.float64)
    act0 = through(cat, "fc1", x0)
    e = lumos.explain(model, (a, b), "integrated_gradients", target=0, at="net.fc1",
                      baselines=act0, n_steps=64)
    with torch.no_grad():
        ref = cat(_flat(a, b))[:, 0] - cat(x0)[:, 0]
    np.testing.assert_allclose(e.values.sum(1), ref.numpy(), rtol=0, atol=1e-11)


def test_layer_attribution_with_per_sample_forward_args_and_smoothgrad_on_the_activation():
    cat = Cat()
    x = _flat(*_data())
    scale, mask = _args()
    for method, params in (("integrated_gradients", {"n_steps": 6}),
                           ("smoothgrad", {"n_samples": 4}), ("gradient_x_input", {}),
                           ("smoothgrad", {"n_samples": 3, "base": "guided_backprop"})):
        e = lumos.explain(cat, x, method, target=1, at="fc2", forward_args=Args(scale, mask=mask),
                          batch_size=3, **params)
        alone = np.concatenate([
            lumos.explain(cat, x[i:i + 1], method, target=1, at="fc2",
                          forward_args=Args(scale[i:i + 1], mask=mask[i:i + 1]), **params).values
            for i in range(N)])
        np.testing.assert_allclose(e.values, alone, rtol=0, atol=TOL)


@pytest.mark.parametrize("method", ["saliency", "gradient_x_input", "integrated_gradients",
                                    "smoothgrad", "gradient_shap"])
def test_neuron_target_of_a_linear_unit_closed_forms_with_two_inputs(method):
    """The unit ``fc1[u]`` is linear in the inputs: gradient = W_u, IG = W_u (x - x0),
    gradient x input = W_u x, SmoothGrad = W_u, gradient SHAP = W_u (x - mean drawn rows)."""
    a, b = _data()
    cat = Cat()
    model = Two(cat)
    u = 4
    w = cat.fc1.weight[u].detach().numpy()
    x = _flat(a, b).numpy()
    params = {}
    if method == "gradient_shap":
        bg = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, 2, dtype=torch.float64))
        params = {"background": bg, "n_samples": 6}
    if method == "integrated_gradients":
        params = {"baselines": (0.5, 0.0), "n_steps": 3}
    e = lumos.explain(model, (a, b), method, target=lumos.Neuron("net.fc1", u), **params)
    ref = {"saliency": np.broadcast_to(w, x.shape), "smoothgrad": np.broadcast_to(w, x.shape),
           "gradient_x_input": w * x,
           "integrated_gradients": w * (x - np.r_[[0.5] * 3, [0.0] * 4])}.get(method)
    if method == "gradient_shap":
        ref = w * (x - _flat(*params["background"]).numpy()[e.meta["background_index"]].mean(1))
    np.testing.assert_allclose(_cat(e.values), ref, rtol=0, atol=TOL)
    with torch.no_grad():
        np.testing.assert_allclose(e.output, cat.fc1(_flat(a, b))[:, u].numpy(), rtol=0, atol=TOL)
    assert e.meta["neuron"] == "Neuron('net.fc1', 4)"


def test_neuron_target_with_attribution_to_an_earlier_layer():
    """IG of unit fc2[u] w.r.t. fc2's input (layer_side='input'): the unit is linear there, so
    IG = W2_u (h - h0)."""
    cat = Cat()
    x = _flat(*_data())
    e = lumos.explain(cat, x, "integrated_gradients", target=lumos.Neuron("fc2", 1), at="fc2",
                      layer_side="input", baselines="zero", n_steps=2)
    with torch.no_grad():
        h = torch.tanh(cat.fc1(x)).numpy()
    np.testing.assert_allclose(e.values, cat.fc2.weight[1].detach().numpy() * h, rtol=0, atol=TOL)


# ---- gradient SHAP: a sample's values do not depend on its place in the batch ----------------

def test_gradient_shap_sample_alone_equals_sample_in_a_batch_in_any_order():
    cat = Cat()
    x = _flat(*_data())
    bg = torch.randn(6, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    params = dict(target=0, background=bg, n_samples=8, noise_std=0.3, seed=3)
    batch = lumos.explain(cat, x, "gradient_shap", **params)
    perm = torch.tensor([3, 0, 4, 2, 1])
    shuffled = lumos.explain(cat, x[perm], "gradient_shap", **params)
    np.testing.assert_allclose(shuffled.values, batch.values[perm.numpy()], rtol=0, atol=TOL)
    for i in (0, 2, 4):
        alone = lumos.explain(cat, x[i:i + 1], "gradient_shap", **params)
        np.testing.assert_allclose(alone.values[0], batch.values[i], rtol=0, atol=TOL)
        np.testing.assert_array_equal(alone.meta["background_index"][0], batch.meta["background_index"][i])
    # the first draws stay the same when more are made
    more = lumos.explain(cat, x, "gradient_shap", **{**params, "n_samples": 12})
    np.testing.assert_array_equal(more.meta["background_index"][:, :8], batch.meta["background_index"])
