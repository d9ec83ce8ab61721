"""Benchmark: lumos occlusion / feature ablation beside Captum's Occlusion / FeatureAblation.

Same model (the demo CNN; an untrained DemoCNN-shaped net until the weights ship), same batch of
16 images 64x64, same windows/groups, in one run. For each method it prints the lumos time, the
Captum time with its default ``perturbations_per_eval=1`` (one model call per window) and with a
fair batch (``perturbations_per_eval`` giving the same rows per call as lumos' ``batch_size``),
and the cost of the bare forward passes the perturbations need: the same number of perturbed
inputs, already built, pushed through the model in the same chunks. lumos' overhead over that
floor is what building the perturbed inputs and accumulating the maps costs.

Run: ``python benchmarks/bench_perturbation.py`` (single-threaded torch for stable timings;
``--threads N`` to change, ``--repeats R``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

import lumos


def demo_model() -> tuple[nn.Module, str]:
    try:
        from lumos.data import load_demo_model

        return load_demo_model(), "trained demo CNN"
    except Exception:  # weights not shipped yet
        pass
    try:
        from lumos.data import DemoCNN

        torch.manual_seed(0)
        return DemoCNN().eval(), "untrained DemoCNN"
    except Exception:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 4),
        )
        return net.eval(), "untrained DemoCNN-like net"


def images(n: int) -> torch.Tensor:
    try:
        from lumos.data import shapes_dataset

        return shapes_dataset(n, split="test", watermark="all", seed=0).images
    except Exception:
        return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def interleaved(fns: dict, repeats: int) -> dict:
    """Median time of each function; rounds call every function once, so load drifts on a shared
    machine hit all of them alike. One warm-up round first."""
    times = {k: [] for k in fns}
    for r in range(repeats + 1):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bare_forward(model, stacked: torch.Tensor, batch_size: int, channels_last: bool = False):
    """The floor: the perturbed inputs, prebuilt, through the model in the same chunks (and, for
    ``channels_last``, in the layout lumos feeds conv nets on CPU)."""
    def run():
        with torch.inference_mode():
            for s in range(0, len(stacked), batch_size):
                xb = stacked[s:s + batch_size]
                model(xb.contiguous(memory_format=torch.channels_last) if channels_last else xb)
    return run


def occlusion_case(model, x, bs, ppe, repeats, win=8, stride=4):
    from captum.attr import Occlusion

    with torch.no_grad():
        target = model(x).argmax(1)
    lum = lambda: lumos.explain(model, x, method="occlusion", target=target, window=win,  # noqa: E731
                                stride=stride, batch_size=bs, progress=False)
    occ = Occlusion(model)
    cap = lambda p: occ.attribute(x, sliding_window_shapes=(3, win, win),  # noqa: E731
                                  strides=(3, stride, stride), baselines=0.0, target=target,
                                  perturbations_per_eval=p)
    e = lum()
    assert np.allclose(e.values, cap(1).numpy(), atol=1e-4), "lumos and Captum occlusion disagree"
    layout = e.meta["memory_format"]
    starts = range(0, x.shape[-1] - win + 1, stride)
    stacked = []
    for i in range(len(x)):
        for r in starts:
            for c in starts:
                xx = x[i].clone()
                xx[:, r:r + win, c:c + win] = 0
                stacked.append(xx)
    stacked = torch.stack(stacked)
    t = interleaved({"lumos": lum, "captum": lambda: cap(1), "captum_fair": lambda: cap(ppe),
                     "forward": bare_forward(model, stacked, bs),
                     "forward_cl": bare_forward(model, stacked, bs, True)}, repeats)
    return len(stacked), t, layout


def ablation_case(model, x, bs, ppe, repeats):
    from captum.attr import FeatureAblation

    with torch.no_grad():
        target = model(x).argmax(1)
    labels = np.arange(64).reshape(8, 8).repeat(8, 0).repeat(8, 1)
    fmask = torch.as_tensor(labels)[None, None].expand(1, 3, 64, 64)
    lum = lambda: lumos.explain(model, x, method="feature_ablation", target=target,  # noqa: E731
                                groups=labels, batch_size=bs, progress=False)
    fa = FeatureAblation(model)
    cap = lambda p: fa.attribute(x, target=target, baselines=0.0, feature_mask=fmask,  # noqa: E731
                                 perturbations_per_eval=p)
    e = lum()
    assert np.allclose(e.values, cap(1).numpy(), atol=1e-4), "lumos and Captum ablation disagree"
    layout = e.meta["memory_format"]
    stacked = []
    for i in range(len(x)):
        for g in range(64):
            xx = x[i].clone()
            xx[:, torch.as_tensor(labels == g)] = 0
            stacked.append(xx)
    stacked = torch.stack(stacked)
    t = interleaved({"lumos": lum, "captum": lambda: cap(1), "captum_fair": lambda: cap(ppe),
                     "forward": bare_forward(model, stacked, bs),
                     "forward_cl": bare_forward(model, stacked, bs, True)}, repeats)
    return len(stacked), t, layout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, model_desc = demo_model()
    x = images(16)
    bs = args.batch_size
    rows = []
    for n in (16, 1):
        ppe = max(1, bs // n)  # Captum evaluates ppe perturbations of the whole batch per call
        k, t, layout = occlusion_case(model, x[:n], bs, ppe, args.repeats)
        rows.append((f"occlusion 8x8/4, batch {n}", k, ppe, t))
        k, t, layout = ablation_case(model, x[:n], bs, ppe, args.repeats)
        rows.append((f"feature ablation 64, batch {n}", k, ppe, t))

    print(f"model: {model_desc}; images 3x64x64; lumos batch_size={bs} rows per call ({layout}); "
          f"Captum default perturbations_per_eval=1 and fair ppe = {bs} rows per call; torch "
          f"threads={args.threads}; median of {args.repeats} interleaved rounds")
    print("forward s: the bare forward passes of the same perturbed inputs (prebuilt, same chunks), "
          "contiguous / channels-last; lumos/fwd against the layout lumos used")
    head = (f"{'method':<30}{'inputs':>7}{'lumos s':>9}{'captum s':>10}{'ratio':>7}"
            f"{'ppe':>5}{'fair s':>9}{'ratio':>7}{'forward s':>11}{'fwd CL s':>10}{'lumos/fwd':>11}")
    print(head)
    print("-" * len(head))
    for name, k, ppe, t in rows:
        floor = t["forward_cl"] if layout == "channels_last" else t["forward"]
        print(f"{name:<30}{k:>7}{t['lumos']:>9.3f}{t['captum']:>10.3f}{t['captum'] / t['lumos']:>6.2f}x"
              f"{ppe:>5}{t['captum_fair']:>9.3f}{t['captum_fair'] / t['lumos']:>6.2f}x"
              f"{t['forward']:>11.3f}{t['forward_cl']:>10.3f}{t['lumos'] / floor:>11.3f}")


if __name__ == "__main__":
    main()
