"""DeepLIFT (Rescale) and DeepSHAP: summation-to-delta, references, operations however written."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from conftest import assert_same_state, model_state
from lumos.attribution.deeplift import deep_shap, deeplift
from lumos.rules import UnsupportedOperationError


class Mixed(nn.Module):
    """Convolutions, batch norm, overlapping max pooling, sigmoid gate, tanh, GAP and a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.gate = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            self.bn.running_mean.normal_(0, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)          # overlapping windows
        h = torch.tanh(self.c2(x))
        x = h * torch.sigmoid(self.gate(x)) + x               # a gate: product of two inputs
        return self.fc(F.gelu(x).mean((2, 3)))


@pytest.fixture(scope="module")
def mixed():
    return Mixed().eval().double()


@pytest.fixture(scope="module")
def xs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)


def test_summation_to_delta_exact(mixed, xs):
    g = torch.Generator().manual_seed(2)
    for baselines in (None, 0.5, torch.rand(3, 8, 8, generator=g, dtype=torch.float64),
                      torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)):
        before = model_state(mixed)
        e = deeplift(mixed, xs, target=[0, 1, 2, 3, 0, 1], baselines=baselines)
        assert_same_state(before, model_state(mixed))
        gap = e.values.reshape(6, -1).sum(1) - (e.output - e.baseline_output)
        scale = np.abs(e.output - e.baseline_output).max()
        assert scale > 1e-3
        assert np.abs(gap).max() <= 1e-10 * scale + 1e-13
        np.testing.assert_allclose(e.meta["delta"], gap, atol=1e-12)
        assert e.completeness_gap.max() <= 1e-10 * scale + 1e-13
    # f(baseline) is the model's own output at the baseline
    b = torch.full_like(xs, 0.5)
    e = deeplift(mixed, xs, target=1, baselines=0.5)
    np.testing.assert_allclose(e.baseline_output, mixed(b)[:, 1].detach().numpy(), rtol=1e-12)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(),
                         nn.Linear(6, 3)).eval().double()


def test_rescale_equals_naive_float64_reference():
    model = _mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    x0 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    e = deeplift(model, x, target=2, baselines=x0)
    W = [model[i].weight.detach().numpy() for i in (0, 2, 4)]
    b = [model[i].bias.detach().numpy() for i in (0, 2, 4)]
    for i in range(7):
        def acts(v):
            z1 = W[0] @ v + b[0]
            z2 = W[1] @ np.maximum(z1, 0) + b[1]
            return z1, z2
        z1, z2 = acts(x[i].numpy())
        y1, y2 = acts(x0[i].numpy())
        m1 = np.where(np.abs(z1 - y1) > 1e-12, (np.maximum(z1, 0) - np.maximum(y1, 0)) / (z1 - y1),
                      (z1 > 0).astype(float))
        m2 = np.where(np.abs(z2 - y2) > 1e-12, (np.maximum(z2, 0) - np.maximum(y2, 0)) / (z2 - y2),
                      (z2 > 0).astype(float))
        mult = W[0].T @ (m1 * (W[1].T @ (m2 * W[2][2])))
        np.testing.assert_allclose(e.values[i], (x[i] - x0[i]).numpy() * mult, rtol=1e-10,
                                   atol=1e-13)


def test_linear_model_closed_form(linear_model):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    e = deeplift(linear_model, x, target=1, baselines=torch.ones(6))
    w = linear_model.weight[1].detach().numpy()
    np.testing.assert_allclose(e.values, (x.numpy() - 1) * w, rtol=1e-5, atol=1e-7)


class TwoStyles(nn.Module):
    def __init__(self, shared: bool):
        super().__init__()
        torch.manual_seed(4)
        self.fc1, self.fc2, self.fc3 = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 3)
        self.shared = shared
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        if self.shared:  # one ReLU module used twice, then F.relu
            h = self.r1(self.fc1(x))
            h = self.r1(self.fc2(h))
            return self.fc3(F.relu(h + 0.1))
        h = self.r1(self.fc1(x))
        h = self.r2(self.fc2(h))
        return self.fc3(nn.ReLU()(h + 0.1))


def test_reused_module_and_functional_equal_separate_modules():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(5))
    a = deeplift(TwoStyles(True).eval(), x, target=0, baselines=0.2)
    b = deeplift(TwoStyles(False).eval(), x, target=0, baselines=0.2)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-8)
    # and the rule matters: the gradient x (x - x0) is not the same here
    gi = lumos.explain(TwoStyles(True).eval(), x, "saliency", target=0).values * (x.numpy() - 0.2)
    assert np.abs(gi - a.values).max() > 1e-3


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matches_captum_on_relu_cnn():
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    x0 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    ours = deeplift(model, x, target=1, baselines=x0).values
    theirs = captum.DeepLift(model).attribute(x, baselines=x0, target=1).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())


