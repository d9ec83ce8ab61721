"""Friedman's H-statistic of interaction strength.

Friedman & Popescu (2008), "Predictive Learning via Rule Ensembles", Annals of Applied
Statistics 2(3), section 8. With centred partial dependence functions evaluated at the data rows,

- pairwise: ``H²_jk = Σ_i [PD_jk(x_ij, x_ik) - PD_j(x_ij) - PD_k(x_ik)]² / Σ_i PD_jk(x_ij, x_ik)²``,
  the share of the joint effect of ``j`` and ``k`` that is not the sum of their own effects;
- total: ``H²_j = Σ_i [f(x_i) - PD_j(x_ij) - PD_-j(x_i,-j)]² / Σ_i f(x_i)²``, the share of the
  prediction's variance that comes from interactions of ``j`` with any other feature.

H² is 0 for an additive model and grows with the interaction; it is not bounded by 1 and is never
clipped. The partial dependences at the data rows cost ``m²`` rows each on a sample of ``m`` rows,
so the rows are sampled (``n_rows``). One ``m × m`` evaluation per feature,
``M[i, l] = f(x_i with x_j := x_lj)``, gives both ``PD_j(x_lj)`` (average over ``i``) and
``PD_-j(x_i)`` (average over ``l``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from ..core.validation import check_number
from ._common import ScalarModel, as_table, eval_grids, feature_index, subsample

__all__ = ["h_statistic", "HStatistic"]


@dataclass(eq=False)
class HStatistic:
    """Friedman's H-statistics of a model on a sample of rows.

    Attributes
    ----------
    feature_names : list of str
        The features examined.
    pairs : list of (str, str)
        The feature pairs with a pairwise statistic.
    h2_pairwise : ndarray, shape (P,)
        H² of each pair (NaN where the pair's joint effect is zero: the ratio is undefined).
    h2_total : ndarray, shape (F,), or None
        Total H² of each feature.
    pairwise_strength : ndarray, shape (P,)
        Friedman's unnormalised statistic: the root mean square of the interaction part, in the
        model's output units (comparable across pairs, unlike the ratio).
    total_strength : ndarray, shape (F,), or None
    n_rows : int
        Rows in the sample.
    target, output_name : str
    n_evals : int
        Rows the model evaluated.
    params : dict
    """

    feature_names: list[str]
    pairs: list[tuple[str, str]]
    h2_pairwise: np.ndarray
    h2_total: np.ndarray | None
    pairwise_strength: np.ndarray
    total_strength: np.ndarray | None
    n_rows: int
    target: str
    output_name: str
    n_evals: int
    params: dict = field(default_factory=dict)

    @property
    def h_pairwise(self) -> np.ndarray:
        """H (the square root of H²) per pair."""
        return np.sqrt(self.h2_pairwise)

    @property
    def h_total(self) -> np.ndarray | None:
        return None if self.h2_total is None else np.sqrt(self.h2_total)

    def matrix(self) -> np.ndarray:
        """Pairwise H² as a symmetric (F, F) matrix; NaN on the diagonal and for pairs not computed."""
        F = len(self.feature_names)
        M = np.full((F, F), np.nan)
        pos = {n: i for i, n in enumerate(self.feature_names)}
        for (a, b), v in zip(self.pairs, self.h2_pairwise):
            M[pos[a], pos[b]] = M[pos[b], pos[a]] = v
        return M

    def to_frame(self, kind: str = "pairwise"):
        """``"pairwise"``: one row per pair (``feature_1``, ``feature_2``, ``h2``, ``h``,
        ``strength``), strongest first; ``"total"``: one row per feature."""
        import pandas as pd

        if kind == "pairwise":
            df = pd.DataFrame({"feature_1": [a for a, _ in self.pairs], "feature_2": [b for _, b in self.pairs],
                               "h2": self.h2_pairwise, "h": self.h_pairwise, "strength": self.pairwise_strength})
            return df.sort_values("h2", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
        if kind == "total":
            if self.h2_total is None:
                raise ValueError("this result holds no total statistics (computed with total=False)")
            df = pd.DataFrame({"feature": self.feature_names, "h2": self.h2_total, "h": self.h_total,
                               "strength": self.total_strength})
            return df.sort_values("h2", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
        raise ValueError(f"kind must be 'pairwise' or 'total'; got {kind!r}")

    def plot(self, ax=None, **kwargs):
        """Bars of H² (total per feature, or the strongest pairs), or the pairwise matrix. See
        :class:`lumos.display.effects.InteractionDisplay`."""
        from ..display.effects import InteractionDisplay

        return InteractionDisplay.from_result(self).plot(ax=ax, **kwargs)


def _ratio(num: float, den: float, scale: float) -> float:
    # An (almost) zero joint effect leaves the share undefined: report NaN, not a fake 0 or 1.
    return float(num / den) if den > 1e-12 * scale and den > 0 else float("nan")


def h_statistic(model: Any, X: Any, features: Any = None, *, pairs: Any = "all", total: bool = True,
                n_rows: int | None = 100, target: Any = None, categorical_features: Any = None,
                seed: Any = 0, output: str = "auto", batch_size: int | None = None,
                progress: bool | None = None) -> HStatistic:
    """Friedman's H-statistic: pairwise and total interaction strength.

    Friedman & Popescu (2008).

    Parameters
    ----------
    model : callable, scikit-learn estimator/pipeline, xgboost/lightgbm model or torch module
    X : ndarray or DataFrame, shape (n, p)
    features : sequence of names/indices, optional
        The features examined (default: every column).
    pairs : "all", None or sequence of pairs, default "all"
        The pairs with a pairwise statistic: every pair of ``features``, none, or the given ones.
    total : bool, default True
        Compute each feature's total interaction statistic.
    n_rows : int or None, default 100
        Rows sampled (with ``seed``) to bound the cost: ``n_rows²`` model rows per feature and per
        pair. None uses every row.
    target : None, int, class label or callable
        As in :func:`lumos.effects.partial_dependence`.
    categorical_features : sequence or bool mask, optional
        Accepted for symmetry; the statistic moves whole values between rows, so categorical
        columns need no special treatment.
    seed : int or numpy Generator, default 0
    output, batch_size, progress
        As in :func:`lumos.effects.partial_dependence`.

    Returns
    -------
    HStatistic
    """
    table = as_table(X, categorical_features)
    feats = list(range(table.p)) if features is None else \
        [feature_index(table, f) for f in ([features] if isinstance(features, (str, int, np.integer)) else features)]
    if len(set(feats)) != len(feats):
        raise ValueError("features: a feature is named twice")
    if pairs == "all":
        pair_idx = list(combinations(feats, 2))
    elif pairs is None:
        pair_idx = []
    else:
        pair_idx = []
        for pr in pairs:
            if isinstance(pr, (str, int)) or len(pr) != 2:
                raise ValueError(f"pairs must be 'all', None or a sequence of feature pairs; got {pr!r}")
            a, b = feature_index(table, pr[0], "pairs"), feature_index(table, pr[1], "pairs")
            if a == b:
                raise ValueError(f"pairs: {pr!r} pairs a feature with itself")
            pair_idx.append((a, b))
            feats += [c for c in (a, b) if c not in feats]
    if not pair_idx and not total:
        raise ValueError("nothing to compute: pairs is empty and total=False")
    if n_rows is not None:
        check_number(n_rows, "n_rows", low=2, integer=True)
    rows = subsample(table.n, n_rows, seed, "n_rows")
    if rows is not None:
        table = table.take(rows)
    m = table.n
    if m < 2:
        raise ValueError("the H-statistic needs at least two rows")
    f = ScalarModel(model, table, target, output, batch_size)
    base = table.values

    need = sorted(set(feats) if total else {c for p in pair_idx for c in p})
    # All m x m evaluations (one per feature, one per pair) stream through the model together.
    jobs = [([j], base[:, [j]]) for j in need] + [([a, b], base[:, [a, b]]) for a, b in pair_idx]
    mats = eval_grids(f, base, jobs, progress=progress, desc="H-statistic")
    pd_own, pd_rest = {}, {}
    for j, M in zip(need, mats):
        own = M.mean(axis=0)   # PD_j at x_lj, for each row l
        rest = M.mean(axis=1)  # PD_-j at x_i,-j, for each row i
        pd_own[j], pd_rest[j] = own - own.mean(), rest - rest.mean()
    fx = f(base)
    fx = fx - fx.mean()
    scale = float((fx ** 2).sum()) or 1.0

    h2_total = strength_total = None
    if total:
        h2_total = np.empty(len(feats))
        strength_total = np.empty(len(feats))
        for c, j in enumerate(feats):
            inter = fx - pd_own[j] - pd_rest[j]
            h2_total[c] = _ratio(float((inter ** 2).sum()), float((fx ** 2).sum()), scale)
            strength_total[c] = np.sqrt(np.mean(inter ** 2))
    h2_pair = np.empty(len(pair_idx))
    strength_pair = np.empty(len(pair_idx))
    for c, ((a, b), M) in enumerate(zip(pair_idx, mats[len(need):])):
        joint = M.mean(axis=0)
        joint = joint - joint.mean()
        inter = joint - pd_own[a] - pd_own[b]
        h2_pair[c] = _ratio(float((inter ** 2).sum()), float((joint ** 2).sum()), scale)
        strength_pair[c] = np.sqrt(np.mean(inter ** 2))
    names = table.names
    return HStatistic(
        feature_names=[names[j] for j in feats], pairs=[(names[a], names[b]) for a, b in pair_idx],
        h2_pairwise=h2_pair, h2_total=h2_total, pairwise_strength=strength_pair,
        total_strength=strength_total, n_rows=m, target=f.description, output_name=f.output_name,
        n_evals=f.n_evals,
        params={"features": [names[j] for j in feats], "pairs": [(names[a], names[b]) for a, b in pair_idx],
                "total": total, "n_rows": n_rows, "output": output},
    )
