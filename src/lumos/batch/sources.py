"""Where the rows of a whole-data-set job come from, streamed shard by shard.

:func:`as_source` turns what the user has into a :class:`Source` whose :meth:`Source.shards`
yields ``(index, start, rows)`` with ``shard_size`` rows each (the last may be shorter), reading
the data lazily: a Parquet file by row groups, a CSV file by blocks (pyarrow), a folder of
images one file at a time (Pillow), a text file line by line, an iterable or a torch
``DataLoader`` item by item. Only an in-memory array or DataFrame is ever whole, and it was whole
before lumos saw it. Each shard's rows get a SHA-256 fingerprint (:func:`rows_digest`), recorded
in the manifest, so that a resumed run can tell that the data did not change.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..core.io import IMAGE_SUFFIXES

__all__ = ["Source", "as_source", "rows_digest", "TEXT_SUFFIXES", "TABLE_SUFFIXES"]

TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".parquet", ".pq", ".csv")


def rows_digest(rows: Any) -> str:
    """SHA-256 of a shard's rows (array, DataFrame or list of strings): equal rows, equal digest."""
    h = hashlib.sha256()
    if hasattr(rows, "columns") and hasattr(rows, "dtypes"):  # DataFrame
        import pandas as pd

        h.update(repr([(str(c), str(t)) for c, t in rows.dtypes.items()]).encode())
        h.update(np.ascontiguousarray(pd.util.hash_pandas_object(rows, index=False).to_numpy()).tobytes())
    elif isinstance(rows, list):  # texts
        for s in rows:
            b = str(s).encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    else:
        a = np.ascontiguousarray(_numpy(rows))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Source:
    """Rows to explain, read lazily.

    Attributes
    ----------
    kind : str
        ``"array"``, ``"table"``, ``"images"``, ``"texts"`` or ``"iterable"``.
    name : str
        What the data is (a path, or a type), for the manifest and messages.
    n_rows : int or None
        The number of rows where known before reading (arrays, Parquet, image folders).
    """

    def __init__(self, kind: str, name: str, rows_iter, n_rows: int | None = None, chunked=None):
        self.kind, self.name, self.n_rows = kind, name, n_rows
        self._rows_iter = rows_iter  # () -> iterator of single rows
        self._chunked = chunked  # (shard_size) -> iterator of row blocks, for sources read in blocks

    def shards(self, shard_size: int) -> Iterator[tuple[int, int, Any]]:
        """Yield ``(index, start, rows)``: consecutive blocks of ``shard_size`` rows."""
        start = 0
        blocks = self._chunked(shard_size) if self._chunked is not None else _group(self._rows_iter(), shard_size)
        for index, rows in enumerate(blocks):
            yield index, start, rows
            start += len(rows)


def _group(rows: Iterable, size: int) -> Iterator[Any]:
    """Stack single rows into blocks of ``size`` (strings stay a list)."""
    buf: list = []
    for row in rows:
        buf.append(row)
        if len(buf) == size:
            yield _stack(buf)
            buf = []
    if buf:
        yield _stack(buf)


def _stack(rows: list) -> Any:
    if all(isinstance(r, str) for r in rows):
        return list(rows)
    try:
        return np.stack([_numpy(r) for r in rows])
    except ValueError as err:
        raise ValueError(f"data: every row must have the same shape to form a shard ({err})") from None


def _rechunk(blocks: Iterable, size: int) -> Iterator[Any]:
    """Blocks of any length (arrays, DataFrames) re-cut into blocks of exactly ``size`` rows."""
    import pandas as pd

    buf: list = []
    held = 0
    for block in blocks:
        if len(block) == 0:
            continue
        buf.append(block)
        held += len(block)
        while held >= size:
            whole = pd.concat(buf, ignore_index=True) if hasattr(buf[0], "columns") else np.concatenate(buf)
            yield whole[:size] if not hasattr(whole, "iloc") else whole.iloc[:size].reset_index(drop=True)
            rest = whole[size:] if not hasattr(whole, "iloc") else whole.iloc[size:].reset_index(drop=True)
            buf, held = ([rest] if len(rest) else []), len(rest)
    if buf:
        whole = pd.concat(buf, ignore_index=True) if hasattr(buf[0], "columns") else np.concatenate(buf)
        yield whole


def _need_pyarrow(what: str):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs pyarrow: pip install 'lumos[batch]'") from None


