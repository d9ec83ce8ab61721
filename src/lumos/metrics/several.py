"""Metrics of explanations of several inputs: scored on the packed view of the inputs.

An explanation of a model of several inputs holds one values array per input
(:mod:`lumos.core.inputs`). A metric sees it as one table: every element of every input is a
feature (the packed columns, in the inputs' order), and the model is called through
:class:`~lumos.core.inputs.BoundModel`, which unpacks each batch of changed rows into the inputs the
model takes. Scores then treat all inputs together (a deletion curve removes the most relevant
elements of either input first), as the attributions' completeness does; metrics that re-run the
method (randomisation, sensitivity) run it on the packed rows (per-input method parameters, such
as a tuple of baselines, cannot be re-used there: pass one value for all inputs). Metrics that
need one image's layout (blurred fills, ROAD, localisation against masks) say so with their own
errors.
Forward arguments of the model are not stored in the explanation: metrics call the model with its
inputs only.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import numpy as np

from ..core.explanation import Explanation

__all__ = ["packed", "accepts_several_inputs"]


def packed(model: Any, explanation: Explanation) -> tuple[Any, Explanation]:
    """``(model as a function of the packed rows, the explanation with packed values/inputs)``."""
    import torch

    from ..core.inputs import BoundModel, Packing

    if explanation.inputs is None:
        raise ValueError("explanation: an explanation of several inputs needs its inputs to be scored")
    packing, tensors = Packing.of(explanation.inputs, "explanation.inputs")
    n = len(explanation)
    flat = lambda parts: np.concatenate(  # noqa: E731
        [np.asarray(p, dtype=np.float64).reshape(n, -1) for p in parts], axis=1)
    values = flat(list(explanation.values.values()) if isinstance(explanation.values, dict)
                  else explanation.values)
    parts = list(explanation.values.values()) if isinstance(explanation.values, dict) else explanation.values
    dtype = torch.from_numpy(np.zeros(0, np.result_type(*parts, np.float32))).dtype
    if model is not None and isinstance(model, torch.nn.Module):
        from ..core.torch_model import model_dtype

        dtype = model_dtype(model) or torch.float32
        model = BoundModel(model, packing, n)
    elif model is not None:
        raise TypeError("model: explanations of several inputs are scored with the torch module "
                        "that was explained")
    inputs = packing.pack(tensors, dtype).numpy()
    meta = dict(explanation.meta)
    meta["packed_inputs"] = list(packing.names)
    return model, Explanation(
        values=values.astype(inputs.dtype), inputs=inputs, target=explanation.target,
        output=explanation.output, baseline_output=explanation.baseline_output,
        method=explanation.method, params=dict(explanation.params), meta=meta,
        sample_keys=explanation.sample_keys,
    )


def accepts_several_inputs(func: Callable, needs: Sequence[str], name: str) -> Callable:
    """Wrap a metric so that an explanation of several inputs is scored on its packed view."""
    takes_model = "model" in needs

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any):
        args = list(args)
        i = 1 if takes_model else 0
        if len(args) > i:
            e = args[i]
        else:
            e = kwargs.get("explanation")
        if isinstance(e, Explanation) and e.several:
            model = (args[0] if args else kwargs.get("model")) if takes_model else None
            model, flat = packed(model, e)
            if takes_model:
                if args:
                    args[0] = model
                else:
                    kwargs["model"] = model
            if len(args) > i:
                args[i] = flat
            else:
                kwargs["explanation"] = flat
        return func(*args, **kwargs)

    return call
