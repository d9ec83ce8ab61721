"""Class-activation maps: closed forms, naive float64 references, batching, targets, layers, errors,
and the pointing game on the shipped demo model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lumos
from conftest import SmallCNN, assert_same_state, model_state
from lumos.attribution.cam import find_spatial_layers

CAM_METHODS = ["cam", "gradcam", "gradcam_pp", "layercam", "scorecam", "guided_gradcam"]


# ---------------------------------------------------------------------------------- models
class PoolCNN(nn.Module):
    """conv-relu-maxpool-conv-relu-GAP-linear: the layer map (6x6) is coarser than the input."""

    def __init__(self, n_classes=4, inplace=False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def split(self, layer: int):
        """(prefix, suffix) around features[layer], for hook-free references."""
        def suffix(a):
            return self.classifier(self.pool(self.features[layer + 1:](a)).flatten(1))
        return self.features[:layer + 1], suffix


class FunctionalGAP(nn.Module):
    """GAP written as a mean, not a module: CAM must still recognise the structure."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class FlattenNet(nn.Module):
    """Not GAP: conv-relu-flatten-linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class ViewNet(FlattenNet):
    """A .view on the activations: cannot run on channels-last inputs."""

    def forward(self, x):
        a = self.act(self.conv(x))
        return self.fc(a.view(len(a), -1))


class TwoHeadNet(SmallCNN):
    """GAP followed by two linear layers: CAM's weights do not apply."""

    def __init__(self):
        super().__init__(n_classes=6)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x):
        return self.head(super().forward(x))


class ReusedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()  # called twice
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).mean((2, 3)))


class Residual(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) + x)  # the block's output is made by no child module


