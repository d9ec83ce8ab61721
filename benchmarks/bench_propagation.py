"""Benchmark: lumos propagation methods beside Captum, on the demo CNN.

Run: ``python benchmarks/bench_propagation.py`` (CPU, one thread by default;
LUMOS_BENCH_THREADS=n to change; CPU time of the process by default, LUMOS_BENCH_CLOCK=wall for
wall-clock time).

Guided backprop, DeconvNet, LRP (three composites), DeepLIFT and DeepSHAP from ``lumos.explain``
against Captum's ``GuidedBackprop``, ``Deconvolution``, ``LRP`` (its default ε rules),
``DeepLift`` and ``DeepLiftShap``, on the same model and batch (16 images of 64x64), and against
the cost of one forward + backward pass to the input on the batch as given (contiguous). lumos
feeds 4-D batches to CNNs in channels-last layout on CPU (faster oneDNN kernels); the
channels-last forward + backward pass is printed too, for a like-for-like reading. The lumos
numbers include everything a user pays for: input checks, the model guard, target resolution and
the Explanation. Median of a few repeats after a warm-up.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

import lumos

torch.set_num_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))


# CPU time of this process by default: with one torch thread it is the compute time, and it does
# not count the time other processes on a shared machine take the core (LUMOS_BENCH_CLOCK=wall
# for wall-clock time).
_CLOCK = time.perf_counter if os.environ.get("LUMOS_BENCH_CLOCK") == "wall" else time.process_time


def _once(fn):
    t0 = _CLOCK()
    fn()
    return _CLOCK() - t0


def interleaved(fns, rounds=7):
    """Median time of each function, timed in turn round after round (on a shared machine the
    load then hits every contender alike), and the median of the per-round ratios to ``fns[0]``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in fns:
            if fn is not None:
                fn()  # warm-up
        times = [[] for _ in fns]
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                if fn is not None:
                    times[i].append(_once(fn))
    med = [statistics.median(t) if t else None for t in times]
    ratios = [statistics.median([a / b for a, b in zip(t, times[0])]) if t else None
              for t in times]
    return med, ratios


def load():
    from lumos.data import DemoCNN

    try:
        from lumos.data import load_demo_model, shapes_dataset

        model = load_demo_model()
        x = shapes_dataset(16, split="test", seed=0).images
        note = "shipped demo CNN, 16 shapes test images (64x64)"
    except Exception as err:  # weights not built yet: same architecture, random weights
        torch.manual_seed(0)
        model = DemoCNN().eval()
        x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        note = f"random DemoCNN (demo model unavailable: {type(err).__name__})"
    return model.eval(), x, note


def main():
    model, x, note = load()
    with torch.no_grad():
        target = model(x).argmax(1)

    def fwd_bwd(fmt=torch.contiguous_format):
        xg = x.contiguous(memory_format=fmt).requires_grad_(True)
        out = model(xg)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)

    def fwd_bwd_cl():
        fwd_bwd(torch.channels_last)

    rows = []
    try:
        import captum.attr as ca
    except ImportError:  # pragma: no cover
        ca = None
    base = torch.zeros_like(x)
    bg = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    cases = [
        ("guided_backprop", {}, lambda: ca.GuidedBackprop(model).attribute(x, target=target)),
        ("deconvnet", {}, lambda: ca.Deconvolution(model).attribute(x, target=target)),
        ("lrp", {"composite": "epsilon_plus"}, lambda: ca.LRP(model).attribute(x, target=target)),
        ("lrp", {"composite": "epsilon_gamma_box", "low": 0.0, "high": 1.0}, None),
        ("lrp", {"composite": "epsilon_alpha2_beta1"}, None),
        ("lrp", {"composite": "epsilon"}, lambda: ca.LRP(model).attribute(x, target=target)),
        ("deeplift", {}, lambda: ca.DeepLift(model).attribute(x, baselines=base, target=target)),
        ("deep_shap", {"baselines": bg},
         lambda: ca.DeepLiftShap(model).attribute(x, baselines=bg, target=target)),
    ]
    units = []
    for name, params, peer_fn in cases:
        def ours(name=name, params=params):
            return lumos.explain(model, x, name, target=target, **params)

        (unit, t, tp), (_, r_ours, r_peer) = interleaved(
            [fwd_bwd, ours, peer_fn if ca is not None else None])
        units.append(unit)
        label = name + (f" ({params['composite']})" if "composite" in params else "")
        if name == "deep_shap":
            label += f" ({len(bg)} baselines)"
        rows.append((label, t, tp, r_ours, r_peer))
    unit = statistics.median(units)
    (_, unit_cl), (_, r_cl) = interleaved([fwd_bwd, fwd_bwd_cl])

    clock = "wall-clock" if _CLOCK is time.perf_counter else "CPU"
    print(f"model: {note}; batch {len(x)}; torch threads {torch.get_num_threads()}; {clock} time")
    print(f"one forward + backward pass: {unit * 1e3:.1f} ms (the unit below; the same pass on a "
          f"channels-last batch, as lumos feeds CNNs on CPU: {unit_cl * 1e3:.1f} ms, "
          f"{r_cl:.2f} units)\n")
    head = (f"{'method':<40} {'lumos ms':>9} {'captum ms':>10} {'captum/lumos':>13} "
            f"{'lumos/(f+b)':>12} {'captum/(f+b)':>13}")
    print(head)
    print("-" * len(head))
    for label, t, tp, r_ours, r_peer in rows:
        peer_s = f"{tp * 1e3:10.1f}" if tp is not None else f"{'-':>10}"
        ratio = f"{tp / t:13.2f}" if tp is not None else f"{'-':>13}"
        rp = f"{r_peer:13.2f}" if r_peer is not None else f"{'-':>13}"
        print(f"{label:<40} {t * 1e3:9.1f} {peer_s} {ratio} {r_ours:12.2f} {rp}")
    print("\nTimes: medians over rounds that time the forward+backward pass, lumos and Captum in "
          "turn; the cost columns are medians of the per-round ratios.")
    print("Captum's LRP applies its default ε rule (1e-9) to every layer; it is shown beside "
          "lumos' epsilon_plus and epsilon composites. DeepSHAP costs scale with the baselines.")


if __name__ == "__main__":
    main()
