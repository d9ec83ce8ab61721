"""Unit ablation: switch off a set of units (channels) of a layer and measure what the model loses.

Bau et al. (*Understanding the role of individual units in a deep neural network*, PNAS 2020;
and Network Dissection, CVPR 2017) remove the units that detect a concept and watch which classes
break. Here a forward hook on the layer replaces the chosen channels of its output by

``mode="zero"``
    zeros;
``mode="mean"``
    their mean activation map over ``background`` (per channel and position), i.e. the unit says
    "the average thing" instead of nothing, which keeps the next layer's input statistics.

:func:`unit_ablation` measures each class's accuracy before and after and the mean drop of each
class's own logit on its images. The units come from anywhere: :meth:`Dissection.units` (a
concept's detectors), :func:`class_units` (the units a class's logit leans on most) or
:func:`random_units` (the control: as many units drawn at random, seeded).

The hook lives only inside :func:`ablated` / :func:`unit_ablation`; on exit, also on error, it is
removed and the model is left exactly as found (:class:`~lumos.core.torch_model.ModelGuard`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..core.execution import check_batch_size, rng
from ..core.torch_model import (ModelGuard, as_tensor, check_finite, forward, get_module, model_device,
                                model_dtype)
from ..core.validation import check_choice, check_number
from ._layers import layer_activations, layer_gradients

__all__ = ["ablated", "unit_ablation", "AblationResult", "class_units", "random_units", "mean_activation"]

_MODES = ("zero", "mean")


def _check_units(units: Sequence[int], n_units: int | None = None) -> list[int]:
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        units = [int(units)]
    try:
        out = [int(u) for u in units]
    except TypeError as e:
        raise TypeError(f"units must be a sequence of channel indices; got {units!r}") from e
    if any(isinstance(u, bool) for u in units) or any(u < 0 for u in out) or len(set(out)) != len(out):
        raise ValueError(f"units must be distinct non-negative channel indices; got {list(units)!r}")
    if n_units is not None and any(u >= n_units for u in out):
        raise ValueError(f"units: the layer has {n_units} channels; got {max(out)}")
    return out


def mean_activation(model, background, at: Any, batch_size: int | None = None) -> torch.Tensor:
    """The mean activation of layer ``at`` over ``background``, per channel and position
    (shape of one sample's activation), streamed in batches."""
    with ModelGuard(model):
        x = as_tensor(background, model_device(model), name="background", dtype=model_dtype(model))
        total = None
        for _, a in layer_activations(model, x, at, batch_size):
            s = a.double().sum(0)
            total = s if total is None else total + s
        return (total / len(x)).to(a.dtype)


@contextlib.contextmanager
def ablated(model, at: Any, units: Sequence[int], *, mode: str = "zero", background=None,
            batch_size: int | None = None) -> Iterator[Any]:
    """A context in which ``model``'s layer ``at`` outputs its ``units`` switched off.

    Parameters
    ----------
    model : nn.Module
    at : str or nn.Module
        The layer; its output's axis 1 holds the units (channels).
    units : sequence of int
    mode : {"zero", "mean"}, default "zero"
    background : tensor or array, optional
        Inputs whose mean activation replaces the units (required for ``mode="mean"``).
    batch_size : int, optional
        For the mean over ``background``.

    Yields
    ------
    nn.Module
        The same model, hooked. On exit the hook is removed and the model left as found.
    """
    mode = check_choice(mode, "mode", _MODES)
    units = _check_units(units)
    layer = get_module(model, at)
    fill = None
    if mode == "mean":
        if background is None:
            raise ValueError("background: mode='mean' needs background inputs to average the units over")
        fill = mean_activation(model, background, at, batch_size)
    idx = torch.as_tensor(units, dtype=torch.long)

    def hook(mod, inp, out):
        if not isinstance(out, torch.Tensor) or out.ndim < 2:
            raise TypeError(f"at: layer {at!r} must output a (batch, units, ...) tensor to ablate units")
        if units and max(units) >= out.shape[1]:
            raise ValueError(f"units: layer {at!r} has {out.shape[1]} channels; got unit {max(units)}")
        out = out.clone()  # never write into a tensor the layer may share
        i = idx.to(out.device)
        if fill is None:
            out[:, i] = 0
        else:
            out[:, i] = fill.to(out.device, out.dtype)[i]  # (units, ...) broadcast over the batch
        return out

    with ModelGuard(model):
        h = layer.register_forward_hook(hook)
        try:
            yield model
        finally:
            h.remove()


@dataclass
class AblationResult:
    """What switching off ``units`` at ``layer`` did, per class.

    Attributes
    ----------
    layer : str
    units : list of int
    mode : str
    class_names : list of str
    accuracy_before, accuracy_after : np.ndarray
        ``(n_classes,)`` accuracy on the images of each class (NaN for a class without images).
    logit_drop : np.ndarray
        ``(n_classes,)`` mean over the images of class ``c`` of ``logit_c(before) - logit_c(after)``.
    predictions_before, predictions_after : np.ndarray
        ``(n,)`` predicted classes.
    logits_before, logits_after : np.ndarray
        ``(n, n_classes)``.
    labels : np.ndarray
    """

    layer: str
    units: list
    mode: str
    class_names: list
    accuracy_before: np.ndarray
    accuracy_after: np.ndarray
    logit_drop: np.ndarray
    predictions_before: np.ndarray
    predictions_after: np.ndarray
    logits_before: np.ndarray
    logits_after: np.ndarray
    labels: np.ndarray

    @property
    def overall_before(self) -> float:
        return float((self.predictions_before == self.labels).mean())

    @property
    def overall_after(self) -> float:
        return float((self.predictions_after == self.labels).mean())

    def rate(self, cls: int, before: bool = False, where=None) -> float:
        """Share of images (optionally only those in the boolean array ``where``) predicted ``cls``."""
        p = self.predictions_before if before else self.predictions_after
        sel = np.ones(len(p), bool) if where is None else np.asarray(where, bool)
        return float((p[sel] == int(cls)).mean()) if sel.any() else float("nan")

    def table(self) -> str:
        """Per-class accuracy before and after and the mean logit drop, as text."""
        rows = [f"{'class':<12} {'acc before':>10} {'acc after':>10} {'logit drop':>11}"]
        for c, name in enumerate(self.class_names):
            rows.append(f"{name:<12} {self.accuracy_before[c]:10.3f} {self.accuracy_after[c]:10.3f} "
                        f"{self.logit_drop[c]:11.3f}")
        rows.append(f"{'all':<12} {self.overall_before:10.3f} {self.overall_after:10.3f}")
        return "\n".join(rows)


def _logits(model, x, batch_size):
    bs = check_batch_size(batch_size, row_bytes=x[0].numel() * x.element_size())
    out = []
    with torch.no_grad():
        for s in range(0, len(x), bs):
            o = forward(model, x[s:s + bs])
            check_finite(o, "the inputs (model outputs)")
            out.append(o.detach())
    return torch.cat(out).double().cpu().numpy()


def unit_ablation(model, inputs, labels, at: Any, units: Sequence[int], *, mode: str = "zero",
                  background=None, class_names: Sequence[str] | None = None,
                  batch_size: int | None = None) -> AblationResult:
    """Each class's accuracy and logit before and after switching off ``units`` of layer ``at``.

    Parameters
    ----------
    model : nn.Module
        A classifier returning ``(batch, n_classes)`` logits.
    inputs : tensor or array ``(n, ...)``
    labels : sequence of int ``(n,)``
        True classes.
    at, units, mode, background, batch_size
        As in :func:`ablated` (``background`` defaults to ``inputs`` for ``mode="mean"``).
    class_names : sequence of str, optional
        Defaults to ``model.class_names`` or ``"class 0"``, ...

    Returns
    -------
    AblationResult
    """
    mode = check_choice(mode, "mode", _MODES)
    with ModelGuard(model):
        x = as_tensor(inputs, model_device(model), name="inputs", dtype=model_dtype(model))
        y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be {len(x)} integer classes; got shape {y.shape}, dtype {y.dtype}")
        before = _logits(model, x, batch_size)
        n_classes = before.shape[1]
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes}); got {y.min()}..{y.max()}")
        bg = x if (mode == "mean" and background is None) else background
        with ablated(model, at, units, mode=mode, background=bg, batch_size=batch_size):
            after = _logits(model, x, batch_size)
    names = list(class_names) if class_names is not None else list(
        getattr(model, "class_names", None) or [f"class {c}" for c in range(n_classes)])
    pb, pa = before.argmax(1), after.argmax(1)
    acc_b, acc_a, drop = (np.full(n_classes, np.nan) for _ in range(3))
    for c in range(n_classes):
        sel = y == c
        if sel.any():
            acc_b[c] = (pb[sel] == c).mean()
            acc_a[c] = (pa[sel] == c).mean()
            drop[c] = (before[sel, c] - after[sel, c]).mean()
    return AblationResult(layer=at if isinstance(at, str) else type(at).__name__, units=_check_units(units),
                          mode=mode, class_names=names, accuracy_before=acc_b, accuracy_after=acc_a,
                          logit_drop=drop, predictions_before=pb, predictions_after=pa,
                          logits_before=before, logits_after=after, labels=y)


