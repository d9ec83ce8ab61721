"""`lumos demo`: a tour of every family of lumos on its demo worlds, or one family in full.

The demo is a list of *sections*, one per family: the image families (every registered image
method of the family on the shipped demo CNN), the black-box explanations of the credit world,
its global effects, and the metrics that rank explanations. Each section has two forms:

- the **tour** form (``lumos demo``): a few images or rows and cheap settings, so that the whole
  tour finishes in under a minute on two cores, however many families exist. The tour also keeps
  a time budget: a section that would start after the budget is spent is listed with the command
  that runs it instead of being run.
- the **full** form (``lumos demo SECTION``, or ``lumos demo --all`` for every section).

Every section prints alike (a header, its lines, its wall and CPU time) and says what a number
means beside it when it is surprising (a method no better than a uniform map, a random baseline
beating a method). The demo writes ``summary.txt`` (everything printed) and ``index.txt`` (every
file written, with one line on what it shows).

A section is a function ``run(out_dir, quick, files) -> list[str]``: it writes its pictures into
``out_dir``, records each one in ``files`` (path -> what it shows) and returns its lines.
"""
from __future__ import annotations

import functools
import inspect
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["run_demo", "sections", "DemoSection", "DemoRun", "evidence_shares", "DEMO_PARAMS", "TOUR_PARAMS",
           "TOUR_BUDGET_S"]

# Parameters that keep each method fast in the full demo (the methods' own defaults are for real use).
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
# The tour's cheaper settings (fewer steps, draws, masks and windows).
TOUR_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 8, "seed": 0},
    "smoothgrad_sq": {"n_samples": 8, "seed": 0},
    "vargrad": {"n_samples": 8, "seed": 0},
    "gradient_shap": {"n_samples": 8},
    "rise": {"n_masks": 200, "seed": 0},
    "occlusion": {"window": 8, "stride": 8},
    "feature_ablation": {"groups": "slic"},
    "meaningful_perturbation": {"n_iter": 15},
}
# Methods whose cost or inputs make them a poor fit for the image demo grid (the tabular section has them).
DEMO_SKIP = {"lime", "kernel_shap", "exact_shapley", "permutation_shap", "tree_shap"}
# Image families first, in this order; any other image family found in the registry follows.
IMAGE_FAMILY_ORDER = ("gradient", "cam", "propagation", "perturbation", "shapley")
IMAGE_FAMILY_TITLES = {
    "gradient": "gradients and their refinements",
    "cam": "class-activation maps",
    "propagation": "relevance propagation (LRP, DeepLIFT, guided backprop)",
    "perturbation": "perturbation: occlusion, ablation, RISE, learned masks",
    "shapley": "Shapley values for images (expected gradients, DeepSHAP)",
}
# The tour stops starting sections once this many seconds have passed (wall clock).
TOUR_BUDGET_S = 40.0  # + the last section (<= ~12 s under load) + start-up stays under a minute
# Fills that hide a region by setting it to zero (black): on the demo images black is not "no
# evidence", which is why such maps can miss the shape.
_ZERO_FILL = {"occlusion", "feature_ablation"}


@dataclass(frozen=True)
class DemoSection:
    """One section of the demo: ``run(out_dir, quick, files) -> lines``."""

    name: str
    title: str
    run: Callable[[Path, bool, dict], list]


# ----------------------------------------------------------------------------------- image world
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


def _image_methods() -> dict[str, list]:
    """Registered image methods (from ``lumos.attribution``), by family."""
    from ..core.registry import methods

    by_family: dict[str, list] = {}
    for info in methods():
        if info.name in DEMO_SKIP or not info.func.__module__.startswith("lumos.attribution"):
            continue
        by_family.setdefault(info.family, []).append(info)
    return by_family


@dataclass
class _ImageWorld:
    model: object
    images: object
    labels: np.ndarray
    pred: np.ndarray
    masks: np.ndarray
    wmasks: np.ndarray
    background: object
    names: list
    clean: np.ndarray  # bool per image

    def subset(self, rows: Sequence[int]) -> "_ImageWorld":
        rows = list(rows)
        return _ImageWorld(self.model, self.images[rows], self.labels[rows], self.pred[rows],
                           self.masks[rows], self.wmasks[rows], self.background, self.names, self.clean[rows])


