"""The space counterfactuals live in: encoded rows, MAD scales, constraints, distances.

Rows are encoded by :class:`lumos.agnostic._tabular.TabularData` (numeric columns as floats,
categorical columns as integer codes), so every search works on one float64 matrix and the model
is handed back what the user gave (a DataFrame with its dtypes, an array, a tensor).

Distance (Wachter et al. 2017; DiCE, Mothilal et al. 2020): the L1 distance with each numeric
feature divided by its median absolute deviation (MAD) over the background, plus 1 for each
categorical feature that differs. A MAD of 0 (a feature constant on more than half the rows, such
as a count that is mostly 0) falls back to the mean absolute deviation, then to 1.

Constraints are turned into one feasible set per feature, checked once against ``x`` (a clear
error when it is empty): numeric features an interval ``[lo, hi]`` (the range, cut by a monotone
direction at ``x``'s value, integer bounds rounded inwards), categorical features a set of allowed
codes; an immutable feature's set is ``x``'s own value. :meth:`Space.project` maps any row into
the feasible set; :meth:`Space.violations` checks a row against the constraints as the user stated
them, independently of the projection (the re-verification of every returned counterfactual).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Space", "feature_indices"]

_DIRECTIONS = {"increase": 1, "decrease": -1, "+": 1, "-": -1, 1: 1, -1: -1}


def feature_indices(spec: Any, names: Sequence[str], arg: str) -> list[int]:
    """Column indices of ``spec`` (names or indices, one or several); a ValueError naming ``arg``."""
    if spec is None:
        return []
    if isinstance(spec, (str, int, np.integer)) and not isinstance(spec, bool):
        spec = [spec]
    out = []
    for c in spec:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= int(c) < len(names):
                raise ValueError(f"{arg}: feature index {c} out of range 0..{len(names) - 1}")
            out.append(int(c))
        elif str(c) in names:
            out.append(names.index(str(c)))
        else:
            import difflib

            close = difflib.get_close_matches(str(c), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{arg}: unknown feature {c!r}{hint} Features are {list(names)}")
    return out


def _items(spec: Any, arg: str) -> list[tuple[Any, Any]]:
    if spec is None:
        return []
    if not isinstance(spec, Mapping):
        raise ValueError(f"{arg} must be a dict {{feature: value}}; got {type(spec).__name__}")
    return list(spec.items())


def mad_scales(B: np.ndarray | None, numeric: np.ndarray) -> np.ndarray:
    """Per-feature MAD of the background (numeric columns); 1 for categorical columns."""
    d = len(numeric)
    scale = np.ones(d)
    if B is None:
        return scale
    for j in np.flatnonzero(numeric):
        col = B[:, j]
        med = np.median(col)
        s = np.median(np.abs(col - med))
        if not s > 0:
            s = np.mean(np.abs(col - col.mean()))
        scale[j] = s if s > 0 else 1.0
    return scale


class Space:
    """Encoded rows with their constraints (see the module docstring).

    Parameters
    ----------
    layout : TabularData
    x : ndarray (d,)
        The explained row, encoded.
    background : ndarray (m, d) or None
        The background rows, encoded.
    immutable, ranges, monotone, integer : as given to :func:`lumos.examples.counterfactuals`.
    """

    def __init__(self, layout, x: np.ndarray, background: np.ndarray | None, *, immutable: Any = None,
                 ranges: Any = None, monotone: Any = None, integer: Any = None):
        self.layout = layout
        self.names = list(layout.names)
        self.x = np.asarray(x, dtype=np.float64)
        self.background = background
        d = len(self.names)
        self.categorical = np.asarray(layout.categorical, bool).copy()
        self.numeric = ~self.categorical
        self.integer = np.asarray(layout.integer, bool).copy() & self.numeric
        for j in feature_indices(integer, self.names, "integer"):
            if self.categorical[j]:
                raise ValueError(f"integer: feature {self.names[j]!r} is categorical")
            self.integer[j] = True
        self.immutable = np.zeros(d, bool)
        self.immutable[feature_indices(immutable, self.names, "immutable")] = True
        self.mad = mad_scales(background, self.numeric)
        # the user's constraints as stated (for violations()), then the feasible sets
        self.range_lo = np.full(d, -np.inf)
        self.range_hi = np.full(d, np.inf)
        self.user_range = np.zeros(d, bool)
        if background is not None:
            num = self.numeric
            # default range: the data's, widened to include x (a default never rules x out)
            self.range_lo[num] = np.minimum(background[:, num].min(0), self.x[num])
            self.range_hi[num] = np.maximum(background[:, num].max(0), self.x[num])
        self.allowed_user: dict[int, np.ndarray] = {}
        for key, val in _items(ranges, "ranges"):
            (j,) = feature_indices([key], self.names, "ranges")
            self.user_range[j] = True
            if self.categorical[j]:
                if isinstance(val, (str, bytes)) or not hasattr(val, "__iter__"):
                    raise ValueError(f"ranges[{self.names[j]!r}]: a categorical feature takes a list of "
                                     f"allowed categories; got {val!r}")
                cats = list(layout.categories[j])
                codes = []
                for v in val:
                    if v not in cats:
                        raise ValueError(f"ranges[{self.names[j]!r}]: unknown category {v!r}; the "
                                         f"categories are {[str(c) for c in cats]}")
                    codes.append(cats.index(v))
                if not codes:
                    raise ValueError(f"ranges[{self.names[j]!r}]: no category allowed")
                self.allowed_user[j] = np.array(sorted(set(codes)), dtype=np.float64)
            else:
                try:
                    lo, hi = val
                except (TypeError, ValueError):
                    raise ValueError(f"ranges[{self.names[j]!r}] must be (low, high) with None for an "
                                     f"open end; got {val!r}") from None
                lo = -np.inf if lo is None else float(lo)
                hi = np.inf if hi is None else float(hi)
                if np.isnan(lo) or np.isnan(hi) or lo > hi:
                    raise ValueError(f"ranges[{self.names[j]!r}]: need low <= high; got {val!r}")
                self.range_lo[j], self.range_hi[j] = lo, hi
        self.direction = np.zeros(d, np.int64)
        for key, val in _items(monotone, "monotone"):
            (j,) = feature_indices([key], self.names, "monotone")
            if isinstance(val, str):
                val = val.lower()
            if val not in _DIRECTIONS:
                raise ValueError(f"monotone[{self.names[j]!r}] must be 'increase' or 'decrease' "
                                 f"(or +1/-1); got {val!r}")
            if self.categorical[j]:
                raise ValueError(f"monotone: feature {self.names[j]!r} is categorical; categories have "
                                 "no direction (restrict them with ranges= instead)")
            self.direction[j] = _DIRECTIONS[val]
        self._feasible_sets()

    # ------------------------------------------------------------------ feasible sets
    def _feasible_sets(self) -> None:
        x = self.x
        for j in np.flatnonzero(self.integer):
            if x[j] != np.round(x[j]):
                raise ValueError(f"integer: feature {self.names[j]!r} of x is {x[j]!r}, not an integer")
        self.lo, self.hi = self.range_lo.copy(), self.range_hi.copy()
        self.lo[self.direction > 0] = np.maximum(self.lo, x)[self.direction > 0]
        self.hi[self.direction < 0] = np.minimum(self.hi, x)[self.direction < 0]
        self.lo[self.integer] = np.ceil(self.lo[self.integer])
        self.hi[self.integer] = np.floor(self.hi[self.integer])
        imm = self.immutable
        for j in np.flatnonzero(imm & self.numeric):
            if not self.range_lo[j] <= x[j] <= self.range_hi[j]:
                raise ValueError(f"feature {self.names[j]!r} is immutable but x's value {x[j]:g} is "
                                 f"outside its range [{self.range_lo[j]:g}, {self.range_hi[j]:g}]")
            self.lo[j] = self.hi[j] = x[j]
        for j in np.flatnonzero(self.numeric & (self.lo > self.hi)):
            why = []
            if self.direction[j]:
                why.append(f"it may only {'increase' if self.direction[j] > 0 else 'decrease'} from {x[j]:g}")
            raise ValueError(f"no value of feature {self.names[j]!r} satisfies its constraints: range "
                             f"[{self.range_lo[j]:g}, {self.range_hi[j]:g}]"
                             + (f", {why[0]}" if why else "")
                             + (", integer" if self.integer[j] else ""))
        self.allowed: dict[int, np.ndarray] = {}
        for j in np.flatnonzero(self.categorical):
            codes = self.allowed_user.get(j, np.arange(len(self.layout.categories[j]), dtype=np.float64))
            if imm[j]:
                if x[j] not in codes:
                    raise ValueError(f"feature {self.names[j]!r} is immutable but x's category is not "
                                     "among its allowed ones (ranges=)")
                codes = np.array([x[j]])
            self.allowed[j] = codes
        self.fixed = imm.copy()  # features that cannot move at all
        self.fixed[self.numeric] |= self.lo[self.numeric] == self.hi[self.numeric]
        for j, codes in self.allowed.items():
            self.fixed[j] |= len(codes) == 1 and codes[0] == x[j]
        self.mutable = ~self.fixed
        if not self.mutable.any():
            raise ValueError("every feature is held fixed by the constraints (immutable=, ranges=, "
                             "monotone=): no counterfactual can differ from x")

    # ------------------------------------------------------------------ projection, checks
    def project(self, Z: np.ndarray, round_integers: bool = True) -> np.ndarray:
        """Rows of ``Z`` mapped into the feasible set (a copy)."""
        Z = np.array(Z, dtype=np.float64, copy=True)
        num = self.numeric
        Z[:, num] = np.clip(Z[:, num], self.lo[num], self.hi[num])
        if round_integers and self.integer.any():
            Z[:, self.integer] = np.rint(Z[:, self.integer])  # bounds are integral: stays inside
        for j, codes in self.allowed.items():
            c = np.rint(Z[:, j])
            bad = ~np.isin(c, codes)
            c[bad] = self.x[j] if self.x[j] in codes else codes[0]
            Z[:, j] = c
        Z[:, self.immutable] = self.x[self.immutable]
        return Z

    def violations(self, Z: np.ndarray) -> list[list[str]]:
        """For each row, the constraints it breaks (as the user stated them); [] when none."""
        out = []
        x = self.x
        for z in np.atleast_2d(Z):
            bad = []
            for j, name in enumerate(self.names):
                if self.immutable[j] and z[j] != x[j]:
                    bad.append(f"{name}: immutable, changed")
                if self.categorical[j]:
                    ok = np.arange(len(self.layout.categories[j])) if j not in self.allowed_user else self.allowed_user[j]
                    if z[j] not in ok:
                        bad.append(f"{name}: category code {z[j]!r} not allowed")
                    continue
                if not self.range_lo[j] <= z[j] <= self.range_hi[j]:
                    bad.append(f"{name}: {z[j]:g} outside [{self.range_lo[j]:g}, {self.range_hi[j]:g}]")
                if self.direction[j] * (z[j] - x[j]) < 0:
                    bad.append(f"{name}: may only {'increase' if self.direction[j] > 0 else 'decrease'}")
                if self.integer[j] and z[j] != np.round(z[j]):
                    bad.append(f"{name}: {z[j]!r} is not an integer")
            out.append(bad)
        return out

    # ------------------------------------------------------------------ distances
    def changed(self, Z: np.ndarray) -> np.ndarray:
        """(n, d) bool: which features differ from x."""
        return np.atleast_2d(Z) != self.x

    def embed(self, Z: np.ndarray) -> np.ndarray:
        """Rows in a space where the L1 distance is the counterfactual distance: numeric features
        divided by their MAD, each categorical feature one-hot with weight 1/2."""
        Z = np.atleast_2d(Z)
        parts = [Z[:, self.numeric] / self.mad[self.numeric]]
        for j in np.flatnonzero(self.categorical):
            k = len(self.layout.categories[j])
            parts.append(0.5 * (np.rint(Z[:, j])[:, None] == np.arange(k)))
        return np.concatenate(parts, axis=1)

    def distance(self, Z: np.ndarray, to: np.ndarray | None = None) -> np.ndarray:
        """(n,) MAD-scaled L1 distance of each row of ``Z`` to ``to`` (default x)."""
        Z = np.atleast_2d(Z)
        ref = self.x if to is None else np.asarray(to, np.float64)
        diff = np.abs(Z - ref)
        dist = (diff[:, self.numeric] / self.mad[self.numeric]).sum(1)
        return dist + (diff[:, self.categorical] > 0).sum(1)

    def pairwise(self, Z: np.ndarray) -> np.ndarray:
        """(n, n) distances between the rows of ``Z``."""
        Z = np.atleast_2d(Z)
        return np.stack([self.distance(Z, z) for z in Z], axis=1) if len(Z) else np.zeros((0, 0))

    def pinned(self, z: np.ndarray) -> list[str]:
        """The constraints a row sits against: immutable features, and features at (within 2 % of)
        a bound set by ``ranges=``, a monotone direction, or the data's range."""
        out = []
        for j, name in enumerate(self.names):
            if self.immutable[j]:
                out.append(f"{name} (immutable)")
            elif self.numeric[j] and self.lo[j] < self.hi[j]:
                # "at" a bound: within 2 % of the interval (a search rarely lands on it exactly)
                tol = 0.02 * (self.hi[j] - self.lo[j]) if np.isfinite(self.hi[j] - self.lo[j]) else 0.0
                if z[j] <= self.lo[j] + tol and (self.direction[j] > 0 or self.user_range[j] or np.isfinite(self.lo[j])):
                    why = "may only increase" if self.direction[j] > 0 and self.lo[j] == self.x[j] else \
                        f"lower bound {self.lo[j]:g}"
                    out.append(f"{name} ({why})")
                elif z[j] >= self.hi[j] - tol and (self.direction[j] < 0 or self.user_range[j] or np.isfinite(self.hi[j])):
                    why = "may only decrease" if self.direction[j] < 0 and self.hi[j] == self.x[j] else \
                        f"upper bound {self.hi[j]:g}"
                    out.append(f"{name} ({why})")
            elif self.numeric[j]:
                out.append(f"{name} (fixed by its constraints)")
            elif len(self.allowed[j]) == 1:
                out.append(f"{name} (one allowed category)")
        return out

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, gen: np.random.Generator, p_change: float) -> np.ndarray:
        """``n`` rows around x: each mutable feature is redrawn with probability ``p_change``
        (numeric: half from the background's values, half uniform in its feasible interval
        (the data's range by default); categorical: uniform over the allowed categories)."""
        Z = np.repeat(self.x[None], n, axis=0)
        for j in np.flatnonzero(self.mutable):
            change = gen.random(n) < p_change
            k = int(change.sum())
            if not k:
                continue
            if self.categorical[j]:
                Z[change, j] = gen.choice(self.allowed[j], size=k)
                continue
            lo, hi = self.lo[j], self.hi[j]
            vals = np.empty(k)
            if self.background is not None:
                col = self.background[:, j]
                col = col[(col >= lo) & (col <= hi)]
            else:
                col = np.empty(0)
            from_data = gen.random(k) < 0.5 if len(col) else np.zeros(k, bool)
            vals[from_data] = gen.choice(col, size=int(from_data.sum())) if from_data.any() else vals[from_data]
            rest = ~from_data
            if np.isfinite(lo) and np.isfinite(hi):
                vals[rest] = gen.uniform(lo, hi, int(rest.sum()))
                # one draw in ten at a bound: the searches reach the ends of a range
                edge = rest & (gen.random(k) < 0.1)
                vals[edge] = np.where(gen.random(int(edge.sum())) < 0.5, lo, hi)
            else:  # an open end: a step of a few MADs from x towards the open side
                step = gen.normal(0.0, 2.0 * self.mad[j], int(rest.sum()))
                vals[rest] = np.clip(self.x[j] + step, lo, hi)
            Z[change, j] = vals
        return self.project(Z)
