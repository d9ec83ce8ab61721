"""The registry of metrics: each declares its family, its direction and what it needs (a model,
ground-truth masks...); :func:`available` lists them, :func:`evaluate` runs one by name.

Every metric module registers itself on import, and importing this module imports its package
first (``lumos.metrics``, which imports every metric module): the table is complete whenever it
can be read, without this module importing the package back (no import circle)."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..core.explanation import Explanation
from ..core.validation import check_kwargs
from .results import DIRECTIONS, MetricResult
from .several import accepts_several_inputs

__all__ = ["MetricInfo", "MetricTable", "register_metric", "accepting", "checks_keywords", "available", "get_metric", "evaluate"]


@dataclass(frozen=True)
class MetricInfo:
    """One row of the metric registry.

    ``needs`` names what the metric takes besides the explanation: ``"model"`` (it evaluates the
    model; the function is ``fn(model, explanation, ...)``), ``"masks"`` (ground-truth masks),
    ``"baselines"`` (a reference input), ``"explainer"`` (it re-runs the explanation method).
    Metrics without ``"model"`` are ``fn(explanation, ...)``. ``parameters`` are the keywords the
    metric accepts (those it forwards to a shared function included).
    """

    name: str
    family: str
    direction: str
    needs: tuple[str, ...]
    description: str
    func: Callable
    parameters: tuple[str, ...] = ()

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
_NEEDS = ("model", "masks", "baselines", "explainer")


def _named_parameters(func: Callable) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def accepting(names: Sequence[str], where: str) -> Callable:
    """Decorator: unknown keywords of a call raise a TypeError that names the accepted ones and
    suggests the closest (:func:`lumos.core.validation.check_kwargs`), also for a function that
    forwards ``**kwargs``. The function's signature (``inspect.signature``) stays its own."""
    names = tuple(names)

    def deco(func: Callable) -> Callable:
        @functools.wraps(func)
        def checked(*args: Any, **kwargs: Any):
            check_kwargs(names, kwargs, where)
            return func(*args, **kwargs)

        return checked

    return deco


def checks_keywords(func: Callable) -> Callable:
    """Decorator: :func:`accepting` with the function's own keyword parameters."""
    return accepting(_named_parameters(func), func.__name__)(func)


def register_metric(name: str, family: str, direction: str, needs: Sequence[str], description: str, *,
                    forwards: Callable | None = None, fixed: Sequence[str] = ()) -> Callable:
    """Decorator: register a metric function under ``name``.

    Its keywords are checked on every call (a misspelt or renamed one gets "did you mean"). A
    metric that passes ``**kwargs`` on names the function it ``forwards`` them to; ``fixed`` are
    that function's parameters the metric sets itself (not accepted from the caller).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    bad = [n for n in needs if n not in _NEEDS]
    if bad:
        raise ValueError(f"needs: unknown requirement(s) {bad}; known: {_NEEDS}")

    def deco(func: Callable) -> Callable:
        names = _named_parameters(func)
        if forwards is not None:
            names += [p for p in _named_parameters(forwards) if p not in names and p not in fixed]
        checked = accepts_several_inputs(accepting(names, name)(func), needs, name)
        _METRICS[name] = MetricInfo(name, family, direction, tuple(needs), description, checked,
                                    tuple(n for n in names if n not in ("model", "explanation")))
        return checked

    return deco


def available(family: str | None = None) -> MetricTable:
    """All registered metrics (optionally of one family), sorted by family then name."""
    rows = sorted(_METRICS.values(), key=lambda m: (m.family, m.name))
    if family is not None:
        rows = [m for m in rows if m.family == family]
    return MetricTable(rows)


def get_metric(name: str) -> MetricInfo:
    """Look a metric up by name, with a suggestion when the name is unknown."""
    from ..core.validation import lookup

    return lookup(name, _METRICS, "metric")


def evaluate(metric: str, model: Any, explanation: Explanation, **params: Any) -> MetricResult:
    """Score ``explanation`` with the metric named ``metric``.

    ``model`` is passed to metrics that need one and ignored (may be ``None``) by the others;
    ``params`` are the metric's own parameters (``masks=`` for localisation metrics); an unknown
    one is a TypeError that lists the metric's parameters.
    """
    info = get_metric(metric)
    check_kwargs(info.parameters, params, f"evaluate({info.name!r})")
    if "masks" in info.needs and params.get("masks") is None:
        raise ValueError(f"masks: the metric {info.name!r} needs ground-truth masks (masks=...)")
    if "model" in info.needs:
        if model is None:
            raise ValueError(f"model: the metric {info.name!r} evaluates the model; got None")
        return info.func(model, explanation, **params)
    return info.func(explanation, **params)
