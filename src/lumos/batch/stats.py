"""Exact distributions of per-row numbers streamed shard by shard, with bounded memory.

A whole-data-set job stores one score per row and metric (:func:`lumos.batch.explain_dataset`
with ``metrics=``). :func:`distribution` summarises such a column from an iterable of chunks
(one shard's values at a time), re-read a few times, never holding the whole column:

* ``count``, ``min``, ``max``: exact;
* ``mean``: the sum is carried exactly (as a list of non-overlapping floats, Shewchuk's
  expansion, renewed with :func:`math.fsum` per chunk) and rounded once, so it equals
  ``math.fsum(values) / count`` (``statistics.fmean``) bit for bit, whatever the chunking;
* ``std``: the population standard deviation (``ddof=0``, as :attr:`MetricResult.std`) from the
  exact sum of the squared deviations from that mean, ``sqrt(fsum((x - mean)**2) / count)``;
* quantiles: exact, equal to ``np.quantile(values, q)`` (its default "linear" rule) bit for bit:
  the two order statistics around each quantile are found by narrowing an interval of the floats'
  order keys (their bit patterns) 1024-fold per pass until at most ``budget`` values fall into it,
  which are then sorted (at most 7 narrowing passes, whatever the values);
* the histogram: ``np.histogram(values, bins, range=(min, max))`` summed over the chunks, which
  equals the histogram of all values at once (each value's bin depends on the value and the
  range only).

NaN and infinite values (a metric undefined for a row) are counted apart (``nonfinite``) and left
out, as :attr:`MetricResult.mean` leaves them out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["Distribution", "distribution", "DEFAULT_QUANTILES"]

DEFAULT_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


@dataclass
class Distribution:
    """The distribution of one per-row number over a data set (see :func:`distribution`).

    Attributes
    ----------
    name : str
    count : int
        Finite values.
    nonfinite : int
        NaN or infinite values, left out of everything else.
    mean, std, min, max : float
        NaN when ``count`` is 0.
    quantiles : dict of float to float
        ``q -> np.quantile(values, q)``.
    counts : ndarray of int, shape (bins,)
    edges : ndarray of float, shape (bins + 1,)
        The histogram (equal-width bins from ``min`` to ``max``).
    direction : str or None
        ``"higher"`` or ``"lower"`` is better (a metric's direction), when known.
    passes : int
        How many times the values were read.
    """

    name: str
    count: int
    nonfinite: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict = field(default_factory=dict)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    direction: str | None = None
    passes: int = 0

    def to_dict(self) -> dict:
        """Plain JSON-able numbers (lists for the histogram)."""
        return {"count": self.count, "nonfinite": self.nonfinite, "mean": self.mean, "std": self.std,
                "min": self.min, "max": self.max, "quantiles": {str(q): v for q, v in self.quantiles.items()},
                "histogram": {"counts": self.counts.tolist(), "edges": self.edges.tolist()},
                "direction": self.direction}


def _renew(parts: list[float], values: np.ndarray) -> list[float]:
    """The exact sum of ``parts`` and ``values`` as a short list of floats (largest first).

    Each :func:`math.fsum` is the correctly rounded sum of its whole argument, so subtracting the
    parts found so far and summing again yields the next (rounded) remainder; a remainder of zero
    means the parts add up to the sum exactly.
    """
    items = list(parts) + values.tolist()
    out: list[float] = []
    while True:
        s = math.fsum(items + [-p for p in out])
        if s == 0.0:
            return out
        out.append(s)


def _finite(chunk) -> np.ndarray:
    a = np.asarray(chunk, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


_SPLIT = 1024


def _keys(a: np.ndarray) -> np.ndarray:
    """Integers in the order of the floats ``a`` (int64): the bit pattern, negated for negatives,
    so that ``-0.0`` and ``0.0`` share a key. Bins over these keys narrow any interval of floats
    by ``_SPLIT`` per pass, whatever the magnitudes."""
    bits = np.ascontiguousarray(a, dtype=np.float64).view(np.int64)
    return np.where(bits < 0, -(bits & np.int64(0x7FFFFFFFFFFFFFFF)), bits)


def _value(key: int) -> float:
    """The float of an order key (the inverse of :func:`_keys`; ``0`` gives ``0.0``)."""
    bits = np.array([abs(key)], dtype=np.int64)
    v = float(bits.view(np.float64)[0])
    return -v if key < 0 else v


def _split(a: int, b: int) -> np.ndarray:
    """Edges of up to ``_SPLIT`` half-open integer bins ``[e_j, e_j+1)`` covering ``[a, b]``."""
    width = b - a + 1
    return np.unique(np.array([a + width * j // _SPLIT for j in range(_SPLIT + 1)], dtype=np.int64))


def _linear(a: float, b: float, gamma: float) -> float:
    # numpy's own interpolation between two order statistics, so the result is np.quantile's bit for bit
    return float(np.quantile(np.array([a, b]), gamma))


def distribution(chunks: Callable[[], Iterable], *, name: str = "", bins: int = 20,
                 quantiles: Sequence[float] = DEFAULT_QUANTILES, budget: int = 1 << 16,
                 direction: str | None = None) -> Distribution:
    """Count, mean, std, exact quantiles and a histogram of values read chunk by chunk.

    Parameters
    ----------
    chunks : callable
        ``chunks()`` returns a fresh iterable of 1-d arrays (one shard's values each); it is
        called once per pass (2 passes, plus more only when more than ``budget`` values fall
        near a quantile).
    name : str
    bins : int, default 20
        Equal-width histogram bins between the minimum and the maximum.
    quantiles : sequence of float in [0, 1]
    budget : int, default 65536
        The most values held at once besides one chunk.
    direction : str, optional
        Recorded in the result.

    Returns
    -------
    Distribution
    """
    from ..core.validation import check_number

    bins = int(check_number(bins, "bins", low=1, integer=True))
    budget = int(check_number(budget, "budget", low=2, integer=True))
    qs = [float(check_number(q, "quantiles", low=0, high=1)) for q in quantiles]
    # pass 1: count, extremes, exact sum
    count = nonfinite = 0
    lo, hi = math.inf, -math.inf
    parts: list[float] = []
    for chunk in chunks():
        raw = np.asarray(chunk, dtype=np.float64).reshape(-1)
        a = raw[np.isfinite(raw)]
        nonfinite += len(raw) - len(a)
        if len(a):
            count += len(a)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            parts = _renew(parts, a)
    if count == 0:
        nan = float("nan")
        return Distribution(name, 0, nonfinite, nan, nan, nan, nan, {q: nan for q in qs},
                            np.zeros(bins, dtype=np.int64), np.zeros(bins + 1), direction, 1)
    mean = math.fsum(parts) / count
    # the order statistics needed: np.quantile's virtual index h = q (n - 1), between floor(h) and floor(h) + 1
    wanted: dict[float, tuple[int, int, float]] = {}
    for q in qs:
        h = q * (count - 1)
        k = int(math.floor(h))
        wanted[q] = (k, min(k + 1, count - 1), h - k)
    ranks = sorted({r for k, k1, _ in wanted.values() for r in (k, k1)})
    found: dict[int, float] = {}
    # each pending rank: the closed interval [a, b] of order keys (:func:`_keys`) that holds it;
    # each pass splits every interval into _SPLIT bins and keeps the one holding the rank, so a
    # rank is found in at most ceil(64 / log2(_SPLIT)) passes beyond the first, whatever the values
    ka, kb = int(_keys(np.array([lo]))[0]), int(_keys(np.array([hi]))[0])
    pending = {r: (ka, kb) for r in ranks}
    counts = np.zeros(bins, dtype=np.int64)
    sq: list[float] = []
    passes = 1
    first = True  # the second pass also sums the squared deviations and fills the histogram
    while pending:
        passes += 1
        groups: dict[tuple[int, int], list[int]] = {}
        for r, iv in pending.items():
            groups.setdefault(iv, []).append(r)
        edges_of = {iv: _split(*iv) for iv in groups}
        below = dict.fromkeys(groups, 0)
        hist = {iv: np.zeros(len(edges_of[iv]) - 1, dtype=np.int64) for iv in groups}
        held: dict[tuple, list[np.ndarray]] = {iv: [] for iv in groups}
        total_held = 0
        overflow: set = set()
        for chunk in chunks():
            a = _finite(chunk)
            if first:
                counts += np.histogram(a, bins=bins, range=(lo, hi))[0]
                d = a - mean
                sq = _renew(sq, d * d)
            keys = _keys(a)
            for iv in groups:
                inside = (keys >= iv[0]) & (keys <= iv[1])
                below[iv] += int(np.count_nonzero(keys < iv[0]))
                hist[iv] += np.bincount(np.searchsorted(edges_of[iv], keys[inside], side="right") - 1,
                                        minlength=len(hist[iv]))
                if iv not in overflow:
                    got = a[inside]
                    if total_held + len(got) <= budget:
                        held[iv].append(got)
                        total_held += len(got)
                    else:  # too many to hold: this interval is narrowed by its histogram instead
                        overflow.add(iv)
                        total_held -= sum(len(x) for x in held[iv])
                        held[iv] = []
        first = False
        nxt: dict[int, tuple[int, int]] = {}
        for iv, rs in groups.items():
            if iv not in overflow or iv[0] == iv[1]:
                vals = np.sort(np.concatenate(held[iv])) if iv not in overflow else None
                for r in rs:
                    found[r] = _value(iv[0]) if vals is None else float(vals[r - below[iv]])
                continue
            edges, cum = edges_of[iv], np.cumsum(hist[iv])
            for r in rs:
                j = int(np.searchsorted(cum, r - below[iv], side="right"))
                nxt[r] = (int(edges[j]), int(edges[j + 1]) - 1)
        pending = nxt
    std = math.sqrt(math.fsum(sq) / count)
    qv = {q: (found[k] if k == k1 or g == 0.0 else _linear(found[k], found[k1], g))
          for q, (k, k1, g) in wanted.items()}
    edges = np.histogram_bin_edges(np.array([lo, hi]), bins=bins, range=(lo, hi))
    return Distribution(name, count, nonfinite, mean, std, lo, hi, qv, counts, edges, direction, passes)
