"""Model-agnostic counterfactual searches: genetic and random search over a data-driven
neighbourhood, nearest real data points by a k-d tree, the refinement that makes a found
counterfactual sparser and closer, and DiCE's diverse selection.

Every candidate a search evaluates has been projected into the feasible set first
(:meth:`~lumos.examples._space.Space.project`), so every valid candidate respects every
constraint by construction; the entry function re-verifies the ones it returns.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Pool", "genetic", "kdtree", "refine", "select", "dpp_diversity"]


class Pool:
    """Valid candidates found so far, and the best margin reached (for a "not found" answer)."""

    def __init__(self, d: int):
        self.rows: list[np.ndarray] = []
        self.best_margin = -np.inf
        self.best_row: np.ndarray | None = None
        self.n_valid = 0
        self.d = d

    def add(self, Z: np.ndarray, margin: np.ndarray, valid: np.ndarray) -> None:
        if not len(Z):
            return
        i = int(np.argmax(margin))
        if margin[i] > self.best_margin:
            self.best_margin, self.best_row = float(margin[i]), Z[i].copy()
        if valid.any():
            self.rows.append(Z[valid])
            self.n_valid += int(valid.sum())

    def array(self) -> np.ndarray:
        if not self.rows:
            return np.empty((0, self.d))
        Z = np.concatenate(self.rows)
        _, first = np.unique(Z, axis=0, return_index=True)
        return Z[np.sort(first)]


def _evaluate(scorer, outcome, pool: Pool, Z: np.ndarray, what: str):
    """Margins of the rows of ``Z`` the budget allows (fewer rows when it runs out)."""
    k = scorer.room(len(Z))
    if k == 0:
        return Z[:0], np.empty(0)
    Z = Z[:k]
    m = outcome.margin(scorer.scores(Z, what))
    pool.add(Z, m, outcome.valid(m))
    return Z, m


def genetic(space, scorer, outcome, pool: Pool, gen: np.random.Generator, *, population: int,
            n_iter: int, evolve: bool = True) -> None:
    """Genetic search (``evolve=True``) or plain random search over the neighbourhood of x.

    Individuals start as copies of x with each mutable feature redrawn with a probability drawn
    per individual from U(0.05, 0.6) (:meth:`Space.sample`: the data's values and range). Each
    generation keeps the best fifth (valid ones first, closest first; invalid ones by margin) and
    breeds the rest by uniform crossover of two parents drawn from the better half, then mutation
    (each feature redrawn with probability 1/#mutable, or reverted to x's value with the same
    probability; reverting is what makes counterfactuals sparse). Random search draws
    ``n_iter * population`` rows from the same neighbourhood (evaluated in chunks of 1000).
    """
    n_mut = max(int(space.mutable.sum()), 1)
    p_mut = 1.0 / n_mut

    def draw(k):
        return space.sample(k, gen, gen.uniform(0.05, 0.6, k))

    if not evolve:   # random search: the n_iter rounds' draws, evaluated in chunks of 1000 rows
        total = n_iter * population
        for start in range(0, total, 1000):
            k = min(1000, total - start)
            P, _ = _evaluate(scorer, outcome, pool, draw(k), "candidate counterfactuals")
            if len(P) < k:
                return
        return
    P, m = _evaluate(scorer, outcome, pool, draw(population), "candidate counterfactuals")
    for _ in range(max(n_iter - 1, 0)):
        if not len(P) or scorer.room(1) == 0:
            return
        valid = outcome.valid(m)
        dist = space.distance(P)
        order = np.lexsort((np.where(valid, dist, -m), ~valid))
        P, m = P[order], m[order]
        n_elite = max(population // 5, 1)
        half = max(len(P) // 2, 1)
        n_child = population - n_elite
        a = P[gen.integers(0, half, n_child)]
        b = P[gen.integers(0, half, n_child)]
        child = np.where(gen.random(a.shape) < 0.5, a, b)
        fresh = draw(n_child)
        redraw = gen.random(a.shape) < p_mut
        child[redraw] = fresh[redraw]
        revert = gen.random(a.shape) < p_mut
        child[revert] = np.broadcast_to(space.x, a.shape)[revert]
        child = space.project(child)
        C, mc = _evaluate(scorer, outcome, pool, child, "candidate counterfactuals")
        P = np.concatenate([P[:n_elite], C])
        m = np.concatenate([m[:n_elite], mc])


def refine(space, scorer, outcome, pool: Pool, Z: np.ndarray, n_steps: int = 6) -> np.ndarray:
    """Make each valid row of ``Z`` sparser and closer while it stays valid.

    1. Greedy reverts: all single reverts of a changed feature to x's value are evaluated at once;
       the valid one of smallest distance is kept; repeated until no revert stays valid.
    2. A line search per changed numeric feature towards x's value (``n_steps`` points
       ``x + t (z - x)``, t in (0, 1)); the smallest valid step is kept.
    Every row tried is projected first and added to the pool; the rows of all candidates go to
    the model together (one call per revert round and per line-search slot). Returns the refined
    rows.
    """
    Z = np.array(Z, dtype=np.float64, copy=True).reshape(-1, space.x.shape[0])
    c = len(Z)
    # 1. greedy reverts, all candidates in one model call per round
    active = np.ones(c, bool)
    for _ in range(len(space.x)):   # each accepted revert brings one more feature back
        rows, owner = [], []
        for i in np.flatnonzero(active):
            ch = np.flatnonzero(space.changed(Z[i])[0])
            if len(ch) <= 1:
                active[i] = False
                continue
            T = np.repeat(Z[i][None], len(ch), axis=0)
            T[np.arange(len(ch)), ch] = space.x[ch]
            rows.append(T)
            owner += [i] * len(ch)
        if not rows:
            break
        T, m = _evaluate(scorer, outcome, pool, space.project(np.concatenate(rows)), "refined counterfactuals")
        owner = np.array(owner[:len(T)], dtype=np.int64)
        ok = outcome.valid(m)
        for i in np.flatnonzero(active):
            sel = (owner == i) & ok
            if not sel.any():
                active[i] = False
                continue
            dc = space.distance(T[sel])
            # a revert the projection undoes (x's own value not allowed) gains nothing: stop there
            if dc.min() >= space.distance(Z[i])[0]:
                active[i] = False
                continue
            Z[i] = T[sel][np.argmin(dc)]
        if scorer.room(1) == 0:   # the budget or the time ran out
            return Z
    # 2. line searches: the s-th changed numeric feature of every candidate in one call
    ts = np.arange(1, n_steps + 1) / (n_steps + 1)
    feats = [np.flatnonzero(space.changed(z)[0] & space.numeric) for z in Z]
    for slot in range(max((len(f) for f in feats), default=0)):
        rows, owner = [], []
        for i, f in enumerate(feats):
            if slot < len(f):
                j = f[slot]
                T = np.repeat(Z[i][None], len(ts), axis=0)
                T[:, j] = space.x[j] + ts * (Z[i, j] - space.x[j])
                rows.append(T)
                owner += [i] * len(ts)
        T, m = _evaluate(scorer, outcome, pool, space.project(np.concatenate(rows)), "refined counterfactuals")
        owner = np.array(owner[:len(T)], dtype=np.int64)
        ok = outcome.valid(m)
        for i in np.unique(owner):
            sel = np.flatnonzero((owner == i) & ok)
            if len(sel):
                Z[i] = T[sel[0]]   # the smallest valid step (ts ascend)
        if scorer.room(1) == 0:
            break
    return Z


def kdtree(space, scorer, outcome, pool: Pool, candidates: np.ndarray, report: dict) -> np.ndarray:
    """The real rows of ``candidates`` with the desired outcome that satisfy every constraint,
    ordered by distance to x, found with a k-d tree (scikit-learn ``KDTree``, Manhattan metric)
    on the MAD-scaled embedding (:meth:`Space.embed`, where L1 is the counterfactual distance).

    ``report`` receives, for a "not found" answer, how many rows had the desired outcome and how
    many of those each constraint ruled out.
    """
    from sklearn.neighbors import KDTree

    scored, margins = [], []
    for start in range(0, len(candidates), 1024):
        Zc, m = _evaluate(scorer, outcome, pool, candidates[start:start + 1024], "background rows")
        scored.append(Zc)
        margins.append(m)
        if len(Zc) < len(candidates[start:start + 1024]):
            break
    Z = np.concatenate(scored) if scored else candidates[:0]
    m = np.concatenate(margins) if margins else np.empty(0)
    valid = outcome.valid(m)
    report["scored"] = len(Z)
    report["desired"] = int(valid.sum())
    V = Z[valid]
    bad = space.violations(V)
    ok = np.array([not b for b in bad], bool)
    counts: dict[str, int] = {}
    for b in bad:
        for what in {_kind(v) for v in b}:
            counts[what] = counts.get(what, 0) + 1
    report["blocked"] = counts
    V = V[ok]
    if not len(V):
        return V
    tree = KDTree(space.embed(V), metric="manhattan")
    k = len(V)
    dist, idx = tree.query(space.embed(space.x[None]), k=k)
    # ties in distance keep the data's order (a stable order the brute force can reproduce)
    order = np.lexsort((idx[0], np.round(dist[0], 12)))
    return V[idx[0][order]]


def _kind(violation: str) -> str:
    """"income: 5 outside [10, 80]" -> "income (range)"."""
    name, what = violation.split(": ", 1)
    for key, kind in (("immutable", "immutable"), ("outside", "range"), ("may only", "monotone"),
                      ("not an integer", "integer"), ("category", "allowed categories")):
        if key in what:
            return f"{name} ({kind})"
    return violation


def dpp_diversity(space, Z: np.ndarray) -> float:
    """DiCE's determinantal diversity: det(K) with K_ij = 1 / (1 + dist(c_i, c_j))."""
    if len(Z) == 0:
        return float("nan")
    K = 1.0 / (1.0 + space.pairwise(Z))
    return float(np.linalg.det(K))


