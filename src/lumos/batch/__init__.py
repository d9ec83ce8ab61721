"""Whole data sets: every row explained, in shards, resumably, on one machine or a Ray cluster.

:func:`explain_dataset` streams the data (arrays, Parquet/CSV tables, image folders, text files,
DataLoaders, any iterable) in shards, has each shard explained by a task calling
:func:`lumos.explain` (in this process or on Ray workers), and writes each shard's result with a
manifest of checksums, so that a stopped run continues where it stopped. :func:`open` reads the
results back lazily. Ray and pyarrow are optional (``pip install 'lumos[batch]'``).
"""
from __future__ import annotations

from .job import explain_dataset
from .results import BatchResults, open
from .store import BatchFileError
from .task import row_seed

__all__ = ["explain_dataset", "open", "BatchResults", "BatchFileError", "row_seed"]
