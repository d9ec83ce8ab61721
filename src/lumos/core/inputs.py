"""Models of several inputs and extra forward arguments: one mechanism for every torch method.

A model may take several tensors (an image and a text, numeric and categorical tables, token ids
with an attention mask) and extra arguments that are not explained (a mask, a flag, a timestep).
lumos methods work on one tensor per sample. :class:`BoundModel` makes any such model look like
one: it takes a single batch ``z`` and calls the user's model as it expects,

* **several explained inputs** (a tuple/list or a dict of tensors) are *packed*: each sample's
  inputs are flattened and concatenated into one row of ``z`` (shape ``(n, D)``), and unpacked,
  reshaped and cast back to each input's shape and dtype inside ``forward``; a dict is passed as
  keyword arguments (``model(input_ids=..., pixel_values=...)``), a tuple positionally;
* **extra arguments** (``forward_args=``: a tuple for positional ones, a dict for keyword ones, or
  :class:`Args` for both) follow the explained inputs. A tensor or array whose first axis has the
  batch length is *per sample*: every internal row gets the argument of the sample it belongs to
  (integration steps, noise draws, masks, windows). Wrap a batch-length value that is the same for
  every row in :class:`Shared`.

Methods tell the bound model which sample each row of an internal batch belongs to through
:func:`rows_of` (``forward(model, x, rows=...)`` and ``gradient(..., rows)`` in
:mod:`lumos.core.torch_model` do it): the same ``rows`` they already pass to ``Target.select``. A
batch with as many rows as samples and no ``rows`` is the samples themselves; any other batch
without ``rows`` is refused when an argument is per sample, rather than silently mismatched.

The attribution of the packed row is unpacked the same way, so an Explanation of several inputs
holds one values array per input (a tuple, or a dict with the inputs' names). Completeness holds
over all inputs together.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["Args", "Shared", "Packing", "Wrapper", "BoundModel", "bind", "rows_of", "unwrap",
           "is_several", "is_per_sample", "split_forward_args", "ForwardArgsError"]


class ForwardArgsError(ValueError):
    """Per-sample forward arguments could not be matched to the rows of a batch."""


class Shared:
    """A forward argument that is the same for every row, even if its first axis has batch length."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"Shared({type(self.value).__name__})"


