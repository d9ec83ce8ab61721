"""Benchmark: lumos.concepts on the demo CNN.

Run: ``python benchmarks/bench_concepts.py`` (CPU, one thread by default; LUMOS_BENCH_THREADS=n to
change, LUMOS_BENCH_REPEATS=n rounds).

Feature visualisation (``bench_feature_visualisation``): optimisation steps per second of
``lumos.concepts.visualise`` on the shipped demo CNN, 8 images of 64x64 (image ``i`` maximises the
mean of channel ``i`` of ``features.9``), 20 steps, beside

* **Lucent** (``torch-lucent`` 0.1.8, its last release, 2021), when installed: ``pip install
  --no-deps torch-lucent==0.1.8 kornia==0.4.1 decorator``. Lucent imports torchvision (for
  ``Normalize``) and IPython (for notebook display); the torchvision wheels on PyPI do not load on
  this CPU build of torch 2.13, so when the real packages are missing the stand-ins in
  ``benchmarks/_lucent_shims`` are put on the path (nothing of them runs in the timed loop). Like
  with like: Lucent's default image (Fourier, decorrelated colours, sd 0.01, ``1/f``, Adam lr
  0.05, as lumos' defaults), ``preprocess=False`` (the demo CNN takes [0, 1] images, no ImageNet
  normalisation), ``fixed_image_size=64`` (Lucent otherwise upsamples every image under 224 px to
  224), the objective ``sum_i channel("features_9", i, batch=i)``; without transformations, and
  each with its own standard transformations (Lucent's: pad 12, jitter 8, scale 0.95-1.05,
  rotate -10..10, jitter 4, for ImageNet-sized images; lumos': sized to the image, see
  ``lumos.concepts.transforms.standard``). Lucent's ``render_vis`` leaves a hook on every module
  of the model after each call (they pile up across calls); each Lucent call runs inside a
  ``ModelGuard``, which removes them, so that every round times the same work.
* the straightforward loop (:func:`naive_pixel_loop`): sigmoid pixels, Adam, one forward hook on
  the layer, the whole model run: what a user writes by hand, against lumos' pixel
  parametrisation without transformations.

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


def import_lucent():
    """Lucent's render, param and objectives modules, or None when it is not installed."""
    import importlib.util
    import sys

    if importlib.util.find_spec("lucent") is None:
        return None
    shims = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lucent_shims")
    for name in ("torchvision", "IPython"):
        try:
            __import__(name)
        except Exception:  # missing, or a wheel that does not load on this torch
            for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[mod]
            if shims not in sys.path:
                sys.path.insert(0, shims)
    from lucent.optvis import objectives, param, render

    return render, param, objectives


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

    fns = {}
    lucent = import_lucent()
    if lucent is not None:
        from lumos.core.torch_model import ModelGuard

        render, param, lobj = lucent
        lucent_objective = sum(lobj.channel(LAYER.replace(".", "_"), c, batch=i) for i, c in enumerate(CHANNELS))

        def lucent_run(transforms):
            def run():
                with ModelGuard(model):  # removes the hooks render_vis leaves on every module
                    return render.render_vis(model, lucent_objective,
                                             param_f=lambda: param.image(64, batch=len(CHANNELS)),
                                             transforms=transforms, thresholds=(STEPS,), preprocess=False,
                                             fixed_image_size=64, show_image=False, progress=False)
            return run

        fns["lucent fourier"] = lucent_run([])
        fns["lucent fourier + transforms"] = lucent_run(None)
    else:
        print("Lucent is not installed (pip install --no-deps torch-lucent==0.1.8 kornia==0.4.1 decorator): "
              "the comparison is with the hand-written loop only")
    fns.update({
        "naive pixel loop": lambda: naive_pixel_loop(model, layer_module, CHANNELS, STEPS),
        "lumos pixel": lumos_run("pixel", None),
        "lumos fourier": lumos_run("fourier", None),
        "lumos pixel + transforms": lumos_run("pixel", "standard"),
        "lumos fourier + transforms": lumos_run("fourier", "standard"),
    })
    t = compare(fns, repeats=REPEATS)
    print(header(f"feature visualisation: {len(CHANNELS)} images 64x64, {STEPS} steps, demo CNN {LAYER}"))
    print(t.table(against="lucent fourier" if lucent is not None else "naive pixel loop"))
    for name in fns:
        print(f"{name:<28} {STEPS / t.best(name):7.1f} steps/s ({len(CHANNELS)} images per step)")


def main() -> None:
    from lumos.data import load_demo_model

    model = load_demo_model()
    bench_feature_visualisation(model)


if __name__ == "__main__":
    main()
