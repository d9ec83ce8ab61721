"""lumos: explain machine-learning models, and measure how far to trust the explanation.

>>> import lumos
>>> expl = lumos.explain(model, images, method="integrated_gradients", target="predicted")
>>> expl.plot()
"""
from .core.explanation import Explanation, load
from .core.inputs import Args, Shared
from .core.registry import explain, methods, get_method

__version__ = "0.1.0"


def layers(model, inputs=None):
    """List a torch model's layers by dotted name (with output shapes when ``inputs`` is given)."""
    from .core.torch_model import layers as _layers

    return _layers(model, inputs)


__all__ = ["Explanation", "explain", "methods", "get_method", "load", "layers", "Args", "Shared",
           "__version__"]