def test_deep_shap_is_the_mean_over_baselines(mixed, xs):
    bg = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    e = deep_shap(mixed, xs, target="predicted", background=bg, batch_size=7)
    tgt = e.target
    singles = [deeplift(mixed, xs, target=tgt, baselines=bg[j]) for j in range(5)]
    np.testing.assert_allclose(e.values, np.mean([s.values for s in singles], 0), rtol=1e-10,
                               atol=1e-14)
    np.testing.assert_allclose(e.baseline_output, np.mean([s.baseline_output for s in singles], 0),
                               rtol=1e-12)
    gap = e.values.reshape(6, -1).sum(1) - (e.output - e.baseline_output)
    assert np.abs(gap).max() <= 1e-10
    np.testing.assert_array_equal(tgt, mixed(xs).argmax(1).numpy())


def test_batch_size_independence(mixed, xs):
    t = [3, 2, 1, 0, 1, 2]
    full = deeplift(mixed, xs, target=t, baselines=0.3)
    bg = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    shap_full = deep_shap(mixed, xs, target=t, background=bg)
    for bs in (1, 7, 64):
        e = deeplift(mixed, xs, target=t, baselines=0.3, batch_size=bs)
        np.testing.assert_allclose(e.values, full.values, rtol=1e-12, atol=1e-15)
        s = deep_shap(mixed, xs, target=t, background=bg, batch_size=bs)
        np.testing.assert_allclose(s.values, shap_full.values, rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_errors_are_clear(mixed, xs):
    soft = nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)).eval()
    with pytest.raises(UnsupportedOperationError, match="softmax"):
        deeplift(soft, torch.randn(2, 4), target=0)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            if x.sum() > 0:  # data-dependent control flow: the baseline takes the other branch
                h = torch.relu(h)
            return torch.tanh(h)

    with pytest.raises(UnsupportedOperationError, match="different path"):
        deeplift(Branchy().eval(), torch.ones(1, 3), target=0, baselines=-1.0)
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    before = model_state(bn)
    with pytest.warns(UserWarning, match="training mode"), \
            pytest.raises(UnsupportedOperationError, match="training mode"):
        deeplift(bn, torch.randn(4, 3), target=0)
    assert_same_state(before, model_state(bn))
    with pytest.raises(ValueError, match="baselines"):
        deeplift(mixed, xs, target=0, baselines=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="background"):
        deep_shap(mixed, xs, target=0)
    with pytest.raises(ValueError, match="background must have shape"):
        deep_shap(mixed, xs, target=0, background=torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match="TorchScript"):
        deeplift(torch.jit.script(_mlp()), torch.randn(2, 5, dtype=torch.float64), target=0)


def test_registry():
    model = _mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    e = lumos.explain(model, x, "deeplift", target=0)
    assert e.method == "deeplift" and e.values.shape == x.shape
    e = lumos.explain(model, x, "deep_shap", target=0, background=torch.zeros(2, 5))
    assert e.method == "deep_shap" and e.params["n_background"] == 2


def test_summation_to_delta_1d_and_both_memory_layouts():
    """1-D convolutions and max pooling (contiguous layout) and the same 2-D network fed
    channels-last or not: exact summation-to-delta, identical attributions."""
    torch.manual_seed(12)
    net1d = nn.Sequential(nn.Conv1d(2, 5, 3, padding=1), nn.ReLU(), nn.MaxPool1d(3, stride=2),
                          nn.Conv1d(5, 4, 3), nn.Softplus(), nn.AdaptiveMaxPool1d(2), nn.Flatten(),
                          nn.Linear(8, 3)).eval().double()
    x = torch.randn(5, 2, 16, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    e = deeplift(net1d, x, target=2, baselines=torch.zeros(2, 16, dtype=torch.float64))
    assert np.abs(e.meta["delta"]).max() <= 1e-10 * np.abs(e.output - e.baseline_output).max()

    from lumos.core import layout as grad_mod

    m = Mixed().eval().double()
    g = torch.Generator().manual_seed(14)
    x2 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    b2 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)
    runs = {}
    for layout in ("channels_last", "contiguous"):
        if layout == "contiguous":
            grad_mod._REFUSES_CHANNELS_LAST.add(m)  # force the contiguous layout
        try:
            runs[layout] = [deeplift(m, x2, target=1, baselines=b) for b in (b2, 0.2)]
        finally:
            grad_mod._REFUSES_CHANNELS_LAST.discard(m)
    # with a generic baseline the layouts agree exactly; with a constant one, max-pool windows
    # tied at the input and at the baseline may route to another (equally valid) position
    np.testing.assert_allclose(runs["channels_last"][0].values, runs["contiguous"][0].values,
                               rtol=1e-10, atol=1e-14)
    for e in runs["channels_last"] + runs["contiguous"]:
        assert np.abs(e.meta["delta"]).max() <= 1e-10 * np.abs(e.output - e.baseline_output).max()


