"""The generator section of ``lumos demo``: why did the shipped VAE draw this?

The conditional VAE of the shapes world's silhouettes (:mod:`lumos.data.generative`) explained with
:mod:`lumos.multimodal.generative`:

- how often the demo classifier recognises its samples of each class (and what it calls the others);
- a latent traversal grid, and per latent dimension how far its traversal moves the shape
  (centre of mass, horizontally and vertically) and how much it changes its area;
- region attributions: integrated gradients of "the mass in the right half" and "the mass in the
  top half" of a generated image over the latent dimensions and the class, as bar charts for a few
  samples, and the finding over more samples: the dimension the attribution ranks first for a
  region against the dimension whose traversal moves the shape into that region most;
- the demo classifier's saliency on generated images (IG and the gradient), with the share of the
  positive IG on the generated shape;
- the shipped DDPM's classifier-free guidance (:mod:`lumos.multimodal.diffusion`) at three
  timesteps, attributed to the noisy image's pixels (skipped while its weights are missing).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["generator_demo", "traversal_effects", "region_masks"]

SIZE = 32  # the VAE's image side
TRAVERSAL_CLASS = 3  # the cross: the class the VAE used to draw worst


def region_masks(size: int = SIZE) -> dict[str, np.ndarray]:
    """The two regions the section explains: ``{"right half": (size, size), "top half": ...}``."""
    right = np.zeros((size, size))
    right[:, size // 2:] = 1
    top = np.zeros((size, size))
    top[:size // 2] = 1
    return {"right half": right, "top half": top}


def traversal_effects(images: np.ndarray, values: np.ndarray, masks: dict | None = None,
                      min_mass: float = 0.1) -> dict[str, np.ndarray]:
    """Per traversed dimension, what moving it does to the shape.

    Parameters
    ----------
    images : ndarray, shape (n_dims, n_values, 1, H, W)
        A :class:`~lumos.multimodal.generative.LatentTraversal`'s images (intensities >= 0).
    values : ndarray, shape (n_values,)
    masks : dict of name -> (H, W) array, optional
        Regions whose mean intensity is followed along each traversal.
    min_mass : float, default 0.1
        The slopes use the images of a row holding at least this fraction of the row's largest
        total intensity (a shape that fades out has no position).

    Returns
    -------
    dict
        ``"right"``, ``"down"``: least-squares slopes of the centre of mass (pixels per unit of
        the dimension; NaN when fewer than two images qualify); ``"log_area"``: slope of the log
        of the total intensity; for each region ``name`` of ``masks``: the total variation of the
        region's mean along the traversal (how much the dimension changes it, in any direction).
        Each of shape ``(n_dims,)``.
    """
    im = np.asarray(images, dtype=np.float64)[:, :, 0]
    v = np.asarray(values, dtype=np.float64)
    mass = im.sum((2, 3))
    rows = np.arange(im.shape[2]) + 0.5
    cols = np.arange(im.shape[3]) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (im.sum(2) * cols).sum(2) / mass
        cy = (im.sum(3) * rows).sum(2) / mass
    out = {"right": np.full(len(im), np.nan), "down": np.full(len(im), np.nan), "log_area": np.full(len(im), np.nan)}
    for d in range(len(im)):
        ok = mass[d] >= min_mass * mass[d].max()
        if ok.sum() >= 2 and mass[d].max() > 0:
            out["right"][d] = np.polyfit(v[ok], cx[d, ok], 1)[0]
            out["down"][d] = np.polyfit(v[ok], cy[d, ok], 1)[0]
            out["log_area"][d] = np.polyfit(v[ok], np.log(mass[d, ok]), 1)[0]
    for name, m in (masks or {}).items():
        m = np.asarray(m, dtype=np.float64)
        region = (im * m).sum((2, 3)) / m.sum()
        out[name] = np.abs(np.diff(region, axis=1)).sum(1)
    return out


def generator_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Recognition of generated samples, traversals, region attributions and classifier saliency.

    Parameters
    ----------
    out_dir : Path
        Receives ``generative_traversal.png``, ``generative_regions.png`` and
        ``generative_saliency.png``.
    quick : bool, default False
        The tour: 50 samples per class for the recognition rates, 8 per class for the attribution
        finding, 16 IG steps (a few seconds on one thread); full: 500 samples per class (the
        docs' measurement, seed 1), 32 per class, 64 steps.
    files : dict or None
        ``files[path] = "what it shows"`` for every picture written.

    Returns
    -------
    list of str
        The printed lines.
    """
    from ..core.execution import torch_threads

    with torch_threads(1):  # a tiny model on shared cores: one thread is faster and steadier
        return _run(Path(out_dir), quick, {} if files is None else files)


