"""Shared pieces of the Shapley estimators: coalition sampling designs and the constrained,
weighted regression of KernelSHAP with its jackknife standard errors."""
from __future__ import annotations

import warnings
from itertools import combinations
from math import comb, lgamma, exp

import numpy as np

from .._game import Game, row_generators

__all__ = ["shapley_weights", "PairedSampler", "kernel_solve", "check_budget", "row_generators",
           "stop_ratio", "start_estimate"]

# Strata with at most this many pairs are enumerated once and drawn from a shuffled list.
_ENUMERATE_LIMIT = 20_000


def shapley_weights(M: int) -> np.ndarray:
    """``w[s] = s! (M - s - 1)! / M!`` for s = 0..M-1: the weight of ``v(S ∪ j) - v(S)``, |S| = s."""
    return np.array([exp(lgamma(s + 1) + lgamma(M - s) - lgamma(M + 1)) for s in range(M)])


def check_budget(budget, name: str = "budget") -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"{name} must be a positive int (coalitions per explained sample) or None "
                         f"for an automatic stop; got {budget!r}")
    return int(budget)


def stop_ratio(phi: np.ndarray, se: np.ndarray) -> float:
    """``max(se) / (max(phi) - min(phi))``: the automatic stopping statistic (0 when exact)."""
    top = float(np.max(se)) if len(se) else 0.0
    if top == 0.0:
        return 0.0
    spread = float(np.max(phi) - np.min(phi))
    return top / spread if spread > 0 else np.inf