def class_units(model, inputs, at: Any, target: int, k: int = 5, *, batch_size: int | None = None
                ) -> tuple[list[int], np.ndarray]:
    """The ``k`` units of layer ``at`` whose removal should lower class ``target``'s logit most.

    Criterion: the mean over ``inputs`` of ``Σ_positions A_u · ∂logit_target/∂A_u``, the
    first-order (Taylor) estimate of the logit drop when unit ``u`` is zeroed; exact when the
    model is linear after the layer (e.g. global average pooling and a linear classifier).

    Returns
    -------
    (units, scores)
        The top-``k`` units, best first, and the ``(n_units,)`` scores.
    """
    k = int(check_number(k, "k", low=1, integer=True))
    target = int(check_number(target, "target", low=0, integer=True))
    with ModelGuard(model):
        x = as_tensor(inputs, model_device(model), name="inputs", dtype=model_dtype(model))
        total = None
        for _, a, g in layer_gradients(model, x, at, target, batch_size):
            s = (a.double() * g.double()).flatten(2).sum(2).sum(0) if a.ndim > 2 else (a.double() * g).sum(0)
            total = s if total is None else total + s
    scores = (total / len(x)).cpu().numpy()
    if k > len(scores):
        raise ValueError(f"k: the layer has {len(scores)} units; got k={k}")
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(u) for u in order], scores


def random_units(n_units: int, k: int, seed: int, exclude: Sequence[int] = ()) -> list[int]:
    """``k`` distinct units of ``range(n_units)`` not in ``exclude``, drawn with ``seed`` (the control)."""
    n_units = int(check_number(n_units, "n_units", low=1, integer=True))
    k = int(check_number(k, "k", low=0, integer=True))
    pool = np.setdiff1d(np.arange(n_units), np.asarray(list(exclude), dtype=np.int64))
    if k > len(pool):
        raise ValueError(f"k: only {len(pool)} units are left to draw from; got k={k}")
    return sorted(int(u) for u in rng(seed).choice(pool, size=k, replace=False))
