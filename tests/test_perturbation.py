"""Perturbation attributions: occlusion, RISE, meaningful/extremal perturbation, feature ablation."""
import numpy as np
import pytest
import torch
from torch import nn

import lumos
from conftest import SmallCNN, assert_same_state, model_state
from lumos.attribution.perturbation._base import gaussian_blur
from lumos.attribution.perturbation.occlusion import window_positions
from lumos.attribution.perturbation.rise import rise_masks
from lumos.core.superpixels import superpixels
from lumos.core.execution import rng

# --------------------------------------------------------------------------- a model with a known region
ROWS, COLS = slice(5, 21), slice(9, 25)
REGION = torch.zeros(32, 32, dtype=torch.bool)
REGION[ROWS, COLS] = True


class RegionModel(nn.Module):
    """Two logits ``(s, -s)`` with ``s = 16 mean(x[region]^2) - 5``: only the region matters."""

    def forward(self, x):
        s = 16 * (x[:, :, ROWS, COLS] ** 2).mean((1, 2, 3)) - 5
        return torch.stack([s, -s], 1)


@pytest.fixture(scope="module")
def region_x():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 32, 32, generator=g) * 0.5 + 0.5


def positive_share(values):
    """Share of the positive attribution mass (summed over channels) inside the region."""
    v = torch.as_tensor(np.asarray(values)).sum(1).clamp_min(0)
    return (v[:, REGION].sum(1) / v.flatten(1).sum(1)).numpy()


# Measured shares (per sample, all three samples alike): occlusion 0.94, RISE 0.78, learned
# preservation mask 0.92, deletion mask 0.96, extremal (area 0.25) 0.86. The region is 25% of the
# image, so a map blind to the region would put 25% there.
@pytest.mark.parametrize("method, kw, level", [
    ("occlusion", dict(window=2, stride=1), 0.90),
    ("rise", dict(n_masks=2000, grid=16, batch_size=256), 0.72),
    ("meaningful_perturbation", dict(game="preservation", fill="zero", mask_shape=16, n_iter=100), 0.87),
    ("meaningful_perturbation", dict(game="deletion", fill="zero", mask_shape=16, n_iter=100), 0.90),
    ("meaningful_perturbation", dict(game="preservation", area=0.25, fill="zero", mask_shape=16,
                                     n_iter=100), 0.80),
])
def test_mass_inside_the_only_region_the_model_sees(region_x, method, kw, level):
    e = lumos.explain(RegionModel(), region_x, method=method, target=0, **kw)
    share = positive_share(e.values)
    assert share.min() > level, share


@pytest.mark.parametrize("game", ["preservation", "deletion"])
def test_extremal_mask_has_the_requested_area(region_x, game):
    e = lumos.explain(RegionModel(), region_x, method="meaningful_perturbation", target=0, game=game,
                      area=[0.1, 0.3], fill="zero", mask_shape=16, n_iter=100)
    areas = e.meta["mask_area"]
    assert areas.shape == (3, 2)
    assert np.all(np.abs(areas - [0.1, 0.3]) < 0.03), areas
    assert e.meta["masks_per_area"].shape == (3, 2, 32, 32)
    np.testing.assert_allclose(e.values[:, 0], e.meta["masks_per_area"].mean(1), atol=1e-6)
    # the larger area keeps (preservation) / removes (deletion) more of the evidence
    higher = e.meta["score_perturbed"][:, 1] > e.meta["score_perturbed"][:, 0]
    assert np.all(higher if game == "preservation" else ~higher)


# --------------------------------------------------------------------------- occlusion exactness
@pytest.fixture
def cnn64():
    torch.manual_seed(0)
    return SmallCNN().double().eval()


@pytest.fixture
def x64(images):
    return images[:2].double()


def naive_occlusion(model, x, target, window, stride, fill=0.0):
    """Float64 loop over windows: mean over covering windows of f(x) - f(x with window filled)."""
    with torch.no_grad():
        base = model(x)[:, target]
        total = torch.zeros_like(x)
        count = torch.zeros_like(x[0])
        starts = [window_positions(L, w, s) for L, w, s in zip(x.shape[1:], window, stride)]
        for pos in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, x.ndim - 1):
            sl = tuple(slice(int(p), int(p) + w) for p, w in zip(pos, window))
            xx = x.clone()
            xx[(slice(None),) + sl] = fill
            total[(slice(None),) + sl] += (base - model(xx)[:, target]).reshape(-1, *[1] * (x.ndim - 1))
            count[sl] += 1
    return (total / count).numpy()


