"""Checks of user arguments, shared by every method and metric.

Each check names the argument and says what was expected, so that a bad value never reaches the
mathematics (where NaN would pass ``value >= 0`` and come back as an all-NaN map).
"""
from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["check_number", "check_choice", "check_kwargs", "lookup", "RENAMED"]

# Parameters renamed for one name per concept across the API (old name -> new name). Consulted by
# check_kwargs so that a user with an old spelling is told the new one.
RENAMED: dict[str, str | tuple[str, ...]] = {
    "data": "background",
    "mask": "masks",
    "steps": "n_steps",
    "n_perturbations": "n_samples",
    "baseline": ("baselines", "fill"),  # path methods; Score-CAM's masked-out value is a fill
    "noise": "noise_std",  # gradient_shap: an absolute standard deviation
    "baselines": "background",  # deep_shap: its reference set is a background sample
    "softmax": "scale",  # metrics: softmax=True became scale="probability"
    "max_samples": "background_size",  # TabularMasker: background rows kept (all by default)
}


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False):
    """``value`` as a Python ``float`` (or ``int`` with ``integer=True``), checked.

    Rejects bools, non-numbers, NaN and infinities, and values outside ``[low, high]`` (open ends
    with ``low_open``/``high_open``), with a ValueError that names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
            value = value.item()  # a 0-d tensor or array
            if isinstance(value, bool):
                raise ValueError(f"{name} must be a number; got a bool")
        else:
            kind = "an int" if integer else "a number"
            raise ValueError(f"{name} must be {kind}; got {value!r} ({type(value).__name__})")
    if integer:
        if isinstance(value, (float, np.floating)):
            if not math.isfinite(value) or value != int(value):
                raise ValueError(f"{name} must be an int; got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number; got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        if low is not None and high is not None:
            rng = f"in {lo}, {hi}"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low}"
        else:
            rng = f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must be {rng}; got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Iterable[Any]):
    """``value`` if it is one of ``choices``; else a ValueError listing them (with a suggestion)."""
    choices = list(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable / uncomparable
        ok = False
    if ok:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.{hint}")


def _parameters(func: Callable) -> tuple[list[str], bool]:
    """Keyword names ``func`` accepts, and whether it takes ``**kwargs``."""
    sig = inspect.signature(func)
    names, var_kw = [], False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
    return names, var_kw


def check_kwargs(func: Callable | Iterable[str], params: dict, where: str,
                 skip: Iterable[str] = ("model", "inputs", "explanation")) -> None:
    """Raise a TypeError naming each keyword of ``params`` that ``func`` does not accept.

    ``func`` is a function (its signature is read; one that takes ``**kwargs`` accepts anything)
    or the accepted names themselves. The message suggests the closest real parameter, and the
    new name of a renamed one (:data:`RENAMED`).
    """
    if callable(func):
        names, var_kw = _parameters(func)
        if var_kw:
            return
    else:
        names = list(func)
    known = [n for n in names if n not in set(skip)]
    unknown = [k for k in params if k not in names]
    if not unknown:
        return
    msgs = []
    for k in unknown:
        new = RENAMED.get(k, ())
        hit = next((n for n in ((new,) if isinstance(new, str) else new) if n in known), None)
        if hit is not None:  # a renamed parameter may have a different new name per method
            msgs.append(f"{k!r} is now called {hit!r}")
            continue
        close = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
        msgs.append(f"unknown parameter {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{where}: " + "; ".join(msgs) + f". Its parameters: {', '.join(known)}")


def lookup(name: Any, table: dict, kind: str):
    """``table[name]`` for a registry of ``kind`` ("method", "metric"), forgiving case, dashes and
    spaces; a TypeError for a non-string and a ValueError with the closest names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} must be a string name; got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in table:
        return table[key]
    close = difflib.get_close_matches(key, list(table), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"{kind}: unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(sorted(table))}")
