"""Feature groups of tables: columns explained together as one player.

Shared by every method that takes ``groups=`` on tabular inputs (the Shapley estimators, LIME,
feature ablation, permutation importance), so that a grouping means the same thing, is checked the
same way and names its groups alike.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["column_groups", "group_members"]


def column_groups(groups: Any, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Read ``groups=`` for a table of columns ``names``: ``(label of each column (d,), group names)``.

    ``groups`` is a dict ``{group name: [columns]}``, a list of column groups (each a list of
    column names or indices; the group is named by its columns joined with "+"), or one group id
    per column (a sequence of ``len(names)`` ints or strings). Groups are numbered in the order
    given; columns in no group are groups of their own, after them, under their own names. A
    column in two groups is an error.
    """
    names = [str(n) for n in names]
    d = len(names)

    def col(c) -> int:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= c < d:
                raise ValueError(f"groups: column index {c} out of range 0..{d - 1}")
            return int(c)
        if str(c) in names:
            return names.index(str(c))
        raise ValueError(f"groups: unknown column {c!r}; columns are {names}")

    if isinstance(groups, dict):
        items = [(str(k), v) for k, v in groups.items()]
    elif isinstance(groups, (list, tuple, np.ndarray)) and len(groups) and all(
            isinstance(g, (list, tuple, np.ndarray, set)) for g in groups):
        items = [(None, g) for g in groups]
    elif isinstance(groups, (list, tuple, np.ndarray)) and len(groups) == d:
        ids = list(groups)
        order = list(dict.fromkeys(ids))
        items = [(str(g), [j for j in range(d) if ids[j] == g]) for g in order]
    else:
        raise ValueError(
            "groups must be a dict {name: columns}, a list of column groups (lists of names or "
            f"indices) or one group id per column ({d} ids); got {groups!r}")
    labels = np.full(d, -1, dtype=np.int64)
    gnames: list[str] = []
    for name, g in items:
        if isinstance(g, (str, int, np.integer)):
            g = [g]
        idx = sorted({col(c) for c in g})
        if not idx:
            raise ValueError(f"groups: group {name or len(gnames)} has no columns")
        for j in idx:
            if labels[j] >= 0:
                raise ValueError(f"groups: column {names[j]!r} is in two groups; groups must not overlap")
            labels[j] = len(gnames)
        gnames.append(name if name is not None else "+".join(names[j] for j in idx))
    for j in np.flatnonzero(labels < 0):  # columns in no group play alone
        labels[j] = len(gnames)
        gnames.append(names[j])
    if len(set(gnames)) != len(gnames):
        raise ValueError(f"groups: group names must differ; got {gnames}")
    return labels, gnames


def group_members(labels: np.ndarray, names: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """``(columns of each group, group names)`` from :func:`column_groups`' labels."""
    return [np.flatnonzero(labels == g) for g in range(len(names))], names
