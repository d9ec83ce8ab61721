"""Benchmark: lumos Grad-CAM and Score-CAM beside Captum and a straightforward Score-CAM loop.

Run: ``python benchmarks/bench_cam.py`` (CPU, one thread by default; LUMOS_BENCH_THREADS=n to change).

- Grad-CAM: ``lumos.explain(..., "gradcam")`` (values already upsampled to the input) against
  Captum's ``LayerGradCam.attribute`` + ``LayerAttribution.interpolate(..., "bilinear")``, and
  against the cost of one forward + backward pass to the input (what a saliency map costs).
- Score-CAM: ``lumos.explain(..., "scorecam")`` (masked passes batched over samples and channels)
  against the straightforward loop: one forward pass per channel per image, as in
  pytorch-grad-cam's default. Captum has no Score-CAM.

On CPU lumos runs float32 conv nets in channels-last layout (about twice as fast with oneDNN);
the table also shows Captum and the forward+backward pass on channels-last inputs, so the layout
gain and the method's own cost can be told apart.

The demo CNN (``lumos.data.load_demo_model``) on a batch of 16 images of 64x64; a randomly
initialised DemoCNN if the shipped weights are missing. Timing follows ``benchmarks/_timing.py``:
every contender of a group runs interleaved in one process, order rotated each round, one warm-up
round discarded; the minimum wall-clock time over the rounds is reported with the machine load.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

import lumos
from _timing import compare, header, set_threads

set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "10"))


def load():
    from lumos.data import DemoCNN

    try:
        from lumos.data import load_demo_model, shapes_dataset

        model = load_demo_model()
        x = shapes_dataset(16, split="test", watermark=False, seed=0).images
        note = "shipped demo CNN, 16 shapes test images"
    except Exception as err:  # weights not built yet: same architecture, random weights
        torch.manual_seed(0)
        model = DemoCNN().eval()
        x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        note = f"random DemoCNN (demo model unavailable: {type(err).__name__})"
    return model.eval(), x, note


def naive_scorecam(model, x, layer, target):
    """One forward pass per channel per image; softmax score minus the black-image score."""
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o.detach()))
    maps = []
    try:
        with torch.no_grad():
            for i in range(len(x)):
                model(x[i:i + 1])
                a = acts["a"][0]
                xi = x[i:i + 1]
                base = torch.softmax(model(torch.zeros_like(xi)), 1)[0, target[i]]
                w = torch.zeros(a.shape[0])
                for k in range(a.shape[0]):
                    up = F.interpolate(a[k][None, None], size=x.shape[2:], mode="bilinear",
                                       align_corners=False)
                    lo, hi = up.min(), up.max()
                    if hi > lo:
                        w[k] = torch.softmax(model(xi * (up - lo) / (hi - lo)), 1)[0, target[i]] - base
                maps.append((w[:, None, None] * a).sum(0))
    finally:
        h.remove()
    return torch.stack(maps)[:, None]


def main():
    from captum.attr import LayerAttribution, LayerGradCam

    model, x, note = load()
    layer_name = model.last_relu  # the layer global average pooling sees (auto-detected too)
    layer = dict(model.named_modules())[layer_name]
    with torch.no_grad():
        target = model(x).argmax(1)
    size = tuple(x.shape[2:])
    print(header(f"{note}; inputs {tuple(x.shape)}; torch threads {torch.get_num_threads()}"))

    def fwd_bwd():
        xi = x.clone().requires_grad_(True)
        s = model(xi).gather(1, target[:, None]).sum()
        torch.autograd.grad(s, xi)

    def fwd():
        with torch.no_grad():
            model(x)

    x_cl = x.contiguous(memory_format=torch.channels_last)

    def fwd_bwd_cl():  # the same pass on channels-last inputs (the layout lumos picks on CPU)
        xi = x_cl.clone().requires_grad_(True)
        s = model(xi).gather(1, target[:, None]).sum()
        torch.autograd.grad(s, xi)

    def lumos_gradcam():
        return lumos.explain(model, x, "gradcam", target=target)

    def lumos_gradcam_at():
        return lumos.explain(model, x, "gradcam", target=target, at=layer_name)

    captum_gc = LayerGradCam(model, layer)

    def captum_gradcam():
        a = captum_gc.attribute(x, target=target)
        return LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")

    def captum_gradcam_cl():
        a = captum_gc.attribute(x_cl, target=target)
        return LayerAttribution.interpolate(a, size, interpolate_mode="bilinear")

    def lumos_scorecam():
        return lumos.explain(model, x, "scorecam", target=target, progress=False)

    def naive():
        return naive_scorecam(model, x, layer, target)

    # Agreement first: the numbers compared are the same numbers.
    e_gc, c_gc = lumos_gradcam(), captum_gradcam()
    gc_diff = float(np.abs(e_gc.values - c_gc.detach().numpy()).max() / np.abs(e_gc.values).max())
    e_sc, n_sc = lumos_scorecam(), naive()
    sc_diff = float(np.abs(e_sc.meta["layer_map"] - n_sc.numpy()).max()
                    / np.abs(e_sc.meta["layer_map"]).max())
    print(f"agreement: Grad-CAM vs Captum max rel. diff {gc_diff:.1e}; "
          f"Score-CAM vs naive loop max rel. diff {sc_diff:.1e}; "
          f"Score-CAM masked passes {e_sc.meta['n_forward']} of {len(x) * 64} (constant maps skipped)")

    # Grad-CAM group: like for like, every contender explains the same 16 images and targets
    g = compare({"fwd": fwd, "fwd_bwd": fwd_bwd, "fwd_bwd_cl": fwd_bwd_cl, "gradcam": lumos_gradcam,
                 "gradcam_at": lumos_gradcam_at, "captum": captum_gradcam,
                 "captum_cl": captum_gradcam_cl}, repeats=REPEATS)
    t_fwd, t_fb, t_fb_cl = g.best("fwd"), g.best("fwd_bwd"), g.best("fwd_bwd_cl")
    t_gc, t_gc_at, t_cap, t_cap_cl = (g.best("gradcam"), g.best("gradcam_at"), g.best("captum"),
                                      g.best("captum_cl"))
    sc = compare({"scorecam": lumos_scorecam, "naive": naive}, repeats=max(1, REPEATS // 3))
    t_sc, t_naive = sc.best("scorecam"), sc.best("naive")
    print(f"(machine load per core: Grad-CAM group {g.load_before:.2f} -> {g.load_after:.2f}, "
          f"Score-CAM group {sc.load_before:.2f} -> {sc.load_after:.2f})")

    rows = [
        ("gradcam (auto layer)", t_gc, "captum LayerGradCam+interpolate", t_cap),
        (f"gradcam (at={layer_name})", t_gc_at, "captum LayerGradCam+interpolate", t_cap),
        (f"gradcam (at={layer_name})", t_gc_at, "captum, channels-last inputs", t_cap_cl),
        ("scorecam", t_sc, "naive loop (1 forward/channel/image)", t_naive),
    ]
    print()
    print(f"{'method':<26}{'lumos s':>10}  {'peer':<38}{'peer s':>9}{'peer/lumos':>12}")
    for name, tl, peer, tp in rows:
        print(f"{name:<26}{tl:>10.4f}  {peer:<38}{tp:>9.4f}{tp / tl:>12.2f}")
    print()
    print(f"one forward pass (no grad):            {t_fwd:.4f} s")
    print(f"one forward+backward pass (to input):  {t_fb:.4f} s")
    print(f"one forward+backward, channels-last:   {t_fb_cl:.4f} s")
    print(f"gradcam / (forward+backward):          {t_gc / t_fb:.2f}x (auto layer), "
          f"{t_gc_at / t_fb:.2f}x (at=)   goal <= 1.2x")
    print(f"gradcam / (forward+backward, same layout): {t_gc / t_fb_cl:.2f}x (auto layer), "
          f"{t_gc_at / t_fb_cl:.2f}x (at=)")
    print(f"scorecam / forward pass:               {t_sc / t_fwd:.1f}x "
          f"({e_sc.meta['n_forward']} masked images = {e_sc.meta['n_forward'] / len(x):.1f} batches of 16)")


if __name__ == "__main__":
    main()
