"""Benchmark: lumos propagation methods beside Captum and beside one forward + backward pass.

Run: ``python benchmarks/bench_propagation.py`` (CPU, one torch thread by default;
``LUMOS_BENCH_THREADS=n`` to change, ``LUMOS_BENCH_REPEATS`` for the rounds, default 7).

Guided backprop, DeconvNet, LRP (four composites), DeepLIFT and DeepSHAP from ``lumos.explain``
against Captum's ``GuidedBackprop``, ``Deconvolution``, ``LRP`` (its default ε rules),
``DeepLift`` and ``DeepLiftShap``, on the same model, batch (16 images of 64x64) and targets.
The unit is one forward + backward pass to the input on the batch as given (what a user's own
gradient costs). lumos feeds 4-D batches to CNNs in channels-last layout on CPU (faster oneDNN
kernels), so the same pass on a channels-last batch is timed too: ``lumos / (f+b)*`` is the
like-for-like cost of the rules. The lumos numbers include everything a user pays for: input
checks, the model guard, target resolution and the Explanation.

Timing: ``benchmarks/_timing.py`` — every contender of a row in one process, interleaved, the
order rotated each round, one warm-up round, the minimum over the rounds, machine load printed.
"""
from __future__ import annotations

import os
import sys
import warnings

import torch

import lumos

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, header, set_threads  # noqa: E402

warnings.filterwarnings("ignore")
set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "7"))


def load():
    from lumos.data import load_demo_model, shapes_dataset  # shipped with the package

    x = shapes_dataset(16, split="test", seed=0).images
    return load_demo_model().eval(), x, "shipped demo CNN, 16 shapes test images (64x64)"


def main(only: list[str] | None = None):
    model, x, note = load()
    with torch.no_grad():
        target = model(x).argmax(1)

    def fwd_bwd(fmt=torch.contiguous_format):
        xg = x.contiguous(memory_format=fmt).requires_grad_(True)
        out = model(xg)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)

    def fwd_bwd_cl():
        fwd_bwd(torch.channels_last)

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
        ("lrp", {"composite": "epsilon"}, lambda: ca.LRP(model).attribute(x, target=target)),
        ("lrp", {"composite": "epsilon_gamma_box", "low": 0.0, "high": 1.0}, None),
        ("lrp", {"composite": "epsilon_alpha2_beta1"}, None),
        ("deeplift", {}, lambda: ca.DeepLift(model).attribute(x, baselines=base, target=target)),
        ("deep_shap", {"background": bg},
         lambda: ca.DeepLiftShap(model).attribute(x, baselines=bg, target=target)),
    ]
    print(header(f"propagation methods: {note}; batch {len(x)}; torch threads "
                 f"{torch.get_num_threads()}; {REPEATS} rounds"))
    rows = []
    for name, params, peer_fn in cases:
        label = name + (f" ({params['composite']})" if "composite" in params else "")
        if name == "deep_shap":
            label += f" ({len(bg)} baselines)"
        if only and not any(o in label for o in only):
            continue

        def ours(name=name, params=params):
            return lumos.explain(model, x, name, target=target, **params)

        fns = {"f+b": fwd_bwd, "f+b*": fwd_bwd_cl, "lumos": ours}
        if ca is not None and peer_fn is not None:
            fns["captum"] = peer_fn
        t = compare(fns, repeats=REPEATS)
        print(f"\n{label}\n{t.table(against='f+b')}")
        rows.append((label, t))

    head = (f"{'method':<40} {'lumos ms':>9} {'captum ms':>10} {'captum/lumos':>13} "
            f"{'lumos/(f+b)':>12} {'lumos/(f+b)*':>13} {'captum/(f+b)':>13}")
    print("\n" + head)
    print("-" * len(head))
    # every row times the same two passes: the least disturbed of all their runs is the unit
    fb = min(t.best("f+b") for _, t in rows)
    fbc = min(t.best("f+b*") for _, t in rows)
    for label, t in rows:
        lm = t.best("lumos")
        if "captum" in t.runs:
            cm = t.best("captum")
            peer = f"{cm * 1e3:10.1f} {cm / lm:13.2f}"
            pr = f"{cm / fb:13.2f}"
        else:
            peer, pr = f"{'-':>10} {'-':>13}", f"{'-':>13}"
        print(f"{label:<40} {lm * 1e3:9.1f} {peer} {lm / fb:12.2f} {lm / fbc:13.2f} {pr}")
    print(f"\nMinimum over the rounds of each contender, all contenders of a row interleaved. "
          f"f+b: one forward + backward pass on the batch as given ({fb * 1e3:.1f} ms), f+b*: on "
          f"a channels-last batch ({fbc * 1e3:.1f} ms); each the minimum over every row's rounds.")
    print("Captum's LRP applies its default ε rule (1e-9) to every layer; it is shown beside "
          "lumos' epsilon_plus and epsilon composites. DeepSHAP costs scale with the baselines.")


if __name__ == "__main__":
    main(sys.argv[1:] or None)
