"""Benchmark: lumos.concepts on the demo CNN.

Run: ``python benchmarks/bench_concepts.py`` (CPU, one thread by default; LUMOS_BENCH_THREADS=n to
change, LUMOS_BENCH_REPEATS=n rounds).

Feature visualisation (``bench_feature_visualisation``): optimisation steps per second of
``lumos.concepts.visualise`` on the shipped demo CNN, 8 images of 64x64 (one per channel of
``features.9``), for the pixel and the Fourier parametrisation, without and with the standard
robustness transformations. The peer would be Lucent (``torch-lucent`` 0.1.8, the last release,
2021): it needs ``kornia==0.4.1`` and torchvision (for ``Normalize`` only), and the torchvision
wheels on PyPI do not load on this CPU build of torch 2.13 ("operator torchvision::nms does not
exist"), so it cannot run here. The comparison is instead with the straightforward loop
(:func:`naive_pixel_loop`): sigmoid pixels, Adam, one forward hook on the layer, the whole model
run, the channel means summed: what a user writes by hand. Like with like: the naive loop against
lumos' pixel parametrisation without transformations (same parametrisation, optimiser, objective
and number of steps); the other rows show what the Fourier parametrisation and the
transformations cost on top.

Timing follows ``benchmarks/_timing.py`` (interleaved, order rotated, minimum over rounds, load
printed).
"""
from __future__ import annotations

import os

import torch

from _timing import compare, header, set_threads

set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "5"))

LAYER = "features.9"
CHANNELS = list(range(8))
STEPS = 20


def naive_pixel_loop(model, layer_module, channels, steps, seed=0):
    """Hand-written activation maximisation: sigmoid pixels, Adam, a forward hook."""
    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(len(channels), 3, 64, 64, generator=g) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([p], lr=0.05)
    box = {}
    h = layer_module.register_forward_hook(lambda m, i, o: box.__setitem__("a", o))
    idx = torch.tensor(channels)
    try:
        for _ in range(steps):
            opt.zero_grad()
            model(torch.sigmoid(p))
            a = box["a"]
            score = a[torch.arange(len(idx)), idx].mean((1, 2))
            (-score.sum()).backward()
            opt.step()
    finally:
        h.remove()
    return torch.sigmoid(p).detach()


def bench_feature_visualisation(model) -> None:
    from lumos.concepts import objectives as obj
    from lumos.concepts.visualisation import visualise

    for p in model.parameters():
        p.requires_grad_(False)  # the naive loop gets frozen weights too (lumos freezes them itself)
    objective = obj.channel(LAYER, CHANNELS)
    layer_module = dict(model.named_modules())[LAYER]

    def lumos_run(param, transforms):
        return lambda: visualise(model, objective, shape=(3, 64, 64), batch=len(CHANNELS), n_iter=STEPS,
                                 param=param, transforms=transforms, seed=0, progress=False)

    fns = {
        "naive pixel loop": lambda: naive_pixel_loop(model, layer_module, CHANNELS, STEPS),
        "lumos pixel": lumos_run("pixel", None),
        "lumos fourier": lumos_run("fourier", None),
        "lumos pixel + transforms": lumos_run("pixel", "standard"),
        "lumos fourier + transforms": lumos_run("fourier", "standard"),
    }
    t = compare(fns, repeats=REPEATS)
    print(header(f"feature visualisation: {len(CHANNELS)} images 64x64, {STEPS} steps, demo CNN {LAYER}"))
    print(t.table(against="naive pixel loop"))
    for name in fns:
        print(f"{name:<28} {STEPS / t.best(name):7.1f} steps/s ({len(CHANNELS)} images per step)")


def main() -> None:
    from lumos.data import load_demo_model

    model = load_demo_model()
    bench_feature_visualisation(model)


if __name__ == "__main__":
    main()