class NestedNet(nn.Module):
    def __init__(self, residual=False):
        super().__init__()
        block2 = Residual(4) if residual else nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), block2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class SegNet(nn.Module):
    """Fully convolutional: output (batch, classes, H, W)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return F.interpolate(self.head(self.body(x)), size=x.shape[2:], mode="nearest")


class Signal1D(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(2, 5, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                                      nn.Conv1d(5, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        return self.classifier(self.features(x).mean(2))


def _seeded(cls, *args, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(*args, **kw).eval()


@pytest.fixture
def pool_cnn():
    return _seeded(PoolCNN)


@pytest.fixture
def imgs():
    g = torch.Generator().manual_seed(3)
    return torch.rand(5, 3, 12, 12, generator=g)


def _lm(e):
    return torch.as_tensor(e.meta["layer_map"])


# ---------------------------------------------------------------------------------- references
def _ref_grad(suffix, a, target):
    """Per-sample d target / d A in float64, one sample at a time (no hooks)."""
    grads, scores = [], []
    for i in range(len(a)):
        ai = a[i:i + 1].detach().clone().requires_grad_(True)
        s = suffix(ai)[0, target[i]]
        (g,) = torch.autograd.grad(s, ai)
        grads.append(g[0]), scores.append(s.detach())
    return torch.stack(grads), torch.stack(scores)


def _upsample_ref(m, size):
    """Independent bilinear reference (scikit-image, pixel centres aligned, edge-clamped)."""
    from skimage.transform import resize

    return np.stack([resize(mi, size, order=1, mode="edge", anti_aliasing=False) for mi in m])


# ---------------------------------------------------------------------------------- closed forms
def test_cam_and_gradcam_identity_on_gap_linear(pool_cnn, imgs):
    """On GAP -> linear, dS/dA_kij = W_ck / Z, so Grad-CAM = CAM / Z exactly (Z = 6*6 = 36)."""
    m, x = pool_cnn.double(), imgs.double()
    t = [0, 1, 2, 3, 1]
    c = lumos.explain(m, x, "cam", target=t)
    g = lumos.explain(m, x, "gradcam", target=t)
    assert c.meta["layer"] == g.meta["layer"] == "features.4"
    assert c.meta["layer_map"].shape == (5, 1, 6, 6) and c.values.shape == (5, 1, 12, 12)
    z = 36
    np.testing.assert_allclose(g.meta["layer_map"] * z, c.meta["layer_map"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.values * z, c.values, rtol=1e-12, atol=1e-12)
    # Grad-CAM weights are W_c / Z; CAM weights are W_c.
    w = m.classifier.weight.detach().numpy()[t]
    np.testing.assert_allclose(c.meta["channel_weights"], w, rtol=1e-14)
    np.testing.assert_allclose(g.meta["channel_weights"], w / z, rtol=1e-12)


def test_cam_closed_form_and_completeness(pool_cnn, imgs):
    """M_c = sum_k W_ck A_k, and mean(M_c) + b_c = y_c exactly."""
    m, x = pool_cnn.double(), imgs.double()
    e = lumos.explain(m, x, "cam", target="predicted")
    a = m.features(x).detach()
    pred = m(x).argmax(1)
    ref = torch.einsum("nk,nkhw->nhw", m.classifier.weight[pred].detach(), a)
    np.testing.assert_allclose(e.meta["layer_map"][:, 0], ref.numpy(), rtol=1e-12, atol=1e-13)
    total = e.meta["layer_map"].mean((1, 2, 3)) + e.meta["bias"]
    np.testing.assert_allclose(total, e.output, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(e.target, pred.numpy())


def test_gradcam_pp_closed_form_on_gap_linear(pool_cnn, imgs):
    """With g_k = W_ck / Z constant over positions, alpha = 1 / (2 + g_k sum A_k) and
    w_k = Z ReLU(g_k) / (2 + g_k sum A_k). (Not equal to Grad-CAM: the exp(S) derivation keeps the
    denominator even when S is linear in A.)"""
    m, x = pool_cnn.double(), imgs.double()
    t = [3, 2, 1, 0, 0]
    e = lumos.explain(m, x, "gradcam_pp", target=t)
    a = m.features(x).detach()
    z = 36
    g = m.classifier.weight.detach()[t] / z                      # (n, K)
    sa = a.sum((2, 3))
    w = z * g.clamp(min=0) / (2 + g * sa)
    np.testing.assert_allclose(e.meta["channel_weights"], w.numpy(), rtol=1e-11, atol=1e-14)
    ref = torch.einsum("nk,nkhw->nhw", w, a)
    np.testing.assert_allclose(e.meta["layer_map"][:, 0], ref.numpy(), rtol=1e-11, atol=1e-13)
    # Negative-weight channels drop out entirely (the ReLU on the gradient).
    assert (e.meta["channel_weights"][g.numpy() < 0] == 0).all()


def test_gradcam_pp_matches_paper_formula_with_exp_score():
    """The paper's general alpha from the 2nd/3rd derivatives of Y = exp(S), computed by autograd,
    with a non-linear (ReLU conv) suffix: ours times exp(S) equals the paper's map."""
    torch.manual_seed(4)
    pre = nn.Conv2d(3, 2, 3, padding=1).double()
    post = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()).double()
    fc = nn.Linear(3, 2).double()
    model = nn.Sequential(pre, nn.ReLU(), nn.MaxPool2d(2), post, nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), fc).eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    e = lumos.explain(model, x, "gradcam_pp", target=[0, 1], at="2")
    for i, c in enumerate([0, 1]):
        a = model[:3](x[i:i + 1]).detach().requires_grad_(True)

        def y_of(a_):
            return torch.exp(model[3:](a_)[0, c])

        (d1,) = torch.autograd.grad(y_of(a), a, create_graph=True)
        flat = a.reshape(-1)
        d2 = torch.zeros_like(flat)
        d3 = torch.zeros_like(flat)
        for j in range(flat.numel()):
            (h,) = torch.autograd.grad(d1.reshape(-1)[j], a, create_graph=True)
            d2[j] = h.reshape(-1)[j]
            (t3,) = torch.autograd.grad(h.reshape(-1)[j], a, retain_graph=True)
            d3[j] = t3.reshape(-1)[j]
        d2, d3 = d2.reshape(a.shape), d3.reshape(a.shape)
        sa = a.detach().sum((2, 3), keepdim=True)
        den = 2 * d2 + sa * d3
        alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1), 0)
        w = (alpha * d1.detach().clamp(min=0)).sum((2, 3))
        paper = torch.einsum("k,khw->hw", w[0], a[0]).detach()
        s = model(x[i:i + 1])[0, c].detach()
        np.testing.assert_allclose(e.meta["layer_map"][i, 0] * torch.exp(s).item(), paper.numpy(),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", [0, 1, 4])
def test_gradcam_and_layercam_match_float64_reference_at_any_layer(pool_cnn, imgs, layer):
    m, x = pool_cnn.double(), imgs.double()
    t = [0, 1, 2, 3, 2]
    prefix, suffix = m.split(layer)
    a = prefix(x).detach()
    g, _ = _ref_grad(suffix, a, t)
    gc = lumos.explain(m, x, "gradcam", target=t, at=f"features.{layer}")
    lc = lumos.explain(m, x, "layercam", target=t, at=f"features.{layer}")
    ref_gc = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
    ref_lc = (g.clamp(min=0) * a).sum(1, keepdim=True)
    np.testing.assert_allclose(gc.meta["layer_map"], ref_gc.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(lc.meta["layer_map"], ref_lc.numpy(), rtol=1e-10, atol=1e-13)
    assert gc.meta["layer"] == f"features.{layer}" and gc.meta["layer_auto"] is False
    # values: the same map upsampled bilinearly (pixel centres aligned) to the input.
    np.testing.assert_allclose(gc.values[:, 0], _upsample_ref(ref_gc[:, 0].numpy(), (12, 12)),
                               rtol=1e-10, atol=1e-12)


def test_maps_are_raw_and_signed(pool_cnn, imgs):
    """No ReLU and no scaling inside: Grad-CAM of a mixed target has both signs."""
    e = lumos.explain(pool_cnn, imgs, "gradcam", target=lambda o: o[:, 0] - o[:, 1], at="features.0")
    assert (e.values < 0).any() and (e.values > 0).any()
    assert np.abs(e.values).max() != pytest.approx(1.0)


def _scorecam_reference(model, x, layer_fn, target, baseline=0.0, channels=None, softmax=True):
    """One masked forward per channel per image in float64 (the straightforward loop)."""
    out = []
    with torch.no_grad():
        for i in range(len(x)):
            a = layer_fn(x[i:i + 1])[0]
            ks = range(a.shape[0]) if channels is None else channels
            b = torch.full_like(x[i:i + 1], baseline)

            def f(inp):
                o = model(inp)
                o = torch.softmax(o, 1) if softmax else o
                return o[0, target[i]]

            fb = f(b)
            w = torch.zeros(a.shape[0], dtype=x.dtype)
            for k in ks:
                up = F.interpolate(a[k][None, None], size=x.shape[2:], mode="bilinear",
                                   align_corners=False)
                if up.max() > up.min():
                    mask = (up - up.min()) / (up.max() - up.min())
                    w[k] = f(b + (x[i:i + 1] - b) * mask) - fb
            scale = 1.0 if channels is None else a.shape[0] / len(channels)
            out.append((scale * w[:, None, None] * a).sum(0))
    return torch.stack(out)[:, None]


def test_scorecam_matches_naive_reference(pool_cnn, imgs):
    m, x = pool_cnn.double(), imgs.double()
    t = [1, 0, 3, 2, 1]
    e = lumos.explain(m, x, "scorecam", target=t, batch_size=7)
    ref = _scorecam_reference(m, x, m.features, t)
    assert e.meta["score"] == "softmax"
    np.testing.assert_allclose(e.meta["layer_map"], ref.numpy(), rtol=1e-10, atol=1e-13)
    # raw scores and a fill blend
    e2 = lumos.explain(m, x, "scorecam", target=t, score="raw", fill=0.5)
    ref2 = _scorecam_reference(m, x, m.features, t, baseline=0.5, softmax=False)
    np.testing.assert_allclose(e2.meta["layer_map"], ref2.numpy(), rtol=1e-10, atol=1e-13)


def test_layouts_agree(pool_cnn, imgs):
    """float32 CPU conv nets run channels-last (faster); the numbers agree with float64 to float32
    rounding, and a model that cannot take channels-last inputs runs in its own layout."""
    m64 = _seeded(PoolCNN).double()  # the same weights in float64
    for method in ("gradcam", "cam", "scorecam"):
        e = lumos.explain(pool_cnn, imgs, method, target=1)
        assert e.meta["memory_format"] == "channels_last"
        ref = lumos.explain(m64, imgs.double(), method, target=1)
        assert ref.meta["memory_format"] == "contiguous"
        tol = 1e-5 * np.abs(ref.values).max()
        np.testing.assert_allclose(e.values, ref.values, rtol=1e-4, atol=tol)
    m = _seeded(ViewNet)
    v = lumos.explain(m, imgs, "scorecam", target=1)
    assert v.meta["memory_format"] == "contiguous"
    ref = _scorecam_reference(m.double(), imgs.double(), lambda t: m.act(m.conv(t)), [1] * 5)
    np.testing.assert_allclose(v.meta["layer_map"], ref.numpy(), rtol=1e-4,
                               atol=1e-5 * np.abs(ref.numpy()).max())
    g = lumos.explain(m.float(), imgs, "gradcam", target=1)
    assert g.meta["memory_format"] == "contiguous"
    g64 = lumos.explain(m.double(), imgs.double(), "gradcam", target=1)
    np.testing.assert_allclose(g.values, g64.values, rtol=1e-4, atol=1e-5 * np.abs(g64.values).max())


def test_scorecam_batch_size_and_seeded_channel_subset(pool_cnn, imgs):
    m, x = pool_cnn.double(), imgs.double()
    runs = [lumos.explain(m, x, "scorecam", batch_size=bs, n_channels=5, seed=11) for bs in (1, 7, 64)]
    for r in runs[1:]:
        np.testing.assert_allclose(r.values, runs[0].values, rtol=1e-12, atol=1e-14)
    ch = runs[0].meta["channels"]
    assert len(ch) == 5 and ch == sorted(set(ch))
    assert (runs[0].meta["channel_weights"][:, [k for k in range(8) if k not in ch]] == 0).all()
    ref = _scorecam_reference(m, x, m.features, runs[0].target, channels=ch)
    np.testing.assert_allclose(runs[0].meta["layer_map"], ref.numpy(), rtol=1e-10, atol=1e-13)
    other = lumos.explain(m, x, "scorecam", n_channels=5, seed=12)
    assert other.meta["channels"] != ch
    # The forward passes skipped for constant channels are counted honestly.
    assert runs[0].meta["n_forward"] <= 5 * 5


# ---------------------------------------------------------------------------------- batching & targets
@pytest.mark.parametrize("method", CAM_METHODS)
def test_batch_equals_per_image_with_per_sample_targets(pool_cnn, imgs, method):
    t = [2, 0, 3, 1, 2]
    before = model_state(pool_cnn)
    x0 = imgs.clone()
    batch = lumos.explain(pool_cnn, imgs, method, target=t, batch_size=2)
    assert_same_state(before, model_state(pool_cnn))
    assert torch.equal(imgs, x0)
    np.testing.assert_array_equal(batch.target, t)
    for i in range(len(imgs)):
        one = lumos.explain(pool_cnn, imgs[i:i + 1], method, target=t[i])
        np.testing.assert_allclose(batch.values[i:i + 1], one.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.meta["layer_map"][i:i + 1], one.meta["layer_map"],
                                   rtol=1e-5, atol=1e-6)
    expected = (5, 3, 12, 12) if method == "guided_gradcam" else (5, 1, 12, 12)
    assert batch.values.shape == expected
    # "predicted", resolved chunk by chunk, is the arg-max of the whole batch's output
    p2 = lumos.explain(pool_cnn, imgs, method, batch_size=2)
    p64 = lumos.explain(pool_cnn, imgs, method)
    np.testing.assert_array_equal(p2.target, pool_cnn(imgs).argmax(1).numpy())
    np.testing.assert_allclose(p2.values, p64.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p2.output, p64.output, rtol=1e-6)
    # slicing keeps the per-sample meta aligned
    assert batch[3].meta["layer_map"].shape == (1, 1, 6, 6)


def test_callable_target_is_linear_for_gradcam(pool_cnn, imgs):
    """Grad-CAM is linear in the target: map(y1 - 2 y0) = map(y1) - 2 map(y0)."""
    e = lumos.explain(pool_cnn, imgs, "gradcam", target=lambda o: o[:, 1] - 2 * o[:, 0])
    e1 = lumos.explain(pool_cnn, imgs, "gradcam", target=1)
    e0 = lumos.explain(pool_cnn, imgs, "gradcam", target=0)
    np.testing.assert_allclose(e.meta["layer_map"], e1.meta["layer_map"] - 2 * e0.meta["layer_map"],
                               rtol=1e-5, atol=1e-6)
    assert e.target is None and e.meta["target"] == "<lambda>"


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "layercam", "scorecam"])
def test_segmentation_region_target(method):
    """A callable target explains a segmentation region's score (output (n, classes, H, W))."""
    m = _seeded(SegNet).double()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    region = torch.zeros(8, 8, dtype=torch.float64)
    region[2:5, 3:7] = 1

    def region_score(o):
        return (o[:, 2] * region).sum((1, 2))

    # auto: the last spatial layer is the 1x1 head; read the map at the body's last ReLU instead
    assert lumos.explain(m, x[:1], "gradcam", target=region_score).meta["layer"] == "head"
    e = lumos.explain(m, x, method, target=region_score, at="body.4")
    assert e.values.shape == (3, 1, 8, 8) and e.meta["layer_map"].shape == (3, 1, 4, 4)
    if method == "scorecam":
        assert e.meta["score"] == "raw"
        return
    a = m.body(x).detach()
    grads = []
    for i in range(3):
        ai = a[i:i + 1].clone().requires_grad_(True)
        o = F.interpolate(m.head(ai), size=(8, 8), mode="nearest")
        (gi,) = torch.autograd.grad(region_score(o).sum(), ai)
        grads.append(gi)
    g = torch.cat(grads)
    combine = {"gradcam": lambda: (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True),
               "layercam": lambda: (g.clamp(min=0) * a).sum(1, keepdim=True)}
    if method in combine:
        np.testing.assert_allclose(e.meta["layer_map"], combine[method]().numpy(), rtol=1e-10,
                                   atol=1e-13)


