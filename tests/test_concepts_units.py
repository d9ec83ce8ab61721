"""Concepts and units (issue 15): shapes-world concept masks, network dissection with streamed
quantiles, unit ablation, TCAV with significance; each checked against a construction whose answer
is known, a brute-force reference, or a peer."""
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from lumos.concepts.ablation import ablated, class_units, mean_activation, random_units, unit_ablation
from lumos.concepts.dissection import StreamingQuantile, dissect
from lumos.concepts.cavs import (CAV, bonferroni, cav_from_activations, compute_cav, directional_derivatives,
                                 holm, relative_cavs, tcav, tcav_score)
from lumos.data import shapes_dataset
from lumos.data.shapes_concepts import TEXTURE_NAMES, colour_name, concept_masks, concept_names


def _state(model):
    """Everything ModelGuard promises to restore, for exact comparison."""
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for n, m in model.named_modules()]
    return ({k: v.clone() for k, v in model.state_dict().items()}, hooks,
            [(n, m.training) for n, m in model.named_modules()],
            [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()])


def _same_state(a, b):
    sa, ha, ta, pa = a
    sb, hb, tb, pb = b
    return (sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and ha == hb and ta == tb
            and pa == pb)


# ------------------------------------------------------------------------------------ concept masks
@pytest.fixture(scope="module")
def world():
    return shapes_dataset(120, split="test", watermark=0.5, seed=7, backgrounds=True)


def test_concept_masks_are_consistent_with_the_images(world):
    d = world
    cm = concept_masks(d)
    assert list(cm) == concept_names()
    shapes = [cm[f"shape:{c}"] for c in d.class_names]
    # the shape concepts partition the evidence masks, each on its own class's images only
    assert torch.equal(sum(s.int() for s in shapes).bool(), d.masks)
    assert int(sum(s.int() for s in shapes).max()) <= 1
    for k, s in enumerate(shapes):
        assert not s[d.labels != k].any()
    # colours partition the shape pixels too; every pixel of colour:c has the shape's colour, named c
    colours = [n for n in cm if n.startswith("colour:")]
    assert torch.equal(sum(cm[n].int() for n in colours), d.masks.int())
    img = d.images.permute(0, 2, 3, 1).numpy()
    for n in colours:
        idx = np.argwhere(cm[n].numpy())
        for i in np.unique(idx[:, 0]):
            pix = img[i][cm[n][i].numpy()]
            assert np.allclose(pix, d.params["color"][i].astype(np.float32)[None], atol=0)
            assert colour_name(pix[0]) == n.split(":")[1]
    assert torch.equal(cm["watermark"], d.watermark_masks)
    assert torch.equal(cm["background"], ~d.masks & ~d.watermark_masks)
    # background pixels are the untouched background, the mark pixels the checker
    bg = cm["background"][:, None].expand_as(d.images)
    assert torch.equal(d.images[bg], d.backgrounds[bg])
    # textures: background pixels only, at most one orientation per image
    tex = [cm[f"texture:{t}"] for t in TEXTURE_NAMES]
    assert all(not (t & ~cm["background"]).any() for t in tex)
    per_image = torch.stack([t.flatten(1).any(1) for t in tex], 1)
    assert int(per_image.sum(1).max()) == 1 and int(per_image.sum()) >= 60


def test_texture_concepts_match_the_stripes_seen_in_the_pixels(world):
    """The orientation of the strongest high-frequency peak of each background (FFT) is the
    texture concept's orientation, on images whose stripes are clearly visible."""
    d = world
    cm = concept_masks(d)
    amp = np.abs(d.params["stripe_amplitude"]).max(1)
    theta = d.params["stripe_angle"] % np.pi
    # away from bin edges (pi/8 + k pi/4) by 10 degrees, the FFT's angular resolution is enough
    edge_dist = np.abs(((theta - np.pi / 8) % (np.pi / 4)) - np.pi / 8)
    checked = 0
    fy, fx = np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64), indexing="ij")
    high = np.hypot(fy, fx) > 3.5 / 64  # the smooth noise lives below ~3 cycles per image
    for i in np.flatnonzero((amp >= 0.04) & (np.pi / 8 - edge_dist > np.radians(10))):
        ch = int(np.abs(d.params["stripe_amplitude"][i]).argmax())
        spec = np.abs(np.fft.fft2(d.backgrounds[i, ch].numpy() - d.backgrounds[i, ch].numpy().mean()))
        spec[~high] = 0
        ky, kx = np.unravel_index(spec.argmax(), spec.shape)
        seen = np.arctan2(fy[ky, kx], fx[ky, kx]) % np.pi
        from lumos.data.shapes_concepts import stripe_orientation

        name = stripe_orientation(seen)
        assert cm[f"texture:{name}"][i].any(), (i, seen, theta[i])
        checked += 1
    assert checked >= 12


