"""The explanation function that robustness and randomisation metrics re-run."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..core.explanation import Explanation

__all__ = ["make_explainer"]


def _rerunnable(params: dict) -> dict:
    """Parameters recorded in an explanation that can be passed back (tensors were summarised)."""
    return {k: v for k, v in params.items()
            if not (isinstance(v, str) and (v.startswith("<tensor") or v.startswith("<array")))}


def make_explainer(explanation: Explanation, explainer: Any = None, method_params: dict | None = None
                   ) -> tuple[Callable, str]:
    """The explanation function a robustness or randomisation metric re-runs.

    Parameters
    ----------
    explanation : Explanation
        Its ``method`` and ``params`` are the default.
    explainer : None, str or callable
        ``None``: the explanation's own method and parameters; a method name for
        :func:`lumos.explain`; or a callable ``explainer(model, inputs, target) -> Explanation or
        array`` (values of the shape of the explanation's values).
    method_params : dict, optional
        Parameters for the method (added to / overriding the recorded ones).

    Returns
    -------
    (fn, name)
        ``fn(model, inputs, target) -> ndarray`` of values.
    """
    import inspect

    from ..core.registry import explain, get_method

    if callable(explainer) and not isinstance(explainer, str):
        if method_params:
            raise ValueError("method_params: a callable explainer takes no method parameters; bind them yourself")

        def fn(model, inputs, target):
            out = explainer(model, inputs, target)
            return np.asarray(out.values if isinstance(out, Explanation) else
                              (out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out),
                              dtype=np.float64)

        return fn, getattr(explainer, "__name__", "callable")
    if explainer is None:
        if not explanation.method:
            raise ValueError("explainer: the explanation names no method; pass explainer= (a method "
                             "name or a callable)")
        name, params = explanation.method, _rerunnable(dict(explanation.params))
    elif isinstance(explainer, str):
        name, params = explainer, {}
    else:
        raise TypeError(f"explainer must be None, a method name or a callable; got {type(explainer).__name__}")
    if method_params is not None and not isinstance(method_params, dict):
        raise TypeError(f"method_params must be a dict; got {type(method_params).__name__}")
    params.update(method_params or {})
    info = get_method(name)
    if "progress" in inspect.signature(info.func).parameters:
        params.setdefault("progress", False)

    def fn(model, inputs, target):
        try:
            return np.asarray(explain(model, inputs, method=name, target=target, **params).values,
                              dtype=np.float64)
        except TypeError as err:
            raise TypeError(f"explainer: re-running {name!r} with {sorted(params)} failed ({err}); pass "
                            "method_params= with the method's parameters") from err

    return fn, name
