"""The dictionary section of ``lumos demo``: a small SAE on the demo CNN's last block, its metrics,
one feature dashboard, and the superposition phase picture of the toy model."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["dictionary_demo"]


def dictionary_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Train a TopK SAE on ``features.10`` of the shipped CNN, measure it, write one dashboard page
    and the toy model's phase picture.

    Parameters
    ----------
    out_dir : Path
        Receives ``dictionary_feature_<i>.html`` and ``dictionary_superposition.png``.
    quick : bool, default False
        The tour form: fewer images, fewer steps, a coarser phase grid.
    files : dict, optional
        Receives ``path -> what it shows`` for every file written.

    Returns
    -------
    list of str
        Summary lines.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    from ..core.execution import torch_threads

    with torch_threads(1):  # small batches on shared cores: one thread is faster and steadier
        return _run(out_dir, quick, files)


def _run(out_dir: Path, quick: bool, files: dict) -> list[str]:
    import torch

    from ..core.units import ActivationModel
    from ..data import load_demo_model, shapes_dataset
    from .cache import flatten_positions
    from .dashboard import feature_dashboards
    from .metrics import evaluate, loss_recovered
    from .sae import SAE
    from .superposition import phase_diagram, train_toy_model
    from .train import train_sae

    lines = []
    at = "features.10"
    n_images, n_steps = (64, 150) if quick else (512, 1000)
    model = load_demo_model()
    data = shapes_dataset(n_images, split="test", seed=0)
    t0 = time.perf_counter()
    with torch.no_grad():
        rows, _ = flatten_positions(ActivationModel(model, at)(data.images))
    sae = SAE(rows.shape[1], 256, "topk", k=8, seed=0)
    res = train_sae(sae, rows, n_steps=n_steps, batch_size=256, lr=3e-3, seed=0, progress=False)
    sae.eval()
    m = evaluate(sae, rows)
    lr = loss_recovered(model, sae, data.images, at, labels=data.labels)
    lines.append(f"TopK SAE (k=8, 256 features) on {at} of the demo CNN: {len(rows)} activation rows of "
                 f"{rows.shape[1]} channels ({n_images} images x 8x8 positions), {n_steps} steps in "
                 f"{time.perf_counter() - t0:.1f} s ({res.rows_per_second:.0f} rows/s)")
    lines.append(f"  L0 {m.l0:.2f}  explained variance {m.explained_variance:.3f} (about the mean)  "
                 f"cosine {m.cosine:.3f}  dead {m.dead_fraction:.1%}  dense {m.dense_fraction:.1%}")
    lines.append(f"  loss recovered {lr.loss_recovered:.3f} (CE clean {lr.ce_clean:.3f}, with the SAE "
                 f"{lr.ce_sae:.3f}, layer zeroed {lr.ce_zero:.3f})")
    # the dashboard of the feature that moves the classifier most per unit of activation among the
    # features that fire on a few percent of positions (a readable, selective feature)
    density = m.density
    w = model.classifier.weight.detach().double()
    effect = (sae.W_dec.detach().double() / sae.input_scale.double()) @ w.T  # (features, classes)
    candidates = np.flatnonzero((density > 0.005) & (density < 0.2))
    if candidates.size == 0:
        candidates = np.flatnonzero(density > 0)
    f = int(candidates[np.argmax(effect.abs().amax(1).numpy()[candidates])])
    dash = feature_dashboards(model, sae, data.images, at, features=[f], k=8, k_band=4,
                              title="Demo CNN, SAE on features.10", progress=False)
    page = dash.save(out_dir, [f])[0]
    target = out_dir / f"dictionary_feature_{f}.html"
    page.replace(target)
    files[str(target)] = (f"feature dashboard of SAE feature {f} at {at}: top image crops, quantile bands, "
                          f"activation histogram, effects on the class logits, nearest features")
    fd = dash[f]
    top = ", ".join(fd.effects_pos[i][0] for i in range(min(2, len(fd.effects_pos)))) or "none"
    lines.append(f"  dashboard of feature {f} (density {fd.density:.1%}, max {fd.max_activation:.3g}; raises "
                 f"{top}): {target.name}")
    # superposition: the 5-feature toy model, dense vs sparse, and the n=2, m=1 phase picture
    t0 = time.perf_counter()
    toy = train_toy_model(5, 2, [0.0, 0.9], 0.9, n_steps=500 if quick else 3000, lr=3e-2 if quick else 1e-2,
                          batch_size=256 if quick else 1024, seed=0)
    reps = toy.n_represented()
    lines.append(f"toy model, 5 features in 2 dimensions (I_i = 0.9^i): {reps[0]} represented at density 1, "
                 f"{reps[1]} at density 0.1 (‖W_i‖ > 0.5; more than 2 = superposition)")
    grid = dict(density=np.logspace(-2, 0, 5), relative_importance=np.logspace(-1, 1, 5), n_steps=500) if quick \
        else dict(n_steps=1200)
    pd = phase_diagram(seed=0, **grid)
    counts = pd.counts()
    lines.append(f"phase picture n=2, m=1 ({pd.phase.size} cells, {time.perf_counter() - t0:.1f} s with the toy "
                 f"model): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 5.0), layout="constrained")
    sub = fig.subfigures(1, 2, width_ratios=[1.0, 1.25])
    pd.plot(ax=sub[0].subplots())
    toy.plot(1, axes=sub[1].subplots(1, 2))
    path = out_dir / "dictionary_superposition.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files[str(path)] = ("toy model of superposition: the n=2, m=1 phase picture (feature density x relative "
                        "importance -> ignored / dedicated / superposed) and the 5-feature model at density 0.1 "
                        "(WᵀW, bias, ‖W_i‖ coloured by the superposition measure)")
    lines.append(f"  picture: {path.name}")
    return lines
