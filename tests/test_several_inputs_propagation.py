"""Propagation methods (guided backprop, DeconvNet, LRP, DeepLIFT, DeepSHAP) on models of several
inputs, with forward arguments, Neuron targets and attributions to a layer (issue 13).

Every check is a closed form, an axiom (conservation, summation-to-delta) or an equality with the
same function written another way (on the concatenated inputs, one sample at a time), in float64
with tight tolerances.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lumos
from lumos.core.torch_model import through

TOL = 1e-12
N = 5


class Cat(nn.Module):
    """A ReLU MLP on one flat input of 7 features."""

    def __init__(self, bias: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(7, 6, bias=bias)
        self.fc2 = nn.Linear(6, 5, bias=bias)
        self.fc3 = nn.Linear(5, 3, bias=bias)

    def forward(self, z):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(z)))))


class Two(nn.Module):
    """The same function of two inputs ``a`` (3,) and ``b`` (2, 2): ``Cat`` on their
    concatenation."""

    def __init__(self, cat: Cat):
        super().__init__()
        self.net = cat

    def forward(self, a, b):
        return self.net(torch.cat([a.flatten(1), b.flatten(1)], 1))


class TwoKw(Two):
    """The same, taking keyword inputs (a dict of inputs)."""

    def forward(self, *, img, tab):
        return self.net(torch.cat([img.flatten(1), tab.flatten(1)], 1))


class Branches(nn.Module):
    """``relu(A a + B b)`` as two linear branches and an addition, bias-free: LRP-0 on it is the
    same as on ``relu(W [a; b])`` with ``W = [A B]``."""

    def __init__(self, cat: Cat):
        super().__init__()
        w = cat.fc1.weight.detach()
        self.la = nn.Linear(3, 6, bias=False)
        self.lb = nn.Linear(4, 6, bias=False)
        with torch.no_grad():
            self.la.weight.copy_(w[:, :3])
            self.lb.weight.copy_(w[:, 3:])
        self.fc2, self.fc3 = cat.fc2, cat.fc3

    def forward(self, a, b):
        h = torch.relu(self.la(a) + self.lb(b.flatten(1)))
        return self.fc3(torch.relu(self.fc2(h)))


def _data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 3, generator=g, dtype=torch.float64)
    b = torch.randn(n, 2, 2, generator=g, dtype=torch.float64)
    return a, b


def _cat(a, b):
    return torch.cat([a.flatten(1), b.flatten(1)], 1)


def _flat(values):
    parts = values.values() if isinstance(values, dict) else values
    return np.concatenate([np.asarray(v).reshape(len(v), -1) for v in parts], 1)


# the methods that take several inputs, with per-input parameters given per input (``two``) and
# concatenated (``one``)
def _params(method, a, b):
    if method == "deeplift":
        a0, b0 = 0.3 * a[:1] + 0.1, -0.2 * b[:1]
        return {"baselines": (a0, b0)}, {"baselines": _cat(a0, b0)}
    if method == "deep_shap":
        ga, gb = 0.5 * a[:3].flip(0), 0.25 * b[:3]
        return {"background": (ga, gb)}, {"background": _cat(ga, gb)}
    if method == "lrp_zero":
        return {"composite": "zero"}, {"composite": "zero"}
    if method == "lrp":
        return {"composite": "epsilon", "epsilon": 0.01}, {"composite": "epsilon", "epsilon": 0.01}
    return {}, {}


METHODS = ["guided_backprop", "deconvnet", "lrp", "lrp_zero", "deeplift", "deep_shap"]


def _name(method):
    return "lrp" if method.startswith("lrp") else method


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_two_inputs_equal_the_function_on_their_concatenation(method, kind):
    cat = Cat(bias=True).double().eval()
    a, b = _data()
    two_kw, one_kw = _params(method, a, b)
    if kind == "tuple":
        model, inputs = Two(cat), (a, b)
    else:
        model, inputs = TwoKw(cat), {"img": a, "tab": b}
        for key in two_kw:  # per-input parameters as a dict too
            if isinstance(two_kw[key], tuple):
                two_kw[key] = dict(zip(("img", "tab"), two_kw[key]))
    e2 = lumos.explain(model, inputs, method=_name(method), target=1, batch_size=2, **two_kw)
    e1 = lumos.explain(cat, _cat(a, b), method=_name(method), target=1, **one_kw)
    assert e2.several and isinstance(e2.values, tuple if kind == "tuple" else dict)
    if kind == "dict":
        assert list(e2.values) == ["img", "tab"]
    parts = list(e2.values.values()) if kind == "dict" else list(e2.values)
    assert parts[0].shape == (N, 3) and parts[1].shape == (N, 2, 2)
    np.testing.assert_allclose(_flat(e2.values), e1.values, rtol=0, atol=TOL)
    np.testing.assert_allclose(e2.output, e1.output, rtol=0, atol=TOL)
    # the unpacking of the inputs is lumos's, not the model's: the rules saw the same operations
    if method.startswith("lrp"):
        assert [k.split(":", 1)[1] for k in e2.meta["rules"]] == \
            [k.split(":", 1)[1] for k in e1.meta["rules"]]
    if method in ("guided_backprop", "deconvnet"):
        assert e2.meta["n_relu"] == e1.meta["n_relu"] == 2 and e2.meta["plain_ops"] == []


def test_deeplift_and_deep_shap_sum_to_delta_over_both_inputs():
    cat = Cat(bias=True).double().eval()
    a, b = _data()
    model = Two(cat)
    for method in ("deeplift", "deep_shap"):
        kw, _ = _params(method, a, b)
        e = lumos.explain(model, (a, b), method=method, target=2, batch_size=3, **kw)
        total = e.values[0].sum(1) + e.values[1].sum((1, 2))
        # f(x) - f(baseline) from the model itself, not from the explanation
        x = model(a, b)[:, 2].detach().numpy()
        if method == "deeplift":
            ref = model(*kw["baselines"])[:, 2].detach().numpy()
        else:
            ref = model(*kw["background"])[:, 2].detach().numpy().mean()
        np.testing.assert_allclose(total, x - ref, rtol=0, atol=1e-12)
        assert np.abs(e.completeness_gap).max() < 1e-12
        # both inputs carry part of it (neither is silently dropped)
        assert np.abs(e.values[0]).sum() > 0.1 and np.abs(e.values[1]).sum() > 0.1


def test_lrp_zero_conserves_relevance_over_both_inputs_and_branches_equal_the_concatenation():
    cat = Cat(bias=False).double().eval()
    a, b = _data()
    x = _cat(a, b)
    e_cat = lumos.explain(cat, x, method="lrp", composite="zero", target=0)
    for model in (Two(cat), Branches(cat).double()):
        e = lumos.explain(model, (a, b), method="lrp", composite="zero", target=0, batch_size=2)
        total = e.values[0].sum(1) + e.values[1].sum((1, 2))
        logit = cat(x)[:, 0].detach().numpy()
        np.testing.assert_allclose(total, logit, rtol=0, atol=1e-12)  # conservation
        np.testing.assert_allclose(e.meta["conservation_gap"], 0, atol=1e-12)
        np.testing.assert_allclose(_flat(e.values), e_cat.values, rtol=0, atol=1e-12)
    # LRP-0 on a bias-free ReLU net is gradient x input, over both inputs
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cat(xg)[:, 0].sum(), xg)
    np.testing.assert_allclose(e_cat.values, (g * x).numpy(), rtol=0, atol=1e-12)


def test_an_integer_input_is_unpacked_by_lumos_not_seen_by_the_rules():
    """Packing casts an integer input back with round() and .to(long): lumos's operations, not
    the model's. DeepLIFT (strict: unknown operations raise) must not see them."""

    class WithIds(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = nn.Linear(3, 4)
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, a, ids):
            return self.out(torch.relu(self.fc(a) + self.emb(ids).sum(1)))

    m = WithIds().double().eval()
    a, _ = _data()
    ids = torch.randint(0, 10, (N, 3), generator=torch.Generator().manual_seed(0))
    a0 = torch.zeros(1, 3, dtype=torch.float64)
    e = lumos.explain(m, (a, ids), method="deeplift", target=1, baselines=(a0, ids), batch_size=2)
    assert np.all(e.values[1] == 0)  # no gradient path through an integer input
    ref = m(a, ids)[:, 1] - m(a0.expand(N, 3), ids)[:, 1]
    np.testing.assert_allclose(e.values[0].sum(1), ref.detach().numpy(), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- forward arguments
class Scaled(nn.Module):
    """A model with extra, per-sample arguments used inside forward: a mask on the input and a
    scale of the hidden layer (positional), and an optional keyword shift."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1 = nn.Linear(7, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x, mask, scale, shift=None):
        h = torch.relu(self.fc1(x * mask)) * scale[:, None]
        if shift is not None:
            h = torch.relu(h + shift)
        return self.fc2(h)


def _scaled_data(n=N):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 7, generator=g, dtype=torch.float64)
    mask = (torch.rand(n, 7, generator=g) > 0.3).double()
    scale = 0.5 + torch.rand(n, generator=g, dtype=torch.float64) * 2
    shift = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x, mask, scale, shift


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_forward_args_follow_their_sample_across_chunks(method):
    m = Scaled().double().eval()
    x, mask, scale, shift = _scaled_data()
    extra = {}
    if method == "deeplift":
        extra = {"baselines": 0.1 * x[:1]}
    elif method == "deep_shap":
        extra = {"background": 0.3 * x[1:4]}
    elif method.startswith("lrp"):
        extra = _params(method, x, x)[0]
    name = _name(method)
    args = lumos.Args(mask, scale, shift=shift)
    whole = [lumos.explain(m, x, method=name, target=2, forward_args=args, batch_size=bs, **extra)
             for bs in (2, 3, 64)]
    for e in whole[1:]:  # independent of batch_size
        np.testing.assert_allclose(e.values, whole[0].values, rtol=0, atol=TOL)
    for i in range(N):  # each sample alone, with its own arguments
        one = lumos.explain(m, x[i:i + 1], method=name, target=2,
                            forward_args=lumos.Args(mask[i:i + 1], scale[i:i + 1],
                                                    shift=shift[i:i + 1]), **extra)
        np.testing.assert_allclose(whole[0].values[i], one.values[0], rtol=0, atol=TOL)
        np.testing.assert_allclose(whole[0].output[i], one.output[0], rtol=0, atol=TOL)
    # the arguments matter (a test that would pass with them ignored proves nothing)
    other = lumos.explain(m, x, method=name, target=2,
                          forward_args=lumos.Args(mask, scale.flip(0), shift=shift), **extra)
    assert np.abs(other.values - whole[0].values).max() > 1e-3
    if method in ("deeplift", "deep_shap"):  # the references' pass used each sample's arguments
        assert np.abs(whole[0].completeness_gap).max() < 1e-12


def test_forward_args_with_several_inputs_and_a_shared_argument():
    cat = Cat(bias=True).double().eval()

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = cat

        def forward(self, a, b, gate, table):
            return self.net(torch.cat([a.flatten(1), b.flatten(1)], 1) * gate + table.mean(0))

    a, b = _data()
    gate = torch.rand(N, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # batch-long, but one table for every row (expanded per row, its mean would change)
    table = torch.randn(N, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = Gated()
    e = lumos.explain(m, (a, b), method="deeplift", target=0, batch_size=2,
                      forward_args=(gate, lumos.Shared(table)))
    for i in range(N):
        one = lumos.explain(m, (a[i:i + 1], b[i:i + 1]), method="deeplift", target=0,
                            forward_args=(gate[i:i + 1], lumos.Shared(table)))
        np.testing.assert_allclose(_flat(e.values)[i], _flat(one.values)[0], rtol=0, atol=TOL)
    assert np.abs(e.completeness_gap).max() < 1e-12


# --------------------------------------------------------------------------- Neuron targets
def test_neuron_target_on_a_linear_unit_closed_forms():
    cat = Cat(bias=False).double().eval()
    a, b = _data()
    x = _cat(a, b)
    w = cat.fc1.weight.detach()
    for j in range(6):
        e = lumos.explain(cat, x, method="lrp", composite="zero", target=lumos.Neuron("fc1", j))
        np.testing.assert_allclose(e.values, (w[j] * x).numpy(), rtol=0, atol=TOL)  # w ⊙ x
        assert e.meta["neuron"] == f"Neuron('fc1', {j})"
        g = lumos.explain(cat, x, method="guided_backprop", target=lumos.Neuron("fc1", j))
        np.testing.assert_allclose(g.values, w[j].expand(N, 7).numpy(), rtol=0, atol=TOL)
    # DeepLIFT of a linear unit is w ⊙ (x − x0), biases or not
    biased = Cat(bias=True).double().eval()
    wb = biased.fc1.weight.detach()
    x0 = 0.5 * x.flip(0)
    for j in (0, 4):
        e = lumos.explain(biased, x, method="deeplift", target=lumos.Neuron("fc1", j),
                          baselines=x0, batch_size=2)
        np.testing.assert_allclose(e.values, (wb[j] * (x - x0)).numpy(), rtol=0, atol=TOL)
    # a unit after a ReLU: summation-to-delta with the unit's own values
    e = lumos.explain(biased, x, method="deeplift", target=lumos.Neuron("fc2", (3,)),
                      baselines=x0)
    f = torch.relu(biased.fc1(x))
    f0 = torch.relu(biased.fc1(x0))
    ref = (biased.fc2(f) - biased.fc2(f0))[:, 3].detach().numpy()
    np.testing.assert_allclose(e.values.sum(1), ref, rtol=0, atol=TOL)


def test_neuron_target_with_several_inputs():
    cat = Cat(bias=False).double().eval()
    a, b = _data()
    w = cat.fc1.weight.detach()
    e = lumos.explain(Two(cat), (a, b), method="lrp", composite="zero",
                      target=lumos.Neuron("net.fc1", 2))
    np.testing.assert_allclose(e.values[0], (w[2, :3] * a).numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(e.values[1], (w[2, 3:] * b.flatten(1)).reshape(N, 2, 2).numpy(),
                               rtol=0, atol=TOL)


# --------------------------------------------------------------------------- at= (layer space)
def _grad_wrt(fn, z):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(z).sum(), z)
    return g


@pytest.mark.parametrize("at,side", [("fc1", "output"), ("fc2", "input"), ("fc2", "output")])
def test_lrp_at_a_layer_conserves_in_the_layer_space(at, side):
    cat = Cat(bias=False).double().eval()
    a, b = _data()
    x = _cat(a, b)
    e0 = lumos.explain(cat, x, method="lrp", composite="zero", target=1, at=at, layer_side=side,
                       batch_size=2)
    act = {("fc1", "output"): cat.fc1(x), ("fc2", "input"): torch.relu(cat.fc1(x)),
           ("fc2", "output"): cat.fc2(torch.relu(cat.fc1(x)))}[(at, side)].detach()
    rest = {("fc1", "output"): lambda z: cat.fc3(torch.relu(cat.fc2(torch.relu(z)))),
            ("fc2", "input"): lambda z: cat.fc3(torch.relu(cat.fc2(z))),
            ("fc2", "output"): lambda z: cat.fc3(torch.relu(z))}[(at, side)]
    assert e0.values.shape == act.shape and e0.meta["at"] == at and e0.meta["layer_side"] == side
    np.testing.assert_allclose(e0.inputs, act.numpy(), rtol=0, atol=TOL)
    logit = cat(x)[:, 1].detach().numpy()
    np.testing.assert_allclose(e0.values.sum(1), logit, rtol=0, atol=TOL)  # conservation
    # LRP-0 on the bias-free ReLU rest of the net = gradient x activation
    g = _grad_wrt(lambda z: rest(z)[:, 1], act)
    np.testing.assert_allclose(e0.values, (g * act).numpy(), rtol=0, atol=TOL)
    # LRP-ε conserves up to what ε absorbs
    ee = lumos.explain(cat, x, method="lrp", composite="epsilon", epsilon=1e-9, target=1, at=at,
                       layer_side=side)
    np.testing.assert_allclose(ee.values.sum(1), logit, rtol=0, atol=1e-7)


def test_deeplift_at_a_layer_sums_to_delta_in_the_layer_space():
    cat = Cat(bias=True).double().eval()
    a, b = _data()
    x = _cat(a, b)
    h = torch.relu(cat.fc1(x)).detach()
    e = lumos.explain(cat, x, method="deeplift", target=0, at="fc2", layer_side="input",
                      batch_size=2)
    rest = cat.fc3(torch.relu(cat.fc2(h)))[:, 0]
    rest0 = cat.fc3(torch.relu(cat.fc2(torch.zeros_like(h))))[:, 0]  # the zero activation
    np.testing.assert_allclose(e.values.sum(1), (rest - rest0).detach().numpy(), rtol=0, atol=TOL)
    # Captum's convention: input baselines mapped through the layer
    x0 = 0.2 * x[:1]
    e = lumos.explain(cat, x, method="deeplift", target=0, at="fc2", layer_side="input",
                      baselines=through(cat, "fc2", x0, layer_side="input"))
    ref = (cat(x) - cat(x0))[:, 0].detach().numpy()
    np.testing.assert_allclose(e.values.sum(1), ref, rtol=0, atol=TOL)


def test_deeplift_at_a_layer_with_a_skip_from_before_it():
    """The layers before the splice run on each sample's input: the reference's pass must use
    the same sample's skip activation (recording it once for all samples would mix them)."""

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.fc1 = nn.Linear(7, 6)
            self.fc2 = nn.Linear(6, 6)
            self.fc3 = nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return self.fc3(torch.relu(self.fc2(h) + h))

    m = Skip().double().eval()
    a, b = _data()
    x = _cat(a, b)
    for method, kw in (("deeplift", {}), ("deep_shap", {"background": torch.rand(
            3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)})):
        e = lumos.explain(m, x, method=method, target=1, at="fc2", batch_size=2, **kw)
        h = torch.relu(m.fc1(x))
        refs = torch.zeros(1, 6, dtype=torch.float64) if not kw else kw["background"]
        f = m.fc3(torch.relu(m.fc2(h) + h))[:, 1]
        f0 = torch.stack([m.fc3(torch.relu(r + h))[:, 1] for r in refs]).mean(0)
        np.testing.assert_allclose(e.values.sum(1), (f - f0).detach().numpy(), rtol=0, atol=TOL)
        np.testing.assert_allclose(e.baseline_output, f0.detach().numpy(), rtol=0, atol=TOL)


def test_at_with_several_inputs_and_batch_size_independence():
    cat = Cat(bias=False).double().eval()
    a, b = _data()
    out = [lumos.explain(Two(cat), (a, b), method=m, target=1, at="net.fc2", batch_size=bs)
           for m in ("lrp", "guided_backprop") for bs in (1, 64)]
    np.testing.assert_allclose(out[0].values, out[1].values, rtol=0, atol=TOL)
    np.testing.assert_allclose(out[2].values, out[3].values, rtol=0, atol=TOL)
    assert out[0].values.shape == (N, 5) and not out[0].several


def test_clear_errors():
    cat = Cat().double().eval()
    a, b = _data()
    with pytest.raises(ValueError, match="baselines: with several inputs give one value per input"):
        lumos.explain(Two(cat), (a, b), method="deeplift", baselines=(a[:1],))
    with pytest.raises(ValueError, match="baselines: one value per input was given, but "
                                         "attributions go to layer 'net.fc1'"):
        lumos.explain(Two(cat), (a, b), method="deeplift", at="net.fc1",
                      baselines=(a[:1], b[:1]))
    with pytest.raises(ValueError, match="background must be samples"):
        lumos.explain(Two(cat), (a, b), method="deep_shap", background=0.5)
    with pytest.raises(ValueError, match="inputs: every input needs the same number of samples"):
        lumos.explain(Two(cat), (a, b[:2]), method="lrp")
