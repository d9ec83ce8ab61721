"""The result of a metric: one score per sample, the direction that is better, the curves behind
the score."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MetricResult", "DIRECTIONS"]

DIRECTIONS = ("higher", "lower")


# ----------------------------------------------------------------------------- the result
@dataclass(eq=False)
class MetricResult:
    """The scores of one metric for one explanation batch.

    Attributes
    ----------
    name : str
        The metric's registry name.
    scores : ndarray of float, shape (n,)
        One score per explained sample (NaN where the metric is undefined for a sample).
    direction : {"higher", "lower"}
        Whether a higher or a lower score means a better explanation.
    method : str
        The explanation method that was scored.
    params : dict
        The metric's parameters.
    curves : dict of str to ndarray
        Curves behind the score, e.g. ``{"x": fractions (S,), "y": scores (n, S)}`` for deletion.
    meta : dict
        Anything else: model evaluations, chance levels, layer names.
    """

    name: str
    scores: np.ndarray
    direction: str
    method: str = ""
    params: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}; got {self.direction!r}")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        """Mean score over samples (NaN scores ignored)."""
        s = self.scores[np.isfinite(self.scores)]
        return float(s.mean()) if len(s) else float("nan")

    @property
    def std(self) -> float:
        """Standard deviation of the scores over samples: the spread, not an error of the mean."""
        s = self.scores[np.isfinite(self.scores)]
        return float(s.std()) if len(s) else float("nan")

    @property
    def sem(self) -> float:
        """Standard error of the mean score."""
        s = self.scores[np.isfinite(self.scores)]
        return float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan")

    @property
    def scale(self) -> str | None:
        """What a model-evaluating metric scored: ``"probability"`` of the target class or the
        ``"raw"`` output (``None`` for metrics that do not evaluate the model)."""
        return self.params.get("scale")

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    def to_dict(self) -> dict:
        """JSON-ready numbers: scores, summary, curves; meta entries that are plain numbers/strings."""
        meta = {}
        for k, v in self.meta.items():
            if isinstance(v, (bool, int, float, str)) or v is None:
                meta[k] = v
            elif isinstance(v, (list, tuple)) and all(isinstance(t, (int, float, str)) for t in v):
                meta[k] = list(v)
        return {
            "name": self.name, "method": self.method, "direction": self.direction,
            "mean": _finite(self.mean), "std": _finite(self.std),
            "scores": [_finite(s) for s in self.scores.tolist()],
            "params": {k: v for k, v in self.params.items()
                       if isinstance(v, (bool, int, float, str, list, tuple)) or v is None},
            "curves": {k: np.asarray(v).tolist() for k, v in self.curves.items()
                       if np.asarray(v).dtype.kind in "biuf" and np.asarray(v).size <= 100_000},
            "meta": meta,
        }

    def __repr__(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        on = f" on the {self.scale} scale" if self.scale else ""
        return (f"MetricResult({self.name}{arrow} of {self.method or 'explanation'!r}: "
                f"{self.mean:.4g} ± {self.std:.3g} over {len(self)} samples{on})")

    def _repr_html_(self) -> str:
        """Notebooks: a table of the score, its direction, spread and parameters (escaped)."""
        from ..display.metrics import metric_result_html

        return metric_result_html(self)


def _finite(v: float):
    return float(v) if np.isfinite(v) else None
