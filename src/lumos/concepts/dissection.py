"""Network dissection: which human concept does each unit of a layer detect?

Bau, Zhou, Khosla, Oliva and Torralba, *Network Dissection: Quantifying Interpretability of Deep
Visual Representations* (CVPR 2017). For every unit ``k`` (a channel of a conv layer):

1. the threshold ``T_k`` is the ``quantile`` (default 0.995) of the unit's activations over every
   spatial position of every image of the data set, so the unit is "on" on its top 0.5 %;
2. each image's activation map ``A_k(x)`` is upsampled **bilinearly** to the mask resolution
   (``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``) and
   thresholded: ``M_k(x) = A_k(x)↑ > T_k`` (computed as two small matrix products, equal to
   ``interpolate`` to float rounding);
3. for each concept ``c`` with pixel masks ``L_c(x)``, ``IoU_{k,c} = Σ_x |M_k(x) ∩ L_c(x)| /
   Σ_x |M_k(x) ∪ L_c(x)|`` (sums over the whole data set);
4. the unit's label is ``argmax_c IoU_{k,c}``; it counts as a detector of that concept when the IoU
   reaches ``min_iou`` (0.04 in the paper).

The data set streams through the model in batches with bounded memory; nothing of size
``n_images × units × positions`` is ever held. Thresholds come from :class:`StreamingQuantile`,
a per-unit histogram on a power-of-two grid (exact counts, exactly independent of the batch size
and order) whose estimate is within one bin width of the exact empirical quantile (see there).
The thresholds need one pass over the data, the IoUs a second one.

>>> from lumos.data import load_demo_model, shapes_dataset
>>> from lumos.data.shapes_concepts import concept_masks
>>> data = shapes_dataset(300, split="test", watermark=0.5)
>>> result = dissect(load_demo_model(), data.images, concept_masks(data), at="features.7")
>>> print(result.table(top=5)); result.summary()
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..core.torch_model import ModelGuard, as_tensor, model_device, model_dtype
from ..core.validation import check_number
from ._layers import layer_activations

__all__ = ["dissect", "Dissection", "StreamingQuantile"]

_E_MIN = -40  # finest grid: bins of 2**-40; the grid only ever coarsens from here


class StreamingQuantile:
    """Per-unit quantiles of a stream of values with bounded memory.

    Each unit keeps ``n_bins`` counts on the grid of bins ``[j·w, (j+1)·w)`` with ``w`` a power of
    two: the smallest power (at least ``2**-40``) for which the unit's whole value range so far
    fits in ``n_bins`` bins. When a batch widens the range, bins merge pairwise (``w`` doubles),
    which on a power-of-two grid is exact; so the final counts equal those of one pass over all
    values, whatever the batch size or order.

    **Tolerance.** :meth:`quantile` interpolates linearly inside the bin where the cumulative
    count reaches ``q·N``. That bin also holds the exact empirical quantile
    ``np.quantile(values, q, method="inverted_cdf")`` (the smallest value with at least ``q·N``
    values at or below it), so ``|estimate - exact| <= w`` (:attr:`tolerance`), and ``w <= 2·range
    / (n_bins - 2)`` for the unit's value range (or ``2**-50`` of its largest magnitude, if more). NumPy's default (linear) quantile differs from
    that by at most the gap between two neighbouring order statistics.

    Parameters
    ----------
    n_units : int
    n_bins : int, default 4096
        Memory is ``n_units × n_bins`` int64 counts.
    """

    def __init__(self, n_units: int, n_bins: int = 4096):
        self.n_units = int(check_number(n_units, "n_units", low=1, integer=True))
        self.n_bins = int(check_number(n_bins, "n_bins", low=8, integer=True))
        self.counts = np.zeros((self.n_units, self.n_bins), np.int64)
        self.exponent = np.full(self.n_units, _E_MIN, np.int64)
        self.start = np.zeros(self.n_units, np.int64)  # absolute index of the first bin
        self.low = np.full(self.n_units, np.inf)
        self.high = np.full(self.n_units, -np.inf)
        self.n = 0

    @property
    def width(self) -> np.ndarray:
        """``(n_units,)`` bin widths."""
        return np.ldexp(1.0, self.exponent)

    @property
    def tolerance(self) -> np.ndarray:
        """``(n_units,)`` the bound on ``|quantile - exact inverted-cdf quantile|``: one bin width."""
        return self.width

    def update(self, values) -> None:
        """Add ``values`` of shape ``(n_units, m)`` (any float dtype; they are not modified)."""
        v = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, np.float64)
        if v.ndim != 2 or v.shape[0] != self.n_units:
            raise ValueError(f"values must have shape ({self.n_units}, m); got {v.shape}")
        if v.shape[1] == 0:
            return
        low = np.minimum(self.low, v.min(axis=1))
        high = np.maximum(self.high, v.max(axis=1))
        e = self.exponent.copy()
        span = high - low
        with np.errstate(divide="ignore"):
            guess = np.ceil(np.log2(np.where(span > 0, span, 1.0) / (self.n_bins - 2)))
        e = np.maximum(e, np.where(span > 0, guess, e).astype(np.int64))
        # bins no finer than 2**-50 of the largest magnitude: absolute bin indices stay below 2**51,
        # exact in float64 and int64 (a constant unit at 1e10 would otherwise overflow them)
        mag = np.maximum(np.abs(low), np.abs(high))
        with np.errstate(divide="ignore"):
            floor_e = np.where(mag > 0, np.ceil(np.log2(np.where(mag > 0, mag, 1.0))) - 50, _E_MIN)
        e = np.maximum(e, floor_e.astype(np.int64))
        while True:  # at most a step or two: the guess is within one of the answer
            w = np.ldexp(1.0, e)
            bad = np.floor(high / w) - np.floor(low / w) > self.n_bins - 1
            if not bad.any():
                break
            e[bad] += 1
        start = np.floor(low / w).astype(np.int64)
        for k in np.flatnonzero((e != self.exponent) | (start != self.start)):
            old = self.counts[k]
            nz = np.flatnonzero(old)
            new = np.zeros(self.n_bins, np.int64)
            if nz.size:
                shift = int(e[k] - self.exponent[k])
                pos = np.floor_divide(self.start[k] + nz, 2 ** shift) - start[k]
                np.add.at(new, pos, old[nz])
            self.counts[k] = new
        self.exponent, self.start, self.low, self.high = e, start, low, high
        idx = np.floor(v / w[:, None]).astype(np.int64) - start[:, None]
        np.clip(idx, 0, self.n_bins - 1, out=idx)
        idx += (np.arange(self.n_units, dtype=np.int64) * self.n_bins)[:, None]
        self.counts += np.bincount(idx.ravel(), minlength=self.n_units * self.n_bins).reshape(
            self.n_units, self.n_bins)
        self.n += v.shape[1]

    def quantile(self, q: float) -> np.ndarray:
        """``(n_units,)`` estimates of the ``q`` quantile of each unit's values."""
        q = check_number(q, "q", low=0.0, high=1.0, low_open=True, high_open=True)
        if self.n == 0:
            raise ValueError("no values seen yet")
        cum = np.cumsum(self.counts, axis=1)
        t = q * self.n
        b = np.array([np.searchsorted(c, t, side="left") for c in cum])
        b = np.minimum(b, self.n_bins - 1)
        rows = np.arange(self.n_units)
        before = np.where(b > 0, cum[rows, np.maximum(b - 1, 0)], 0)
        inside = self.counts[rows, b]
        frac = np.where(inside > 0, (t - before) / np.maximum(inside, 1), 0.0)
        est = (self.start + b + np.clip(frac, 0.0, 1.0)) * self.width
        # the estimate never leaves the observed range (the bin may stick out of it)
        return np.clip(est, self.low, self.high)