def test_concept_selection_and_errors(world):
    cm = concept_masks(world, ["shape", "watermark"])
    assert list(cm) == ["shape:circle", "shape:square", "shape:triangle", "shape:cross", "watermark"]
    with pytest.raises(ValueError, match="unknown concept 'stripes'"):
        concept_masks(world, ["stripes"])
    with pytest.raises(TypeError, match="ShapesData"):
        concept_masks(world.images)
    assert all(v.any() for v in concept_masks(world[:3], drop_empty=True).values())


def test_colour_names():
    assert colour_name([1, 0, 0]) == "red" and colour_name([0, 0.8, 0]) == "green"
    assert colour_name([0, 0, 1]) == "blue" and colour_name([1, 1, 0]) == "yellow"
    assert colour_name([0.05, 0.05, 0.05]) == "black" and colour_name([0.9, 0.9, 0.92]) == "white"
    assert colour_name([0.5, 0.5, 0.5]) == "grey" and colour_name([1, 0.5, 0]) == "orange"


# ------------------------------------------------------------------------------- streamed quantile
@pytest.mark.parametrize("kind", ["normal", "relu", "heavy", "constant", "far from zero"])
def test_streamed_quantile_is_within_one_bin_of_the_exact_one(kind):
    g = np.random.default_rng(0)
    n_units, n = 6, 40_000
    if kind == "normal":
        v = g.normal(size=(n_units, n)) * np.arange(1, n_units + 1)[:, None] + 3
    elif kind == "relu":
        v = np.maximum(g.normal(size=(n_units, n)) - 1.5, 0)
    elif kind == "heavy":
        v = g.standard_cauchy(size=(n_units, n))
    elif kind == "constant":
        v = np.full((n_units, n), 2.5)
    else:  # a constant huge value: absolute bin indices must not overflow int64
        v = np.full((n_units, n), 3e10)
    sq = StreamingQuantile(n_units, n_bins=512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. an int64 overflow of bin indices
        for s in range(0, n, 3333):
            sq.update(v[:, s:s + 3333])
    for q in (0.5, 0.99, 0.995):
        est = sq.quantile(q)
        exact = np.quantile(v, q, axis=1, method="inverted_cdf")
        assert np.all(np.abs(est - exact) <= sq.tolerance * (1 + 1e-9)), (kind, q)
        lin = np.quantile(v, q, axis=1)
        gap = np.array([np.diff(np.sort(row)[int(np.floor(q * (n - 1))):int(np.floor(q * (n - 1))) + 2]).max(initial=0)
                        for row in v])
        assert np.all(np.abs(est - lin) <= sq.tolerance + gap + 1e-12)
    if kind == "normal":  # the bin width is a small share of the range: a tolerance that means something
        assert np.all(sq.tolerance <= 2 * np.ptp(v, axis=1) / (512 - 2))


def test_streamed_histogram_does_not_depend_on_batching():
    g = np.random.default_rng(1)
    v = g.gamma(2.0, size=(3, 9000)) * np.array([[1], [100], [1e-3]])
    a, b = StreamingQuantile(3, 256), StreamingQuantile(3, 256)
    a.update(v)
    for s in range(0, 9000, 97):
        b.update(v[:, ::-1][:, s:s + 97])  # other order, other batch size
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.start, b.start)
    assert np.array_equal(a.quantile(0.995), b.quantile(0.995))


