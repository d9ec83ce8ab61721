"""Model-agnostic explainers beside shap and lime, on the same models and rows, in one run.

    python benchmarks/bench_agnostic.py [--quick]

1. KernelSHAP on a 16-feature gradient-boosting regressor with a 10-row background: accuracy
   against exact Shapley values (median relative L2 error over the explained rows) and time;
   shap's KernelExplainer at its default (2080 coalitions; l1_reg keeps 10 features) and with
   the same 256 coalitions as lumos.
2. Exact Shapley values: lumos exact_shapley vs shap's ExactExplainer (same model, background).
3. Permutation sampling: lumos permutation_shap vs shap's PermutationExplainer (same budget).
4. LIME on tables: lumos lime vs lime's LimeTabularExplainer at equal samples (5000 per row),
   quartile discretisation, same model.

Every run is single-threaded (threadpoolctl) so that timings compare like with like.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def timeit(fn, repeats: int = 3):
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rel_err(a, b):
    return float(np.median(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


def gbm_world(M: int = 16, n: int = 2000, seed: int = 0):
    """A gradient-boosting regressor on a function with 2- and 3-way interactions."""
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, M))
    y = (X[:, 0] * X[:, 1] + np.sin(X[:, 2]) + X[:, 3] ** 2 + X[:, 4] * X[:, 5] * X[:, 6]
         + 0.5 * X[:, 7:].sum(1) + (X[:, 8] > 0) * X[:, 9] + rng.normal(scale=0.1, size=n))
    return GradientBoostingRegressor(random_state=0).fit(X, y), X


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    import lumos

    lumos.methods()  # discover the methods before timing anything
    try:
        import lime.lime_tabular
        import shap
    except ImportError as err:  # pragma: no cover
        sys.exit(f"bench_agnostic needs the peers (pip install -e .[bench]): {err}")

    reps = 1 if args.quick else 3
    n_rows = 8 if args.quick else 20
    rows_out = []
    with threadpool_limits(1):
        model, X = gbm_world()
        f = model.predict
        bg, rows = X[:10], X[1000:1000 + n_rows]

        # ---- exact values: lumos exact_shapley and shap's ExactExplainer
        t_ex, ex = timeit(lambda: lumos.explain(f, rows, method="exact_shapley", background=bg), reps)
        masker = shap.maskers.Independent(bg, max_samples=10)
        sh_exact = shap.ExactExplainer(f, masker)
        t_shex, shex = timeit(lambda: sh_exact(rows).values, reps)
        truth = ex.values
        rows_out.append(("exact_shapley (16 features, 65534 coalitions)", t_ex, "shap ExactExplainer", t_shex,
                         f"max |lumos - shap| = {np.abs(shex - truth).max():.1e}",
                         f"{int(ex.meta['n_evals'][0])} rows/sample"))

        # ---- KernelSHAP
        ke = shap.KernelExplainer(f, bg)
        t_sk, sk = timeit(lambda: np.asarray(ke.shap_values(rows, silent=True)), reps)
        t_sk256, sk256 = timeit(lambda: np.asarray(ke.shap_values(rows, nsamples=256, silent=True)), reps)
        t_k, k = timeit(lambda: lumos.explain(f, rows, method="kernel_shap", background=bg, budget=256), reps)
        t_ka, ka = timeit(lambda: lumos.explain(f, rows, method="kernel_shap", background=bg), reps)
        rows_out.append(("kernel_shap budget=256", t_k, "shap Kernel default (2080)", t_sk,
                         f"err {rel_err(k.values, truth):.4f} vs shap {rel_err(sk, truth):.4f}",
                         "256 vs 2080 coalitions"))
        rows_out.append(("kernel_shap budget=256", t_k, "shap Kernel nsamples=256", t_sk256,
                         f"err {rel_err(k.values, truth):.4f} vs shap {rel_err(sk256, truth):.4f}",
                         "256 vs 256 coalitions"))
        rows_out.append(("kernel_shap auto (tol 0.01)", t_ka, "shap Kernel default (2080)", t_sk,
                         f"err {rel_err(ka.values, truth):.4f} vs shap {rel_err(sk, truth):.4f}",
                         f"median {int(np.median(ka.meta['n_coalitions']))} coalitions"))
        cover = np.abs(k.values - truth) / k.meta["stderr"]
        se_line = f"kernel_shap budget=256: |error| < 2 se for {100 * np.mean(cover < 2):.1f}% of values (nominal 95.4%)"

        # ---- permutation sampling at the same budget (10 antithetic pairs = 300 coalitions)
        t_p, p = timeit(lambda: lumos.explain(f, rows, method="permutation_shap", background=bg, budget=300), reps)
        sh_perm = shap.PermutationExplainer(f, masker, seed=0)
        t_sp, sp = timeit(lambda: sh_perm(rows, max_evals=2 * 16 * 10 + 1).values, reps)
        rows_out.append(("permutation_shap budget=300", t_p, "shap Permutation 10 pairs", t_sp,
                         f"err {rel_err(p.values, truth):.4f} vs shap {rel_err(sp, truth):.4f}",
                         "20 permutations each"))

        # ---- LIME on tables: equal samples, quartile bins, same model
        train = X[:1000]
        S = 5000
        lt = lime.lime_tabular.LimeTabularExplainer(train, mode="regression", discretize_continuous=True,
                                                    discretizer="quartile", random_state=0)
        t_lp, _ = timeit(lambda: [lt.explain_instance(r, f, num_features=16, num_samples=S) for r in rows], reps)
        t_l, lm = timeit(lambda: lumos.explain(f, rows, method="lime", background=train, n_samples=S,
                                               selection="none"), reps)
        rows_out.append((f"lime tabular, {S} samples/row", t_l, "lime LimeTabularExplainer", t_lp,
                         f"weighted R² median {np.median(lm.meta['r2']):.2f}", f"{n_rows} rows"))
        t_l10, _ = timeit(lambda: lumos.explain(f, rows, method="lime", background=train, n_samples=S,
                                                n_features=6), reps)
        t_lp10, _ = timeit(lambda: [lt.explain_instance(r, f, num_features=6, num_samples=S) for r in rows], reps)
        rows_out.append((f"lime K=6 (K-Lasso), {S} samples/row", t_l10, "lime K=6 (forward sel.)", t_lp10,
                         "", f"{n_rows} rows"))
        # the model alone on samples like LIME's (each column redrawn from the training data;
        # repeated identical rows would flatter the trees' branch prediction)
        pick = np.random.default_rng(0).integers(0, len(train), size=(n_rows * S, train.shape[1]))
        like_lime = train[pick, np.arange(train.shape[1])]
        t_model, _ = timeit(lambda: f(like_lime), reps)

    print(f"\nModel-agnostic explainers on a 16-feature GradientBoostingRegressor, {n_rows} rows, "
          "10-row background, single thread\n")
    head = f"{'lumos':<38} {'time s':>8}  {'peer':<28} {'time s':>8} {'speed-up':>9}  notes"
    print(head)
    print("-" * (len(head) + 40))
    for name, t, peer, tp, acc, note in rows_out:
        print(f"{name:<38} {t:8.3f}  {peer:<28} {tp:8.3f} {tp / t:8.1f}x  {acc}; {note}")
    print()
    print(se_line)
    print(f"model alone on the {n_rows * S} LIME samples: {t_model:.3f} s "
          f"(lumos lime = {t_l / t_model:.1f}x the model's own cost)")


if __name__ == "__main__":
    main()
