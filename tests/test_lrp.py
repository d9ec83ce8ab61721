"""LRP: each rule against a naive float64 matrix version, conservation, canonisation, composites."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from conftest import assert_same_state, model_state
from lumos.attribution.lrp import lrp
from lumos.rules import UnsupportedOperationError
from lumos.rules.lrp import AlphaBeta, Epsilon, Flat, Gamma, Pass, WSquare, ZBox, Zero, ZPlus

STAB = 1e-6


# ------------------------------------------------------------------ naive matrix reference
def _matrix(fn, in_shape):
    """The matrix M of a linear map (float64): z = M x, from the images of the unit vectors."""
    n_in = int(np.prod(in_shape))
    eye = torch.eye(n_in, dtype=torch.float64).reshape((n_in,) + tuple(in_shape))
    with torch.no_grad():
        return fn(eye).reshape(n_in, -1).T.numpy()


def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def naive_rule(rule, x, M, b, R, Mones, low=None, high=None):
    """Relevance of the inputs by the rule's formula, written with explicit contributions.

    x (n_in,), M (n_out, n_in), b (n_out,), R (n_out,): one sample. Z[k, j] = x_j M_kj.
    """
    Z = M * x[None, :]
    z = Z.sum(1) + b
    if isinstance(rule, Zero):
        s = np.where(z == 0, 0.0, R / np.where(z == 0, 1.0, z))
        return (Z * s[:, None]).sum(0)
    if isinstance(rule, Epsilon):
        return (Z / _stab(z, rule.epsilon)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, Gamma):
        Mg = M + rule.gamma * np.maximum(M, 0)
        Zg = Mg * x[None, :]
        zg = Zg.sum(1) + b + rule.gamma * np.maximum(b, 0)
        return (Zg / _stab(zg, STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, AlphaBeta):
        Zp, Zn = np.maximum(Z, 0), np.minimum(Z, 0)
        zp = Zp.sum(1) + np.maximum(b, 0)
        zn = Zn.sum(1) + np.minimum(b, 0)
        return (rule.alpha * Zp / _stab(zp, STAB)[:, None] * R[:, None]
                - rule.beta * Zn / _stab(zn, STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, ZBox):
        Zb = Z - low[None, :] * np.maximum(M, 0) - high[None, :] * np.minimum(M, 0)
        zb = Zb.sum(1) + b
        return (Zb / _stab(zb, STAB)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, WSquare):
        W2 = M * M
        return (W2 / _stab(W2.sum(1), rule.stabilizer)[:, None] * R[:, None]).sum(0)
    if isinstance(rule, Flat):
        return (Mones / _stab(Mones.sum(1), rule.stabilizer)[:, None] * R[:, None]).sum(0)
    raise AssertionError(rule)


RULES = [Zero(), Epsilon(0.1), Gamma(0.5), ZPlus(), AlphaBeta(2, 1), ZBox(-1.5, 2.0), ZBox(),
         Flat(), WSquare()]


class MatmulLayer(nn.Module):
    """``x @ W`` with a constant matrix, no bias (a functional dense layer)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.register_buffer("W", torch.randn(n_in, n_out))
        self.bias = None

    def forward(self, x):
        return x @ self.W


def _layer(kind, bias, seed):
    torch.manual_seed(seed)
    if kind == "dense":
        return nn.Linear(6, 4, bias=bias), (6,), "linear"
    if kind == "conv1d":
        return nn.Conv1d(2, 3, 3, stride=2, padding=1, bias=bias), (2, 7), "conv"
    if kind == "conv2d":
        return nn.Conv2d(2, 3, 3, padding=1, dilation=1, bias=bias), (2, 4, 4), "conv"
    if kind == "conv2d_groups":
        return nn.Conv2d(4, 4, 2, stride=2, groups=2, bias=bias), (4, 4, 4), "conv"
    if kind == "convT1d":
        return nn.ConvTranspose1d(2, 4, 3, stride=2, padding=1, bias=bias), (2, 5), "conv_transpose"
    if kind == "matmul":
        return MatmulLayer(5, 3), (2, 5), "matmul"
    if kind == "avgpool":
        return nn.AvgPool2d(2, stride=1, padding=1), (2, 3, 3), "avg_pool"
    if kind == "adaptive":
        return nn.AdaptiveAvgPool1d(3), (2, 7), "avg_pool"
    raise AssertionError(kind)


