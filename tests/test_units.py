"""Neuron targets and layer attributions as arguments (core/units.py), checked on closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lumos.attribution.gradient import fused_input_gradient
from lumos.core.torch_model import torch_call
from lumos.core.torch_model import activation, through
from lumos.core.units import ActivationModel, Neuron, SpliceModel


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()


def _grad(model, x, target, **kw):
    with torch_call(model, x, target, method="saliency", clean_forward=False, **kw) as p:
        return fused_input_gradient(p).numpy(), p


def test_neuron_target_of_a_linear_unit_has_the_weight_row_as_gradient():
    m, x = _mlp(), torch.rand(6, 5)
    g, p = _grad(m, x, Neuron("0", 2))
    np.testing.assert_allclose(g, m[0].weight[2].detach().numpy()[None].repeat(6, 0), atol=0)
    assert p.meta["neuron"] == "Neuron('0', 2)"
    # the explained scalar is the unit's activation
    np.testing.assert_allclose(p.scalar.numpy(), m[0](x)[:, 2].detach().numpy(), atol=1e-6)


def test_neuron_target_by_position_and_by_callable_on_a_conv_layer():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    m = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2)).eval()
    x = torch.rand(2, 2, 5, 5)
    g, _ = _grad(m, x, Neuron("0", (1, 2, 3)))
    ref = torch.zeros(2, 5, 5)
    ref[:, 1:4, 2:5] = conv.weight[1].detach()  # the 3x3 kernel around (2, 3)
    np.testing.assert_allclose(g, ref[None].repeat(2, 1, 1, 1).numpy(), atol=1e-6)
    # a channel: sum over positions; equal to the callable that sums the channel
    g_ch, _ = _grad(m, x, Neuron("0", 1))
    g_fn, _ = _grad(m, x, Neuron("0", lambda a: a[:, 1].sum((1, 2))))
    np.testing.assert_allclose(g_ch, g_fn, atol=1e-6)


def test_neuron_errors_name_the_problem():
    m, x = _mlp(), torch.rand(2, 5)
    with pytest.raises(ValueError, match="out of range; the layer has 4"):
        _grad(m, x, Neuron("0", 7))
    with pytest.raises(ValueError, match="does not index the layer's activation"):
        _grad(m, x, Neuron("0", (1, 2)))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        _grad(m, x, Neuron("nope", 0))
    with pytest.raises(ValueError, match="layer_side"):
        Neuron("0", 1, layer_side="middle")


def test_attribution_to_a_layer_output_and_input():
    m, x = _mlp(), torch.rand(6, 5)
    # to the input of the last linear layer: the gradient is its weight row
    g, p = _grad(m, x, 1, at="2", layer_side="input")
    assert p.x.shape == (6, 4) and p.meta["at"] == "2" and p.meta["layer_side"] == "input"
    np.testing.assert_allclose(g, m[2].weight[1].detach().numpy()[None].repeat(6, 0), atol=0)
    np.testing.assert_allclose(p.x.numpy(), torch.relu(m[0](x)).detach().numpy(), atol=1e-6)
    # to the output of the first linear layer: through the ReLU's mask
    g, p = _grad(m, x, 1, at="0")
    pre = m[0](x).detach()
    ref = (pre > 0).float() * m[2].weight[1].detach()[None]
    np.testing.assert_allclose(g, ref.numpy(), atol=1e-6)


def test_splice_model_matches_the_model_and_activation_model_stops_at_the_layer():
    m, x = _mlp(), torch.rand(3, 5)
    a = activation(m, x, "1")
    s = SpliceModel(m, "1", x)
    with s.rows(torch.arange(3)):
        np.testing.assert_allclose(s(a).detach().numpy(), m(x).detach().numpy(), atol=1e-6)
    calls = []
    m[2].register_forward_hook(lambda *a: calls.append(1))
    ActivationModel(m, "0")(x)
    assert calls == []  # the layers after the unit's layer are not run
    np.testing.assert_allclose(through(m, "1", x).numpy(), a.numpy())


def test_hooks_are_removed_after_a_layer_call():
    m, x = _mlp(), torch.rand(3, 5)
    _grad(m, x, Neuron("2", 0), at="0")
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


class _TokenModel(nn.Module):
    """Token ids -> embedding -> masked mean -> linear; the mask is an extra forward argument."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids, mask=None):
        e = self.emb(ids)
        if mask is None:
            mask = torch.ones(ids.shape, dtype=e.dtype)
        pooled = (e * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(torch.tanh(pooled))


@pytest.mark.parametrize("with_args", [False, True])
def test_layer_attribution_with_integer_token_ids_keeps_them_integer(with_args):
    """``at=`` on an embedding: the ids reach the embedding as integers (they were cast to float,
    and the embedding refused them), and the gradient at the embedding output is the hand one."""
    import lumos

    model = _TokenModel().eval()
    ids = torch.tensor([[1, 5, 7, 2], [3, 3, 9, 0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]]) if with_args else None
    kw = {"forward_args": {"mask": mask}} if with_args else {}
    e = lumos.explain(model, ids, "saliency", target=1, at="emb", mode="signed", **kw)
    emb = model.emb(ids).detach().requires_grad_()
    m = mask if with_args else torch.ones(ids.shape)
    out = model.head(torch.tanh((emb * m[..., None]).sum(1) / m.sum(1, keepdim=True)))
    grad, = torch.autograd.grad(out[:, 1].sum(), emb)
    np.testing.assert_allclose(e.values, grad.numpy(), atol=1e-7)
    ig = lumos.explain(model, ids, "integrated_gradients", target=1, at="emb", n_steps=64, **kw)
    assert np.abs(ig.meta["completeness_gap"]).max() < 1e-4
    assert ids.dtype == torch.int64  # the user's ids untouched