@dataclass
class Dissection:
    """What :func:`dissect` found for one layer.

    Attributes
    ----------
    layer : str
    concepts : list of str
        Concept names, the columns of ``iou``.
    iou : np.ndarray
        ``(n_units, n_concepts)`` IoU of each unit's thresholded maps with each concept's masks.
    thresholds : np.ndarray
        ``(n_units,)`` the activation thresholds ``T_k``.
    tolerance : np.ndarray
        ``(n_units,)`` bound on ``|T_k - exact quantile|`` (see :class:`StreamingQuantile`).
    quantile, min_iou : float
    n_images : int
    concept_area : np.ndarray
        ``(n_concepts,)`` pixels of each concept over the data set.
    """

    layer: str
    concepts: list
    iou: np.ndarray
    thresholds: np.ndarray
    tolerance: np.ndarray
    quantile: float
    min_iou: float
    n_images: int
    concept_area: np.ndarray = field(repr=False, default=None)

    @property
    def n_units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def labels(self) -> list[str]:
        """Each unit's best concept (``argmax`` of its IoU row)."""
        return [self.concepts[j] for j in self.iou.argmax(axis=1)]

    @property
    def scores(self) -> np.ndarray:
        """``(n_units,)`` each unit's best IoU."""
        return self.iou.max(axis=1)

    def units(self, concept: str, min_iou: float | None = None) -> list[int]:
        """Units labelled ``concept`` with IoU at least ``min_iou`` (default the result's), best first."""
        if concept not in self.concepts:
            raise ValueError(f"concept: {concept!r} is not one of {self.concepts}")
        thr = self.min_iou if min_iou is None else check_number(min_iou, "min_iou", low=0.0, high=1.0)
        j = self.concepts.index(concept)
        labels = self.iou.argmax(axis=1)
        sel = [k for k in range(self.n_units) if labels[k] == j and self.iou[k, j] >= thr]
        return sorted(sel, key=lambda k: -self.iou[k, j])

    def summary(self) -> dict[str, int]:
        """How many units detect each concept (label with IoU >= ``min_iou``); concepts without a
        detector are left out, the rest sorted by count."""
        counts: dict[str, int] = {}
        for lab, s in zip(self.labels, self.scores):
            if s >= self.min_iou:
                counts[lab] = counts.get(lab, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def table(self, top: int | None = None) -> str:
        """A text table of the units, best IoU first (``top`` rows)."""
        order = np.argsort(-self.scores, kind="stable")
        if top is not None:
            order = order[: int(check_number(top, "top", low=1, integer=True))]
        labels = self.labels
        rows = [f"{'unit':>5}  {'concept':<24} {'IoU':>6}  {'threshold':>10}"]
        for k in order:
            mark = "" if self.scores[k] >= self.min_iou else "  (below min_iou)"
            rows.append(f"{int(k):>5}  {labels[k]:<24} {self.scores[k]:6.3f}  {self.thresholds[k]:10.4g}{mark}")
        return "\n".join(rows)

    def plot(self, ax=None):
        """A bar chart of the number of detector units per concept; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.2))
        s = self.summary()
        names = list(s) or ["(none)"]
        ax.barh(range(len(names)), [s.get(n, 0) for n in names], color="tab:blue")
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"units with IoU ≥ {self.min_iou:g}")
        ax.set_title(f"{self.layer}: {sum(s.values())} of {self.n_units} units detect a concept")
        return ax


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of bilinear resizing along one axis, PyTorch's
    ``align_corners=False`` convention (source ``(i + 0.5)·n_in/n_out - 0.5``, clamped at the
    edges): ``W_h @ A @ W_w.T`` equals ``F.interpolate(A, mode="bilinear", align_corners=False)``
    to float rounding (~2e-7) and costs a third of it on CPU."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    lam = src - i0
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w[rows, i0] += 1 - lam
    w[rows, i1] += lam
    return w


def _check_masks(masks: Mapping, n: int) -> tuple[list[str], list[torch.Tensor]]:
    if not isinstance(masks, Mapping) or not masks:
        raise TypeError("masks must be a non-empty mapping concept name -> (n, H, W) boolean masks "
                        "(e.g. lumos.data.shapes_concepts.concept_masks(data))")
    names, stack = [], []
    shape = None
    for name, m in masks.items():
        t = m.detach() if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m))
        if t.dtype != torch.bool:
            raise TypeError(f"masks[{name!r}] must be boolean; got {t.dtype}")
        if t.ndim != 3 or t.shape[0] != n:
            raise ValueError(f"masks[{name!r}] must have shape ({n}, H, W) for {n} inputs; got {tuple(t.shape)}")
        if shape is not None and t.shape != shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(t.shape)}; the others {tuple(shape)}")
        shape = t.shape
        names.append(str(name))
        stack.append(t)
    return names, stack  # stacked per batch, never whole: the caller's masks are not copied


def dissect(model, inputs, masks: Mapping, at: Any, *, quantile: float = 0.995, min_iou: float = 0.04,
            n_bins: int = 4096, batch_size: int | None = None) -> Dissection:
    """Label every unit (channel) of layer ``at`` with the concept its top activations overlap most.

    Parameters
    ----------
    model : nn.Module
    inputs : tensor or array, ``(n, ...)``
        The data set (e.g. shapes-world images).
    masks : mapping str -> ``(n, H, W)`` bool
        Each concept's pixel masks on each input, at the resolution the maps are upsampled to.
    at : str or nn.Module
        The layer (dotted name); its output must be ``(batch, units, h, w)``.
    quantile : float in (0, 1), default 0.995
        The top-quantile threshold of each unit.
    min_iou : float, default 0.04
        A unit whose best IoU reaches this counts as a detector of that concept (Bau et al.).
    n_bins : int, default 4096
        Histogram bins per unit of the streamed quantile (the tolerance is one bin width).
    batch_size : int, optional
        Images per forward pass; the result does not depend on it.

    Returns
    -------
    Dissection
    """
    quantile = check_number(quantile, "quantile", low=0.0, high=1.0, low_open=True, high_open=True)
    min_iou = check_number(min_iou, "min_iou", low=0.0, high=1.0)
    with ModelGuard(model):
        x = as_tensor(inputs, model_device(model), name="inputs", dtype=model_dtype(model))
        names, m = _check_masks(masks, len(x))
        size = tuple(m[0].shape[-2:])
        sketch = None
        for _, a in layer_activations(model, x, at, batch_size):
            a = a.contiguous()  # channels-last activations: one copy, then cheap reshapes
            if a.ndim != 4:
                raise ValueError(f"at: layer {at!r} gives activations of shape {tuple(a.shape)}; "
                                 "dissection needs (batch, units, h, w) maps")
            if sketch is None:
                sketch = StreamingQuantile(a.shape[1], n_bins)
            sketch.update(a.transpose(0, 1).reshape(a.shape[1], -1))
        thresholds = sketch.quantile(quantile)
        thr = torch.as_tensor(thresholds, dtype=torch.float32, device=x.device)[None, :, None, None]
        n_units, n_conc = sketch.n_units, len(names)
        inter = torch.zeros(n_units, n_conc, dtype=torch.float64)
        area_unit = torch.zeros(n_units, dtype=torch.float64)
        area_conc = torch.tensor([float(t.sum()) for t in m], dtype=torch.float64)
        w_h = w_w = None
        for sl, a in layer_activations(model, x, at, batch_size):
            if w_h is None:
                w_h = _interp_matrix(a.shape[2], size[0]).to(a.device, torch.float32)
                w_w = _interp_matrix(a.shape[3], size[1]).to(a.device, torch.float32)
            up = torch.matmul(w_h, torch.matmul(a.float().contiguous(), w_w.T))  # bilinear upsampling
            on = up.gt_(thr).flatten(2)  # (b, units, HW) 1.0 where on: one in-place pass, no bool copy
            lab = torch.stack([t[sl] for t in m], 1).to(on.device).flatten(2).float()  # (b, K, HW)
            # counts per image stay < 2**24, so float32 products are exact; summed in float64
            inter += torch.bmm(on, lab.transpose(1, 2)).double().sum(0).cpu()
            area_unit += on.sum(dim=(0, 2)).double().cpu()
    union = area_unit[:, None] + area_conc[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).numpy()
    return Dissection(layer=at if isinstance(at, str) else type(at).__name__, concepts=names, iou=iou,
                      thresholds=thresholds, tolerance=sketch.tolerance, quantile=float(quantile),
                      min_iou=float(min_iou), n_images=len(x), concept_area=area_conc.numpy())
