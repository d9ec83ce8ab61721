"""The registry of metrics: each declares its family, its direction and what it needs (a model,
a ground-truth mask...); :func:`available` lists them, :func:`evaluate` runs one by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..core.explanation import Explanation
from .results import DIRECTIONS, MetricResult

__all__ = ["MetricInfo", "MetricTable", "register_metric", "available", "get_metric", "evaluate"]


@dataclass(frozen=True)
class MetricInfo:
    """One row of the metric registry.

    ``needs`` names what the metric takes besides the explanation: ``"model"`` (it evaluates the
    model; the function is ``fn(model, explanation, ...)``), ``"mask"`` (a ground-truth mask),
    ``"baseline"`` (a reference input), ``"explainer"`` (it re-runs the explanation method).
    Metrics without ``"model"`` are ``fn(explanation, ...)``.
    """

    name: str
    family: str
    direction: str
    needs: tuple[str, ...]
    description: str
    func: Callable

    def __str__(self) -> str:
        arrow = "higher" if self.direction == "higher" else "lower"
        return f"{self.name:<28} {self.family:<15} {arrow:<7} {','.join(self.needs) or '-':<22} {self.description}"


class MetricTable(list):
    """A list of :class:`MetricInfo` that prints as a table."""

    def __str__(self) -> str:
        head = f"{'metric':<28} {'family':<15} {'better':<7} {'needs':<22} description"
        return "\n".join([head, "-" * len(head)] + [str(m) for m in self])

    def names(self) -> list[str]:
        return [m.name for m in self]

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


_METRICS: dict[str, MetricInfo] = {}
_NEEDS = ("model", "mask", "baseline", "explainer")


def register_metric(name: str, family: str, direction: str, needs: Sequence[str], description: str
                    ) -> Callable:
    """Decorator: register a metric function under ``name``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    bad = [n for n in needs if n not in _NEEDS]
    if bad:
        raise ValueError(f"needs: unknown requirement(s) {bad}; known: {_NEEDS}")

    def deco(func: Callable) -> Callable:
        _METRICS[name] = MetricInfo(name, family, direction, tuple(needs), description, func)
        return func

    return deco


def _load_all() -> None:
    # importing the package imports every metric module
    import lumos.metrics  # noqa: F401


def available(family: str | None = None) -> MetricTable:
    """All registered metrics (optionally of one family), sorted by family then name."""
    _load_all()
    rows = sorted(_METRICS.values(), key=lambda m: (m.family, m.name))
    if family is not None:
        rows = [m for m in rows if m.family == family]
    return MetricTable(rows)


def get_metric(name: str) -> MetricInfo:
    """Look a metric up by name, with a suggestion when the name is unknown."""
    import difflib

    _load_all()
    if not isinstance(name, str):
        raise TypeError(f"metric must be a string name; got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _METRICS:
        return _METRICS[key]
    close = difflib.get_close_matches(key, list(_METRICS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"metric: unknown metric {name!r}.{hint} Known metrics: {', '.join(sorted(_METRICS))}")


def evaluate(metric: str, model: Any, explanation: Explanation, **params: Any) -> MetricResult:
    """Score ``explanation`` with the metric named ``metric``.

    ``model`` is passed to metrics that need one and ignored (may be ``None``) by the others;
    ``params`` are the metric's own parameters (``mask=`` for localisation metrics).
    """
    info = get_metric(metric)
    if "mask" in info.needs and params.get("mask") is None:
        raise ValueError(f"mask: the metric {info.name!r} needs a ground-truth mask (mask=...)")
    if "model" in info.needs:
        if model is None:
            raise ValueError(f"model: the metric {info.name!r} evaluates the model; got None")
        return info.func(model, explanation, **params)
    return info.func(explanation, **params)
