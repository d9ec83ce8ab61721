"""How a metric evaluates the model on stacks of changed inputs.

:func:`model_scorer` evaluates a torch module (under ``torch.inference_mode`` inside
:class:`~lumos.core.torch_model.ModelGuard`, so the model is left as found) or any black-box
predict function (through :class:`~lumos.core.blackbox.BlackBox`), ``batch_size`` rows per call:
never a Python loop over samples.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..core.outputs import is_probability, softmax as softmax_of
from ..core.blackbox import as_blackbox
from ..core.execution import check_batch_size, chunks
from ..core.explanation import Explanation
from ..core.targets import resolve_target
from ..core.layout import layout_for, run_in_layout
from ..core.torch_model import (ModelGuard, as_tensor, check_finite, check_input_shape, forward, model_device,
                                model_dtype)

__all__ = ["Scorer", "model_scorer", "row_target", "resolve_scale", "SCALES"]


class Scorer:
    """The explained scalar of a model on stacks of inputs (see :func:`model_scorer`).

    Attributes
    ----------
    x : Tensor, shape (n, ...)
        The explained inputs (a copy; float, or int64 for token ids).
    f0 : ndarray of float64, shape (n,)
        The explained scalar at ``x``.
    target : Target
    scale : {"raw", "probability"}
        What is scored: the model's output, or the probability of the target class.
    n_evals : int
        Rows evaluated so far (the ``n`` at ``x`` included).
    """

    def __init__(self, x, score_fn, f0, target, batch_size, progress, model_kind, scale="raw"):
        self.x = x
        self._score = score_fn
        self.f0 = f0
        self.target = target
        self.batch_size = batch_size
        self.progress = progress
        self.n_evals = len(x)
        self.model_kind = model_kind
        self.scale = scale

    @property
    def n(self) -> int:
        return len(self.x)

    def score(self, xb: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
        """Explained scalar of each row of ``xb`` (one model call); ``rows[k]`` = its sample."""
        s = self._score(xb, rows)
        self.n_evals += len(xb)
        return s

    def evaluate(self, total: int, build: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
                 desc: str = "") -> np.ndarray:
        """Score ``total`` changed rows, built and evaluated ``batch_size`` at a time.

        ``build(sl)`` returns ``(xb, rows)`` for the flat row indices ``sl``.
        """
        out = np.empty(total, dtype=np.float64)
        for sl in chunks(total, self.batch_size, desc=desc, progress=self.progress, unit="input"):
            xb, rows = build(sl)
            out[sl] = self.score(xb, rows)
        return out


def _target_spec(explanation: Explanation, target: Any) -> Any:
    if target is not None:
        return target
    if explanation.target is not None:
        return np.asarray(explanation.target)
    desc = explanation.meta.get("target")
    if desc not in (None, "output", "predicted"):
        raise ValueError(
            f"target: the explanation was computed for the target {desc!r} (a callable), which is "
            "not stored in it; pass the same callable as target="
        )
    return None


SCALES = ("auto", "probability", "raw")


def resolve_scale(scale: str, target, out, already_probability: bool = False) -> tuple[str, bool]:
    """The scale a metric scores on, and whether a softmax must be applied to get there.

    ``"raw"``: the model's output as it is. ``"probability"``: the probability of the target
    class; the softmax of the output, unless the output already is probabilities (a
    scikit-learn ``predict_proba``, or rows that are non-negative and sum to one). Needs class
    indices of a multi-column output. ``"auto"``: ``"probability"`` for class indices of an output
    with two or more columns, ``"raw"`` otherwise (regressions, callable targets).
    """
    if scale not in SCALES:
        close = [s for s in SCALES if s.startswith(str(scale)[:2])]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}; got {scale!r}.{hint}")
    classes = target.indices is not None and getattr(out, "ndim", 0) == 2 and out.shape[1] >= 2
    if scale == "auto":
        scale = "probability" if classes else "raw"
    if scale == "raw":
        return "raw", False
    if not classes:
        raise ValueError("scale='probability' needs class-index targets of an output with two or more "
                         "columns; this target or output has none (use scale='raw')")
    return "probability", not (already_probability or is_probability(out))


def _selector(target, softmax: bool):
    if not softmax:
        return target.select

    def select(out, rows=None):
        return target.select(softmax_of(out), rows)

    return select


@contextlib.contextmanager
def model_scorer(model: Any, explanation: Explanation, target: Any = None, *,
                 batch_size: int | None = None, scale: str = "raw", progress: bool | None = None,
                 inputs: Any = None) -> Iterator[Scorer]:
    """Evaluate ``model``'s explained scalar on stacks of changed inputs.

    Parameters
    ----------
    model : torch.nn.Module, callable or scikit-learn estimator
        A torch module runs under ``torch.inference_mode`` inside
        :class:`~lumos.core.torch_model.ModelGuard` (left exactly as found, also on error);
        anything else goes through :class:`~lumos.core.blackbox.BlackBox`.
    explanation : Explanation
        Its ``inputs`` are evaluated (unless ``inputs`` is given) and its ``target`` indices
        select the scalar.
    target : int, sequence, callable, optional
        Overrides the explanation's target; needed for explanations of a callable target.
    scale : {"raw", "probability", "auto"}, default "raw"
        What is scored (see :func:`resolve_scale`); the resolved scale is ``Scorer.scale``.
    """
    bs = check_batch_size(batch_size)
    spec = _target_spec(explanation, target)
    raw = explanation.inputs if inputs is None else inputs
    if isinstance(model, nn.Module):
        with ModelGuard(model):
            dev = model_device(model)
            arr_kind = (raw.dtype.is_floating_point if isinstance(raw, torch.Tensor)
                        else np.asarray(raw).dtype.kind == "f")
            # float inputs take the model's float dtype (explanations hold numpy copies, which
            # may have become float64); integer inputs are token ids and stay integers
            x = as_tensor(raw, dev, name="explanation.inputs",
                          dtype=(model_dtype(model) or torch.get_default_dtype()) if arr_kind else torch.long)
            if x.is_floating_point():
                check_input_shape(model, x, "explanation.inputs")
            with torch.inference_mode():  # in chunks: the metric's batch_size bounds memory
                out = torch.cat([forward(model, x[sl], name="explanation.inputs")
                                 for sl in chunks(len(x), bs, progress=False)])
            check_finite(out, "the explained inputs")
            tgt = resolve_target(spec, out)
            scale, softmax = resolve_scale(scale, tgt, out)
            select = _selector(tgt, softmax)

            fmt = layout_for(model, x)  # channels-last for CPU conv nets: ~2x cheaper passes

            def score(xb, rows):
                with torch.inference_mode():
                    o = run_in_layout(model, lambda t: forward(model, t, name="changed inputs"), xb, fmt)
                    check_finite(o, "the changed inputs of the metric")
                    return select(o, rows).to(torch.float64).cpu().numpy()

            with torch.inference_mode():
                f0 = select(out).to(torch.float64).cpu().numpy()
            yield Scorer(x, score, f0, tgt, bs, progress, "torch", scale)
        return
    if not callable(model) and not hasattr(model, "predict"):
        raise TypeError("model must be a torch.nn.Module, a predict function or a scikit-learn "
                        f"estimator; got {type(model).__name__}")
    arr = np.asarray(raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw)
    if arr.dtype == object:
        raise TypeError("explanation.inputs hold Python objects; metrics need numeric inputs "
                        "(encode categorical columns first)")
    columns = None
    names = explanation.feature_names
    if names is not None and hasattr(model, "feature_names_in_") and arr.ndim == 2 and len(names) == arr.shape[1]:
        columns = names  # the model was fitted on a DataFrame with these columns
    bb = as_blackbox(model, batch_size=bs)
    if columns is not None:
        bb.columns = list(columns)
    np_dtype = arr.dtype if arr.dtype.kind in "fiu" else np.float64
    x = as_tensor(arr, name="explanation.inputs",
                  dtype=torch.float64 if arr.dtype.kind == "f" else torch.long)

    def to_user(xb: torch.Tensor):
        return xb.detach().cpu().numpy().astype(np_dtype, copy=False)

    out = bb(to_user(x))
    _check_finite_array(out, "the explained inputs")
    tgt = resolve_target(spec, out)
    scale, softmax = resolve_scale(scale, tgt, np.asarray(out), bb.score_name == "predict_proba")
    select = _selector(tgt, softmax)

    def score(xb, rows):
        o = bb(to_user(xb))
        _check_finite_array(o, "the changed inputs of the metric")
        return np.asarray(select(o, rows.cpu().numpy()), dtype=np.float64)

    f0 = np.asarray(select(out), dtype=np.float64)
    yield Scorer(x, score, f0, tgt, bs, progress, bb.score_name, scale)


def _check_finite_array(out, what: str) -> None:
    o = np.asarray(out)
    if o.dtype.kind in "fc":
        check_finite(torch.from_numpy(np.ascontiguousarray(o)), what)


def row_target(explanation: Explanation, target: Any, rows: np.ndarray) -> Any:
    """The target of the explanation for stacked rows (``rows[k]`` = sample of row k)."""
    spec = _target_spec(explanation, target)
    if spec is None or callable(spec) or isinstance(spec, str):
        return spec
    if isinstance(spec, (int, np.integer)):
        return int(spec)
    arr = np.asarray(spec.detach().cpu().numpy() if isinstance(spec, torch.Tensor) else spec)
    return arr[rows] if arr.ndim == 1 else spec
