"""Sparse weighted linear surrogates: LIME's K-Lasso and its alternatives.

Ribeiro, Singh & Guestrin (2016), "Why Should I Trust You?": the explanation is a linear model
fitted to the black box's answers on perturbed samples, weighted by their proximity to the
explained input, on at most K features chosen by the LARS/Lasso path ("K-Lasso"), forward
selection or the largest ridge weights.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["fit_surrogate", "SELECTIONS"]

SELECTIONS = ("lars", "forward", "highest_weights", "none")


def _center(X: np.ndarray, y: np.ndarray, w: np.ndarray):
    sw = w.sum()
    mx = w @ X / sw
    my = w @ y / sw
    return X - mx, y - my, mx, my


def _ridge_r2(Xc: np.ndarray, yc: np.ndarray, w: np.ndarray, cols: list[int], alpha: float) -> float:
    """Weighted R² of a ridge fit on ``cols`` (centred data), by the normal equations."""
    if not cols:
        return 0.0
    A = Xc[:, cols]
    Aw = A * w[:, None]
    G = Aw.T @ A + alpha * np.eye(len(cols))
    b = np.linalg.solve(G, Aw.T @ yc)
    r = yc - A @ b
    tss = w @ (yc * yc)
    return 1.0 - (w @ (r * r)) / tss if tss > 0 else 0.0


def select_features(X: np.ndarray, y: np.ndarray, w: np.ndarray, k: int, method: str,
                    alpha: float) -> np.ndarray:
    """Indices of at most ``k`` features by ``method`` (see :data:`SELECTIONS`)."""
    d = X.shape[1]
    if method == "none" or k >= d:
        return np.arange(d)
    Xc, yc, _, _ = _center(X, y, w)
    if method == "lars":
        from sklearn.linear_model import lars_path

        sq = np.sqrt(w)[:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's "regressors collinear" notes
            _, _, coefs = lars_path(Xc * sq, yc * sq[:, 0], method="lasso", max_iter=4 * d)
        # the last point of the path with at most k non-zero coefficients (Ribeiro et al.'s K-Lasso)
        chosen = np.zeros(0, dtype=np.int64)
        for col in coefs.T:
            nz = np.flatnonzero(col)
            if len(nz) <= k:
                chosen = nz
        if len(chosen) < k:  # the path stopped early (constant target): pad by correlation
            score = np.abs((Xc * w[:, None]).T @ yc)
            extra = [j for j in np.argsort(-score, kind="stable") if j not in set(chosen)]
            chosen = np.concatenate([chosen, extra[: k - len(chosen)]]).astype(np.int64)
        return np.sort(chosen)
    if method == "forward":
        chosen: list[int] = []
        for _ in range(k):
            best, best_r2 = None, -np.inf
            for j in range(d):
                if j in chosen:
                    continue
                r2 = _ridge_r2(Xc, yc, w, chosen + [j], alpha)
                if r2 > best_r2:
                    best, best_r2 = j, r2
            chosen.append(best)
        return np.sort(np.array(chosen, dtype=np.int64))
    if method == "highest_weights":
        Aw = Xc * w[:, None]
        b = np.linalg.solve(Aw.T @ Xc + 0.01 * np.eye(d), Aw.T @ yc)
        # as LIME: rank by |coefficient| of a ridge fit on all features
        return np.sort(np.argsort(-np.abs(b), kind="stable")[:k])
    raise ValueError(f"selection must be one of {SELECTIONS}; got {method!r}")


def weighted_ridge(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float):
    """``Ridge(alpha).fit(X, y, sample_weight=w)`` of scikit-learn, by its normal equations
    (the intercept unpenalised, as scikit-learn does by centring with the weighted means).

    Returns ``(coef, intercept, r2)`` with the weighted R² of scikit-learn's ``score``. Solving
    the small (d × d) system directly avoids scikit-learn's per-call validation, which dominated
    the cost of one local fit; ``tests/test_lime.py`` checks it against ``sklearn.linear_model.Ridge``.
    """
    Xc, yc, mx, my = _center(X, y, w)
    d = X.shape[1]
    if d:
        Aw = Xc * w[:, None]
        G = Aw.T @ Xc + alpha * np.eye(d)
        try:
            coef = np.linalg.solve(G, Aw.T @ yc)
        except np.linalg.LinAlgError:
            coef = np.linalg.lstsq(G, Aw.T @ yc, rcond=None)[0]
    else:
        coef = np.zeros(0)
    r = yc - Xc @ coef
    tss = w @ (yc * yc)
    rss = w @ (r * r)
    # scikit-learn's r2_score: 1 for a perfect fit of a constant target, 0 for an imperfect one
    r2 = 1.0 - rss / tss if tss > 0 else (1.0 if rss == 0 else 0.0)
    return coef, float(my - mx @ coef), float(r2)


def fit_surrogate(X: np.ndarray, y: np.ndarray, w: np.ndarray, x0: np.ndarray, k: int | None,
                  selection: str, alpha: float) -> dict:
    """Fit the weighted ridge surrogate on the selected features.

    Parameters
    ----------
    X : (S, d) interpretable representation of the samples
    y : (S,) explained scalar of the black box on them
    w : (S,) proximity weights
    x0 : (d,) representation of the explained input
    k : int or None (all features)
    selection : one of :data:`SELECTIONS`
    alpha : ridge penalty (as scikit-learn's ``Ridge(alpha)`` with ``sample_weight``)

    Returns
    -------
    dict with ``coef`` (d,) (0 off the selection), ``intercept``, ``r2`` (weighted R² of the
    surrogate: its local fidelity), ``selected`` (d,) bool, ``local_prediction`` (surrogate at x0).
    """
    d = X.shape[1]
    cols = select_features(X, y, w, d if k is None else k, selection, alpha)
    coef = np.zeros(d)
    c, intercept, r2 = weighted_ridge(X[:, cols], y, w, alpha)
    coef[cols] = c
    selected = np.zeros(d, bool)
    selected[cols] = True
    return {"coef": coef, "intercept": intercept, "r2": r2, "selected": selected,
            "local_prediction": float(intercept + coef @ x0)}
