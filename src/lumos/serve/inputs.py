"""Reading what a user uploads into ``lumos serve``: an image, a table row as CSV, or a text.

Every problem is an :class:`InputError` (a ``ValueError``) whose message says what is wrong in words
a user can act on (the limit, the row and column); the app shows it in the page. Nothing here
unpickles anything: images are decoded by Pillow, CSV by the ``csv`` module.
"""
from __future__ import annotations

import csv
import io
from typing import Any

__all__ = ["InputError", "read_image", "read_csv_row", "read_text", "MAX_TEXT_CHARS", "MAX_CSV_CHARS"]

MAX_TEXT_CHARS = 5000
MAX_CSV_CHARS = 100_000
MAX_CSV_COLUMNS = 1000


class InputError(ValueError):
    """An upload the app cannot explain; the message is shown to the user."""


def read_image(data: bytes, filename: str, *, max_pixels: int, size: tuple[int, int] | None = None,
               channels: int = 3):
    """An uploaded image as a float32 tensor ``(1, channels, H, W)`` in ``[0, 1]``.

    The dimensions are checked against ``max_pixels`` from the file's header, before the pixels
    are decoded (a small file can hold a huge image). ``size``: resized to (H, W) (bilinear).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("image: the uploaded file is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(f"image: {filename!r} is not an image Pillow can read ({type(err).__name__})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise InputError(f"image too large: {w} x {h} = {w * h} pixels (limit {max_pixels} pixels)")
    try:
        with _pillow_limit(max_pixels):
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and (h, w) != tuple(size):
                im = im.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"image: {filename!r} could not be decoded ({err})") from None
    import numpy as np
    import torch

    arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr)
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t[None].contiguous()


class _pillow_limit:
    """Pillow's own decompression-bomb limit set to ``max_pixels`` for the block (restored after)."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __enter__(self):
        from PIL import Image

        self._before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(self.max_pixels, 1)
        return self

    def __exit__(self, *exc):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._before


def _number(text: str, column: str, row: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"CSV: row {row}, column {column!r}: expected a number; got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InputError(f"CSV: row {row}, column {column!r}: expected a finite number; got {text!r}")
    return value


def read_csv_row(text: str, *, feature_names: list[str] | None, numeric_only: bool,
                 background: Any = None):
    """One table row from CSV text: a header line and one data row.

    Parameters
    ----------
    text : str
    feature_names : list of str, optional
        The model's columns. The header must name each exactly once (any order; the row is put
        in the model's order). Without names, the header's names are used as they are.
    numeric_only : bool
        Every value must be a number (a torch model); else a column whose background values are
        strings keeps its strings and the others must be numbers (a DataFrame model).
    background : DataFrame, optional
        The model's reference rows: which columns hold strings.

    Returns
    -------
    (row, names)
        ``row``: a float32 tensor ``(1, F)`` when ``numeric_only``, else a one-row DataFrame.
    """
    if not text or not text.strip():
        raise InputError("CSV: empty; give a header line with the column names and one row of values")
    if len(text) > MAX_CSV_CHARS:
        raise InputError(f"CSV: {len(text)} characters (limit {MAX_CSV_CHARS})")
    try:
        csv.field_size_limit(MAX_CSV_CHARS)
        rows = [r for r in csv.reader(io.StringIO(text.strip()), strict=True) if any(c.strip() for c in r)]
    except csv.Error as err:
        raise InputError(f"CSV: cannot be parsed ({err})") from None
    if len(rows) < 2:
        raise InputError("CSV: a header line and one row of values are needed; got "
                         f"{len(rows)} line{'s' if len(rows) != 1 else ''}")
    if len(rows) > 2:
        raise InputError(f"CSV: one row of values under the header is explained at a time; got {len(rows) - 1} rows")
    header = [h.strip() for h in rows[0]]
    values = [v.strip() for v in rows[1]]
    if len(header) > MAX_CSV_COLUMNS:
        raise InputError(f"CSV: {len(header)} columns (limit {MAX_CSV_COLUMNS})")
    if len(values) != len(header):
        raise InputError(f"CSV: row 2 has {len(values)} values but the header has {len(header)} columns")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(f"CSV: column names repeated in the header: {dupes}")
    if any(not h for h in header):
        raise InputError("CSV: the header has an empty column name")
    if feature_names is not None:
        missing = [f for f in feature_names if f not in header]
        extra = [h for h in header if h not in feature_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column{'s' if len(missing) > 1 else ''} {missing}")
            if extra:
                parts.append(f"unknown column{'s' if len(extra) > 1 else ''} {extra}")
            raise InputError(f"CSV: {'; '.join(parts)}; the model's columns are {feature_names}")
        order = [header.index(f) for f in feature_names]
        header, values = [header[i] for i in order], [values[i] for i in order]
    for h, v in zip(header, values):
        if v == "":
            raise InputError(f"CSV: row 2, column {h!r}: empty value")
    if numeric_only:
        import torch

        nums = [_number(v, h, 2) for h, v in zip(header, values)]
        return torch.tensor([nums], dtype=torch.float32), header
    import pandas as pd

    data = {}
    from pandas.api.types import is_numeric_dtype

    for h, v in zip(header, values):
        strings = background is not None and h in getattr(background, "columns", ()) and \
            not is_numeric_dtype(background[h].dtype)
        if strings:
            known = set(map(str, background[h].unique()))
            if v not in known:
                raise InputError(f"CSV: row 2, column {h!r}: {v!r} is not one of the values the model "
                                 f"knows: {sorted(known)}")
            data[h] = [v]
        else:
            data[h] = [_number(v, h, 2)]
    frame = pd.DataFrame(data)
    if background is not None:  # the background's dtypes where the value fits them (ints stay ints)
        for h in frame.columns:
            kind = background[h].dtype.kind if h in background.columns else "O"
            if not is_numeric_dtype(frame[h].dtype):
                continue
            if kind == "f" or (kind in "iu" and float(frame[h].iloc[0]).is_integer()):
                frame[h] = frame[h].astype(background[h].dtype)
    return frame, header


def read_text(text: str) -> str:
    """A text to explain: not empty, at most :data:`MAX_TEXT_CHARS` characters."""
    if text is None or not text.strip():
        raise InputError("text: empty; type a sentence to explain")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"text: {len(text)} characters (limit {MAX_TEXT_CHARS})")
    return text.strip()
