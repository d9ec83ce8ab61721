"""The metrics section of ``lumos demo``: the image methods on the shipped demo model, ranked by
faithfulness, localisation on the known evidence, the randomisation sanity check and sparseness."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["compare_demo"]

DEMO_METHODS = ["saliency", "integrated_gradients", "gradcam", "guided_backprop", "random"]


def compare_demo(out_dir: str | Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Compare a few image methods on demo test images; returns the summary lines.

    Writes ``metrics_table.txt``, ``metrics.json``, ``metrics_curves.png`` and
    ``metrics_randomisation.png`` into ``out_dir``. Beside the table, a line says where the random
    baseline scores better than a method: on that metric the method is no better than chance here.

    Parameters
    ----------
    out_dir : Path
    quick : bool, default False
        The tour form: fewer images and integration steps.
    files : dict, optional
        Receives ``path -> what it shows`` for every file written.
    """
    import json

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..data import load_demo_model, shapes_dataset
    from .comparison import compare

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    n = 4 if quick else 6
    model = load_demo_model()
    data = shapes_dataset(n, split="test", seed=7)
    n_steps = 8
    comp = compare(
        model, data.images, DEMO_METHODS,
        ["deletion", "insertion", "randomisation", "relevance_mass_accuracy", "pointing_game", "sparseness"],
        target="predicted", masks=data.masks.numpy(),
        method_params={"integrated_gradients": {"n_steps": 8 if quick else 16}},
        metric_params={"deletion": {"n_steps": n_steps}, "insertion": {"n_steps": n_steps}},
    )
    lines = [f"  {n} demo test images, the predicted class explained", ""]
    lines += ["  " + line for line in comp.table()]
    lines += ["  " + line for line in chance_notes(comp)]
    written = {
        out / "metrics_table.txt": "the ranking table of the metrics section (methods x metrics, mean ± std, rank)",
        out / "metrics.json": "the same comparison as JSON: every score, rank and timing",
    }
    (out / "metrics_table.txt").write_text("\n".join(comp.table()) + "\n")
    (out / "metrics.json").write_text(json.dumps(comp.to_dict(), indent=1))
    fig = comp.plot_curves(out / "metrics_curves.png")
    if fig is not None:
        plt.close(fig)
        written[out / "metrics_curves.png"] = ("deletion and insertion curves per method: the class score as "
                                               "the most relevant pixels are blurred away / put back")
    fig = comp.plot_randomisation(out / "metrics_randomisation.png")
    if fig is not None:
        plt.close(fig)
        written[out / "metrics_randomisation.png"] = ("randomisation sanity check: each method's map as the "
                                                      "layers are re-initialised from the top")
    files.update({str(p): w for p, w in written.items()})
    lines += ["",
              "  deletion: area under the class probability as the most relevant pixels are replaced by the",
              "  blurred image first (lower: faithful); insertion: as they are put back onto it (higher: faithful);",
              "  randomisation: SSIM to the original map as layers are re-initialised from the top (lower: the map",
              "  depends on the weights; Adebayo et al. 2018); relevance mass / pointing game: on the true shape.",
              f"  pictures: {', '.join(p.name for p in written if p.suffix == '.png')}"]
    return lines


def chance_notes(comp, baseline: str = "random") -> list[str]:
    """One line per metric on which the random baseline scores better than some method.

    Such a score is surprising and means: on this metric and these images, the method's ranking
    of the features is no better than chance.
    """
    if baseline not in comp.methods:
        return []
    notes = []
    for k in comp.metrics:
        ref = comp.result(baseline, k)
        if ref is None or not np.isfinite(ref.mean):
            continue
        higher = comp.direction(k) == "higher"
        worse = [m for m in comp.methods if m != baseline and comp.result(m, k) is not None
                 and np.isfinite(comp.result(m, k).mean)
                 and (comp.result(m, k).mean < ref.mean if higher else comp.result(m, k).mean > ref.mean)]
        if worse:
            scores = ", ".join(f"{m} {comp.result(m, k).mean:.3g}" for m in worse)
            notes.append(f"note: the random baseline ({ref.mean:.3g}) beats {scores} on {k} "
                         f"({'higher' if higher else 'lower'} is better): there, "
                         f"{'that method is' if len(worse) == 1 else 'those methods are'} no better than chance")
    return notes