def test_one_dimensional_signals():
    m = _seeded(Signal1D).double()
    x = torch.rand(4, 2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t = [0, 1, 2, 0]
    e = lumos.explain(m, x, "gradcam", target=t)
    assert e.meta["layer"] == "features.4" and e.values.shape == (4, 1, 20)
    assert e.meta["layer_map"].shape == (4, 1, 10)
    c = lumos.explain(m, x, "cam", target=t)
    np.testing.assert_allclose(e.meta["layer_map"] * 10, c.meta["layer_map"], rtol=1e-12)
    ref = F.interpolate(torch.as_tensor(e.meta["layer_map"]), size=20, mode="linear",
                        align_corners=False)
    np.testing.assert_allclose(e.values, ref.numpy(), rtol=1e-12)


def test_inplace_relu_after_the_layer():
    """A ReLU(inplace=True) after the chosen conv must neither fail nor corrupt the activation."""
    m_in, m_out = _seeded(PoolCNN, inplace=True).double(), _seeded(PoolCNN).double()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    assert (m_out.features[:4](x) < 0).any()  # so a rectified copy would show
    for method in ("gradcam", "scorecam", "layercam"):
        a = lumos.explain(m_in, x, method, target=1, at="features.3")
        b = lumos.explain(m_out, x, method, target=1, at="features.3")
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- layers
def test_auto_layer_choice():
    assert lumos.explain(_seeded(SmallCNN), torch.rand(2, 3, 8, 8), "gradcam").meta["layer"] == "features.3"
    # a container returning its last child's tensor: the innermost module is named
    e = lumos.explain(_seeded(NestedNet), torch.rand(2, 3, 8, 8), "gradcam")
    assert e.meta["layer"] == "features.1.1" and e.meta["layer_auto"] is True
    assert e.params["at"] is None and e.meta["layer_shape"] == [4, 8, 8]
    # a residual block whose output no child makes: the block itself
    e = lumos.explain(_seeded(NestedNet, residual=True), torch.rand(2, 3, 8, 8), "gradcam")
    assert e.meta["layer"] == "features.1"
    # a reused module is never chosen automatically
    m = _seeded(ReusedReLU)
    assert lumos.explain(m, torch.rand(2, 3, 8, 8), "gradcam").meta["layer"] == "c2"
    assert find_spatial_layers(m, torch.rand(1, 3, 8, 8)) == ["c1", "c2"]


def test_cam_with_functional_gap():
    m = _seeded(FunctionalGAP).double()
    x = torch.rand(3, 3, 9, 9, dtype=torch.float64)
    c = lumos.explain(m, x, "cam", target=2)
    g = lumos.explain(m, x, "gradcam", target=2)
    assert c.meta["layer"] == g.meta["layer"] == "act"
    np.testing.assert_allclose(g.meta["layer_map"] * 81, c.meta["layer_map"], rtol=1e-12, atol=1e-14)


def test_errors_name_the_argument(pool_cnn, imgs):
    with pytest.raises(ValueError, match=r"at: the model has no layer named 'features\.9'.*Did you mean"):
        lumos.explain(pool_cnn, imgs, "gradcam", at="features.9")
    with pytest.raises(ValueError, match=r"at: layer 'classifier' has output shape \('batch', 4\).*not spatial"):
        lumos.explain(pool_cnn, imgs, "gradcam", at="classifier")
    with pytest.raises(ValueError, match=r"at: layer 'pool'.*not spatial.*features\.4"):
        lumos.explain(pool_cnn, imgs, "scorecam", at="pool")
    with pytest.raises(TypeError, match="at must be a dotted layer name"):
        lumos.explain(pool_cnn, imgs, "gradcam", at=3)
    with pytest.raises(ValueError, match=r"at: layer 'act' runs 2 times"):
        lumos.explain(_seeded(ReusedReLU), imgs, "gradcam", at="act")
    flat = _seeded(nn.Sequential, nn.Linear(6, 3))
    with pytest.raises(ValueError, match="inputs must have shape"):
        lumos.explain(flat, torch.rand(4, 6), "gradcam")
    with pytest.raises(ValueError, match="score='softmax' needs a class-index target"):
        lumos.explain(pool_cnn, imgs, "scorecam", target=lambda o: o[:, 0], score="softmax")
    with pytest.raises(ValueError, match="n_channels must be an int in 1..8"):
        lumos.explain(pool_cnn, imgs, "scorecam", n_channels=9)
    with pytest.raises(ValueError, match="target has 2 entries but there are 5 samples"):
        lumos.explain(pool_cnn, imgs, "gradcam", target=[0, 1], batch_size=2)
    with pytest.raises(ValueError, match="target out of range"):
        lumos.explain(pool_cnn, imgs, "layercam", target=7)
    with pytest.raises(ValueError, match="fill of shape"):
        lumos.explain(pool_cnn, imgs, "scorecam", fill=torch.zeros(2, 5))
    # a module passed as at= is named in meta
    e = lumos.explain(pool_cnn, imgs, "gradcam", at=pool_cnn.features[1])
    assert e.meta["layer"] == "features.1" and e.params["at"] == "features.1"


@pytest.mark.parametrize("model_cls, at", [(FlattenNet, None), (TwoHeadNet, None), (PoolCNN, "features.3"),
                                           (FunctionalGAP, "conv")])
def test_cam_refuses_non_gap_networks_and_suggests_gradcam(model_cls, at):
    m = _seeded(model_cls)
    x = torch.rand(2, 3, 12, 12)
    before = model_state(m)
    with pytest.raises(ValueError, match=r"cam needs a network that ends in global average pooling "
                                         r"and one linear layer.*method='gradcam'"):
        lumos.explain(m, x, "cam", at=at)
    assert_same_state(before, model_state(m))
    lumos.explain(m, x, "gradcam", at=at)  # and gradcam works there


def test_cam_refuses_callable_targets(pool_cnn, imgs):
    with pytest.raises(ValueError, match="target: cam explains a class score.*gradcam"):
        lumos.explain(pool_cnn, imgs, "cam", target=lambda o: o[:, 0])


# ---------------------------------------------------------------------------------- model state
@pytest.mark.parametrize("method", CAM_METHODS)
def test_model_left_as_found_also_on_error(pool_cnn, imgs, method):
    m = pool_cnn
    m.features[0].weight.requires_grad_(False)
    m.classifier.weight.grad = torch.ones_like(m.classifier.weight)
    m.features.train()  # mixed training flags must survive too
    before = model_state(m)
    lumos.explain(m, imgs, method, target=1, at="features.4")
    assert_same_state(before, model_state(m))
    calls = [0]

    def flaky(o):  # passes the target checks, then fails inside the method's own passes
        calls[0] += 1
        if calls[0] > 2:
            raise RuntimeError("boom")
        return o[:, 0]

    if method != "cam":
        with pytest.raises(RuntimeError, match="boom"):
            extra = {"score": "raw"} if method == "scorecam" else {}
            lumos.explain(m, imgs, method, target=flaky, batch_size=2, **extra)
        assert_same_state(before, model_state(m))
    with pytest.raises(ValueError):
        lumos.explain(m, imgs, method, at="classifier")
    assert_same_state(before, model_state(m))


def test_save_and_load_keep_the_layer_map(pool_cnn, imgs, tmp_path):
    e = lumos.explain(pool_cnn, imgs, "gradcam")
    back = lumos.load(e.save(tmp_path / "g.npz"))
    np.testing.assert_array_equal(back.meta["layer_map"], e.meta["layer_map"])
    assert back.meta["layer"] == "features.4" and back.values.shape == e.values.shape


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(pool_cnn, imgs):
    from lumos.attribution.guided_backprop import guided_backprop

    t = [0, 3, 1, 2, 0]
    e = lumos.explain(pool_cnn, imgs, "guided_gradcam", target=t)
    gb = guided_backprop(pool_cnn, imgs, target=t)
    gc = lumos.explain(pool_cnn, imgs, "gradcam", target=t)
    np.testing.assert_allclose(e.values, gb.values * gc.values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(e.meta["gradcam"], gc.values, rtol=1e-6, atol=1e-9)
    assert e.values.shape == imgs.shape


def test_guided_gradcam_rectify_is_the_papers_map(pool_cnn, imgs):
    """The paper rectifies Grad-CAM at the layer, then upsamples: upsample(ReLU(M)), which is
    not max(upsample(M), 0) where positive and negative cells meet."""
    from lumos.attribution.guided_backprop import guided_backprop

    t = [0, 3, 1, 2, 0]
    e = lumos.explain(pool_cnn, imgs, "guided_gradcam", target=t, rectify=True)
    gb = torch.as_tensor(guided_backprop(pool_cnn, imgs, target=t).values)
    lm = np.asarray(lumos.explain(pool_cnn, imgs, "gradcam", target=t).meta["layer_map"])
    assert (lm > 0).any() and (lm < 0).any()  # the maps change sign: the two forms differ
    paper = _upsample_ref(np.maximum(lm[:, 0], 0), tuple(imgs.shape[2:]))[:, None]
    tol = 1e-6 * np.abs(paper).max()
    np.testing.assert_allclose(e.meta["gradcam"], paper, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(e.values, gb.numpy() * paper, rtol=1e-5, atol=tol * gb.abs().max().item())
    after = np.maximum(_upsample_ref(lm[:, 0], tuple(imgs.shape[2:])), 0)[:, None]  # the old docs
    assert np.abs(paper - after).max() > 1e-2 * np.abs(paper).max()
    np.testing.assert_allclose(e.meta["layer_map"], lm, rtol=1e-6, atol=1e-9)  # still signed
    assert e.params["rectify"] is True
    assert lumos.explain(pool_cnn, imgs, "guided_gradcam", target=t).params["rectify"] is False
    with pytest.raises(ValueError, match="rectify must be True or False"):
        lumos.explain(pool_cnn, imgs, "guided_gradcam", rectify="yes")


class NaNWhenDark(PoolCNN):
    """NaN output for inputs whose mean is below 0.3: the fill (all zeros) and dark masked inputs."""

    def forward(self, x):
        out = super().forward(x)
        dark = x.flatten(1).mean(1) < 0.3
        return torch.where(dark[:, None], torch.full_like(out, float("nan")), out)


class NaNWhenMasked(PoolCNN):
    """Finite at the input and at the fill; NaN on every partly masked input."""

    def __init__(self, x):
        super().__init__()
        self.x = x

    def forward(self, inp):
        out = super().forward(inp)
        ok = (inp == 0).flatten(1).all(1) | (inp[:, None] == self.x[None]).flatten(2).all(2).any(1)
        return torch.where(ok[:, None], out, torch.full_like(out, float("nan")))


def test_scorecam_raises_on_non_finite_masked_or_fill_outputs(imgs):
    from lumos.core.torch_model import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match="on the fill input"):
        lumos.explain(_seeded(NaNWhenDark), imgs + 0.5, "scorecam", target=1)
    with pytest.raises(NonFiniteOutputError, match="on Score-CAM's masked inputs"):
        lumos.explain(_seeded(NaNWhenMasked, imgs), imgs, "scorecam", target=1)


class Overflow(nn.Module):
    """GAP -> linear on a 1x1 conv whose channel 0 is 1e30 * (x0 - x1): inf - inf = NaN and
    +-Inf activations for inputs near 1e10, while the input itself is finite."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1e30, -1e30], [1.0, 0.0]])[:, :, None, None])
            self.conv.bias.zero_()
        self.act = nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_overflowing_input_is_not_blamed_on_the_architecture(method):
    from lumos.core.torch_model import NonFiniteOutputError

    m = _seeded(Overflow)
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    assert lumos.explain(m, x, method, target=0).values.shape[0] == 2  # a fine network
    with pytest.raises(NonFiniteOutputError) as err:
        lumos.explain(m, x * 1e10, method, target=0)
    msg = str(err.value)
    assert "NaN or Inf" in msg and "on the inputs" in msg
    for blame in ("global average pooling", "linear layer", "convolutional", "does not depend"):
        assert blame not in msg


def test_scorecam_fill_and_parameters_are_checked(pool_cnn, imgs):
    for bad in (float("nan"), float("inf"), True, "0"):
        with pytest.raises(ValueError, match="fill"):
            lumos.explain(pool_cnn, imgs, "scorecam", fill=bad)
    with pytest.raises(ValueError, match="fill contains 432 NaN"):
        lumos.explain(pool_cnn, imgs, "scorecam", fill=torch.full((3, 12, 12), float("nan")))
    for bad in (True, 2.5, float("nan"), 0):
        with pytest.raises(ValueError, match="n_channels"):
            lumos.explain(pool_cnn, imgs, "scorecam", n_channels=bad)
    with pytest.raises(ValueError, match="seed"):
        lumos.explain(pool_cnn, imgs, "scorecam", seed="abc")
    with pytest.raises(ValueError, match="score must be one of"):
        lumos.explain(pool_cnn, imgs, "scorecam", score="logit")
    with pytest.raises(TypeError, match="'baseline' is now called 'fill'"):
        lumos.explain(pool_cnn, imgs, "scorecam", baseline=0.5)


def test_scorecam_channel_subset_is_reproducible_by_default(pool_cnn, imgs):
    a = lumos.explain(pool_cnn, imgs, "scorecam", n_channels=4)
    b = lumos.explain(pool_cnn, imgs, "scorecam", n_channels=4)
    assert a.meta["channels"] == b.meta["channels"]
    np.testing.assert_array_equal(a.values, b.values)


# ---------------------------------------------------------------------------------- demo model
# Measured on the shipped demo CNN, 128 clean test images (seed 0), 125 correctly classified:
# strict hits 0.656, within 4 px 0.816 (Zhang et al.'s 15 px at 224 px, scaled to 64 px). The
# evidence covers 6.5% of the image, the hit rate of a random point. Misses are almost all
# triangles: the map peaks on the triangle's base edge, 4-5 px below the mask, at the layer's
# 8-pixel resolution. (Other seeds of 128 images: strict 0.58-0.73.)
POINTING_STRICT, POINTING_4PX = 0.656, 0.816


@pytest.fixture(scope="module")
def demo():
    from lumos.data import load_demo_model, shapes_dataset

    model = load_demo_model()
    data = shapes_dataset(128, split="test", watermark=False, seed=0)
    return model, data


def test_pointing_game_on_demo_model(demo):
    """Zhang et al. (2016)'s pointing game: the maximum of the upsampled Grad-CAM map lies inside
    the ground-truth evidence mask, for correctly classified clean test images."""
    from scipy.ndimage import binary_dilation

    model, data = demo
    with torch.no_grad():
        pred = model(data.images).argmax(1)
    ok = (pred == data.labels).numpy()
    n = int(ok.sum())
    assert n >= 120 and not data.has_watermark.any()
    e = lumos.explain(model, data.images[ok], "gradcam", target=data.labels[ok])
    assert e.meta["layer"] == model.last_relu and e.meta["layer_auto"]
    peak = e.values[:, 0].reshape(n, -1).argmax(1)
    masks = data.masks[ok].numpy()
    strict = masks.reshape(n, -1)[np.arange(n), peak].mean()
    disk = np.hypot(*np.mgrid[-4:5, -4:5]) <= 4
    near = np.array([binary_dilation(m, disk) for m in masks]).reshape(n, -1)[np.arange(n), peak].mean()
    assert strict >= POINTING_STRICT - 0.05, strict
    assert near >= POINTING_4PX - 0.05, near
    assert strict > 8 * masks.mean()  # far above a random point
    # CAM is Grad-CAM times Z on this GAP -> linear network, so it points at the same pixels.
    c = lumos.explain(model, data.images[ok][:8], "cam", target=data.labels[ok][:8])
    z = np.prod(e.meta["layer_shape"][1:])
    np.testing.assert_allclose(c.values, e.values[:8] * z, rtol=1e-4, atol=1e-5 * np.abs(c.values).max())


# ------------------------------------------- forward arguments, Neuron targets (issue 13)
class GainCNN(PoolCNN):
    """PoolCNN with extra arguments that are not explained: a per-sample ``gain`` (positional)
    on the first block's output and a per-sample input ``shift`` (keyword)."""

    def forward(self, x, gain, shift=None):
        if shift is not None:
            x = x + shift
        h = self.features[:3](x) * gain[:, None, None, None]
        return self.classifier(self.pool(self.features[3:](h)).flatten(1))


def _gain_setup():
    torch.manual_seed(0)
    model = GainCNN().double().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(5, 3, 12, 12, generator=g, dtype=torch.float64)
    gain = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    shift = 0.3 * torch.randn(5, 3, 12, 12, generator=g, dtype=torch.float64)
    return model, x, gain, shift


@pytest.mark.parametrize("method", CAM_METHODS)
def test_per_sample_forward_args_match_a_loop_over_samples(method):
    """Each sample's arguments go with it into every chunk (Score-CAM: its activation pass, its
    fill input and each of its masked inputs), whatever the batch size."""
    model, x, gain, shift = _gain_setup()
    t = [2, 0, 3, 1, 2]
    fa = lumos.Args(gain, shift=shift)
    runs = [lumos.explain(model, x, method, target=t, forward_args=fa, batch_size=bs)
            for bs in (None, 2, 3)]
    alone = [lumos.explain(model, x[i:i + 1], method, target=t[i],
                           forward_args=lumos.Args(gain[i:i + 1], shift=shift[i:i + 1]))
             for i in range(5)]
    ref = np.concatenate([e.values for e in alone])
    for e in runs:
        np.testing.assert_allclose(e.values, ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(e.meta["layer_map"], np.concatenate(
            [a.meta["layer_map"] for a in alone]), rtol=0, atol=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(runs[0].output, model(x, gain, shift=shift)[np.arange(5), t].numpy(),
                                   rtol=0, atol=1e-12)
    # the arguments matter: other gains give another map
    other = lumos.explain(model, x, method, target=t, forward_args=lumos.Args(gain.flip(0), shift=shift))
    assert np.abs(other.values - ref).max() > 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize("method", CAM_METHODS)
def test_several_inputs_are_refused_with_a_clear_message(method):
    model, x, gain, shift = _gain_setup()
    with pytest.raises(ValueError, match=rf"inputs: {method} explains one input tensor .* "
                                         r"forward_args="):
        lumos.explain(model, (x, gain), method)


class OneByOne(nn.Module):
    """conv-relu, then a 1x1 conv (a linear map of each position), GAP, linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU()
        self.mix = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 3)
        self.double().eval()

    def forward(self, x, gain=None):
        a = self.act(self.conv(x))
        if gain is not None:
            a = a * gain[:, None, None, None]
        return self.fc(self.mix(a).mean((2, 3)))


def test_gradcam_and_layercam_of_a_neuron_closed_forms():
    """Unit = channel c of ``mix`` summed over positions, linear in the activation A at ``act``
    (times the sample's gain g, a forward argument): dS/dA_k = g W_ck at every position, so
    Grad-CAM's weights are g W_c and its map sum_k g W_ck A_k, Layer-CAM's sum_k ReLU(g W_ck) A_k."""
    model = OneByOne()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gain = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    c = 2
    w = gain[:, None] * model.mix.weight[c, :, 0, 0].detach()[None]  # (4, 5)
    with torch.no_grad():
        a = model.act(model.conv(x))
        unit = model.mix(a * gain[:, None, None, None])[:, c].sum((1, 2))
    neuron = lumos.Neuron("mix", c)
    gc = lumos.explain(model, x, "gradcam", target=neuron, at="act", forward_args=(gain,), batch_size=3)
    np.testing.assert_allclose(gc.meta["channel_weights"], w.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(gc.meta["layer_map"][:, 0], (w[:, :, None, None] * a).sum(1).numpy(),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(gc.output, unit.numpy(), rtol=0, atol=1e-12)
    assert gc.meta["neuron"] == "Neuron('mix', 2)"
    lc = lumos.explain(model, x, "layercam", target=neuron, at="act", forward_args=(gain,))
    np.testing.assert_allclose(lc.meta["layer_map"][:, 0],
                               (w.clamp(min=0)[:, :, None, None] * a).sum(1).numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "layercam", "scorecam", "guided_gradcam"])
def test_neuron_target_equals_a_callable_target_on_the_model_cut_at_its_layer(method):
    """A Neuron is the model seen up to its layer with the unit as target; Score-CAM scores it raw."""
    torch.manual_seed(0)
    model = PoolCNN().double().eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cut = nn.Sequential(*model.features[:4])  # up to features.3 (its names: "0".."3")
    e = lumos.explain(model, x, method, target=lumos.Neuron("features.3", 5), at="features.0",
                      batch_size=2)
    ref = lumos.explain(cut, x, method, target=lambda out: out[:, 5].sum((1, 2)), at="0",
                        **({"score": "raw"} if method == "scorecam" else {}))
    np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-12)
    if method == "scorecam":
        assert e.meta["score"] == "raw"


def test_neuron_target_refusals_name_the_problem(pool_cnn, imgs):
    with pytest.raises(ValueError, match=r"target: cam reads the final linear layer's class weights.*"
                                         r"Neuron\('features.3', 1\).*gradcam"):
        lumos.explain(pool_cnn, imgs, "cam", target=lumos.Neuron("features.3", 1))
    with pytest.raises(ValueError, match=r"score='softmax' needs a class-index target.*Neuron targets"):
        lumos.explain(pool_cnn, imgs, "scorecam", target=lumos.Neuron("features.3", 1),
                      at="features.0", score="softmax")
