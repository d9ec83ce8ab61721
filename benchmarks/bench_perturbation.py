"""Benchmark: lumos occlusion / feature ablation beside Captum's Occlusion / FeatureAblation, and
the default batch size on large images.

Like with like: the same model (the demo CNN), the same images, the same windows/groups and the
same number of perturbed rows per model call (Captum's ``perturbations_per_eval`` set so that a
call holds as many rows as lumos' default batch), timed by :mod:`_timing` (interleaved, order
rotated, minimum over repeats, machine load printed). Captum's own default (one window per call)
is printed beside it. The batch-size table times lumos occlusion on 128x128 images with the
default batch (sized by bytes) and with fixed batches of 4 to 64 rows.

Run: ``python benchmarks/bench_perturbation.py`` (single-threaded torch; ``--threads N``,
``--repeats R``).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import lumos
from _timing import compare, header, set_threads
from lumos.core.execution import check_batch_size


def occlusion_rows(model, x, repeats):
    from captum.attr import Occlusion

    with torch.no_grad():
        target = model(x).argmax(1)
    bs = check_batch_size(None, row_bytes=x[0].numel() * x.element_size())
    ppe = max(1, bs // len(x))  # Captum puts ppe perturbations of the whole batch in one call
    occ = Occlusion(model)

    def lum():
        return lumos.explain(model, x, method="occlusion", target=target, window=8, stride=4, progress=False)

    def cap(p):
        return occ.attribute(x, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0.0,
                             target=target, perturbations_per_eval=p)

    assert np.allclose(lum().values, cap(ppe).numpy(), atol=1e-4), "lumos and Captum occlusion disagree"
    t = compare({"lumos": lum, f"captum ppe={ppe}": lambda: cap(ppe), "captum ppe=1": lambda: cap(1)},
                repeats)
    return t, bs, ppe


def ablation_rows(model, x, repeats):
    from captum.attr import FeatureAblation

    with torch.no_grad():
        target = model(x).argmax(1)
    H = x.shape[-1]
    labels = np.arange(64).reshape(8, 8).repeat(H // 8, 0).repeat(H // 8, 1)
    fmask = torch.as_tensor(labels)[None, None].expand(1, 3, H, H)
    bs = check_batch_size(None, row_bytes=x[0].numel() * x.element_size())
    ppe = max(1, bs // len(x))
    fa = FeatureAblation(model)

    def lum():
        return lumos.explain(model, x, method="feature_ablation", target=target, groups=labels, progress=False)

    def cap(p):
        return fa.attribute(x, target=target, baselines=0.0, feature_mask=fmask, perturbations_per_eval=p)

    assert np.allclose(lum().values, cap(ppe).numpy(), atol=1e-4), "lumos and Captum ablation disagree"
    t = compare({"lumos": lum, f"captum ppe={ppe}": lambda: cap(ppe), "captum ppe=1": lambda: cap(1)},
                repeats)
    return t, bs, ppe


def batch_size_rows(model, x, repeats):
    def run(bs):
        return lambda: lumos.explain(model, x, method="occlusion", target=0, window=16, stride=16,
                                     batch_size=bs, progress=False)

    default = check_batch_size(None, row_bytes=x[0].numel() * x.element_size())
    fns = {f"default ({default} rows)": run(None)}
    fns.update({f"batch_size={b}": run(b) for b in (4, 8, 16, 64)})
    return compare(fns, repeats)


def speedups(t) -> str:
    """The table, then lumos' speed-up over each peer (best against best)."""
    peers = [k for k in t.runs if k != "lumos"]
    return t.table() + "\n" + "\n".join(f"lumos vs {k}: {t.ratio('lumos', k):.2f}x" for k in peers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    set_threads(args.threads)
    from lumos.data import load_demo_model, shapes_dataset

    model = load_demo_model()
    x = shapes_dataset(16, split="test", watermark="all", seed=0).images
    print(f"demo CNN, torch threads={args.threads}, best of {args.repeats} interleaved rounds")
    for n in (16, 1):
        t, bs, ppe = occlusion_rows(model, x[:n], args.repeats)
        print(header(f"occlusion 8x8 stride 4, {n} image(s) 3x64x64; lumos {bs} rows per call, "
                     f"Captum ppe={ppe} ({ppe * n} rows per call)"))
        print(speedups(t))
        t, bs, ppe = ablation_rows(model, x[:n], args.repeats)
        print(header(f"feature ablation, 64 groups, {n} image(s) 3x64x64; lumos {bs} rows per call, "
                     f"Captum ppe={ppe}"))
        print(speedups(t))
    big = torch.nn.functional.interpolate(x[:4], size=(128, 128), mode="bilinear", align_corners=False)
    t = batch_size_rows(model, big, args.repeats)
    print(header("occlusion 16x16 stride 16, 4 images 3x128x128: default batch vs fixed batches"))
    print(t.table())


if __name__ == "__main__":
    main()