def _run(out_dir: Path, quick: bool, files: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes files
    import torch

    from ..data import load_demo_model
    from ..data.generative import SilhouetteRGB, load_shapes_vae, shapes_vae_info
    from .generative import latent_traversal, recognition

    out_dir.mkdir(parents=True, exist_ok=True)
    vae, cnn = load_shapes_vae(), load_demo_model()
    info = shapes_vae_info()
    names = list(vae.class_names)
    n_rec, n_find, n_steps = (50, 8, 16) if quick else (500, 32, 64)

    rec = recognition(vae, cnn, n_samples=n_rec, seed=1, transform=SilhouetteRGB())
    worst = int(np.argmin(list(rec.rates.values())))
    called = ", ".join(f"{n} {s:.0%}" for n, s in rec.called(worst) if n != names[worst]) or "nothing else"
    lines = [f"conditional VAE of the silhouettes ({vae.latent_dim} latent dimensions, "
             f"{sum(p.numel() for p in vae.parameters()) / 1e3:.0f} k parameters, {info['steps']} training steps)",
             f"samples recognised as their class by the demo classifier ({n_rec} per class, seed 1; chance 25%):",
             f"  {rec.line()}",
             f"  the worst, {names[worst]}, is otherwise called: {called}"]

    # traversals of every class: what each latent dimension does to the shape and to each region
    regions = region_masks()
    travs = [latent_traversal(vae, c, seed=0) for c in range(len(names))]
    effects = [traversal_effects(t.images, t.values, regions) for t in travs]
    fx = {key: np.nanmean([e[key] for e in effects], 0) for key in effects[0]}
    path = out_dir / "generative_traversal.png"
    _save(travs[TRAVERSAL_CLASS].plot(title=f"latent traversal of the VAE, condition "
                                             f"{names[TRAVERSAL_CLASS]} (others held at a seeded draw)"), path, quick)
    files[str(path)] = (f"latent traversal of the shipped VAE for a {names[TRAVERSAL_CLASS]}: one row per latent "
                        f"dimension moved from {travs[0].values[0]:+.1f} to {travs[0].values[-1]:+.1f}")
    lines.append(f"latent traversals ({travs[0].values[0]:+.1f} to {travs[0].values[-1]:+.1f}, seed 0, mean over the "
                 f"{len(names)} classes): per unit of each dimension, the shape's move and its area's change")
    for d0 in range(0, vae.latent_dim, 2):
        lines.append("  " + "; ".join(f"z{d}: {fx['right'][d]:+5.1f} px right, {fx['down'][d]:+5.1f} px down, "
                                      f"area x{np.exp(fx['log_area'][d]):.2f}"
                                      for d in range(d0, min(d0 + 2, vae.latent_dim))))

    lines += _regions(vae, names, out_dir, files, n_find, n_steps, fx, regions, quick)
    # the classifier's saliency on generated images
    lines += _saliency(vae, cnn, names, out_dir, files, n_steps, quick)
    lines += _guidance(names, out_dir, files, quick)
    return lines


def _save(fig, path: Path, quick: bool = False) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=80 if quick else 100)  # the tour: smaller files, a faster save
    plt.close(fig)


