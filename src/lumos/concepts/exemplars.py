"""Dataset examples: the inputs of a data set that excite a unit most (and least).

``dataset_examples(model, data, units, k=9)`` streams ``data`` in batches, scores every input for
every unit (any :class:`~lumos.concepts.objectives.Objective`: a class logit, a neuron at a
position, a channel's mean or max over positions, a direction) and keeps, per unit, only the ``k``
best and ``k`` worst so far: memory is bounded by ``units × 2k`` (scores, indices, positions and
the images still kept), never the whole activation tensor. The result is exactly a full sort of the
scores, whatever the batch size; **ties** are broken by the data set index (the earlier input comes
first, in the top and in the bottom list alike).

For units with a position (a neuron, the arg-max of a channel or a direction), each example
carries the **receptive-field crop**: the input region that can influence that position
(:func:`receptive_field`).

Caveat (Olah et al., *Feature Visualization*, Distill 2017; Borowski et al., ICLR 2021): dataset
examples show what the unit *focuses on* in these inputs, not which feature it detects. The images
that excite a unit share many features at once (colour, texture, position, the class); which of
them the unit responds to needs an intervention (feature visualisation, dissection, ablation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..core.execution import check_batch_size, progress_bar, torch_generator
from ..core.torch_model import ModelGuard, model_device, model_dtype
from ..core.validation import check_choice, check_number
from ..display._common import ShortRepr, short_label
from . import objectives as _obj
from ._capture import check_layers, iter_batches, record

__all__ = ["dataset_examples", "DatasetExamples", "receptive_field", "ReceptiveField", "CAVEAT"]

CAVEAT = ("Dataset examples show what a unit focuses on in these images, not which feature it "
          "detects: the top images share many features at once.")

# Modules that act on each position separately (or are the identity on geometry).
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
              nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
              nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
              nn.modules.batchnorm._BatchNorm)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


# ---------------------------------------------------------------------------- receptive fields
@dataclass(repr=False)
class ReceptiveField(ShortRepr):
    """The input region each position of a layer's map can be influenced by.

    Attributes
    ----------
    layer : str
    method : {"geometry", "gradient"}
        ``"geometry"``: propagated through the convolution and pooling geometry: position ``i``
        of an axis sees inputs ``[i·jump − pad, i·jump − pad + size)`` (clipped to the input).
        ``"gradient"``: the bounding box of the non-zero input gradient of the position (summed
        over channels with random weights, over a few random inputs).
    jump, pad, size : tuple of int
        The geometry per spatial axis (``None`` for the gradient method).
    input_shape : tuple of int
        ``(C, *spatial)`` of the input.
    """

    layer: str
    method: str
    input_shape: tuple
    map_shape: tuple = ()
    jump: tuple | None = None
    pad: tuple | None = None
    size: tuple | None = None
    _boxes: dict = field(default_factory=dict, repr=False)
    _grad_box: Any = field(default=None, repr=False)

    def box(self, position: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """``((start, stop), ...)`` per spatial axis, half-open, clipped to the input."""
        pos = tuple(int(p) for p in position)
        if pos in self._boxes:
            return self._boxes[pos]
        if len(pos) != len(self.map_shape) or any(not 0 <= p < s for p, s in zip(pos, self.map_shape)):
            raise ValueError(f"position {pos} is outside {self.layer!r}'s map of shape {self.map_shape}")
        spatial = self.input_shape[1:]
        if self.method == "geometry":
            out = tuple((max(0, p * j - q), min(n, p * j - q + s))
                        for p, j, q, s, n in zip(pos, self.jump, self.pad, self.size, spatial))
        else:
            out = self._grad_box(pos)
        self._boxes[pos] = out
        return out


def _tuple(v, n):
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _leaf_geometry(m: nn.Module, n: int):
    """``(kernel, stride, padding, dilation)`` per axis for a conv/pool, ``None`` for pointwise;
    raises LookupError for anything else."""
    if isinstance(m, _POINTWISE):
        return None
    if isinstance(m, _CONV):
        k, s, d = _tuple(m.kernel_size, n), _tuple(m.stride, n), _tuple(m.dilation, n)
        if isinstance(m.padding, str):
            p = (0,) * n if m.padding == "valid" else tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        else:
            p = _tuple(m.padding, n)
        return k, s, p, d
    if isinstance(m, _POOL):
        # ceil_mode only adds windows at the end; where each window starts is unchanged
        k = _tuple(m.kernel_size, n)
        s = _tuple(m.stride if m.stride is not None else m.kernel_size, n)
        p = _tuple(m.padding, n)
        d = _tuple(getattr(m, "dilation", 1), n)
        return k, s, p, d
    raise LookupError(type(m).__name__)


def _geometry(model: nn.Module, layer: str, x: torch.Tensor):
    """(jump, pad, size) by composing the leaf modules run before (and in) ``layer``; None when a
    module of unknown geometry runs first."""
    target = check_layers(model, [layer])[layer]
    order: list[nn.Module] = []
    handles = []

    class _Stop(Exception):
        pass

    stop = _Stop()

    def rec(mod, inp, out):
        order.append(mod)

    def fin(mod, inp, out):
        raise stop

    try:
        for m in model.modules():
            if not list(m.children()):
                handles.append(m.register_forward_hook(rec))
        handles.append(target.register_forward_hook(fin))
        try:
            with torch.no_grad():
                model(x)
        except _Stop as e:
            if e is not stop:
                raise
    finally:
        for h in handles:
            h.remove()
    n = x.ndim - 2
    jump, pad, size = [1] * n, [0] * n, [1] * n
    for m in order:
        try:
            g = _leaf_geometry(m, n)
        except LookupError:
            return None
        if g is None:
            continue
        k, s, p, d = g
        for a in range(n):
            size[a] += (d[a] * (k[a] - 1)) * jump[a]
            pad[a] += p[a] * jump[a]
            jump[a] *= s[a]
    return tuple(jump), tuple(pad), tuple(size)


def _gradient_box(model, layer, x: torch.Tensor, generator: torch.Generator):
    modules = check_layers(model, [layer])

    def box(pos):
        xx = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            a = record(model, xx, [layer], what="random inputs", modules=modules)[layer]
            w = torch.rand(a.shape[1], generator=generator).to(a.device, a.dtype) + 0.5
            s = (a[(slice(None), slice(None)) + tuple(pos)] * w).sum()
            (g,) = torch.autograd.grad(s, xx, allow_unused=True)
        if g is None:
            raise ValueError(f"layer {layer!r}: its activation does not depend on the input")
        support = (g.abs().sum((0, 1)) > 0)
        out = []
        for ax in range(support.ndim):
            other = tuple(i for i in range(support.ndim) if i != ax)
            hit = support.any(dim=other) if other else support
            idx = torch.nonzero(hit).flatten()
            out.append((int(idx.min()), int(idx.max()) + 1) if len(idx) else (0, 0))
        return tuple(out)

    return box


def receptive_field(model: nn.Module, layer: str, input_shape: Sequence[int], *, method: str = "auto",
                    seed: int | None = 0) -> ReceptiveField:
    """The receptive field of the positions of ``layer``'s output map.

    Parameters
    ----------
    model : nn.Module
    layer : str
        The layer, by dotted name.
    input_shape : (C, *spatial)
        One input's shape.
    method : {"auto", "geometry", "gradient"}, default "auto"
        ``"geometry"`` composes kernel, stride, padding and dilation of every convolution and
        pooling module that runs before the layer (pointwise modules, batch norm and dropout leave
        it unchanged): exact for chains of such modules, and an error when another module (a
        linear layer, adaptive pooling, an upsampling) runs first. Functional calls and branches
        (``x + skip``) are invisible to it, so ``"auto"`` checks the geometric box against the
        gradient's at one position and falls back to ``"gradient"`` when the gradient reaches
        outside it (or the geometry does not apply). ``"gradient"`` is the *effective* region on
        random inputs: it may be smaller than the geometric one (dead ReLUs, max-pooling routes
        the gradient through one input of each window).
    seed : int, default 0
        Seeds the random inputs of the gradient method.
    """
    check_choice(method, "method", ("auto", "geometry", "gradient"))
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2:
        raise ValueError(f"input_shape must be (channels, *spatial); got {input_shape!r}")
    with ModelGuard(model):
        model.eval()
        gen = torch_generator(seed)
        dtype = model_dtype(model) or torch.float32
        x = torch.rand((2,) + shape, generator=gen).to(model_device(model), dtype)
        with torch.no_grad():
            a = record(model, x[:1], [layer], what="a random input")[layer]
        if a.ndim < 3:
            raise ValueError(f"layer {layer!r} has no spatial map (activation shape {tuple(a.shape)}): "
                             "no receptive field")
        map_shape = tuple(a.shape[2:])
        geo = _geometry(model, layer, x[:1]) if method != "gradient" else None
        if method == "geometry" and geo is None:
            raise ValueError(f"method='geometry': a module of unknown geometry (not a convolution, pooling "
                             f"or pointwise module) runs before {layer!r}; use method='gradient'")
        grad_box = _gradient_box(model, layer, x, gen) if method != "geometry" else None
        if geo is not None:
            rf = ReceptiveField(layer, "geometry", shape, map_shape, *geo)
            if method == "auto":
                centre = tuple(s // 2 for s in map_shape)
                gb, bb = grad_box(centre), rf.box(centre)
                if any(g0 < b0 or g1 > b1 for (g0, g1), (b0, b1) in zip(gb, bb) if g1 > g0):
                    geo = None  # something the hooks did not see (a functional op, a branch)
            if geo is not None:
                return rf
        # the gradient method runs the model later (crops are computed lazily): keep it guarded
        rf = ReceptiveField(layer, "gradient", shape, map_shape)

        def guarded(pos, _box=grad_box):
            with ModelGuard(model):
                model.eval()
                return _box(pos)

        rf._grad_box = guarded
        return rf


# ---------------------------------------------------------------------------- dataset examples
@dataclass(repr=False)
class DatasetExamples(ShortRepr):
    """Top-K and bottom-K inputs per unit (see :func:`dataset_examples`).

    Attributes
    ----------
    names : list of str
        The units, in order.
    top_indices, bottom_indices : ndarray of int, shape (units, k)
        Data set indices, best first (top) / lowest first (bottom); ties by index.
    top_scores, bottom_scores : ndarray of float, shape (units, k)
    top_positions, bottom_positions : list of (ndarray (k, n_spatial) or None)
        Per unit, the position in its layer's map the score came from (``None``: no position).
    top_boxes, bottom_boxes : list of (list of boxes or None)
        Per unit and example, the receptive-field box ``((r0, r1), (c0, c1))`` of that position.
    images : dict
        Data set index -> input (numpy), for every example kept.
    n_seen : int
        Number of inputs scored.
    caveat : str
        :data:`CAVEAT`.
    """

    names: list
    top_indices: np.ndarray
    top_scores: np.ndarray
    bottom_indices: np.ndarray
    bottom_scores: np.ndarray
    top_positions: list
    bottom_positions: list
    top_boxes: list
    bottom_boxes: list
    images: dict
    n_seen: int
    caveat: str = CAVEAT
    receptive_fields: dict = field(default_factory=dict)

    def examples(self, unit: int | str, which: str = "top", crop: bool = False) -> list[np.ndarray]:
        """The inputs (or their receptive-field crops) of ``unit``, best first."""
        u = self._unit(unit)
        check_choice(which, "which", ("top", "bottom"))
        idx = (self.top_indices if which == "top" else self.bottom_indices)[u]
        boxes = (self.top_boxes if which == "top" else self.bottom_boxes)[u]
        out = []
        for j, i in enumerate(idx):
            im = self.images[int(i)]
            if crop and boxes is not None:
                im = im[(slice(None),) + tuple(slice(a, b) for a, b in boxes[j])]
            out.append(im)
        return out

    def _unit(self, unit) -> int:
        if isinstance(unit, str):
            if unit not in self.names:
                raise ValueError(f"unit {unit!r} not among {self.names}")
            return self.names.index(unit)
        u = int(unit)
        if not 0 <= u < len(self.names):
            raise ValueError(f"unit must be in [0, {len(self.names)}); got {unit}")
        return u

    def plot(self, units: Sequence[int | str] | None = None, *, crop: bool = False, which: str = "both",
             image_size: float = 1.0, title: str | None = None):
        """One row per unit: the top-K (and bottom-K) inputs with their scores; receptive-field
        boxes drawn on the images (``crop=True`` shows the crops instead). Returns the figure."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        from ..display.heatmap import image_for_display

        check_choice(which, "which", ("top", "bottom", "both"))
        us = [self._unit(u) for u in (units if units is not None else range(len(self.names)))]
        parts = ["top", "bottom"] if which == "both" else [which]
        k = self.top_indices.shape[1]
        cols = k * len(parts)
        fig, axes = plt.subplots(len(us), cols, squeeze=False, layout="constrained",
                                 figsize=(cols * image_size + 1.2, len(us) * (image_size + 0.35) + 0.6))
        for r, u in enumerate(us):
            for pi, part in enumerate(parts):
                idx = (self.top_indices if part == "top" else self.bottom_indices)[u]
                scores = (self.top_scores if part == "top" else self.bottom_scores)[u]
                boxes = (self.top_boxes if part == "top" else self.bottom_boxes)[u]
                ims = self.examples(u, part, crop=crop)
                for j in range(k):
                    ax = axes[r, pi * k + j]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if j >= len(ims):
                        ax.set_axis_off()
                        continue
                    ax.imshow(image_for_display(ims[j]), cmap="gray")
                    if boxes is not None and not crop and ims[j].ndim == 3:
                        (r0, r1), (c0, c1) = boxes[j][:2]
                        ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                                               edgecolor="yellow", lw=1))
                    ax.set_title(f"#{int(idx[j])}: {scores[j]:.3g}", fontsize=6)
                    if j == 0:
                        ax.set_ylabel(f"{self.names[u]}\n{part}", fontsize=6)
        fig.suptitle(title if title is not None else
                     f"Dataset examples ({self.n_seen} inputs, top/bottom {k}; boxes: receptive fields)\n"
                     + short_label(CAVEAT, 110), fontsize=8)
        self.figure_ = fig
        return fig


