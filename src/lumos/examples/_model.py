"""The model as counterfactual searches see it: scores of encoded rows, the desired outcome as a
margin, and the evaluation and time budget.

The model is called only through :class:`lumos.core.blackbox.BlackBox` (a torch module under
ModelGuard, an estimator's scoring function chosen by ``output=``, a copy of every batch), with
the encoded rows decoded back into what the user gave.

The desired outcome is a *margin*, positive exactly when the outcome is reached:
- a class ``c`` of a model with one score per class: ``s_c - max_{k != c} s_k`` (valid when > 0:
  the predicted class, the argmax, is ``c``);
- an output range ``(lo, hi)`` of a model with one score per row: ``min(f - lo, hi - f)`` (valid
  when >= 0).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..core.blackbox import BlackBox

__all__ = ["Outcome", "Scorer"]


class Outcome:
    """The desired outcome (see the module docstring)."""

    def __init__(self, desired: Any, s0: np.ndarray):
        s0 = np.asarray(s0, np.float64)
        self.n_outputs = 1 if s0.ndim == 1 else s0.shape[1]
        if isinstance(desired, (tuple, list)) and len(desired) == 2 and not isinstance(desired, str):
            if s0.ndim != 1:
                raise ValueError(f"desired={desired!r} is an output range, but the model returns "
                                 f"{s0.shape[1]} scores per row; give a class index (or choose one "
                                 "score with output=, or wrap the model to return it)")
            lo, hi = desired
            self.lo = -np.inf if lo is None else float(lo)
            self.hi = np.inf if hi is None else float(hi)
            if np.isnan(self.lo) or np.isnan(self.hi) or self.lo > self.hi:
                raise ValueError(f"desired: an output range needs low <= high (None for an open end); "
                                 f"got {desired!r}")
            self.kind, self.cls = "range", None
            return
        if s0.ndim == 1:
            raise ValueError(f"desired={desired!r}: the model returns one score per row, so the "
                             "desired outcome is an output range (low, high), e.g. desired=(0.5, None) "
                             "for a probability above 0.5 or (0, None) for a positive logit")
        k = s0.shape[1]
        if isinstance(desired, str):
            if desired != "opposite":
                raise ValueError(f"desired must be a class index, 'opposite' or an output range "
                                 f"(low, high); got {desired!r}")
            if k != 2:
                raise ValueError(f"desired='opposite' needs a binary classifier; the model returns "
                                 f"{k} scores per row: give the desired class index")
            desired = 1 - int(np.argmax(s0[0]))
        if isinstance(desired, bool) or not isinstance(desired, (int, np.integer)) or not 0 <= desired < k:
            raise ValueError(f"desired must be a class index in 0..{k - 1}, 'opposite' or an output "
                             f"range (low, high); got {desired!r}")
        self.kind, self.cls = "class", int(desired)
        self.lo = self.hi = None

    def margin(self, S: np.ndarray) -> np.ndarray:
        S = np.asarray(S, np.float64)
        if self.kind == "range":
            return np.minimum(S - self.lo, self.hi - S)
        others = np.delete(S, self.cls, axis=1)
        return S[:, self.cls] - others.max(1)

    def valid(self, margin: np.ndarray) -> np.ndarray:
        margin = np.asarray(margin)
        return margin >= 0 if self.kind == "range" else margin > 0

    def predicted(self, S: np.ndarray) -> np.ndarray:
        """What the table shows as the outcome: the predicted class or the output."""
        S = np.asarray(S, np.float64)
        return S if S.ndim == 1 else S.argmax(1)

    def describe(self) -> str:
        if self.kind == "class":
            return f"class {self.cls}"
        lo = "-inf" if not np.isfinite(self.lo) else f"{self.lo:g}"
        hi = "inf" if not np.isfinite(self.hi) else f"{self.hi:g}"
        return f"an output in [{lo}, {hi}]"


class Scorer:
    """Scores of encoded rows, counting evaluations against ``budget`` and time against
    ``time_limit``."""

    def __init__(self, model: Any, space, output: str, batch_size: int | None, budget: int | None,
                 time_limit: float | None):
        self.model = model
        self.space = space
        self.bb = BlackBox(model, output=output, batch_size=batch_size, method="counterfactuals")
        self.budget = budget
        self.time_limit = time_limit
        self.t0 = time.perf_counter()
        self.used = 0            # rows evaluated by the search (what budget= bounds)
        self.extra = 0           # rows evaluated outside it (x itself, the final re-check)
        self.stopped = None      # "budget" or "time" once the search hit a limit

    def scores(self, Z: np.ndarray, what: str = "candidate counterfactuals", search: bool = True) -> np.ndarray:
        out = self.bb(self.space.layout.decode(np.asarray(Z, np.float64)), what=what, copy=False)
        out = np.asarray(out, np.float64)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim > 2:
            raise ValueError(f"counterfactuals: the model returned scores of shape {out.shape}; "
                             "expected one score or one row of scores per input")
        if search:
            self.used += len(Z)
        else:
            self.extra += len(Z)
        return out

    def room(self, n: int) -> int:
        """How many of ``n`` rows the search may still evaluate (0: stop)."""
        if self.time_limit is not None and time.perf_counter() - self.t0 >= self.time_limit:
            self.stopped = self.stopped or "time"
            return 0
        if self.budget is None:
            return n
        left = max(self.budget - self.used, 0)
        if left < n:
            self.stopped = self.stopped or "budget"
        return min(n, left)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0
