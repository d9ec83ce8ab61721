"""Feature groups of tables: lists or mappings of columns explained together as one player.

Shared by every method that takes ``groups=`` on tabular inputs (feature ablation, LIME, ...), so
that a grouping means the same thing, is checked the same way and names its groups alike.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["column_groups"]


def column_groups(groups: Sequence | Mapping, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Column groups -> (group label of each column (d,), group names).

    ``groups`` is a list of column lists (names or indices), e.g. ``[["a", "b"], [3]]``, or a
    mapping ``name -> columns``. Groups are numbered in the order given; a column in no group
    stands alone under its own name, after them. A group's name is its key in a mapping, else
    its members' names joined by ``+``.
    """
    d = len(names)
    if isinstance(groups, Mapping):
        keys, items = [str(k) for k in groups], list(groups.values())
    elif isinstance(groups, (list, tuple)):
        keys, items = None, list(groups)
    else:
        raise TypeError(f"groups must be a list of column lists or a mapping name -> columns; "
                        f"got {type(groups).__name__}")
    labels = np.full(d, -1, dtype=np.int64)
    members: list[list[int]] = []
    for g, cols in enumerate(items):
        cols = [cols] if isinstance(cols, (str, int, np.integer)) else list(cols)
        if not cols:
            raise ValueError(f"groups: group {g} is empty")
        idx = []
        for c in cols:
            if isinstance(c, str):
                if c not in names:
                    raise ValueError(f"groups: unknown column {c!r}; the columns are {names}")
                c = names.index(c)
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < d:
                raise ValueError(f"groups: column {c!r} is not an index in 0..{d - 1}")
            if labels[c] >= 0:
                raise ValueError(f"groups: column {names[c]!r} is in two groups; groups must not "
                                 "overlap")
            labels[c] = g
            idx.append(int(c))
        members.append(idx)
    group_names = keys or ["+".join(names[c] for c in m) for m in members]
    for c in np.flatnonzero(labels < 0):
        labels[c] = len(group_names)
        group_names.append(names[c])
    return labels, group_names
