"""Tabular data as the model-agnostic methods see it: one float64 matrix.

Users hand over a pandas DataFrame (numeric, string, categorical and boolean columns), a numeric
array or an object array with mixed columns. Perturbation methods need to mix rows feature by
feature (explained row here, background row there) with vectorised numpy, so every column is
*encoded* into a float64 matrix: numeric columns as they are, categorical columns as integer codes
into a list of categories. Before the model is called the matrix is *decoded* back into what the
user gave (a DataFrame with the original column names and dtypes, or an array), so scikit-learn
pipelines with column transformers and one-hot encoders work unchanged.

A model of **several inputs** (a tuple or dict of tables with the same rows: numeric and
categorical tensors, two DataFrames) is one table to these methods: :class:`SeveralTables` puts
the columns of every input side by side (the players), named ``"<input>:<column>"`` (the dict key
or tuple position, then the DataFrame's column name or ``x0, x1, ...``), and decodes a matrix back
into :class:`~lumos.core.blackbox.Parts`, one table per input, which the black-box adapter passes
to the model as it expects (a tuple positionally, a dict as keywords).
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["TabularData", "SeveralTables", "is_tabular", "is_several", "table_layout",
           "check_several_tables"]


def _is_frame(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "dtypes") and hasattr(X, "iloc")


def is_tabular(X: Any) -> bool:
    """A DataFrame or a 2-D array (not a list of strings, not an image batch)."""
    if _is_frame(X):
        return True
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], str):
        return False
    if hasattr(X, "detach"):
        return X.ndim == 2
    try:
        return np.ndim(X) == 2
    except Exception:  # pragma: no cover - ragged input
        return False


def is_several(X: Any) -> bool:
    """Several inputs: a dict, or a tuple/list of arrays, tensors or DataFrames
    (:func:`lumos.core.inputs.is_several`; torch is imported only for a candidate)."""
    if isinstance(X, Mapping):
        return True
    if not isinstance(X, (tuple, list)) or not X or isinstance(X[0], str):
        return False
    from ..core.inputs import is_several as several

    return several(X)


def _numeric_column(values: np.ndarray) -> bool:
    """An object column is numeric when every entry is a number (or None, a missing number).

    Strings are never numbers here, even "0" or "1.5": a pipeline whose encoder was fitted on the
    strings must get the strings back, not floats (and booleans are categories, as in DataFrames).
    """
    return all(v is None or (isinstance(v, (numbers.Real, np.number)) and not isinstance(v, (bool, np.bool_)))
               for v in values)


class TabularData:
    """Column layout of a table: names, which columns are categorical, their categories.

    Build it with :meth:`from_data` on everything that will be encoded (background and explained
    rows), so that every category has a code.

    Attributes
    ----------
    names : list of str
        Column names (the DataFrame's, the user's ``feature_names``, or ``x0, x1, ...``).
    categorical : ndarray of bool, shape (d,)
    categories : dict[int, ndarray]
        For each categorical column index, the category of each code.
    kind : {"frame", "array", "object"}
        What the model is given back: a DataFrame (the user's column dtypes), a numeric array or
        an object array.
    array_dtype : numpy dtype or None
        The dtype of the user's array (int, float32, bool, str...): decoded rows are given back
        in it, so the model sees the types it was given.
    """

    def __init__(self, names: list[str], categorical: np.ndarray, categories: dict[int, np.ndarray],
                 kind: str, dtypes: dict | None = None, integer: np.ndarray | None = None,
                 columns: list | None = None, array_dtype: np.dtype | None = None):
        self.array_dtype = array_dtype
        self.names = names
        self.categorical = categorical
        self.categories = categories
        self.kind = kind
        self.dtypes = dtypes
        self.columns = columns if columns is not None else names  # the user's column labels
        d = len(names)
        self.integer = integer if integer is not None else np.zeros(d, bool)

    @property
    def n_features(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_data(cls, *tables: Any, categorical: Sequence | None = None,
                  feature_names: Sequence[str] | None = None, name: str = "inputs") -> "TabularData":
        """Layout of ``tables`` (all with the same columns; ``None`` entries are skipped).

        Parameters
        ----------
        categorical : sequence of int or str, optional
            Columns to treat as categorical, by index or name. By default string, object,
            pandas categorical and boolean columns are categorical and the rest numeric.
        feature_names : sequence of str, optional
            Names for the columns of an array (a DataFrame's own names are used otherwise).
        """
        tables = [t for t in tables if t is not None]
        first = tables[0]
        if _is_frame(first):
            import pandas as pd

            columns = list(first.columns)
            for t in tables[1:]:
                if not _is_frame(t) or list(t.columns) != columns:
                    raise ValueError(
                        f"{name}: the background and the explained rows must be DataFrames with the "
                        f"same columns; got {list(getattr(t, 'columns', []))} and {columns}"
                    )
            dtypes = first.dtypes.to_dict()
            names = [str(c) for c in columns]
            d = len(names)
            cat = np.zeros(d, bool)
            for j, c in enumerate(columns):
                dt = dtypes[c]
                cat[j] = pd.api.types.is_bool_dtype(dt) or not pd.api.types.is_numeric_dtype(dt)
            cat = cls._override(cat, categorical, names)
            integer = np.array([pd.api.types.is_integer_dtype(dtypes[c]) for c in columns])
            cats = {}
            for j in np.flatnonzero(cat):
                col = columns[j]
                dt = dtypes[col]
                if isinstance(dt, pd.CategoricalDtype):
                    base = np.asarray(dt.categories, dtype=object)
                else:
                    base = np.empty(0, dtype=object)
                allv = pd.concat([t[col] for t in tables], ignore_index=True).astype(object)
                _, uniq = pd.factorize(allv, use_na_sentinel=False)
                extra = [u for u in np.asarray(uniq, dtype=object) if not _contains(base, u)]
                cats[j] = np.concatenate([base, np.asarray(extra, dtype=object)])
            return cls(names, cat, cats, "frame", dtypes=dtypes, integer=integer, columns=columns)
        arrays = [_as_2d(t, name) for t in tables]
        d = arrays[0].shape[1]
        for a in arrays[1:]:
            if a.shape[1] != d:
                raise ValueError(f"{name}: the background has {a.shape[1]} columns but the explained "
                                 f"rows have {d}")
        if feature_names is not None:
            names = [str(f) for f in feature_names]
            if len(names) != d:
                raise ValueError(f"feature_names has {len(names)} names but the data has {d} columns")
        else:
            names = [f"x{j}" for j in range(d)]
        stacked = np.concatenate(arrays)
        given = stacked.dtype
        if stacked.dtype != object:
            if not (np.issubdtype(stacked.dtype, np.number) or stacked.dtype == bool):
                stacked = stacked.astype(object)
        if stacked.dtype == object:
            cat = np.array([not _numeric_column(stacked[:, j]) for j in range(d)])
            kind = "object"
        elif stacked.dtype == bool:
            cat = np.ones(d, bool)
            kind = "object"
        else:
            cat = np.zeros(d, bool)
            kind = "array"
        cat = cls._override(cat, categorical, names)
        cats = {}
        import pandas as pd  # noqa: F811 - also imported above, on the DataFrame branch only

        for j in np.flatnonzero(cat):
            _, uniq = pd.factorize(pd.Series(stacked[:, j], dtype=object), use_na_sentinel=False)
            cats[j] = np.asarray(uniq, dtype=object)
        integer = np.zeros(d, bool)
        if kind == "array":
            integer[:] = np.issubdtype(stacked.dtype, np.integer)
        return cls(names, cat, cats, kind, integer=integer, array_dtype=given)

    @staticmethod
    def _override(cat: np.ndarray, categorical, names: list[str]) -> np.ndarray:
        if categorical is None:
            return cat
        out = np.zeros(len(names), bool)
        for c in categorical:
            if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                if not 0 <= c < len(names):
                    raise ValueError(f"categorical: column index {c} out of range 0..{len(names) - 1}")
                out[int(c)] = True
            elif str(c) in names:
                out[names.index(str(c))] = True
            else:
                raise ValueError(f"categorical: unknown column {c!r}; columns are {names}")
        # a column that cannot be read as numbers stays categorical whatever the user said
        return out | cat

    # ------------------------------------------------------------------ encode / decode
    def encode(self, X: Any, name: str = "inputs") -> np.ndarray:
        """Float64 matrix (n, d): numeric columns as floats, categorical columns as codes."""
        if _is_frame(X):
            if self.kind != "frame":
                raise ValueError(f"{name}: got a DataFrame but the data were given as an array")
            if list(X.columns) != list(self.columns):
                raise ValueError(f"{name}: columns {list(X.columns)} differ from {list(self.columns)}")
            cols = [X[c].to_numpy(dtype=object) if self.categorical[j] else
                    X[c].to_numpy(dtype=np.float64, na_value=np.nan)
                    for j, c in enumerate(self.columns)]
        else:
            A = _as_2d(X, name)
            if A.shape[1] != self.n_features:
                raise ValueError(f"{name} has {A.shape[1]} columns; expected {self.n_features}")
            cols = [A[:, j] for j in range(self.n_features)]
        n = len(cols[0]) if cols else 0
        out = np.empty((n, self.n_features), dtype=np.float64)
        for j, col in enumerate(cols):
            if self.categorical[j]:
                out[:, j] = _codes(col, self.categories[j], self.names[j], name)
            else:
                try:
                    out[:, j] = np.asarray(col, dtype=np.float64)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{name}: column {self.names[j]!r} is not numeric: {e}") from e
        return out

    def decode(self, Z: np.ndarray):
        """What the model is given for the encoded rows ``Z`` (n, d)."""
        if self.kind == "array":
            if self.integer.any() or self.categorical.any():
                Z = Z.copy()
                Z[:, self.integer] = np.round(Z[:, self.integer])
                for j, cats in self.categories.items():  # numeric categories given by the user
                    Z[:, j] = cats[np.round(Z[:, j]).astype(np.int64)].astype(np.float64)
            return self._as_given(Z)
        cols = {}
        for j in range(self.n_features):
            z = Z[:, j]
            if self.categorical[j]:
                cols[j] = self.categories[j][np.round(z).astype(np.int64)]
            elif self.integer[j]:
                cols[j] = np.round(z)
            else:
                cols[j] = z
        if self.kind == "object":
            out = np.empty(Z.shape, dtype=object)
            for j, c in cols.items():
                out[:, j] = c
            return self._as_given(out)
        import pandas as pd

        frame = {}
        for j, c in enumerate(self.columns):
            dt = self.dtypes[c]
            col = cols[j]
            try:
                frame[c] = pd.Series(col, dtype=dt) if self.categorical[j] else col.astype(dt)
            except (TypeError, ValueError):
                frame[c] = pd.Series(col).astype(dt)
        return pd.DataFrame(frame, columns=self.columns)

    def _as_given(self, A: np.ndarray) -> np.ndarray:
        """Rows in the dtype of the user's array (float64 and object arrays as they are)."""
        dt = self.array_dtype
        if dt is None or dt == A.dtype or dt == object:
            return A
        return A.astype(dt)

    def describe(self, Z: np.ndarray, precision: int = 4) -> np.ndarray:
        """Readable values (n, d) of str, for plots and reports (``"clerk"``, ``"42.5"``)."""
        out = np.empty(Z.shape, dtype=object)
        for j in range(self.n_features):
            if self.categorical[j]:
                out[:, j] = [str(v) for v in self.categories[j][np.round(Z[:, j]).astype(np.int64)]]
            else:
                out[:, j] = [f"{v:.{precision}g}" for v in Z[:, j]]
        return out.astype(str)

    def category_lists(self) -> dict[str, list[str]]:
        """The categories of each categorical column, by name (for meta)."""
        return {self.names[j]: [str(c) for c in cats] for j, cats in self.categories.items()}


def _contains(arr: np.ndarray, value) -> bool:
    for a in arr:
        if a is value or a == value or (_isnan(a) and _isnan(value)):
            return True
    return False


def _isnan(v) -> bool:
    try:
        return bool(v != v)
    except Exception:  # pragma: no cover
        return False


def _codes(col, categories: np.ndarray, column: str, name: str) -> np.ndarray:
    import pandas as pd

    col = pd.Series(np.asarray(col, dtype=object), dtype=object)
    idx = pd.Index(categories, dtype=object)
    codes = idx.get_indexer(col)
    missing = codes < 0
    if missing.any():
        # NaN does not match itself in an Index lookup: map it to the NaN category by hand
        nan_code = next((k for k, c in enumerate(categories) if _isnan(c)), None)
        isna = col.isna().to_numpy()
        if nan_code is not None:
            codes[missing & isna] = nan_code
            missing = codes < 0
        if missing.any():
            bad = sorted({str(v) for v in col[missing]})[:5]
            raise ValueError(f"{name}: column {column!r} has categories {bad} not seen in the data")
    return codes.astype(np.float64)


def _as_2d(X: Any, name: str) -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    A = np.asarray(X)
    if A.ndim == 1:
        raise ValueError(f"{name} must be 2-D (rows, features); got shape {A.shape}. "
                         "A single row needs a batch axis: X[None] or X.reshape(1, -1).")
    if A.ndim != 2:
        raise ValueError(f"{name} must be a table of shape (rows, features); got shape {A.shape}")
    if len(A) == 0:
        raise ValueError(f"{name} has no rows")
    return A


# ---------------------------------------------------------------------- several inputs
def _entries(X: Any) -> tuple[str, list, list]:
    """``(kind, keys, tables)`` of a tuple/list or dict of tables."""
    if isinstance(X, Mapping):
        return "dict", list(X), list(X.values())
    return "tuple", list(range(len(X))), list(X)


def _label(name: str, kind: str, key) -> str:
    return f"{name}[{key!r}]" if kind == "dict" else f"{name}[{key}]"


class SeveralTables(TabularData):
    """The tables of a model of several inputs as one table (see the module docstring).

    Columns are the columns of every input in order; ``names`` are ``"<input>:<column>"``.
    :meth:`encode` takes the inputs' structure (a tuple/dict of tables with the same rows),
    :meth:`decode` gives :class:`~lumos.core.blackbox.Parts`, :meth:`unpack` splits a
    ``(n, d)`` array of values into the inputs' structure (:class:`~lumos.core.inputs.Packing`).
    """

    def __init__(self, tables: list[TabularData], structure: str, keys: list,
                 names: list[str] | None = None):
        self.tables = tables
        self.structure = structure       # "tuple" or "dict"
        self.keys = keys                 # dict keys, or 0, 1, ...
        self.input_names = [str(k) for k in keys]
        widths = [t.n_features for t in tables]
        self.offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        if names is None:
            names = [f"{k}:{c}" for k, t in zip(self.input_names, tables) for c in t.names]
        cats = {int(self.offsets[i]) + j: c for i, t in enumerate(tables) for j, c in t.categories.items()}
        super().__init__(list(names), np.concatenate([t.categorical for t in tables]), cats,
                         "several", integer=np.concatenate([t.integer for t in tables]))

    @classmethod
    def from_data(cls, background: Any, inputs: Any, categorical: Sequence | None = None,
                  feature_names: Sequence[str] | None = None, name: str = "inputs") -> "SeveralTables":
        """Layout of several inputs and a background of the same structure.

        ``categorical`` names columns across inputs (``"<input>:<column>"`` or an index into all
        columns); ``feature_names`` replaces the names of all columns (one per column).
        """
        kind, keys, parts = _entries(inputs)
        if not parts:
            raise ValueError(f"{name} is empty: give at least one table")
        bg = _matching(background, kind, keys, "background")
        check_several_tables(inputs, name=name)
        for k, x, b in zip(keys, parts, bg):
            label = _label(name, kind, k)
            if not is_tabular(b):
                raise ValueError(f"{_label('background', kind, k)} must be a table like {label}; "
                                 f"got {type(b).__name__} of shape {np.shape(b)}")
            if _is_frame(x) != _is_frame(b):
                raise ValueError(f"{label} and {_label('background', kind, k)} must both be "
                                 "DataFrames or both arrays")
        _same_rows(parts, kind, keys, name)
        _same_rows(bg, kind, keys, "background")
        tables = [TabularData.from_data(b, x, name=_label(name, kind, k)) for k, x, b in zip(keys, parts, bg)]
        if categorical is not None:
            flat = cls(tables, kind, keys)
            local: list[list[int]] = [[] for _ in tables]
            for c in categorical:
                if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
                    if not 0 <= c < flat.n_features:
                        raise ValueError(f"categorical: column index {c} out of range 0..{flat.n_features - 1}")
                    j = int(c)
                elif str(c) in flat.names:
                    j = flat.names.index(str(c))
                else:
                    raise ValueError(f"categorical: unknown column {c!r}; with several inputs name "
                                     f"columns as '<input>:<column>': {flat.names}")
                i = int(np.searchsorted(flat.offsets, j, side="right") - 1)
                local[i].append(j - int(flat.offsets[i]))
            tables = [TabularData.from_data(b, x, categorical=loc or None, name=_label(name, kind, k))
                      for k, x, b, loc in zip(keys, parts, bg, local)]
        out = cls(tables, kind, keys)
        if feature_names is not None:
            names = [str(f) for f in feature_names]
            if len(names) != out.n_features:
                raise ValueError(f"feature_names has {len(names)} names but the inputs have "
                                 f"{out.n_features} columns together")
            out = cls(tables, kind, keys, names)
        return out

    def encode(self, X: Any, name: str = "inputs") -> np.ndarray:
        parts = _matching(X, self.structure, self.keys, name)
        _same_rows(parts, self.structure, self.keys, name)
        return np.concatenate([t.encode(x, name=_label(name, self.structure, k))
                               for t, x, k in zip(self.tables, parts, self.keys)], axis=1)

    def decode(self, Z: np.ndarray):
        from ..core.blackbox import Parts

        o = self.offsets
        return Parts([t.decode(Z[:, o[i]:o[i + 1]]) for i, t in enumerate(self.tables)],
                     self.structure, self.keys)

    def unpack(self, values: np.ndarray):
        """``(n, d)`` -> one ``(n, d_k)`` array per input, in the inputs' structure."""
        import torch

        from ..core.inputs import Packing

        widths = np.diff(self.offsets)
        packing = Packing(self.structure, tuple(self.input_names), tuple((int(w),) for w in widths),
                          tuple(torch.float64 for _ in widths), len(values))
        out = packing.unpack_values(values)
        return {k: out[str(k)] for k in self.keys} if self.structure == "dict" else out


def check_several_tables(inputs: Any, method: str = "this method", name: str = "inputs") -> None:
    """A clear error unless every one of several inputs is a table."""
    kind, keys, parts = _entries(inputs)
    for k, x in zip(keys, parts):
        if not is_tabular(x):
            raise ValueError(
                f"{_label(name, kind, k)}: with several inputs, {method} explains tables (a "
                f"DataFrame or a 2-D array (rows, columns) per input); got {type(x).__name__} of "
                f"shape {tuple(np.shape(x))}. Images and texts take one input (pass the others "
                "with forward_args=).")


def _matching(X: Any, kind: str, keys: list, name: str) -> list:
    """The tables of ``X`` in the order of ``keys``; an error unless ``X`` has that structure."""
    if kind == "dict":
        if not isinstance(X, Mapping):
            raise ValueError(f"{name}: give one table per input, as a dict with the keys "
                             f"{[str(k) for k in keys]} like the inputs; got {type(X).__name__}")
        missing = [k for k in keys if k not in X]
        extra = [k for k in X if k not in keys]
        if missing or extra:
            raise ValueError(f"{name}: give one table per input {[str(k) for k in keys]}; missing "
                             f"{[str(k) for k in missing]}, unknown {[str(k) for k in extra]}")
        return [X[k] for k in keys]
    if not is_several(X) or isinstance(X, Mapping) or len(X) != len(keys):
        raise ValueError(f"{name}: give one table per input, as a tuple of {len(keys)} tables like "
                         f"the inputs; got {type(X).__name__}"
                         + (f" of {len(X)}" if isinstance(X, (tuple, list)) else ""))
    return list(X)


def _same_rows(tables: list, kind: str, keys: list, name: str) -> None:
    n = len(tables[0])
    for k, t in zip(keys, tables):
        if len(t) != n:
            raise ValueError(
                f"{name}: every input needs the same number of rows; {_label(name, kind, k)} has "
                f"{len(t)}, {_label(name, kind, keys[0])} has {n}")


def table_layout(background: Any, inputs: Any, categorical: Sequence | None = None,
                 feature_names: Sequence[str] | None = None, name: str = "inputs") -> TabularData:
    """The layout of one table (:class:`TabularData`) or of several (:class:`SeveralTables`)."""
    if is_several(inputs):
        return SeveralTables.from_data(background, inputs, categorical=categorical,
                                       feature_names=feature_names, name=name)
    if is_several(background):
        raise ValueError(f"background: {name} is one table, so the background is one table with "
                         f"the same columns; got a {type(background).__name__} of tables")
    return TabularData.from_data(background, inputs, categorical=categorical,
                                 feature_names=feature_names, name=name)
