"""Metrics of explanations of several inputs equal the metrics of the same model written on the
concatenation of its inputs (the packed view, metrics/several.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lumos
import lumos.metrics as lm


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.body(x)


class Two(nn.Module):
    """The same function of (a (2, 2), b (3,)) as Net of their concatenation."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, a, b):
        return self.net(torch.cat([a.flatten(1), b], 1))


@pytest.fixture
def world():
    net = Net().double().eval()
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(6, 2, 2, generator=g, dtype=torch.float64), torch.rand(6, 3, generator=g, dtype=torch.float64)
    return net, Two(net).eval(), a, b, torch.cat([a.flatten(1), b], 1)


@pytest.mark.parametrize("metric, params", [
    ("completeness_gap", {}),
    ("deletion", {"n_steps": 7}),
    ("insertion", {"n_steps": 7, "scale": "raw"}),
    ("faithfulness_correlation", {"n_subsets": 20, "subset_size": 2}),
    ("infidelity", {"n_samples": 16}),
    ("monotonicity", {}),
    ("sensitivity_n", {"sizes": [1, 3], "n_subsets": 10}),
    ("sparseness", {}),
    ("entropy", {}),
    ("max_sensitivity", {"n_samples": 4}),
    ("random_logit", {}),
])
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_metrics_of_several_inputs_equal_those_of_the_concatenated_model(world, metric, params, kind):
    net, two, a, b, cat = world
    inputs = (a, b) if kind == "tuple" else {"a": a, "b": b}
    e2 = lumos.explain(two, inputs, "integrated_gradients", target=1, n_steps=16)
    e1 = lumos.explain(net, cat, "integrated_gradients", target=1, n_steps=16)
    parts = list(e2.values.values()) if kind == "dict" else list(e2.values)
    np.testing.assert_allclose(np.concatenate([p.reshape(6, -1) for p in parts], 1), e1.values, atol=1e-12)
    info = lm.get_metric(metric)
    call = (lambda m, e: info.func(m, e, **params)) if "model" in info.needs else (lambda m, e: info.func(e, **params))
    r2, r1 = call(two, e2), call(net, e1)
    np.testing.assert_allclose(r2.scores, r1.scores, rtol=1e-9, atol=1e-12)


def test_layout_metrics_say_what_they_need(world):
    net, two, a, b, cat = world
    e = lumos.explain(two, (a, b), "saliency", target=0)
    with pytest.raises(ValueError, match="works on images"):
        lm.road(two, e)
    with pytest.raises(TypeError, match="scored with the torch module"):
        lm.deletion(lambda x: x, e)