class Args:
    """Positional and keyword forward arguments together: ``Args(mask, flag=True)``."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f"Args({len(self.args)} positional, keywords {sorted(self.kwargs)})"


def is_several(inputs: Any) -> bool:
    """True for several explained inputs: a tuple/list of arrays or tensors, or a dict of them."""
    if isinstance(inputs, Mapping):
        return True
    if isinstance(inputs, (tuple, list)) and inputs:
        return all(isinstance(t, (torch.Tensor, np.ndarray)) or hasattr(t, "iloc") for t in inputs)
    return False


def _to_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


@dataclass
class Packing:
    """How several inputs of ``n`` samples map to the columns of one ``(n, D)`` tensor."""

    kind: str                         # "tuple" or "dict"
    names: tuple[str, ...]            # dict keys, or "0", "1", ... for a tuple
    shapes: tuple[tuple[int, ...], ...]  # per-sample shape of each input
    dtypes: tuple[torch.dtype, ...]   # the user's dtype of each input
    n: int

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def offsets(self) -> list[int]:
        return list(np.cumsum([0] + self.sizes))

    @property
    def width(self) -> int:
        return int(sum(self.sizes))

    @classmethod
    def of(cls, inputs: Any, name: str = "inputs") -> tuple["Packing", list[torch.Tensor]]:
        """The packing of ``inputs`` (a tuple/list or dict of tensors) and the tensors themselves."""
        if isinstance(inputs, Mapping):
            kind, names, parts = "dict", tuple(str(k) for k in inputs), list(inputs.values())
        else:
            kind, parts = "tuple", list(inputs)
            names = tuple(str(i) for i in range(len(parts)))
        if not parts:
            raise ValueError(f"{name} is empty: give at least one tensor")
        tensors = [_to_tensor(p, f"{name}[{k!r}]" if kind == "dict" else f"{name}[{k}]")
                   for k, p in zip(names, parts)]
        n = tensors[0].shape[0] if tensors[0].ndim else 0
        for k, t in zip(names, tensors):
            label = f"{name}[{k!r}]" if kind == "dict" else f"{name}[{k}]"
            if t.ndim == 0 or t.shape[0] == 0:
                raise ValueError(f"{label} must have a non-empty batch axis; got shape {tuple(t.shape)}")
            if t.shape[0] != n:
                raise ValueError(
                    f"{name}: every input needs the same number of samples; {label} has "
                    f"{t.shape[0]}, the first has {n}")
        return cls(kind, names, tuple(tuple(t.shape[1:]) for t in tensors),
                   tuple(t.dtype for t in tensors), n), tensors

    def pack(self, parts: Sequence[torch.Tensor], dtype: torch.dtype, device=None) -> torch.Tensor:
        """``(m, D)``: each part flattened per row and concatenated (a copy, in ``dtype``)."""
        m = parts[0].shape[0]
        return torch.cat([p.reshape(m, -1).to(device=device or p.device, dtype=dtype) for p in parts], 1)

    def split(self, z: torch.Tensor, cast: bool = True) -> list[torch.Tensor]:
        """The parts of ``z`` (shape ``(m, D)``), reshaped (and cast to each input's dtype)."""
        m, off = z.shape[0], self.offsets
        out = []
        for k, shape in enumerate(self.shapes):
            piece = z[:, off[k]:off[k + 1]].reshape((m,) + shape)
            out.append(cast_back(piece, self.dtypes[k]) if cast else piece)
        return out

    def pack_param(self, value: Any, name: str, dtype: torch.dtype, device=None) -> Any:
        """A per-input parameter (baselines, fills) in packed form.

        Strings and scalars pass through (they mean the same for every input); a tuple/list or
        dict matching the inputs is packed like them, each part broadcast to its input's shape
        (one value per input, one per-sample shape, or one per sample).
        """
        if value is None or isinstance(value, (str, int, float, bool, np.number)) or callable(value):
            return value
        if isinstance(value, Mapping) and self.kind == "dict":
            missing = set(self.names) - {str(k) for k in value}
            extra = {str(k) for k in value} - set(self.names)
            if missing or extra:
                raise ValueError(f"{name}: give one entry per input {list(self.names)}; "
                                 f"missing {sorted(missing)}, unknown {sorted(extra)}")
            parts = [value[k] if k in value else value[self._key(value, k)] for k in self.names]
        elif isinstance(value, (tuple, list)) and len(value) == len(self.names):
            parts = list(value)
        else:
            raise ValueError(
                f"{name}: with several inputs give one value per input ({len(self.names)} as a "
                f"{'dict with keys ' + str(list(self.names)) if self.kind == 'dict' else 'tuple'}), "
                f"or a scalar/name that applies to all; got {type(value).__name__}")
        rows = []
        for k, (p, shape) in enumerate(zip(parts, self.shapes)):
            t = _to_tensor(p, f"{name}[{self.names[k]}]").to(dtype=dtype)
            try:
                if t.ndim == len(shape) + 1:  # one per sample (or a set of rows)
                    t = torch.broadcast_to(t, (t.shape[0],) + shape)
                else:
                    t = torch.broadcast_to(t, shape)[None]
            except RuntimeError:
                raise ValueError(
                    f"{name}[{self.names[k]}] of shape {tuple(t.shape)} does not broadcast to the "
                    f"input's shape {shape} (or (batch,) + {shape})") from None
            rows.append(t)
        m = max(r.shape[0] for r in rows)
        rows = [r.expand((m,) + r.shape[1:]) if r.shape[0] == 1 else r for r in rows]
        if any(r.shape[0] != m for r in rows):
            raise ValueError(f"{name}: the parts have different numbers of rows")
        return self.pack(rows, dtype, device)

    @staticmethod
    def _key(value: Mapping, k: str):
        for key in value:
            if str(key) == k:
                return key
        raise KeyError(k)  # pragma: no cover - checked by the caller

    def unpack_values(self, values: Any, cast: bool = False):
        """Split a ``(n, D)`` array (attributions, inputs) into the user's structure of arrays.

        ``cast``: give each part its input's dtype back (for the inputs themselves: token ids
        stay integers), never for attributions.
        """
        if isinstance(values, torch.Tensor):
            t = values.detach().cpu()
            m, off = t.shape[0], self.offsets
            parts = [t[:, off[k]:off[k + 1]].reshape((m,) + s) for k, s in enumerate(self.shapes)]
            parts = [(cast_back(q, dt) if cast else q).numpy() for q, dt in zip(parts, self.dtypes)]
        else:
            arr = np.asarray(values)
            m, off = arr.shape[0], self.offsets
            parts = [arr[:, off[k]:off[k + 1]].reshape((m,) + s) for k, s in enumerate(self.shapes)]
        return dict(zip(self.names, parts)) if self.kind == "dict" else tuple(parts)


def cast_back(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Values carried in a float batch back to the input's integer or bool dtype (token ids)."""
    if dtype.is_floating_point or dtype == z.dtype:
        return z
    return z != 0 if dtype == torch.bool else z.round().to(dtype)


class Wrapper(nn.Module):
    """A view of the user's ``model`` that lumos builds for one call (never seen by the user).

    Wrappers nest (a layer splice around bound forward arguments); :meth:`rows` tells every level
    which sample each row of the next batches belongs to, and :func:`unwrap` finds the user's model
    (for layer names and the model lock).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._rows: torch.Tensor | None = None
        # the number of explained samples (levels that hold per-sample state set their own)
        self.n: int | None = model.n if isinstance(model, Wrapper) else None

    @contextlib.contextmanager
    def rows(self, rows: Any) -> Iterator[None]:
        """Within the block, row ``k`` of each batch belongs to sample ``rows[k]``.

        Calls nest: when a method runs another one on a batch it built (SmoothGrad on its noisy
        copies), the outer call says which sample each row of that batch belongs to, and the
        inner call's rows index that batch: the sample of inner row ``k`` is ``outer[rows[k]]``.
        """
        prev = self._rows
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
            if prev is not None:
                if len(rows) and (int(rows.max()) >= len(prev) or int(rows.min()) < 0):
                    raise ForwardArgsError(
                        f"internal error: row ids up to {int(rows.max())} for a batch of {len(prev)} rows")
                rows = prev[rows.to(prev.device)]
        with self._set_rows(rows):
            yield

    @contextlib.contextmanager
    def _set_rows(self, rows: torch.Tensor | None) -> Iterator[None]:
        """Set already composed rows on this level and the levels inside."""
        prev, self._rows = self._rows, rows
        try:
            if isinstance(self.model, Wrapper):
                with self.model._set_rows(rows):
                    yield
            else:
                yield
        finally:
            self._rows = prev

    def check_batch(self, m: int, name: str = "inputs") -> None:
        """Refuse a nested call on ``m`` rows whose samples are unknown (see :meth:`rows`)."""
        if self._rows is not None:
            if len(self._rows) != m:
                raise ForwardArgsError(f"{name}: {m} rows, but the enclosing call described {len(self._rows)}")
        elif m != self.n and self.per_sample:
            raise ForwardArgsError(
                f"{name}: a batch of {m} rows was handed to a model with per-sample forward "
                f"arguments for {self.n} samples, without saying which sample each row belongs to "
                "(wrap the call in lumos.core.inputs.rows_of(model, rows))")

    @property
    def per_sample(self) -> bool:
        inner = self.model.per_sample if isinstance(self.model, Wrapper) else False
        return inner or self._own_per_sample()

    def _own_per_sample(self) -> bool:
        return False


class BoundModel(Wrapper):
    """The user's model seen as a function of one batch ``z`` (see the module docs).

    ``packing`` is ``None`` when a single input is explained (``z`` has its shape) and only
    forward arguments are bound.
    """

    def __init__(self, model: nn.Module, packing: Packing | None, n: int,
                 args: tuple = (), kwargs: Mapping[str, Any] | None = None,
                 cast: torch.dtype | None = None):
        super().__init__(model)
        self.cast = cast  # a single integer input (token ids) carried as floats
        self.packing = packing
        self.n = n
        self.args = list(args)
        self.kwargs = dict(kwargs or {})

    def _own_per_sample(self) -> bool:
        return any(is_per_sample(a, self.n) for a in self.args + list(self.kwargs.values()))

    def _expand(self, value: Any, rows: torch.Tensor | None, m: int) -> Any:
        if isinstance(value, Shared):
            return value.value
        if not is_per_sample(value, self.n):
            return value
        if rows is None:
            if m == self.n:
                return value
            raise ForwardArgsError(
                f"forward_args: a batch of {m} rows was evaluated without saying which of the {self.n} "
                "samples each row belongs to, so the per-sample forward arguments cannot be expanded. "
                "This method does not support per-sample forward_args; wrap arguments that are the "
                "same for every row in lumos.Shared(...)")
        if len(rows) != m:
            raise ValueError(f"internal error: {len(rows)} row ids for a batch of {m} rows")
        if isinstance(value, torch.Tensor):
            return value.index_select(0, rows.to(value.device))
        return value[rows.cpu().numpy()]

    def forward(self, z: torch.Tensor):
        m = z.shape[0]
        rows = self._rows
        args = [self._expand(a, rows, m) for a in self.args]
        kwargs = {k: self._expand(v, rows, m) for k, v in self.kwargs.items()}
        if self.packing is None:
            return self.model(z if self.cast is None else cast_back(z, self.cast), *args, **kwargs)
        parts = self.packing.split(z)
        if self.packing.kind == "dict":
            clash = set(self.packing.names) & set(kwargs)
            if clash:
                raise ValueError(f"forward_args: {sorted(clash)} are also explained inputs")
            return self.model(*args, **dict(zip(self.packing.names, parts)), **kwargs)
        return self.model(*parts, *args, **kwargs)


def is_per_sample(value: Any, n: int) -> bool:
    """A per-sample forward argument: a tensor/array whose first axis has the batch length ``n``."""
    if isinstance(value, Shared):
        return False
    shape = getattr(value, "shape", None)
    return (isinstance(value, (torch.Tensor, np.ndarray)) and shape is not None and len(shape) >= 1
            and shape[0] == n)


def split_forward_args(forward_args: Any) -> tuple[tuple, dict]:
    """``forward_args`` (None, a tuple, a dict, :class:`Args` or one value) as ``(args, kwargs)``."""
    if forward_args is None:
        return (), {}
    if isinstance(forward_args, Args):
        return tuple(forward_args.args), dict(forward_args.kwargs)
    if isinstance(forward_args, Mapping):
        bad = [k for k in forward_args if not isinstance(k, str)]
        if bad:
            raise TypeError(f"forward_args: keyword names must be strings; got {bad!r}")
        return (), dict(forward_args)
    if isinstance(forward_args, (tuple, list)):
        return tuple(forward_args), {}
    return (forward_args,), {}


def bind(model: nn.Module, inputs: Any, forward_args: Any = None, *, dtype: torch.dtype | None,
         device=None, name: str = "inputs", keep_integer: bool = False
         ) -> tuple[nn.Module, Any, Packing | None]:
    """The model and inputs a method works on.

    Returns ``(model, inputs, packing)``: the user's objects unchanged when there is one input and
    no forward argument; otherwise a :class:`BoundModel` and the (packed) inputs, with the
    :class:`Packing` (``None`` for a single input with forward arguments).
    ``keep_integer``: a single integer input (token ids) is handed to the model in its own dtype
    (methods that replace values, never differentiate them, carry it as floats).
    """
    args, kwargs = split_forward_args(forward_args)
    several = is_several(inputs)
    integer = _integer_dtype(inputs) if keep_integer and not several else None
    if not several and not args and not kwargs and integer is None:
        return model, inputs, None
    args = tuple(_move(a, device) for a in args)
    kwargs = {k: _move(v, device) for k, v in kwargs.items()}
    if not several:
        n = len(inputs)
        return BoundModel(model, None, n, args, kwargs, cast=integer), inputs, None
    packing, tensors = Packing.of(inputs, name)
    dt = dtype or torch.float32
    z = packing.pack(tensors, dt, device)
    return BoundModel(model, packing, packing.n, args, kwargs), z, packing


def _integer_dtype(inputs: Any) -> torch.dtype | None:
    """The torch dtype of an integer or bool tensor/array (None for floats and anything else)."""
    if isinstance(inputs, torch.Tensor):
        dt = inputs.dtype
    elif isinstance(inputs, np.ndarray) and (np.issubdtype(inputs.dtype, np.integer) or inputs.dtype == bool):
        dt = torch.from_numpy(inputs[:0].copy()).dtype
    else:
        return None
    return None if dt.is_floating_point or dt.is_complex else dt


def _move(value: Any, device) -> Any:
    if isinstance(value, Shared):
        return Shared(_move(value.value, device))
    if isinstance(value, torch.Tensor) and device is not None:
        return value.to(device)
    return value


def unwrap(model: Any) -> Any:
    """The user's model inside lumos's wrappers (else ``model`` itself)."""
    while isinstance(model, Wrapper):
        model = model.model
    return model


@contextlib.contextmanager
def rows_of(model: Any, rows: Any) -> Iterator[None]:
    """Tell a wrapped model which sample each row of the next batches belongs to (no-op otherwise)."""
    if isinstance(model, Wrapper) and rows is not None:
        with model.rows(rows):
            yield
    else:
        yield


# private spellings used before these were public
_per_sample = is_per_sample
_forward_args = split_forward_args
