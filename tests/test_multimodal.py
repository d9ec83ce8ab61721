"""Image–text models: similarity targets, crop-similarity saliency, the image–text world."""
import numpy as np
import pytest
import torch
from torch import nn

import lumos
from lumos.multimodal import crop_boxes, crop_similarity, similarity_target
from lumos.multimodal.crops import resize_crop


def _smooth_tower(dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                      nn.Linear(4 * 4 * 4, dim))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.double().eval()


class ColourEncoder(nn.Module):
    """Hand-built image tower: mean "redness", "blueness" and half the mean of neither."""

    def forward(self, x):
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        red = torch.relu(r - torch.maximum(g, b))
        blue = torch.relu(b - torch.maximum(r, g))
        return torch.stack([red.mean((1, 2)), blue.mean((1, 2)), 0.5 * (1 - red - blue).mean((1, 2))], 1)


def _two_squares(n=2, size=32):
    x = torch.full((n, 3, size, size), 0.5)
    x[:, :, 8:16, 6:14] = torch.tensor([1.0, 0, 0])[:, None, None]
    x[:, :, 20:28, 18:28] = torch.tensor([0.0, 0, 1])[:, None, None]
    red = torch.zeros(n, size, size, dtype=torch.bool)
    red[:, 8:16, 6:14] = True
    return x, red


# ---------------------------------------------------------------------------- similarity targets
def test_similarity_target_is_cosine_and_takes_vectors_texts_and_images():
    q = torch.tensor([1.0, 2.0, -1.0])
    out = torch.tensor([[1.0, 2.0, -1.0], [-2.0, -4.0, 2.0], [2.0, -1.0, 0.0]])
    t = similarity_target(q)
    assert torch.allclose(t(out), torch.tensor([1.0, -1.0, 0.0]), atol=1e-7)
    assert np.allclose(t(out.numpy()), [1.0, -1.0, 0.0])
    enc = lambda texts: torch.tensor([[float(len(texts[0])), 0.0, 0.0]])  # noqa: E731
    assert torch.allclose(similarity_target("abc", encoder=enc).query, torch.tensor([3.0, 0, 0], dtype=torch.float64))
    tower = ColourEncoder()
    img, _ = _two_squares(1)
    t_img = similarity_target(img[0], encoder=tower)   # an unbatched image is batched for the encoder
    assert torch.allclose(t_img.query, tower(img)[0].double())
    assert torch.allclose(similarity_target(img, encoder=tower).query, t_img.query)


def test_similarity_target_clear_errors():
    with pytest.raises(TypeError, match="encoder"):
        similarity_target("red circle")
    with pytest.raises(ValueError, match="query"):
        similarity_target(torch.zeros(4))
    with pytest.raises(ValueError, match="query"):
        similarity_target(torch.ones(2, 4))
    with pytest.raises(TypeError, match="encoder must be callable"):
        similarity_target("x", encoder=3)
    t = similarity_target(torch.ones(4))
    with pytest.raises(ValueError, match="4"):
        lumos.explain(_smooth_tower(5), torch.rand(1, 3, 16, 16, dtype=torch.float64), "saliency", target=t)


def test_integrated_gradients_on_the_similarity_target_is_complete():
    """IG sums to sim(x) - sim(baseline), to quadrature accuracy, on a smooth image tower."""
    tower = _smooth_tower()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    base = torch.full_like(x, 0.5)
    t = similarity_target(torch.randn(5, generator=g, dtype=torch.float64))
    e = lumos.explain(tower, x, "integrated_gradients", target=t, baselines=base, n_steps=64)
    with torch.no_grad():
        expected = (t(tower(x)) - t(tower(base))).numpy()
    got = np.asarray(e.values).reshape(3, -1).sum(1)
    assert np.abs(got - expected).max() <= 1e-8 * max(1.0, np.abs(expected).max())
    assert np.abs(expected).min() > 1e-3  # not a trivial zero