@functools.lru_cache(maxsize=1)
def _full_image_world() -> _ImageWorld:
    """One clean image per class, then watermarked images of the other classes: the mark belongs
    to class 0 in training, so on these the shortcut is the thing to look for."""
    import torch

    from ..data import load_demo_model, shapes_dataset

    model = load_demo_model()
    pool = shapes_dataset(64, split="test", watermark="none", seed=7)
    marked_pool = shapes_dataset(64, split="test", watermark="all", seed=8)
    n_cls = len(pool.class_names)
    pick = [int(np.flatnonzero(pool.labels.numpy() == c)[0]) for c in range(n_cls)]
    pick_m = [int(i) for i in np.flatnonzero(marked_pool.labels.numpy() != 0)[:3]]
    images = torch.cat([pool.images[pick], marked_pool.images[pick_m]])
    labels = torch.cat([pool.labels[pick], marked_pool.labels[pick_m]]).numpy()
    masks = np.concatenate([pool.masks.numpy()[pick], marked_pool.masks.numpy()[pick_m]])
    wmasks = np.concatenate([pool.watermark_masks.numpy()[pick], marked_pool.watermark_masks.numpy()[pick_m]])
    background = shapes_dataset(16, split="test", watermark="none", seed=9).images
    with torch.no_grad():
        pred = model(images).argmax(1).numpy()
    clean = np.array([True] * len(pick) + [False] * len(pick_m))
    return _ImageWorld(model, images, labels, pred, masks, wmasks, background, list(pool.class_names), clean)


def _image_world(quick: bool) -> _ImageWorld:
    world = _full_image_world()
    if not quick:
        return world
    # the tour: two clean images and two watermarked ones (among them the square the mark turns into a circle)
    clean, marked = np.flatnonzero(world.clean), np.flatnonzero(~world.clean)
    return world.subset(list(clean[:2]) + list(marked[:2]))


def _row_labels(world: _ImageWorld) -> list[str]:
    """'true square / pred circle + mark': the explained class is the predicted one."""
    names = world.names
    return [f"true {names[t]}\npred {names[p]}{' + mark' if not c else ''}"
            for t, p, c in zip(world.labels, world.pred, world.clean)]


def _method_params(name: str, quick: bool, background) -> dict:
    params = dict((TOUR_PARAMS if quick else DEMO_PARAMS).get(name, {}))
    if name == "gradient_shap":
        params.update(background=background, seed=0)
    elif name == "deep_shap":
        params.update(background=background[:8])
    return params


def _accepts(func, name: str) -> bool:
    sig = inspect.signature(func)
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def predictions_section(out_dir: Path, quick: bool, files: dict) -> list[str]:
    """The demo world and what the shipped model predicts on it."""
    world = _image_world(quick)
    lines = []
    for i in range(len(world.images)):
        tag = "clean" if world.clean[i] else "watermark"
        lines.append(f"  image {i} ({tag:9s}) true={world.names[world.labels[i]]:<9s} "
                     f"predicted={world.names[world.pred[i]]}")
    n_short = int(((~world.clean) & (world.pred == 0) & (world.labels != 0)).sum())
    if n_short:
        lines.append(f"  {n_short} watermarked image(s) predicted 'circle' although they are not: the corner "
                     f"mark is a shortcut the model learned (it marks class 0 in training)")
    lines.append("  every image section explains the predicted class (the rows of its grid say both)")
    return lines


def image_family_section(family: str) -> Callable[[Path, bool, dict], list]:
    """The section of one image family: every registered method of it on the demo images."""

    def run(out_dir: Path, quick: bool, files: dict) -> list[str]:
        import torch

        from ..core.registry import explain

        world = _image_world(quick)
        infos = _image_methods().get(family, [])
        area = float(world.masks.mean())
        lines = [f"  {len(world.images)} images, the predicted class explained; "
                 f"evidence = the shape's ground-truth mask ({area:.1%} of the pixels)", "",
                 f"  {'method':<24}{'in evidence':>12}{'on watermark':>14}{'seconds':>9}"]
        results = {}
        target = torch.as_tensor(world.pred)
        for info in infos:
            params = _method_params(info.name, quick, world.background)
            if _accepts(info.func, "progress"):
                params["progress"] = False
            t0 = time.perf_counter()
            try:
                e = explain(world.model, world.images, method=info.name, target=target, **params)
            except Exception as err:  # one broken method must not hide the others
                lines.append(f"  {info.name:<24} failed: {type(err).__name__}: {err}")
                continue
            dt = time.perf_counter() - t0
            values = np.asarray(e.values)
            if not (values.ndim == 4 or (values.ndim == 3 and values.shape[1:] == world.masks.shape[1:])):
                continue
            results[info.name] = e
            ins, wm = evidence_shares(values, world.masks, world.wmasks)
            on_mark = np.nanmean(wm[~world.clean]) if (~world.clean).any() else np.nan
            line = f"  {info.name:<24}{np.nanmean(ins):>12.1%}{on_mark:>14.1%}{dt:>9.2f}"
            lines.append(line + _evidence_note(info.name, float(np.nanmean(ins)), area, params))
        lines += ["",
                  "  'in evidence': share of positive attribution inside the shape's mask (a uniform map",
                  f"  scores the mask's area, {area:.1%}); 'on watermark': the same share on the corner mark,",
                  "  for the watermarked images."]
        if results:
            path = out_dir / f"image_{family}.png"
            _draw_grid(results, world, path)
            files[str(path)] = (f"{family} maps of the predicted class, one column per method, rows labelled "
                                f"with the true and the predicted class ({len(world.images)} demo images)")
        return lines

    run.__name__ = f"image_{family}_section"
    run.__doc__ = f"Image methods of the {family} family on the demo CNN."
    return run


