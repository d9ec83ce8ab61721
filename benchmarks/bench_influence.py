"""Benchmark: lumos TracIn beside Captum's TracInCP on the same model, data and checkpoints.

Run: ``python benchmarks/bench_influence.py`` (CPU, one thread by default; LUMOS_BENCH_THREADS=n
to change, LUMOS_BENCH_REPEATS=n rounds).

The model is a small CNN (conv 3->8, ReLU, max-pool, conv 8->16, ReLU, global average pool,
linear 16->4; 1,532 parameters) on 16x16 shapes-world images (the demo world downsampled),
trained for three epochs by SGD with a checkpoint after each; influence of 400 training images on
20 test images, every parameter, cross-entropy loss.

Contenders (all compute the same matrix, checked before timing):

- ``lumos vmap``: ``lumos.examples.tracin`` (per-example gradients by ``torch.func.vmap`` of
  ``grad``, dot products in float64);
- ``lumos loop``: the same with ``per_example="loop"`` (one backward pass per example);
- ``captum batched``: ``TracInCP(..., sample_wise_grads_per_batch=True)`` with a summed loss
  (its per-example gradients by hooks on Conv2d/Linear layers);
- ``captum``: ``TracInCP`` with a per-example loss (``reduction="none"``), its default
  gradient path;
- ``lumos projected k=64``: the seeded random-projection variant (timing and correlation with the
  exact scores).

Timing follows ``benchmarks/_timing.py``: interleaved, order rotated, minimum over rounds, machine
load printed.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from _timing import compare, header, set_threads

set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "5"))


def world(n_train=400, n_test=20, seed=0):
    from lumos.data import shapes_dataset

    tr = shapes_dataset(n_train, split="train", seed=seed)
    te = shapes_dataset(n_test, split="test", seed=seed)
    small = lambda im: nn.functional.avg_pool2d(im, 4)  # noqa: E731 - 64x64 -> 16x16
    return small(tr.images), tr.labels, small(te.images), te.labels


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4))


def train(model, x, y, epochs=3, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    cps = []
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        cps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model.eval(), cps


def main():
    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    from lumos.examples import tracin

    xtr, ytr, xte, yte = world()
    model, cps = train(make_model(), xtr, ytr)
    lrs = [0.05] * len(cps)
    n_params = sum(p.numel() for p in model.parameters())

    def load(m, i):
        m.load_state_dict(cps[i])
        return lrs[i]

    twin = make_model().eval()
    data = TensorDataset(xtr, ytr)
    captum_batched = TracInCP(twin, data, list(range(len(cps))), checkpoints_load_func=load,
                              loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=100,
                              sample_wise_grads_per_batch=True)
    twin2 = make_model().eval()
    captum_plain = TracInCP(twin2, data, list(range(len(cps))), checkpoints_load_func=load,
                            loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=100)

    def ours(**kw):
        return tracin(model, cps, (xtr, ytr), (xte, yte), learning_rates=lrs, batch_size=100, **kw).scores

    fns = {
        "lumos vmap": lambda: ours(),
        "lumos loop": lambda: ours(per_example="loop"),
        "captum batched": lambda: captum_batched.influence((xte, yte)),
        "captum": lambda: captum_plain.influence((xte, yte)),
        "lumos projected k=64": lambda: ours(projection_dim=64, seed=0),
    }
    ref = ours()
    scale = np.abs(ref).max()
    print(header(f"TracIn: {len(xtr)} train x {len(xte)} test images 16x16, {len(cps)} checkpoints, "
                 f"{n_params} parameters"))
    for name in ("lumos loop", "captum batched", "captum"):
        other = np.asarray(fns[name]().detach().double() if name.startswith("captum") else fns[name]())
        print(f"max |lumos vmap - {name}| / max |score| = {np.abs(other - ref).max() / scale:.1e}")
    proj = ours(projection_dim=64, seed=0)
    print(f"projected (k=64) vs exact: Pearson r = {np.corrcoef(proj.ravel(), ref.ravel())[0, 1]:.3f}")
    t = compare(fns, repeats=REPEATS)
    print(t.table(against="captum batched"))


if __name__ == "__main__":
    main()