def _table_source(path: Path) -> Source:
    _need_pyarrow(f"data {str(path)!r} (a {path.suffix} table)")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        n_rows = pq.ParquetFile(path).metadata.num_rows

        def chunked(size):
            pf = pq.ParquetFile(path)
            return _rechunk((b.to_pandas() for b in pf.iter_batches(batch_size=size)), size)

        return Source("table", str(path), None, n_rows, chunked)
    import pyarrow.csv as pcsv

    def chunked(size):
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 20))
        return _rechunk((b.to_pandas() for b in reader), size)

    return Source("table", str(path), None, None, chunked)


def _image_source(folder: Path, image_size) -> Source:
    from ..core.io import load_input

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"data: folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def rows():
        for f in files:
            yield load_input(f, image_size, name="data")[0].numpy()

    src = Source("images", str(folder), rows, len(files))
    src.files = [f.name for f in files]
    return src


def _text_source(path: Path) -> Source:
    def rows():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.rstrip("\n").rstrip("\r")
                if line:
                    yield line

    return Source("texts", str(path), rows, None)


def as_source(data: Any, image_size=None) -> Source:
    """A :class:`Source` for ``data``.

    Parameters
    ----------
    data : ndarray, Tensor, DataFrame, str or Path, DataLoader or iterable
        An array/tensor/DataFrame (rows along the first axis); a path to a ``.npy`` array (memory
        mapped), a ``.parquet``/``.csv`` table, a ``.txt`` file (one text per non-empty line) or
        a folder of images; a torch ``DataLoader`` (its batches, the first element of a
        ``(inputs, labels)`` batch); any other iterable of rows (arrays or strings).
    image_size : (H, W), optional
        Resize the images of a folder (bilinear).

    Raises
    ------
    ValueError, FileNotFoundError, TypeError
        Naming ``data`` and what was expected.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"data {str(data)!r} does not exist")
        if path.is_dir():
            return _image_source(path, image_size)
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"data {str(data)!r} is not a plain .npy array ({err})") from None
            return _array_source(arr, str(path))
        if suffix in TABLE_SUFFIXES:
            return _table_source(path)
        if suffix in TEXT_SUFFIXES:
            return _text_source(path)
        raise ValueError(f"data {str(data)!r}: expected a .npy array, a .parquet/.csv table, a .txt file "
                         f"of lines or a folder of images")
    if isinstance(data, np.ndarray) or hasattr(data, "detach"):
        return _array_source(_numpy(data), type(data).__name__)
    if hasattr(data, "columns") and hasattr(data, "iloc"):
        frame = data.reset_index(drop=True)

        def chunked(size):
            for s in range(0, len(frame), size):
                yield frame.iloc[s:s + size].reset_index(drop=True)

        return Source("table", "DataFrame", None, len(frame), chunked)
    if isinstance(data, (list, tuple)) and data and all(isinstance(s, str) for s in data):
        texts = list(data)
        return Source("texts", "list of texts", lambda: iter(texts), len(texts))
    if type(data).__name__ == "DataLoader" or hasattr(data, "batch_size") and hasattr(data, "dataset"):
        loader = data

        def chunked(size):
            def batches():
                for batch in loader:
                    if isinstance(batch, (tuple, list)):
                        batch = batch[0]
                    if isinstance(batch, dict):
                        raise TypeError("data: a DataLoader of dicts is not supported; yield tensors "
                                        "or (inputs, labels) pairs")
                    yield _numpy(batch)
            return _rechunk(batches(), size)

        return Source("iterable", "DataLoader", None, None, chunked)
    if isinstance(data, Iterable):
        it = data
        used = []

        def rows():
            if used:  # a generator is spent after one pass: say so instead of silently giving nothing
                raise ValueError("data: this iterable was already consumed; pass a fresh one")
            used.append(True)
            return iter(it)

        return Source("iterable", type(data).__name__, rows, None)
    raise TypeError(f"data must be an array, a DataFrame, a path (.npy, .parquet, .csv, .txt or a folder "
                    f"of images), a DataLoader or an iterable of rows; got {type(data).__name__}")


def _array_source(arr: np.ndarray, name: str) -> Source:
    if arr.ndim == 0:
        raise ValueError(f"data: an array needs a row axis; got a scalar ({name})")

    def chunked(size):
        for s in range(0, len(arr), size):
            yield np.array(arr[s:s + size])  # a copy: a memory-mapped file is read one shard at a time

    return Source("array", name, None, len(arr), chunked)
