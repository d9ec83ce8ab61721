"""Sparse-autoencoder training throughput (activations/s) and metrics: lumos beside SAELens.

Same data (the demo CNN's last block, ``features.10``: 64 channels at 8x8 positions, cached with
:func:`lumos.dictionary.cache_activations`), same architecture (TopK, ``n_features``, ``k``), same
optimiser settings (Adam, lr, batch size, steps). Each library keeps its own TopK details: SAELens
rescales codes by the decoder norm, starts decoder rows at norm 0.1 and weighs its aux-k loss 1.0;
lumos keeps unit-norm decoder rows, starts ``b_dec`` at the geometric median and weighs aux-k 1/32
(Gao et al. 2024). Both count a feature dead after the same window (a quarter of the steps, at most
100), so both run their aux-k loss. The metrics of both trained SAEs are computed by the same lumos functions on
held-out rows (explained variance about the mean, MSE, L0, cosine, dead fraction).

Without SAELens (``pip install sae-lens``; it installs on torch 2.13 CPU without pulling another
torch), lumos is compared with a naive loop: the plain textbook TopK training step (encode, top-k,
decode, MSE, Adam; no aux loss, no decoder normalisation), to show what the extras cost.

    .venv/bin/python benchmarks/bench_dictionary.py [--steps 150] [--batch 1024] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, header, set_threads  # noqa: E402

from lumos.data import load_demo_model, shapes_dataset  # noqa: E402
from lumos.dictionary import SAE, cache_activations, evaluate, train_sae  # noqa: E402
from lumos.dictionary.metrics import cosine_similarity, explained_variance, l0, mse  # noqa: E402


def activations(n_images: int, folder: Path):
    model = load_demo_model()
    data = shapes_dataset(n_images, split="train", seed=0)
    import time

    t0 = time.perf_counter()
    cache = cache_activations(model, data.images, "features.10", folder, batch_size=64, shard_samples=128,
                             progress=False)
    dt = time.perf_counter() - t0
    print(f"cache: {len(cache)} rows of {cache.width} from {n_images} images in {dt:.2f} s "
          f"({len(cache) / dt:,.0f} rows/s, {len(cache.manifest['shards'])} shards)")
    return cache


def naive_topk(x: torch.Tensor, d_sae: int, k: int, steps: int, batch: int, lr: float, seed: int):
    """The textbook TopK step: no aux loss, no decoder normalisation, zero decoder bias."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    W_dec = torch.nn.Parameter(torch.randn(d_sae, d, generator=g) / d ** 0.5)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(d))
    opt = torch.optim.Adam([W_dec, W_enc, b_enc, b_dec], lr=lr)
    for s in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = x[idx]
        pre = (xb - b_dec) @ W_enc + b_enc
        top = pre.topk(k, dim=1)
        f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
        loss = ((f @ W_dec + b_dec - xb) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def rec(r):
        with torch.no_grad():
            pre = (r - b_dec) @ W_enc + b_enc
            top = pre.topk(k, dim=1)
            f = torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))
            return f, f @ W_dec + b_dec
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--features", type=int, default=512)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed of both")
    ap.add_argument("--matched", action="store_true",
                    help="align the settings: SAELens decoder rows at norm 1 (not 0.1); lumos b_dec at 0 and "
                         "the gradient norm clipped at 1 (as SAELens does)")
    args = ap.parse_args()
    set_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lumos-bench-dict-"))
    cache = activations(args.images, tmp / "cache")
    held = torch.as_tensor(activations_held(args))
    x_train = torch.as_tensor(cache.array())
    rows = args.steps * args.batch
    # one dead-feature window for both (lumos's default; SAELens's default, 1000 steps, would keep
    # its aux-k loss off for the whole run and make the comparison one of settings)
    dead_steps = max(1, min(100, args.steps // 4))
    out = {}

    def run_lumos():
        sae = SAE(cache.width, args.features, "topk", k=args.k, seed=args.seed)
        train_sae(sae, cache, n_steps=args.steps, batch_size=args.batch, lr=args.lr, seed=args.seed, progress=False,
                  dead_after=dead_steps * args.batch,
                  init_decoder_bias=None if args.matched else "geometric_median",
                  max_grad_norm=1.0 if args.matched else None)
        out["lumos"] = sae.eval()

    fns = {"lumos": run_lumos}
    try:
        import sae_lens
        from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig

        peer = f"sae_lens {sae_lens.__version__}"

        def run_peer():
            torch.manual_seed(args.seed)  # SAELens initialises from the global RNG
            cfg = TopKTrainingSAEConfig(d_in=cache.width, d_sae=args.features, k=args.k,
                                        **({"decoder_init_norm": 1.0} if args.matched else {}))
            sae = TopKTrainingSAE(cfg)
            tcfg = SAETrainerConfig(total_training_samples=rows, train_batch_size_samples=args.batch,
                                    lr=args.lr, lr_end=args.lr, device="cpu", n_checkpoints=0,
                                    dead_feature_window=dead_steps)
            provider = cache.batches(args.batch, seed=args.seed, epochs=10 ** 6, drop_last=True)
            import contextlib
            import io

            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                SAETrainer(tcfg, sae, provider).fit()
            out[peer] = sae.eval()

        fns[peer] = run_peer
    except ImportError:
        peer = "naive loop"

        def run_naive():
            out[peer] = naive_topk(x_train, args.features, args.k, args.steps, args.batch, args.lr, 0)
        fns[peer] = run_naive

    t = compare(fns, repeats=args.repeats)
    print(header(f"TopK SAE training: {cache.width} -> {args.features} features, k={args.k}, "
                 f"{args.steps} steps x {args.batch} rows, lr {args.lr}, {args.threads} thread(s)"))
    print(t.table(against=peer))
    for name in fns:
        print(f"{name:<22} {rows / t.best(name):12,.0f} activations/s")
    print(f"\nmetrics on {len(held)} held-out rows (lumos.dictionary.metrics for both):")
    print(f"{'':<22} {'expl.var':>9} {'mse':>10} {'L0':>6} {'cosine':>7} {'dead':>6}")
    for name, sae in out.items():
        with torch.no_grad():
            if isinstance(sae, SAE):
                o = sae(held)
                codes, recon = o.codes, o.recon
            elif callable(sae) and not hasattr(sae, "encode"):
                codes, recon = sae(held)
            else:
                codes = sae.encode(held)
                recon = sae.decode(codes)
        dens = (codes != 0).double().mean(0)
        print(f"{name:<22} {explained_variance(held, recon):9.4f} {mse(held, recon):10.3g} {l0(codes):6.2f} "
              f"{cosine_similarity(held, recon):7.4f} {float((dens == 0).double().mean()):6.3f}")
    m = evaluate(out["lumos"], held)
    assert abs(m.explained_variance - explained_variance(held, out["lumos"](held).recon.detach())) < 1e-6


def activations_held(args) -> np.ndarray:
    """Held-out rows: test-split images through the same layer (no cache needed)."""
    from lumos.core.torch_model import through

    model = load_demo_model()
    data = shapes_dataset(max(50, args.images // 6), split="test", seed=1)
    a = through(model, "features.10", data.images)
    return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).numpy()


if __name__ == "__main__":
    main()
