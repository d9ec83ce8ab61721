"""Shared pieces of the Shapley estimators: coalition sampling designs and the constrained,
weighted regression of KernelSHAP with its jackknife standard errors."""
from __future__ import annotations

import warnings
from itertools import combinations
from math import comb, lgamma, exp

import numpy as np

from ...core.validation import check_number
from .._game import Game, row_generators

__all__ = ["shapley_weights", "PairedSampler", "kernel_solve", "kernel_solve_rows", "check_budget",
           "row_generators",
           "stop_ratio", "start_estimate", "open_game"]

# Strata with at most this many pairs are enumerated once and drawn from a shuffled list.
_ENUMERATE_LIMIT = 20_000


def shapley_weights(M: int) -> np.ndarray:
    """``w[s] = s! (M - s - 1)! / M!`` for s = 0..M-1: the weight of ``v(S ∪ j) - v(S)``, |S| = s."""
    return np.array([exp(lgamma(s + 1) + lgamma(M - s) - lgamma(M + 1)) for s in range(M)])


def check_budget(budget, name: str = "budget") -> int | None:
    """``budget`` (coalitions per explained sample) as an int >= 1, or None (automatic stop)."""
    if budget is None:
        return None
    return check_number(budget, name, low=1, integer=True)


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
        return max(0, int(2 ** self.M - 2)) if self.M < 63 else 2 ** 62

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

    One sample's problem; :func:`kernel_solve_rows` solves many at once (same arguments with a
    leading row axis) and is what :func:`~lumos.agnostic.shapley.kernel.kernel_shap` uses.

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
    phi, se = kernel_solve_rows(Z[None], np.asarray(y)[None], np.asarray(w)[None],
                                np.array([total], dtype=np.float64), unit_stratum, n_units, N_units)
    return phi[0], se[0]


