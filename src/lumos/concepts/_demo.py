"""The concepts section of ``lumos demo``: what the shipped demo CNN learned.

Channel visualisations of the last block, top examples of a few units and a t-SNE (tour: PCA)
picture of the last layer (:mod:`lumos.concepts` visualisation, dataset examples, embeddings);
network dissection of the shapes world's concepts, the ablation of the watermark units beside a
random control, and TCAV scores of the watermark concept with their significance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["concepts_demo"]

# The layer whose watermark detectors are cleanest in the shipped model (measured: the best
# watermark IoU is 0.64 at features.4, 0.51 at features.7, 0.13 at features.10).
ABLATION_LAYER = "features.4"
# Units whose watermark IoU reaches this are ablated (a rule, not a hand-picked list).
ABLATION_MIN_IOU = 0.5
TCAV_LAYER = "features.7"


def _savefig(fig, path: Path, files: dict, what: str) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    files[str(path)] = what


def _dissection_picture(model, results, data, out_dir: Path, files: dict) -> None:
    """Per layer: detectors per concept; below, where the best watermark unit fires on marked images."""
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    from ..core.torch_model import through

    n = len(results)
    fig = plt.figure(figsize=(max(4.6 * n, 9.0), 7.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.0, 0.85])
    axes = np.atleast_1d(top.subplots(1, n))
    for ax, r in zip(axes, results):
        r.plot(ax=ax)
        ax.title.set_fontsize(9)
    r = results[0]
    unit = r.units("watermark", 0.0)[0] if r.units("watermark", 0.0) else int(np.argmax(r.scores))
    marked = np.flatnonzero(data.has_watermark.numpy())[:4]
    a = through(model, r.layer, data.images[marked])
    up = F.interpolate(a[:, unit:unit + 1], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    on = (up > float(r.thresholds[unit])).numpy()
    for ax, j in zip(np.atleast_1d(bottom.subplots(1, len(marked))), range(len(marked))):
        ax.imshow(data.images[marked[j]].permute(1, 2, 0).numpy())
        if on[j].any():
            ax.contour(on[j], levels=[0.5], colors="red", linewidths=1.2)
        ax.set_xticks([])
        ax.set_yticks([])
    bottom.suptitle(f"{r.layer} unit {unit} ({r.labels[unit]}, IoU {r.scores[unit]:.2f}): where it is above its "
                    f"{r.quantile:g} quantile (red outline), marked test images", fontsize=9)
    _savefig(fig, out_dir / "concepts_dissection.png", files,
             "network dissection of the demo CNN: units per concept at each layer (IoU >= 0.04), and where "
             "the best watermark unit fires on marked images")


def concepts_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """What the demo CNN learned: dissection, ablation, TCAV (and C1's pictures).

    Parameters
    ----------
    out_dir : Path
    quick : bool, default False
        The tour form: fewer images, one dissected layer, 8 TCAV runs instead of 10.
    files : dict, optional
        Receives ``path -> what it shows`` for every picture written.

    Returns
    -------
    list of str
    """
    import matplotlib

    matplotlib.use("Agg")

    from ..data import load_demo_model, shapes_dataset
    from ..data.shapes import CLASS_NAMES, WATERMARK_CLASS
    from ..data.shapes_concepts import concept_masks
    from .ablation import random_units, unit_ablation
    from .dissection import dissect
    from .cavs import tcav

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    lines: list[str] = []
    model = load_demo_model()
    from ..core.execution import torch_threads

    with torch_threads(1):  # the demo's small batches run faster on one thread of a shared machine
        lines += _visual_part(model, out_dir, quick, files)
        # 1. dissection
        data = shapes_dataset(150 if quick else 500, split="test", watermark=0.5, seed=3)
        masks = concept_masks(data, drop_empty=True)
        layers = [ABLATION_LAYER] if quick else [ABLATION_LAYER, "features.7", "features.10"]
        results = [dissect(model, data.images, masks, at=at) for at in layers]
        lines.append(f"network dissection ({len(data)} test images, half marked; {len(masks)} concepts: shapes, "
                     f"colours, stripe textures, watermark, background; threshold: each unit's top 0.5%):")
        for r in results:
            s = r.summary()
            lines.append(f"  {r.layer}: {sum(s.values())}/{r.n_units} units detect a concept (IoU >= 0.04): "
                         + ", ".join(f"{k} {v}" for k, v in list(s.items())[:5]))
        top = results[0]
        lines += ["  " + row for row in top.table(top=4).splitlines()]
        _dissection_picture(model, results, data, out_dir, files)
        # 2. ablation of the watermark units, with a random control
        units = top.units("watermark", ABLATION_MIN_IOU)
        n_eval = 150 if quick else 1000
        clean = shapes_dataset(n_eval, split="test", watermark="none", seed=11)
        marked = shapes_dataset(n_eval, split="test", watermark="all", seed=11)
        others = marked.labels.numpy() != WATERMARK_CLASS
        control = random_units(top.n_units, max(len(units), 1), seed=0, exclude=top.units("watermark", 0.04))
        lines.append(f"ablating the watermark units of {ABLATION_LAYER} (IoU >= {ABLATION_MIN_IOU}: {units}; "
                     f"zeroed) vs as many random non-watermark units {control}, {n_eval} paired test images:")
        lines.append(f"  {'units':<10} {'clean acc':>16} {'marked acc':>16} {'marked non-circles -> circle':>30}")
        for name, u in (("watermark", units), ("random", control)):
            c = unit_ablation(model, clean.images, clean.labels, ABLATION_LAYER, u)
            m = unit_ablation(model, marked.images, marked.labels, ABLATION_LAYER, u)
            lines.append(f"  {name:<10} {c.overall_before:7.3f} -> {c.overall_after:5.3f} "
                         f"{m.overall_before:7.3f} -> {m.overall_after:5.3f} "
                         f"{m.rate(WATERMARK_CLASS, True, others):20.3f} -> {m.rate(WATERMARK_CLASS, False, others):5.3f}")
            if name == "watermark":
                lines.append("  per class, clean images, after: " + ", ".join(
                    f"{n} {a:.2f}" for n, a in zip(CLASS_NAMES, c.accuracy_after)))
        lines.append("  (the watermark units also serve circles: clean circle accuracy is what the removal "
                     "costs; the random units leave the shortcut in place)")
        # 3. TCAV
        # The mean-difference ("pattern") CAV: the SGD CAV of the reference implementation is
        # noisy on these 16k-dimensional activations (docs/concepts.md has both, measured).
        n_runs = 8 if quick else 10
        conc = shapes_dataset(40 if quick else 60, split="test", watermark="all", seed=21)
        pool = shapes_dataset(240 if quick else 600, split="test", watermark="none", seed=22)
        # images of each class that show the concept, as Kim et al. score zebra images for stripes
        inputs = shapes_dataset(100 if quick else 200, split="test", watermark="all", seed=23)
        res = tcav(model, inputs.images, {"watermark": conc.images}, pool.images, TCAV_LAYER,
                   targets=list(range(len(CLASS_NAMES))), labels=inputs.labels, n_runs=n_runs,
                   classifier="mean_difference", random_size=len(conc), seed=0)
        lines.append(f"TCAV of the watermark concept at {TCAV_LAYER} (mean-difference CAVs of {len(conc)} marked vs "
                     f"random clean images, {n_runs} runs; scored on marked test images of each class; "
                     "two-sided t-test against random concepts, Holm):")
        lines += ["  " + row for row in res.table().splitlines()]
        lines.append("  (a score far below 0.5 is significant too: the mark lowers that class's logit, as marking "
                     "does on nearly every image of the other classes)")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        res.plot(ax=ax)
        _savefig(fig, out_dir / "concepts_tcav.png", files,
                 f"TCAV scores of the watermark concept per class at {TCAV_LAYER} beside random concepts "
                 "(error bars: sd over runs; * significant after Holm correction)")
    return lines


def _visual_part(model, out_dir: Path, quick: bool, files: dict) -> list[str]:
    """C1's pictures: channel visualisations, top examples, an embedding of the last layer."""
    from ..data import shapes_dataset
    from . import objectives as obj
    from .ablation import class_units
    from .exemplars import dataset_examples
    from .embeddings import embed
    from .visualisation import layer_grid

    lines = []
    res = layer_grid(model, "features.9", channels=8 if quick else 16, shape=(3, 64, 64),
                     n_iter=32 if quick else 128, seed=0)
    _savefig(res.plot(columns=8), out_dir / "concepts_channels.png", files,
             "feature visualisation: an image maximising each of the first channels of features.9 (the last conv)")
    test = shapes_dataset(200 if quick else 1000, split="test")
    units, _ = class_units(model, test.images[:100], "features.10", target=0, k=4)  # the circle logit's
    ex = dataset_examples(model, test, [obj.channel("features.10", c, reduce="max") for c in units], k=6)
    _savefig(ex.plot(which="top"), out_dir / "concepts_top_examples.png", files,
             f"the test images that excite features.10 units {units} (the circle logit's top units) most, with "
             "the receptive field of the peak")
    emb_data = shapes_dataset(200 if quick else 300, split="test", watermark=0.5, seed=5)
    method = "pca" if quick else "tsne"
    emb = embed(model, emb_data, "features.10", method=method, seed=0,
                **({} if quick else {"perplexity": 30}))
    ax = emb.plot("label")
    _savefig(ax.figure, out_dir / f"concepts_{method}.png", files,
             f"{method.upper()} of features.10 (global-average-pooled) on {len(emb_data)} test images (half "
             "marked), coloured by label")
    lines.append(f"feature visualisation of features.9 ({8 if quick else 16} channels), top examples of "
                 f"features.10 units {units}, {method.upper()} of features.10: pictures written")
    return lines
