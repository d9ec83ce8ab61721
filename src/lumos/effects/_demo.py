"""The global-effects section of ``lumos demo``: what the tabular demo model (the credit world's
gradient-boosting pipeline) learned, feature by feature, checked against the known formula."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["effects_demo"]

_CATEGORICAL = ["employment", "housing", "district"]


def _fit_model(X, y):
    """The tabular demo model: the same pipeline as the model-agnostic demo."""
    try:
        from ..agnostic._demo import _fit_credit_model

        return _fit_credit_model(X, y)
    except ImportError:  # the model-agnostic demo is absent: build the same recipe here
        from sklearn.compose import make_column_transformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder

        prep = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), _CATEGORICAL),
                                       remainder="passthrough")
        gbm = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_depth=3, random_state=0)
        return make_pipeline(prep, gbm).fit(X, y)


def _centred(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    return v - np.average(v, weights=w)


def effects_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """PDP/ICE, ALE, permutation importance and Friedman's H of the credit-world model.

    The credit world's log-odds are a known formula: additive terms, one interaction
    (debt ratio × self-employed) and one ignored column (age). The model is explained through
    its decision function (log-odds), so its global effects can be set beside the formula's.

    Parameters
    ----------
    out_dir : Path
        Where the pictures go.
    quick : bool, default False
        The tour form: smaller data and grids, fewer repeats and rows.
    files : dict, optional
        Receives ``path -> what it shows`` for every picture written.

    Returns
    -------
    list of str
        Summary lines, the pictures written last.
    """
    from threadpoolctl import threadpool_limits

    from ..data.credit import credit_dataset
    from . import ale, h_statistic, partial_dependence, permutation_importance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    lines = ["credit world, gradient-boosting pipeline, explained on the log-odds scale"]
    # A few OpenMP threads fight over shared cores; one thread is faster and reproducible.
    with threadpool_limits(1):
        n = 2000 if quick else 4000
        world = credit_dataset(n, seed=0)
        split = int(0.8 * n)
        Xtr, Xte, ytr, yte = world.X.iloc[:split], world.X.iloc[split:], world.y[:split], world.y[split:]
        model = _fit_model(Xtr, ytr)
        data = Xtr.iloc[: (400 if quick else 800)]
        kw = dict(output="decision_function")

        # 1. ALE against the formula's own additive terms (centred the same way)
        from ..data.credit import _terms

        ales = {f: ale(model, data, f, **kw) for f in ("income", "debt_ratio", "late_payments", "age")}
        for f in ("income", "debt_ratio", "late_payments"):
            r = ales[f]
            edges = r.grid[0]
            probe = data.iloc[np.zeros(len(edges), int)].copy()
            probe[f] = edges.astype(probe[f].dtype)
            true = _terms(probe)[f]
            if f == "debt_ratio":  # the interaction adds the self-employed share of its slope
                share = float((data["employment"] == "self-employed").mean())
                true = true - 5.0 * share * np.maximum(edges - 0.3, 0)
            # weight each edge by the rows next to it, so sparse extremes count as little as they should
            counts = np.concatenate([[r.counts[0]], r.counts]) + np.concatenate([r.counts, [r.counts[-1]]])
            err = _centred(r.values, counts) - _centred(true, counts)
            lines.append(f"ALE of {f:<14s} vs the formula's term: RMS diff {np.sqrt(np.average(err ** 2, weights=counts)):.2f} "
                         f"log-odds over a range of {np.ptp(true):.2f} (bootstrap band ±{np.median(r.upper - r.lower) / 2:.2f})")
        lines.append(f"ALE of age (ignored by the formula): range {np.ptp(ales['age'].values):.2f} log-odds")
        district = ale(model, data, "district", **kw)
        lines.append("ALE of district, levels ordered by similarity: " + ", ".join(
            f"{lv} {v:+.2f}" for lv, v in zip(district.grid[0], district.values))
            + " (the formula penalises D5/D6 by 0.6-0.7)")

        # 2. PDP + ICE of the interacting feature, split by the partner
        pdp = partial_dependence(model, data, "debt_ratio", grid_resolution=20 if quick else 30, **kw)
        se = (data["employment"] == "self-employed").to_numpy()
        slope = lambda rows: np.polyfit(pdp.grid[0], pdp.ice[rows].mean(0), 1)[0]  # noqa: E731
        lines.append(f"ICE of debt_ratio: mean slope {slope(se):+.1f} for self-employed vs {slope(~se):+.1f} "
                     f"for the others (formula: -9 above 0.3 vs -4): the ICE curves show the interaction")

        # 3. permutation importance on held-out data
        imp = permutation_importance(model, Xte, yte, metric="roc_auc", n_repeats=3 if quick else 5)
        order = imp.ranking()
        lines.append("permutation importance (drop in ROC AUC): " + ", ".join(
            f"{f} {imp.mean[imp.feature_names.index(f)]:.3f}" for f in order[:4])
            + f"; age {imp.mean[imp.feature_names.index('age')]:+.3f} (ranked {order.index('age') + 1}/{len(order)})")

        # 4. interactions: exact on the formula itself, estimated on the fitted model
        pair = tuple(world.interaction)
        hf = h_statistic(world.score_fn, data, n_rows=30 if quick else 50).to_frame()
        hm = h_statistic(model, data, n_rows=30 if quick else 50, **kw)
        h = hm
        frame = hm.to_frame()
        is_pair = [{a, b} == set(pair) for a, b in zip(frame.feature_1, frame.feature_2)]
        rank = int(np.flatnonzero(is_pair)[0]) + 1
        true_h2 = float(hf.h2[[{a, b} == set(pair) for a, b in zip(hf.feature_1, hf.feature_2)]].iloc[0])
        others = float(hf.h2[[{a, b} != set(pair) for a, b in zip(hf.feature_1, hf.feature_2)]].max())
        lines.append(f"Friedman's H² on the formula: {pair[0]} × {pair[1]} {true_h2:.2f}, every other pair "
                     f"<= {others:.0e} (additive)")
        lines.append(f"Friedman's H² on the model: {pair[0]} × {pair[1]} {frame.h2[rank - 1]:.3f}, rank {rank} of "
                     f"{len(frame)} pairs (strongest: {frame.feature_1[0]} × {frame.feature_2[0]} {frame.h2[0]:.3f}; "
                     f"{hm.n_rows} rows, {hm.n_evals} model rows)")

        pictures = _pictures(out_dir, pdp, ales, district, imp, h, model, data)
    files.update(pictures)
    lines.append(f"pictures: {', '.join(Path(p).name for p in pictures)}")
    return ["  " + line for line in lines]


def _pictures(out_dir: Path, pdp, ales, district, imp, h, model, data) -> dict[str, str]:
    """The three effect figures; returns ``path -> what it shows``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from . import ale as ale_fn

    written, what = [], []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    pdp.plot(ax=axes[0], title="PDP + ICE (log-odds)")
    pdp.plot(ax=axes[1], centred=True, title="centred ICE")
    two = ale_fn(model, data, ("debt_ratio", "income"), bins=6, n_bootstrap=0, output="decision_function")
    two.plot(ax=axes[2], title="second-order ALE")
    fig.tight_layout()
    written.append(out_dir / "effects_pdp_ice.png")
    what.append("debt_ratio: partial dependence with ICE curves, centred ICE, and the second-order ALE "
                "of debt_ratio x income")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 5, figsize=(19, 3.4))
    for ax, (name, r) in zip(axes, ales.items()):
        r.plot(ax=ax, title=f"ALE: {name}")
    district.plot(ax=axes[4], title="ALE: district")
    fig.tight_layout()
    written.append(out_dir / "effects_ale.png")
    what.append("ALE curves of income, debt_ratio, late_payments, age (ignored by the formula) and district, "
                "with bootstrap bands")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    imp.plot(ax=axes[0])
    h.plot(ax=axes[1], kind="total")
    h.plot(ax=axes[2], kind="matrix")
    fig.tight_layout()
    written.append(out_dir / "effects_importance_interactions.png")
    what.append("permutation importance (drop in ROC AUC) and Friedman's H: total per feature and the pair matrix")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)
    return {str(p): w for p, w in zip(written, what)}