def test_occlusion_one_element_window_is_single_feature_ablation(cnn64, x64):
    e = lumos.explain(cnn64, x64, method="occlusion", target=2, window=(1, 1, 1), stride=1)
    with torch.no_grad():
        base = cnn64(x64)[:, 2]
        ref = torch.zeros_like(x64)
        for idx in np.ndindex(*x64.shape[1:]):
            xx = x64.clone()
            xx[(slice(None),) + idx] = 0
            ref[(slice(None),) + idx] = base - cnn64(xx)[:, 2]
    np.testing.assert_allclose(e.values, ref.numpy(), rtol=0, atol=1e-12)
    assert e.meta["n_evals"] == 2 + 2 * 3 * 12 * 12
    fa = lumos.explain(cnn64, x64, method="feature_ablation", target=2)
    np.testing.assert_allclose(fa.values, ref.numpy(), rtol=0, atol=1e-12)


def test_occlusion_matches_naive_loop_with_end_aligned_windows(cnn64, x64):
    # 12 = 0,4,8 then an end-aligned start 7 for width 5 stride 4; channels covered whole.
    e = lumos.explain(cnn64, x64, method="occlusion", target=1, window=5, stride=4, fill=0.3)
    ref = naive_occlusion(cnn64, x64, 1, (3, 5, 5), (3, 4, 4), fill=0.3)
    np.testing.assert_allclose(e.values, ref, rtol=0, atol=1e-12)
    assert list(window_positions(12, 5, 4)) == [0, 4, 7]
    assert e.meta["n_windows"] == [9]


def test_several_window_sizes_are_the_mean_of_the_single_size_maps(cnn64, x64):
    multi = lumos.explain(cnn64, x64, method="occlusion", target=0, window=[2, (3, 4, 6)],
                          stride=[1, (3, 2, 3)])
    a = lumos.explain(cnn64, x64, method="occlusion", target=0, window=2, stride=1)
    b = lumos.explain(cnn64, x64, method="occlusion", target=0, window=(3, 4, 6), stride=(3, 2, 3))
    np.testing.assert_allclose(multi.values, (a.values + b.values) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(multi.meta["maps_per_window"][:, 0], a.values, atol=1e-12)
    np.testing.assert_allclose(multi.meta["maps_per_window"][:, 1], b.values, atol=1e-12)
    assert multi.meta["n_evals"] == 2 + a.meta["n_evals"] - 2 + b.meta["n_evals"] - 2


def test_occlusion_matches_captum_where_windows_tile(cnn64, x64):
    captum = pytest.importorskip("captum.attr")
    e = lumos.explain(cnn64, x64, method="occlusion", target=3, window=4, stride=2)
    ref = captum.Occlusion(cnn64).attribute(x64, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2),
                                            baselines=0.0, target=3)
    # Captum keeps part of its bookkeeping in float32 (relative differences ~5e-8)
    np.testing.assert_allclose(e.values, ref.numpy(), rtol=1e-6, atol=1e-10)


def test_occlusion_on_a_linear_model_is_the_window_mean_of_w_times_x(linear_model):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    e = lumos.explain(linear_model, x, method="occlusion", target=1, window=2, stride=1)
    contrib = (linear_model.weight[1] * x).detach().numpy()          # f(x) - f(x, j zeroed)
    windows = [contrib[:, s:s + 2].sum(1) for s in range(5)]
    ref = np.stack([np.mean([windows[s] for s in range(5) if s <= j < s + 2], 0) for j in range(6)], 1)
    np.testing.assert_allclose(e.values, ref, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- other inputs, black boxes
def test_black_box_callable_on_arrays_matches_the_torch_module(small_cnn, images):
    seen = []

    def predict(a):
        seen.append(type(a))
        with torch.no_grad():
            return small_cnn(torch.as_tensor(a)).numpy()

    for method, kw in [("occlusion", dict(window=4, stride=2, fill="blur")),
                       ("rise", dict(n_masks=64, grid=4)),
                       ("feature_ablation", dict(groups="slic"))]:
        t = lumos.explain(small_cnn, images, method=method, target=1, **kw)
        b = lumos.explain(predict, images.numpy(), method=method, target=1, **kw)
        np.testing.assert_allclose(b.values, t.values, rtol=0, atol=1e-6)
        # f(x) is evaluated once, in the channels-last layout of the chunks on the torch path
        assert t.meta["memory_format"] == "channels_last"
        perturbed = {"occlusion": 25, "rise": 64}.get(method) or sum(t.meta.get("n_groups", [0]))
        assert b.meta["n_evals"] == t.meta["n_evals"] == len(images) + perturbed * (1 if method == "feature_ablation" else len(images))
    assert set(seen) == {np.ndarray}


class ViewCNN(SmallCNN):
    """Flattens its feature maps with .view, which channels-last activations cannot take."""

    def forward(self, x):
        f = self.features(x)
        flat = f.view(len(f), -1)                      # merges channels with rows: needs NCHW
        return self.classifier(flat.reshape(len(f), f.shape[1], -1).mean(2))


def test_channels_last_layout_agrees_and_falls_back(images):
    torch.manual_seed(0)
    net = SmallCNN().eval()
    ref = lumos.explain(net.double(), images.double(), method="occlusion", target=0, window=3)
    assert ref.meta["memory_format"] == "contiguous"                     # float64: as it is
    e = lumos.explain(net.float(), images, method="occlusion", target=0, window=3)
    assert e.meta["memory_format"] == "channels_last"
    np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=2e-6)
    torch.manual_seed(0)
    view_net = ViewCNN().eval()
    with pytest.raises(RuntimeError):
        view_net(images.contiguous(memory_format=torch.channels_last))
    v = lumos.explain(view_net, images, method="occlusion", target=0, window=3)
    assert v.meta["memory_format"] == "contiguous"
    np.testing.assert_allclose(v.values, e.values, rtol=0, atol=2e-6)   # same weights, same model