LAYERS = [(k, b) for k in ("dense", "conv1d", "conv2d", "conv2d_groups", "convT1d")
          for b in (True, False)] + [("matmul", False), ("avgpool", False), ("adaptive", False)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__ + str(
    getattr(r, "alpha", "")) + ("_default" if getattr(r, "low", 0) is None else ""))
@pytest.mark.parametrize("kind,bias", LAYERS)
def test_rule_against_naive_matrix_version(rule, kind, bias):
    for seed in range(3):
        layer, in_shape, op_kind = _layer(kind, bias, seed)
        layer = layer.eval().double()  # lumos runs in float64 too: the comparison can be tight
        g = torch.Generator().manual_seed(100 + seed)
        x = torch.randn((3,) + in_shape, generator=g, dtype=torch.float64).clamp(-1.5, 2.0)
        if seed == 2:
            x = x.abs()  # non-negative inputs (after a ReLU) take a faster path in αβ
        with torch.no_grad():
            if bias:
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.5)
            out_shape = layer(x[:1]).shape[1:]
        c = torch.randn(out_shape, generator=g, dtype=torch.float64)  # explained: sum_k c_k z_k

        def target(out):
            return (out * c).reshape(len(out), -1).sum(1)

        before = model_state(layer)
        got = lrp(layer, x, target, composite={op_kind: rule}).values
        assert_same_state(before, model_state(layer))

        l64 = layer
        M = _matrix(lambda e: _nobias(l64, e), in_shape)
        Mones = _matrix(lambda e: _nobias(_ones_like(l64), e), in_shape) if kind not in (
            "avgpool", "adaptive") else (M != 0).astype(float)
        b = (np.broadcast_to(l64.bias.detach().numpy()[:, None], (len(l64.bias), int(
            np.prod(out_shape[1:])) if len(out_shape) > 1 else 1)).reshape(-1)
             if bias else np.zeros(M.shape[0]))
        for i in range(len(x)):
            xi = x[i].numpy().reshape(-1)
            zi = M @ xi + b
            Ri = zi * c.numpy().reshape(-1)
            if isinstance(rule, ZBox) and rule.low is None:  # default: each sample's range
                lo, hi = np.full_like(xi, xi.min()), np.full_like(xi, xi.max())
            else:
                lo, hi = np.full_like(xi, -1.5), np.full_like(xi, 2.0)
            ref = naive_rule(rule, xi, M, b, Ri, Mones, lo, hi)
            np.testing.assert_allclose(got[i].reshape(-1), ref, rtol=1e-9,
                                       atol=1e-10 * np.abs(ref).max() + 1e-12,
                                       err_msg=f"{rule} {kind} seed {seed}")


def _nobias(layer, e):
    if isinstance(layer, nn.Linear):
        return F.linear(e, layer.weight)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return layer._conv_forward(e, layer.weight, None)
    if isinstance(layer, nn.ConvTranspose1d):
        return F.conv_transpose1d(e, layer.weight, None, layer.stride, layer.padding)
    return layer(e)


def _ones_like(layer):
    import copy

    new = copy.deepcopy(layer)
    with torch.no_grad():
        (new.W if isinstance(new, MatmulLayer) else new.weight).fill_(1.0)
    return new


