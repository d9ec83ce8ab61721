"""Per-input attributions for torch models, one module per method.

Each method registers itself with :func:`lumos.core.registry.register` and is reachable through
``lumos.explain(model, inputs, method=NAME)`` or importable as a function from its module.
"""
