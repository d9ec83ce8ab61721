"""TreeSHAP: lumos (pure numpy) against shap.TreeExplainer (C++), same models, same rows.

Times path-dependent and interventional TreeSHAP on 1000 rows x 16 features for 100-tree
ensembles (scikit-learn gradient boosting and random forests; XGBoost and LightGBM when
installed), and prints wall time (median of repeats after a warm-up), CPU time, the ratio and
the largest absolute difference between the two libraries' values.

    python benchmarks/bench_tree_shap.py            # everything (the full-depth forest is slow)
    python benchmarks/bench_tree_shap.py --quick    # without the full-depth forest
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def _timed(fn, repeats):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus)), out


def _shap_values(sv, k):
    sv = np.asarray(sv)
    if sv.ndim == 3:
        sv = sv[..., k] if k is not None else sv[..., 0]
    return sv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--background", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the full-depth random forest")
    args = ap.parse_args()

    import shap
    from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                                  HistGradientBoostingRegressor, RandomForestRegressor)

    from lumos.agnostic.tree_shap import tree_shap

    r = np.random.default_rng(0)
    n, d = args.rows, args.features
    X = r.normal(size=(n, d))
    y = X[:, 0] + X[:, 1] * X[:, 2] + np.sin(2 * X[:, 3]) + 0.5 * X[:, 4] ** 2 + 0.1 * r.normal(size=n)
    yc = (y > np.median(y)).astype(int)
    bg = X[: args.background]

    models = [
        ("GradientBoostingRegressor 100x depth3", GradientBoostingRegressor(n_estimators=100, random_state=0), y),
        ("GradientBoostingClassifier 100x depth5", GradientBoostingClassifier(n_estimators=100, max_depth=5, random_state=0), yc),
        ("HistGradientBoostingRegressor 100 iters", HistGradientBoostingRegressor(max_iter=100, random_state=0), y),
        ("RandomForestRegressor 100x depth8", RandomForestRegressor(n_estimators=100, max_depth=8, random_state=0, n_jobs=1), y),
    ]
    try:
        import xgboost as xgb
        models.append(("XGBRegressor 100x depth6", xgb.XGBRegressor(n_estimators=100, max_depth=6, n_jobs=1), y))
    except ImportError:
        pass
    try:
        import lightgbm as lgb
        models.append(("LGBMRegressor 100x 31 leaves", lgb.LGBMRegressor(n_estimators=100, verbose=-1, n_jobs=1), y))
    except ImportError:
        pass
    if not args.quick:
        models.append(("RandomForestRegressor 100x full depth", RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1), y))

    head = (f"{'model':<40} {'game':<15} {'lumos s':>8} {'shap s':>8} {'ratio':>6} "
            f"{'CPU lumos':>9} {'CPU shap':>9} {'CPU ratio':>9} {'max|diff|':>10} {'lumos gap':>10}")
    print(f"{n} rows x {d} features, background {len(bg)} rows; wall = median of "
          f"{args.repeats} after a warm-up; ratio = shap / lumos (above 1: lumos faster); "
          "lumos gap = max |base + sum(values) - f(x)|")
    print("note: shap returns float32 values for XGBoost models (differences ~1e-6 are its "
          "rounding); lumos computes in float64")
    print(head)
    print("-" * len(head))
    for name, model, target in models:
        model.fit(X, target)
        deep = "full depth" in name
        reps = 1 if deep else args.repeats
        for game in ("path-dependent", "interventional"):
            if game == "interventional" and name.startswith("HistGradient"):
                # shap compares HistGradientBoosting features in float32 against float64 thresholds
                # in this mode and disagrees with brute-force enumeration (see tests); no reference.
                continue
            kw = {} if game == "path-dependent" else {"background": bg}
            tree_shap(model, X[:5], progress=False, **kw)                      # warm-up
            lw, lc, ours = _timed(lambda: tree_shap(model, X, progress=False, **kw), reps)
            if game == "path-dependent":
                make = lambda: shap.TreeExplainer(model)                       # noqa: E731
            else:
                make = lambda: shap.TreeExplainer(model, data=bg,             # noqa: E731
                                                  feature_perturbation="interventional")
            make().shap_values(X[:5], check_additivity=False)                  # warm-up
            sw, sc, ref = _timed(lambda: make().shap_values(X, check_additivity=False), reps)
            diff = np.abs(ours.values - _shap_values(ref, None)).max()
            print(f"{name:<40} {game:<15} {lw:>8.3f} {sw:>8.3f} {sw / lw:>6.1f} "
                  f"{lc:>9.3f} {sc:>9.3f} {sc / lc:>9.1f} {diff:>10.1e} "
                  f"{ours.meta['completeness_gap'].max():>10.1e}", flush=True)


if __name__ == "__main__":
    main()
