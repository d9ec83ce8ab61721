"""The metrics section of ``lumos demo``: the image methods on the shipped demo model, ranked by
faithfulness, localisation on the known evidence, the randomisation sanity check and sparseness."""
from __future__ import annotations

import time
from pathlib import Path

__all__ = ["compare_demo"]

DEMO_METHODS = ["saliency", "integrated_gradients", "gradcam", "guided_backprop", "random"]


def compare_demo(out_dir: str | Path, quick: bool = False) -> list[str]:
    """Compare a few image methods on demo test images; returns the summary lines.

    Writes ``metrics_table.txt``, ``metrics.json``, ``metrics_curves.png`` and
    ``metrics_randomisation.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir : Path
    quick : bool, default False
        Fewer images and curve steps.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..data import load_demo_model, shapes_dataset
    from .compare import compare

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = 4 if quick else 6
    model = load_demo_model()
    data = shapes_dataset(n, split="test", seed=7)
    steps = 8
    comp = compare(
        model, data.images, DEMO_METHODS,
        ["deletion", "insertion", "randomisation", "relevance_mass_accuracy", "pointing_game", "sparseness"],
        target="predicted", masks=data.masks.numpy(),
        method_params={"integrated_gradients": {"n_steps": 8 if quick else 16}},
        metric_params={"deletion": {"n_steps": steps}, "insertion": {"n_steps": steps}},
    )
    lines = [f"== Metrics: which explanation to trust? ({n} demo test images) ==", ""]
    lines += ["  " + line for line in comp.table()]
    (out / "metrics_table.txt").write_text("\n".join(comp.table()) + "\n")
    import json

    (out / "metrics.json").write_text(json.dumps(comp.to_dict(), indent=1))
    fig = comp.plot_curves(out / "metrics_curves.png")
    if fig is not None:
        plt.close(fig)
    fig = comp.plot_randomisation(out / "metrics_randomisation.png")
    if fig is not None:
        plt.close(fig)
    lines += ["",
              "  deletion: area under the class probability as the most relevant pixels are replaced by the",
              "  blurred image first (lower: faithful); insertion: as they are put back onto it (higher: faithful);",
              "  randomisation: SSIM to the original map as layers are re-initialised from the top (lower: the map",
              "  depends on the weights; Adebayo et al. 2018); relevance mass / pointing game: on the true shape.",
              f"  pictures: {out / 'metrics_curves.png'}, {out / 'metrics_randomisation.png'}",
              f"  ({time.perf_counter() - t0:.1f} s)"]
    return lines
