"""The argument checks every demo world's generator shares (``n``, ``split``, ``seed``)."""
from __future__ import annotations

import numpy as np


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_world_arguments(n, split, seed, splits, *, positive: bool = False) -> None:
    """Raise a ValueError naming the argument when ``n``, ``split`` or ``seed`` is not usable.

    ``n`` a non-negative int (positive with ``positive=True``), ``split`` a key of ``splits``,
    ``seed`` a non-negative int.
    """
    if not _is_int(n) or n < (1 if positive else 0):
        raise ValueError(f"n must be a {'positive' if positive else 'non-negative'} int; got {n!r}")
    if split not in splits:
        raise ValueError(f"split must be {' or '.join(repr(s) for s in splits)}; got {split!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
