"""Gradient SHAP / expected gradients: closed form on linear models, seeds, batch sizes."""
import numpy as np
import pytest
import torch
from torch import nn

import lumos
from conftest import assert_same_state, model_state
from lumos.attribution.gradient_shap import gradient_shap


def _bg(n=40, d=6, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_linear_model_closed_form_with_the_drawn_baselines(linear_model):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    bg = _bg()
    e = gradient_shap(linear_model, x, target=[0, 1, 2, 1], background=bg, n_samples=16, seed=5)
    w = linear_model.weight.detach().double()
    idx = e.meta["background_index"]
    assert idx.shape == (4, 16)
    for i, t in enumerate([0, 1, 2, 1]):
        mean_b = bg.double()[idx[i]].mean(0)
        expected = w[t] * (x[i].double() - mean_b)          # exact, whatever the path points
        np.testing.assert_allclose(e.values[i], expected.numpy(), rtol=1e-5, atol=1e-6)
    # baseline_output is E_b f(b) over the whole background
    f_bg = linear_model(bg).detach().double()
    np.testing.assert_allclose(e.baseline_output, f_bg[:, [0, 1, 2, 1]].mean(0).numpy(), rtol=1e-5)


def test_linear_model_converges_to_w_times_x_minus_mean_background(linear_model):
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    bg = _bg(200)
    e = gradient_shap(linear_model, x, target=0, background=bg, n_samples=4000, seed=0,
                      batch_size=4000)
    w = linear_model.weight.detach().double()[0]
    expected = (w * (x.double() - bg.double().mean(0))).numpy()
    # Monte-Carlo error: the standard error the method reports, checked at 5 sigma
    se = e.meta["standard_error"]
    assert np.all(np.abs(e.values - expected) <= 5 * se + 1e-6)
    assert se.max() < 0.05
    # completeness holds in expectation: the gap is within the reported total standard error
    assert np.all(e.meta["completeness_gap"] <= 5 * e.meta["total_standard_error"] + 1e-6)


def test_noise_enters_point_and_difference(linear_model):
    x = torch.zeros(1, 6)
    bg = torch.zeros(3, 6)
    e = gradient_shap(linear_model, x, target=2, background=bg, n_samples=20000, noise_std=0.5,
                      seed=1, batch_size=5000)
    # φ = w ⊙ mean(ε): zero mean with standard deviation 0.5 |w| / sqrt(n)
    w = linear_model.weight.detach().double()[2].numpy()
    assert np.all(np.abs(e.values[0]) <= 5 * 0.5 * np.abs(w) / np.sqrt(20000) + 1e-7)
    assert np.all(np.abs(e.values[0]) > 0)                 # the noise was really used


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def test_seeded_and_batch_size_independent():
    model = _Tiny().eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    bg = _bg()
    before = model_state(model)
    runs = [gradient_shap(model, x, target="predicted", background=bg, n_samples=12, noise_std=0.1,
                          seed=7, batch_size=b) for b in (1, 7, 64)]
    assert_same_state(before, model_state(model))
    for r in runs[1:]:
        np.testing.assert_allclose(r.values, runs[0].values, rtol=1e-5, atol=1e-7)
    other = gradient_shap(model, x, target="predicted", background=bg, n_samples=12, noise_std=0.1,
                          seed=8)
    assert np.abs(other.values - runs[0].values).max() > 1e-4
    again = gradient_shap(model, x, target="predicted", background=bg, n_samples=12, noise_std=0.1,
                          seed=7, batch_size=7)
    np.testing.assert_array_equal(again.values, runs[1].values)


def test_registered_and_sliceable():
    model = _Tiny().eval()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    e = lumos.explain(model, x, "gradient_shap", target=1, background=_bg(), n_samples=8)
    assert e.method == "gradient_shap" and e.values.shape == (3, 6)
    assert e[1].meta["standard_error"].shape == (1, 6)
    assert e[1].meta["background_index"].shape == (1, 8)


def test_errors_name_the_argument(linear_model):
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match="background"):
        gradient_shap(linear_model, x, target=0)
    with pytest.raises(ValueError, match="background"):
        gradient_shap(linear_model, x, target=0, background=torch.zeros(4, 5))
    with pytest.raises(ValueError, match="n_samples"):
        gradient_shap(linear_model, x, target=0, background=_bg(), n_samples=0)
    with pytest.raises(ValueError, match="noise"):
        gradient_shap(linear_model, x, target=0, background=_bg(), noise_std=-1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gradient_shap(lambda z: z, x, target=0, background=_bg())


def test_images_completeness_in_expectation(small_cnn, images):
    # scaled so that f(x) - E f(b) is large against the Monte-Carlo error (the test has power)
    bg = -5 * torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    x = 5 * images[:2]
    before = model_state(small_cnn)
    e = gradient_shap(small_cnn, x, target=1, background=bg, n_samples=300, seed=0,
                      batch_size=150)
    assert_same_state(before, model_state(small_cnn))
    assert e.values.shape == (2, 3, 12, 12) and e.meta["standard_error"].shape == (2, 3, 12, 12)
    with torch.no_grad():
        f_bg = small_cnn(bg)[:, 1].double().mean().item()
    np.testing.assert_allclose(e.baseline_output, f_bg, rtol=1e-5)
    # E[sum(phi)] = f(x) - E_b f(b): the estimate is within 5 of its standard errors
    se = e.meta["total_standard_error"]
    assert np.all(np.abs(e.output - e.baseline_output) > 10 * se)
    assert np.all(e.meta["completeness_gap"] <= 5 * se)