def test_token_embeddings_and_signals(linear_model):
    # (batch, tokens, dim): a window of one token and the whole embedding = ablating that token.
    torch.manual_seed(0)
    emb = torch.randn(2, 5, 4)
    w = torch.randn(4)
    model = lambda e: (e * w).sum(2).cumsum(1)[:, -1:] ** 2   # noqa: E731  (a black box, 1 output)
    e = lumos.explain(model, emb, method="occlusion", window=(1, None), stride=(1, None))
    with torch.no_grad():
        base = model(emb)[:, 0]
        ref = torch.stack([base - model(torch.cat([emb[:, :t], torch.zeros(2, 1, 4), emb[:, t + 1:]], 1))[:, 0]
                           for t in range(5)], 1)
    np.testing.assert_allclose(e.values, ref[:, :, None].expand(2, 5, 4).numpy(), atol=1e-5)
    # 1-D signals: RISE masks along the length; the map is finite and has the input's shape
    sig = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    net = nn.Sequential(nn.Linear(40, 2)).eval()
    r = lumos.explain(net, sig, method="rise", target=0, n_masks=64, grid=8)
    assert r.values.shape == (3, 40) and np.isfinite(r.values).all()
    with pytest.raises(ValueError, match="2-D; give a tuple"):
        lumos.explain(model, emb, method="occlusion", window=2)


def test_tabular_column_groups_closed_form_and_dataframe():
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LinearRegression

    gen = np.random.default_rng(0)
    X = pd.DataFrame(gen.normal(size=(60, 4)), columns=["a", "b", "c", "d"])
    y = X.to_numpy() @ np.array([1.0, -2.0, 0.5, 3.0]) + 1
    reg = LinearRegression().fit(X, y)
    e = lumos.explain(reg, X[:5], method="feature_ablation", groups={"ab": ["a", "b"], "d": ["d"]},
                      fill="mean", background=X)
    # f(x) - f(x with group at the mean) = sum_{j in G} w_j (x_j - mean_j), one value per group:
    # the groups in the order given, then the columns in no group under their own names
    contrib = (X[:5] - X.mean()).to_numpy() * reg.coef_
    ref = np.stack([contrib[:, :2].sum(1), contrib[:, 3], contrib[:, 2]], 1)
    np.testing.assert_allclose(e.values, ref, atol=1e-10)
    assert e.values.shape == (5, 3) and e.feature_names == ["ab", "d", "c"]
    assert e.meta["groups"] == {"ab": ["a", "b"], "d": ["d"], "c": ["c"]}
    assert e.meta["model_output"] == "predict"
    np.testing.assert_array_equal(e.meta["n_groups"], [3] * 5)
    # the same grouping as a group mask (one label per column), on an array: names from columns
    m = lumos.explain(lambda a: reg.predict(pd.DataFrame(a, columns=X.columns)), X[:5].to_numpy(),
                      method="feature_ablation",
                      groups=np.array([0, 0, 2, 1]), fill="mean", background=X.to_numpy())
    np.testing.assert_allclose(m.values, ref, atol=1e-10)
    assert m.feature_names == ["x0+x1", "x3", "x2"]
    # single features of a DataFrame keep the column names
    single = lumos.explain(reg, X[:5], method="feature_ablation", fill="mean", background=X)
    assert single.feature_names == ["a", "b", "c", "d"] and single.values.shape == (5, 4)
    with pytest.raises(ValueError, match="two groups"):
        lumos.explain(reg, X[:2], method="feature_ablation", groups=[["a", "b"], ["b"]])
    with pytest.raises(ValueError, match="unknown column 'z'"):
        lumos.explain(reg, X[:2], method="feature_ablation", groups=[["z"]])


