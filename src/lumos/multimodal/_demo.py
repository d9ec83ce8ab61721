"""The image–text section of ``lumos demo``: which pixels make an image match a caption?

The shipped dual encoder of the image–text world (:mod:`lumos.data.image_text`) explained through
the cosine similarity of its image embedding with a phrase naming one object ("red circle"): the
maps of gradient, IG, occlusion, RISE, Grad-CAM and crop similarity for a few images, and the
localisation of every method (pointing game, relevance mass on the named object).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["image_text_demo"]


def image_text_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Similarity maps for a few captions and the localisation scores per method.

    Parameters
    ----------
    out_dir : Path
        Where the picture goes.
    quick : bool, default False
        The tour: 6 images and fewer samples per method (a few seconds); full: 24 images.
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
    import matplotlib.pyplot as plt
    import numpy as np

    from ..core.explanation import Explanation
    from ..data.image_text import image_text_model_info, image_text_dataset, load_image_text_model
    from ..display.heatmap import plot_grid
    from .localisation import DEFAULT_METHODS, localisation_table, query_phrases

    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_image_text_model()
    info = image_text_model_info()
    n = 6 if quick else 24
    data = image_text_dataset(n, split="test", seed=1)
    methods = dict(DEFAULT_METHODS)
    if quick:  # the tour: the fast methods, a few samples for the sampling ones
        methods = {"saliency": {}, "integrated_gradients": {"n_steps": 8}, "gradcam": DEFAULT_METHODS["gradcam"],
                   "crop_similarity": {"n_crops": 100, "sizes": (0.25, 0.6)}}
    rows = localisation_table(model, data, methods, quick=quick)
    queries = query_phrases(data)
    shown = list(range(min(4, n)))

    labels = [f"“{queries[i]}”" for i in shown]
    path = out_dir / "image_text_maps.png"

    cols = {}
    for r in rows:
        ex = [r["explanations"][i] for i in shown]
        cols[r["method"]] = Explanation(values=np.concatenate([np.asarray(e.values) for e in ex]),
                                        inputs=data.images[:len(shown)].numpy(), method=r["method"])
    fig = plot_grid(cols, images=data.images[:len(shown)].numpy(), row_labels=labels, path=path,
                    colorbar="relative")
    plt.close(fig)
    files[str(path)] = ("image–text world: which pixels make each image match the phrase on the left "
                        "(cosine similarity of the shipped dual encoder's embeddings), one column per method")
    lines = [f"image–text dual encoder: retrieval top-1 {info['image_to_text_top1']:.2f} (image→text, "
             f"{info['n_test']} test captions), phrase accuracy {info['phrase_accuracy']:.2f}, "
             f"binding accuracy {info['binding_accuracy']:.2f} (bag-of-words text tower)",
             f"localisation of the named object on {n} images (object area {rows[0]['chance']:.1%} of the image):",
             f"  {'method':<22} {'pointing':>8} {'quadrant':>8} {'mass':>6} {'other':>6} {'seconds':>8}"]
    for r in rows:
        lines.append(f"  {r['method']:<22} {r['pointing_game']:>8.2f} {r['quadrant']:>8.2f} {r['mass']:>6.2f} "
                     f"{r['mass_other']:>6.2f} {r['seconds']:>8.2f}")
    lines.append(f"maps: {path}")
    return lines
