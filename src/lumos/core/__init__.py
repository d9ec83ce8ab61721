"""Core objects: Explanation, targets, model adapters, execution, registry."""
from .explanation import Explanation, load
from .registry import explain, get_method, methods, register
from .targets import Target, resolve_target

__all__ = ["Explanation", "load", "explain", "get_method", "methods", "register", "Target", "resolve_target"]
