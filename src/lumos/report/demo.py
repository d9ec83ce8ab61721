"""`lumos demo`: the shipped demo model explained by every image method, plus the tabular world.

Writes a picture grid (methods side by side for a handful of test images, some carrying the
watermark shortcut) and a text summary: the model's predictions, and for each method the share of
positive attribution inside the ground-truth evidence mask and on the watermark.
"""
from __future__ import annotations

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
    "smoothgrad": {"n_samples": 24, "seed": 0},
    "rise": {"n_masks": 1000, "seed": 0},
    "occlusion": {"window": 8, "stride": 4},
    "feature_ablation": {},
    "meaningful_perturbation": {"n_iter": 150},
    "scorecam": {},
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
    if name in ("gradient_shap", "deep_shap"):
        params.setdefault("baselines", background)
        params.setdefault("seed", 0)
    return params


def image_demo(out_dir: Path, n_images: int = 6, log: Callable[[str], None] = print) -> list[str]:
    """Explain a few demo test images with every registered image method."""
    import torch

    from ..core.registry import explain
    from ..data import load_demo_model, shapes_dataset
    from ..display.heatmap import plot_grid

    model = load_demo_model()
    clean = shapes_dataset(n_images // 2, split="test", watermark=False, seed=7)
    marked = shapes_dataset(n_images - n_images // 2, split="test", watermark=True, seed=8)
    images = torch.cat([clean.images, marked.images])
    labels = torch.cat([clean.labels, marked.labels])
    masks = np.concatenate([clean.masks.numpy(), marked.masks.numpy()])
    wmasks = np.concatenate([clean.watermark_masks.numpy(), marked.watermark_masks.numpy()])
    background = shapes_dataset(16, split="test", watermark=False, seed=9).images
    names = clean.class_names
    with torch.no_grad():
        pred = model(images).argmax(1)

    lines = ["== Image demo: shapes world, shipped DemoCNN ==", ""]
    for i in range(len(images)):
        tag = "watermark" if wmasks[i].any() else "clean"
        lines.append(f"  image {i} ({tag:9s}) true={names[labels[i]]:<9s} predicted={names[pred[i]]}")
    lines.append("")
    lines.append(f"  {'method':<24}{'in evidence':>12}{'on watermark':>14}{'seconds':>9}")
    area = masks.mean()
    results = {}
    for info in _image_methods():
        t0 = time.perf_counter()
        params = _extra_params(info.name, background)
        if "progress" in inspect.signature(info.func).parameters:
            params["progress"] = False
        try:
            e = explain(model, images, method=info.name, target=pred, **params)
        except Exception as err:  # one broken method must not hide the others
            lines.append(f"  {info.name:<24} failed: {type(err).__name__}: {err}")
            log(traceback.format_exc(limit=3))
            continue
        dt = time.perf_counter() - t0
        values = np.asarray(e.values)
        if values.ndim == 4 or (values.ndim == 3 and values.shape[1:] == masks.shape[1:]):
            results[info.name] = e
            ins, wm = evidence_shares(values, masks, wmasks)
            lines.append(f"  {info.name:<24}{np.nanmean(ins):>12.1%}{np.nanmean(wm[len(clean.images):]):>14.1%}{dt:>9.2f}")
    lines.append(f"  {'(area of the evidence)':<24}{area:>12.1%}")
    lines.append("")
    lines.append("  'in evidence': share of positive attribution inside the shape's ground-truth mask;")
    lines.append("  'on watermark': the same share on the corner watermark, for the watermarked images.")
    grid = out_dir / "image_methods.png"
    rows = [f"{names[labels[i]]}{'+wm' if wmasks[i].any() else ''}" for i in range(len(images))]
    if results:
        import matplotlib.pyplot as plt

        fig = plot_grid(results, images, row_labels=rows, path=grid)
        plt.close(fig)
        lines.append(f"  picture: {grid}")
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
        import importlib

        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name != mod_name:
                raise
            continue
        lines += [""] + list(getattr(mod, fn_name)(out, quick=quick))
    lines += ["", f"demo finished in {time.perf_counter() - t0:.1f} s"]
    summary = out / "summary.txt"
    summary.write_text("\n".join(lines) + "\n")
    for line in lines:
        log(line)
    log(f"\nwrote {summary}")
    return summary
