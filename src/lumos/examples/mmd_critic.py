"""Prototypes and criticisms: MMD-critic (Kim, Khanna & Koyejo, *Examples are not Enough, Learn to
Criticize!*, NeurIPS 2016).

Prototypes are data points whose distribution is as close as possible to the data's, measured by
the maximum mean discrepancy (MMD) under an RBF kernel ``k(x, y) = exp(-|x - y|² / (2 σ²))``:

    MMD²(X, S) = mean_{i,j∈X} k(x_i, x_j) - 2 mean_{i∈X, j∈S} k(x_i, x_j) + mean_{i,j∈S} k(x_i, x_j)

chosen greedily, one point at a time, each step taking the point that lowers MMD² most (the
objective is monotone submodular for this kernel, which is what makes greedy selection
near-optimal). Criticisms are the points the prototypes explain worst: where the *witness function*

    witness(x) = mean_{i∈X} k(x, x_i) - mean_{j∈S} k(x, s_j)

is largest in magnitude (positive: the data are denser there than the prototypes say; negative:
the prototypes over-represent the region). They are chosen greedily maximising
``Σ |witness(c)| + log det K_CC``: the log-determinant regulariser keeps criticisms apart
(Kim et al.'s diversity term; ``regularizer=None`` drops it).

Points are rows of a table or of an embedding, flattened images, or the activations of any layer
of a torch model (``model=``, ``at=``, streamed in batches). ``labels=`` selects prototypes per class
(each class against its own data), otherwise globally. The kernel's width ``bandwidth`` (σ) is set
by the median heuristic by default: ``σ² = median |x_i - x_j|² / 2`` over the points, so that the
median pair has ``k = e^{-1}``.

>>> from lumos.examples import prototypes
>>> pc = prototypes(train_images, labels=train_labels, n_prototypes=4, n_criticisms=2,
...                 model=model, at="pool")
>>> pc.prototypes[0], pc.criticisms[0]     # indices into the data, for class 0
>>> pc.plot(train_images)                  # one row of prototypes and criticisms per class
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._represent import represent

__all__ = ["prototypes", "Prototypes", "witness", "mmd2", "rbf_kernel", "median_bandwidth"]

_REGULARIZERS = ("logdet", None)
# pairs used by the median heuristic: all pairs up to this many points, a seeded subsample above
_MEDIAN_POINTS = 2000
# kernel rows computed at once (bounded memory: CHUNK x n float64)
_CHUNK = 1024


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-|a_i - b_j|² / (2 bandwidth²))`` for rows ``a`` (n, d) and ``b`` (m, d), float64."""
    ta = torch.from_numpy(np.ascontiguousarray(a, np.float64))
    tb = torch.from_numpy(np.ascontiguousarray(b, np.float64))
    d2 = torch.cdist(ta, tb, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    return torch.exp(-d2 / (2.0 * bandwidth ** 2)).numpy()


def median_bandwidth(points: np.ndarray, seed: int = 0) -> float:
    """The median heuristic: ``σ = sqrt(median_{i<j} |x_i - x_j|² / 2)``.

    Over all pairs of up to 2,000 points, of a seeded subsample of 2,000 points above that.
    """
    from ..core.execution import rng

    x = np.asarray(points, np.float64)
    if len(x) > _MEDIAN_POINTS:
        x = x[np.sort(rng(seed).choice(len(x), _MEDIAN_POINTS, replace=False))]
    if len(x) < 2:
        raise ValueError("the median heuristic needs at least 2 points; give bandwidth= explicitly")
    t = torch.from_numpy(x)
    d2 = torch.cdist(t, t, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    iu = torch.triu_indices(len(x), len(x), 1)
    med = float(np.median(d2[iu[0], iu[1]].numpy()))
    if med <= 0:
        raise ValueError("the median heuristic gives bandwidth 0 (more than half the pairs of points are "
                         "identical); give bandwidth= explicitly")
    return float(np.sqrt(med / 2.0))


def _kernel_col_means(x: np.ndarray, bandwidth: float) -> np.ndarray:
    """``mean_i k(x_i, x_c)`` for every c, streamed over row chunks (memory CHUNK x n)."""
    out = np.zeros(len(x))
    for i in range(0, len(x), _CHUNK):
        out += rbf_kernel(x[i:i + _CHUNK], x, bandwidth).sum(0)
    return out / len(x)


def mmd2(data: np.ndarray, subset: np.ndarray, bandwidth: float) -> float:
    """Biased (V-statistic) MMD² between the rows of ``data`` and of ``subset`` under the RBF kernel."""
    data, subset = np.asarray(data, np.float64), np.asarray(subset, np.float64)
    kxx = _kernel_col_means(data, bandwidth).mean()
    kxs = sum(rbf_kernel(data[i:i + _CHUNK], subset, bandwidth).sum()
              for i in range(0, len(data), _CHUNK)) / (len(data) * len(subset))
    kss = rbf_kernel(subset, subset, bandwidth).mean()
    return float(kxx - 2.0 * kxs + kss)


def witness(points: Any, data: Any, prototypes: Any, bandwidth: float) -> np.ndarray:
    """The MMD witness function at ``points``: ``mean_i k(p, x_i) - mean_j k(p, s_j)`` (n_points,).

    Zero where the prototypes ``prototypes`` represent the data ``data`` exactly (in particular
    everywhere when the prototypes are the data); positive where the data are denser than the
    prototypes, negative where they are sparser. All arguments are ``(n, d)`` arrays in one
    representation.
    """
    p = np.asarray(points, np.float64)
    x = np.asarray(data, np.float64)
    s = np.asarray(prototypes, np.float64)
    if p.ndim != 2 or x.ndim != 2 or s.ndim != 2 or not (p.shape[1] == x.shape[1] == s.shape[1]):
        raise ValueError(f"points, data and prototypes must be (n, d) arrays with one d; got shapes "
                         f"{p.shape}, {x.shape}, {s.shape}")
    dens = np.zeros(len(p))
    for i in range(0, len(x), _CHUNK):
        dens += rbf_kernel(p, x[i:i + _CHUNK], bandwidth).sum(1)
    return dens / len(x) - rbf_kernel(p, s, bandwidth).mean(1)


def _greedy_prototypes(x: np.ndarray, m: int, bandwidth: float) -> tuple[list[int], list[float]]:
    """Greedy MMD² minimisation; returns the indices and MMD² after each step."""
    n = len(x)
    colmean = _kernel_col_means(x, bandwidth)          # mean_i k(x_i, x_c)
    kxx = colmean.mean()
    ks = np.zeros(n)                                   # sum_{j∈S} k(x_c, s_j)
    kss = 0.0                                          # sum_{i,j∈S} k
    cross = 0.0                                        # sum_{j∈S} colmean[j]
    chosen: list[int] = []
    trail: list[float] = []
    free = np.ones(n, bool)
    for step in range(m):
        size = step + 1
        # MMD² after adding candidate c, for every c at once (k(c, c) = 1)
        after = kxx - 2.0 * (cross + colmean) / size + (kss + 2.0 * ks + 1.0) / size ** 2
        after = np.where(free, after, np.inf)
        c = int(np.argmin(after))                      # ties: the lowest index
        chosen.append(c)
        trail.append(float(after[c]))
        free[c] = False
        col = rbf_kernel(x, x[c:c + 1], bandwidth)[:, 0]
        kss += 2.0 * ks[c] + 1.0
        cross += colmean[c]
        ks += col
    return chosen, trail


def _greedy_criticisms(x: np.ndarray, w: np.ndarray, exclude: list[int], m: int, bandwidth: float,
                       regularizer: str | None) -> list[int]:
    """Greedy maximisation of ``sum |w(c)| + log det K_CC`` over points not in ``exclude``."""
    n = len(x)
    free = np.ones(n, bool)
    free[exclude] = False
    score = np.abs(w)
    chosen: list[int] = []
    # the Schur complement k(c,c) - k_cC K_CC^-1 k_Cc for every c, updated by one Cholesky row per
    # step: log det K_{C+c} = log det K_CC + log(schur[c])
    schur = np.ones(n)
    basis: list[np.ndarray] = []                      # rows of L^-1 K_C. (incremental Cholesky)
    for _ in range(m):
        if not free.any():
            break
        gain = score + (np.log(np.maximum(schur, 1e-300)) if regularizer == "logdet" else 0.0)
        gain = np.where(free, gain, -np.inf)
        c = int(np.argmax(gain))
        chosen.append(c)
        free[c] = False
        if regularizer == "logdet":
            kc = rbf_kernel(x, x[c:c + 1], bandwidth)[:, 0]
            v = kc - sum(b * b[c] for b in basis) if basis else kc.copy()
            piv = np.sqrt(max(schur[c], 1e-300))
            v = v / piv
            basis.append(v)
            schur = schur - v ** 2
    return chosen


@dataclass
class Prototypes:
    """Prototypes and criticisms of a data set, per class or global.

    Attributes
    ----------
    prototypes : dict
        ``class -> ndarray of int``: indices into the data, in the order chosen (the first is the
        single most representative point). Global selection has the one key ``None``.
    criticisms : dict
        ``class -> ndarray of int``, in the order chosen.
    witness : dict
        ``class -> ndarray``: the witness function of each criticism (same order).
    mmd2 : dict
        ``class -> ndarray``: MMD² between the class's data and its first ``j + 1`` prototypes.
    bandwidth : dict
        ``class -> float``: the kernel width σ used.
    at : str or None
        The layer whose activations were the points (``None``: the inputs).
    """

    prototypes: dict
    criticisms: dict
    witness: dict
    mmd2: dict
    bandwidth: dict
    at: Any = None
    params: dict = field(default_factory=dict)

    @property
    def classes(self) -> list:
        return list(self.prototypes)

    def to_frame(self):
        """One row per selected point: class, kind (prototype/criticism), rank, index, witness."""
        import pandas as pd

        rows = []
        for c in self.classes:
            for r, i in enumerate(self.prototypes[c]):
                rows.append({"class": c, "kind": "prototype", "rank": r, "index": int(i), "witness": np.nan})
            for r, (i, w) in enumerate(zip(self.criticisms[c], self.witness[c])):
                rows.append({"class": c, "kind": "criticism", "rank": r, "index": int(i), "witness": float(w)})
        return pd.DataFrame(rows)

    def plot(self, images: Any, class_names=None):
        """A grid: per class one row, prototypes (blue frames) then criticisms (red frames, with
        their witness value). ``images`` are the data the indices refer to. Returns the figure."""
        rows = []
        for c in self.classes:
            protos, crits = self.prototypes[c], self.criticisms[c]
            label = ("all" if c is None else class_names[c] if class_names is not None and isinstance(c, int)
                     else f"class {c}")
            ims = [images[int(i)] for i in protos] + [images[int(i)] for i in crits]
            titles = [f"P{r + 1} #{int(i)}" for r, i in enumerate(protos)]
            titles += [f"C{r + 1} #{int(i)}\nw={w:+.2g}" for r, (i, w) in enumerate(zip(crits, self.witness[c]))]
            rows.append((label, ims, titles, ["tab:blue"] * len(protos) + ["tab:red"] * len(crits)))
        from ._pictures import example_grid

        where = "inputs" if self.at is None else f"layer {self.at!r}"
        return example_grid(rows, suptitle=f"MMD-critic in {where}: prototypes (blue), criticisms (red)")


def prototypes(inputs: Any, n_prototypes: int = 5, n_criticisms: int = 0, *, labels: Any = None,
               model: Any = None, at: Any = None, bandwidth: float | None = None,
               regularizer: str | None = "logdet", batch_size: int | None = None,
               layer_side: str = "output", seed: int = 0) -> Prototypes:
    """MMD-critic prototypes and criticisms (Kim et al. 2016).

    Parameters
    ----------
    inputs : array, tensor or DataFrame, (n, ...)
        Table rows, embeddings or images (flattened), or the inputs of ``model``.
    n_prototypes : int, default 5
        Per class (with ``labels``) or in all.
    n_criticisms : int, default 0
        Per class or in all.
    labels : array-like of int, (n,), optional
        Select per class, each class's prototypes against the class's own points.
    model : torch.nn.Module, optional
        Represent ``inputs`` by the activations of layer ``at`` (streamed in batches).
    at : str, optional
        Dotted layer name (e.g. ``"pool"``, the DemoCNN's penultimate layer).
    bandwidth : float, optional
        The RBF kernel's σ. Default: the median heuristic per class (:func:`median_bandwidth`).
    regularizer : {"logdet", None}, default "logdet"
        The diversity term of the criticism objective.
    batch_size : int, optional
        Forward-pass batch size when ``model`` is given.
    layer_side : {"output", "input"}, default "output"
    seed : int, default 0
        Seeds the median heuristic's subsample (above 2,000 points).

    Returns
    -------
    Prototypes
    """
    from ..core.validation import check_choice, check_number

    n_prototypes = check_number(n_prototypes, "n_prototypes", low=1, integer=True)
    n_criticisms = check_number(n_criticisms, "n_criticisms", low=0, integer=True)
    check_choice(regularizer, "regularizer", _REGULARIZERS)
    if bandwidth is not None:
        bandwidth = check_number(bandwidth, "bandwidth", low=0, low_open=True)
    x = represent(inputs, model, at, batch_size=batch_size, layer_side=layer_side, name="inputs")
    if labels is None:
        groups = {None: np.arange(len(x))}
    else:
        lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.shape != (len(x),):
            raise ValueError(f"labels must have shape ({len(x)},), one per input; got {lab.shape}")
        groups = {(int(c) if np.issubdtype(lab.dtype, np.integer) else c): np.flatnonzero(lab == c)
                  for c in np.unique(lab)}
    out = {k: {} for k in ("prototypes", "criticisms", "witness", "mmd2", "bandwidth")}
    for c, idx in groups.items():
        xc = x[idx]
        where = "the data" if c is None else f"class {c!r}"
        if n_prototypes + n_criticisms > len(xc):
            raise ValueError(f"n_prototypes + n_criticisms ({n_prototypes} + {n_criticisms}) exceeds the "
                             f"{len(xc)} points of {where}")
        bw = bandwidth if bandwidth is not None else median_bandwidth(xc, seed)
        chosen, trail = _greedy_prototypes(xc, n_prototypes, bw)
        w = witness(xc, xc, xc[chosen], bw)
        crit = _greedy_criticisms(xc, w, chosen, n_criticisms, bw, regularizer) if n_criticisms else []
        out["prototypes"][c] = idx[chosen]
        out["criticisms"][c] = idx[crit].astype(np.int64)
        out["witness"][c] = w[crit] if crit else np.zeros(0)
        out["mmd2"][c] = np.asarray(trail)
        out["bandwidth"][c] = float(bw)
    return Prototypes(**out, at=at, params=dict(n_prototypes=n_prototypes, n_criticisms=n_criticisms,
                                                regularizer=regularizer, seed=seed))
