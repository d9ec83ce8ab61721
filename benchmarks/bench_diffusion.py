"""Benchmark: the cost of attributing the guidance direction at one timestep, against one sampler step.

Run: ``python benchmarks/bench_diffusion.py`` (``--picture PATH``: the docs picture instead) (CPU, one thread by default; LUMOS_BENCH_THREADS=n to
change, LUMOS_BENCH_REPEATS=n rounds, LUMOS_BENCH_IMAGES=n images per call).

The shipped DDPM of the shapes silhouettes (``lumos train-demo --diffusion``), ``n`` noisy images
``x_t`` at ``t = 50`` taken from a seeded sampling run (guidance scale 2). One sampler step is one
guided noise prediction (the conditional and the null prediction in one batched call) and the DDPM
update; every attribution explains :class:`lumos.multimodal.diffusion.GuidanceRegion` (the
guidance's change of the predicted clean image, mean over the whole image) at that step. The ratio
is the attribution's time over one sampler step's (a sampling run of ``T = 100`` steps is 100 steps).
Timing by ``benchmarks/_timing.py`` (interleaved, order rotated, minimum over rounds, load printed).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, header, set_threads  # noqa: E402

import lumos  # noqa: E402
from lumos.data.diffusion import guided_eps, load_shapes_ddpm, sample  # noqa: E402
from lumos.multimodal.diffusion import GuidanceRegion, blank_canvas  # noqa: E402

T_EXPLAINED = 50


def bench_guidance(n_images: int = 4, repeats: int = 3, t: int = T_EXPLAINED) -> dict:
    """Time one sampler step and several guidance attributions at timestep ``t``; print and return
    ``{name: (best seconds, ratio to one sampler step)}``."""
    model = load_shapes_ddpm()
    classes = [k % model.n_classes for k in range(n_images)]
    traj = sample(model, classes, seed=0, w=2.0, record=[t], return_trajectory=True)
    x = traj.x_t[t]
    cv = torch.eye(model.n_classes)[classes]
    base = blank_canvas(model, t, n_images, seed=0)
    ab = model.schedule.alphas_cumprod
    a_t, a_p = float(ab[t]), float(ab[t - 1])

    def sampler_step():
        with torch.no_grad():
            eps = guided_eps(model, x, t, cv, 2.0)
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            beta = 1 - a_t / a_p
            return (a_p ** 0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_p) / (1 - a_t)) * x

    region = GuidanceRegion(model, t, 0, None, w=2.0)  # one class for all rows (a timing, not a demo)
    fns = {
        "sampler step (DDPM, guided)": sampler_step,
        "saliency": lambda: lumos.explain(region, x, "saliency"),
        "integrated_gradients (16 steps)": lambda: lumos.explain(region, x, "integrated_gradients", n_steps=16,
                                                                 baselines=base),
        "integrated_gradients (32 steps)": lambda: lumos.explain(region, x, "integrated_gradients", n_steps=32,
                                                                 baselines=base),
        "occlusion (window 4, stride 4)": lambda: lumos.explain(region, x, "occlusion", window=4, stride=4),
        "IG on the condition (16 steps)": lambda: lumos.explain(
            GuidanceRegion(model, t, None, None, w=2.0, wrt="condition"), cv, "integrated_gradients",
            n_steps=16, forward_args=(x,)),
    }
    timings = compare(fns, repeats=repeats)
    step = timings.best("sampler step (DDPM, guided)")
    print(header(f"guidance attribution at t = {t} vs one sampler step, {n_images} images of 32x32, "
                 f"{torch.get_num_threads()} thread(s)"))
    out = {}
    for name in fns:
        best = timings.best(name)
        out[name] = (best, best / step)
        print(f"{name:<34} best {best * 1e3:8.1f} ms   median {timings.median(name) * 1e3:8.1f} ms   "
              f"{best / step:6.1f}x one sampler step")
    print(f"(machine load {timings.load_before:.2f} -> {timings.load_after:.2f} per core)")
    return out


def guidance_picture(path: str, cls: int = 3, seed: int = 0, timesteps=(90, 70, 50, 30, 10), n_steps: int = 32):
    """The docs picture: a sample of class ``cls`` drawn with ``seed``; the region is where its
    shape ends up (the finished sample above 0); IG of the guidance's push on that region at each
    timestep. Prints the region's value per timestep and the demo classifier's reading."""
    import matplotlib

    matplotlib.use("Agg")
    from lumos.data.diffusion import demo_silhouette_classifier, to_unit
    from lumos.multimodal.diffusion import explain_guidance

    model = load_shapes_ddpm()
    final = sample(model, [cls], seed=seed, w=2.0)
    region = (final[0, 0] > 0).numpy().astype(float)
    g = explain_guidance(model, [cls], seed=seed, timesteps=list(timesteps), masks=region, n_steps=n_steps, w=2.0)
    with torch.no_grad():
        read = int(demo_silhouette_classifier()(to_unit(torch.as_tensor(g.images))).argmax(1)[0])
    fig = g.plot()
    fig.savefig(path, dpi=110)
    print(f"picture {path}: class {model.class_names[cls]}, seed {seed}, read as {model.class_names[read]}; "
          f"region (mean guidance change of x0 on the final shape) per timestep "
          + ", ".join(f"t={t}: {v:+.3f}" for t, v in zip(g.timesteps, g.region[:, 0])))
    return g


if __name__ == "__main__":
    set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
    if "--picture" in sys.argv:
        guidance_picture(sys.argv[sys.argv.index("--picture") + 1])
    else:
        bench_guidance(int(os.environ.get("LUMOS_BENCH_IMAGES", "4")),
                       int(os.environ.get("LUMOS_BENCH_REPEATS", "3")))