# -------------------------------------------------------------------------------------- dissection
class MaskCopy(nn.Module):
    """Units that copy concept masks handed in as input channels (plus noise below 0.3)."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.units(x).mean((2, 3)))


def _mask_world(n=40, size=32, seed=0):
    g = np.random.default_rng(seed)
    a = np.zeros((n, size, size), bool)
    b = np.zeros((n, size, size), bool)
    for i in range(n):  # every image: one 4x4 square of each concept, apart
        r, c = g.integers(0, size - 4, 2)
        a[i, r:r + 4, c:c + 4] = True
        r2, c2 = g.integers(0, size - 4, 2)
        b[i, r2:r2 + 4, c2:c2 + 4] = True
        b[i] &= ~a[i]
    noise = g.uniform(0, 0.3, size=(n, 3, size, size)).astype(np.float32)
    x = noise.copy()
    x[:, 0] += a * 1.0
    x[:, 1] += b * 1.0
    return torch.from_numpy(x), {"A": torch.from_numpy(a), "B": torch.from_numpy(b),
                                 "A or B": torch.from_numpy(a | b)}


def test_a_unit_copying_a_concept_mask_gets_iou_one_and_its_label():
    x, masks = _mask_world()
    q = 1 - float(masks["A"].float().mean())  # the unit is "on" exactly on its concept
    res = dissect(MaskCopy(), x, masks, at="units", quantile=q, min_iou=0.04)
    assert res.labels[0] == "A" and res.iou[0, 0] >= 0.999
    assert res.iou[0, 1] == 0.0  # B never overlaps A
    assert res.labels[1] in ("B", "A or B") and res.iou[1, 1] > 0.9
    assert res.scores[2] < 0.05  # pure noise
    assert res.units("A") == [0]
    assert np.all(np.abs(res.thresholds - np.quantile(x.transpose(0, 1).reshape(3, -1).numpy(), q, axis=1,
                                                     method="inverted_cdf")) <= res.tolerance * (1 + 1e-9))
    assert "A" in res.table() and res.summary()["A"] == 1


def test_dissection_upsamples_bilinearly_and_does_not_depend_on_the_batch_size():
    """A layer at half resolution: the IoU equals a brute-force computation with
    F.interpolate(bilinear) and the exact quantile, for several batch sizes."""
    x, masks = _mask_world(n=30, seed=3)

    class Half(MaskCopy):
        def __init__(self):
            super().__init__()
            self.units = nn.AvgPool2d(2)

    model = Half()
    runs = [dissect(model, x, masks, at="units", quantile=0.98, batch_size=bs) for bs in (4, 7, 64)]
    for r in runs[1:]:
        assert np.array_equal(r.iou, runs[0].iou) and np.array_equal(r.thresholds, runs[0].thresholds)
    a = nn.AvgPool2d(2)(x)
    up = torch.nn.functional.interpolate(a, size=(32, 32), mode="bilinear", align_corners=False)
    thr = torch.as_tensor(runs[0].thresholds, dtype=torch.float32)[None, :, None, None]
    on = up > thr
    for j, (name, m) in enumerate(masks.items()):
        inter = (on & m[:, None]).sum((0, 2, 3)).double()
        union = (on | m[:, None]).sum((0, 2, 3)).double()
        assert np.allclose(runs[0].iou[:, j], (inter / union).numpy(), atol=1e-12)
    assert runs[0].iou[0, 0] > 0.5  # still clearly the A detector at half resolution


def test_dissection_errors_and_model_left_as_found():
    x, masks = _mask_world(n=6)
    model = MaskCopy()
    before = _state(model)
    with pytest.raises(ValueError, match="quantile"):
        dissect(model, x, masks, at="units", quantile=1.0)
    with pytest.raises(ValueError, match=r"masks\['A'\] must have shape \(6, H, W\)"):
        dissect(model, x, {"A": masks["A"][:3]}, at="units")
    with pytest.raises(TypeError, match="boolean"):
        dissect(model, x, {"A": masks["A"].float()}, at="units")
    with pytest.raises(ValueError, match="dissection needs"):
        dissect(model, x, masks, at="head")
    with pytest.raises(ValueError, match="no layer named 'unit'"):
        dissect(model, x, masks, at="unit")
    assert _same_state(before, _state(model))


# ---------------------------------------------------------------------------------------- ablation
class GapNet(nn.Module):
    """conv-relu, GAP, linear: zeroing unit u lowers logit c by exactly w_cu · mean(A_u)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _gap_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    return x, torch.arange(n) % 3