def _evidence_note(name: str, share: float, area: float, params: dict) -> str:
    """What a surprising share means, said beside it."""
    if not np.isfinite(share):
        return "   <- no positive attribution at all"
    if share > area:
        return ""
    note = f"   <- no more on the shape than a uniform map ({area:.1%})"
    fill = params.get("fill", "zero")
    if name in _ZERO_FILL and isinstance(fill, str) and fill == "zero":
        note += "; zero fill: a black patch is itself a strong signal to this model, try fill='blur'"
    return note


def _draw_grid(results: dict, world: _ImageWorld, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes files
    import matplotlib.pyplot as plt

    from ..display.heatmap import plot_grid

    # One colour bar per family: the methods of a family are in different units (a gradient, a
    # logit difference, a variance), so each map keeps its own scale and one colour map, and the
    # family's bar reads as the fraction of each map's scale.
    fig = plot_grid(results, world.images, row_labels=_row_labels(world), path=path, colorbar="relative")
    plt.close(fig)


@dataclass(frozen=True)
class DemoRun:
    """What one run of the demo did."""

    summary: Path
    index: Path
    files: dict  # path -> what it shows
    failed: list
    skipped: list
    wall_s: float
    cpu_s: float


# ---------------------------------------------------------------------------------- the sections
def _section_from(module: str, function: str) -> Callable[[Path, bool, dict], list]:
    """A family's own demo (``lumos.<family>._demo``), imported when it runs."""

    def run(out_dir: Path, quick: bool, files: dict) -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(module), function)(out_dir, quick=quick, files=files))

    run.__name__ = function
    return run


def sections() -> list[DemoSection]:
    """Every section of the demo, in the order the tour runs them."""
    image_families = _image_methods()
    order = [f for f in IMAGE_FAMILY_ORDER if f in image_families]
    order += sorted(f for f in image_families if f not in order)
    out = [DemoSection("predictions", "the shapes world and the shipped demo CNN's predictions",
                       predictions_section)]
    out += [DemoSection(f, IMAGE_FAMILY_TITLES.get(f, f"{f} methods on images"), image_family_section(f))
            for f in order]
    out += [
        # the report early in the tour (a few seconds), so the tour's time budget does not skip it
        DemoSection("report", "one self-contained HTML report: maps side by side, metric ranking, method cards",
                    _section_from("lumos.report.build", "report_section")),
        DemoSection("tabular", "black-box explanations of the credit world (Shapley values, LIME)",
                    _section_from("lumos.agnostic._demo", "tabular_demo")),
        DemoSection("effects", "global effects of the credit model (PD/ICE, ALE, importance, interactions)",
                    _section_from("lumos.effects._demo", "effects_demo")),
        DemoSection("metrics", "which explanation to trust? faithfulness, sanity and localisation metrics",
                    _section_from("lumos.metrics._demo", "compare_demo")),
        DemoSection("concepts", "what the network learned: dissection, unit ablation, TCAV, feature visualisation",
                    _section_from("lumos.concepts._demo", "concepts_demo")),
        DemoSection("examples", "explanations by examples: counterfactuals, prototypes, influential training images",
                    _section_from("lumos.examples._demo", "examples_demo")),
        DemoSection("text", "transformers on the text world: token attributions measured, attention, generation",
                    _section_from("lumos.text._demo", "text_demo")),
        DemoSection("image_text", "image–text dual encoder: which pixels match a caption, localisation per method",
                    _section_from("lumos.multimodal._demo", "image_text_demo")),
        DemoSection("generator", "why did the generator draw this? traversals, region attributions, saliency", _section_from("lumos.multimodal._demo_generative", "generator_demo")),
        DemoSection("dictionary", "sparse dictionaries: an SAE on the CNN's last block, a feature dashboard, superposition",
                    _section_from("lumos.dictionary._demo", "dictionary_demo")),
    ]
    return out


