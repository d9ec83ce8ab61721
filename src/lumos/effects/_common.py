"""Shared machinery of the global effects.

- :class:`Table`: the user's data (array or DataFrame) as one 2-D numpy array plus what is needed
  to give it back to the model unchanged: column labels, dtypes, which columns are categorical.
- :func:`feature_index` / :func:`feature_indices`: look features up by name or position.
- :class:`ScalarModel`: the black box (:class:`~lumos.core.blackbox.BlackBox`) plus the target,
  mapping rows to one float each.
- :func:`eval_grid` and :func:`eval_rows`: the two batched evaluations every effect is built
  from. Both build the modified rows lazily, one chunk of ``batch_size`` rows at a time, and make
  one model call per chunk: never one call per grid point or per row.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..core.blackbox import BlackBox
from ..core.execution import chunks
from ..core.execution import rng as make_rng
from ..core.validation import check_number

__all__ = [
    "Table", "as_table", "feature_index", "feature_indices", "ScalarModel", "eval_grid", "eval_grids",
    "eval_rows", "subsample", "check_sample_weight", "DEFAULT_ROWS_PER_CALL",
]

# Rows per model call. Tabular models are cheap per row and pay a fixed cost per call, so
# chunks are much larger than the torch default of lumos.core.execution.
DEFAULT_ROWS_PER_CALL = 8192


def check_sample_weight(sample_weight: Any, n: int) -> np.ndarray | None:
    """Row weights as float64 (n,): finite, non-negative, not all zero; None stays None."""
    if sample_weight is None:
        return None
    w = sample_weight
    w = w.to_numpy() if hasattr(w, "to_numpy") else (w.detach().cpu().numpy() if hasattr(w, "detach") else w)
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("sample_weight must be numbers, one per row of X") from None
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have one weight per row of X, shape ({n},); got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if not w.sum() > 0:
        raise ValueError("sample_weight: the weights sum to zero")
    return w


def _is_frame(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "dtypes") and hasattr(X, "iloc")


@dataclass
class Table:
    """The data the effects are computed on.

    Attributes
    ----------
    values : ndarray, shape (n, p)
        float64 when every column is numeric, else object (strings, categories, mixed).
    names : list of str
        Column names (the DataFrame's, or ``x0, x1, ...`` for arrays).
    labels : list or None
        The DataFrame's own column labels, to rebuild frames for the model; None for arrays.
    dtypes : dict or None
        The DataFrame's dtypes, restored on every frame given to the model.
    categorical : ndarray of bool, shape (p,)
    integer : ndarray of bool, shape (p,)
        Integer-typed columns: their grids hold integers only, because the model sees the
        column cast back to its integer dtype.
    """

    values: np.ndarray
    names: list[str]
    labels: list | None
    dtypes: dict | None
    categorical: np.ndarray
    integer: np.ndarray

    @property
    def n(self) -> int:
        return self.values.shape[0]

    @property
    def p(self) -> int:
        return self.values.shape[1]

    def numeric(self, j: int) -> np.ndarray:
        """Column ``j`` as float64 (numeric columns only)."""
        return np.asarray(self.values[:, j], dtype=np.float64)

    def frame(self, values: np.ndarray):
        """``values`` (rows of this table) as the user's DataFrame: column labels and dtypes.
        Only columns whose dtype differs are cast (a per-column cast costs more than the frame)."""
        import pandas as pd

        df = pd.DataFrame(values, columns=self.labels)
        current = df.dtypes
        need = {c: d for c, d in self.dtypes.items() if current[c] != d}
        return df.astype(need) if need else df

    def take(self, rows: np.ndarray) -> "Table":
        return Table(self.values[rows], self.names, self.labels, self.dtypes, self.categorical,
                     self.integer)


def _column_is_numeric(col: np.ndarray) -> bool:
    try:
        np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return not any(isinstance(v, (bool, np.bool_, str)) for v in col[:50])


def as_table(X: Any, categorical_features: Any = None, name: str = "X") -> Table:
    """Validate ``X`` (2-D array, DataFrame or tensor) and describe its columns."""
    if _is_frame(X):
        import pandas as pd

        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"{name} must have at least one row and one column; got shape {X.shape}")
        labels = list(X.columns)
        names = [str(c) for c in labels]
        if len(set(names)) != len(names):
            raise ValueError(f"{name} has duplicate column names; effects look features up by name")
        dtypes = X.dtypes.to_dict()
        types = pd.api.types
        cat = np.array([types.is_bool_dtype(d) or not types.is_numeric_dtype(d) for d in dtypes.values()])
        integer = np.array([types.is_integer_dtype(d) and not c for d, c in zip(dtypes.values(), cat)])
        values = X.to_numpy(dtype=np.float64) if not cat.any() else X.to_numpy(dtype=object)
        table = Table(values, names, labels, dtypes, cat, integer)
    else:
        if hasattr(X, "detach"):
            X = X.detach().cpu().numpy()
        try:
            arr = np.asarray(X)
        except Exception as exc:  # ragged lists
            raise TypeError(f"{name} must be a 2-D array or a pandas DataFrame") from exc
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (rows, features); got an array of shape {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"{name} must have at least one row and one column; got shape {arr.shape}")
        if arr.dtype.kind in "biuf":
            integer = np.zeros(arr.shape[1], bool)
            cat = np.full(arr.shape[1], arr.dtype.kind == "b")
            values = arr.astype(object) if arr.dtype.kind == "b" else arr.astype(np.float64)
        else:
            values = arr.astype(object)
            cat = np.array([not _column_is_numeric(values[:, j]) for j in range(arr.shape[1])])
            integer = np.zeros(arr.shape[1], bool)
            if not cat.any():
                values = values.astype(np.float64)
        table = Table(values, [f"x{j}" for j in range(arr.shape[1])], None, None, cat, integer)
    if categorical_features is not None:
        mark = np.asarray(categorical_features)
        if mark.dtype == bool:
            if mark.shape != (table.p,):
                raise ValueError(
                    f"categorical_features as a mask must have one entry per column ({table.p}); "
                    f"got shape {mark.shape}"
                )
            idx = np.flatnonzero(mark)
        else:
            idx = feature_indices(table, list(np.atleast_1d(categorical_features)), "categorical_features")
        table.categorical = table.categorical.copy()
        table.categorical[idx] = True
        table.integer = table.integer & ~table.categorical
    numeric = ~table.categorical
    if numeric.any():
        vals = np.asarray(table.values[:, numeric], dtype=np.float64)
        if np.isinf(vals).any():
            raise ValueError(f"{name} contains infinite values")
    return table


def feature_index(table: Table, feature: Any, name: str = "features") -> int:
    """Column index of ``feature`` (a name or a position)."""
    if isinstance(feature, (bool, np.bool_)):
        raise ValueError(f"{name}: a feature is a column name or index, not a bool")
    if isinstance(feature, (int, np.integer)):
        j = int(feature)
        if not -table.p <= j < table.p:
            raise ValueError(f"{name}: feature index {j} out of range for {table.p} columns")
        return j % table.p
    key = str(feature)
    if key in table.names:
        return table.names.index(key)
    if table.labels is not None and feature in table.labels:
        return table.labels.index(feature)
    close = difflib.get_close_matches(key, table.names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    shown = ", ".join(map(repr, table.names[:20])) + (" ..." if table.p > 20 else "")
    raise ValueError(f"{name}: unknown feature {feature!r}.{hint} Columns: {shown}")


def feature_indices(table: Table, features: Sequence[Any], name: str = "features") -> list[int]:
    idx = [feature_index(table, f, name) for f in features]
    if len(set(idx)) != len(idx):
        raise ValueError(f"{name}: a feature is named twice in {list(features)!r}")
    return idx


def subsample(n: int, max_rows: int | None, seed: Any, name: str = "max_rows") -> np.ndarray | None:
    """Sorted row indices of a sample of ``max_rows`` rows (None: all rows)."""
    if max_rows is None:
        return None
    m = check_number(max_rows, name, low=1, integer=True)
    if m >= n:
        return None
    return np.sort(make_rng(seed).choice(n, size=m, replace=False))


class ScalarModel:
    """The model as ``rows -> one float per row``: a :class:`BlackBox` and a target.

    The target is resolved on the first model output: ``None`` takes a scalar output as is and
    the second column of a two-column output (the positive class of a binary classifier); an
    output with more columns needs an explicit ``target`` (an int column index, a class label of
    a scikit-learn classifier, or a callable ``output -> (rows,)``).
    """

    def __init__(self, model: Any, table: Table, target: Any = None, output: str = "auto",
                 batch_size: int | None = None, for_metric: bool = False):
        if isinstance(target, str) and target == "predicted":
            raise ValueError(
                "target='predicted' is not defined for global effects (the predicted class changes "
                "as a feature is moved); give a class index, a class label or a callable"
            )
        if target is not None and not callable(target) and not isinstance(target, (int, np.integer, str)):
            raise ValueError(
                "target must be None, an int output column, a class label or a callable "
                f"output -> (rows,); got {type(target).__name__}"
            )
        if isinstance(target, (bool, np.bool_)):
            raise ValueError("target must be an int output column, not a bool")
        self.batch_size = (DEFAULT_ROWS_PER_CALL if batch_size is None
                           else check_number(batch_size, "batch_size", low=1, integer=True))
        # metrics may score labels (accuracy of predict): only they let non-numeric outputs through
        self.bb = BlackBox(model, columns=table.labels, dtypes=table.dtypes, output=output,
                           batch_size=self.batch_size, numeric=not for_metric)
        self.target = target
        self.table = table
        # For metrics: labels pass through, and without a target a multi-class output is kept
        # whole (log-loss and friends need every column).
        self.for_metric = for_metric
        self._select = None
        self.description = ""
        self.n_calls = 0

    @property
    def n_evals(self) -> int:
        return self.bb.n_evals

    @property
    def output_name(self) -> str:
        return self.bb.score_name

    def raw(self, rows: np.ndarray) -> np.ndarray:
        """The model's own output for ``rows`` (one call per chunk)."""
        self.n_calls += 1
        # The black box would rebuild the frame too; building it here casts only what needs it.
        return self.bb(self.table.frame(rows) if self.table.labels is not None else rows)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        out = self.raw(rows)
        if self._select is None:
            self._select = self._resolve(out)
        return self._select(out)

    def _resolve(self, out: np.ndarray):
        target = self.target
        classes = getattr(self.bb.model, "classes_", None)
        k = 1 if out.ndim == 1 else int(np.prod(out.shape[1:]))
        if callable(target):
            fname = getattr(target, "__name__", "callable")
            self.description = f"{fname}(output)"

            def select_callable(o):
                v = target(o)
                v = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
                if v.shape not in ((len(o),), (len(o), 1)):
                    raise ValueError(
                        f"target callable must return one scalar per row, shape ({len(o)},); got {v.shape}"
                    )
                return v.reshape(len(o)).astype(np.float64)

            return select_callable
        if isinstance(target, str):
            if classes is None or target not in list(classes):
                raise ValueError(
                    f"target {target!r} is not a class label of the model"
                    + (f" (classes: {list(classes)})" if classes is not None else
                       "; a string target needs a classifier with classes_")
                )
            target = list(classes).index(target)
        if out.ndim > 2:
            raise ValueError(
                f"target: the model output has shape {out.shape[1:]} per row; give a callable that "
                "maps the output to one scalar per row"
            )
        if out.dtype.kind not in "biuf" and self.for_metric and k == 1 and target in (None, 0):
            self.description = f"{self.output_name} (labels)"
            return lambda o: o.reshape(len(o))
        if out.dtype.kind not in "biuf":
            raise ValueError(
                f"the model's {self.output_name} returned non-numeric values ({out.dtype}); effects "
                "need numeric scores (use output='predict_proba' or 'decision_function')"
            )
        if k == 1:
            if target not in (None, 0):
                raise ValueError(f"target: the model has a single output; use target=None or 0, not {target!r}")
            self.description = self.output_name
            return lambda o: o.reshape(len(o)).astype(np.float64)
        if target is None and k > 2 and self.for_metric:
            self.description = f"{self.output_name} (all {k} columns)"
            return lambda o: o.reshape(len(o), k).astype(np.float64)
        if target is None:
            if k != 2:
                names = f" (classes: {list(classes)})" if classes is not None else ""
                raise ValueError(
                    f"target: the model has {k} outputs{names}; global effects explain one of them: "
                    "give target=<column index>, a class label or a callable"
                )
            target = 1
            label = f" = {_plain(classes[1])!r}" if classes is not None and len(classes) == 2 else ""
            self.description = f"{self.output_name}[:, 1] (positive class{label})"
        else:
            t = int(target)
            if not 0 <= t < k:
                raise ValueError(f"target out of range: the model has {k} outputs (valid 0..{k - 1}); got {t}")
            target = t
            label = f" = {_plain(classes[t])!r}" if classes is not None and len(classes) == k else ""
            self.description = f"{self.output_name}[:, {t}] (class{label})" if classes is not None \
                else f"{self.output_name}[:, {t}]"
        col = int(target)
        return lambda o: o[:, col].astype(np.float64)


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def eval_grid(f: ScalarModel, base: np.ndarray, cols: Sequence[int], points: np.ndarray,
              progress: bool | None = None, desc: str = "") -> np.ndarray:
    """``out[i, g] = f(base[i] with columns cols set to points[g])``.

    Parameters
    ----------
    base : ndarray, shape (n, p)
    cols : sequence of int, length k
    points : ndarray, shape (G, k)

    Returns
    -------
    ndarray, shape (n, G)
    """
    return eval_grids(f, base, [(cols, points)], progress=progress, desc=desc)[0]


def eval_grids(f: ScalarModel, base: np.ndarray, jobs: Sequence[tuple[Sequence[int], np.ndarray]],
               progress: bool | None = None, desc: str = "") -> list[np.ndarray]:
    """Several :func:`eval_grid` jobs ``(cols, points)`` streamed through the model together, so
    small jobs share large chunks (one model call per chunk of ``batch_size`` rows)."""
    n = len(base)
    sizes = [n * len(points) for _, points in jobs]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    total = int(starts[-1])
    out = np.empty(total, dtype=np.float64)
    for sl in chunks(total, f.batch_size, desc=desc, progress=progress, unit="rows"):
        parts = []
        for k, (cols, points) in enumerate(jobs):
            lo, hi = max(sl.start, starts[k]), min(sl.stop, starts[k + 1])
            if lo >= hi:
                continue
            i, g = np.divmod(np.arange(lo - starts[k], hi - starts[k]), len(points))
            rows = base[i]  # fancy indexing copies: the user's data is never touched
            rows[:, list(cols)] = points[g]
            parts.append(rows)
        out[sl] = f(parts[0] if len(parts) == 1 else np.concatenate(parts))
    return [out[starts[k]:starts[k + 1]].reshape(n, -1) for k in range(len(jobs))]


def eval_rows(f: ScalarModel, base: np.ndarray, rows_idx: np.ndarray, cols: Sequence[int],
              values: np.ndarray, progress: bool | None = None, desc: str = "") -> np.ndarray:
    """``out[k] = f(base[rows_idx[k]] with columns cols set to values[k])``.

    Parameters
    ----------
    rows_idx : ndarray of int, shape (m,)
    values : ndarray, shape (m, len(cols))

    Returns
    -------
    ndarray, shape (m,)
    """
    m = len(rows_idx)
    cols = list(cols)
    out = np.empty(m, dtype=np.float64)
    for sl in chunks(m, f.batch_size, desc=desc, progress=progress, unit="rows"):
        rows = base[rows_idx[sl]]
        rows[:, cols] = values[sl]
        out[sl] = f(rows)
    return out