def _units(units: Any) -> tuple[list[str], list[_obj.Objective]]:
    if isinstance(units, _obj.Objective):
        return [units.name], [units]
    if isinstance(units, Mapping):
        return [str(k) for k in units], [_obj.as_objective(v, f"units[{k!r}]") for k, v in units.items()]
    if isinstance(units, Sequence) and not isinstance(units, str) and len(units):
        objs = [_obj.as_objective(v, f"units[{i}]") for i, v in enumerate(units)]
        names = [o.name for o in objs]
        if len(set(names)) != len(names):  # duplicate names: number them
            names = [f"{i}: {n}" for i, n in enumerate(names)]
        return names, objs
    raise TypeError("units must be an Objective, a non-empty sequence of them or a dict name -> Objective "
                    f"(e.g. objectives.channel('features.6', 3)); got {type(units).__name__}")


def _merge(vals, idx, pos, new_vals, new_idx, new_pos, k: int, largest: bool):
    """The best ``k`` of the kept and new candidates: by value, ties by the lower index."""
    v = np.concatenate([vals, new_vals])
    i = np.concatenate([idx, new_idx])
    p = None if pos is None else np.concatenate([pos, new_pos])
    order = np.lexsort((i, -v if largest else v))[:k]
    return v[order], i[order], (None if p is None else p[order])


