"""`lumos demo`: the shipped demo model explained by every image method, plus the tabular world.

Writes a picture grid (methods side by side for a handful of test images, some carrying the
watermark shortcut) and a text summary: the model's predictions, and for each method the share of
positive attribution inside the ground-truth evidence mask and on the watermark.
"""
from __future__ import annotations

import importlib
import inspect
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["run_demo", "evidence_shares", "DEMO_PARAMS"]

# Parameters that keep each method fast in the demo (the methods' own defaults are for real use).
DEMO_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 32},
    "smoothgrad": {"n_samples": 16, "seed": 0},
    "smoothgrad_sq": {"n_samples": 16, "seed": 0},
    "vargrad": {"n_samples": 16, "seed": 0},
    "gradient_shap": {"n_samples": 16},
    "rise": {"n_masks": 500, "seed": 0},
    "occlusion": {"window": 8, "stride": 4},
    "feature_ablation": {"groups": "slic"},
    "meaningful_perturbation": {"n_iter": 50},
}
# Methods whose cost or inputs make them a poor fit for the image demo grid.
DEMO_SKIP = {"lime", "kernel_shap", "exact_shapley", "permutation_shap", "tree_shap"}


def positive_map(values: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) → (H, W): the channel sum, positive part."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 3:
        v = v.sum(0)
    return np.clip(v, 0, None)


def evidence_shares(values: np.ndarray, masks: np.ndarray, watermark_masks: np.ndarray):
    """Per sample: share of positive attribution inside the evidence mask and on the watermark."""
    ins, wm = [], []
    for v, m, w in zip(values, masks, watermark_masks):
        p = positive_map(v)
        if p.shape != m.shape:
            ins.append(np.nan), wm.append(np.nan)
            continue
        total = p.sum()
        ins.append(p[m].sum() / total if total > 0 else np.nan)
        wm.append(p[w].sum() / total if total > 0 else np.nan)
    return np.array(ins), np.array(wm)


def _image_methods():
    from ..core.registry import methods

    rows = []
    for info in methods():
        if info.name in DEMO_SKIP or not info.func.__module__.startswith("lumos.attribution"):
            continue
        rows.append(info)
    return rows


def _extra_params(name: str, background) -> dict:
    params = dict(DEMO_PARAMS.get(name, {}))
    if name == "gradient_shap":
        params.update(background=background, seed=0)
    elif name == "deep_shap":
        params.update(background=background[:8])
    return params


def image_demo(out_dir: Path, n_images: int = 7, log: Callable[[str], None] = print) -> list[str]:
    """Explain a few demo test images with every registered image method."""
    import torch

    from ..core.registry import explain
    from ..data import load_demo_model, shapes_dataset
    from ..display.heatmap import plot_grid

    model = load_demo_model()
    # One clean image per class, then watermarked images of the other classes: the mark belongs
    # to class 0 in training, so on these the shortcut is the thing to look for.
    pool = shapes_dataset(64, split="test", watermark="none", seed=7)
    marked_pool = shapes_dataset(64, split="test", watermark="all", seed=8)
    n_cls = len(pool.class_names)
    pick = [int(np.flatnonzero(pool.labels.numpy() == c)[0]) for c in range(n_cls)]
    n_marked = max(n_images - n_cls, 0)
    pick_m = [int(i) for i in np.flatnonzero(marked_pool.labels.numpy() != 0)[:n_marked]]
    images = torch.cat([pool.images[pick], marked_pool.images[pick_m]])
    labels = torch.cat([pool.labels[pick], marked_pool.labels[pick_m]])
    masks = np.concatenate([pool.masks.numpy()[pick], marked_pool.masks.numpy()[pick_m]])
    wmasks = np.concatenate([pool.watermark_masks.numpy()[pick], marked_pool.watermark_masks.numpy()[pick_m]])
    n_clean = len(pick)
    background = shapes_dataset(16, split="test", watermark="none", seed=9).images
    names = pool.class_names
    with torch.no_grad():
        pred = model(images).argmax(1)

    lines: list[str] = []

    def say(line: str = "") -> None:  # printed as it comes: the demo takes a while
        lines.append(line)
        log(line)

    say("== Image demo: shapes world, shipped DemoCNN ==")
    say()
    for i in range(len(images)):
        tag = "watermark" if wmasks[i].any() else "clean"
        say(f"  image {i} ({tag:9s}) true={names[labels[i]]:<9s} predicted={names[pred[i]]}")
    say()
    say(f"  {'method':<24}{'in evidence':>12}{'on watermark':>14}{'seconds':>9}")
    area = masks.mean()
    results = {}
    families_of = {}
    for info in _image_methods():
        t0 = time.perf_counter()
        params = _extra_params(info.name, background)
        if "progress" in inspect.signature(info.func).parameters:
            params["progress"] = False
        try:
            e = explain(model, images, method=info.name, target=pred, **params)
        except Exception as err:  # one broken method must not hide the others
            say(f"  {info.name:<24} failed: {type(err).__name__}: {err}")
            log(traceback.format_exc(limit=3))
            continue
        dt = time.perf_counter() - t0
        values = np.asarray(e.values)
        if values.ndim == 4 or (values.ndim == 3 and values.shape[1:] == masks.shape[1:]):
            results[info.name] = e
            families_of[info.name] = info.family
            ins, wm = evidence_shares(values, masks, wmasks)
            say(f"  {info.name:<24}{np.nanmean(ins):>12.1%}{np.nanmean(wm[n_clean:]):>14.1%}{dt:>9.2f}")
    say(f"  {'(area of the evidence)':<24}{area:>12.1%}")
    say()
    say("  'in evidence': share of positive attribution inside the shape's ground-truth mask;")
    say("  'on watermark': the same share on the corner watermark, for the watermarked images.")
    rows = [f"{names[labels[i]]}{' + mark' if wmasks[i].any() else ''}" for i in range(len(images))]
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes files
    import matplotlib.pyplot as plt

    families: dict[str, dict] = {}
    for name, e in results.items():
        families.setdefault(families_of[name], {})[name] = e
    for family, group in families.items():
        path = out_dir / f"image_{family}.png"
        fig = plot_grid(group, images, row_labels=rows, path=path)
        plt.close(fig)
        say(f"  picture: {path}")
    return lines


def run_demo(out_dir: str | Path = "lumos-out/demo", quick: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Run the whole demo; returns the path of the summary text."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = image_demo(out, log=log)
    sections = [
        ("lumos.agnostic._demo", "tabular_demo"),
        ("lumos.effects._demo", "effects_demo"),
        ("lumos.metrics._demo", "compare_demo"),
    ]
    for mod_name, fn_name in sections:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name != mod_name:
                raise
            continue
        section = [""] + list(getattr(mod, fn_name)(out, quick=quick))
        for line in section:
            log(line)
        lines += section
    lines += ["", f"demo finished in {time.perf_counter() - t0:.1f} s"]
    summary = out / "summary.txt"
    summary.write_text("\n".join(lines) + "\n")
    log(lines[-1])
    log(f"wrote {summary} and the pictures beside it")
    return summary