def test_zero_ablation_equals_the_closed_form_and_mean_ablation_the_mean():
    model = GapNet()
    x, y = _gap_data()
    with torch.no_grad():
        a = model.features(x)
        logits = model(x)
    units = [1, 4]
    res = unit_ablation(model, x, y, "features.1", units)
    w = model.classifier.weight.detach()
    expected_drop = (a[:, units].mean((2, 3)) @ w[:, units].T).double()  # (n, classes)
    assert np.allclose(res.logits_before - res.logits_after, expected_drop.numpy(), atol=1e-5)
    for c in range(3):
        sel = (y == c).numpy()
        assert res.logit_drop[c] == pytest.approx(expected_drop[sel, c].mean().item(), abs=1e-5)
        assert res.accuracy_before[c] == pytest.approx((logits.argmax(1)[y == c] == c).float().mean().item())
    # mean mode: the units say their average over the background
    bg = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    m = mean_activation(model, bg, "features.1")
    with torch.no_grad():
        assert torch.allclose(m, model.features(bg).mean(0), atol=1e-6)
        with ablated(model, "features.1", units, mode="mean", background=bg):
            got = model(x)
        ref_a = a.clone()
        ref_a[:, units] = m[units]
        ref = model.classifier(ref_a.mean((2, 3)))
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(model(x), logits)  # hook gone


def test_class_units_rank_equals_brute_force_zeroing():
    model = GapNet(seed=2)
    x, y = _gap_data(seed=1)
    units, scores = class_units(model, x, "features.1", target=1, k=6)
    with torch.no_grad():
        base = model(x)[:, 1].mean().item()
        drops = []
        for u in range(6):
            with ablated(model, "features.1", [u]):
                drops.append(base - model(x)[:, 1].mean().item())
    assert np.allclose(scores, drops, atol=1e-5)  # exact: the model is linear after the layer
    assert units == list(np.argsort(-np.array(drops), kind="stable"))


def test_random_units_are_seeded_and_exclude():
    a = random_units(64, 5, seed=3, exclude=[1, 2, 3])
    assert a == random_units(64, 5, seed=3, exclude=[1, 2, 3]) and not set(a) & {1, 2, 3} and len(set(a)) == 5
    assert a != random_units(64, 5, seed=4, exclude=[1, 2, 3])
    with pytest.raises(ValueError, match="k: only 2 units"):
        random_units(4, 3, seed=0, exclude=[0, 1])


def test_ablation_leaves_the_model_as_found_also_on_error():
    model = GapNet()
    x, y = _gap_data()
    before = _state(model)
    unit_ablation(model, x, y, "features.1", [0, 2], mode="mean")
    assert _same_state(before, _state(model))
    with pytest.raises(ValueError, match="units: layer 'features.1' has 6 channels"):
        unit_ablation(model, x, y, "features.1", [7])  # raised inside the hook, mid-forward
    assert _same_state(before, _state(model))

    class Boom(GapNet):
        def forward(self, x):
            out = super().forward(x)
            if getattr(self, "armed", False):
                raise RuntimeError("boom")
            return out

    boom = Boom()
    before = _state(boom)
    with pytest.raises(RuntimeError, match="boom"):
        with ablated(boom, "features.1", [0]):
            boom.armed = True
            boom(x)
    del boom.armed
    assert _same_state(before, _state(boom))
    with pytest.raises(ValueError, match="labels must be 24 integer classes"):
        unit_ablation(model, x, y[:3], "features.1", [0])
    with pytest.raises(ValueError, match="background: mode='mean'"):
        with ablated(model, "features.1", [0], mode="mean"):
            pass
    with pytest.raises(ValueError, match="mode"):
        unit_ablation(model, x, y, "features.1", [0], mode="noise")
    assert _same_state(before, _state(model))