def test_similarity_target_leaves_the_encoder_as_found():
    tower = _smooth_tower()
    tower.train()
    before = {k: v.clone() for k, v in tower.state_dict().items()}
    similarity_target(torch.rand(3, 16, 16, dtype=torch.float64), encoder=tower)
    assert tower.training
    assert all(torch.equal(before[k], v) for k, v in tower.state_dict().items())


# ---------------------------------------------------------------------------- crop similarity
def _naive_crop_similarity(model, x, target, n_crops, sizes, seed, input_size=None):
    """One crop at a time, one image at a time, a dense coverage mask per crop."""
    n, _, H, W = x.shape
    size = input_size or (H, W)
    boxes = crop_boxes(n_crops, (H, W), sizes, seed)
    out = np.zeros((n, H, W))
    with torch.no_grad():
        for i in range(n):
            whole = nn.functional.interpolate(x[i:i + 1], size=size, mode="bilinear", align_corners=False)
            full = float(target(model(whole))[0])
            acc, cover = np.zeros((H, W)), np.zeros((H, W))
            for (t, l, h, w) in boxes:
                crop = x[i:i + 1, :, t:t + h, l:l + w]
                crop = nn.functional.interpolate(crop, size=size, mode="bilinear", align_corners=False)
                s = float(target(model(crop))[0])
                acc[t:t + h, l:l + w] += s - full
                cover[t:t + h, l:l + w] += 1
            out[i] = np.where(cover > 0, acc / np.maximum(cover, 1), 0.0)
    return out


def test_crop_similarity_equals_a_naive_loop_over_crops():
    tower = _smooth_tower()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    t = similarity_target(torch.randn(5, generator=g, dtype=torch.float64))
    e = crop_similarity(tower, x, target=t, n_crops=40, sizes=(0.3, 0.7), seed=5, input_size=(12, 12))
    ref = _naive_crop_similarity(tower, x, t, 40, (0.3, 0.7), 5, input_size=(12, 12))
    v = np.asarray(e.values)
    assert v.shape == (2, 3, 16, 16)
    assert np.abs(v[:, 0] - ref).max() <= 1e-12
    assert np.array_equal(v[:, 0], v[:, 2])  # one map, shared by the channels
    assert np.abs(ref).max() > 1e-3


def test_crop_similarity_batch_size_and_other_samples_do_not_matter():
    tower = _smooth_tower()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = similarity_target(torch.arange(5.0) - 2)
    ref = np.asarray(crop_similarity(tower, x, target=t, n_crops=30, batch_size=1).values)
    # float64 convolutions of different batch sizes differ in the last bits only
    for bs in (7, 64):
        assert np.abs(np.asarray(crop_similarity(tower, x, target=t, n_crops=30, batch_size=bs).values)
                      - ref).max() <= 1e-13
    alone = np.asarray(crop_similarity(tower, x[1:2], target=t, n_crops=30, batch_size=5).values)
    assert np.abs(alone[0] - ref[1]).max() <= 1e-13
    other = np.asarray(crop_similarity(tower, x, target=t, n_crops=30, seed=1).values)
    assert not np.allclose(other, ref)


def test_crop_similarity_reports_uncovered_pixels_as_zero():
    x = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = similarity_target(torch.arange(5.0) + 1)
    e = crop_similarity(_smooth_tower(), x, target=t, n_crops=3, sizes=0.25, seed=0)
    cover = np.zeros((20, 20), bool)
    for (tt, l, h, w) in e.meta["boxes"]:
        cover[tt:tt + h, l:l + w] = True
    assert e.meta["uncovered"] == int((~cover).sum()) > 0
    assert e.meta["uncovered_fraction"] == pytest.approx((~cover).mean())
    assert np.all(np.asarray(e.values)[0, :, ~cover] == 0)


