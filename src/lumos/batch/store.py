"""The files of a whole-data-set job: result shards, their checksums and the manifest.

An output folder holds ``manifest.json`` and one file per finished shard,
``shard-00000.parquet`` (tables of attributions: one row per explained row, one column per
feature; token results as lists) or ``shard-00000.npz`` (tensors: images, sequences). Every file
is written to a temporary name in the same folder and renamed into place (atomic on POSIX), so a
reader or a resumed run sees either the whole file or none of it. The manifest lists the finished
shards with their row ranges and SHA-256; a shard file whose bytes do not match is redone.

Shard files are deterministic: the same explanation gives the same bytes (``.npz`` members carry
a fixed date; Parquet holds no time stamps), so an interrupted and resumed run can be compared
with an uninterrupted one byte for byte.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_write, sha256_file

__all__ = ["FORMAT", "MANIFEST", "atomic_write", "sha256_file", "write_shard", "read_shard",
           "read_manifest", "write_manifest", "shard_name", "read_metric", "BatchFileError"]

FORMAT = "lumos.batch/1"
MANIFEST = "manifest.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BatchFileError(ValueError):
    """An output folder whose manifest or shard files are malformed."""


def shard_name(index: int, storage: str) -> str:
    return f"shard-{index:05d}.{'parquet' if storage == 'parquet' else 'npz'}"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A ``.npz`` (readable by ``np.load``) with fixed member dates: same arrays, same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def storage_for(expl) -> str:
    """``"parquet"`` for tables (values ``(n, features)``) and token results, else ``"npz"``."""
    if expl.several:
        return "npz"
    if "tokens" in expl.meta and "attention_mask" in expl.meta:
        return "parquet"
    return "parquet" if np.ndim(expl.values) == 2 else "npz"


def _columns(expl) -> list[str]:
    width = np.shape(expl.values)[1]
    names = expl.feature_names if expl.feature_names is not None else [f"f{j}" for j in range(width)]
    return [str(n) for n in names]


def shard_bytes(expl, start: int, storage: str, metrics: dict | None = None) -> bytes:
    """The file content of one shard: the explanation of rows ``start .. start + len(expl)``, and
    the per-row scores of ``metrics`` (``{name: (n,)}``: ``metric:<name>`` columns in Parquet,
    ``metric__<name>`` arrays in ``.npz``)."""
    n = len(expl)
    metrics = {k: np.asarray(v, dtype=np.float64) for k, v in sorted((metrics or {}).items())}
    rows = np.arange(start, start + n, dtype=np.int64)
    extras = {k: getattr(expl, k) for k in ("output", "baseline_output", "target")}
    extras = {k: np.asarray(v) for k, v in extras.items() if v is not None and np.ndim(v) == 1 and len(v) == n}
    if storage == "npz":
        arrays = {"row": rows, **extras}
        if expl.several:
            for name, part in zip(expl.input_names, (expl.values.values() if isinstance(expl.values, dict)
                                                     else expl.values)):
                arrays[f"values__{name}"] = np.asarray(part)
        else:
            arrays["values"] = np.asarray(expl.values)
        for k, v in metrics.items():
            arrays[f"metric__{k}"] = v
        return _npz_bytes(arrays)
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, Any] = {"row": pa.array(rows)}
    meta = {"lumos": FORMAT}
    if "tokens" in expl.meta and "attention_mask" in expl.meta:
        lengths = np.asarray(expl.meta["attention_mask"]).sum(axis=1).astype(int)
        tokens = expl.meta["tokens"]
        values = np.asarray(expl.values)
        cols["tokens"] = pa.array([[str(t) for t in tokens[i][:lengths[i]]] for i in range(n)],
                                  type=pa.list_(pa.string()))
        cols["values"] = pa.array([values[i, :lengths[i]].tolist() for i in range(n)],
                                  type=pa.list_(pa.from_numpy_dtype(values.dtype)))
        meta["layout"] = "tokens"
    else:
        values = np.asarray(expl.values)
        names = _columns(expl)
        for j, name in enumerate(names):
            cols["value:" + name] = pa.array(values[:, j])
        meta["layout"] = "features"
        meta["features"] = json.dumps(names)
    for k, v in extras.items():
        cols[k] = pa.array(v)
    for k, v in metrics.items():
        cols["metric:" + k] = pa.array(v)
    table = pa.table(cols).replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_shard(folder: Path, index: int, start: int, expl, storage: str | None = None,
                metrics: dict | None = None) -> tuple[str, str]:
    """Write the shard file atomically; returns ``(file name, sha256)``."""
    storage = storage or storage_for(expl)
    data = shard_bytes(expl, start, storage, metrics)
    name = shard_name(index, storage)
    atomic_write(Path(folder) / name, data)
    return name, hashlib.sha256(data).hexdigest()


def read_shard(path: Path) -> dict[str, Any]:
    """A shard file as ``{"row": ..., "values": ..., "output": ..., "features": [...]}`` (arrays)."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
        parts = sorted(k for k in out if k.startswith("values__"))
        if parts:
            out["values"] = {k[len("values__"):]: out.pop(k) for k in parts}
        scored = sorted(k for k in out if k.startswith("metric__"))
        if scored:
            out["metrics"] = {k[len("metric__"):]: out.pop(k) for k in scored}
        return out
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    out: dict[str, Any] = {"row": table.column("row").to_numpy()}
    if meta.get("layout") == "tokens":
        out["tokens"] = table.column("tokens").to_pylist()
        out["values"] = [np.asarray(v) for v in table.column("values").to_pylist()]
    else:
        names = json.loads(meta["features"])
        out["features"] = names
        out["values"] = np.stack([table.column("value:" + n).to_numpy() for n in names], axis=1) \
            if names else np.zeros((table.num_rows, 0))
    for k in ("output", "baseline_output", "target"):
        if k in table.column_names:
            out[k] = table.column(k).to_numpy()
    scored = [c for c in table.column_names if c.startswith("metric:")]
    if scored:
        out["metrics"] = {c[len("metric:"):]: table.column(c).to_numpy() for c in scored}
    return out


def read_metric(path: Path, name: str) -> np.ndarray:
    """One metric's scores in a shard file, reading that column (Parquet) or member (``.npz``) only."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return data[f"metric__{name}"]
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=["metric:" + name]).column(0).to_numpy()
    except (KeyError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        raise BatchFileError(f"{path}: holds no scores of metric {name!r}") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    doc = dict(manifest)
    doc["shards"] = sorted(doc["shards"], key=lambda s: s["index"])
    atomic_write(Path(folder) / MANIFEST, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder``, or ``None`` when there is none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BatchFileError(f"{path}: not valid JSON ({err}); remove the folder or choose another out") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("shards"), list):
        raise BatchFileError(f"{path}: not a lumos batch manifest (expected format {FORMAT!r})")
    return doc
