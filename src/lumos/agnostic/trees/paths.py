"""Root-to-leaf paths of a :class:`~.ensemble.TreeEnsemble`, and its own prediction.

TreeSHAP works path by path: every leaf's path with repeated splits on a feature merged into one
interval, its zero fractions (cover ratios) and, for a row, its one fractions (does the row
follow each condition). :func:`predict` walks all trees at once to check a parse against the
model's own output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ensemble import TreeEnsemble

__all__ = ["PathGroup", "paths", "predict", "WORK"]

# Elements per work array (rows x paths x slots); keeps temporaries in the few-MB range.
WORK = 1 << 20


@dataclass
class PathGroup:
    """The leaves whose root paths split on exactly ``D`` distinct features (slot axis first)."""

    D: int
    leaf: np.ndarray     # (L,) global node index of each leaf
    feat: np.ndarray     # (D, L) the distinct features
    lo: np.ndarray       # (D, L) the path interval is lo < x <= hi
    hi: np.ndarray
    nan_ok: np.ndarray   # (D, L) a missing value follows the path at every split on the feature
    z: np.ndarray        # (D, L) zero fractions (cover ratios, multiplied over the splits)

    def as_float32(self) -> "PathGroup":
        """The same intervals for rows stored in float32: for a float32 ``x``, ``x <= t`` iff
        ``x <= t'`` with ``t'`` the largest float32 not above ``t`` (half the memory traffic)."""
        def floor32(t):
            t32 = t.astype(np.float32)
            return np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32)

        return PathGroup(self.D, self.leaf, self.feat, floor32(self.lo), floor32(self.hi),
                          self.nan_ok, self.z)

    def bits(self, XT: np.ndarray, ls: slice, has_nan: bool) -> np.ndarray:
        """``o`` (D, L, n) for the rows of ``XT`` (F, n): does the row follow each path slot."""
        xs = XT[self.feat[:, ls]]                                  # (D, L, n)
        o = (xs > self.lo[:, ls, None]) & (xs <= self.hi[:, ls, None])
        if has_nan:
            miss = np.isnan(xs)
            if miss.any():
                o = np.where(miss, self.nan_ok[:, ls, None], o)
        return o


def paths(ens: TreeEnsemble) -> tuple[list[PathGroup], np.ndarray, int]:
    """Every leaf's root path with repeated features merged, grouped by path length.

    Returns the groups, the expected value of every output under the cover distribution
    (shape (K,)), and the maximum depth.
    """
    n = len(ens.left)
    internal = np.flatnonzero(ens.left >= 0)
    parent = np.full(n, -1, dtype=np.int64)
    parent[ens.left[internal]] = internal
    parent[ens.right[internal]] = internal
    went_left = np.zeros(n, dtype=bool)
    went_left[ens.left[internal]] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(parent >= 0, ens.cover / ens.cover[np.maximum(parent, 0)], 1.0)
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)

    leaves = np.flatnonzero(ens.left < 0)
    n_leaves = len(leaves)
    rows, feats, thr, isleft, rat, nanok = [], [], [], [], [], []
    cur = leaves.copy()
    idx = np.arange(n_leaves)
    depth = 0
    while True:
        p = parent[cur]
        act = p >= 0
        if not act.any():
            break
        depth += 1
        c, p, r = cur[act], p[act], idx[act]
        rows.append(r)
        feats.append(ens.feature[p])
        thr.append(ens.threshold[p])
        isleft.append(went_left[c])
        rat.append(ratio[c])
        nanok.append(ens.nan_left[p] == went_left[c])
        cur, idx = p, r
    # Expected value: Σ_l v_l Π ratios along the path (product over all edges).
    prob = np.ones(n_leaves)
    groups: list[PathGroup] = []
    if rows:
        rows, feats, thr = np.concatenate(rows), np.concatenate(feats), np.concatenate(thr)
        isleft, rat, nanok = np.concatenate(isleft), np.concatenate(rat), np.concatenate(nanok)
        np.multiply.at(prob, rows, rat)
        key = rows * ens.n_features + feats
        order = np.argsort(key, kind="stable")
        key, rows, feats, thr = key[order], rows[order], feats[order], thr[order]
        isleft, rat, nanok = isleft[order], rat[order], nanok[order]
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        hi = np.minimum.reduceat(np.where(isleft, thr, np.inf), start)
        lo = np.maximum.reduceat(np.where(isleft, -np.inf, thr), start)
        z = np.multiply.reduceat(rat, start)
        ok = np.minimum.reduceat(nanok.astype(np.uint8), start).astype(bool)
        g_row, g_feat = rows[start], feats[start]
        d_row = np.bincount(g_row, minlength=n_leaves)
        first = np.r_[0, np.cumsum(d_row)[:-1]]
        for d in np.unique(d_row):
            if d == 0:
                continue
            sel = np.flatnonzero(d_row == d)
            gi = first[sel][:, None] + np.arange(d)
            gi = gi.T                                               # slot axis first
            groups.append(PathGroup(int(d), leaves[sel], g_feat[gi], lo[gi], hi[gi], ok[gi], z[gi]))
    expected = prob @ ens.value[leaves] + ens.offset
    return groups, expected, depth


def predict(ens: TreeEnsemble, X: np.ndarray, depth: int) -> np.ndarray:
    """Raw output of the parsed ensemble, shape (n, K), by walking all trees at once."""
    leaf = ens.left < 0
    idx = np.arange(len(ens.left))
    child = np.stack([np.where(leaf, idx, ens.left), np.where(leaf, idx, ens.right)], 1).ravel()
    feat = np.where(leaf, 0, ens.feature)
    has_nan = bool(np.isnan(X).any())
    out = np.empty((len(X), ens.n_outputs))
    step = max(1, WORK // max(1, ens.n_trees))
    for s in range(0, len(X), step):
        Xc = X[s:s + step]
        rowbase = (np.arange(len(Xc)) * X.shape[1])[:, None]
        xf = Xc.ravel()
        node = np.broadcast_to(ens.roots, (len(Xc), ens.n_trees)).copy()
        for _ in range(depth):                       # leaves loop onto themselves
            x = xf[rowbase + feat[node]]
            right = ~(x <= ens.threshold[node])
            if has_nan:
                right = np.where(np.isnan(x), ~ens.nan_left[node], right)
            node = child[2 * node + right]
        out[s:s + step] = ens.value[node].sum(1)
    return out + ens.offset