def test_crop_similarity_lights_the_region_that_matches_the_query():
    """A hand-built encoder and a query that matches only the red square: the map's mass lies on it."""
    from lumos.metrics import pointing_game, relevance_mass_accuracy

    x, red = _two_squares(2)
    tower = ColourEncoder()
    e = lumos.explain(tower, x, "crop_similarity", target=similarity_target(torch.tensor([1.0, 0, 0])),
                      n_crops=300, sizes=(0.2, 0.5), seed=0)
    mass = relevance_mass_accuracy(e, red).scores
    # the red square is 6.25% of the image (the chance level of the mass); every crop holding it
    # also holds background around it, so the positive mass spreads into a halo: the stated
    # threshold is 3x chance (measured: 0.244)
    assert np.all(mass >= 0.1875), mass
    assert np.all(pointing_game(e, red, tolerance=4).scores == 1)
    blue = torch.zeros_like(red)
    blue[:, 20:28, 18:28] = True
    v = np.asarray(e.values)[:, 0]
    assert np.all(v[blue.numpy()].reshape(2, -1).mean(1) < 0)  # farther from "red" where the blue square is


def test_crop_similarity_clear_errors():
    t = similarity_target(torch.ones(5))
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_crops"):
        crop_similarity(_smooth_tower(), x, target=t, n_crops=0)
    with pytest.raises(ValueError, match="sizes"):
        crop_similarity(_smooth_tower(), x, target=t, sizes=(0.6, 0.2))
    with pytest.raises(ValueError, match="sizes"):
        crop_similarity(_smooth_tower(), x, target=t, sizes=1.5)
    with pytest.raises(ValueError, match="input_size"):
        crop_similarity(_smooth_tower(), x, target=t, input_size=(1, 2, 3))
    with pytest.raises(ValueError, match="inputs"):
        crop_similarity(lambda a: np.ones((len(a), 5)), np.ones((2, 7)), target=t)


def test_crop_boxes_stay_inside_and_respect_sizes():
    b = crop_boxes(500, (40, 30), (0.25, 0.5), seed=0)
    assert np.all(b[:, 0] >= 0) and np.all(b[:, 0] + b[:, 2] <= 40)
    assert np.all(b[:, 1] >= 0) and np.all(b[:, 1] + b[:, 3] <= 30)
    assert b[:, 2].min() == 10 and b[:, 2].max() == 20 and b[:, 3].min() == 8 and b[:, 3].max() == 15
    assert np.array_equal(b, crop_boxes(500, (40, 30), (0.25, 0.5), seed=0))
    x = torch.rand(2, 3, 10, 10)
    assert resize_crop(x, (0, 0, 10, 10), (10, 10)).shape == (2, 3, 10, 10)


# ---------------------------------------------------------------------------- the image–text world
from lumos.data.image_text import (VOCABULARY, ImageTextModel, caption_matches, image_text_dataset,  # noqa: E402
                                   phrase)


def test_world_captions_and_masks_follow_the_ground_truth():
    d = image_text_dataset(40, split="test", seed=3)
    assert d.images.shape == (40, 3, 64, 64) and d.masks.shape == (40, 2, 64, 64)
    assert np.all(d.shape[:, 0] != d.shape[:, 1]) and np.all(d.colour[:, 0] != d.colour[:, 1])
    assert np.all(d.position[:, 0] != d.position[:, 1])
    assert not (d.masks[:, 0] & d.masks[:, 1]).any()
    from lumos.data.image_text import COLOURS, POSITIONS

    for i in range(40):
        for k in range(2):
            m = d.masks[i, k]
            assert m.sum() > 20
            rgb = torch.tensor(list(COLOURS.values())[d.colour[i, k]])
            assert torch.allclose(d.images[i][:, m], rgb[:, None].expand(3, int(m.sum())))
            rows, cols = torch.nonzero(m, as_tuple=True)
            quadrant = 2 * int(rows.float().mean() >= 32) + int(cols.float().mean() >= 32)
            assert quadrant == d.position[i, k]
            assert phrase(d.shape[i, k], d.colour[i, k], d.position[i, k], d.size[i, k]) in d.captions[i]
        assert d.object_of(i, phrase(d.shape[i, 1], d.colour[i, 1], article=False)) == 1
        assert POSITIONS[d.position[i, 0]] in d.captions[i]
    match = caption_matches(d, d.captions)
    assert match.diagonal().all()
    assert np.array_equal(image_text_dataset(40, split="test", seed=3).images, d.images)
    assert not np.array_equal(image_text_dataset(40, split="train", seed=3).images, d.images)


