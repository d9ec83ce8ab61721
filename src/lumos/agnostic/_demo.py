"""The tabular section of ``lumos demo``: black-box explanations on the credit world, where the
true attributions are known, and on scikit-learn's breast-cancer data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["tabular_demo"]

_CATEGORICAL = ["employment", "housing", "district"]


def _fit_credit_model(X, y):
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    prep = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), _CATEGORICAL),
                                   remainder="passthrough")
    gbm = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_depth=3, random_state=0)
    return make_pipeline(prep, gbm).fit(X, y)


def _pictures(out_dir: Path, explanations: dict, files: dict) -> list[str]:
    """A waterfall of the first row and a beeswarm over all rows, per method."""
    import matplotlib

    matplotlib.use("Agg")  # the demo only writes files
    import matplotlib.pyplot as plt

    from ..display.shap_plots import BarDisplay, BeeswarmDisplay, WaterfallDisplay

    written = []
    for name, expl in explanations.items():
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        # A waterfall needs a base value (Shapley); LIME's surrogate weights have none.
        first = WaterfallDisplay if expl.baseline_output is not None else BarDisplay
        first.from_explanation(expl, index=0).plot(ax=axes[0])
        axes[0].set_title(f"{name}: first applicant")
        BeeswarmDisplay.from_explanation(expl).plot(ax=axes[1])
        axes[1].set_title(f"{name}: all explained applicants")
        path = out_dir / f"tabular_{name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(str(path))
        files[str(path)] = (f"{name} on the credit world: the first applicant's "
                            f"{'waterfall' if first is WaterfallDisplay else 'bar chart'} and a beeswarm of "
                            f"every explained applicant")
    return written


def tabular_demo(out_dir: Path, quick: bool = False, files: dict | None = None) -> list[str]:
    """Explain a gradient-boosting pipeline on the credit world and on breast-cancer data.

    Parameters
    ----------
    out_dir : Path
        Where pictures go (when the tabular displays are available).
    quick : bool, default False
        The tour form: smaller data, fewer explained rows, no breast-cancer part.
    files : dict, optional
        Receives ``path -> what it shows`` for every picture written.

    Returns
    -------
    list of str
        Summary lines: true vs estimated attributions, estimator accuracy and cost, the proxy's
        share, LIME's local fidelity, the breast-cancer top features.
    """
    from threadpoolctl import threadpool_limits

    from ..core.registry import explain
    from ..data.breast_cancer import breast_cancer_dataset
    from ..data.credit import credit_dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {} if files is None else files
    lines: list[str] = []
    # a few OpenMP threads fight over shared cores; one thread is faster and reproducible
    with threadpool_limits(1):
        n = 2000 if quick else 4000
        world = credit_dataset(n, seed=0)
        split = int(0.8 * n)
        Xtr, Xte = world.X.iloc[:split], world.X.iloc[split:]
        model = _fit_credit_model(Xtr, world.y[:split])
        background = Xtr.iloc[:25]
        rows = Xte.iloc[: (4 if quick else 6)]
        names = world.feature_names
        lines.append(f"credit world: {n} applicants, 6 numeric + 3 string columns; model: OneHotEncoder "
                     f"+ HistGradientBoosting pipeline, explained through decision_function (log-odds)")
        # 1. the explainers are exact on the true formula (only pairwise interactions)
        truth = world.true_shapley(rows, background)
        ks_formula = explain(world.score_fn, rows, "kernel_shap", background=background)
        lines.append(f"kernel_shap on the true formula vs its closed-form Shapley values: max |error| "
                     f"{np.abs(ks_formula.values - truth).max():.1e} with "
                     f"{int(ks_formula.meta['n_coalitions'].max())} coalitions")
        # 2. the fitted model, by every estimator
        kw = dict(background=background, output="decision_function")
        ex = explain(model, rows, "exact_shapley", **kw)
        ks = explain(model, rows, "kernel_shap", **kw)
        pm = explain(model, rows, "permutation_shap", budget=160, **kw)
        lm = explain(model, rows, "lime", background=Xtr, n_features=4, output="decision_function")

        def rel(a, b):
            return float(np.median(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))

        lines.append(f"exact_shapley: efficiency gap {ex.completeness_gap.max():.1e}, "
                     f"{int(ex.meta['n_evals'][0])} model rows per applicant")
        lines.append(f"kernel_shap vs exact: median relative error {rel(ks.values, ex.values):.3f} with "
                     f"{int(np.median(ks.meta['n_coalitions']))} coalitions (auto-stop), efficiency gap "
                     f"{ks.completeness_gap.max():.1e}")
        lines.append(f"permutation_shap vs exact: median relative error {rel(pm.values, ex.values):.3f} "
                     f"with {int(np.median(pm.meta['n_permutations']))} antithetic permutations")
        corr = np.corrcoef(ex.values.ravel(), truth.ravel())[0, 1]
        lines.append(f"model's Shapley values vs the formula's true ones: correlation {corr:.2f}, "
                     f"median relative error {rel(ex.values, truth):.2f} (the model only sees noisy labels)")
        age = names.index(world.ignored)
        lines.append(f"'{world.ignored}' is not in the formula: mean |phi| {np.abs(ex.values[:, age]).mean():.3f} "
                     f"(true 0) vs mean |phi| of all features {np.abs(ex.values).mean():.3f}")
        top_lime = [names[j] for j in np.argsort(-np.abs(lm.values[0]))[:2]]
        lines.append(f"lime (quartile bins, K-Lasso with K=4): weighted R² (local fidelity) median "
                     f"{np.median(lm.meta['r2']):.2f}; first applicant's top features: {', '.join(top_lime)}")
        # 3. the protected attribute leaks through the proxy
        many = Xte.iloc[: (60 if quick else 150)]
        big = explain(model, many, "kernel_shap", budget=64, **kw)
        prox = names.index(world.proxy)
        share = np.abs(big.values[:, prox]).sum() / np.abs(big.values).sum()
        grp = world.protected[split:split + len(many)]
        a, b = big.values[grp == "A", prox].mean(), big.values[grp == "B", prox].mean()
        lines.append(f"proxy: '{world.proxy}' carries {100 * share:.0f}% of the attribution mass; its mean "
                     f"attribution is {a:+.2f} for group A and {b:+.2f} for group B, although the "
                     f"protected attribute is not an input (true mean {world.true_shapley(many, background)[grp == 'B', prox].mean():+.2f} for B)")
        # 4. a real data set (full form only)
        if quick:
            lines.append("(the breast-cancer part runs with `lumos demo tabular`)")
            return _finish(lines, out_dir, {"kernel_shap": ks, "lime": lm}, files)
        from sklearn.ensemble import HistGradientBoostingClassifier

        Xc, yc = breast_cancer_dataset()
        clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(Xc.iloc[:450], yc[:450])
        bc = explain(clf, Xc.iloc[450:452], "kernel_shap", background=Xc.iloc[:20], budget=256,
                     output="decision_function")
        top = np.argsort(-np.abs(bc.values[0]))[:3]
        lines.append("breast cancer (30 features): top features of tumour 450: " + ", ".join(
            f"{bc.feature_names[j]} {bc.values[0, j]:+.2f}" for j in top)
            + f" ({int(bc.meta['n_coalitions'][0])} coalitions, efficiency gap {bc.completeness_gap.max():.0e})")
    return _finish(lines, out_dir, {"kernel_shap": ks, "lime": lm}, files)


def _finish(lines: list[str], out_dir: Path, explanations: dict, files: dict) -> list[str]:
    pictures = _pictures(out_dir, explanations, files)
    if pictures:
        lines.append(f"pictures: {', '.join(Path(p).name for p in pictures)}")
    return ["  " + line for line in lines]
