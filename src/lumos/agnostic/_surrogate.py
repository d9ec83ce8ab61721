"""Sparse weighted linear surrogates: LIME's K-Lasso and its alternatives.

Ribeiro, Singh & Guestrin (2016), "Why Should I Trust You?": the explanation is a linear model
fitted to the black box's answers on perturbed samples, weighted by their proximity to the
explained input, on at most K features chosen by the LARS/Lasso path ("K-Lasso"), forward
selection or the largest ridge weights.

The surrogate itself is one of

- ``"ridge"`` — scikit-learn's ``Ridge(alpha)`` with ``sample_weight`` on the selected features
  (solved here by its normal equations; the default, as the ``lime`` package);
- ``"lasso_path"`` — the weighted Lasso path computed by LARS (``sklearn.linear_model.lars_path``),
  read at its last point with at most K non-zero coefficients: the path's own (shrunken)
  coefficients, without the least-squares refit;
- any scikit-learn regressor instance with ``coef_`` (``Lasso(0.01)``, ``HuberRegressor()``,
  ``LinearRegression()``...), cloned and fitted with ``sample_weight`` on the selected features.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["fit_surrogate", "check_surrogate", "SELECTIONS", "SURROGATES"]

SELECTIONS = ("lars", "forward", "highest_weights", "none")
SURROGATES = ("ridge", "lasso_path")


def check_surrogate(surrogate):
    """``surrogate`` if it is one of :data:`SURROGATES` or a scikit-learn regressor that accepts
    ``sample_weight``; else a clear error naming ``surrogate``."""
    if isinstance(surrogate, str):
        from ..core.validation import check_choice

        return check_choice(surrogate, "surrogate", SURROGATES)
    if not (hasattr(surrogate, "fit") and hasattr(surrogate, "get_params")):
        raise TypeError(f"surrogate must be one of {SURROGATES} or a scikit-learn regressor "
                        f"instance; got {type(surrogate).__name__}")
    from sklearn.utils.validation import has_fit_parameter

    if not has_fit_parameter(surrogate, "sample_weight"):
        raise TypeError(f"surrogate: {type(surrogate).__name__}.fit takes no sample_weight; LIME "
                        "weights every sample by its proximity, so the surrogate must accept them")
    return surrogate


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
        # the last point of the path with at most k non-zero coefficients (Ribeiro et al.'s K-Lasso)
        chosen = np.flatnonzero(_lasso_path_point(Xc, yc, w, k))
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


def _lasso_path_point(Xc: np.ndarray, yc: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Coefficients (d,) of the weighted Lasso path (LARS) at its last point with at most ``k``
    non-zero entries (centred data)."""
    from sklearn.linear_model import lars_path

    d = Xc.shape[1]
    sq = np.sqrt(w)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's "regressors collinear" notes
        _, _, coefs = lars_path(Xc * sq, yc * sq[:, 0], method="lasso", max_iter=4 * d)
    best = np.zeros(d)
    for col in coefs.T:
        if np.count_nonzero(col) <= k:
            best = col
    return best


def _weighted_r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    """scikit-learn's weighted ``r2_score``: 1 for a perfect fit of a constant target, 0 for an
    imperfect one."""
    ybar = w @ y / w.sum()
    tss = w @ ((y - ybar) ** 2)
    rss = w @ ((y - pred) ** 2)
    return float(1.0 - rss / tss) if tss > 0 else (1.0 if rss == 0 else 0.0)


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
    return coef, float(my - mx @ coef), _weighted_r2(yc, Xc @ coef, w)


def fit_surrogate(X: np.ndarray, y: np.ndarray, w: np.ndarray, x0: np.ndarray, k: int | None,
                  selection: str, alpha: float, surrogate="ridge") -> dict:
    """Fit the weighted surrogate on the selected features.

    Parameters
    ----------
    X : (S, d) interpretable representation of the samples
    y : (S,) explained scalar of the black box on them
    w : (S,) proximity weights
    x0 : (d,) representation of the explained input
    k : int or None (all features)
    selection : one of :data:`SELECTIONS`
    alpha : ridge penalty (as scikit-learn's ``Ridge(alpha)`` with ``sample_weight``)
    surrogate : "ridge", "lasso_path" or a scikit-learn regressor (see the module docstring)

    Returns
    -------
    dict with ``coef`` (d,) (0 off the selection), ``intercept``, ``r2`` (weighted R² of the
    surrogate: its local fidelity), ``selected`` (d,) bool, ``local_prediction`` (surrogate at x0).
    """
    d = X.shape[1]
    coef = np.zeros(d)
    if isinstance(surrogate, str) and surrogate == "lasso_path":
        Xc, yc, mx, my = _center(X, y, w)
        coef = _lasso_path_point(Xc, yc, w, d if k is None else k)
        cols = np.flatnonzero(coef)
        intercept, r2 = float(my - mx @ coef), _weighted_r2(yc, Xc @ coef, w)
    else:
        cols = select_features(X, y, w, d if k is None else k, selection, alpha)
        if isinstance(surrogate, str):
            c, intercept, r2 = weighted_ridge(X[:, cols], y, w, alpha)
        else:
            c, intercept, r2 = _fit_estimator(surrogate, X[:, cols], y, w)
        coef[cols] = c
    selected = np.zeros(d, bool)
    selected[cols] = True
    return {"coef": coef, "intercept": intercept, "r2": r2, "selected": selected,
            "local_prediction": float(intercept + coef @ x0)}


def _fit_estimator(estimator, X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """A clone of a scikit-learn regressor fitted with ``sample_weight``: ``(coef, intercept, r2)``."""
    from sklearn.base import clone

    est = clone(estimator).fit(X, y, sample_weight=w)
    coef = getattr(est, "coef_", None)
    if coef is None or np.size(coef) != X.shape[1]:
        raise TypeError(f"surrogate: {type(estimator).__name__} has no linear coef_ of {X.shape[1]} "
                        "entries after fitting; LIME's explanation is a linear surrogate's "
                        "coefficients, so use a linear regressor")
    intercept = float(np.ravel(getattr(est, "intercept_", 0.0))[0])
    return (np.asarray(coef, dtype=np.float64).ravel(), intercept,
            _weighted_r2(y, np.asarray(est.predict(X), dtype=np.float64).ravel(), w))
