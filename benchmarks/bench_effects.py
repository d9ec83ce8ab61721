"""Benchmark: lumos global effects beside scikit-learn and PyALE, same model and data, one run.

- PDP + ICE (one feature, 50 grid points) and 2-D PDP (20 x 20): lumos (brute) vs
  ``sklearn.inspection.partial_dependence(method="brute")`` on the same grid; and for a stumps
  model the tree recursion (lumos uses it only where it provably equals brute).
- ALE (20 bins; 10 x 10 for a pair), like with like: lumos without a band vs PyALE without its
  interval (``include_CI=False``), and lumos with its 200-replicate bootstrap band vs PyALE with its
  t-interval (``include_CI=True``; different bands, both the full uncertainty answer of each).
- Permutation importance (5 repeats, r2): lumos with a callable metric and with the scorer name
  (either way all permuted copies are stacked and predicted in large chunks) vs
  ``sklearn.inspection.permutation_importance``.
- Partial dependence of 100 boosted stumps: lumos "auto" (which first proves the recursion exact on
  ``X``) vs scikit-learn's recursion alone.
- Friedman's H (all pairs, 50 rows): lumos only (no installed peer computes it).

Every row also gives the cost of the bare model passes the method needs (the same number of rows,
already built, predicted in the same chunks): lumos' time over that floor is its overhead.
Single-threaded (OpenMP and BLAS). Timing by ``benchmarks/_timing.py``: lumos, the peers and the
floor run interleaved in one process, the order rotated each round, after a warm-up round; the
fastest round of each is reported, with the machine load.

Run: ``python benchmarks/bench_effects.py [--n 2000] [--repeats 5]``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, machine_load  # noqa: E402


def model_floor(model, X: pd.DataFrame, rows: int, chunk: int = 8192, method: str = "predict") -> callable:
    """A function predicting ``rows`` rows (tiled from ``X``, built beforehand) in chunks."""
    reps = -(-rows // len(X))
    big = np.tile(X.to_numpy(), (reps, 1))[:rows]
    # one float block per chunk, as the frames lumos hands the model
    parts = [pd.DataFrame(big[s:s + chunk], columns=X.columns) for s in range(0, rows, chunk)]
    fn = getattr(model, method)
    return lambda: [fn(p) for p in parts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="rows of data (default 2000)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from threadpoolctl import threadpool_limits
    from PyALE import ale as pyale

    logging.getLogger("PyALE._ALE_generic").setLevel(logging.WARNING)  # it logs every call at INFO
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.inspection import partial_dependence as sk_pd
    from sklearn.inspection import permutation_importance as sk_pi
    from sklearn.metrics import r2_score

    from lumos.effects import ale, h_statistic, partial_dependence, permutation_importance

    rng = np.random.default_rng(0)
    n, p = args.n, 8
    Xa = rng.normal(size=(n, p))
    Xa[:, 1] = 0.7 * Xa[:, 0] + 0.3 * Xa[:, 1]
    y = Xa[:, 0] ** 2 + np.sin(2 * Xa[:, 1]) + Xa[:, 2] * Xa[:, 3] + 0.5 * Xa[:, 4] + 0.1 * rng.normal(size=n)
    X = pd.DataFrame(Xa, columns=[f"f{j}" for j in range(p)])
    rows = []

    with threadpool_limits(1):
        gbr = GradientBoostingRegressor(n_estimators=100, max_depth=3, random_state=0).fit(X, y)
        stumps = GradientBoostingRegressor(n_estimators=100, max_depth=1, random_state=0).fit(X, y)
        model_desc = f"GradientBoostingRegressor(100 trees, depth 3) on {n} x {p} DataFrame"

        def bench(name, lumos_fn, peers: dict, n_rows: int, model=gbr, note=""):
            fns = {"lumos": lumos_fn, **peers, "floor": model_floor(model, X, n_rows)}
            tm = compare(fns, repeats=args.repeats)
            t = {k: tm.best(k) for k in fns}
            for peer, tp in ([(k, t[k]) for k in peers] or [("-", float("nan"))]):
                rows.append((name, t["lumos"], peer, tp, tp / t["lumos"], n_rows, t["lumos"] / t["floor"], note,
                             tm.load_after))

        # --- PDP + ICE, one feature, 50 points (same grid: lumos' default is scikit-learn's)
        res = partial_dependence(gbr, X, "f0", grid_resolution=50, method="brute")
        ref = sk_pd(gbr, X, ["f0"], kind="both", method="brute", grid_resolution=50)
        assert np.abs(res.average - ref["average"][0]).max() < 1e-10
        bench("PDP+ICE f0 (50 pts)",
              lambda: partial_dependence(gbr, X, "f0", grid_resolution=50, method="brute"),
              {"sklearn brute": lambda: sk_pd(gbr, X, ["f0"], kind="both", method="brute", grid_resolution=50)},
              res.n_evals)
        # --- 2-D PDP, 20 x 20
        res = partial_dependence(gbr, X, ("f2", "f3"), grid_resolution=20, kind="average", method="brute")
        bench("PDP 2-D f2,f3 (20x20)",
              lambda: partial_dependence(gbr, X, ("f2", "f3"), grid_resolution=20, kind="average", method="brute"),
              {"sklearn brute": lambda: sk_pd(gbr, X, ["f2", "f3"], kind="average", method="brute",
                                              grid_resolution=20)},
              res.n_evals)
        # --- recursion on stumps (exact there): lumos auto vs scikit-learn's recursion
        res = partial_dependence(stumps, X, "f0", grid_resolution=50, kind="average")
        assert res.method == "recursion"
        bench("PDP stumps f0 (auto->recursion)",
              lambda: partial_dependence(stumps, X, "f0", grid_resolution=50, kind="average"),
              {"sklearn recursion": lambda: sk_pd(stumps, X, ["f0"], kind="average", method="recursion",
                                                  grid_resolution=50),
               "lumos brute": lambda: partial_dependence(stumps, X, "f0", grid_resolution=50, kind="average",
                                                         method="brute")},
              50 * n, model=stumps, note="lumos checks exactness first")
        # --- ALE 1-D
        res = ale(gbr, X, "f1", bins=20, n_bootstrap=0)
        bench("ALE f1 (20 bins), no band", lambda: ale(gbr, X, "f1", bins=20, n_bootstrap=0),
              {"PyALE (no CI)": lambda: pyale(X, gbr, ["f1"], grid_size=20, plot=False, include_CI=False)},
              res.n_evals)
        bench("ALE f1 (20 bins), with band", lambda: ale(gbr, X, "f1", bins=20, n_bootstrap=200),
              {"PyALE (t-CI)": lambda: pyale(X, gbr, ["f1"], grid_size=20, plot=False, include_CI=True)},
              res.n_evals, note="lumos: 200 bootstrap replicates")
        # --- ALE 2-D
        res = ale(gbr, X, ("f2", "f3"), bins=10, n_bootstrap=0)
        bench("ALE 2-D f2,f3 (10x10)", lambda: ale(gbr, X, ("f2", "f3"), bins=10, n_bootstrap=0),
              {"PyALE": lambda: pyale(X, gbr, ["f2", "f3"], grid_size=10, plot=False)},
              res.n_evals)
        # --- permutation importance
        res = permutation_importance(gbr, X, y, metric=r2_score, n_repeats=5)
        bench("perm. importance (5 rep, r2)",
              lambda: permutation_importance(gbr, X, y, metric=r2_score, n_repeats=5),
              {"sklearn": lambda: sk_pi(gbr, X, y, scoring="r2", n_repeats=5, random_state=0)},
              res.n_evals, note="lumos: callable metric")
        bench("perm. importance, scorer name",
              lambda: permutation_importance(gbr, X, y, metric="r2", n_repeats=5),
              {"sklearn": lambda: sk_pi(gbr, X, y, scoring="r2", n_repeats=5, random_state=0)},
              res.n_evals, note="lumos: scorer replayed on stacked predictions")
        # --- H statistic
        res = h_statistic(gbr, X, n_rows=50)
        bench("Friedman H (50 rows, 28 pairs)", lambda: h_statistic(gbr, X, n_rows=50), {}, res.n_evals)

    print(f"model: {model_desc}; single thread; fastest of {args.repeats} interleaved rounds")
    head = (f"{'method':<34}{'lumos s':>9}  {'peer':<20}{'peer s':>9}{'peer/lumos':>11}"
            f"{'model rows':>11}{'lumos/model':>12}{'load':>6}  note")
    print(head)
    print("-" * len(head))
    for name, tl, peer, tp, ratio, nr, cost, note, load in rows:
        tp_s = f"{tp:9.3f}" if np.isfinite(tp) else f"{'-':>9}"
        ratio_s = f"{ratio:10.2f}x" if np.isfinite(ratio) else f"{'-':>11}"
        print(f"{name:<34}{tl:9.3f}  {peer:<20}{tp_s}{ratio_s}{nr:11d}{cost:11.2f}x{load:6.2f}  {note}")
    print("\npeer/lumos > 1: lumos is faster. lumos/model: lumos time over the bare model passes on the "
          f"same number of rows (1.0 = no overhead). load: 1-minute load per core after the row "
          f"({os.cpu_count()} cores, now {machine_load():.2f}).")


if __name__ == "__main__":
    main()