def _regions(vae, names, out_dir, files, n_find, n_steps, fx, regions, quick) -> list[str]:
    """IG of the right/top half over [z, c] for a few drawn samples (bars) and over more (finding)."""
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from ..display._common import ensure_layout
    from ..display.shap_plots import BarDisplay
    from .generative import explain_generator

    k, d = len(names), vae.latent_dim
    z = torch.randn(n_find * k, d, generator=torch.Generator().manual_seed(2))
    c = np.repeat(np.arange(k), n_find)
    expl = {r: explain_generator(vae, z, c, masks=m, wrt="both", n_steps=n_steps) for r, m in regions.items()}
    lines = [f"region attributions: integrated gradients of the mass in a region of the generated image over "
             f"[z, class] ({n_find * k} samples, baseline z = 0 and no class):"]
    for r, e in expl.items():
        v = np.abs(np.asarray(e.values))
        share = v.sum(0) / v.sum()
        by_ig = [int(j) for j in np.argsort(-share[:d], kind="stable")[:3]]
        by_trav = [int(j) for j in np.argsort(-fx[r], kind="stable")[:3]]
        gap = float(np.nanmax(np.abs(np.asarray(e.meta.get("completeness_gap", [np.nan]), dtype=float))))
        verdict = "the same first dimension" if by_ig[0] == by_trav[0] else "a different first dimension"
        lines.append(f"  {r}: IG ranks {', '.join(f'z{j} ({share[j]:.0%})' for j in by_ig)} (the class "
                     f"{share[d:].sum():.0%}); the traversals rank {', '.join(f'z{j}' for j in by_trav)} by how much "
                     f"they change the region: {verdict}; completeness gap <= {gap:.1e}")

    # the picture: one sample per class (the tour: the first and the last class), the region beside its bars
    show = [i * n_find for i in ((0, k - 1) if quick else range(k))]
    with torch.no_grad():
        images = vae.decode(z[show], c[show]).numpy()
    fig, axes = plt.subplots(len(show), 4, figsize=(11, 2.3 * len(show)),
                             gridspec_kw={"width_ratios": [1, 2.2, 1, 2.2]}, squeeze=False)
    for row, i in enumerate(show):
        for col, (r, e) in enumerate(expl.items()):
            ax = axes[row, 2 * col]
            ax.imshow(images[row, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            y0, x0 = (0, SIZE // 2) if r == "right half" else (0, 0)
            h, w = (SIZE, SIZE // 2) if r == "right half" else (SIZE // 2, SIZE)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, ec="tab:orange", lw=2))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{names[c[i]]}: {r}", fontsize=8)
            BarDisplay.from_explanation(e, index=i, max_display=d + k,
                                        title=f"IG of the {r}'s mass").plot(ax=axes[row, 2 * col + 1])
    fig.suptitle("which latent dimensions and which class put mass into the outlined region "
                 "(integrated gradients; bars labelled with the sample's value)", fontsize=9)
    ensure_layout(fig)
    path = out_dir / "generative_regions.png"
    _save(fig, path, quick)
    files[str(path)] = ("region attributions of generated images: IG of the mass in the right half and in the top "
                        f"half over the latent dimensions and the class, for {len(show)} samples of different classes")
    return lines


def _saliency(vae, cnn, names, out_dir, files, n_steps, quick) -> list[str]:
    """Which generated pixels make the demo classifier name the sample's class."""
    import torch

    from ..core.registry import explain
    from ..data.generative import SilhouetteRGB
    from ..display.heatmap import plot_grid
    from .generative import ResizedClassifier

    k = len(names)
    per = 1 if quick else 2
    classes = np.repeat(np.arange(k), per)
    images = torch.cat([vae.sample(cls, seed=3, n=per) for cls in range(k)])
    clf = ResizedClassifier(cnn, 64, transform=SilhouetteRGB())
    target = torch.as_tensor(classes)
    maps = {"integrated_gradients": explain(clf, images, "integrated_gradients", target=target, n_steps=n_steps),
            "saliency": explain(clf, images, "saliency", target=target)}
    with torch.no_grad():
        prob = torch.softmax(clf(images), 1)
    pred = prob.argmax(1).numpy()
    labels = [f"{names[t]}\ncalled {names[p]} ({prob[i, p]:.0%})" for i, (t, p) in enumerate(zip(classes, pred))]
    path = out_dir / "generative_saliency.png"
    _save(plot_grid(maps, images=images.numpy(), row_labels=labels, colorbar="relative"), path, quick)
    files[str(path)] = ("the demo classifier's saliency on VAE samples: which generated pixels make it name the "
                        "sample's class (IG and the gradient; rows: the condition and what the classifier calls it)")
    ig = np.asarray(maps["integrated_gradients"].values)[:, 0]
    shape = images.numpy()[:, 0] > 0.5
    pos = np.clip(ig, 0, None)
    on = [float(p[s].sum() / p.sum()) if p.sum() > 0 else float("nan") for p, s in zip(pos, shape)]
    return [f"classifier saliency on {len(images)} generated images (IG towards the sample's class, "
            f"{n_steps} steps): {np.nanmean(on):.0%} of the positive attribution lies on the generated shape "
            f"({shape.mean():.0%} of the pixels); the classifier names {int((pred == classes).sum())} of "
            f"{len(images)} by their class"]


GUIDANCE_CLASS = 3  # the cross, beside the VAE's crosses
GUIDANCE_STEPS = (80, 50, 20)


def _guidance(names, out_dir, files, quick) -> list[str]:
    """The shipped DDPM's classifier-free guidance at three timesteps, attributed to the noisy image."""
    import torch

    from ..data.diffusion import load_shapes_ddpm, to_unit
    from .diffusion import explain_guidance

    try:
        model = load_shapes_ddpm()
    except FileNotFoundError as err:
        return [f"diffusion guidance: skipped, {err}"]
    n_steps = 8 if quick else 32
    g = explain_guidance(model, [GUIDANCE_CLASS], seed=0, timesteps=GUIDANCE_STEPS, method="integrated_gradients",
                         n_steps=n_steps, w=2.0)
    path = out_dir / "generative_guidance.png"
    _save(g.plot(), path, quick)
    files[str(path)] = (f"the shipped DDPM's classifier-free guidance towards a {names[GUIDANCE_CLASS]} at timesteps "
                        f"{', '.join(map(str, g.timesteps))}: noisy image, predicted clean image, the guidance's "
                        "change to it, and the IG of that change over the noisy image's pixels")
    shape = (to_unit(torch.as_tensor(g.images[0])).numpy() > 0.5).any(0)
    parts = []
    for t, e in zip(g.timesteps, g.explanations):
        pos = np.clip(np.asarray(e.values)[0].sum(0), 0, None)
        share = float(pos[shape].sum() / pos.sum()) if pos.sum() > 0 else float("nan")
        gap = float(np.abs(np.asarray(e.meta.get("completeness_gap", [np.nan]), dtype=float)).max())
        parts.append(f"t={t}: push {float(g.region[g.timesteps.index(t), 0]):+.3f}, {share:.0%} of the positive IG "
                     f"on the final shape (gap {gap:.0e})")
    return [f"diffusion guidance towards a {names[GUIDANCE_CLASS]} (shipped DDPM, w = {g.w:g}, IG {n_steps} steps "
            f"from the empty canvas noised to t; the final shape covers {shape.mean():.0%} of the image):",
            "  " + "; ".join(parts)]