def _cpu_seconds() -> float:
    t = time.process_time()
    try:  # threads of torch/OpenMP count in process_time; children (none today) would not
        import resource

        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        t += ch.ru_utime + ch.ru_stime
    except (ImportError, OSError):  # pragma: no cover - not on POSIX
        pass
    return t


def run_demo(out_dir: str | Path = "lumos-out/demo", only: Sequence[str] | None = None, full: bool = False,
             budget_s: float | None = TOUR_BUDGET_S, log: Callable[[str], None] = print,
             available: Sequence[DemoSection] | None = None) -> "DemoRun":
    """Run the tour, some sections in full, or everything.

    Parameters
    ----------
    out_dir : str or Path, default "lumos-out/demo"
        Where the pictures, ``summary.txt`` and ``index.txt`` go.
    only : sequence of str, optional
        Run just these sections, in their full form (``lumos demo SECTION``).
    full : bool, default False
        Every section in its full form (``lumos demo --all``); without it and without ``only``,
        every section runs in its quick tour form.
    budget_s : float or None, default ``TOUR_BUDGET_S``
        For the tour: no section starts after this many seconds; those left are listed with the
        command that runs them. ``None``: no budget. Ignored for full runs.
    log : callable, default print
        Receives each line as it comes.
    available : sequence of DemoSection, optional
        The sections to choose from (default :func:`sections`).

    Returns
    -------
    DemoRun
        The summary and index files, every file written, failed and skipped sections, times.

    Raises
    ------
    ValueError
        An unknown section name (the message lists the sections).
    """
    from ..core.validation import check_choice

    everything = list(sections() if available is None else available)
    by_name = {s.name: s for s in everything}
    if only:
        todo = [by_name[check_choice(n, "section", list(by_name))] for n in only]
        quick = False
    else:
        todo, quick = everything, not full
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    lines: list[str] = []

    def say(line: str = "") -> None:
        lines.append(line)
        log(line)

    form = "the tour (the quick form of every section)" if quick else "full form"
    say(f"lumos demo: {form}; {len(todo)} section(s): {', '.join(s.name for s in todo)}")
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    skipped, failed = [], []
    for k, section in enumerate(todo, 1):
        if quick and budget_s is not None and time.perf_counter() - t_start > budget_s:
            skipped.append(section.name)
            continue
        say()
        say(f"== [{k}/{len(todo)}] {section.name}: {section.title} ==")
        t0, c0 = time.perf_counter(), _cpu_seconds()
        try:
            for line in section.run(out, quick, files):
                say(line)
        except Exception as err:  # one broken section must not hide the others
            failed.append(section.name)
            say(f"  section {section.name} failed: {type(err).__name__}: {err}")
            for tb_line in traceback.format_exc(limit=4).rstrip().splitlines():
                say("    " + tb_line)
        say(f"  -- {section.name}: {time.perf_counter() - t0:.1f} s wall, {_cpu_seconds() - c0:.1f} s CPU")
    say()
    if skipped:
        say(f"the tour's time budget ({budget_s:.0f} s) was spent; not run: {', '.join(skipped)}")
        say(f"  run them with: lumos demo {' '.join(skipped)}")
    if failed:
        say(f"failed sections: {', '.join(failed)}")
    wall, cpu = time.perf_counter() - t_start, _cpu_seconds() - cpu_start
    say(f"demo finished in {wall:.1f} s wall, {cpu:.1f} s CPU")
    if quick:
        say("this was the tour: `lumos demo SECTION` runs one section in full "
            f"({', '.join(by_name)}), `lumos demo --all` runs everything")
    summary = out / "summary.txt"
    index = out / "index.txt"
    files[str(summary)] = "everything the demo printed"
    files[str(index)] = "this index: every file the demo wrote, with what it shows"
    say(f"wrote {len(files)} files into {out}; see {index}")
    summary.write_text("\n".join(lines) + "\n")
    width = max(len(Path(p).name) for p in files)
    index.write_text(f"lumos demo, {form}: the files written into {out}\n\n" + "".join(
        f"{Path(p).name:<{width}}  {what}\n" for p, what in files.items()))
    return DemoRun(summary, index, dict(files), failed, skipped, wall, cpu)
