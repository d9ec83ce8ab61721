"""Model-agnostic explainers beside shap and lime, on the same models and rows, in one run.

    python benchmarks/bench_agnostic.py [--quick] [--rows N] [--repeats R]

1. KernelSHAP on a 16-feature gradient-boosting regressor with a 10-row background: accuracy
   against exact Shapley values (median relative L2 error over the explained rows) and time;
   shap's KernelExplainer at its default (2080 coalitions; l1_reg keeps 10 features) and with
   the same 256 coalitions as lumos (equal budget).
2. KernelSHAP at 64 features (a tanh of a linear score plus pairwise terms, 10-row background),
   2048 coalitions each, shap with ``l1_reg=False`` so that both estimate every value: here the
   per-sample regression and standard errors, not the model, are most of the work.
3. Exact Shapley values: lumos exact_shapley vs shap's ExactExplainer (same model, background;
   full runs only, it takes minutes).
4. Permutation sampling: lumos permutation_shap vs shap's PermutationExplainer (same budget).
5. LIME on tables: lumos lime vs lime's LimeTabularExplainer at equal samples (5000 per row),
   quartile discretisation, same model.

Timing: ``benchmarks/_timing.py`` — lumos and the peer of each row in one process, interleaved,
the order rotated each round, the minimum over the rounds reported (median beside it) with the
machine load. Every run is single-threaded (threadpoolctl) so that timings compare like with like.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, header  # noqa: E402


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


def wide_world(M: int = 64, seed: int = 0):
    """A cheap 64-feature function: the estimator's own work dominates the time."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=M)
    P = rng.normal(size=(M, M)) * (rng.random((M, M)) < 0.05) * 0.3

    def f(X):
        X = np.asarray(X, dtype=np.float64)
        return np.tanh(X @ w / 8) + ((X @ P) * X).sum(1) / M

    return f, rng.normal(size=(500, M))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 rows, 2 rounds, no exact row")
    ap.add_argument("--rows", type=int, default=None, help="explained rows (default 20, quick 4)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 2)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    import lumos

    lumos.methods()  # discover the methods before timing anything
    try:
        import lime.lime_tabular
        import shap
    except ImportError as err:  # pragma: no cover
        sys.exit(f"bench_agnostic needs the peers (pip install -e .[bench]): {err}")

    reps = args.repeats or (2 if args.quick else 3)
    n_rows = args.rows or (4 if args.quick else 20)
    notes = []
    with threadpool_limits(1):
        model, X = gbm_world()
        f = model.predict
        bg, rows = X[:10], X[1000:1000 + n_rows]
        masker = shap.maskers.Independent(bg, max_samples=10)
        # the reference: exact values (lumos agrees with shap's ExactExplainer to 3e-14)
        truth = lumos.explain(f, rows, method="exact_shapley", background=bg).values

        print(header(f"Model-agnostic explainers, {n_rows} rows, single thread, min of {reps} rounds"))
        if not args.quick:
            sh_exact = shap.ExactExplainer(f, masker)
            t = compare({"lumos exact_shapley": lambda: lumos.explain(f, rows, method="exact_shapley", background=bg),
                         "shap ExactExplainer": lambda: sh_exact(rows).values}, reps)
            print("\n-- exact Shapley values, 16 features (65534 coalitions x 10 background rows)")
            print(t.table(against="shap ExactExplainer"))

        # ---- KernelSHAP, 16 features
        ke = shap.KernelExplainer(f, bg)
        out = {}

        def run(key, fn):
            def g():
                out[key] = fn()
            return g

        t = compare({
            "lumos kernel_shap 256": run("k", lambda: lumos.explain(f, rows, method="kernel_shap", background=bg,
                                                                   budget=256).values),
            "lumos kernel_shap auto": run("ka", lambda: lumos.explain(f, rows, method="kernel_shap", background=bg)),
            "shap Kernel 256": run("s256", lambda: np.asarray(ke.shap_values(rows, nsamples=256, silent=True))),
            "shap Kernel default": run("sd", lambda: np.asarray(ke.shap_values(rows, silent=True))),
        }, reps)
        print("\n-- KernelSHAP, 16-feature GradientBoostingRegressor, 10-row background")
        print(t.table(against="shap Kernel 256"))
        print(f"   equal budget (256): lumos {t.ratio('lumos kernel_shap 256', 'shap Kernel 256'):.2f}x faster; "
              f"error {rel_err(out['k'], truth):.4f} vs shap {rel_err(out['s256'], truth):.4f}")
        print(f"   auto-stop vs shap default (2080): {t.ratio('lumos kernel_shap auto', 'shap Kernel default'):.2f}x; "
              f"error {rel_err(out['ka'].values, truth):.4f} (median "
              f"{int(np.median(out['ka'].meta['n_coalitions']))} coalitions) vs shap {rel_err(out['sd'], truth):.4f}")
        kk = lumos.explain(f, rows, method="kernel_shap", background=bg, budget=256)
        cover = np.abs(kk.values - truth) / kk.meta["stderr"]
        notes.append(f"kernel_shap budget=256: |error| < 2 se for {100 * np.mean(cover < 2):.1f}% of values "
                     "(nominal 95.4%)")

        # ---- KernelSHAP, 64 features: the regression's own cost
        fw, Xw = wide_world()
        bgw, rw = Xw[:10], Xw[100:100 + n_rows]
        kw = shap.KernelExplainer(fw, bgw, link="identity")
        t = compare({
            "lumos kernel_shap 2048": lambda: lumos.explain(fw, rw, method="kernel_shap", background=bgw, budget=2048),
            "shap Kernel 2048 l1_reg=False": lambda: ke_all(kw, rw),
        }, reps)
        print("\n-- KernelSHAP, 64 features, 2048 coalitions each (all values estimated by both)")
        print(t.table(against="shap Kernel 2048 l1_reg=False"))

        # ---- permutation sampling at the same budget (10 antithetic pairs = 300 coalitions)
        sh_perm = shap.PermutationExplainer(f, masker, seed=0)
        t = compare({
            "lumos permutation_shap 300": run("p", lambda: lumos.explain(f, rows, method="permutation_shap",
                                                                         background=bg, budget=300).values),
            "shap Permutation 10 pairs": run("sp", lambda: sh_perm(rows, max_evals=2 * 16 * 10 + 1).values),
        }, reps)
        print("\n-- permutation sampling, 16 features, 20 permutations each")
        print(t.table(against="shap Permutation 10 pairs"))
        print(f"   error {rel_err(out['p'], truth):.4f} vs shap {rel_err(out['sp'], truth):.4f}")

        # ---- LIME on tables: equal samples, quartile bins, same model
        train = X[:1000]
        S = 5000
        lt = lime.lime_tabular.LimeTabularExplainer(train, mode="regression", discretize_continuous=True,
                                                    discretizer="quartile", random_state=0)
        # the model alone on samples like LIME's (each column redrawn from the training data;
        # repeated identical rows would flatter the trees' branch prediction)
        pick = np.random.default_rng(0).integers(0, len(train), size=(n_rows * S, train.shape[1]))
        like_lime = train[pick, np.arange(train.shape[1])]
        t = compare({
            "lumos lime all features": run("lm", lambda: lumos.explain(f, rows, method="lime", background=train,
                                                                       n_samples=S, selection="none")),
            "lime LimeTabularExplainer": lambda: [lt.explain_instance(r, f, num_features=16, num_samples=S)
                                                  for r in rows],
            "lumos lime K=6 (K-Lasso)": lambda: lumos.explain(f, rows, method="lime", background=train,
                                                              n_samples=S, n_features=6),
            "lime K=6 (forward sel.)": lambda: [lt.explain_instance(r, f, num_features=6, num_samples=S)
                                                for r in rows],
            "model alone on LIME-like rows": lambda: f(like_lime),
        }, reps)
        print(f"\n-- LIME on tables, {S} samples per row, quartile bins")
        print(t.table())
        print(f"   all features: lumos {t.ratio('lumos lime all features', 'lime LimeTabularExplainer'):.2f}x; "
              f"K=6: lumos {t.ratio('lumos lime K=6 (K-Lasso)', 'lime K=6 (forward sel.)'):.2f}x; "
              f"lumos lime = {t.best('lumos lime all features') / t.best('model alone on LIME-like rows'):.1f}x "
              f"the model's own cost; weighted R² median {np.median(out['lm'].meta['r2']):.2f}")
    print()
    for line in notes:
        print(line)


def ke_all(explainer, rows):
    return np.asarray(explainer.shap_values(rows, nsamples=2048, l1_reg=False, silent=True))


if __name__ == "__main__":
    main()
