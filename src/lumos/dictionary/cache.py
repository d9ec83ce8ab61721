"""Activation caches: a layer's activations over a data set, on disk in shards, resumable.

:func:`cache_activations` streams a data set through a model, records one layer's output per batch
(the pass stops at the layer), flattens its positions to rows and appends them to memory-mapped
``.npy`` shards in a folder:

* a conv map ``(B, C, H, W)`` gives ``B*H*W`` rows of ``C`` numbers (row order: sample, then
  ``h * W + w``); token sequences ``(B, T, D)`` give ``B*T`` rows of ``D`` (padding dropped where the
  batch has an ``attention_mask``); a vector ``(B, D)`` gives ``B`` rows.
* ``shard_XXXXX.npy`` holds the activations, ``index_XXXXX.npy`` ``(rows, 2)`` int64: each row's
  sample number in the data set and its position (token, or ``h * W + w``).
* ``manifest.json``: the layer, a hash of the model's weights, the row width and dtype, per shard its
  row count, the sample range it covers and the SHA-256 of its data, and ``status`` (``"running"``
  or ``"done"``).

Memory is bounded by the batch size: rows are written to the open shard batch by batch. An
interrupted run (an exception, a killed process) is resumed by calling :func:`cache_activations`
again with the same arguments: finished shards are verified by their checksum and not recomputed
(their samples are skipped in the data without calling the model); the unfinished shard is redone.

:class:`ActivationCache` reads a finished cache: memory-mapped, ``cache.batches(batch_size,
seed=...)`` yields shuffled training batches across shards (one permutation of all rows per epoch).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..core.execution import check_batch_size, progress_bar, rng
from ..core.io import atomic_write, sha256_file
from ..core.torch_model import ModelGuard, as_tensor, check_finite, model_device, model_dtype
from ..core.units import ActivationModel
from ..core.validation import check_number

__all__ = ["cache_activations", "ActivationCache", "CorruptShardError", "Batch", "model_batches",
           "flatten_positions", "unflatten_positions", "model_hash"]

_FORMAT = "lumos.dictionary.cache/1"
_HEADER = 128  # bytes of every shard's .npy header (fixed, so the shape is written at the end)


class CorruptShardError(ValueError):
    """A shard's bytes do not match the checksum in the manifest."""


# ---------------------------------------------------------------------- data -> model calls
@dataclass
class Batch:
    """One batch of a data set as the model takes it: ``model(*args, **kwargs)``.

    ``n`` samples; ``mask`` the ``attention_mask`` (B, T) when there is one; ``labels`` when given.
    """

    args: tuple
    kwargs: dict
    n: int
    mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None


_LABEL_KEYS = ("labels", "label", "y", "targets")


def _tensor(x: Any, device, dtype, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        return x.to(device)
    if isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.floating):
        return torch.as_tensor(x).to(device)
    return as_tensor(x, device, name=name, dtype=dtype)


def _from_dict(d: Mapping, device, dtype, name: str, labels=None) -> Batch:
    kw = {}
    lab = labels
    for k, v in d.items():
        if k in _LABEL_KEYS:
            lab = v
            continue
        kw[k] = _tensor(v, device, dtype, f"{name}[{k!r}]") if isinstance(v, (torch.Tensor, np.ndarray)) else v
    lens = {len(v) for v in kw.values() if isinstance(v, torch.Tensor)}
    if len(lens) != 1:
        raise ValueError(f"{name}: the tensors of a batch dict must share their first axis; got lengths {sorted(lens)}")
    mask = kw.get("attention_mask")
    n = lens.pop()
    return Batch((), kw, n, mask, None if lab is None else torch.as_tensor(np.asarray(
        lab.cpu() if isinstance(lab, torch.Tensor) else lab)))


