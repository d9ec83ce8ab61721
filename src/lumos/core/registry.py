"""The method registry behind :func:`lumos.explain` and :func:`lumos.methods`.

A method registers itself in its own module with :func:`register`. The registry discovers the
method modules by walking the method packages on first use, so adding a method touches only its
own file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["register", "register_inputs", "get_method", "methods", "explain", "MethodInfo"]

# Packages whose modules hold registered methods (walked recursively on first use).
_METHOD_PACKAGES = ("lumos.attribution", "lumos.agnostic", "lumos.text", "lumos.multimodal")


@dataclass(frozen=True)
class MethodInfo:
    """One row of the registry."""

    name: str
    family: str
    description: str
    func: Callable
    models: str  # "torch" (needs a torch module) or "any" (works on any predict function)

    def __str__(self) -> str:
        return f"{self.name:<24} {self.family:<14} {self.description}"


_REGISTRY: dict[str, MethodInfo] = {}
_DISCOVERED = False
# (accepts(model, inputs, params) -> bool, handler(model, inputs, method, target=..., **params)): inputs of a kind
# that a family prepares itself before running a registered method (strings: lumos.text)
_INPUT_ROUTES: list[tuple[Callable, Callable]] = []


def register_inputs(accepts: Callable[[Any, Any, dict], bool], handler: Callable) -> None:
    """Route calls for which ``accepts(model, inputs, params)`` is true to ``handler`` in :func:`explain`.

    The text family registers strings this way: ``lumos.explain(hf_model, texts, method,
    tokenizer=tok)`` tokenises the texts and runs the method at the token embeddings.
    """
    if all(a is not accepts for a, _ in _INPUT_ROUTES):
        _INPUT_ROUTES.append((accepts, handler))


def register(name: str, family: str, description: str, models: str = "torch") -> Callable:
    """Decorator: register ``func(model, inputs, target=None, **params) -> Explanation``."""

    def deco(func: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].func is not func:
            existing = _REGISTRY[name].func
            if (existing.__module__, existing.__qualname__) != (func.__module__, func.__qualname__):
                raise RuntimeError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodInfo(name, family, description, func, models)
        return func

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for pkg_name in _METHOD_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=pkg_name + "."):
            if not mod.name.rsplit(".", 1)[-1].startswith("_"):
                importlib.import_module(mod.name)
    _DISCOVERED = True


def get_method(name: str) -> MethodInfo:
    """Look a method up by name, with a suggestion when the name is unknown."""
    from .validation import lookup

    _discover()
    return lookup(name, _REGISTRY, "method")


class MethodTable(list):
    """A list of :class:`MethodInfo` that prints as a table."""

    def __str__(self) -> str:
        head = f"{'method':<24} {'family':<14} description"
        return "\n".join([head, "-" * len(head)] + [str(m) for m in self])

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def methods(family: str | None = None) -> MethodTable:
    """All registered methods (optionally of one family), sorted by family then name."""
    _discover()
    rows = sorted(_REGISTRY.values(), key=lambda m: (m.family, m.name))
    if family is not None:
        rows = [m for m in rows if m.family == family]
    return MethodTable(rows)


def explain(model: Any, inputs: Any, method: str = "integrated_gradients", target: Any = None,
            **params: Any):
    """Explain ``model`` at ``inputs`` with ``method``.

    Parameters
    ----------
    model : torch.nn.Module or callable
        A torch module for gradient/propagation methods; any predict function (or scikit-learn
        estimator) for model-agnostic methods.
    inputs : Tensor, ndarray or DataFrame, shape (batch, ...)
        The samples to explain.
    method : str, default "integrated_gradients"
        A name from :func:`lumos.methods`.
    target : int, sequence of int, "predicted", callable or None
        The scalar per sample to explain; see :mod:`lumos.core.targets`.
    **params
        The method's own parameters (``batch_size``, ``seed``, ``progress``, ``at=`` ...). An
        unknown name is an error that suggests the closest real parameter. ``feature_names=``
        (one name per column of a table) is accepted by every method.

    Returns
    -------
    Explanation
    """
    _discover()
    for accepts, handler in _INPUT_ROUTES:  # e.g. strings: lumos.text tokenises them
        if accepts(model, inputs, params):
            return handler(model, inputs, method, target=target, **params)
    info = get_method(method)
    from .validation import check_kwargs

    names = params.pop("feature_names", None) if "feature_names" not in _accepts(info.func) else None
    check_kwargs(info.func, params, f"{info.name}", skip=("model", "inputs", "target"))
    expl = info.func(model, inputs, target=target, **params)
    if names is not None:
        if expl.several:
            raise ValueError(
                "feature_names: this explanation has one values array per input; name the columns "
                "of table inputs with DataFrames (or the method's own feature names) instead")
        names = [str(n) for n in names]
        if np.shape(expl.values)[-1:] != (len(names),):
            raise ValueError(
                f"feature_names has {len(names)} names but the explanation's last axis has "
                f"{np.shape(expl.values)[-1]} features (values of shape {np.shape(expl.values)})"
            )
        expl.feature_names = names
    return expl


def _accepts(func: Callable) -> set[str]:
    import inspect

    return set(inspect.signature(func).parameters)