class PairedSampler:
    """Paired, size-stratified sampling of coalitions without replacement.

    A *unit* is a pair ``(S, complement of S)``; the strata are ``s = min(|S|, M - |S|)`` =
    1..M//2. Units are allotted to strata equally (water-filling: a stratum with fewer units than
    its share is enumerated and the rest shared among the others). Equal allotment per size is
    sampling by the leverage scores of the KernelSHAP regression (Musco & Witter, 2024, "Provably
    Accurate Shapley Value Estimation via Leverage Score Sampling"); within a stratum the units
    are a simple random sample without replacement, drawn incrementally, so the design can grow
    round by round. Each coalition's regression weight is its stratum's total Shapley-kernel mass
    divided by the number of coalitions drawn from it, so fully enumerated strata carry their
    exact kernel weights and the estimate becomes exact once every stratum is.

    Pairing makes the regression exact for games with at most pairwise interactions (the
    antisymmetric part of such a game is additive), whatever the sampled sizes.
    """

    def __init__(self, M: int, rng: np.random.Generator):
        self.M = M
        self.rng = rng
        half = M // 2
        self.sizes = np.arange(1, half + 1)
        self.N = np.array([comb(M, s) // (2 if 2 * s == M else 1) for s in self.sizes], dtype=np.float64)
        # units per stratum as ints, capped far above any budget (C(100, 50) overflows int64)
        self._cap = np.minimum(self.N, 2.0 ** 62).astype(np.int64)
        self.n = np.zeros(len(self.sizes), dtype=np.int64)
        self._order: dict[int, np.ndarray] = {}
        self._seen: dict[int, set] = {}
        self._pos: dict[int, int] = {}
        # drawn coalitions, stored unit by unit: rows 2k and 2k+1 are unit k (S and its complement)
        self.Z = np.zeros((0, M), dtype=bool)
        self.stratum = np.zeros(0, dtype=np.int64)  # per unit

    @property
    def total_coalitions(self) -> int:
        return int(2 ** self.M - 2) if self.M < 63 else 2 ** 62

    @property
    def n_coalitions(self) -> int:
        return len(self.Z)

    @property
    def complete(self) -> bool:
        return bool(np.all(self.n >= self.N))

    def allot(self, budget: int) -> np.ndarray:
        """Units per stratum for a total of ``budget`` coalitions (never fewer than drawn)."""
        units = max(budget // 2, int(self.n.sum()))
        cap = self._cap.astype(np.float64)
        target = np.zeros(len(cap))
        free = np.ones(len(cap), bool)
        left = float(units)
        while free.any():
            share = left / free.sum()
            full = free & (cap <= share)
            if not full.any():
                target[free] = share
                break
            target[full] = cap[full]
            left -= cap[full].sum()
            free &= ~full
        out = np.floor(target).astype(np.int64)
        rest = units - out.sum()
        if rest > 0:  # hand out the rounding remainder to the strata with room, smallest first
            for k in np.argsort(-(target - out), kind="stable"):
                if rest == 0:
                    break
                if out[k] < cap[k]:
                    out[k] += 1
                    rest -= 1
        return np.maximum(np.minimum(out, self._cap), self.n)

    def grow(self, budget: int) -> np.ndarray:
        """Draw units up to ``budget`` coalitions; returns the new coalitions (rows of Z)."""
        want = self.allot(budget)
        new_Z, new_s = [], []
        for k, s in enumerate(self.sizes):
            extra = int(want[k] - self.n[k])
            if extra <= 0:
                continue
            subsets = self._draw(k, int(s), extra)
            pair = np.empty((2 * extra, self.M), dtype=bool)
            pair[0::2] = subsets
            pair[1::2] = ~subsets
            new_Z.append(pair)
            new_s.append(np.full(extra, k))
            self.n[k] += extra
        if not new_Z:
            return np.zeros((0, self.M), dtype=bool)
        Z = np.concatenate(new_Z)
        self.Z = np.concatenate([self.Z, Z])
        self.stratum = np.concatenate([self.stratum] + new_s)
        return Z

    def _draw(self, k: int, s: int, count: int) -> np.ndarray:
        """``count`` new units of stratum ``k`` (size ``s``), distinct from those drawn before.

        Sparse draws use rejection against the set of drawn units; once a stratum is to be
        sampled densely, its remaining units are enumerated once, shuffled and taken in order
        (either way a simple random sample without replacement)."""
        M = self.M
        seen = self._seen.setdefault(k, set())
        dense = k in self._order or (self.n[k] + count > self.N[k] / 4 and self.N[k] <= _ENUMERATE_LIMIT)
        if dense:
            if k not in self._order:
                if 2 * s == M:  # a pair of halves: the half holding feature 0 stands for the pair
                    combos = [(0,) + c for c in combinations(range(1, M), s - 1)]
                else:
                    combos = list(combinations(range(M), s))
                A = np.zeros((len(combos), M), dtype=bool)
                idx = np.array(combos, dtype=np.int64).reshape(len(combos), s)
                np.put_along_axis(A, idx, True, axis=1)
                if seen:
                    keys = np.packbits(A, axis=1)
                    A = A[[row.tobytes() not in seen for row in keys]]
                self._order[k] = A[self.rng.permutation(len(A))]
                self._pos[k] = 0
            start = self._pos[k]
            self._pos[k] = start + count
            return self._order[k][start:start + count]
        out = []
        while len(out) < count:
            need = count - len(out)
            picks = np.argsort(self.rng.random((need + 8, M)), axis=1)[:, :s]
            A = np.zeros((len(picks), M), dtype=bool)
            np.put_along_axis(A, picks, True, axis=1)
            if 2 * s == M:
                A[~A[:, 0]] = ~A[~A[:, 0]]
            for row, key in zip(A, np.packbits(A, axis=1)):
                key = key.tobytes()
                if key not in seen:
                    seen.add(key)
                    out.append(row)
                    if len(out) == count:
                        break
        return np.array(out)

    def weights(self) -> np.ndarray:
        """Regression weight of each drawn coalition (stratum kernel mass / coalitions drawn)."""
        M = self.M
        s = self.sizes[self.stratum]
        # kernel mass of all subsets of size s: (M - 1) / (s (M - s)); a pair stratum s < M/2
        # holds the sizes s and M - s (same mass), the stratum M/2 only one size
        mass = (M - 1) / (s * (M - s))
        w_unit = mass / self.n[self.stratum]
        half = 2 * s == M
        w_unit = np.where(half, w_unit / 2, w_unit)
        return np.repeat(w_unit, 2)


def kernel_solve(Z: np.ndarray, y: np.ndarray, w: np.ndarray, total: float,
                 unit_stratum: np.ndarray | None = None, n_units: np.ndarray | None = None,
                 N_units: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares ``y ≈ Z φ`` subject to ``sum(φ) = total``, and standard errors.

    The constraint is solved exactly by eliminating the last coordinate. Standard errors come
    from the stratified delete-one-unit jackknife (each unit a pair of coalitions; a deleted
    unit's stratum is reweighted by n/(n-1); finite-population correction 1 - n/N), computed with
    rank-2 Woodbury updates so that it costs O(units · M²). Strata drawn once only are pooled.

    Parameters
    ----------
    Z : bool array (R, M), rows in unit pairs (2k, 2k+1)
    y : array (R,)   ``v(S) - v(∅)``
    w : array (R,)   regression weights
    total : float    ``v(N) - v(∅)``
    unit_stratum, n_units, N_units : the design (optional: no standard errors without them)

    Returns
    -------
    phi : (M,), se : (M,) (zeros when every stratum is enumerated, NaN when not estimable)
    """
    M = Z.shape[1]
    if M == 1:
        return np.array([total]), np.zeros(1)
    Zf = Z.astype(np.float64)
    X = Zf[:, :-1] - Zf[:, -1:]
    yt = y - Zf[:, -1] * total
    Xw = X * w[:, None]
    H = Xw.T @ X
    g = Xw.T @ yt
    beta = _solve(H, g)
    phi = np.append(beta, total - beta.sum())
    se = np.full(M, np.nan)
    if unit_stratum is None:
        return phi, se
    # variance groups: strata with 2+ units drawn but not all; single-draw strata pooled
    open_ = n_units < N_units
    groups = np.where(open_ & (n_units >= 2), np.arange(len(n_units)), -1)
    pooled = open_ & (n_units == 1)
    if pooled.sum() >= 2:
        groups[pooled] = len(n_units)
    elif pooled.any():  # one unit alone carries variance we cannot estimate
        return phi, se
    unit_group = groups[unit_stratum]
    var = np.zeros(M)
    try:
        H0inv = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return phi, se
    Xu = X.reshape(-1, 2, M - 1)
    wu = w.reshape(-1, 2)
    yu = yt.reshape(-1, 2)
    for grp in np.unique(unit_group[unit_group >= 0]):
        units = np.flatnonzero(unit_group == grp)
        n = len(units)
        U = Xu[units]                     # (n, 2, p)
        c = wu[units] * n / (n - 1)       # (n, 2)
        Hs = np.einsum("nrp,nr,nrq->pq", U, wu[units], U)
        gs = np.einsum("nrp,nr,nr->p", U, wu[units], yu[units])
        gp = g + gs / (n - 1)
        try:
            P = _inverse_update(H, H0inv, Hs / (n - 1), U, wu[units] / (n - 1))
        except np.linalg.LinAlgError:
            return phi, np.full(M, np.nan)
        bp = P @ gp
        A = U @ P                                           # (n, 2, p) = U P
        cy = c * yu[units]
        Ph = bp - np.einsum("nrp,nr->np", A, cy)
        UPh = np.einsum("nrp,np->nr", U, Ph)
        K = -np.einsum("nrp,nsp->nrs", A, U)
        K[:, 0, 0] += 1 / c[:, 0]
        K[:, 1, 1] += 1 / c[:, 1]
        try:
            sol = np.linalg.solve(K, UPh[..., None])[..., 0]
        except np.linalg.LinAlgError:
            return phi, np.full(M, np.nan)
        b = Ph + np.einsum("nrp,nr->np", A, sol)            # (n, p) delete-one estimates
        reps = np.hstack([b, total - b.sum(1, keepdims=True)])
        f = n / float(np.sum(N_units[np.flatnonzero(groups == grp)]))
        var += (1 - min(f, 1.0)) * (n - 1) / n * ((reps - reps.mean(0)) ** 2).sum(0)
    return phi, np.sqrt(var)


def _inverse_update(H, Hinv, Hs, U, c) -> np.ndarray:
    """``(H + Hs)^-1`` with ``Hs = sum_k U_k^T diag(c_k) U_k``: directly when the update has
    high rank, else by the Woodbury identity from ``Hinv`` (O(p² r) instead of O(p³))."""
    p = H.shape[0]
    V = U.reshape(-1, p)                 # (r, p) rows of the update
    cr = c.reshape(-1)
    if len(V) * 2 >= p:
        return np.linalg.inv(H + Hs)
    A = V @ Hinv                         # (r, p)
    K = np.diag(1.0 / cr) + A @ V.T      # (r, r)
    return Hinv - A.T @ np.linalg.solve(K, A)


def _solve(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(H, g)
    except np.linalg.LinAlgError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.linalg.lstsq(H, g, rcond=None)[0]


def start_estimate(method: str, model, inputs, target, masker, background, output, batch_size,
                   progress, budget, tol, max_budget, seed):
    """What the sampled Shapley estimators (kernel, permutation) share before they sample.

    Validates ``budget``, ``max_budget`` and ``tol``, opens the :class:`Game` and evaluates the
    empty and full coalitions. Returns ``(game, budget, max_budget, base, full, generators)``
    with one numpy Generator per explained row.
    """
    budget = check_budget(budget)
    max_budget = check_budget(max_budget, "max_budget")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    game = Game(model, inputs, target, masker, background, output, batch_size,
                method=method, progress=progress)
    return game, budget, max_budget, game.empty_value(), game.full_value(), row_generators(seed, game.n)
