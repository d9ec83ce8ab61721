"""Benchmark: lumos metrics against the model passes they need and against peers.

Run: ``python benchmarks/bench_metrics.py [--repeats 3] [--threads 1]`` (CPU).

Every row times lumos and its reference in one process, interleaved, the order rotated each round,
after a warm-up round; it reports the fastest round of each (and the median) and the machine load
(``benchmarks/_timing.py``). Like with like: the same model, inputs, number of model rows and
perturbations, and the same scale (the class probability) on both sides.

- Deletion + insertion over 64 demo images, 20 steps: lumos against the bare cost of the model
  passes they need (the same 2 x 64 x 21 rows, pre-built, evaluated 64 at a time under
  ``torch.inference_mode``), and deletion against a per-sample, per-step loop (one image per model
  call, Quantus' per-instance design; Quantus itself is not installed).
- Infidelity and max-sensitivity beside Captum's ``captum.metrics.infidelity`` and
  ``sensitivity_max`` with the same number of perturbations.
- ROAD (noisy linear imputation): cost beside the model passes.
- Cascading randomisation of saliency on the demo model beside 5 saliency calls.

The demo CNN on shapes test images (a randomly initialised DemoCNN if the weights are missing).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

import lumos
import lumos.metrics as lm

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, header, machine_load, set_threads  # noqa: E402


def load(n):
    from lumos.data import DemoCNN

    try:
        from lumos.data import load_demo_model, shapes_dataset

        model = load_demo_model()
        x = shapes_dataset(n, split="test", seed=0).images
        note = f"shipped demo CNN, {n} shapes test images"
    except Exception as err:  # weights missing: same architecture, random weights
        torch.manual_seed(0)
        model = DemoCNN().eval()
        x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        note = f"random DemoCNN (demo model unavailable: {type(err).__name__})"
    return model.eval(), x, note


def model_passes(model, rows: torch.Tensor, batch=64, channels_last: bool = False):
    """The floor: evaluating pre-built rows, ``batch`` at a time (``channels_last``: in the layout
    lumos feeds CPU conv nets, ``lumos.core.layout.layout_for``)."""
    with torch.inference_mode():
        for s in range(0, len(rows), batch):
            r = rows[s:s + batch]
            model(r.contiguous(memory_format=torch.channels_last) if channels_last else r)


def naive_deletion(model, expl, steps):
    """The per-sample, per-step loop of Quantus-style metrics: one image per model call."""
    values = np.asarray(expl.values).sum(1).reshape(len(expl), -1)
    x = torch.as_tensor(expl.inputs)
    n, hw = values.shape
    out = np.empty((n, steps + 1))
    with torch.inference_mode():
        for i in range(n):
            order = np.argsort(-values[i], kind="stable")
            for s in range(steps + 1):
                k = int(np.floor(s / steps * hw + 0.5))
                xi = x[i].clone().reshape(x.shape[1], -1)
                xi[:, order[:k]] = 0.0
                out[i, s] = model(xi.reshape(1, *x.shape[1:])).softmax(1)[0, expl.target[i]].item()
    return np.trapezoid(out, np.arange(steps + 1) / steps, axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    n, steps = 64, 20
    model, x, note = load(n)
    print(f"lumos metrics benchmark: {note}, torch threads {torch.get_num_threads()}, "
          f"fastest of {args.repeats} interleaved rounds")
    expl = lumos.explain(model, x, method="saliency", target="predicted")
    rows = []

    def row(name, fns, ref, repeats=args.repeats):
        t = compare(fns, repeats=repeats)
        print(header(name))
        print(t.table(against=ref))
        rows.append((name, t.best("lumos"), ref, t.best(ref), t.load_after))

    # ---------------------------------------------------------------- deletion / insertion
    # the rows the two curves need, pre-built: steps changed inputs per sample and curve, plus the
    # unchanged input (the curves' known end point, f(x))
    floor_rows = x.repeat_interleave(2 * (steps + 1), 0)
    row("deletion+insertion, 64 images, 20 steps",
        {"lumos": lambda: (lm.deletion(model, expl, n_steps=steps, scale="probability"),
                           lm.insertion(model, expl, n_steps=steps, scale="probability")),
         "model passes": lambda: model_passes(model, floor_rows),
         "model passes*": lambda: model_passes(model, floor_rows, channels_last=True)}, "model passes*")
    m = 16
    # the same numbers both ways (zero fill, probabilities; no ties in a saliency map)
    np.testing.assert_allclose(naive_deletion(model, expl[:4], steps),
                               lm.deletion(model, expl[:4], n_steps=steps, fill=0.0, scale="probability").scores,
                               atol=1e-5)
    row(f"deletion, {m} images, 20 steps",
        {"lumos": lambda: lm.deletion(model, expl[:m], n_steps=steps, fill=0.0, scale="probability"),
         "per-sample loop": lambda: naive_deletion(model, expl[:m], steps)}, "per-sample loop",
        repeats=max(1, args.repeats - 1))

    # ---------------------------------------------------------------- Captum peers
    from captum.attr import Saliency
    from captum.metrics import infidelity, sensitivity_max

    R = 16
    xs, es = x[:m], expl[:m]
    tgt = torch.as_tensor(es.target)

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.1
        return noise, inputs - noise

    attr = torch.as_tensor(es.values)
    # both score the raw logit, as Captum does
    row(f"infidelity, {m} images x {R}",
        {"lumos": lambda: lm.infidelity(model, es, n_samples=R, noise_std=0.1, scale="raw"),
         "captum": lambda: infidelity(model, perturb, xs, attr, target=tgt, n_perturb_samples=R,
                                      max_examples_per_batch=64, normalize=True)}, "captum")
    sal = Saliency(model)
    row(f"max_sensitivity (saliency), {m} x {R}",
        {"lumos": lambda: lm.max_sensitivity(model, es, n_samples=R, radius=0.02),
         "captum": lambda: sensitivity_max(sal.attribute, xs, target=tgt, n_perturb_samples=R,
                                           perturb_radius=0.02, max_examples_per_batch=64)}, "captum")

    # ---------------------------------------------------------------- ROAD, randomisation
    m8 = 16
    road_rows = x[:m8].repeat_interleave(10, 0)
    row(f"ROAD, {m8} images x 10 steps",
        {"lumos": lambda: lm.road(model, expl[:m8], n_steps=10),
         "model passes": lambda: model_passes(model, road_rows)}, "model passes", repeats=1)
    row(f"randomisation (saliency), {m8} images",
        {"lumos": lambda: lm.model_parameter_randomisation(model, expl[:m8], keep_maps=False),
         "5 saliency calls": lambda: [lumos.explain(model, x[:m8], method="saliency", target=expl.target[:m8])
                                      for _ in range(5)]}, "5 saliency calls", repeats=1)

    head = f"{'metric':<42}{'lumos s':>9}  {'reference':<18}{'ref s':>8}{'lumos/ref':>10}{'load':>6}"
    print("\n" + head)
    print("-" * len(head))
    for name, a, ref, b, ld in rows:
        print(f"{name:<42}{a:>9.3f}  {ref:<18}{b:>8.3f}{a / b:>10.2f}{ld:>6.2f}")
    print(f"\nlumos/ref below 1: lumos is faster (against the model passes: the overhead of building the "
          f"changed inputs). Load = 1-minute load per core ({os.cpu_count()} cores, now {machine_load():.2f}).")


if __name__ == "__main__":
    main()
