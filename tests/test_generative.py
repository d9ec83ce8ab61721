"""Generative models of the shapes world and their explanations (issue 20, generative half)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lumos.data.generative import (ShapesVAE, ToyShapeGenerator, condition_vector, SilhouetteRGB,
                                   train_shapes_vae)
from lumos.multimodal.generative import (GeneratorRegion, ResizedClassifier, classifier_saliency,
                                         explain_generator, latent_traversal)

S = 32
RIGHT = np.zeros((S, S))
RIGHT[:, S // 2:] = 1
TOP = np.zeros((S, S))
TOP[:10] = 1
# |z0| > |z1| in every row: the horizontal move dominates the right half by construction
Z = torch.tensor([[1.0, 0.5, 0.8, -0.7], [-0.8, -0.6, 0.3, 1.0]])


@pytest.mark.parametrize("c", [0, 1])
def test_latent_attribution_recovers_the_dimension_that_moves_the_shape(c):
    """Right half of the hand-written generator: dim 0 (horizontal position) gets most of the mass,
    the ignored dims exactly nothing; the top strip (touched only by the size) goes to dim 1."""
    g = ToyShapeGenerator()
    e = explain_generator(g, Z, c, masks=RIGHT, wrt="latent", n_steps=64)
    assert e.feature_names == ["z0", "z1", "z2", "z3"]
    v = np.abs(np.asarray(e.values))
    share = v / v.sum(1, keepdims=True)
    assert np.all(share[:, 0] > 0.7), share  # measured 0.74 and 0.85-0.87
    assert np.all(v[:, 2:] < 1e-7)
    assert np.all(np.sign(np.asarray(e.values)[:, 0]) == np.sign(Z[:, 0].numpy()))  # right: more mass
    e = explain_generator(g, Z, c, masks=TOP, wrt="latent", n_steps=64)
    v = np.abs(np.asarray(e.values))
    assert np.all(v[:, 1] / v.sum(1) > 0.9)  # measured 0.92-1.0
    assert np.all(v[:, 2:] < 1e-7)


def test_integrated_gradients_on_the_region_is_complete():
    g = ToyShapeGenerator()
    c = torch.eye(2)
    e = explain_generator(g, Z, [0, 1], masks=RIGHT, wrt="both", n_steps=128)
    assert e.feature_names == ["z0", "z1", "z2", "z3", "c:disc", "c:square"]
    region = GeneratorRegion(g, RIGHT, wrt="both")
    x = torch.cat([Z, c], 1)
    with torch.no_grad():
        delta = (region(x) - region(torch.zeros_like(x))).numpy()
    np.testing.assert_allclose(np.asarray(e.values).sum(1), delta, rtol=1e-3)  # measured 3e-4 (n_steps=128)
    assert np.all(np.abs(delta) > 0.05)  # not trivially zero


def test_region_matches_a_direct_computation_and_score_callable():
    g = ToyShapeGenerator()
    region = GeneratorRegion(g, RIGHT, condition=1)
    with torch.no_grad():
        img = g(Z, torch.tensor([[0.0, 1.0]] * 2))
        np.testing.assert_allclose(region(Z).numpy(), img[:, 0, :, 16:].mean((1, 2)).numpy(), rtol=1e-6)
        summed = GeneratorRegion(g, RIGHT, condition=1, reduce="sum")(Z)
        np.testing.assert_allclose(summed.numpy(), img[:, 0, :, 16:].sum((1, 2)).numpy(), rtol=1e-5)
        by_score = GeneratorRegion(g, score=lambda im: im[:, 0, :, 16:].mean((1, 2)), condition=1)(Z)
        np.testing.assert_allclose(by_score.numpy(), region(Z).numpy(), rtol=1e-6)
    # the condition alone, latent fixed
    e = explain_generator(g, Z[:1].repeat(2, 1), [0, 1], masks=RIGHT, wrt="condition", n_steps=32)
    assert e.feature_names == ["c:disc", "c:square"]


def test_explanation_of_a_sample_does_not_depend_on_the_batch():
    g = ToyShapeGenerator()
    both = explain_generator(g, Z, [0, 1], masks=RIGHT, n_steps=32)
    one = explain_generator(g, Z[1:], [1], masks=RIGHT, n_steps=32)
    np.testing.assert_allclose(np.asarray(both.values)[1], np.asarray(one.values)[0], atol=1e-6)


def test_clear_errors():
    g = ToyShapeGenerator()
    with pytest.raises(ValueError, match="exactly one of masks"):
        GeneratorRegion(g, RIGHT, score=lambda im: im.sum((1, 2, 3)), condition=0)
    with pytest.raises(ValueError, match="wrt"):
        GeneratorRegion(g, RIGHT, condition=0, wrt="latents")
    with pytest.raises(ValueError, match="condition"):
        GeneratorRegion(g, RIGHT)
    with pytest.raises(ValueError, match="no pixel"):
        GeneratorRegion(g, np.zeros((S, S)), condition=0)
    with pytest.raises(ValueError, match="masks has shape"):
        GeneratorRegion(g, np.ones((8, 8)), condition=0)(Z)
    with pytest.raises(ValueError, match="z must have shape"):
        explain_generator(g, Z[:, :3], 0, masks=RIGHT)
    with pytest.raises(ValueError, match="same condition"):
        explain_generator(g, Z, [0, 1], masks=RIGHT, wrt="latent")
    with pytest.raises(ValueError, match="c has 3 class indices"):
        condition_vector([0, 1, 1], 2, 2)
    with pytest.raises(ValueError, match=r"c: class indices must lie in \[0, 2\)"):
        condition_vector([0, 5], 2, 2)


def test_traversal_is_deterministic_and_moves_the_shape():
    g = ToyShapeGenerator()
    a = latent_traversal(g, 0, seed=3)
    b = latent_traversal(g, 0, seed=3)
    c = latent_traversal(g, 0, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (4, 7, 1, S, S) and a.condition_name == "disc"
    # dim 0: the centre of mass moves right monotonically; dims 2, 3: nothing changes
    cols = np.arange(S) + 0.5
    com = [(im[0].sum(0) * cols).sum() / im[0].sum() for im in a.images[0]]
    assert np.all(np.diff(com) > 0.5)
    np.testing.assert_allclose(a.images[2], a.images[2][:1].repeat(7, 0), atol=1e-6)
    # dim 1: the area grows
    assert np.all(np.diff(a.images[1].sum((1, 2, 3))) > 0)
    z = latent_traversal(g, 1, dims=[1], z=np.zeros(4), n_values=3, span=1.0)
    assert z.seed is None and z.images.shape == (1, 3, 1, S, S)
    np.testing.assert_array_equal(z.values, [-1.0, 0.0, 1.0])


def test_traversal_plot_labels():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = latent_traversal(ToyShapeGenerator(), 1, dims=[0, 1], n_values=5).plot()
    try:
        labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
        assert labels == ["z0", "z1"]
        assert "square" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_shipped_vae_loads_safely_and_its_samples_are_classified_as_their_condition():
    from lumos.data import load_demo_model
    from lumos.data.generative import INFO_PATH, WEIGHTS_PATH, load_shapes_vae

    assert WEIGHTS_PATH.stat().st_size < 2_000_000 and INFO_PATH.exists()
    torch.load(WEIGHTS_PATH, weights_only=True)  # a plain state dict
    vae, cnn = load_shapes_vae(), load_demo_model()
    clf = ResizedClassifier(cnn, 64, transform=SilhouetteRGB())
    with torch.no_grad():
        rates = [(clf(vae.sample(c, seed=11, n=100)).argmax(1) == c).float().mean().item() for c in range(4)]
    # measured (seed 11, 100 samples each): circle 0.95, square 0.99, triangle 1.00, cross 0.91 (the
    # first decoder, without the pose head: 0.60, 0.60, 0.99, 0.03; chance 0.25)
    assert rates[0] >= 0.9 and rates[1] >= 0.95 and rates[2] >= 0.95 and rates[3] >= 0.85, rates
    assert np.mean(rates) >= 0.93, rates


def test_explanations_leave_the_vae_as_found():
    from lumos.data.generative import load_shapes_vae

    vae = load_shapes_vae()
    vae.train()
    before = _state(vae)
    z = torch.randn(2, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    mask = np.zeros((S, S))
    mask[8:24, 8:24] = 1
    e = explain_generator(vae, z, 2, masks=mask, wrt="latent", n_steps=256)
    region = GeneratorRegion(vae, mask, condition=2).eval()
    with torch.no_grad():
        delta = (region(z) - region(torch.zeros_like(z))).numpy()
    vae.train()
    np.testing.assert_allclose(np.asarray(e.values).sum(1), delta, rtol=5e-3)  # ReLU kinks: measured up to 0.26%
    latent_traversal(vae, 0, dims=[0], n_values=3)
    assert vae.training
    assert all(p.grad is None and p.requires_grad for p in vae.parameters())
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k])


def test_classifier_saliency_on_generated_images():
    from lumos.data import load_demo_model
    from lumos.data.generative import load_shapes_vae

    vae, cnn = load_shapes_vae(), load_demo_model()
    images = vae.sample([0, 1], seed=2)
    e = classifier_saliency(cnn, images, "integrated_gradients", target=[0, 1], n_steps=16,
                            transform=SilhouetteRGB())
    v = np.asarray(e.values)
    assert v.shape == (2, 1, S, S) and np.isfinite(v).all()
    clf = ResizedClassifier(cnn, transform=SilhouetteRGB())
    with torch.no_grad():
        out = clf(images)
        gap = out[[0, 1], [0, 1]] - clf(torch.zeros_like(images))[[0, 1], [0, 1]]
    np.testing.assert_allclose(v.reshape(2, -1).sum(1), gap.numpy(), rtol=0.1, atol=0.1)
    with pytest.raises(TypeError, match="classifier"):
        ResizedClassifier(lambda x: x)


def test_training_is_reproducible_and_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    m1, r1 = train_shapes_vae(out=tmp_path, steps=3, n_train=32, batch_size=16, progress=False)
    after = torch.rand(3)
    m2, _ = train_shapes_vae(steps=3, n_train=32, batch_size=16, progress=False)
    m3, _ = train_shapes_vae(seed=1, steps=3, n_train=32, batch_size=16, progress=False)
    torch.testing.assert_close(after, expected)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    assert (tmp_path / "shapes_vae.pt").exists() and r1["steps"] == 3
    loaded = ShapesVAE()
    loaded.load_state_dict(torch.load(tmp_path / "shapes_vae.pt", weights_only=True))
    with pytest.raises(ValueError, match="steps"):
        train_shapes_vae(steps=0)


def test_train_demo_command_takes_vae():
    from lumos.cli import build_parser

    args = build_parser().parse_args(["train-demo", "--vae", "--vae-steps", "5"])
    assert args.vae and args.vae_steps == 5 and not args.text
    args = build_parser().parse_args(["train-demo", "--vae", "--image-text"])
    with pytest.raises(ValueError, match="--vae"):
        args.func(args)


# ---------------------------------------------------------------- recognition and the demo section
def test_recognition_counts_what_the_classifier_calls_each_sample_and_ignores_the_batch_size():
    from lumos.data import load_demo_model
    from lumos.data.generative import load_shapes_vae
    from lumos.multimodal.generative import recognition

    vae, cnn = load_shapes_vae(), load_demo_model()
    vae.train()
    before = _state(vae)
    r = recognition(vae, cnn, n_samples=40, seed=5, transform=SilhouetteRGB())
    r7 = recognition(vae, cnn, n_samples=40, seed=5, transform=SilhouetteRGB(), batch_size=7)
    assert vae.training and all(torch.equal(v, before[k]) for k, v in vae.state_dict().items())
    np.testing.assert_array_equal(r.confusion, r7.confusion)
    # the naive loop: the VAE's own prior samples (same draw), read by the classifier one class at a time
    clf = ResizedClassifier(cnn, 64, transform=SilhouetteRGB()).eval()
    vae.eval()
    with torch.no_grad():
        preds = [clf(vae.sample(c, seed=5, n=40)).argmax(1).numpy() for c in range(4)]
    for c in range(4):
        np.testing.assert_array_equal(r.confusion[c], np.bincount(preds[c], minlength=4))
        assert r.rates[vae.class_names[c]] == pytest.approx((preds[c] == c).mean())
    assert r.confusion.sum() == 160
    top = r.called(3)
    assert top[0][1] == max(s for _, s in top) and abs(sum(s for _, s in top) - 1) < 1e-9
    with pytest.raises(ValueError, match="n_samples"):
        recognition(vae, cnn, n_samples=0)


def test_traversal_effects_read_the_toy_generators_known_map():
    """z0 moves the toy shape s/4 = 8 px right per unit, z1 grows it, z2/z3 do nothing; the right
    half changes along z0 most, the top half (touched only by the size) along z1."""
    from lumos.multimodal._demo_generative import region_masks, traversal_effects

    t = latent_traversal(ToyShapeGenerator(), 0, z=np.zeros(4), n_values=5, span=1.0)
    fx = traversal_effects(t.images, t.values, region_masks())
    np.testing.assert_allclose(fx["right"][0], 8.0, atol=0.05)
    np.testing.assert_allclose(fx["down"][:2], 0.0, atol=1e-6)
    assert fx["log_area"][1] > 0.3 and abs(fx["log_area"][0]) < 0.02
    np.testing.assert_allclose(fx["right"][2:], 0.0, atol=1e-6)
    np.testing.assert_allclose(fx["right half"][2:], 0.0, atol=1e-7)
    assert np.argmax(fx["right half"]) == 0 and np.argmax(fx["top half"]) == 1


def test_generator_demo_tour_writes_its_pictures_and_reports_measured_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    from lumos.data import load_demo_model
    from lumos.data.generative import load_shapes_vae
    from lumos.multimodal._demo_generative import generator_demo
    from lumos.multimodal.generative import recognition

    files = {}
    threads = torch.get_num_threads()
    lines = generator_demo(tmp_path, quick=True, files=files)
    assert torch.get_num_threads() == threads
    from lumos.data.diffusion import WEIGHTS_PATH as DDPM_WEIGHTS

    names = ["generative_traversal.png", "generative_regions.png", "generative_saliency.png"]
    names += ["generative_guidance.png"] if DDPM_WEIGHTS.exists() else []
    assert sorted(files) == sorted(str(tmp_path / n) for n in names)
    for n in names:
        assert (tmp_path / n).stat().st_size > 10_000
    text = "\n".join(lines)
    expected = recognition(load_shapes_vae(), load_demo_model(), n_samples=50, seed=1, transform=SilhouetteRGB())
    assert expected.line() in text
    assert "right half: IG ranks z" in text and "top half: IG ranks z" in text
    assert "classifier saliency on 4 generated images" in text
    assert ("diffusion guidance towards a cross" in text) == DDPM_WEIGHTS.exists()


def test_multimodal_exports_the_generative_api_and_no_name_shadows_a_submodule():
    import importlib
    import pkgutil
    import types

    import lumos.multimodal as mm
    from lumos.multimodal import generative

    for name in ("GeneratorRegion", "explain_generator", "latent_traversal", "LatentTraversal", "ResizedClassifier",
                 "classifier_saliency", "recognition", "Recognition"):
        assert name in mm.__all__ and getattr(mm, name) is getattr(generative, name)
    from lumos.multimodal import diffusion

    for name in diffusion.__all__:
        assert name in mm.__all__ and getattr(mm, name) is getattr(diffusion, name)
    assert all(hasattr(mm, name) for name in mm.__all__)
    subs = [m.name for m in pkgutil.iter_modules(mm.__path__)]
    assert {"generative", "diffusion", "crops"} <= set(subs)
    for sub in subs:
        module = importlib.import_module(f"lumos.multimodal.{sub}")
        assert sub not in mm.__all__, f"lumos.multimodal.{sub} is both a submodule and an exported name"
        assert getattr(mm, sub) is module, f"lumos.multimodal.{sub} is shadowed by {getattr(mm, sub)!r}"
        assert isinstance(module, types.ModuleType)
    # `import a.b as m` reads the attribute of the package: it must be the module
    import lumos.multimodal.crops as crops_module
    assert isinstance(crops_module, types.ModuleType) and crops_module.crop_similarity is mm.crop_similarity


def test_the_vae_decoder_warps_its_template_by_the_pose_exactly():
    """The pose head's affine map on a closed form: identity at initialisation (the output is the
    template), a quarter turn is np.rot90 of it, a shift of 2k/32 moves it k pixels right."""
    from lumos.core.execution import seeded_global_rng

    with seeded_global_rng(3):
        vae = ShapesVAE()
    z = torch.randn(2, vae.latent_dim, generator=torch.Generator().manual_seed(0))
    c = condition_vector([1, 3], 2)
    with torch.no_grad():
        template = vae.dec(vae.dec_fc(torch.cat([z, c], 1)).reshape(2, 64, 4, 4)).numpy()
        np.testing.assert_allclose(vae.decode_logits(z, c).numpy(), template, atol=1e-5)
        vae.pose[2].bias.copy_(torch.tensor([0.0, np.pi / 2, 0.0, 0.0]))
        turned = vae.decode_logits(z, c).numpy()
        np.testing.assert_allclose(turned, np.rot90(template, -1, axes=(2, 3)), atol=1e-4)
        vae.pose[2].bias.copy_(torch.tensor([0.0, 0.0, 2 * 5 / 32, 0.0]))
        shifted = vae.decode_logits(z, c).numpy()
        np.testing.assert_allclose(shifted[..., 5:], template[..., :-5], atol=1e-4)
        vae.pose[2].bias.copy_(torch.tensor([np.log(2.0), 0.0, 0.0, 0.0]))  # twice as large about the centre
        big = vae.decode_logits(z, c).numpy()
        # output pixel j reads the template at j / 2 + 7.75 (pixel centres, align_corners=False), bilinearly
        from scipy.ndimage import map_coordinates

        at = np.arange(32) / 2 + 7.75
        rows, cols = np.meshgrid(at, at, indexing="ij")
        expected = np.stack([map_coordinates(t[0].astype(np.float64), [rows, cols], order=1) for t in template])
        np.testing.assert_allclose(big[:, 0], expected, atol=1e-4)
        np.testing.assert_allclose(torch.sigmoid(torch.as_tensor(big)).numpy(), vae.decode(z, c).numpy(), atol=1e-6)