def model_batches(data: Any, batch_size: int | None, device=None, dtype=None, *, labels: Any = None,
                  name: str = "data", progress: bool | None = None, desc: str = "",
                  skip: int = 0) -> Iterator[Batch]:
    """Batches of ``data`` ready for the model (see :class:`Batch`).

    ``data``: a tensor/array of inputs (float inputs cast to the model's dtype, integer token ids
    kept), a dict of equally long tensors (a tokenizer's output; passed as keywords, its
    ``attention_mask`` drops padding, a ``labels`` key is kept aside), or an iterable of batches (a
    DataLoader) whose items are tensors, ``(inputs, labels, ...)`` tuples or dicts. ``skip``: the
    first samples not to yield (whole batches; resuming a cache), without evaluating anything.
    """
    if isinstance(data, (torch.Tensor, np.ndarray, Mapping)):  # Mapping: also a tokenizer's BatchEncoding
        total = len(data) if not isinstance(data, Mapping) else len(next(iter(data.values())))
        if total == 0:
            raise ValueError(f"{name} is empty")
        if labels is not None and len(labels) != total:
            raise ValueError(f"labels: {len(labels)} labels for {total} samples")
        first = data if not isinstance(data, Mapping) else next(iter(data.values()))
        row = first[0]
        row_bytes = row.numel() * row.element_size() if isinstance(row, torch.Tensor) else np.asarray(row).nbytes
        bs = check_batch_size(batch_size, row_bytes=max(1, row_bytes))
        with progress_bar(total, desc, progress if total > bs else False, "samples") as bar:
            bar.update(skip)
            for s in range(skip, total, bs):
                sl = slice(s, min(s + bs, total))
                lab = None if labels is None else labels[sl]
                if isinstance(data, Mapping):
                    yield _from_dict({k: v[sl] for k, v in data.items()}, device, dtype, name, lab)
                else:
                    x = _tensor(data[sl], device, dtype, name)
                    yield Batch((x,), {}, len(x), None, None if lab is None else torch.as_tensor(np.asarray(lab)))
                bar.update(sl.stop - sl.start)
        return
    if not hasattr(data, "__iter__") or isinstance(data, (str, bytes)):
        raise TypeError(f"{name} must be a tensor, an array, a dict of tensors, a DataLoader or an iterable "
                        f"of batches; got {type(data).__name__}")
    seen = 0
    for item in data:
        if seen < skip:  # resuming: count samples without touching the model
            n = (len(next(iter(item.values()))) if isinstance(item, Mapping)
                 else len(item[0]) if isinstance(item, (tuple, list)) else len(item))
            seen += n
            if seen > skip:
                raise ValueError(f"{name}: cannot resume: the batches no longer end where the finished "
                                 f"shards end (sample {skip}); iterate the data in the same batches")
            continue
        if isinstance(item, Mapping):
            b = _from_dict(item, device, dtype, name)
        elif isinstance(item, (tuple, list)):
            if not item:
                raise ValueError(f"{name}: empty batch")
            if isinstance(item[0], Mapping):
                b = _from_dict(item[0], device, dtype, name, item[1] if len(item) > 1 else None)
            else:
                x = _tensor(item[0], device, dtype, name)
                lab = item[1] if len(item) > 1 else None
                b = Batch((x,), {}, len(x), None, None if lab is None else torch.as_tensor(np.asarray(
                    lab.cpu() if isinstance(lab, torch.Tensor) else lab)))
        else:
            x = _tensor(item, device, dtype, name)
            b = Batch((x,), {}, len(x))
        seen += b.n
        yield b
    if seen == 0:
        raise ValueError(f"{name} is empty")