def select(space, Z: np.ndarray, n: int, diversity: float) -> np.ndarray:
    """``n`` rows of the pool ``Z``: the closest first, then greedily the row that most increases
    ``diversity * det(K) - mean distance to x / largest distance in the pool`` (DiCE's
    proximity-diversity objective, Mothilal et al. 2020, maximised greedily).
    ``diversity=0`` gives the ``n`` closest rows."""
    if len(Z) == 0:
        return Z
    dist = space.distance(Z)
    order = np.argsort(dist, kind="stable")
    Z, dist = Z[order], dist[order]
    if diversity == 0 or n == 1 or len(Z) <= 1:
        return Z[:n]
    Z, dist = Z[:400], dist[:400]   # the nearest 400 (a pool of thousands adds nothing but time)
    D = space.pairwise(Z)
    scale = max(float(dist.max()), 1e-12)
    chosen = [0]
    while len(chosen) < min(n, len(Z)):
        best, best_val = None, -np.inf
        for c in range(len(Z)):
            if c in chosen:
                continue
            S = chosen + [c]
            K = 1.0 / (1.0 + D[np.ix_(S, S)])
            val = diversity * np.linalg.det(K) - dist[S].mean() / scale
            if val > best_val + 1e-15:
                best, best_val = c, val
        chosen.append(best)
    return Z[chosen]