# -------------------------------------------------------------------------------------------- TCAV
class LinearInConcept(nn.Module):
    """h = x (layer 'rep'); logit_0 = 3 v·h + Σ_j 2 tanh(u_j·h) with u_j ⊥ v; logit_1 = -logit_0;
    logit_2 = Σ_j 2 tanh(u_j·h) does not depend on the concept direction."""

    def __init__(self, d=32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        v = torch.randn(d, generator=g)
        self.v = v / v.norm()
        u = torch.randn(12, d, generator=g)
        u = u - (u @ self.v)[:, None] * self.v[None]
        self.u = u / u.norm(dim=1, keepdim=True)
        self.rep = nn.Identity()

    def forward(self, x):
        h = self.rep(x)
        other = 2 * torch.tanh(h @ self.u.T).sum(1)
        z = 3 * (h @ self.v) + other
        return torch.stack([z, -z, other], 1)


def _tcav_world(d=32, seed=0):
    model = LinearInConcept(d)
    g = torch.Generator().manual_seed(seed + 1)
    concept = torch.randn(60, d, generator=g) + 6 * model.v
    pool = torch.randn(600, d, generator=g)
    inputs = torch.randn(100, d, generator=g)
    fake = torch.randn(60, d, generator=g)  # a "concept" that is just random inputs
    return model, concept, pool, inputs, fake


def test_tcav_on_a_logit_linear_in_the_concept_direction():
    model, concept, pool, inputs, fake = _tcav_world()
    res = tcav(model, inputs, {"concept": concept, "random concept": fake}, pool, "rep", targets=[0, 1, 2],
               n_runs=12, seed=0)
    i, r = res.concepts.index("concept"), res.concepts.index("random concept")
    assert np.all(res.scores[i, 0] == 1.0)  # every input, every run
    assert np.all(res.scores[i, 1] == 0.0)
    assert res.p_values[i, 0] < 0.01 and res.p_values[i, 1] < 0.01
    assert res.significant[i, 0] and res.significant[i, 1]
    assert res.cav_accuracy[i].mean() > 0.9 and np.all(res.cav_accuracy[i] > 0.7)  # held out: 15 + 15 examples
    # the random concept: scores near 0.5, nothing significant
    assert np.all(np.abs(res.scores[r].mean(1) - 0.5) < 0.2)
    assert not res.significant[r].any()
    # class 2 does not depend on the concept direction: no significance for the real concept either
    assert not res.significant[i, 2]
    assert np.all(np.abs(res.random_scores.mean(1) - 0.5) < 0.2)
    assert "concept" in res.table()


def test_tcav_score_is_the_share_of_positive_directional_derivatives():
    model, concept, pool, inputs, _ = _tcav_world()
    cav = compute_cav(model, concept, pool[:60], "rep", seed=1)
    assert np.isclose(np.linalg.norm(cav.vector), 1.0) and cav.vector @ model.v.numpy() > 0.9
    dd = directional_derivatives(model, inputs, 0, cav)
    x = inputs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    assert np.allclose(dd, g.double().numpy() @ cav.vector, atol=1e-5)
    assert tcav_score(model, inputs, 0, cav) == float((dd > 0).mean())
    # batch size does not matter
    assert np.allclose(directional_derivatives(model, inputs, 0, cav, batch_size=7), dd, atol=1e-12)


def test_cav_save_load_round_trip_and_reuse(tmp_path):
    model, concept, pool, inputs, _ = _tcav_world()
    cav = compute_cav(model, concept, pool[:60], "rep", concept="stripes", classifier="logistic", seed=2)
    npz, js = cav.save(tmp_path / "stripes")
    assert npz.suffix == ".npz" and js.suffix == ".json"
    meta = json.loads(js.read_text())
    assert meta["concept"] == "stripes" and meta["layer"] == "rep" and meta["classifier"] == "logistic"
    with np.load(npz, allow_pickle=False) as z:  # plain arrays, no pickle
        assert set(z.files) == {"vector", "intercept"}
    back = CAV.load(tmp_path / "stripes.npz")
    assert np.array_equal(back.vector, cav.vector) and back.intercept == cav.intercept
    assert (back.concept, back.layer, back.shape, back.accuracy) == (cav.concept, cav.layer, cav.shape, cav.accuracy)
    new_inputs = torch.randn(30, 32, generator=torch.Generator().manual_seed(9))
    assert tcav_score(model, new_inputs, 0, back) == tcav_score(model, new_inputs, 0, cav) == 1.0
    with pytest.raises(FileNotFoundError, match="no CAV file"):
        CAV.load(tmp_path / "missing")


def test_relative_cavs_and_classifiers_are_seeded():
    model, concept, pool, _, _ = _tcav_world()
    other = pool[:60] - 6 * model.v
    rel = relative_cavs(model, {"up": concept, "down": other}, "rep", seed=0)
    assert rel["up"].negative == "down" and rel["up"].vector @ model.v.numpy() > 0.9
    assert rel["down"].vector @ model.v.numpy() < -0.9
    a = cav_from_activations(concept, pool[:60], seed=4)
    b = cav_from_activations(concept, pool[:60], seed=4)
    assert np.array_equal(a.vector, b.vector)
    md = cav_from_activations(concept, pool[:60], classifier="mean_difference", test_fraction=0)
    ref = (concept.mean(0) - pool[:60].mean(0)).double().numpy()
    assert np.allclose(md.vector, ref / np.linalg.norm(ref)) and np.isnan(md.accuracy)


def test_multiple_testing_corrections():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(bonferroni(p), [0.04, 0.16, 0.12, 0.02])
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert np.allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert np.all(holm(p) <= bonferroni(p))


def test_tcav_errors_and_model_left_as_found():
    model, concept, pool, inputs, _ = _tcav_world()
    before = _state(model)
    with pytest.raises(ValueError, match="n_runs"):
        tcav(model, inputs, {"c": concept}, pool, "rep", targets=[0], n_runs=1)
    with pytest.raises(ValueError, match="target: class 5"):
        tcav(model, inputs, {"c": concept}, pool, "rep", targets=[5], n_runs=2)
    with pytest.raises(ValueError, match="correction"):
        tcav(model, inputs, {"c": concept}, pool, "rep", targets=[0], correction="fdr")
    with pytest.raises(ValueError, match="no input is labelled 2"):
        tcav(model, inputs, {"c": concept}, pool, "rep", targets=[2], labels=np.zeros(100, int), n_runs=2)
    with pytest.raises(ValueError, match="random: the pool has 600 inputs"):
        tcav(model, inputs, {"c": concept}, pool, "rep", targets=[0], random_size=700, n_runs=2)
    assert _same_state(before, _state(model))


def test_tcav_equals_captum_on_the_same_cav(tmp_path):
    captum_tcav = pytest.importorskip("captum.concept")
    from captum.concept._utils.classifier import Classifier

    model, concept, pool, inputs, _ = _tcav_world()
    rnd = pool[:60]
    cav = compute_cav(model, concept, rnd, "rep", seed=0)

    class Fixed(Classifier):
        def __init__(self):
            pass

        def train_and_eval(self, dataloader, **kw):
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            v = torch.as_tensor(cav.vector)
            return torch.stack([-v, v])

        def classes(self):
            return [0, 1]

    c_rand = captum_tcav.Concept(0, "random", torch.utils.data.DataLoader(rnd, batch_size=30))
    c_conc = captum_tcav.Concept(1, "concept", torch.utils.data.DataLoader(concept, batch_size=30))
    peer = captum_tcav.TCAV(model, ["rep"], classifier=Fixed(), save_path=str(tmp_path) + "/")
    for target in (0, 2):
        out = peer.interpret(inputs, [[c_rand, c_conc]], target=target)
        theirs = float(next(iter(out.values()))["rep"]["sign_count"][1])
        assert tcav_score(model, inputs, target, cav) == pytest.approx(theirs, abs=1e-6)  # theirs in float32


# ------------------------------------------------------------------------------ on the demo world
def test_demo_cnn_watermark_units_carry_the_shortcut():
    """The shipped CNN: dissection finds watermark detectors at features.4; zeroing those with
    IoU >= 0.5 takes most of the shortcut away, as many random units do not."""
    from lumos.data import load_demo_model

    model = load_demo_model()
    data = shapes_dataset(120, split="test", watermark=0.5, seed=3)
    res = dissect(model, data.images, concept_masks(data, ["watermark", "shape", "background"]), at="features.4")
    units = res.units("watermark", 0.5)
    assert 1 <= len(units) <= 4 and res.summary()["watermark"] >= 10
    clean = shapes_dataset(150, split="test", watermark="none", seed=11)
    marked = shapes_dataset(150, split="test", watermark="all", seed=11)
    others = marked.labels.numpy() != 0
    wm = unit_ablation(model, marked.images, marked.labels, "features.4", units)
    ctrl_units = random_units(res.n_units, len(units), seed=0, exclude=res.units("watermark", 0.04))
    ctrl = unit_ablation(model, marked.images, marked.labels, "features.4", ctrl_units)
    before = wm.rate(0, before=True, where=others)
    assert before > 0.1  # the shortcut exists
    assert wm.rate(0, where=others) < before / 3
    assert ctrl.rate(0, where=others) > before / 2
    assert unit_ablation(model, clean.images, clean.labels, "features.4", units).overall_after > 0.9


def test_concepts_demo_tour_form(tmp_path):
    from lumos.concepts._demo import concepts_demo

    files = {}
    lines = concepts_demo(tmp_path, quick=True, files=files)
    text = "\n".join(lines)
    assert "network dissection" in text and "ablating the watermark units" in text and "TCAV" in text
    names = {p.split("/")[-1] for p in files}
    assert {"concepts_dissection.png", "concepts_tcav.png", "concepts_channels.png"} <= names
    assert all((tmp_path / n).exists() for n in names) and all(len(w) > 20 for w in files.values())