def flatten_positions(act: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(n, d)`` of an activation and their ``(sample, position)`` index ``(n, 2)``.

    ``(B, D)`` -> B rows; ``(B, T, D)`` -> ``B*T`` rows (those with ``mask != 0`` when a ``(B, T)``
    mask is given); ``(B, C, H, W)`` -> ``B*H*W`` rows of ``C`` (position ``h * W + w``).
    """
    if act.ndim == 2:
        b = len(act)
        idx = torch.stack([torch.arange(b), torch.zeros(b, dtype=torch.long)], 1)
        return act, idx
    if act.ndim == 4:
        b, c, h, w = act.shape
        rows = act.permute(0, 2, 3, 1).reshape(-1, c)
    elif act.ndim == 3:
        b, t, d = act.shape
        rows = act.reshape(-1, d)
    else:
        raise ValueError(f"at: activations of shape {tuple(act.shape)} are not (B, D), (B, T, D) or "
                         "(B, C, H, W)")
    per = rows.shape[0] // b
    idx = torch.stack([torch.arange(b).repeat_interleave(per), torch.arange(per).repeat(b)], 1)
    if mask is not None and act.ndim == 3:
        if tuple(mask.shape) != tuple(act.shape[:2]):
            raise ValueError(f"attention_mask of shape {tuple(mask.shape)} does not match the layer's "
                             f"(batch, tokens) {tuple(act.shape[:2])}")
        keep = mask.reshape(-1).to(rows.device) != 0
        rows, idx = rows[keep], idx[keep.cpu()]
    return rows, idx


def unflatten_positions(rows: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Inverse of :func:`flatten_positions` without a mask: rows back to the activation's ``shape``."""
    if len(shape) == 4:
        b, c, h, w = shape
        # contiguous: the layers after see the layout the layer itself returns (same float sums)
        return rows.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
    return rows.reshape(shape)


def model_hash(model: nn.Module) -> str:
    """SHA-256 of the model's class name and its state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------- shard files
def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    d = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.dtype(dtype).str, tuple(shape))
    body_len = _HEADER - 10
    if len(d) + 1 > body_len:
        raise ValueError("shape too long for the shard header")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + (d.ljust(body_len - 1) + "\n").encode()


class _ShardWriter:
    def __init__(self, path: Path, dtype: np.dtype, width: int):
        self.path, self.dtype, self.width = path, np.dtype(dtype), width
        self.f = open(path, "wb")
        self.f.write(_npy_header(self.dtype, (0, width)))
        self.sha = hashlib.sha256()
        self.rows = 0

    def write(self, a: np.ndarray) -> None:
        b = np.ascontiguousarray(a, dtype=self.dtype).tobytes()
        self.f.write(b)
        self.sha.update(b)
        self.rows += len(a)

    def close(self) -> str:
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, (self.rows, self.width)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return self.sha.hexdigest()


def _file_sha(path: Path) -> str:
    return sha256_file(path, offset=_HEADER)  # the rows; the header is rewritten at close


def _write_manifest(folder: Path, manifest: dict) -> None:
    # atomic: a crash never leaves half a manifest
    atomic_write(folder / "manifest.json", json.dumps(manifest, indent=1).encode())


# ---------------------------------------------------------------------- writing
class _on_error:
    def __init__(self, fn):
        self.fn = fn

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None:
            self.fn()
        return False


def cache_activations(model: nn.Module, data: Any, at: str, path: str | Path, *,
                      batch_size: int | None = None, shard_samples: int = 1024, labels: Any = None,
                      dtype: str = "float32", overwrite: bool = False,
                      progress: bool | None = None) -> "ActivationCache":
    """Stream layer ``at``'s activations over ``data`` into a sharded cache folder ``path``.

    Parameters
    ----------
    model : nn.Module
        Any torch model; left exactly as found (ModelGuard). The forward pass stops at the layer.
    data
        A tensor/array of inputs, a dict of tensors (tokenizer output: passed as keywords, padding
        dropped by its ``attention_mask``), or an iterable of batches (a DataLoader). See
        :func:`model_batches`.
    at : str
        The layer, by dotted name; its output is recorded.
    path : str or Path
        The cache folder (created). If it holds an unfinished cache of the same model, layer and
        settings, the run resumes; a finished one is returned as is (verified).
    batch_size : int, optional
        Samples per model call for tensor data (iterables keep their own batches).
    shard_samples : int, default 1024
        A shard is closed after the batch that brings it to at least this many samples.
    dtype : {"float32", "float16", "float64"}, default "float32"
        Storage dtype of the activations.
    overwrite : bool, default False
        Start afresh even if ``path`` holds a cache (of anything).

    Returns
    -------
    ActivationCache
    """
    from ..core.modules import get_module

    get_module(model, at)
    shard_samples = check_number(shard_samples, "shard_samples", low=1, integer=True)
    dt = np.dtype(dtype)
    if dt not in (np.float16, np.float32, np.float64):
        raise ValueError(f"dtype must be 'float16', 'float32' or 'float64'; got {dtype!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    mpath = folder / "manifest.json"
    mh = model_hash(model)
    settings = {"layer": at, "model_hash": mh, "model_class": type(model).__name__, "dtype": dt.name,
                "shard_samples": shard_samples,
                "batch_size": None if batch_size is None else check_batch_size(batch_size)}
    manifest = None
    if mpath.exists() and not overwrite:
        old = json.loads(mpath.read_text())
        same = old.get("format") == _FORMAT and all(old.get(k) == v for k, v in settings.items())
        if not same:
            diff = [k for k, v in settings.items() if old.get(k) != v]
            raise ValueError(f"path: {folder} holds a cache made with other settings ({', '.join(diff) or 'format'}); "
                             "give another path or overwrite=True")
        manifest = old
        cache = ActivationCache(folder, _manifest=manifest)
        cache.verify()  # finished shards must be intact before they are trusted
        if manifest["status"] == "done":
            return cache
    if manifest is None:
        for p in list(folder.glob("shard_*.npy")) + list(folder.glob("index_*.npy")):
            p.unlink()
        manifest = {"format": _FORMAT, **settings, "width": None, "activation_shape": None,
                    "status": "running", "shards": [], "n_rows": 0, "n_samples": 0}
        _write_manifest(folder, manifest)

    done_samples = sum(s["samples"][1] - s["samples"][0] for s in manifest["shards"])
    dev, mdt = model_device(model), model_dtype(model)
    act_model = ActivationModel(model, at)
    writer = index_writer = None
    shard_start = done_samples
    sample = done_samples

    def open_shard():
        k = len(manifest["shards"])
        return (_ShardWriter(folder / f"shard_{k:05d}.npy", dt, manifest["width"]),
                _ShardWriter(folder / f"index_{k:05d}.npy", np.int64, 2))

    def close_shard():
        nonlocal writer, index_writer, shard_start
        sha = writer.close()
        isha = index_writer.close()
        manifest["shards"].append({"file": writer.path.name, "index": index_writer.path.name,
                                   "rows": writer.rows, "samples": [shard_start, sample],
                                   "sha256": sha, "index_sha256": isha})
        manifest["n_rows"] += writer.rows
        manifest["n_samples"] = sample
        _write_manifest(folder, manifest)
        writer = index_writer = None
        shard_start = sample

    def abort():  # an interrupted shard is dropped (its file closed now: a later flush would clobber a redo)
        for w in (writer, index_writer):
            if w is not None:
                w.f.close()
                w.path.unlink(missing_ok=True)

    with ModelGuard(model), torch.no_grad(), _on_error(abort):
        for batch in model_batches(data, batch_size, dev, mdt, labels=labels, progress=progress,
                                   desc=f"cache {at}", skip=done_samples):
            act = act_model(*batch.args, **batch.kwargs)
            check_finite(act, f"the activations of layer {at!r}")
            rows, idx = flatten_positions(act, batch.mask)
            if manifest["width"] is None:
                manifest["width"] = int(rows.shape[1])
                manifest["activation_shape"] = list(act.shape[1:])
            elif rows.shape[1] != manifest["width"]:
                raise ValueError(f"data: a batch gives rows of width {rows.shape[1]}, earlier ones {manifest['width']}")
            if writer is None:
                writer, index_writer = open_shard()
            idx = idx.clone()
            idx[:, 0] += sample
            writer.write(rows.detach().cpu().numpy())
            index_writer.write(idx.numpy())
            sample += batch.n
            if sample - shard_start >= shard_samples:
                close_shard()
        if writer is not None:
            close_shard()
    manifest["status"] = "done"
    _write_manifest(folder, manifest)
    return ActivationCache(folder)


# ---------------------------------------------------------------------- reading
class ActivationCache:
    """A finished activation cache folder, read memory-mapped.

    Attributes
    ----------
    manifest : dict
    width : int
        Numbers per row (``d_in`` of an SAE trained on it).
    layer : str
    """

    def __init__(self, path: str | Path, *, _manifest: dict | None = None):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if _manifest is None:
            if not mpath.exists():
                raise FileNotFoundError(f"path: no activation cache at {self.path} (no manifest.json)")
            _manifest = json.loads(mpath.read_text())
            if _manifest.get("format") != _FORMAT:
                raise ValueError(f"path: {self.path} is not a lumos activation cache")
            if _manifest.get("status") != "done":
                raise ValueError(f"path: the cache at {self.path} is unfinished; run cache_activations "
                                 "again with the same arguments to resume it")
        self.manifest = _manifest
        self.layer = _manifest["layer"]
        self.width = _manifest["width"]
        self._maps: list | None = None

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, layer={self.layer!r}, rows={len(self)}, "
                f"width={self.width}, shards={len(self.manifest['shards'])})")

    def __len__(self) -> int:
        return int(self.manifest["n_rows"])

    def _shards(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [np.load(self.path / s["file"], mmap_mode="r") for s in self.manifest["shards"]]
            for m, s in zip(self._maps, self.manifest["shards"]):
                if m.shape != (s["rows"], self.width):
                    raise CorruptShardError(f"{s['file']}: shape {m.shape}, manifest says {(s['rows'], self.width)}")
        return self._maps

    @property
    def offsets(self) -> np.ndarray:
        """Row offset of each shard, and the total (``(n_shards + 1,)``)."""
        return np.concatenate([[0], np.cumsum([s["rows"] for s in self.manifest["shards"]])]).astype(np.int64)

    def verify(self) -> None:
        """Check every finished shard (and index) against its SHA-256; raise CorruptShardError naming it."""
        for s in self.manifest["shards"]:
            for key, sha in (("file", "sha256"), ("index", "index_sha256")):
                p = self.path / s[key]
                if not p.exists():
                    raise CorruptShardError(f"{p}: missing (listed in the manifest)")
                if _file_sha(p) != s[sha]:
                    raise CorruptShardError(f"{p}: checksum mismatch; the file was changed or damaged. "
                                            "Delete it and its manifest entry, or rebuild with overwrite=True")

    def _gather(self, maps: list[np.ndarray], indices: Any, width: int, dtype) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices: rows must be in [0, {len(self)})")
        off = self.offsets
        shard = np.searchsorted(off, idx, side="right") - 1
        out = np.empty((len(idx), width), dtype=dtype)
        for k in np.unique(shard):
            sel = shard == k
            local = idx[sel] - off[k]
            order = np.argsort(local, kind="stable")  # sorted reads from the memmap
            out[np.flatnonzero(sel)[order]] = maps[k][local[order]]
        return out

    def rows(self, indices: Any) -> np.ndarray:
        """The rows at global ``indices`` (any order), as an in-memory array ``(len, width)``."""
        return self._gather(self._shards(), indices, self.width, np.dtype(self.manifest["dtype"]))

    def index(self, indices: Any = None) -> np.ndarray:
        """``(sample, position)`` of rows ``indices`` (all rows by default), ``(n, 2)`` int64."""
        parts = [np.load(self.path / s["index"], mmap_mode="r") for s in self.manifest["shards"]]
        if indices is None:
            return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        return self._gather(parts, indices, 2, np.int64)

    def array(self) -> np.ndarray:
        """All rows in memory ``(len, width)`` (for small caches)."""
        maps = self._shards()
        return np.concatenate(maps) if maps else np.zeros((0, self.width), self.manifest["dtype"])

    def batches(self, batch_size: int, *, shuffle: bool = True, seed: int | None = 0, epochs: int = 1,
                drop_last: bool = False, device: Any = None, dtype: torch.dtype = torch.float32
                ) -> Iterator[torch.Tensor]:
        """Batches ``(batch_size, width)`` of rows as tensors: a fresh seeded permutation of all rows
        per epoch when ``shuffle`` (across shards), in order otherwise. Memory holds one batch.
        """
        bs = check_number(batch_size, "batch_size", low=1, integer=True)
        epochs = check_number(epochs, "epochs", low=1, integer=True)
        g = rng(seed)
        n = len(self)
        for _ in range(epochs):
            order = g.permutation(n) if shuffle else np.arange(n)
            for s in range(0, n, bs):
                sel = order[s:s + bs]
                if drop_last and len(sel) < bs:
                    break
                yield torch.as_tensor(self.rows(sel) if shuffle else self._slice(s, s + len(sel))).to(
                    device=device, dtype=dtype)

    def _slice(self, start: int, stop: int) -> np.ndarray:
        maps, off = self._shards(), self.offsets
        parts = []
        for k, m in enumerate(maps):
            lo, hi = max(start, off[k]), min(stop, off[k + 1])
            if lo < hi:
                parts.append(np.asarray(m[lo - off[k]:hi - off[k]]))
        return np.concatenate(parts) if parts else np.zeros((0, self.width), self.manifest["dtype"])