def test_tokenize_counts_words_and_names_unknown_ones():
    m = ImageTextModel(dim=4)
    c = m.tokenize(["a red circle and a red square"])
    assert c.shape == (1, len(VOCABULARY))
    assert c[0, VOCABULARY.index("red")] == 2 and c[0, VOCABULARY.index("a")] == 2 and c.sum() == 7
    with pytest.raises(ValueError, match="'purple'"):
        m.tokenize("a purple circle")
    with pytest.raises(TypeError, match="texts"):
        m.tokenize([3])


def test_text_side_attributions_on_the_bag_of_words_tower_equal_the_closed_form():
    """t = W c + b, target cos(t, u): gradient x input is c_w * W_w . grad_t cos(t, u) and
    occluding a word removes c_w W_w, both in closed form."""
    with torch.random.fork_rng():  # the global RNG is left as found
        torch.manual_seed(0)
        m = ImageTextModel(dim=6).double()
    u = torch.randn(6, dtype=torch.float64)
    target = similarity_target(u)
    counts = m.tokenize(["a small red circle at the top left", "blue square and a cross"]).double()
    W, b = m.text_encoder.proj.weight.detach(), m.text_encoder.proj.bias.detach()
    t = counts @ W.T + b
    tn, un = t.norm(dim=1, keepdim=True), u.norm()
    cos = (t @ u) / (tn[:, 0] * un)
    grad_t = u[None] / (tn * un) - cos[:, None] * t / tn ** 2
    gxi = counts * (grad_t @ W)
    e = lumos.explain(m.text_encoder, counts, "gradient_x_input", target=target)
    assert np.abs(np.asarray(e.values) - gxi.numpy()).max() <= 1e-12
    occl = torch.zeros_like(counts)
    for w in range(counts.shape[1]):
        t2 = t - counts[:, w:w + 1] * W[:, w][None]
        occl[:, w] = cos - (t2 @ u) / (t2.norm(dim=1) * un)
    e = lumos.explain(m.text_encoder, counts, "occlusion", target=target, window=1)
    assert np.abs(np.asarray(e.values) - occl.numpy()).max() <= 1e-12
    assert np.all(np.asarray(e.values)[counts.numpy() == 0] == 0)  # absent words get nothing


def test_shipped_weights_load_safely_and_reproduce_the_recorded_retrieval():
    from lumos.data.image_text import (INFO_PATH, WEIGHTS_PATH, evaluate_retrieval, image_text_model_info,
                                       load_image_text_model)

    assert WEIGHTS_PATH.stat().st_size < 2 * 2 ** 20 and INFO_PATH.exists()
    torch.load(WEIGHTS_PATH, weights_only=True)
    m = load_image_text_model()
    info = image_text_model_info()
    got = evaluate_retrieval(m, n=info["n_test"], seed=info["seed"])
    for k in ("image_to_text_top1", "text_to_image_top1", "phrase_accuracy", "binding_accuracy"):
        assert abs(got[k] - info[k]) <= 1 / info["n_test"], k
    # trained: far above chance (1/500 for top-1, 0.5 for phrases)
    assert got["image_to_text_top1"] >= 0.4 and got["phrase_accuracy"] >= 0.95
    assert not m.training