def kernel_solve_rows(Z: np.ndarray, y: np.ndarray, w: np.ndarray, total: np.ndarray,
                      unit_stratum: np.ndarray | None = None, n_units: np.ndarray | None = None,
                      N_units: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kernel_solve` for ``b`` samples that share a design *structure*, vectorised.

    The constraint is solved exactly by eliminating the last coordinate; the ``b`` normal
    equations are solved as one stacked ``np.linalg.solve`` (one factorisation, shared by all
    rows, when they share the coalitions and weights too). Standard errors come from the
    stratified delete-one-unit jackknife (each unit a pair of coalitions; a deleted unit's stratum
    is reweighted by n/(n-1); finite-population correction 1 - n/N), in closed form: for each
    stratum the reweighted inverse (a batched inverse, or a Woodbury update of ``H^-1`` when the
    stratum is small) and then every delete-one estimate by a rank-2 Woodbury downdate, all
    samples and all units of the stratum at once: ``O(units · M²)`` per sample, no Python loop
    over samples or units. Strata drawn once only are pooled.

    Parameters
    ----------
    Z : bool array (b, R, M) or (R, M) when shared, rows in unit pairs (2k, 2k+1)
    y : array (b, R)   ``v(S) - v(∅)``
    w : array (b, R) or (R,) regression weights
    total : array (b,)  ``v(N) - v(∅)``
    unit_stratum : int array (R // 2,), the same for every sample; n_units, N_units (strata,)

    Returns
    -------
    phi : (b, M), se : (b, M)
    """
    y = np.asarray(y, dtype=np.float64)
    total = np.asarray(total, dtype=np.float64)
    b, R = y.shape
    M = Z.shape[-1]
    if M == 1:
        return total[:, None].copy(), np.zeros((b, 1))
    shared = Z.ndim == 2 and np.ndim(w) == 1
    Zf = np.broadcast_to(np.asarray(Z, dtype=np.float64), (b, R, M))
    w = np.broadcast_to(np.asarray(w, dtype=np.float64), (b, R))
    X = Zf[..., :-1] - Zf[..., -1:]                 # (b, R, p)
    yt = y - Zf[..., -1] * total[:, None]
    Xw = X * w[..., None]
    g = np.matmul(yt[:, None, :], Xw)[:, 0]        # (b, p)
    if shared:                                      # one factorisation for every sample
        H = Xw[0].T @ X[0]
        beta = _solve(H, g.T).T
        H = np.broadcast_to(H, (b,) + H.shape)
    else:
        H = np.matmul(Xw.transpose(0, 2, 1), X)     # (b, p, p)
        beta = _solve_rows(H, g)
    phi = np.concatenate([beta, total[:, None] - beta.sum(1, keepdims=True)], axis=1)
    se = np.full((b, M), np.nan)
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
    var = np.zeros((b, M))
    bad = np.zeros(b, bool)
    p = M - 1
    Hinv = None
    Xu = X.reshape(b, -1, 2, p)
    wu = w.reshape(b, -1, 2)
    yu = yt.reshape(b, -1, 2)
    for grp in np.unique(unit_group[unit_group >= 0]):
        units = np.flatnonzero(unit_group == grp)
        n = len(units)
        U = Xu[:, units]                              # (b, n, 2, p)
        V = U.reshape(b, 2 * n, p)
        wg = wu[:, units]                             # (b, n, 2)
        c = wg * n / (n - 1)
        Vw = V * wg.reshape(b, 2 * n, 1)
        gp = g + np.matmul(yu[:, units].reshape(b, 1, 2 * n), Vw)[:, 0] / (n - 1)
        # A = U P and bp = P gp with P = (H + Hs / (n - 1))^-1 (symmetric): one stacked solve
        # with the 2n + 1 right-hand sides, or for a small stratum (rank 2n << p) a Woodbury
        # update of H^-1: O(p² n) instead of O(p³)
        if 4 * n >= p:
            Hp = H + np.matmul(Vw.transpose(0, 2, 1), V) / (n - 1)
            rhs = np.concatenate([V.transpose(0, 2, 1), gp[..., None]], axis=2)
            sol, ok = _solve_rows_ok(Hp, rhs)
            A, bp = sol[..., :-1].transpose(0, 2, 1), sol[..., -1]
        else:
            if Hinv is None:
                Hinv, ok0 = _inv_rows(H)
                bad |= ~ok0
            A0 = np.matmul(V, Hinv)                   # (b, 2n, p)
            K0 = np.matmul(A0, V.transpose(0, 2, 1))
            K0[:, np.arange(2 * n), np.arange(2 * n)] += (n - 1) / wg.reshape(b, 2 * n)
            S, ok = _solve_rows_ok(K0, A0)
            P = Hinv - np.matmul(A0.transpose(0, 2, 1), S)
            A = np.matmul(V, P)
            bp = np.matmul(P, gp[..., None])[..., 0]
        bad |= ~ok
        A = A.reshape(b, n, 2, p)
        cy = c * yu[:, units]
        Ph = bp[:, None, :] - (A[:, :, 0] * cy[..., 0:1] + A[:, :, 1] * cy[..., 1:2])
        UPh = (U * Ph[:, :, None, :]).sum(-1)                        # (b, n, 2)
        K = -np.matmul(A, U.transpose(0, 1, 3, 2))                   # (b, n, 2, 2)
        K[..., 0, 0] += 1 / c[..., 0]
        K[..., 1, 1] += 1 / c[..., 1]
        sol, ok = _solve_rows_ok(K.reshape(-1, 2, 2), UPh.reshape(-1, 2, 1))
        bad |= ~ok.reshape(b, n).all(1)
        sol = sol.reshape(b, n, 2)
        bl = Ph + A[:, :, 0] * sol[..., 0:1] + A[:, :, 1] * sol[..., 1:2]  # delete-one estimates
        reps = np.concatenate([bl, total[:, None, None] - bl.sum(2, keepdims=True)], axis=2)
        f = n / float(np.sum(N_units[np.flatnonzero(groups == grp)]))
        var += (1 - min(f, 1.0)) * (n - 1) / n * ((reps - reps.mean(1, keepdims=True)) ** 2).sum(1)
    se = np.sqrt(var)
    se[bad] = np.nan
    return phi, se


def _solve(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(H, g)
    except np.linalg.LinAlgError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.linalg.lstsq(H, g, rcond=None)[0]


def _solve_rows(H: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Stacked ``H[k] x = g[k]``; a singular system falls back to least squares (that row only)."""
    try:
        return np.linalg.solve(H, g[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.stack([_solve(Hk, gk) for Hk, gk in zip(H, g)])


def _solve_rows_ok(K: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stacked ``K[k] X = B[k]`` and which systems were solvable (NaN for the others)."""
    try:
        return np.linalg.solve(K, B), np.ones(len(K), bool)
    except np.linalg.LinAlgError:
        out = np.full(B.shape, np.nan)
        ok = np.zeros(len(K), bool)
        for k in range(len(K)):
            try:
                out[k] = np.linalg.solve(K[k], B[k])
                ok[k] = True
            except np.linalg.LinAlgError:
                pass
        return out, ok


def _inv_rows(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stacked inverses and which exist (NaN for the others)."""
    eye = np.broadcast_to(np.eye(H.shape[-1]), H.shape)
    return _solve_rows_ok(H, eye)


def open_game(method: str, model, inputs, target, masker, background, output, batch_size,
              progress, groups, link, background_size, forward_args=None) -> Game:
    """The game every Shapley estimator explains: players are the masker's features or the
    user's ``groups`` (for several inputs, the columns of all of them); columns equal to every
    background row are null players (exactly 0); ``forward_args`` go to every model call."""
    return Game(model, inputs, target, masker, background, output, batch_size, method=method,
                progress=progress, groups=groups, link=link, background_size=background_size,
                drop_null=True, forward_args=forward_args)


def start_estimate(method: str, model, inputs, target, masker, background, output, batch_size,
                   progress, budget, tol, max_budget, seed, groups=None, link="identity",
                   background_size=None, forward_args=None):
    """What the sampled Shapley estimators (kernel, permutation) share before they sample.

    Validates ``budget``, ``max_budget`` and ``tol``, opens the game (:func:`open_game`) and
    evaluates the empty and full coalitions. Returns ``(game, budget, max_budget, base, full,
    generators)`` with one numpy Generator per explained row.
    """
    budget = check_budget(budget)
    max_budget = check_budget(max_budget, "max_budget")
    check_number(tol, "tol", low=0, low_open=True)
    game = open_game(method, model, inputs, target, masker, background, output, batch_size,
                     progress, groups, link, background_size, forward_args)
    return game, budget, max_budget, game.empty_value(), game.full_value(), row_generators(seed, game.n)
