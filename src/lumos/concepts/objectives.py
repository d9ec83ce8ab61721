"""Objectives of feature visualisation: one score per image, computed from recorded activations.

An :class:`Objective` maps the activations recorded during one forward pass (a mapping from a
layer's dotted name to its output, plus :data:`INPUT` for the image and :data:`OUTPUT` for the
model's output) to a tensor of shape ``(batch,)``: the score of each image, which feature
visualisation *maximises* and which dataset examples *rank* by. Objectives compose like numbers::

    from lumos.concepts import objectives as obj
    o = obj.channel("features.6", 3) - 0.05 * obj.total_variation() + 0.5 * obj.diversity("features.6")

``+``, ``-``, scalar ``*`` and ``/`` and unary ``-`` build new objectives; ``sum([...])`` works.
Indices of units may be one int (the same unit for every image) or a sequence with one entry per
image of the batch (image ``i`` maximises unit ``index[i]``: one optimisation draws a whole layer,
:func:`lumos.concepts.layer_grid`).

The design follows Lucent (``greentfrapp/lucent``, after Olah et al., *Feature Visualization*,
Distill 2017): objectives that compose, parametrisations and transforms as small functions.
Differences: objectives return per-image scores (so the curve of every image is recorded), are
maximised (regularisers return penalties and are subtracted), and name their layers up front so a
forward pass can stop after the last one it needs.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Objective", "INPUT", "OUTPUT", "neuron", "channel", "deepdream", "class_logit", "direction",
    "diversity", "l2", "total_variation", "blur", "as_objective",
]

INPUT = "<input>"    #: key of the (untransformed) image in the activations mapping
OUTPUT = "<output>"  #: key of the model's output in the activations mapping

Acts = Mapping[str, torch.Tensor]


class Objective:
    """A score per image, maximised by feature visualisation and ranked by dataset examples.

    Parameters
    ----------
    fn : callable
        ``fn(acts) -> Tensor (batch,)`` where ``acts`` maps layer names (and :data:`INPUT`,
        :data:`OUTPUT`) to tensors.
    layers : iterable of str
        The keys of ``acts`` that ``fn`` reads (layer names, :data:`INPUT`, :data:`OUTPUT`).
    name : str
        A readable name, used in titles ("features.6 channel 3").
    locate : callable, optional
        ``locate(acts) -> LongTensor (batch, n_spatial)``: the position in ``locate_layer``'s map
        that the score comes from (the neuron's position, the channel's arg-max). Dataset examples
        use it for the receptive-field crop. ``None`` for scores with no position (class logits).
    locate_layer : str, optional
        The layer whose map ``locate`` indexes.
    """

    def __init__(self, fn: Callable[[Acts], torch.Tensor], layers: Iterable[str], name: str,
                 locate: Callable[[Acts], torch.Tensor] | None = None, locate_layer: str | None = None):
        self.fn = fn
        self.layers = frozenset(layers)
        self.name = name
        self.locate = locate
        self.locate_layer = locate_layer

    def __call__(self, acts: Acts) -> torch.Tensor:
        v = self.fn(acts)
        if not isinstance(v, torch.Tensor) or v.ndim != 1:
            raise ValueError(f"objective {self.name!r} must return one score per image (shape (batch,)); "
                             f"got {getattr(v, 'shape', type(v).__name__)}")
        return v

    def __repr__(self) -> str:
        return f"Objective({self.name!r})"

    # ------------------------------------------------------------------ composition
    def __add__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Number) and not isinstance(other, bool):
            c = float(other)
            return Objective(lambda a: self(a) + c, self.layers, f"{self.name} + {c:g}")
        other = as_objective(other, "other")
        return Objective(lambda a: self(a) + other(a), self.layers | other.layers,
                         f"{self.name} + {other.name}")

    def __radd__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Number) and other == 0 and not isinstance(other, bool):
            return self  # sum([...]) starts from 0
        return self.__add__(other)

    def __neg__(self) -> "Objective":
        return Objective(lambda a: -self(a), self.layers, f"-({self.name})")

    def __sub__(self, other: Any) -> "Objective":
        return self + (-as_objective(other, "other") if isinstance(other, Objective) else -_scalar(other))

    def __rsub__(self, other: Any) -> "Objective":
        return (-self) + other

    def __mul__(self, other: Any) -> "Objective":
        c = _scalar(other)
        name = f"{c:g}·{self.name}" if " " not in self.name else f"{c:g}·({self.name})"
        return Objective(lambda a: c * self(a), self.layers, name)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Objective":
        c = _scalar(other)
        if c == 0:
            raise ValueError("cannot divide an objective by zero")
        return self * (1.0 / c)


def _scalar(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Number) or isinstance(value, complex):
        raise TypeError(f"objectives combine with other objectives and real scalars; got {type(value).__name__}")
    c = float(value)
    if c != c or c in (float("inf"), float("-inf")):
        raise ValueError(f"objective scale must be finite; got {value!r}")
    return c


def as_objective(value: Any, name: str = "objective") -> Objective:
    """``value`` if it is an :class:`Objective`; a clear TypeError otherwise."""
    if isinstance(value, Objective):
        return value
    raise TypeError(f"{name} must be a lumos.concepts.objectives.Objective (e.g. objectives.channel("
                    f"'features.6', 3)); got {type(value).__name__}")


# ---------------------------------------------------------------------- helpers
def _layer_name(layer: Any) -> str:
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer must be a dotted module name (str); got {layer!r}")
    return layer


def _index(index: Any, what: str) -> int | tuple[int, ...]:
    """An int, or a tuple of ints (one per image)."""
    if isinstance(index, bool):
        raise TypeError(f"{what} must be an int or a sequence of ints (one per image); got {index!r}")
    if isinstance(index, numbers.Integral):
        if index < 0:
            raise ValueError(f"{what} must be >= 0; got {index}")
        return int(index)
    if isinstance(index, torch.Tensor):
        index = index.tolist()
    if isinstance(index, Sequence) and len(index) and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in index):
        if min(index) < 0:
            raise ValueError(f"{what} must be >= 0; got {list(index)}")
        return tuple(int(i) for i in index)
    raise TypeError(f"{what} must be an int or a non-empty sequence of ints (one per image); got {index!r}")


def _get(acts: Acts, key: str) -> torch.Tensor:
    try:
        return acts[key]
    except KeyError:
        raise ValueError(f"objective needs the activation of {key!r}, which was not recorded") from None


def _pick(t: torch.Tensor, index: int | tuple[int, ...], layer: str, what: str) -> torch.Tensor:
    """``t[:, index]`` with ``index`` per image; ``t`` is (batch, C, ...)."""
    n_ch = t.shape[1] if t.ndim > 1 else 0
    idx = (index,) if isinstance(index, int) else index
    if t.ndim < 2 or max(idx) >= n_ch:
        raise ValueError(f"{what} {max(idx)} is out of range for {layer!r}, whose activation has shape "
                         f"{tuple(t.shape)} ({n_ch} channels)")
    if isinstance(index, int):
        return t[:, index]
    if len(index) != t.shape[0]:
        raise ValueError(f"{what}: {len(index)} indices given (one per image) but the batch has "
                         f"{t.shape[0]} images")
    rows = torch.arange(t.shape[0], device=t.device)
    return t[rows, torch.as_tensor(index, device=t.device)]


def _argmax_position(maps: torch.Tensor) -> torch.Tensor:
    """(batch, *spatial) -> (batch, n_spatial) long: the first arg-max of each map."""
    flat = maps.detach().flatten(1).argmax(1)
    out = []
    for size in reversed(maps.shape[1:]):  # torch.unravel_index is slow (argument checks)
        out.append(flat % size)
        flat = flat // size
    return torch.stack(out[::-1], 1)


def _label(index: Any, one: str, many: str) -> str:
    """``"<one> 3"`` for one index, ``"<many> (one per image)"`` for a per-image list."""
    return f"{one} {index}" if isinstance(index, int) else f"{many} (one per image)"


# ---------------------------------------------------------------------- unit objectives
def neuron(layer: str, channel: int | Sequence[int], position: Sequence[int] | None = None) -> Objective:
    """One unit: channel ``channel`` of ``layer``'s output at ``position`` (default: the centre).

    For a map of spatial shape ``(H, W)`` the centre is ``(H // 2, W // 2)``; for a vector
    activation (a linear layer) ``position`` must be ``None`` and the unit is ``channel``.
    """
    layer = _layer_name(layer)
    channel = _index(channel, "channel")
    pos = None if position is None else tuple(int(p) for p in position)

    def where(t: torch.Tensor) -> tuple[int, ...]:
        spatial = tuple(t.shape[2:])
        if pos is None:
            return tuple(s // 2 for s in spatial)
        if len(pos) != len(spatial) or any(not 0 <= p < s for p, s in zip(pos, spatial)):
            raise ValueError(f"position {pos} does not index the spatial shape {spatial} of {layer!r}")
        return pos

    def fn(acts):
        t = _pick(_get(acts, layer), channel, layer, "channel")
        p = where(_get(acts, layer))
        return t[(slice(None),) + p] if p else t

    def locate(acts):
        t = _get(acts, layer)
        p = where(t)
        return torch.tensor(p, dtype=torch.long).expand(t.shape[0], len(p))

    at = "centre" if pos is None else f"at {pos}"
    return Objective(fn, [layer], f"{layer} {_label(channel, 'unit', 'units')} {at}", locate, layer)


def channel(layer: str, channel: int | Sequence[int], reduce: str = "mean") -> Objective:
    """A whole channel of ``layer``'s output: its mean (default) or max over positions."""
    layer = _layer_name(layer)
    index = _index(channel, "channel")
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max'; got {reduce!r}")

    def fn(acts):
        t = _pick(_get(acts, layer), index, layer, "channel")
        if t.ndim == 1:
            return t
        flat = t.flatten(1)
        return flat.mean(1) if reduce == "mean" else flat.amax(1)

    def locate(acts):
        t = _pick(_get(acts, layer), index, layer, "channel")
        return _argmax_position(t) if t.ndim > 1 else torch.zeros(len(t), 0, dtype=torch.long)

    name = f"{layer} {_label(index, 'channel', 'channels')}" + (" (max)" if reduce == "max" else "")
    return Objective(fn, [layer], name, locate, layer)


def deepdream(layer: str) -> Objective:
    """The whole layer: the mean squared activation of ``layer`` (Mordvintsev et al.,
    *Inceptionism*, 2015)."""
    layer = _layer_name(layer)
    return Objective(lambda a: _get(a, layer).flatten(1).pow(2).mean(1), [layer], f"{layer} (DeepDream)")


def class_logit(index: int | Sequence[int]) -> Objective:
    """The model's output ``index`` (a class logit), per image if a sequence is given."""
    index = _index(index, "index")
    return Objective(lambda a: _pick(_get(a, OUTPUT), index, "the model output", "class"), [OUTPUT],
                     _label(index, "logit of class", "class logits"))


def direction(layer: str, vector: Any, position: Sequence[int] | None = None,
              cosine: bool = False) -> Objective:
    """A direction in ``layer``'s channel space: ``<a[:, :, p], v>`` averaged over positions ``p``.

    Parameters
    ----------
    layer : str
        The layer.
    vector : array-like of shape (C,) or (batch, C)
        The direction (e.g. a concept activation vector); one per image if 2-D.
    position : sequence of int, optional
        Score only at this position of the map instead of averaging over all.
    cosine : bool, default False
        Use the cosine similarity instead of the dot product (ignores the activation's norm).
    """
    layer = _layer_name(layer)
    v = torch.as_tensor(vector, dtype=torch.float32).detach().clone()
    if v.ndim not in (1, 2) or v.shape[-1] == 0 or not torch.isfinite(v).all():
        raise ValueError(f"vector must be finite with shape (C,) or (batch, C); got shape {tuple(v.shape)}")
    pos = None if position is None else tuple(int(p) for p in position)

    def per_position(t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 2 or t.shape[1] != v.shape[-1]:
            raise ValueError(f"vector has {v.shape[-1]} entries but {layer!r} has activation shape "
                             f"{tuple(t.shape)} ({t.shape[1] if t.ndim > 1 else 0} channels)")
        vv = v.to(t.device, t.dtype)
        if vv.ndim == 2 and len(vv) != len(t):
            raise ValueError(f"vector has {len(vv)} rows (one per image) but the batch has {len(t)}")
        vv = vv.expand(len(t), -1).reshape(len(t), -1, *([1] * (t.ndim - 2)))
        if cosine:
            return F.cosine_similarity(t, vv, dim=1, eps=1e-8)
        return (t * vv).sum(1)

    def fn(acts):
        s = per_position(_get(acts, layer))
        if s.ndim == 1:
            return s
        if pos is not None:
            return s[(slice(None),) + pos]
        return s.flatten(1).mean(1)

    def locate(acts):
        s = per_position(_get(acts, layer))
        if pos is not None:
            return torch.tensor(pos, dtype=torch.long).expand(len(s), len(pos))
        return _argmax_position(s) if s.ndim > 1 else torch.zeros(len(s), 0, dtype=torch.long)

    return Objective(fn, [layer], f"{layer} direction" + (" (cosine)" if cosine else ""), locate, layer)


def diversity(layer: str) -> Objective:
    """Diversity across the batch: minus the mean cosine similarity of each image's Gram matrix of
    ``layer`` with the others' (Olah et al. 2017). Add it with a weight to draw a batch of
    *different* images for one objective; a batch of one scores 0."""
    layer = _layer_name(layer)

    def fn(acts):
        t = _get(acts, layer)
        b = t.shape[0]
        if b < 2:
            return t.new_zeros(b)
        flat = t.reshape(b, t.shape[1], -1)
        gram = flat @ flat.transpose(1, 2)
        g = F.normalize(gram.flatten(1), dim=1)
        sim = g @ g.T
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)

    return Objective(fn, [layer], f"{layer} diversity")


# ---------------------------------------------------------------------- regularisers (penalties)
def l2(centre: float = 0.5) -> Objective:
    """Penalty: the mean squared distance of the image from ``centre`` (subtract it)."""
    c = _scalar(centre)
    return Objective(lambda a: (_get(a, INPUT) - c).flatten(1).pow(2).mean(1), [INPUT], "L2")


def total_variation() -> Objective:
    """Penalty: the mean absolute difference of neighbouring pixels (subtract it)."""
    def fn(acts):
        x = _get(acts, INPUT)
        dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
        dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        return dh + dw

    return Objective(fn, [INPUT], "total variation")


def blur(sigma: float = 1.0) -> Objective:
    """Penalty: the mean squared difference between the image and its Gaussian blur of width
    ``sigma`` pixels (subtract it): high frequencies cost, smooth images do not."""
    s = _scalar(sigma)
    if s <= 0:
        raise ValueError(f"sigma must be > 0; got {sigma}")
    radius = max(1, int(round(3 * s)))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / s) ** 2)
    k = k / k.sum()

    def fn(acts):
        x = _get(acts, INPUT)
        c = x.shape[1]
        kk = k.to(x.device, x.dtype)
        y = F.pad(x, (radius,) * 4, mode="replicate")
        y = F.conv2d(y, kk.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        y = F.conv2d(y, kk.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return (x - y).flatten(1).pow(2).mean(1)

    return Objective(fn, [INPUT], f"blur (sigma={s:g})")