# ------------------------------------------------------------------ issue 11 / 12 regressions
class NaNAtZero(nn.Module):
    """Finite except at an all-zero input, where it returns NaN (as a missing-value code would)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(15)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        zero = (x.detach() == 0).all(1, keepdim=True)
        return self.fc(torch.relu(x)) + torch.where(zero, float("nan"), 0.0)


def test_nan_at_the_baseline_names_the_baselines():
    """The model gives NaN at the baseline: an error naming the baselines, never a NaN
    baseline_output with a NaN completeness gap."""
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(16)) + 0.5
    for call in (lambda: deeplift(NaNAtZero().eval(), x, target=0),
                 lambda: deep_shap(NaNAtZero().eval(), x, target=0,
                                   background=torch.cat([x[:1], torch.zeros(1, 4)]))):
        with pytest.raises(ValueError, match="NaN or Inf values? on the baselines"):
            call()
    # and at the inputs (the baseline finite): the inputs are named
    with pytest.raises(ValueError, match="NaN or Inf values? on the inputs"):
        deeplift(NaNAtZero().eval(), torch.zeros(2, 4), target=0, baselines=1.0)


def test_huge_inputs_raise_instead_of_returning_inf():
    """A finite model output, but (x - baseline) overflows float32: a clear error, never Inf."""
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1e-30)
        model[0].bias.zero_()
    x = torch.full((2, 3), 3e38)
    for call in (lambda: deeplift(model, x, target=0, baselines=-3e38),
                 lambda: deep_shap(model, x, target=0, background=torch.full((2, 3), -3e38))):
        with pytest.raises(ValueError, match="attributions are NaN or Inf"):
            call()


@pytest.mark.parametrize("kw", [{"eps": float("nan")}, {"eps": -1.0}, {"baselines": float("nan")},
                                {"baselines": float("inf")}])
def test_parameters_reject_nan(mixed, xs, kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        deeplift(mixed, xs, target=0, **kw)
    if "eps" in kw:
        with pytest.raises(ValueError, match="eps"):
            deep_shap(mixed, xs, target=0, background=xs[:2], **kw)


def test_deep_shap_takes_background_and_names_the_old_spelling(mixed, xs):
    e = lumos.explain(mixed, xs, "deep_shap", target=0, background=xs[:2])
    assert e.params["n_background"] == 2
    with pytest.raises(TypeError, match="'baselines' is now called 'background'"):
        lumos.explain(mixed, xs, "deep_shap", target=0, baselines=xs[:2])
    with pytest.raises(ValueError, match="background contains .*NaN"):
        deep_shap(mixed, xs, target=0, background=torch.full((2, 3, 8, 8), float("nan")))


def test_threads_sharing_one_model_get_the_single_threaded_map(mixed, xs):
    """Several threads explaining one shared model: module hooks and requires_grad flags are
    process-wide, so each call must hold the model (the core's per-model lock in ModelGuard).
    Without the lock a guard snapshots the flags another thread has switched off, and the model
    is left with frozen parameters."""
    from concurrent.futures import ThreadPoolExecutor

    b = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    targets = [[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 2], 1, 2]
    before = model_state(mixed)
    ref = [deeplift(mixed, xs, target=t, baselines=b).values for t in targets]
    ref_shap = deep_shap(mixed, xs, target=0, background=b[:3]).values

    def job(i):
        if i % 5 == 4:
            return deep_shap(mixed, xs, target=0, background=b[:3], batch_size=5).values
        return deeplift(mixed, xs, target=targets[i % 4], baselines=b, batch_size=2).values

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(job, range(30)))
    for i, v in enumerate(results):
        expected = ref_shap if i % 5 == 4 else ref[i % 4]
        np.testing.assert_allclose(v, expected, rtol=1e-12, atol=1e-14)
    assert_same_state(before, model_state(mixed))