def test_training_is_reproducible_and_learns(tmp_path):
    """A short run twice from one seed gives the same weights; the loss falls."""
    from lumos.data.image_text import train_image_text_model

    kw = dict(epochs=2, n_train=128, n_test=32, batch_size=32, progress=False, threads=1)
    m1, r1 = train_image_text_model(out=tmp_path, **kw)
    m2, _ = train_image_text_model(**kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert r1["history"][1]["loss"] < r1["history"][0]["loss"]
    state = torch.load(tmp_path / "image_text.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in m1.state_dict().items())
    with pytest.raises(ValueError, match="epochs"):
        train_image_text_model(epochs=0)


def test_the_similarity_maps_of_the_shipped_model_localise_the_named_object():
    """IG and occlusion on "colour shape" point at the named object far above chance and put more
    relevance on it than on the image's other object (occlusion: measured 0.17 vs 0.001; IG 0.12
    vs 0.07: gradients also pick up the other object's edges)."""
    from lumos.data.image_text import load_image_text_model
    from lumos.multimodal import localisation_table

    data = image_text_dataset(12, split="test", seed=1)
    rows = localisation_table(load_image_text_model(), data, {"integrated_gradients": {"n_steps": 16},
                                                               "occlusion": {"window": 12, "stride": 4}})
    for r in rows:
        assert r["pointing_game"] >= 0.5 > 5 * r["chance"], r
        assert r["mass"] >= (10 if r["method"] == "occlusion" else 1.5) * r["mass_other"], r


def test_image_text_demo_quick(tmp_path):
    from lumos.multimodal._demo import image_text_demo

    files = {}
    threads = torch.get_num_threads()
    lines = image_text_demo(tmp_path, quick=True, files=files)
    assert torch.get_num_threads() == threads  # one thread inside the section, restored after
    assert (tmp_path / "image_text_maps.png").stat().st_size > 10_000
    assert list(files) == [str(tmp_path / "image_text_maps.png")]
    text = "\n".join(lines)
    for name in ("saliency", "integrated_gradients", "gradcam", "crop_similarity"):
        assert name in text


def test_train_demo_command_takes_image_text(tmp_path):
    from lumos.cli import build_parser

    args = build_parser().parse_args(["train-demo", "--image-text", "--epochs", "1", "--out", str(tmp_path)])
    assert args.image_text and not args.text
    args = build_parser().parse_args(["train-demo", "--image-text", "--text"])
    with pytest.raises(ValueError, match="--image-text"):
        args.func(args)


def test_crop_similarity_of_a_predict_function_equals_the_torch_module():
    """Registered for any model: a NumPy predict function gets the same map as the module."""
    tower = _smooth_tower()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = similarity_target(torch.arange(5.0) - 1)

    def predict(a):
        assert isinstance(a, np.ndarray)
        with torch.no_grad():
            return tower(torch.as_tensor(a)).numpy()

    ref = crop_similarity(tower, x, target=t, n_crops=25, input_size=12)
    got = crop_similarity(predict, x.numpy(), target=t, n_crops=25, input_size=12)
    assert np.abs(np.asarray(got.values) - np.asarray(ref.values)).max() <= 1e-13
    assert np.allclose(got.meta["crop_scores"], ref.meta["crop_scores"], atol=1e-13, rtol=0)


def test_crop_similarity_gives_each_crop_its_images_forward_args():
    """Per-sample forward arguments follow the crops of their image, with and without resizing."""

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = _smooth_tower(4)

        def forward(self, x, w):
            return self.tower(x) * w

    m = Scaled()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    w = torch.rand(3, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64) + 0.5
    t = similarity_target(torch.tensor([1.0, -1.0, 0.5, 2.0]))
    for size in (None, 12):
        e = crop_similarity(m, x, target=t, n_crops=20, forward_args=(w,), input_size=size, batch_size=7)
        for i in range(3):
            alone = crop_similarity(m, x[i:i + 1], target=t, n_crops=20, forward_args=(w[i:i + 1],), input_size=size)
            assert np.abs(np.asarray(e.values)[i] - np.asarray(alone.values)[0]).max() <= 1e-13
        other = crop_similarity(m, x, target=t, n_crops=20, forward_args=(w.flip(0),), input_size=size)
        assert not np.allclose(np.asarray(other.values)[0], np.asarray(e.values)[0])
