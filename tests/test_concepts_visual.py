"""lumos.concepts, visual half: feature visualisation, dataset examples, receptive fields, embeddings.

Every test checks a property with a reference: objective values before/after, a finite-difference
derivative, a brute-force sort of the whole data set, a hand-computed receptive field, scikit-learn's
PCA on the activation matrix, and the model left exactly as found.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import headless_browser
import torch
import torch.nn.functional as F
from torch import nn

from lumos.concepts import objectives as obj
from lumos.concepts.exemplars import dataset_examples, receptive_field
from lumos.concepts.embeddings import activations, embed
from lumos.concepts.param import fourier_image, pixel_image
from lumos.concepts.visualisation import evaluate, layer_grid, visualise


# ----------------------------------------------------------------------------- fixtures
class Tiny(nn.Module):
    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny(dtype=torch.float32) -> Tiny:
    torch.manual_seed(0)
    return Tiny().to(dtype).eval()


def data(n=40, size=16, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def snapshot(model):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "req": [p.requires_grad for p in model.parameters()],
        "grad": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
    }


def assert_same(model, snap):
    now = snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(now["params"], snap["params"]))
    assert now["req"] == snap["req"]
    assert all(a is b for a, b in zip(now["grad"], snap["grad"]))
    assert now["training"] == snap["training"]
    assert now["hooks"] == snap["hooks"]


def odd_state(model):
    """A model in training mode, one frozen parameter and a user hook: all must survive."""
    model.train()
    model.features[0].bias.requires_grad_(False)
    model.features[3].register_forward_hook(lambda m, i, o: None)
    return snapshot(model)


# ----------------------------------------------------------------------------- objectives
def test_objectives_compose_like_numbers():
    g = torch.Generator().manual_seed(0)
    acts = {"a": torch.randn(3, 4, 5, 5, generator=g), obj.OUTPUT: torch.randn(3, 6, generator=g),
            obj.INPUT: torch.rand(3, 3, 8, 8, generator=g)}
    a = acts["a"]
    ch = obj.channel("a", 2)(acts)
    assert torch.allclose(ch, a[:, 2].mean((1, 2)))
    assert torch.allclose(obj.channel("a", 2, reduce="max")(acts), a[:, 2].amax((1, 2)))
    assert torch.allclose(obj.neuron("a", 1)(acts), a[:, 1, 2, 2])          # centre of 5x5
    assert torch.allclose(obj.neuron("a", [0, 1, 3], (4, 0))(acts), a[[0, 1, 2], [0, 1, 3], 4, 0])
    assert torch.allclose(obj.deepdream("a")(acts), a.pow(2).mean((1, 2, 3)))
    assert torch.allclose(obj.class_logit(5)(acts), acts[obj.OUTPUT][:, 5])
    v = torch.randn(4, generator=g)
    assert torch.allclose(obj.direction("a", v)(acts), torch.einsum("bchw,c->bhw", a, v).mean((1, 2)), atol=1e-6)
    combo = obj.channel("a", 2) + 2 * obj.class_logit(1) - obj.deepdream("a") / 4 - 1.5
    ref = ch + 2 * acts[obj.OUTPUT][:, 1] - a.pow(2).mean((1, 2, 3)) / 4 - 1.5
    assert torch.allclose(combo(acts), ref, atol=1e-6)
    assert combo.layers == {"a", obj.OUTPUT}
    assert torch.allclose(sum([obj.channel("a", 0), obj.channel("a", 1)])(acts),
                          a[:, 0].mean((1, 2)) + a[:, 1].mean((1, 2)))
    assert torch.allclose((-obj.channel("a", 0))(acts), -a[:, 0].mean((1, 2)))
    # diversity: minus the mean cosine similarity of the Gram matrices with the other images
    flat = a.reshape(3, 4, -1)
    grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    sim = grams @ grams.T
    want = -torch.stack([(sim[i].sum() - sim[i, i]) / 2 for i in range(3)])
    assert torch.allclose(obj.diversity("a")(acts), want, atol=1e-6)
    # penalties
    x = acts[obj.INPUT]
    tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
    assert torch.allclose(obj.total_variation()(acts), tv, atol=1e-6)
    assert torch.allclose(obj.l2()(acts), (x - 0.5).pow(2).mean((1, 2, 3)))
    const = {obj.INPUT: torch.full((2, 3, 8, 8), 0.3)}
    assert torch.allclose(obj.blur(1.0)(const), torch.zeros(2), atol=1e-10)   # a flat image is its own blur


def test_objective_errors_name_what_is_wrong():
    acts = {"a": torch.zeros(2, 4, 5, 5)}
    with pytest.raises(ValueError, match="channel 7 is out of range"):
        obj.channel("a", 7)(acts)
    with pytest.raises(ValueError, match="3 indices given"):
        obj.channel("a", [0, 1, 2])(acts)
    with pytest.raises(TypeError, match="objectives combine"):
        obj.channel("a", 0) * "x"
    with pytest.raises(TypeError, match="layer must be a dotted"):
        obj.channel(3, 0)
    with pytest.raises(ValueError, match="vector has 3 entries"):
        obj.direction("a", [1.0, 2.0, 3.0])(acts)


# ----------------------------------------------------------------------------- feature visualisation
def test_transformations_by_their_definitions():
    from lumos.concepts import transforms as T

    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(T.random_rotate([90])(x, g), torch.rot90(x, 1, (2, 3)), atol=1e-6)
    assert torch.equal(T.random_rotate([0])(x, g), x)
    p = T.pad(2, value=0.5)(x, g)
    assert p.shape == (2, 3, 16, 16) and torch.equal(p[..., 2:-2, 2:-2], x) and (p[..., :2, :] == 0.5).all()
    j = T.jitter(3)(x, g)
    assert j.shape == (2, 3, 10, 10)
    assert any(torch.equal(j, x[..., r:r + 10, c:c + 10]) for r in range(3) for c in range(3))
    assert T.random_scale([1.5])(x, g).shape == (2, 3, 18, 18)
    chain = T.standard(64)
    a = chain(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.Generator().manual_seed(5))
    b = chain(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)  # the generator is the only randomness


@pytest.mark.parametrize("param", ["fourier", "pixel"])
@pytest.mark.parametrize("objective", [
    obj.channel("features.3", 2), obj.neuron("features.3", 1), obj.deepdream("features.1"),
    obj.class_logit(1), obj.direction("features.4", [1.0, -1.0, 0.5, 0.0, 2.0, -0.5]),
], ids=["channel", "neuron", "deepdream", "logit", "direction"])
def test_activation_maximisation_increases_its_objective(param, objective):
    model = tiny()
    res = visualise(model, objective, shape=(3, 16, 16), n_iter=30, param=param, seed=3, lr=0.3)
    assert res.images.shape == (1, 3, 16, 16) and res.curve.shape == (30, 1)
    assert 0.0 <= res.images.min() and res.images.max() <= 1.0
    np.testing.assert_allclose(res.final, evaluate(model, objective, res.images), rtol=1e-5, atol=1e-6)
    # the tiny model's objectives span about 0.1 over the image range; the start is grey
    assert res.final[0] > res.initial[0] + 0.01
    assert res.curve[-5:].mean() > res.curve[:5].mean()


def test_demo_cnn_class_pictures_beat_the_best_test_image():
    from lumos.data import load_demo_model, shapes_dataset

    model = load_demo_model()
    test = shapes_dataset(300, split="test")
    with torch.no_grad():
        best = model(torch.as_tensor(test.images)).max(0).values.numpy()
    res = visualise(model, obj.class_logit([0, 1, 2, 3]), shape=(3, 64, 64), batch=4, n_iter=48, seed=0)
    assert (res.final > best).all(), (res.final, best)


def test_gradient_flows_through_the_fourier_parametrisation():
    model = tiny(torch.float64)
    g = torch.Generator().manual_seed(0)
    image = fourier_image((1, 3, 16, 16), g, sd=0.1, dtype=torch.float64)
    objective = obj.channel("features.3", 1)
    from lumos.concepts._capture import record

    def f():
        return objective(record(model, image(), ["features.3"]))[0]

    (grad,) = torch.autograd.grad(f(), image.params)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # imaginary parts of the zero and Nyquist rows/columns are ignored by irfft2; all others move the image
    assert (grad != 0).float().mean() > 0.9
    # the gradient is the derivative: a central finite difference along a random direction agrees
    d = torch.randn(grad.shape, generator=g, dtype=torch.float64)
    eps = 1e-6
    with torch.no_grad():
        p = image.params[0]
        p += eps * d
        up = f()
        p -= 2 * eps * d
        down = f()
        p += eps * d
    assert abs(float((up - down) / (2 * eps)) - float((grad * d).sum())) < 1e-6 * max(1.0, float(grad.abs().sum()))


def test_pixel_parametrisation_stays_in_the_range():
    g = torch.Generator().manual_seed(0)
    im = pixel_image((2, 3, 8, 8), g, sd=5.0, value_range=(-1.0, 2.0))()
    assert im.min() >= -1.0 and im.max() <= 2.0


def test_same_seed_same_picture_different_seed_different():
    model = tiny()
    kw = dict(shape=(3, 16, 16), n_iter=12, seed=7)
    a = visualise(model, obj.channel("features.3", 0), **kw)
    b = visualise(model, obj.channel("features.3", 0), **kw)
    c = visualise(model, obj.channel("features.3", 0), **{**kw, "seed": 8})
    assert np.array_equal(a.images, b.images) and np.array_equal(a.curve, b.curve)
    assert np.abs(a.images - c.images).max() > 1e-3
    # image 0 of a batch does not depend on the images after it
    two = visualise(model, obj.channel("features.3", [0, 1]), shape=(3, 16, 16), n_iter=12, seed=7, batch=2)
    np.testing.assert_allclose(two.images[0], a.images[0], atol=1e-5)


def test_layer_grid_draws_every_channel_with_titles():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = tiny()
    res = layer_grid(model, "features.3", shape=(3, 16, 16), n_iter=8)
    assert res.images.shape == (6, 3, 16, 16)
    assert res.titles == [f"features.3 ch {c}" for c in range(6)]
    fig = res.plot(columns=3)
    assert "What each channel of 'features.3' responds to" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in fig.axes[:6]] == res.titles
    plt.close(fig)
    # each image maximises its own channel: its channel scores higher on it than the grey start
    own = evaluate(model, obj.channel("features.3", list(range(6))), res.images)
    np.testing.assert_allclose(own, res.final, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="has 6 channels"):
        layer_grid(model, "features.3", [9], shape=(3, 16, 16), n_iter=2)
    with pytest.raises(TypeError, match="layer_grid: unknown parameter 'n_iters' \\(did you mean 'n_iter'"):
        layer_grid(model, "features.3", shape=(3, 16, 16), n_iters=2)


def test_visualise_errors_are_clear():
    model = tiny()
    with pytest.raises(ValueError, match="shape: give the model's input shape"):
        visualise(model, obj.channel("features.3", 0))
    with pytest.raises(ValueError, match="no layer named 'features.33'"):
        visualise(model, obj.channel("features.33", 0), shape=(3, 16, 16), n_iter=2)
    with pytest.raises(ValueError, match="param must be one of"):
        visualise(model, obj.channel("features.3", 0), shape=(3, 16, 16), param="wavelet")
    with pytest.raises(TypeError, match="must be a lumos.concepts.objectives.Objective"):
        visualise(model, "features.3", shape=(3, 16, 16))


def test_visualisation_leaves_the_model_as_found_also_on_error():
    model = tiny()
    snap = odd_state(model)
    visualise(model, obj.channel("features.3", 0) - 0.1 * obj.total_variation(), shape=(3, 16, 16), n_iter=3)
    assert_same(model, snap)
    layer_grid(model, "features.0", 2, shape=(3, 16, 16), n_iter=2)
    assert_same(model, snap)

    def boom(acts):
        raise RuntimeError("objective failed")

    with pytest.raises(RuntimeError, match="objective failed"):
        visualise(model, obj.Objective(boom, ["features.3"], "boom"), shape=(3, 16, 16), n_iter=3)
    assert_same(model, snap)


# ----------------------------------------------------------------------------- dataset examples
def _brute(model, x, objective):
    """Scores and positions of the whole set in one pass, through plain hooks."""
    acts = {}
    hs = [dict(model.named_modules())[k].register_forward_hook(
        lambda m, i, o, k=k: acts.__setitem__(k, o)) for k in objective.layers if k not in (obj.INPUT, obj.OUTPUT)]
    with torch.no_grad():
        acts[obj.OUTPUT] = model(x)
    for h in hs:
        h.remove()
    acts[obj.INPUT] = x
    pos = objective.locate(acts).numpy() if objective.locate is not None else None
    return objective(acts).numpy().astype(np.float64), pos


UNITS = {
    "neuron": obj.neuron("features.3", 2, (3, 5)),
    "channel-mean": obj.channel("features.4", 1),
    "channel-max": obj.channel("features.4", 5, reduce="max"),
    "direction": obj.direction("features.1", [0.5, -1.0, 2.0, 0.3]),
    "logit": obj.class_logit(2),
}


@pytest.mark.parametrize("batch_size", [1, 7, 40, "loader", "dataloader"])
def test_top_k_equals_a_brute_force_sort(batch_size):
    model = tiny(torch.float64)
    x = data(40, dtype=torch.float64)
    k = 6
    if batch_size == "loader":  # an iterable of (inputs, labels) batches of uneven size
        src = [(x[:13], torch.zeros(13)), (x[13:14], torch.zeros(1)), (x[14:], torch.zeros(26))]
        ex = dataset_examples(model, src, UNITS, k=k)
    elif batch_size == "dataloader":
        from torch.utils.data import DataLoader, TensorDataset

        ex = dataset_examples(model, DataLoader(TensorDataset(x, torch.arange(40)), batch_size=9), UNITS, k=k)
    else:
        ex = dataset_examples(model, x, UNITS, k=k, batch_size=batch_size)
    assert ex.names == list(UNITS) and ex.n_seen == 40
    for u, o in enumerate(UNITS.values()):
        s, pos = _brute(model, x, o)
        top = sorted(range(40), key=lambda i: (-s[i], i))[:k]
        bottom = sorted(range(40), key=lambda i: (s[i], i))[:k]
        assert ex.top_indices[u].tolist() == top and ex.bottom_indices[u].tolist() == bottom
        np.testing.assert_allclose(ex.top_scores[u], s[top], rtol=1e-12)
        np.testing.assert_allclose(ex.bottom_scores[u], s[bottom], rtol=1e-12)
        if pos is None:
            assert ex.top_positions[u] is None and ex.top_boxes[u] is None
        else:
            assert np.array_equal(ex.top_positions[u], pos[top])
        for i in top + bottom:
            assert np.array_equal(ex.images[i], x[i].numpy())
    # memory stays bounded: only the kept examples' images are held
    assert set(ex.images) == {int(i) for a in (ex.top_indices, ex.bottom_indices) for i in a.ravel()}


def test_ties_are_broken_by_the_data_set_index():
    model = tiny(torch.float64)
    base = data(3, dtype=torch.float64)
    x = base[[0, 1, 0, 2, 1, 0, 2, 2]]  # repeated inputs score exactly alike
    s, _ = _brute(model, x, obj.class_logit(0))
    for bs in (1, 3, 8):
        ex = dataset_examples(model, x, obj.class_logit(0), k=8, batch_size=bs, receptive=None)
        assert ex.top_indices[0].tolist() == sorted(range(8), key=lambda i: (-s[i], i))
        assert ex.bottom_indices[0].tolist() == sorted(range(8), key=lambda i: (s[i], i))
    groups = [[0, 2, 5], [1, 4], [3, 6, 7]]
    order = ex.top_indices[0].tolist()
    for grp in groups:  # tied inputs appear together, earlier index first
        at = [order.index(i) for i in grp]
        assert at == sorted(at) and max(at) - min(at) == len(grp) - 1


class Known(nn.Module):
    """conv3 p1 -> relu -> maxpool2 -> conv5 s2 p2 -> avgpool3 s1: by hand, position i of the last
    map sees inputs [4i - 5, 4i + 15) (size 20, jump 4, pad 5)."""

    def __init__(self, linear: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Identity() if linear else nn.ReLU(),
                                  nn.AvgPool2d(2) if linear else nn.MaxPool2d(2),
                                  nn.Conv2d(2, 3, 5, stride=2, padding=2), nn.AvgPool2d(3, stride=1))
        if linear:  # positive weights: no cancellation, the gradient reaches the whole field
            with torch.no_grad():
                for m in self.body:
                    if isinstance(m, nn.Conv2d):
                        m.weight.uniform_(0.1, 1.0)

    def forward(self, x):
        return self.body(x)


def test_receptive_field_geometry_matches_the_hand_computation_and_the_gradient():
    model = Known()
    rf = receptive_field(model, "body.4", (1, 48, 48))
    assert rf.method == "geometry" and rf.jump == (4, 4) and rf.pad == (5, 5) and rf.size == (20, 20)
    assert rf.box((3, 4)) == ((7, 27), (11, 31))
    assert rf.box((0, 9)) == ((0, 15), (31, 48))      # clipped to the image
    # on a linear, positive stack the gradient's support is exactly the geometric field
    lin = Known(linear=True)
    geo = receptive_field(lin, "body.4", (1, 48, 48), method="geometry")
    grad = receptive_field(lin, "body.4", (1, 48, 48), method="gradient")
    for pos in [(3, 4), (0, 0), (9, 9), (5, 1)]:
        assert grad.box(pos) == geo.box(pos)
    with pytest.raises(ValueError, match="outside 'body.4'"):
        rf.box((10, 0))


def test_receptive_field_auto_sees_through_functional_ops():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Conv2d(1, 2, 3, padding=1)
            self.b = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):  # the pooling is a function call: hooks cannot see it
            return self.b(F.avg_pool2d(self.a(x), 5, stride=1, padding=2))

    model = Functional()
    assert receptive_field(model, "b", (1, 24, 24), method="geometry").size == (5, 5)  # blind to the pool
    rf = receptive_field(model, "b", (1, 24, 24))
    assert rf.method == "gradient"
    assert rf.box((12, 12)) == ((8, 17), (8, 17))                                      # true size 9


def test_receptive_field_crop_contains_the_argmax_position():
    model = Known()
    x = data(20, size=48, seed=4)[:, :1]
    unit = obj.channel("body.4", 1, reduce="max")
    ex = dataset_examples(model, x, unit, k=5, batch_size=6)
    s, pos = _brute(model, x, unit)
    for j, i in enumerate(ex.top_indices[0]):
        r, c = pos[i]
        assert tuple(ex.top_positions[0][j]) == (r, c)
        box = ex.top_boxes[0][j]
        assert box == ((max(0, 4 * r - 5), min(48, 4 * r + 15)), (max(0, 4 * c - 5), min(48, 4 * c + 15)))
        # the input pixels that move this unit lie inside the crop
        xi = x[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[0, 1, r, c], xi)
        rows, cols = torch.nonzero(g[0, 0].abs() > 0, as_tuple=True)
        assert box[0][0] <= rows.min() and rows.max() < box[0][1]
        assert box[1][0] <= cols.min() and cols.max() < box[1][1]
        crop = ex.examples(0, "top", crop=True)[j]
        assert crop.shape == (1, box[0][1] - box[0][0], box[1][1] - box[1][0])
        assert np.array_equal(crop, x[i, :, box[0][0]:box[0][1], box[1][0]:box[1][1]].numpy())


def test_dataset_examples_plot_and_model_left_as_found():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = tiny()
    snap = odd_state(model)
    ex = dataset_examples(model, data(20), [obj.channel("features.4", 0, reduce="max"), obj.class_logit(1)], k=3)
    assert_same(model, snap)
    fig = ex.plot()
    assert "not which feature it detects" in fig._suptitle.get_text()
    plt.close(fig)
    with pytest.raises(ValueError, match="k=30 but data has only 20"):
        dataset_examples(model, data(20), obj.class_logit(1), k=30)
    assert_same(model, snap)
    with pytest.raises(TypeError, match="units must be an Objective"):
        dataset_examples(model, data(20), "features.4")
    rf = receptive_field(model, "features.3", (3, 16, 16), method="gradient")
    rf.box((4, 4))                                   # lazily run boxes are guarded too
    receptive_field(model, "features.4", (3, 16, 16))
    evaluate(model, obj.class_logit(0), data(3))
    activations(model, data(5), "features.4")
    assert_same(model, snap)


# ----------------------------------------------------------------------------- embeddings
def _mean_acts(model, x, layer):
    out = {}
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: out.__setitem__("a", o))
    with torch.no_grad():
        model(x)
    h.remove()
    return out["a"].mean((2, 3)).numpy()


def test_pca_equals_sklearn_on_the_activation_matrix():
    from sklearn.decomposition import PCA

    model = tiny()
    x = data(30)
    labels = np.arange(30) % 3
    emb = embed(model, [(x[:11], labels[:11]), (x[11:], labels[11:])], "features.4", method="pca")
    acts = _mean_acts(model, x, "features.4")
    np.testing.assert_allclose(emb.coords, PCA(2, svd_solver="full").fit_transform(acts.astype(np.float64)),
                               atol=1e-5)
    assert np.array_equal(emb.labels, labels)
    np.testing.assert_allclose(activations(model, x, "features.4", batch_size=4).values, acts, atol=1e-6)
    assert "PCA is linear" in emb.caveats[0]


def test_tsne_is_seeded_and_checks_its_perplexity():
    model = tiny()
    x = data(25)
    kw = dict(perplexity=5, thumbnail_size=None, init="random")
    a = embed(model, x, "features.4", seed=0, **kw)
    b = embed(model, x, "features.4", seed=0, **kw)
    c = embed(model, x, "features.4", seed=1, **kw)
    assert np.array_equal(a.coords, b.coords)
    assert not np.allclose(a.coords, c.coords, atol=1e-3)
    # with the PCA start (the default) nothing is random: every seed gives the same picture
    p0 = embed(model, x, "features.4", perplexity=5, seed=0, thumbnail_size=None)
    p1 = embed(model, x, "features.4", perplexity=5, seed=1, thumbnail_size=None)
    assert np.array_equal(p0.coords, p1.coords)
    assert any("Distances between clusters mean nothing" in t for t in a.caveats)
    assert any("perplexity (here 5" in t for t in a.caveats)
    with pytest.raises(ValueError, match="perplexity must be smaller than the number of points"):
        embed(model, x, "features.4", perplexity=25)


def test_umap_without_the_extra_names_it():
    pytest.importorskip("sklearn")
    try:
        import umap  # noqa: F401
        pytest.skip("umap-learn is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="optional extra 'concepts'"):
        embed(tiny(), data(10), "features.4", method="umap")


def test_html_escapes_labels_and_is_self_contained(tmp_path):
    model = tiny()
    snap = odd_state(model)
    x = data(12)
    evil = "<script>alert(1)</script>"
    emb = embed(model, x, "features.4", method="pca", labels=[evil, "ok"] * 6)
    assert_same(model, snap)
    html = emb.to_html(tmp_path / "e.html")
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert (tmp_path / "e.html").read_text() == html
    assert not re.search(r"https?:|src=\"//|<link|@import|url\(", html)
    assert html.count("data-thumb=\"iVBOR") == 12                  # 12 inline PNG thumbnails
    assert "PCA is linear" in html
    assert "wrong" in emb.to_html(color_by="correct")   # string labels never equal integer predictions
    assert "prediction: " in emb.to_html(color_by=np.linspace(0, 1, 12))


def test_embedding_plot_has_legend_or_colour_bar_and_caveats():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emb = embed(tiny(), [(data(20), np.arange(20) % 3)], "features.4", method="pca", class_names=["a", "b", "c"])
    ax = emb.plot("label")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    assert "PCA is linear" in ax.get_xlabel()
    plt.close(ax.figure)
    ax = emb.plot(np.linspace(0, 1, 20))
    assert len(ax.figure.axes) == 2  # the colour bar
    plt.close(ax.figure)
    ax = emb.plot("correct")
    assert {t.get_text() for t in ax.get_legend().get_texts()} <= {"wrong", "correct"}
    plt.close(ax.figure)


def test_html_renders_in_a_real_browser_with_labels_as_text(tmp_path):
    import subprocess
    from html.parser import HTMLParser

    evil = "<script>alert(1)</script><b>x</b>"
    emb = embed(tiny(), data(8), "features.4", method="pca", labels=[evil, "ok"] * 4)
    page = tmp_path / "e.html"
    html = emb.to_html()
    # hover the first point (what the mouse would do), then let the browser dump the page
    hover = ('<script>document.querySelector("circle").dispatchEvent(new MouseEvent("mouseenter"));'
             '</script></body>')
    page.write_text(html.replace("</body>", hover), encoding="utf-8")
    cmd = headless_browser() + ["--dump-dom", page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    tags, titles, attrs_of = [], [], {}

    class P(HTMLParser):
        in_title = False

        def handle_starttag(self, tag, attrs):
            tags.append(tag)
            a = dict(attrs)
            if a.get("id"):
                attrs_of[a["id"]] = a
            self.in_title = tag == "title"
            if self.in_title:
                titles.append("")

        def handle_endtag(self, tag):
            self.in_title = False

        def handle_data(self, d):
            if self.in_title:
                titles[-1] += d

    P(convert_charrefs=True).feed(res.stdout)
    assert tags.count("circle") == 8 and tags.count("script") == 2 and "b" not in tags  # ours + the hover
    assert sum(evil in t for t in titles) == 4        # shown as the text it is, in each point's tooltip
    # hovering showed the point's own thumbnail beside the plot
    assert attrs_of["thumb"]["src"] == "data:image/png;base64," + _png_of(emb, 0)
    assert f"#0 · label: {evil}" in res.stdout.replace("&lt;", "<").replace("&gt;", ">")


def _png_of(emb, i):
    from lumos.concepts.embeddings import _png_base64

    return _png_base64(emb.thumbnails[i])