# ------------------------------------------------------------------ conservation
class ResNetish(nn.Module):
    """stem conv-bn-relu, one residual block (reused ReLU module + F.relu), pooling, head."""

    def __init__(self, bias=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.bn0 = nn.BatchNorm2d(6)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        x = self.relu(self.bn0(self.stem(x)))
        h = self.relu(self.bn1(self.c1(x)))
        h = self.bn2(self.c2(h))
        x = F.relu(h + x)
        x = self.pool(x)
        return self.head(x.mean((2, 3)))


def _resnet(bias, seed=0, zero_shift=True):
    torch.manual_seed(seed)
    m = ResNetish(bias)
    with torch.no_grad():
        for bn in (m.bn0, m.bn1, m.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.running_var.uniform_(0.5, 2.0)
            if zero_shift:
                bn.bias.zero_()
            else:
                bn.bias.normal_(0, 0.2)
                bn.running_mean.normal_(0, 0.2)
    return m.eval()


def test_conservation_every_layer_without_biases():
    model = _resnet(bias=False).double()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = model_state(model)
    e = lrp(model, x, target=[0, 1, 2, 0], composite="zero")
    assert_same_state(before, model_state(model))
    out = e.output
    tol = 1e-10 * np.abs(out).max()
    # relevance summed at the input of every ruled operation outside the residual branch equals
    # the explained output; inside the branch, the branch's share is conserved from c2 to c1
    L = e.meta["layer_relevance"]
    labels = [lab.split(":")[0] + ":" + lab.split(":")[1].split("#")[0] for lab in e.meta["layers"]]
    assert labels == ["stem:conv", "c1:conv", "c2:conv", "<root>:add", "<root>:sum", "head:linear"]
    main = [0, 3, 4, 5]
    np.testing.assert_allclose(L[:, main], np.repeat(out[:, None], 4, 1), rtol=0, atol=tol)
    np.testing.assert_allclose(L[:, 1], L[:, 2], rtol=0, atol=tol)
    assert np.abs(L[:, 1] - out).min() > 1e-4  # the skip connection carries the rest
    np.testing.assert_allclose(e.values.reshape(4, -1).sum(1), out, rtol=0, atol=tol)
    assert np.abs(e.meta["conservation_gap"]).max() < tol
    assert e.meta["batch_norm_merged"] == ["bn0", "bn1", "bn2"]
    # ε -> 0 approaches the same
    e2 = lrp(model, x, target=[0, 1, 2, 0], composite="epsilon", epsilon=1e-12)
    np.testing.assert_allclose(e2.values, e.values, rtol=0, atol=1e-6 * np.abs(e.values).max())
    # a large ε absorbs relevance: conservation is then visibly broken (the test can fail)
    e3 = lrp(model, x, target=[0, 1, 2, 0], composite="epsilon", epsilon=0.1)
    assert np.abs(e3.meta["conservation_gap"]).max() > 100 * tol


def test_leak_equals_bias_share_mlp():
    """With biases, each layer loses exactly sum_k b_k R_k / z_k (float64 reference)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(),
                          nn.Linear(6, 3)).eval()
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    e = lrp(model, x, target=1, composite="zero")
    W = [model[i].weight.detach().double().numpy() for i in (0, 2, 4)]
    b = [model[i].bias.detach().double().numpy() for i in (0, 2, 4)]
    for i in range(4):
        acts = [x[i].double().numpy()]
        zs = []
        for k in range(3):
            z = W[k] @ acts[-1] + b[k]
            zs.append(z)
            acts.append(np.maximum(z, 0) if k < 2 else z)
        R = np.zeros(3)
        R[1] = zs[2][1]
        sums, leaks = [R.sum()], []
        for k in (2, 1, 0):
            s = R / zs[k]
            leaks.append((b[k] * s).sum())
            R = acts[k] * (W[k].T @ s)
            sums.append(R.sum())
        # lumos' layer table is in forward order: relevance at the input of layer 0, 1, 2
        got = e.meta["layer_relevance"][i]
        np.testing.assert_allclose(got, sums[::-1][:3], rtol=1e-5)
        np.testing.assert_allclose(e.output[i] - got[2], leaks[0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got[2] - got[1], leaks[1], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got[1] - got[0], leaks[2], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(e.values[i], R, rtol=1e-4, atol=1e-7)


def test_lrp0_equals_gradient_times_input_without_biases():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 5, 3, bias=False)
            self.c2 = nn.Conv2d(5, 5, 3, bias=False)
            self.fc = nn.Linear(5 * 2 * 2, 3, bias=False)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            x = F.max_pool2d(self.act(self.c1(x)), 2)
            x = torch.relu(self.c2(x)) + 0.5 * self.act(self.c2(x))  # reused conv and ReLU
            return self.fc(F.avg_pool2d(x, 1).flatten(1))

    model = Net().eval()
    x = torch.randn(5, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    a = lrp(model, x, target="predicted", composite="zero").values
    b = lumos.explain(model, x, "gradient_x_input", target="predicted").values
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


# ------------------------------------------------------------------ canonisation
def _fold(model: ResNetish) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    for conv, bn in ((m.stem, m.bn0), (m.c1, m.bn1), (m.c2, m.bn2)):
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        with torch.no_grad():
            conv.weight.mul_(a.view(-1, 1, 1, 1))
            b0 = conv.bias if conv.bias is not None else torch.zeros_like(a)
            conv.bias = nn.Parameter(b0 * a + bn.bias - bn.running_mean * a)
    m.bn0 = m.bn1 = m.bn2 = nn.Identity()
    return m


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
def test_canonisation_equals_folded_model(composite):
    model = _resnet(bias=True, zero_shift=False).double()
    folded = _fold(model)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    np.testing.assert_allclose(folded(x).detach().numpy(), model(x).detach().numpy(), rtol=1e-12)
    before = model_state(model)
    e = lrp(model, x, target=1, composite=composite)
    assert_same_state(before, model_state(model))
    np.testing.assert_allclose(e.output, model(x)[:, 1].detach().numpy(), rtol=1e-12)
    ref = lrp(folded, x, target=1, composite=composite).values
    np.testing.assert_allclose(e.values, ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max())
    plain = lrp(model, x, target=1, composite=composite, canonize=False).values
    assert np.abs(plain - ref).max() > 1e-3 * np.abs(ref).max()


# ------------------------------------------------------------------ composites, operations
class Functional(nn.Module):
    """The same network as ``Modules`` written with functional calls and one reused module."""

    def __init__(self, src):
        super().__init__()
        self.src = src

    def forward(self, x):
        s = self.src
        x = F.relu(F.conv2d(x, s.c1.weight, s.c1.bias, padding=1))
        x = F.max_pool2d(x, 2)
        x = torch.relu(F.conv2d(x, s.c2.weight, s.c2.bias, padding=1))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.linear(x, s.fc.weight, s.fc.bias)


class Modules(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.r = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.pool(self.r(self.c1(x)))
        return self.fc(self.gap(self.r(self.c2(x))).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1",
                                       "epsilon_plus_flat"])
def test_functional_and_module_models_agree(composite):
    m = Modules().eval()
    f = Functional(m).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    a = lrp(m, x, target=2, composite=composite, low=0.0, high=1.0)
    b = lrp(f, x, target=2, composite=composite, low=0.0, high=1.0)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-8)
    assert np.abs(a.values).max() > 0


def test_composites_choose_by_name_class_position():
    m = Modules().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    e = lrp(m, x, target=0, composite={"first": ZBox(0, 1), "c2": Gamma(0.3), nn.Linear: Epsilon(0.01)})
    rules = e.meta["rules"]
    assert rules["c1:conv#0"].startswith("ZBox") and rules["c2:conv#3"].startswith("Gamma")
    assert rules["fc:linear#6"] == "Epsilon(epsilon=0.01)"
    # the preset mapping is what the composite says
    e = lrp(m, x, target=0, composite="epsilon_gamma_box", low=0, high=1)
    assert e.meta["rules"]["c1:conv#0"].startswith("ZBox")
    assert e.meta["rules"]["c2:conv#3"] == "Gamma(gamma=0.25, stabilizer=1e-06)"
    assert e.meta["rules"]["gap:avg_pool#5"].startswith("Epsilon")
    # bounds as numbers, per channel or as one full sample are the same bounds
    ref = lrp(m, x, target=0, composite="epsilon_gamma_box", low=0.0, high=1.0).values
    for lo, hi in ((torch.zeros(3, 1, 1), torch.ones(3, 1, 1)),
                   (torch.zeros(3, 8, 8), torch.ones(3, 8, 8))):
        v = lrp(m, x, target=0, composite="epsilon_gamma_box", low=lo, high=hi).values
        np.testing.assert_allclose(v, ref, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="not broadcastable"):
        lrp(m, x, target=0, composite="epsilon_gamma_box", low=torch.zeros(5), high=1.0)
    with pytest.raises(ValueError, match="no module of the model matches"):
        lrp(m, x, target=0, composite={"c9": Gamma()})
    with pytest.raises(ValueError, match="unknown preset"):
        lrp(m, x, target=0, composite="epsilon_plus_plus")
    with pytest.raises(ValueError, match="alpha - beta"):
        AlphaBeta(2, 2)
    with pytest.raises(ValueError, match="low/high"):
        lrp(m, x * 3, target=0, composite="epsilon_gamma_box", low=0.0, high=1.0)


def test_unsupported_operations_are_named():
    class Soft(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).softmax(-1)

    class Exp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.norm = nn.LayerNorm(3)

        def forward(self, x):
            return self.norm(torch.exp(self.fc(x)))

    x = torch.randn(2, 4)
    soft = Soft().eval()
    before = model_state(soft)
    with pytest.raises(UnsupportedOperationError, match="softmax"):
        lrp(soft, x, target=0)
    assert_same_state(before, model_state(soft))
    with pytest.raises(TypeError, match=r"torch\.exp in module '<root>'"):
        lrp(Exp().eval(), x, target=0)
    # a safe default is used with a warning naming the operation
    tanh = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).eval()
    with pytest.warns(UserWarning, match=r"torch\.tanh"):
        e = lrp(tanh, x, target=0)
    assert e.meta["passed_ops"] == ["torch.tanh"]


def test_batch_size_independence_and_registry(small_cnn, images):
    t = [0, 1, 2, 3, 1]
    full = lumos.explain(small_cnn, images, "lrp", target=t, composite="epsilon_gamma_box")
    for bs in (1, 2, 64):
        e = lrp(small_cnn, images, target=t, composite="epsilon_gamma_box", batch_size=bs)
        np.testing.assert_allclose(e.values, full.values, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(e.meta["layer_relevance"], full.meta["layer_relevance"], rtol=1e-5,
                                   atol=1e-8)


def test_demo_model_relevance_on_the_evidence():
    """On the trained demo model LRP (epsilon_plus) puts more positive relevance on the object
    than the plain gradient does (measured: see the assertion's margin)."""
    import lumos.data as data_mod

    model = data_mod.load_demo_model()  # shipped with the package: missing weights must fail
    data = data_mod.shapes_dataset(32, split="test", seed=0)

    def share(values):
        pos = np.clip(values.sum(1), 0, None)  # channel sum, positive part
        inside = (pos * data.masks.numpy()).reshape(len(pos), -1).sum(1)
        return float(np.mean(inside / (pos.reshape(len(pos), -1).sum(1) + 1e-12)))

    s_lrp = share(lrp(model, data.images, data.labels, composite="epsilon_plus").values)
    s_grad = share(np.abs(lumos.explain(model, data.images, "saliency", target=data.labels).values))
    assert s_lrp > s_grad + 0.1, (s_lrp, s_grad)


def test_constant_shift_and_scale_pass_relevance_unchanged():
    """Input normalisation ``(x - mean) / std`` in the forward pass leaves relevance with x."""
    m = Modules().eval()
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = m

        def forward(self, x):
            return self.net((x - mean) / std)

    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(11))
    a = lrp(Normalised().eval(), x, target=1, composite="epsilon_gamma_box")
    b = lrp(m, (x - mean) / std, target=1, composite="epsilon_gamma_box")
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------ issue 11 / 12 regressions
@pytest.mark.parametrize("trainable", [True, False])
def test_pass_rule_on_a_linear_layer_passes_relevance_unchanged(trainable):
    """Pass() on a square linear layer: its weights are constants (trainable or frozen), so the
    relevance reaching the layer's output reaches its input unchanged."""
    torch.manual_seed(3)
    head = nn.Linear(4, 2)
    m = nn.Sequential(nn.Linear(4, 4), head).eval().double()
    for prm in m.parameters():
        prm.requires_grad_(trainable)
    x = torch.randn(5, 4, dtype=torch.float64)
    before = model_state(m)
    e = lrp(m, x, target=1, composite={"0": Pass(), "linear": Epsilon(0.0)})
    assert_same_state(before, model_state(m))
    # reference: ε=0 on the head alone, fed with the first layer's output
    h = m[0](x).detach()
    ref = (h * head.weight[1].detach() / head(h)[:, 1:2].detach()) * head(h)[:, 1:2].detach()
    np.testing.assert_allclose(e.values, ref.numpy(), rtol=1e-12, atol=1e-14)
    # a Pass on a layer that changes the shape cannot hand the relevance on unchanged
    with pytest.raises(UnsupportedOperationError, match=r"Pass.*\(5, 4\) to \(5, 2\)"):
        lrp(m, x, target=1, composite={"1": Pass()})


def test_max_pool_only_model_gives_the_relevance_to_the_winner():
    """A model without any weighted operation: winner takes all, an empty per-layer table."""
    m = nn.Sequential(nn.MaxPool2d(2), nn.Flatten()).eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    e = lrp(m, x, target=2)
    win = F.max_pool2d(x, 2, return_indices=True)[1].flatten(1)[:, 2]   # window 2's argmax
    ref = torch.zeros(3, 16)
    ref[torch.arange(3), win] = x.flatten(1)[torch.arange(3), win]
    np.testing.assert_array_equal(e.values.reshape(3, 16), ref.numpy())
    assert e.meta["layers"] == [] and e.meta["layer_relevance"].shape == (3, 0)
    np.testing.assert_array_equal(e.meta["conservation_gap"], np.zeros(3))
    assert e[1:3].meta["layer_relevance"].shape == (2, 0)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_one_hot_start_is_the_logit_start_over_the_logit(small_cnn, images, composite):
    """Zennit's usual call starts at the one-hot vector; lumos at the logit (the papers'). Every
    rule is linear in the relevance, so the maps differ by the logit per sample."""
    t = [0, 1, 2, 3, 1]
    a = lrp(small_cnn, images, target=t, composite=composite)
    b = lrp(small_cnn, images, target=t, composite=composite, start="one_hot")
    assert b.params["start"] == "one_hot" and a.params["start"] == "logit"
    scale = a.output.reshape(-1, 1, 1, 1)
    assert np.abs(scale).min() > 1e-3
    np.testing.assert_allclose(b.values, a.values / scale, rtol=1e-4,
                               atol=1e-6 * np.abs(b.values).max())
    # conservation is measured against the start: 1 for one-hot
    np.testing.assert_allclose(b.meta["conservation_gap"],
                               1 - b.values.reshape(5, -1).sum(1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="start must be one of"):
        lrp(small_cnn, images, target=t, start="onehot")


@pytest.mark.parametrize("name, value", [
    ("epsilon", float("nan")), ("gamma", float("nan")), ("low", float("nan")),
    ("high", float("inf")), ("epsilon", -1.0), ("low", torch.tensor([0.0, float("nan")])),
])
def test_rule_parameters_reject_nan_and_out_of_range(small_cnn, images, name, value):
    """NaN passed the ``>= 0`` checks and gave all-NaN maps; now a ValueError names it, also
    for parameters the chosen composite does not use."""
    with pytest.raises(ValueError, match=name):
        lrp(small_cnn, images, target=0, composite="epsilon_plus", **{name: value})
    for rule, kw in ((Epsilon, "epsilon"), (Gamma, "gamma"), (Gamma, "stabilizer"),
                     (AlphaBeta, "beta"), (Flat, "stabilizer")):
        with pytest.raises(ValueError, match=kw):
            rule(**{kw: float("nan")})
    with pytest.raises(ValueError, match="high"):
        ZBox(0.0, float("nan"))


def test_non_finite_outputs_and_relevance_raise(small_cnn, images):
    class Overflow(nn.Module):  # finite inputs, an infinite output
        def __init__(self):
            super().__init__()
            self.net = small_cnn

        def forward(self, x):
            return self.net(x * 1e38) * 1e38

    with pytest.raises(ValueError, match="NaN or Inf values? on the inputs"):
        lrp(Overflow().eval(), images, target=0)
    # finite output, relevance overflowing float32 in the backward pass (w² of 1e20 is inf)
    big = nn.Linear(4, 2).eval()
    with torch.no_grad():
        big.weight.fill_(1e20)
    with pytest.raises(ValueError, match="attributions are NaN or Inf"):
        lrp(big, torch.rand(3, 4), target=0, composite={"linear": WSquare()})
    for method in ("guided_backprop", "deconvnet"):
        with pytest.raises(ValueError, match="NaN or Inf values? on the inputs"):
            lumos.explain(Overflow().eval(), images, method, target=0)
