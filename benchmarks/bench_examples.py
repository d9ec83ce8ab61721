"""Benchmark: lumos example-based explanations beside their peers.

Counterfactuals (:func:`bench_counterfactuals`): lumos beside DiCE (``dice-ml``) on the credit
world, the same fitted pipeline (OneHotEncoder + HistGradientBoosting), the same rejected
applicants (the lowest predicted probabilities of repaying among held-out rows), the same request
(3 counterfactuals of the other class, ``district`` (the protected attribute's proxy) and ``age``
held fixed) and the **same budget**: a wrapper counts the rows DiCE's search hands the model for
each applicant, and lumos gets ``budget=`` that count. Each of DiCE's three model-agnostic
methods faces its lumos counterpart: random ↔ random, genetic ↔ genetic, kdtree ↔ kdtree.
Quality is measured by one function for both (this file's :func:`quality`): validity (share of
the requested counterfactuals returned that the model gives the desired class and that keep the
fixed features), sparsity (features changed), proximity (MAD-scaled L1 over the background, 1 per
changed category). Time: ``benchmarks/_timing.py`` (interleaved, order rotated, one round: a DiCE
search takes seconds), with the machine load.

Run: ``python benchmarks/bench_examples.py [--part counterfactuals] [--applicants 6]``.
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
from _timing import compare, header, set_threads  # noqa: E402


# ---------------------------------------------------------------------- counterfactuals
class _Counting:
    """The model, counting the rows it is asked to score (DiCE's evaluations)."""

    def __init__(self, model):
        self.model, self.rows = model, 0

    def predict_proba(self, X):
        self.rows += len(X)
        return self.model.predict_proba(X)

    def predict(self, X):
        self.rows += len(X)
        return self.model.predict(X)


def quality(model, x: pd.DataFrame, cfs: pd.DataFrame, background: pd.DataFrame, fixed, n: int,
            desired: int = 1) -> dict:
    """Validity, sparsity and proximity of ``cfs`` for ``x``, the same for every contender."""
    cols = list(x.columns)
    if cfs is None or not len(cfs):
        return {"valid": 0.0, "returned": 0, "sparsity": np.nan, "proximity": np.nan}
    cfs = cfs[cols].reset_index(drop=True)
    num = [c for c in cols if pd.api.types.is_numeric_dtype(background[c])]
    cat = [c for c in cols if c not in num]
    B = background[num].to_numpy(float)
    mad = np.median(np.abs(B - np.median(B, 0)), 0)
    mad = np.where(mad > 0, mad, np.where(np.mean(np.abs(B - B.mean(0)), 0) > 0,
                                          np.mean(np.abs(B - B.mean(0)), 0), 1.0))
    xn = x[num].to_numpy(float)
    Zn = cfs[num].to_numpy(float)
    changed_num = np.abs(Zn - xn) > 1e-9 * (1 + np.abs(xn))
    changed_cat = cfs[cat].astype(str).to_numpy() != x[cat].astype(str).to_numpy()
    prox = (np.abs(Zn - xn) / mad).sum(1) + changed_cat.sum(1)
    ok = model.predict(cfs.astype(x.dtypes.to_dict())) == desired
    for c in fixed:
        ok &= (cfs[c].astype(str) == str(x[c].iloc[0])).to_numpy()
    return {"valid": float(ok.sum()) / n, "returned": len(cfs),
            "sparsity": float((changed_num.sum(1) + changed_cat.sum(1)).mean()),
            "proximity": float(prox.mean())}


def bench_counterfactuals(args) -> None:
    import dice_ml

    from lumos.agnostic._demo import _fit_credit_model
    from lumos.data.credit import credit_dataset
    from lumos.examples import counterfactuals

    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    world = credit_dataset(args.n, seed=0)
    X, y = world.X, world.y
    split = int(0.8 * len(X))
    model = _fit_credit_model(X.iloc[:split], y[:split])
    background = X.iloc[:split].reset_index(drop=True)
    p = model.predict_proba(X.iloc[split:])[:, 1]
    rows = [split + int(i) for i in np.argsort(p)[:args.applicants]]
    fixed = ["district", "age"]
    vary = [c for c in X.columns if c not in fixed]
    counting = _Counting(model)
    frame = background.copy()
    frame["repaid"] = y[:split]
    data = dice_ml.Data(dataframe=frame, continuous_features=[c for c in X.columns if X[c].dtype.kind in "if"],
                        outcome_name="repaid")
    dmodel = dice_ml.Model(model=counting, backend="sklearn")
    n = 3
    print(header(f"counterfactuals: credit world, {len(rows)} rejected applicants, {n} counterfactuals "
                 f"each, {', '.join(fixed)} fixed, equal budgets"))
    print(f"{'method':<9}{'contender':<8}{'budget':>8}{'valid':>8}{'returned':>10}{'sparsity':>10}"
          f"{'proximity':>11}{'s/applicant':>13}")
    for method in ("random", "genetic", "kdtree"):
        explainer = dice_ml.Dice(data, dmodel, method=method)
        budgets, out = {}, {"dice": [], "lumos": []}

        def dice_run(record=False):
            res = []
            for i in rows:
                counting.rows = 0
                try:
                    r = explainer.generate_counterfactuals(
                        X.iloc[[i]], total_CFs=n, desired_class="opposite", features_to_vary=vary,
                        verbose=False, **({"random_seed": 0} if method == "random" else {}))
                    cf = r.cf_examples_list[0].final_cfs_df
                except Exception as e:  # DiCE raises when it finds nothing
                    cf = None
                    if record:
                        print(f"  dice {method}: applicant {i}: {type(e).__name__}: {str(e)[:80]}")
                budgets[i] = max(counting.rows, 1)
                res.append(cf)
            out["dice"] = res

        def lumos_run():
            out["lumos"] = [counterfactuals(model, X.iloc[[i]], desired=1, method=method,
                                            background=background, n=n, immutable=fixed,
                                            budget=budgets[i], n_iter=10_000, seed=0).counterfactuals
                            for i in rows]

        dice_run(record=True)     # counts DiCE's evaluations: lumos gets the same budget
        t = compare({"dice": dice_run, "lumos": lumos_run}, repeats=1, warmup=0)
        for who in ("dice", "lumos"):
            q = [quality(model, X.iloc[[i]].reset_index(drop=True), cf, background, fixed, n)
                 for i, cf in zip(rows, out[who])]
            mean = {k: np.nanmean([d[k] for d in q]) for k in q[0]}
            print(f"{method:<9}{who:<8}{np.mean(list(budgets.values())):>8.0f}{mean['valid']:>8.2f}"
                  f"{mean['returned']:>10.2f}{mean['sparsity']:>10.2f}{mean['proximity']:>11.2f}"
                  f"{t.best(who) / len(rows):>13.3f}")
        print(f"  time: lumos {t.ratio('lumos', 'dice'):.1f}x faster than DiCE "
              f"(load {t.load_before:.2f} -> {t.load_after:.2f} per core)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="all", choices=["all", "counterfactuals", "influence"])
    ap.add_argument("--n", type=int, default=1500, help="credit-world applicants (counterfactuals)")
    ap.add_argument("--applicants", type=int, default=6, help="rejected applicants explained")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    if args.part in ("all", "counterfactuals"):
        bench_counterfactuals(args)
    if args.part in ("all", "influence") and "bench_influence" in globals():
        globals()["bench_influence"](args)


if __name__ == "__main__":
    main()