def test_feature_ablation_segments_and_superpixels(small_cnn, images):
    seg = np.arange(16).reshape(4, 4).repeat(3, 0).repeat(3, 1)          # 16 blocks of 3x3
    e = lumos.explain(small_cnn, images[:2], method="feature_ablation", target=0, groups=seg)
    o = lumos.explain(small_cnn, images[:2], method="occlusion", target=0, window=3, stride=3)
    np.testing.assert_allclose(e.values, o.values, atol=1e-6)           # non-overlapping windows
    np.testing.assert_array_equal(e.meta["n_groups"], [16, 16])
    np.testing.assert_allclose(e.meta["group_values"][0, 5], e.values[0, 0, 3, 3], atol=1e-7)  # block (1, 1)
    # per-sample superpixels: every pixel of a superpixel carries that superpixel's drop
    # (LIME's quickshift settings give one segment on 12x12 images: a smaller kernel here)
    for method, params in (("slic", None), ("quickshift", {"kernel_size": 1, "max_dist": 4}),
                           ("felzenszwalb", {"min_size": 5})):
        s = lumos.explain(small_cnn, images[:2], method="feature_ablation", target=0, groups=method,
                          superpixel_params=params)
        np.testing.assert_array_equal(s.meta["groups"][:, 0],
                                      superpixels(images[:2], method, **(params or {})))
        lab = s.meta["groups"]                                          # (2, 1, 12, 12)
        assert lab.shape == (2, 1, 12, 12) and s.meta["n_groups"].min() >= 2
        g = int(lab[1, 0, 0, 0])
        xx = images[1:2].clone()
        xx[:, :, torch.as_tensor(lab[1, 0] == g)] = 0
        with torch.no_grad():
            ref = small_cnn(images[1:2])[0, 0] - small_cnn(xx)[0, 0]
        np.testing.assert_allclose(s.values[1, :, lab[1, 0] == g], float(ref), atol=1e-6)
    with pytest.raises(ValueError, match="must broadcast"):
        lumos.explain(small_cnn, images, method="feature_ablation", groups=np.zeros((5, 5), int))


# --------------------------------------------------------------------------- fills
def test_fills(small_cnn, images):
    from scipy.ndimage import gaussian_filter

    x = images[:2]
    blurred = gaussian_filter(x.double().numpy(), sigma=(0, 0, 2.0, 2.0), mode="reflect")
    np.testing.assert_allclose(gaussian_blur(x, 2.0, [1, 2]).numpy(), blurred, atol=1e-6)
    # fill with a blurred copy = fill with that array
    a = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill="blur", sigma=2.0)
    b = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill=blurred.astype(np.float32))
    np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    # dataset mean = a per-element mean image
    data = torch.rand(10, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    m = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill="mean", background=data)
    c = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill=data.mean(0))
    np.testing.assert_allclose(m.values, c.values, atol=1e-6)
    # noise: fixed by the seed
    n1 = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill="noise", seed=3)
    n2 = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill="noise", seed=3)
    n3 = lumos.explain(small_cnn, x, method="occlusion", target=0, window=4, fill="noise", seed=4)
    np.testing.assert_array_equal(n1.values, n2.values)
    assert np.abs(n1.values - n3.values).max() > 1e-4
    with pytest.raises(ValueError, match="needs background="):
        lumos.explain(small_cnn, x, method="occlusion", fill="mean")
    with pytest.raises(ValueError, match="fill must be one of"):
        lumos.explain(small_cnn, x, method="occlusion", fill="black")
    with pytest.raises(ValueError, match="broadcasts neither"):
        lumos.explain(small_cnn, x, method="occlusion", fill=np.zeros((2, 5)))


