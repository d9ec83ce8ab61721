"""Benchmark: lumos gradient methods beside Captum, and beside the model passes they need.

Run: ``python benchmarks/bench_gradients.py`` (CPU, one thread by default;
``LUMOS_BENCH_THREADS=2`` to change, ``LUMOS_BENCH_REPEATS`` for the repeats). Timing follows
``benchmarks/_timing.py``: lumos, the peers and the bare passes run interleaved in one process,
their order rotated each round, one warm-up round discarded; the minimum wall-clock time over the
rounds is reported (median beside it) with the machine load.

Each lumos method and its Captum equivalent run on the same model, inputs and targets:

- saliency / gradient × input: Captum ``Saliency(abs=False)`` / ``InputXGradient``.
- integrated gradients (50 steps, Gauss-Legendre, 64 rows per pass): Captum
  ``IntegratedGradients(method="gausslegendre", internal_batch_size=64)``; lumos always reports
  the completeness gap, so Captum is timed both without and with ``return_convergence_delta``.
- SmoothGrad (50 noisy copies): Captum ``NoiseTunnel(Saliency)`` (all copies in one batch, its
  default, and in batches of 64 rows as lumos evaluates them; the faster counts).
- guided backprop / DeconvNet, when lumos registers them: Captum ``GuidedBackprop`` /
  ``Deconvolution``.

"passes" is the time of the forward+backward passes (gradient to the input only) over the rows a
method needs, in the same batches: one pass over the batch for saliency, gradient × input and
guided backprop; 16 × 50 rows for integrated gradients and SmoothGrad. lumos feeds CPU conv nets
channels-last batches (``lumos.core.layout.layout_for``), so "passes*" times the same
passes in that layout, and lumos/passes* is the method's own overhead (input checks, target
resolution, noise, path points, accumulation and, for IG and SmoothGrad, one clean forward pass
over the 16 inputs and the baselines).

The demo CNN (``lumos.data.load_demo_model``) on a batch of 16 images of 3x64x64; a randomly
initialised DemoCNN if the shipped weights are missing.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

import lumos
from lumos.attribution import gradient as gradient_module  # noqa: F401
from lumos.core import layout as layout_module
from _timing import compare, header, set_threads

warnings.filterwarnings("ignore", module="captum")
warnings.filterwarnings("ignore", message=".*requires_grad.*")

set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "5"))
N_STEPS, N_NOISE, BATCH = 50, 50, 64


def load():
    try:
        from lumos.data import load_demo_model, shapes_dataset

        model = load_demo_model()
        x = shapes_dataset(16, split="test", seed=0).images
        note = "shipped demo CNN, 16 shapes test images"
    except Exception as err:  # weights not built yet: same architecture, random weights
        try:
            from lumos.data import DemoCNN
        except ImportError:
            DemoCNN = _DemoCNN
        torch.manual_seed(0)
        model = DemoCNN().eval()
        x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        note = f"random DemoCNN (demo model unavailable: {type(err).__name__})"
    return model.eval(), x, note


class _DemoCNN(torch.nn.Module):
    """The demo architecture, for checkouts without lumos.data."""

    def __init__(self, n_classes=4):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def main():
    from captum.attr import (Deconvolution, GuidedBackprop, InputXGradient, IntegratedGradients,
                             NoiseTunnel, Saliency)

    model, x, note = load()
    n = len(x)
    with torch.no_grad():
        target = model(x).argmax(1)
    flat = x.reshape(n, -1)
    sigma = 0.15 * float((flat.max(1).values - flat.min(1).values).mean())
    print(header(f"{note}; inputs {tuple(x.shape)}; torch threads {torch.get_num_threads()}; "
                 f"wall clock, min of {REPEATS} interleaved rounds"))

    layout = layout_module.layout_for(model, x)

    def passes(rows, bs, fmt=None):
        """forward+backward (to the input) over ``rows`` rows of inputs, ``bs`` at a time."""
        big = x.repeat(-(-rows // n), 1, 1, 1)[:rows]
        if fmt is not None:
            big = big.contiguous(memory_format=fmt)
        tg = target.repeat(-(-rows // n))[:rows]

        def run():
            for s in range(0, rows, bs):
                xi = big[s:s + bs].clone().requires_grad_(True)
                out = model(xi).gather(1, tg[s:s + bs, None]).sum()
                torch.autograd.grad(out, xi)
        return run

    def ig(**kw):
        return cap_ig.attribute(x, target=target, n_steps=N_STEPS, method="gausslegendre",
                                internal_batch_size=BATCH, **kw)

    def nt(**kw):
        return cap_nt.attribute(x, nt_type="smoothgrad", nt_samples=N_NOISE, stdevs=sigma,
                                target=target, abs=False, **kw)

    cap_ig = IntegratedGradients(model)
    cap_nt = NoiseTunnel(Saliency(model))
    # (lumos name, lumos call, [(captum name, captum call)], rows of passes the method needs)
    rows = [
        ("saliency", lambda: lumos.explain(model, x, "saliency", target=target),
         [("Saliency(abs=False)", lambda: Saliency(model).attribute(x, target=target, abs=False))], n),
        ("gradient_x_input", lambda: lumos.explain(model, x, "gradient_x_input", target=target),
         [("InputXGradient", lambda: InputXGradient(model).attribute(x, target=target))], n),
        ("integrated_gradients",
         lambda: lumos.explain(model, x, "integrated_gradients", target=target, n_steps=N_STEPS,
                               batch_size=BATCH, progress=False),
         [("IntegratedGradients", ig),
          ("  + convergence delta", lambda: ig(return_convergence_delta=True))], n * N_STEPS),
        ("smoothgrad",
         lambda: lumos.explain(model, x, "smoothgrad", target=target, n_samples=N_NOISE,
                               noise_level=0.15, batch_size=BATCH, progress=False),
         [("NoiseTunnel(Saliency)", nt),
          ("  in 64-row batches", lambda: nt(nt_samples_batch_size=max(1, BATCH // n)))],
         n * N_NOISE),
    ]
    registered = {m.name for m in lumos.methods()}
    for name, peer in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        if name in registered:
            rows.append((name, lambda name=name: lumos.explain(model, x, name, target=target),
                         [(peer.__name__, lambda peer=peer: peer(model).attribute(x, target=target))],
                         n))
        else:
            print(f"({name} is not registered in lumos yet: skipped)")

    # Agreement first: the numbers compared are the same numbers.
    e = lumos.explain(model, x, "integrated_gradients", target=target, n_steps=N_STEPS,
                      batch_size=BATCH, progress=False)
    c = ig().detach().numpy()
    s_l = lumos.explain(model, x, "saliency", target=target).values
    s_c = Saliency(model).attribute(x, target=target, abs=False).numpy()
    print(f"agreement: IG vs Captum max |diff| / max |IG| {np.abs(e.values - c).max() / np.abs(c).max():.1e};"
          f" saliency vs Captum {np.abs(s_l - s_c).max() / np.abs(s_c).max():.1e}; IG relative "
          f"completeness gap: median {np.nanmedian(e.meta['relative_gap']):.2%}, "
          f"max {np.nanmax(e.meta['relative_gap']):.2%}")
    print("(max-pool windows with exactly tied values route the gradient to one of them; the "
          "memory layout, like float precision, changes which: a different valid subgradient)")
    print(f"lumos feeds this model {'channels-last' if layout is not None else 'contiguous'} "
          "batches; 'passes' is the model's forward+backward passes in the ordinary layout (what "
          "Captum runs), 'passes*' in lumos' layout")

    print()
    head = (f"{'method':<21}{'lumos s':>9}  {'captum':<24}{'captum s':>9}{'captum/lumos':>13}"
            f"{'passes s':>10}{'passes* s':>10}{'lumos/passes':>13}{'lumos/passes*':>14}")
    print(head)
    print("-" * len(head))
    for name, fl, peers, n_rows in rows:
        fns = {"lumos": fl, **{p: f for p, f in peers}, "passes": passes(n_rows, BATCH)}
        if layout is not None:
            fns["passes*"] = passes(n_rows, BATCH, layout)
        t = compare(fns, repeats=REPEATS)
        tl, tpass = t.best("lumos"), t.best("passes")
        tpass_l = t.best("passes*") if layout is not None else tpass
        ts = [tl] + [t.best(p) for p, _ in peers]
        for k, (peer, _) in enumerate(peers):
            tp = ts[1 + k]
            lead = (f"{name:<21}{tl:>9.4f}" if k == 0 else " " * 30)
            tail = (f"{tpass:>10.4f}{tpass_l:>10.4f}{tl / tpass:>13.2f}{tl / tpass_l:>14.2f}"
                    if k == 0 else "")
            print(f"{lead}  {peer:<24}{tp:>9.4f}{tp / tl:>13.2f}{tail}")
        print(f"{'':<30}(machine load {t.load_before:.2f} -> {t.load_after:.2f} per core)")
    print("\ngoals: captum/lumos >= 1 everywhere (clearly > 1 for smoothgrad and guided backprop); "
          "lumos/passes* <= 1.10")


if __name__ == "__main__":
    main()