def dataset_examples(model: nn.Module, data: Any, units: Any, *, k: int = 9, batch_size: int | None = None,
                     receptive: str | None = "auto", progress: bool | None = None) -> DatasetExamples:
    """The ``k`` inputs of ``data`` that score highest and lowest on each unit.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode, left as found.
    data : tensor, array, ShapesData, DataLoader or iterable of batches
        The inputs (batches may be ``(inputs, labels)`` tuples; labels are ignored). Streamed:
        one batch of activations at a time.
    units : Objective, sequence of Objective, or dict name -> Objective
        What ranks the inputs (:mod:`lumos.concepts.objectives`): ``class_logit(c)``,
        ``neuron(layer, c, position)``, ``channel(layer, c, reduce="max")`` (or ``"mean"``),
        ``direction(layer, v)``. Many units are scored in the same forward pass.
    k : int, default 9
        How many top (and bottom) inputs per unit.
    batch_size : int, optional
        Rows per forward pass for array inputs (default sized by memory); the result does not
        depend on it.
    receptive : {"auto", "geometry", "gradient"} or None, default "auto"
        How receptive-field boxes are computed (:func:`receptive_field`); ``None``: no boxes.
    progress : bool, optional

    Returns
    -------
    DatasetExamples
        Ties are broken by the data set index (the earlier input first). See :data:`CAVEAT`.
    """
    names, objs = _units(units)
    k = int(check_number(k, "k", low=1, integer=True))
    if receptive is not None:
        check_choice(receptive, "receptive", ("auto", "geometry", "gradient"))
    U = len(objs)
    keys = set().union(*(o.layers for o in objs))
    empty_v, empty_i = np.empty(0), np.empty(0, dtype=np.int64)
    top = [[empty_v, empty_i, None] for _ in range(U)]
    bot = [[empty_v, empty_i, None] for _ in range(U)]
    images: dict[int, np.ndarray] = {}
    n = 0
    input_shape = None
    with ModelGuard(model):
        model.eval()
        modules = check_layers(model, keys)
        device, dtype = model_device(model), model_dtype(model)
        per_input = isinstance(data, (torch.Tensor, np.ndarray)) or hasattr(data, "images")
        if per_input:
            first = data.images if hasattr(data, "images") else data
            bs = check_batch_size(batch_size, row_bytes=int(np.prod(first.shape[1:])) * 4)
            total = len(first)
        else:  # a DataLoader or iterable: its own batches; a bar per batch when it has a length
            bs = check_batch_size(batch_size)
            total = len(data) if hasattr(data, "__len__") else 0
        with torch.no_grad(), progress_bar(total, "dataset examples", progress if total else False,
                                           "input" if per_input else "batch") as bar:
            for x, _ in iter_batches(data, bs, device, dtype):
                if input_shape is None:
                    input_shape = tuple(x.shape[1:])
                acts = record(model, x, keys - {_obj.INPUT}, what="the data", modules=modules)
                acts[_obj.INPUT] = x
                b = len(x)
                new_i = np.arange(n, n + b, dtype=np.int64)
                for u, o in enumerate(objs):
                    s = o(acts).detach().cpu().numpy().astype(np.float64)
                    if s.shape != (b,):
                        raise ValueError(f"unit {names[u]!r} gave {s.shape} scores for {b} inputs")
                    pos = None
                    if o.locate is not None:
                        pos = o.locate(acts).cpu().numpy().astype(np.int64).reshape(b, -1)
                    for state, largest in ((top[u], True), (bot[u], False)):
                        if state[2] is None and pos is not None:
                            state[2] = np.empty((0, pos.shape[1]), dtype=np.int64)
                        state[0], state[1], state[2] = _merge(state[0], state[1], state[2], s, new_i, pos,
                                                              k, largest)
                keep = {int(i) for st in top + bot for i in st[1]}
                for j in range(b):
                    if n + j in keep:
                        images[n + j] = x[j].detach().cpu().numpy()
                for i in [i for i in images if i not in keep]:
                    del images[i]
                n += b
                bar.update(b if per_input else 1)
    if n < k:
        raise ValueError(f"k={k} but data has only {n} inputs")
    fields = {}
    rfs: dict[str, ReceptiveField] = {}
    for part, states in (("top", top), ("bottom", bot)):
        fields[f"{part}_indices"] = np.stack([st[1] for st in states])
        fields[f"{part}_scores"] = np.stack([st[0] for st in states])
        fields[f"{part}_positions"] = [st[2] for st in states]
        boxes = []
        for o, st in zip(objs, states):
            if receptive is None or st[2] is None or st[2].shape[1] == 0 or o.locate_layer is None:
                boxes.append(None)
                continue
            if o.locate_layer not in rfs:
                rfs[o.locate_layer] = receptive_field(model, o.locate_layer, input_shape, method=receptive)
            boxes.append([rfs[o.locate_layer].box(p) for p in st[2]])
        fields[f"{part}_boxes"] = boxes
    return DatasetExamples(names=names, images=images, n_seen=n, receptive_fields=rfs, **fields)
