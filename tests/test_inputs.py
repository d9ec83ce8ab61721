"""Several inputs and forward arguments: the core mechanism (packing, binding, row expansion) and
Explanations that hold one values array per input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lumos
from lumos.core.explanation import concatenate
from lumos.core.inputs import Args, BoundModel, ForwardArgsError, Packing, Shared, bind
from lumos.core.torch_model import forward, gradient, torch_call
from lumos.core.targets import resolve_target


class TwoInputs(nn.Module):
    """f(a, b; scale, bias) = W [a.flatten, b] * scale + bias, per sample."""

    def __init__(self, d_a=4, d_b=3, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(d_a + d_b, k)

    def forward(self, a, b, scale=None, bias=0.0):
        out = self.lin(torch.cat([a.flatten(1), b], 1))
        if scale is not None:
            out = out * scale[:, None]
        return out + bias


def _ab(n=5):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 2, 2, generator=g), torch.rand(n, 3, generator=g)


def test_packing_round_trip_tuple_and_dict():
    a, b = _ab()
    ids = torch.randint(0, 9, (5, 6))
    for inputs in ((a, b, ids), {"a": a, "b": b, "ids": ids}):
        packing, tensors = Packing.of(inputs)
        z = packing.pack(tensors, torch.float32)
        assert z.shape == (5, 4 + 3 + 6)
        back = packing.split(z)
        for t, u in zip(tensors, back):
            assert u.dtype == t.dtype and torch.equal(u, t)
        arrays = packing.unpack_values(z)
        assert (isinstance(arrays, dict)) == isinstance(inputs, dict)


def test_packing_refuses_mismatched_batches():
    with pytest.raises(ValueError, match=r"same number of samples; inputs\[1\] has 4"):
        Packing.of((torch.rand(5, 2), torch.rand(4, 2)))


def test_pack_param_broadcasts_one_value_per_input_or_per_sample():
    a, b = _ab()
    packing, _ = Packing.of((a, b))
    z = packing.pack_param((0.5, torch.arange(3.0)), "baselines", torch.float32)
    assert z.shape == (1, 7)
    assert torch.equal(z[0], torch.tensor([0.5] * 4 + [0.0, 1.0, 2.0]))
    per_sample = packing.pack_param((torch.zeros(5, 2, 2), 1.0), "baselines", torch.float32)
    assert per_sample.shape == (5, 7) and torch.all(per_sample[:, 4:] == 1)
    assert packing.pack_param("zero", "baselines", torch.float32) == "zero"
    with pytest.raises(ValueError, match="baselines: with several inputs give one value per input"):
        packing.pack_param((0.0,), "baselines", torch.float32)
    with pytest.raises(ValueError, match=r"does not broadcast"):
        packing.pack_param((torch.zeros(3), 0.0), "baselines", torch.float32)


def test_bound_model_calls_the_model_as_it_expects_and_expands_per_sample_args():
    m = TwoInputs()
    a, b = _ab()
    scale = torch.rand(5) + 0.5
    bound, z, packing = bind(m, (a, b), {"scale": scale, "bias": 2.0}, dtype=torch.float32)
    assert isinstance(bound, BoundModel) and z.shape == (5, 7)
    ref = m(a, b, scale=scale, bias=2.0)
    assert torch.allclose(forward(bound, z), ref)
    rows = torch.tensor([4, 4, 0, 2])
    out = forward(bound, z[rows], rows=rows)
    assert torch.allclose(out, ref[rows])
    # without rows, a batch that is not the samples is refused, never mismatched
    with pytest.raises(ForwardArgsError, match="without saying which of the 5 samples"):
        forward(bound, z[rows])
    # Shared: a batch-length argument that is the same for every row
    class Table(TwoInputs):
        def forward(self, a, b, table):
            return super().forward(a, b) + table.sum()

    mt, table = Table(), torch.rand(5, 2)
    bound2, z2, _ = bind(mt, (a, b), Args(Shared(table)), dtype=torch.float32)
    assert torch.allclose(forward(bound2, z2[:2]), mt(a[:2], b[:2], table))


def test_gradient_of_bound_model_equals_the_gradient_per_sample():
    m = TwoInputs()
    a, b = _ab()
    scale = torch.rand(5) + 0.5
    bound, z, packing = bind(m, (a, b), {"scale": scale}, dtype=torch.float32)
    tgt = resolve_target(1, forward(bound, z))
    rows = torch.tensor([3, 1, 1, 0])
    g, s = gradient(bound, z[rows], tgt, rows)
    w = m.lin.weight[1].detach()
    assert torch.allclose(g, w[None] * scale[rows][:, None], atol=1e-6)


def test_dict_inputs_are_passed_as_keywords():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, *, pixel, mask):
            return self.lin(pixel) * mask[:, None]

    m = KW()
    x, mask = torch.rand(4, 3), torch.tensor([1.0, 0.0, 1.0, 1.0])
    bound, z, packing = bind(m, {"pixel": x}, {"mask": mask}, dtype=torch.float32)
    assert torch.allclose(forward(bound, z), m(pixel=x, mask=mask))


def test_torch_call_refuses_several_inputs_for_single_input_methods():
    m = TwoInputs()
    with pytest.raises(ValueError, match="gradcam explains one input tensor"):
        with torch_call(m, _ab(), 0, method="gradcam"):
            pass


def test_layer_names_and_lock_are_the_user_models():
    from lumos.core.torch_model import get_module, model_lock

    m = TwoInputs()
    bound, _, _ = bind(m, _ab(), None, dtype=torch.float32)
    assert get_module(bound, "lin") is m.lin
    assert model_lock(bound) is model_lock(m)


# ------------------------------------------------------------------ Explanations of several inputs
def _multi(kind="tuple"):
    rng = np.random.default_rng(0)
    va, vb = rng.normal(size=(4, 2, 2)), rng.normal(size=(4, 3))
    xa, xb = rng.normal(size=(4, 2, 2)), rng.normal(size=(4, 3))
    values = (va, vb) if kind == "tuple" else {"img": va, "tab": vb}
    inputs = (xa, xb) if kind == "tuple" else {"img": xa, "tab": xb}
    total = va.reshape(4, -1).sum(1) + vb.sum(1)
    return lumos.Explanation(values=values, inputs=inputs, output=total + 1.0,
                             baseline_output=np.ones(4), method="m",
                             meta={"gap": np.arange(4.0)}, sample_keys=("gap",))


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_explanation_of_several_inputs_slices_saves_and_completes(tmp_path, kind):
    e = _multi(kind)
    assert e.several and len(e) == 4
    np.testing.assert_allclose(e.completeness_gap, 0, atol=1e-12)  # over all inputs together
    s = e[1:3]
    parts = list(s.values.values()) if kind == "dict" else list(s.values)
    assert [p.shape[0] for p in parts] == [2, 2] and s.meta["gap"].tolist() == [1.0, 2.0]
    back = lumos.load(e.save(tmp_path / "m.npz"))
    assert type(back.values) is type(e.values) and back.input_names == e.input_names
    for k in e.input_names:
        key = k if kind == "dict" else int(k)
        np.testing.assert_array_equal(back.values[key], e.values[key])
        np.testing.assert_array_equal(back.inputs[key], e.inputs[key])
    both = concatenate([e[:2], e[2:]])
    for k in e.input_names:
        key = k if kind == "dict" else int(k)
        np.testing.assert_array_equal(both.values[key], e.values[key])
    one = e.part("tab" if kind == "dict" else 1)
    assert not one.several and one.values.shape == (4, 3) and one.meta["input"] in ("tab", "1")
    with pytest.raises(TypeError, match="one values array per input"):
        np.asarray(e)


def test_explanation_parts_must_share_the_batch():
    with pytest.raises(ValueError, match="same batch axis"):
        lumos.Explanation(values=(np.zeros((3, 2)), np.zeros((4, 2))))


def test_nested_calls_compose_rows_and_unknown_batches_are_refused():
    m = TwoInputs()
    a, b = _ab()
    scale = torch.rand(5) + 0.5
    bound, z, _ = bind(m, (a, b), {"scale": scale}, dtype=torch.float32)
    ref = m(a, b, scale=scale)
    outer = torch.tensor([2, 2, 4, 0, 1, 3])  # an outer batch built from the samples
    built = z[outer]
    with bound.rows(outer):  # an inner call on rows 5, 0, 3 of that batch
        inner = torch.tensor([5, 0, 3])
        out = forward(bound, built[inner], rows=inner)
    assert torch.allclose(out, ref[outer[inner]])
    # a nested torch_call on a built batch: refused unless the enclosing call said whose rows
    with pytest.raises(ForwardArgsError, match="without saying which sample each row belongs to"):
        with torch_call(bound, built, 0, method="t"):
            pass
    with bound.rows(outer):
        with torch_call(bound, built, 0, method="t") as p:
            assert torch.allclose(p.output, ref[outer])


def test_a_single_token_id_tensor_reaches_the_model_as_integers_for_perturbation_methods():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.lin = nn.Embedding(20, 4), nn.Linear(4, 2)

        def forward(self, ids):
            assert ids.dtype == torch.long  # an embedding needs the ids as they were given
            return self.lin(self.emb(ids).mean(1))

    m = Tok()
    ids = torch.randint(1, 20, (3, 6), generator=torch.Generator().manual_seed(0))
    occ = lumos.explain(m, ids, "occlusion", target=0, window=1, fill=0)
    abl = lumos.explain(m, ids, "feature_ablation", target=0, fill=0)
    as_tuple = lumos.explain(m, (ids,), "feature_ablation", target=0, fill=0)
    # by hand: the drop of the class-0 score when token j becomes id 0
    with torch.no_grad():
        base = m(ids)[:, 0]
        ref = torch.stack([base - m(ids.index_fill(1, torch.tensor([j]), 0))[:, 0] for j in range(6)], 1)
    np.testing.assert_allclose(occ.values, ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(abl.values, ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(as_tuple.values[0], ref.numpy(), atol=1e-6)
