"""Guided backprop and DeconvNet: rules on ReLU operations, however the ReLU is written."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from conftest import SmallCNN, assert_same_state, model_state
from lumos.attribution.deconvnet import deconvnet
from lumos.attribution.guided_backprop import guided_backprop

# ---------------------------------------------------------------- one network, many ReLU spellings
RELU_STYLES = ["module", "module_inplace", "reused_module", "functional", "functional_inplace",
               "torch_relu", "torch_relu_", "tensor_relu", "tensor_relu_", "clamp", "iadd_skip"]


class Net(nn.Module):
    """conv-relu-conv-relu-maxpool-linear-relu-linear with the ReLUs written in one style."""

    def __init__(self, style: str):
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 4)
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        if style == "module_inplace":
            self.r1, self.r2, self.r3 = nn.ReLU(True), nn.ReLU(True), nn.ReLU(True)
        if style == "reused_module":
            self.r2 = self.r3 = self.r1

    def act(self, i, x):
        s = self.style
        if s in ("module", "module_inplace", "reused_module"):
            return (self.r1, self.r2, self.r3)[i](x)
        if s == "functional":
            return F.relu(x)
        if s == "functional_inplace":
            return F.relu(x, inplace=True)
        if s == "torch_relu":
            return torch.relu(x)
        if s == "torch_relu_":
            return torch.relu_(x)
        if s == "tensor_relu":
            return x.relu()
        if s == "tensor_relu_":
            return x.relu_()
        if s == "clamp":
            return x.clamp(min=0)
        if s == "iadd_skip":  # in-place add on the path and a functional ReLU
            y = torch.zeros_like(x)
            y += x
            return F.relu(y)
        raise AssertionError(s)

    def forward(self, x):
        x = self.act(0, self.c1(x))
        x = self.pool(self.act(1, self.c2(x)))
        x = self.act(2, self.fc1(x.flatten(1)))
        return self.fc2(x)


@pytest.fixture(scope="module")
def x8():
    return torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _reference(model: Net, x: torch.Tensor, target: int, rule: str) -> np.ndarray:
    """A hand-written backward pass in float64: conv transposes, max-pool switches, ReLU rules."""
    m = model.double()
    x = x.double()
    with torch.no_grad():
        z1 = F.conv2d(x, m.c1.weight, m.c1.bias, padding=1)
        a1 = z1.clamp(min=0)
        z2 = F.conv2d(a1, m.c2.weight, m.c2.bias, padding=1)
        a2 = z2.clamp(min=0)
        p, idx = F.max_pool2d(a2, 2, return_indices=True)
        h = p.flatten(1)
        z3 = h @ m.fc1.weight.T + m.fc1.bias
        a3 = z3.clamp(min=0)

        def back_relu(g, z):
            if rule == "gradient":
                return g * (z > 0)
            if rule == "guided":
                return g.clamp(min=0) * (z > 0)
            return g.clamp(min=0)  # deconvnet

        g = torch.zeros(len(x), 4, dtype=torch.float64)
        g[:, target] = 1.0
        g = g @ m.fc2.weight                      # into a3
        g = back_relu(g, z3) @ m.fc1.weight       # into h
        g = g.reshape(p.shape)
        ga2 = torch.zeros_like(a2).flatten(2)
        ga2.scatter_add_(2, idx.flatten(2), g.flatten(2))  # max-pool switches
        ga2 = back_relu(ga2.reshape(a2.shape), z2)
        ga1 = torch.nn.grad.conv2d_input(a1.shape, m.c2.weight, ga2, padding=1)
        ga1 = back_relu(ga1, z1)
        gx = torch.nn.grad.conv2d_input(x.shape, m.c1.weight, ga1, padding=1)
    m.float()
    return gx.numpy()


@pytest.mark.parametrize("method,rule", [(guided_backprop, "guided"), (deconvnet, "deconv")])
def test_equals_float64_reference(method, rule, x8):
    model = Net("module").eval()
    expl = method(model, x8, target=2)
    ref = _reference(model, x8, 2, rule)
    assert np.abs(expl.values - ref).max() <= 1e-5 * np.abs(ref).max()
    # the rule matters: the plain gradient differs from the map
    grad = _reference(model, x8, 2, "gradient")
    assert np.abs(grad - ref).max() > 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize("method", [guided_backprop, deconvnet])
def test_every_relu_spelling_gives_the_same_map(method, x8):
    maps = {}
    for style in RELU_STYLES:
        model = Net(style).eval()
        before = model_state(model)
        maps[style] = method(model, x8, target=1).values
        assert_same_state(before, model_state(model))
    base = maps["module"]
    assert np.abs(base).max() > 0
    for style, v in maps.items():
        np.testing.assert_allclose(v, base, rtol=0, atol=1e-6 * np.abs(base).max(), err_msg=style)


def test_each_relu_transformed_once(x8):
    for style in RELU_STYLES:
        e = guided_backprop(Net(style).eval(), x8, target=0)
        assert e.meta["n_relu"] == 3, style


def test_network_without_relu_equals_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Sigmoid(),
                          nn.Linear(5, 3)).eval()
    x = torch.randn(9, 6)
    for method in (guided_backprop, deconvnet):
        e = method(model, x, target=2)
        g = lumos.explain(model, x, "saliency", target=2)
        np.testing.assert_allclose(e.values, g.values, rtol=1e-6, atol=1e-7 * np.abs(g.values).max())
        assert e.meta["n_relu"] == 0
        assert "torch.tanh" in e.meta["plain_ops"] and "torch.sigmoid" in e.meta["plain_ops"]


def test_deconvnet_definition_on_mlp():
    """DeconvNet on a ReLU MLP: g <- max(g, 0) at each ReLU, then W^T (numpy, float64)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 6), nn.ReLU(),
                          nn.Linear(6, 3)).eval()
    x = torch.randn(11, 7)
    W = [model[i].weight.detach().double().numpy() for i in (0, 2, 4)]
    b = [model[i].bias.detach().double().numpy() for i in (0, 2, 4)]
    xx = x.double().numpy()
    z1 = xx @ W[0].T + b[0]
    z2 = np.maximum(z1, 0) @ W[1].T + b[1]
    g = np.zeros((11, 3))
    g[:, 1] = 1
    g = np.maximum(g @ W[2], 0)
    g_deconv = np.maximum(g @ W[1], 0) @ W[0]
    g_guided = np.maximum((g * (z2 > 0)) @ W[1], 0) * (z1 > 0) @ W[0]
    np.testing.assert_allclose(deconvnet(model, x, target=1).values, g_deconv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(guided_backprop(model, x, target=1).values, g_guided, rtol=1e-5,
                               atol=1e-6)


def test_explain_registry_and_batch_size_independence(small_cnn, images):
    t = [0, 1, 2, 3, 0]
    full = lumos.explain(small_cnn, images, "guided_backprop", target=t)
    assert full.method == "guided_backprop"
    assert full.values.shape == images.shape
    for bs in (1, 2, 64):
        e = guided_backprop(small_cnn, images, target=t, batch_size=bs)
        np.testing.assert_allclose(e.values, full.values, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(e.target, full.target)
    pred = guided_backprop(small_cnn, images, target="predicted", batch_size=2)
    np.testing.assert_array_equal(pred.target, small_cnn(images).argmax(1).numpy())
    d1 = deconvnet(small_cnn, images, target=t, batch_size=1)
    np.testing.assert_allclose(d1.values, deconvnet(small_cnn, images, target=t).values,
                               rtol=1e-5, atol=1e-7)


def test_output_and_inputs_untouched(small_cnn, images):
    x = images.clone()
    e = guided_backprop(small_cnn, x, target=1)
    assert torch.equal(x, images)
    np.testing.assert_allclose(e.output, small_cnn(images)[:, 1].detach().numpy(), rtol=1e-6)


def test_model_left_as_found_also_when_raising(small_cnn, images):
    small_cnn.features[0].weight.requires_grad_(False)
    small_cnn.features[2].register_forward_hook(lambda m, i, o: None)
    small_cnn.classifier.weight.grad = torch.ones_like(small_cnn.classifier.weight)
    before = model_state(small_cnn)
    guided_backprop(small_cnn, images, target=0)
    assert_same_state(before, model_state(small_cnn))
    with pytest.raises(ValueError, match="target"):
        guided_backprop(small_cnn, images, target=7)
    assert_same_state(before, model_state(small_cnn))
    with pytest.raises(ValueError, match="channels"):
        deconvnet(small_cnn, images[:, :2], target=0)
    assert_same_state(before, model_state(small_cnn))
    # the rules are gone after the call: a plain backward pass is the plain gradient again
    x = images.clone().requires_grad_(True)
    small_cnn(x)[:, 0].sum().backward()
    g = lumos.explain(small_cnn, images, "saliency", target=0).values
    np.testing.assert_allclose(x.grad.numpy(), g, rtol=1e-5, atol=1e-6 * np.abs(g).max())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_compiled_models_are_refused(small_cnn, images):
    with pytest.raises(TypeError, match="torch.compile"):
        guided_backprop(torch.compile(small_cnn), images, target=0)
    scripted = torch.jit.script(small_cnn)
    for method in (guided_backprop, deconvnet):
        with pytest.raises(TypeError, match="TorchScript"):
            method(scripted, images, target=0)
    wrapper = nn.Sequential(torch.jit.script(SmallCNN().eval()))
    with pytest.raises(TypeError, match="compiled"):
        guided_backprop(wrapper, images, target=0)
    with pytest.raises(TypeError, match="nn.Module"):
        guided_backprop(lambda x: x, images)


def test_discarded_inplace_result_is_an_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            h = self.fc(x)
            h.relu_()  # result discarded: only the side effect is used
            return self.out(h)

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="in-place"):
        guided_backprop(Bad().eval(), torch.randn(6, 4), target=0)


def test_apply_context_is_reusable_and_scoped(small_cnn, images):
    from lumos import rules

    x = images.clone().requires_grad_(True)
    with rules.apply(small_cnn, rules.GUIDED) as session:
        out = small_cnn(x)
    out[:, 1].sum().backward()
    assert session.counts["relu"] == 2
    ref = guided_backprop(small_cnn, images, target=1).values
    np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-6, atol=1e-9)
    # outside the block the model is plain again
    y = torch.randn(3, 4, requires_grad=True)
    torch.relu(y).sum().backward()
    assert torch.equal(y.grad, (y > 0).float())


def test_training_mode_warns_and_restores_batch_norm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2)).train()
    before = model_state(model)
    with pytest.warns(UserWarning, match="training mode"):
        guided_backprop(model, torch.rand(4, 3, 8, 8), target=0)
    assert_same_state(before, model_state(model))  # running stats and counter restored