# --------------------------------------------------------------------------- RISE
def naive_rise(model, x, target, n_masks, grid, p, seed, center):
    """Float64 loop over masks drawn as RISE documents: grids, then shifts, from rng(seed)."""
    H, W = x.shape[2:]
    cell = (-(-H // grid), -(-W // grid))
    g = rng(seed)
    grids = torch.as_tensor(g.random((n_masks, grid, grid)) < p, dtype=torch.float64)
    shifts = torch.as_tensor(np.stack([g.integers(0, c, n_masks) for c in cell], 1))
    masks = rise_masks(grids, shifts, (H, W), cell)
    with torch.no_grad():
        scores = torch.stack([model(x * mk)[:, target] for mk in masks], 1).double()   # (n, N)
    c = scores.mean(1, keepdim=True) if center else 0
    return torch.einsum("nk,khw->nhw", scores - c, masks).numpy() / (n_masks * p), masks


def test_rise_matches_naive_loop_and_ignores_batch_size(cnn64, x64):
    for center in (True, False):
        ref, masks = naive_rise(cnn64, x64, 2, 48, 3, 0.4, 7, center)
        for bs in (1, 7, 64):
            e = lumos.explain(cnn64, x64, method="rise", target=2, n_masks=48, grid=3, p=0.4, seed=7,
                              center=center, batch_size=bs)
            np.testing.assert_allclose(e.values, np.broadcast_to(ref[:, None], x64.shape), rtol=0, atol=1e-12)
    # masks: smooth in [0, 1], shifted, about a fraction p kept
    assert masks.min() >= 0 and masks.max() <= 1 and 0.3 < masks.mean() < 0.5


def test_rise_seed_and_convergence(small_cnn, images):
    kw = dict(target=0, n_masks=512, grid=4)
    a = lumos.explain(small_cnn, images[:2], method="rise", seed=1, **kw)
    b = lumos.explain(small_cnn, images[:2], method="rise", seed=1, batch_size=100, **kw)
    c = lumos.explain(small_cnn, images[:2], method="rise", seed=2, **kw)
    np.testing.assert_array_equal(a.values, b.values)
    assert np.abs(a.values - c.values).max() > 1e-3 * np.abs(a.values).max()
    conv = a.meta["convergence"]
    assert conv["n_masks"] == [32, 64, 128, 256, 512]
    change = np.asarray(conv["relative_change"])
    # Monte-Carlo: the change from N/2 to N falls roughly like 1/sqrt(N)
    assert change[-1] < 0.6 * change[0], change
    assert a.meta["relative_change"].shape == (2, 5)


# --------------------------------------------------------------------------- batch size, state, errors
@pytest.mark.parametrize("method, kw", [
    ("occlusion", dict(window=[3, 5], fill="blur")),
    ("feature_ablation", dict(groups="slic")),
    ("rise", dict(n_masks=40, grid=3)),
])
def test_results_do_not_depend_on_batch_size(small_cnn, images, method, kw):
    ref = lumos.explain(small_cnn, images, method=method, target=1, batch_size=64, **kw).values
    for bs in (1, 7):
        v = lumos.explain(small_cnn, images, method=method, target=1, batch_size=bs, **kw).values
        np.testing.assert_allclose(v, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method, kw", [
    ("occlusion", dict(window=4)), ("rise", dict(n_masks=16, grid=3)), ("feature_ablation", {}),
    ("meaningful_perturbation", dict(n_iter=3)),
])
def test_model_and_inputs_left_as_found(small_cnn, images, method, kw):
    small_cnn.classifier.weight.grad = torch.ones_like(small_cnn.classifier.weight)
    small_cnn.features[0].weight.requires_grad_(False)
    before, x0 = model_state(small_cnn), images.clone()
    lumos.explain(small_cnn, images, method=method, target=0, **kw)
    assert_same_state(before, model_state(small_cnn))
    assert torch.equal(images, x0)
    with pytest.raises(ValueError):
        lumos.explain(small_cnn, images, method=method, target=9, **kw)
    assert_same_state(before, model_state(small_cnn))


def test_meaningful_perturbation_needs_a_torch_model_and_restores_it_on_error(small_cnn, images):
    with pytest.raises(TypeError, match="needs a torch.nn.Module"):
        lumos.explain(lambda a: a.sum((1, 2, 3)), images, method="meaningful_perturbation")
    before = model_state(small_cnn)

    def bad_target(out):
        if out.requires_grad:                       # raise half-way, inside the optimisation
            raise RuntimeError("boom")
        return out[:, 0]

    with pytest.raises(RuntimeError, match="boom"):
        lumos.explain(small_cnn, images, method="meaningful_perturbation", target=bad_target, n_iter=2)
    assert_same_state(before, model_state(small_cnn))


@pytest.mark.parametrize("kw, match", [
    (dict(method="occlusion", window=20), "larger than the input"),
    (dict(method="occlusion", window=(2, 2, 2, 2)), "has 4 entries but samples have 3 axes"),
    (dict(method="occlusion", window=0), "positive int"),
    (dict(method="occlusion", window=3, stride=(1, 0)), "stride: entry 2 must be a positive int"),
    (dict(method="occlusion", window=[2, 3], stride=[1]), "one stride per window size"),
    (dict(method="occlusion", window=2.5), "window must be an int or a tuple"),
    (dict(method="rise", grid=13), "more than its 12 elements"),
    (dict(method="rise", p=1.0), r"p \(a probability\) must be in \(0, 1\)"),
    (dict(method="rise", n_masks=0), "n_masks must be >= 1"),
    (dict(method="meaningful_perturbation", area=0.0), r"area \(a fraction.*must be in \(0, 1\)"),
    (dict(method="meaningful_perturbation", area=1.0), r"must be in \(0, 1\)"),
    (dict(method="meaningful_perturbation", area=[0.2, 1.5]), r"must be in \(0, 1\); got 1.5"),
    (dict(method="meaningful_perturbation", game="keep"), "game must be one of"),
    (dict(method="meaningful_perturbation", l1=-1), "l1 must be >= 0"),
    (dict(method="feature_ablation", groups="watershed"), "groups must be one of 'slic'"),
    # parameter holes: NaN and bools are not numbers here
    (dict(method="rise", p=float("nan")), "p \\(a probability\\) must be a finite number"),
    (dict(method="rise", n_masks=True), "n_masks must be an int"),
    (dict(method="occlusion", fill=float("nan")), "fill must be a finite number"),
    (dict(method="occlusion", fill=True), "fill must be a number"),
    (dict(method="occlusion", fill="blur", sigma=float("nan")), "sigma must be a finite number"),
    (dict(method="meaningful_perturbation", lr=float("nan")), "lr must be a finite number"),
    (dict(method="meaningful_perturbation", tv=True), "tv must be a number"),
    (dict(method="meaningful_perturbation", area=float("nan")), "must be a finite number"),
])
def test_clear_errors(small_cnn, images, kw, match):
    with pytest.raises(ValueError, match=match):
        lumos.explain(small_cnn, images, target=0, **kw)


def test_registered_for_any_model():
    rows = {m.name: m for m in lumos.methods("perturbation")}
    assert {"occlusion", "rise", "meaningful_perturbation", "feature_ablation"} <= set(rows)
    assert rows["occlusion"].models == rows["rise"].models == rows["feature_ablation"].models == "any"
    assert rows["meaningful_perturbation"].models == "torch"


# --------------------------------------------------------------------------- the demo world
def test_preservation_mask_covers_the_watermark_on_the_demo_model():
    import lumos.data as data_mod

    model = data_mod.load_demo_model()  # shipped with the package: missing weights must fail
    marked = data_mod.shapes_dataset(6, split="test", watermark="all", seed=3)
    clean = data_mod.shapes_dataset(6, split="test", watermark="none", seed=3)
    wm = marked.watermark_masks.numpy()
    kw = dict(method="meaningful_perturbation", target=0, game="preservation", n_iter=60)
    # What keeps the "circle" score on images of every class: the watermark shortcut.
    # Measured: mean mask on the mark 0.36-0.79 (median 0.65), 0.025-0.04 over the image.
    mask = lumos.explain(model, marked.images, **kw).values[:, 0]
    on_mark = (mask * wm).sum((1, 2)) / wm.sum((1, 2))
    assert np.median(on_mark) > 0.45, on_mark
    assert np.all(on_mark > 5 * mask.mean((1, 2))), (on_mark, mask.mean((1, 2)))
    # Control: the same images without the mark leave that corner out (measured 0.00).
    mask = lumos.explain(model, clean.images, **kw).values[:, 0]
    assert np.all((mask * wm).sum((1, 2)) / wm.sum((1, 2)) < 0.05)


def test_learned_mask_of_a_sample_does_not_depend_on_its_neighbours():
    # Adam divides each step by the gradient's running size, so the rounding differences of
    # batched kernels became full steps: on the demo CNN this mask differed by 87% of its maximum
    # between a batch of 4 and one image at a time. Every mask is now learned on its own.
    import lumos.data as data_mod

    model = data_mod.load_demo_model()
    x = data_mod.shapes_dataset(4, split="test", watermark="all", seed=3).images
    kw = dict(method="meaningful_perturbation", target=0, game="preservation", area=0.1, n_iter=50)
    batch = lumos.explain(model, x, **kw)
    for i in range(len(x)):
        alone = lumos.explain(model, x[i:i + 1], **kw)
        np.testing.assert_array_equal(alone.values[0], batch.values[i])
    # the other areas asked for in the same call do not change a mask either
    two = lumos.explain(model, x[:2], **dict(kw, area=[0.1, 0.3]))
    np.testing.assert_array_equal(two.meta["masks_per_area"][:, 0], batch.values[:2, 0])


class ArgmaxNet(SmallCNN):
    """Returns the one-hot of its prediction: no gradient path from the input."""

    def forward(self, x):
        logits = super().forward(x)
        return torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(x.dtype)


class DetachedNet(SmallCNN):
    def forward(self, x):
        return super().forward(x).detach()


@pytest.mark.parametrize("net", [ArgmaxNet, DetachedNet])
@pytest.mark.parametrize("area", [None, 0.2])
def test_learned_mask_without_a_gradient_path_is_refused(images, net, area):
    # before: an all-zero (or area-only) mask came back without a word
    torch.manual_seed(0)
    model = net().eval()
    before = model_state(model)
    with pytest.raises(ValueError, match="does not depend on the input"):
        lumos.explain(model, images, method="meaningful_perturbation", target=0, area=area, n_iter=3)
    assert_same_state(before, model_state(model))


# --------------------------------------------------------------------------- every evaluation checked
class NaNWhenHidden(nn.Module):
    """Finite on inputs in [0.5, 1]; NaN (row 0) once an element falls below 0.25 (hidden)."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        hidden = x.flatten(1).min(1, keepdim=True).values < 0.25
        return torch.cat([torch.where(hidden, torch.full_like(s, float("nan")), s), -s], 1)


def nan_when_hidden(a):
    a = np.asarray(a)
    s = a.reshape(len(a), -1).sum(1)
    s = np.where(a.reshape(len(a), -1).min(1) < 0.25, np.nan, s)
    return np.stack([s, -s], 1)


@pytest.mark.parametrize("method, kw, what", [
    ("occlusion", dict(window=4), "occluded inputs"),
    ("rise", dict(n_masks=16, grid=3), "masked inputs"),
    ("feature_ablation", {}, "ablated inputs"),
    ("meaningful_perturbation", dict(n_iter=2, fill="zero"), "masked inputs"),
])
def test_non_finite_outputs_away_from_the_input_are_errors(method, kw, what):
    # before: all-NaN maps came back without an error (torch path)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    models = [NaNWhenHidden()] + ([nan_when_hidden] if method != "meaningful_perturbation" else [])
    for model in models:
        xx = x if isinstance(model, nn.Module) else x.numpy()
        with pytest.raises(ValueError, match=f"NaN or Inf .*on {what}"):
            lumos.explain(model, xx, method=method, target=0, **kw)
    # at the inputs themselves the error says so
    if method != "meaningful_perturbation":
        with pytest.raises(ValueError, match="NaN or Inf .*on the inputs"):
            lumos.explain(lambda a: np.full((len(a), 2), np.nan), x.numpy(), method=method, **kw)


@pytest.mark.parametrize("method, kw", [
    ("occlusion", dict(window=2)), ("rise", dict(n_masks=8, grid=2)), ("feature_ablation", {}),
])
@pytest.mark.parametrize("answer", [lambda n: np.array(["cat"] * n), lambda n: np.array([object()] * n)])
def test_non_numeric_outputs_get_a_clear_error(method, kw, answer):
    # before: a raw NumPy error (could not convert string to float / ufunc 'isfinite' ...)
    x = np.random.default_rng(0).random((3, 6))
    with pytest.raises(ValueError, match=f"{method} needs numeric outputs"):
        lumos.explain(lambda a: answer(len(a)), x, method=method, target=None, **kw)


@pytest.mark.parametrize("method, kw", [
    ("occlusion", dict(window=2)), ("rise", dict(n_masks=8, grid=2)), ("feature_ablation", {}),
])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_predict_function_that_normalises_in_place_changes_nothing(method, kw, as_tensor):
    # before: the first call centred lumos's own copy, so Explanation.inputs and every perturbation
    # were built from centred rows
    x = np.random.default_rng(0).random((3, 6)) + 1.0
    w = np.arange(1.0, 7.0)

    def in_place(a):
        a -= a.mean(1, keepdims=True)
        return (a ** 2 * (w if not as_tensor else torch.as_tensor(w))).sum(1)

    def pure(a):
        a = a - a.mean(1, keepdims=True)
        return (a ** 2 * (w if not as_tensor else torch.as_tensor(w))).sum(1)

    xx = torch.as_tensor(x) if as_tensor else x.copy()
    e = lumos.explain(in_place, xx, method=method, **kw)
    ref = lumos.explain(pure, torch.as_tensor(x) if as_tensor else x.copy(), method=method, **kw)
    np.testing.assert_array_equal(np.asarray(e.inputs), x)
    np.testing.assert_array_equal(np.asarray(xx), x)
    np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.output, ref.output, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- per-sample fills
def test_occlusion_and_ablation_take_one_fill_per_sample(cnn64, x64):
    g = torch.Generator().manual_seed(5)
    fills = torch.rand(x64.shape, generator=g, dtype=torch.float64)             # one baseline image each
    e = lumos.explain(cnn64, x64, method="occlusion", target=1, window=4, stride=4, fill=fills)
    for i in range(len(x64)):
        ref = lumos.explain(cnn64, x64[i:i + 1], method="occlusion", target=1, window=4, stride=4,
                            fill=fills[i])
        np.testing.assert_allclose(e.values[i], ref.values[0], rtol=0, atol=1e-12)
    # the naive loop for sample 1: each window takes that sample's own baseline
    with torch.no_grad():
        xx = x64[1:2].clone()
        xx[:, :, 4:8, 0:4] = fills[1, :, 4:8, 0:4]
        drop = cnn64(x64[1:2])[0, 1] - cnn64(xx)[0, 1]
    np.testing.assert_allclose(e.values[1, :, 4:8, 0:4], float(drop), rtol=0, atol=1e-12)
    # one constant per sample, (n, 1, 1, 1), equals each sample's constant fill
    consts = torch.tensor([0.2, 0.7], dtype=torch.float64).reshape(2, 1, 1, 1)
    c = lumos.explain(cnn64, x64, method="feature_ablation", target=1, groups=np.arange(144).reshape(12, 12) // 24,
                      fill=consts)
    for i, v in enumerate((0.2, 0.7)):
        r = lumos.explain(cnn64, x64[i:i + 1], method="feature_ablation", target=1,
                          groups=np.arange(144).reshape(12, 12) // 24, fill=v)
        np.testing.assert_allclose(c.values[i], r.values[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one per sample"):
        lumos.explain(cnn64, x64, method="occlusion", fill=torch.zeros(3, 3, 12, 12))


def test_tabular_ablation_with_a_baseline_row_per_sample(linear_model):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    e = lumos.explain(linear_model, x, method="feature_ablation", target=2, fill=base,
                      groups=[[0, 1, 2], [3, 4]])
    w = linear_model.weight[2].detach()
    contrib = (w * (x - base))
    ref = torch.stack([contrib[:, :3].sum(1), contrib[:, 3:5].sum(1), contrib[:, 5]], 1)
    np.testing.assert_allclose(e.values, ref.numpy(), rtol=0, atol=1e-6)
    assert e.feature_names == ["x0+x1+x2", "x3+x4", "x5"]


# --------------------------------------------------------------------------- batching by bytes, f(x) once
class RowCounter(SmallCNN):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(len(x))
        return super().forward(x)


def test_default_batch_is_sized_by_bytes_and_f_x_is_evaluated_once():
    torch.manual_seed(0)
    big = torch.rand(2, 3, 128, 128)
    net = RowCounter().eval()
    e = lumos.explain(net, big, method="occlusion", target=0, window=64, stride=32)
    # 3x128x128 float32 rows are 192 KiB: 10 rows fit the 2 MiB budget (before: 64 rows per call)
    assert net.calls[0] == 2 and max(net.calls[1:]) == 10, net.calls
    assert sum(net.calls) == e.meta["n_evals"] == 2 * (1 + 9)      # f(x) once (before: twice)
    small = RowCounter().eval()
    lumos.explain(small, torch.rand(2, 3, 12, 12), method="feature_ablation", target=0,
                  groups=np.arange(144).reshape(12, 12) // 2)
    assert small.calls == [2, 64, 64, 16]                         # small rows: 64 per call


def test_renamed_parameters_say_their_new_name(small_cnn, images):
    for method in ("occlusion", "rise", "feature_ablation", "meaningful_perturbation"):
        with pytest.raises(TypeError, match="'data' is now called 'background'"):
            lumos.explain(small_cnn, images, method=method, fill="mean", data=images)


# --------------------------------------------------------------------------- superpixels (one function)
def test_superpixels_layouts_ranges_and_lime_quickshift():
    from skimage import data as skdata
    from skimage.segmentation import quickshift

    from lumos.agnostic.maskers import ImageMasker

    img = skdata.astronaut()[::8, ::8]                                   # (64, 64, 3) uint8
    first = torch.as_tensor(img).permute(2, 0, 1)[None].float() / 255    # (1, 3, 64, 64) in [0, 1]
    for method in ("slic", "quickshift", "felzenszwalb"):
        lab = superpixels(first, method)
        assert lab.shape == (1, 64, 64) and lab.dtype == np.int64
        np.testing.assert_array_equal(np.unique(lab), np.arange(lab.max() + 1))      # dense labels
        # channels last, and any value range (0-255 floats, normalised), give the same segments
        np.testing.assert_array_equal(superpixels(img[None].astype(np.float64), method), lab)
        np.testing.assert_array_equal(superpixels((first - 0.5) / 0.2, method), lab)
    # quickshift's defaults are LIME's (kernel 4, max_dist 200, ratio 0.2 on 0-255 images): on a
    # [0, 1] image they give exactly LIME's segments (scikit-image converts both to the same Lab)
    lime = quickshift(img, kernel_size=4, max_dist=200, ratio=0.2, rng=0)
    ref = np.unique(lime, return_inverse=True)[1].reshape(lime.shape)
    np.testing.assert_array_equal(superpixels(first, "quickshift")[0], ref)
    # the image masker uses the same function: before, it scaled [0, 1] floats to 0-255 before
    # the Lab conversion and got 89 segments here instead of LIME's 4
    masked = ImageMasker("quickshift").bind(first)
    np.testing.assert_array_equal(masked.segments[0], ref)
    # grey images: one channel, or none
    grey = first.mean(1, keepdim=True)
    np.testing.assert_array_equal(superpixels(grey, "slic"), superpixels(grey[:, 0], "slic"))
    with pytest.raises(ValueError, match="method must be one of"):
        superpixels(first, "watershed")
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        superpixels(np.zeros((1, 5, 8, 7)))
