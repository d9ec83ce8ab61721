"""Benchmark: lumos metrics against the model passes they need and against peers.

Run: ``python benchmarks/bench_metrics.py`` (CPU, one thread by default; LUMOS_BENCH_THREADS=n).

- Deletion + insertion over 64 demo images, 20 steps: lumos against the bare cost of the model
  passes they need (the same 2 x 64 x 21 rows, pre-built, evaluated 64 at a time under
  ``torch.inference_mode``; timed alternately with lumos, medians), and deletion against a
  straightforward per-sample, per-step loop (one image per model call, as in Quantus'
  per-instance design; Quantus itself is not installed).
- Infidelity and max-sensitivity beside Captum's ``captum.metrics.infidelity`` and
  ``sensitivity_max`` with the same number of perturbations.
- ROAD (noisy linear imputation): cost per image and step beside the model passes.
- Cascading randomisation of saliency on the demo model.

The demo CNN on shapes test images (a randomly initialised DemoCNN if the weights are missing).
Median of a few repeats after a warm-up; the comparisons with the model passes and with the
naive loop take the fastest of alternating runs (robust to other load on a shared machine).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

import lumos
import lumos.metrics as lm

torch.set_num_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))


def timeit(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def model_passes(model, rows: torch.Tensor, batch=64):
    """The floor: evaluating pre-built rows, ``batch`` at a time."""
    with torch.inference_mode():
        for s in range(0, len(rows), batch):
            model(rows[s:s + batch])


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


def paired(fn_a, fn_b, repeats=3):
    """Fastest times of two functions timed alternately: on a shared machine other work only ever
    adds time, so the minimum over alternating runs compares the two under the same conditions."""
    fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_a()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_b()
        tb.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def main():
    n, steps = 64, 20
    model, x, note = load(n)
    print(f"lumos metrics benchmark: {note}, torch threads {torch.get_num_threads()}\n")
    expl = lumos.explain(model, x, method="saliency", target="predicted")
    rows = []

    # ---------------------------------------------------------------- deletion / insertion
    def lumos_curves():
        lm.deletion(model, expl, steps=steps, softmax=True)
        lm.insertion(model, expl, steps=steps, softmax=True)

    # the rows the two curves need, pre-built: steps changed inputs per sample and curve, plus the
    # unchanged input (the curves' known end point, f(x))
    floor_rows = x.repeat_interleave(2 * (steps + 1), 0)
    t_lumos, t_floor = paired(lumos_curves, lambda: model_passes(model, floor_rows), repeats=5)
    rows.append(("deletion+insertion, 20 steps", t_lumos, "model passes only", t_floor))
    m = 16
    t_del, t_loop = paired(lambda: lm.deletion(model, expl[:m], steps=steps, fill=0.0, softmax=True),
                           lambda: naive_deletion(model, expl[:m], steps), repeats=1)
    rows.append((f"deletion, {m} images, 20 steps", t_del, "per-sample per-step loop", t_loop))
    # the same numbers both ways (no ties in a saliency map: the orders agree)
    np.testing.assert_allclose(naive_deletion(model, expl[:4], steps),
                               lm.deletion(model, expl[:4], steps=steps, softmax=True).scores, atol=1e-5)

    # ---------------------------------------------------------------- Captum peers
    try:
        from captum.metrics import infidelity, sensitivity_max
        from captum.attr import Saliency
    except ImportError:  # pragma: no cover
        infidelity = None
    m, R = 16, 16
    xs, es = x[:m], expl[:m]
    tgt = torch.as_tensor(es.target)
    t_inf = timeit(lambda: lm.infidelity(model, es, n_perturbations=R, noise_std=0.1))
    t_sens = timeit(lambda: lm.max_sensitivity(model, es, n_samples=R, radius=0.02))
    if infidelity is not None:
        def perturb(inputs):
            noise = torch.randn_like(inputs) * 0.1
            return noise, inputs - noise

        attr = torch.as_tensor(es.values)
        t_cinf = timeit(lambda: infidelity(model, perturb, xs, attr, target=tgt, n_perturb_samples=R,
                                           max_examples_per_batch=64, normalize=True))
        sal = Saliency(model)
        t_csens = timeit(lambda: sensitivity_max(sal.attribute, xs, target=tgt, n_perturb_samples=R,
                                                 perturb_radius=0.02, max_examples_per_batch=64))
    else:  # pragma: no cover
        t_cinf = t_csens = float("nan")
    rows.append((f"infidelity, {m} images x {R}", t_inf, "captum.metrics.infidelity", t_cinf))
    rows.append((f"max_sensitivity (saliency), {m} x {R}", t_sens, "captum.metrics.sensitivity_max", t_csens))

    # ---------------------------------------------------------------- ROAD, randomisation
    m8 = 16
    t_road = timeit(lambda: lm.road(model, expl[:m8], steps=10, softmax=True), repeats=1)
    t_road_floor = timeit(lambda: model_passes(model, x[:m8].repeat_interleave(10, 0)))
    rows.append((f"ROAD, {m8} images x 10 steps", t_road, "model passes only", t_road_floor))
    t_rand = timeit(lambda: lm.model_parameter_randomisation(model, expl[:m8], keep_maps=False), repeats=1)
    t_sal = timeit(lambda: lumos.explain(model, x[:m8], method="saliency", target=expl.target[:m8]))
    rows.append((f"randomisation (saliency), {m8} images", t_rand, "5 saliency calls", 5 * t_sal))

    head = f"{'metric':<40}{'lumos s':>10}  {'reference':<32}{'ref s':>9}{'ratio':>8}"
    print(head)
    print("-" * len(head))
    for name, a, ref, b in rows:
        print(f"{name:<40}{a:>10.3f}  {ref:<32}{b:>9.3f}{a / b:>8.2f}")
    print("\nratio = lumos time / reference time (below 1: lumos is faster; against the model passes:"
          " the overhead of building the changed inputs).")


if __name__ == "__main__":
    main()
