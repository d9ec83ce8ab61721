"""lumos: explain machine-learning models, and measure how far to trust the explanation.

>>> import lumos
>>> expl = lumos.explain(model, images, method="integrated_gradients", target="predicted")
>>> expl.plot()
"""
from .core.explanation import Explanation, load
from .core.registry import explain, methods, get_method

__version__ = "0.1.0"


def layers(model, inputs=None):
    """List a torch model's layers by dotted name (with output shapes when ``inputs`` is given)."""
    from .core.torch_model import layers as _layers

    return _layers(model, inputs)


_LAZY = {"Args": "inputs", "Shared": "inputs", "Neuron": "units"}


def __getattr__(name):
    # Args, Shared and Neuron live beside torch: imported on first use, so that `import lumos` (and
    # the command line, which reports a typo or a missing file at once) does not wait for torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".core.{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lumos' has no attribute {name!r}")


__all__ = ["Explanation", "explain", "methods", "get_method", "load", "layers", "Args", "Shared",
           "Neuron", "__version__"]
