"""The one result type of lumos.

Every method returns an :class:`Explanation`. It holds the attribution values with the shape of
what was explained, the explained inputs, the target, the explained scalar per sample and the
parameters that produced it. It slices like the batch, saves to ``.npz`` + JSON (never pickle) and
draws itself through :mod:`lumos.display`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Explanation", "load", "ExplanationFileError"]

_FORMAT = "lumos.explanation/1"


def _to_numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    elif hasattr(x, "to_numpy"):  # pandas
        x = x.to_numpy()
    return np.asarray(x)


def _is_parts(x: Any) -> bool:
    """Several inputs' arrays: a tuple/list or a dict (one entry per explained input)."""
    return isinstance(x, (tuple, list, Mapping))


def _map(x: Any, f) -> Any:
    """Apply ``f`` to each part of a tuple/dict of arrays (or to the one array)."""
    if x is None:
        return None
    if isinstance(x, Mapping):
        return {str(k): f(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(f(v) for v in x)
    return f(x)


def _parts(x: Any) -> list:
    if isinstance(x, Mapping):
        return list(x.values())
    if isinstance(x, (tuple, list)):
        return list(x)
    return [x]


@dataclass(eq=False)
class Explanation:
    """Attributions for a batch of samples, with everything needed to interpret them.

    Parameters
    ----------
    values : ndarray, shape (batch, ...); or a tuple / dict of such arrays
        The attribution of each input element (or feature, token, superpixel...). Raw numbers:
        never normalised, clipped or rectified; display does that. For a model of several
        inputs, one array per input, in the structure the inputs were given (a tuple, or a dict
        with the inputs' names); :meth:`part` gives the explanation of one input.
    inputs : ndarray, shape (batch, ...), optional
        The explained inputs (for tabular data, the feature matrix); a tuple/dict like
        ``values`` for several inputs.
    target : ndarray of int, shape (batch,), optional
        The explained class per sample, when the target is a class index. ``None`` for callable
        targets and scalar outputs (``meta["target"]`` then describes it).
    output : ndarray, shape (batch,), optional
        The explained scalar f(x) per sample.
    baseline_output : ndarray, shape (batch,), optional
        f at the reference the method compares to: f(baseline) for integrated gradients and
        DeepLIFT, the base value E[f] for Shapley values, so that ``baseline_output + values.sum()``
        can be checked against ``output``.
    method : str
        The registry name of the method.
    params : dict
        The parameters the method was called with (JSON-serialisable where possible).
    meta : dict
        Anything else: completeness gap, standard errors, seeds, the layer used, number of model
        evaluations. Entries named in ``sample_keys`` hold one row per sample and are sliced with
        the batch.
    feature_names : list of str, optional
        Names of the features of a tabular or text explanation (last axis of ``values``).
    sample_keys : iterable of str
        The ``meta`` keys whose leading axis is the batch.
    """

    values: np.ndarray
    inputs: np.ndarray | None = None
    target: np.ndarray | None = None
    output: np.ndarray | None = None
    baseline_output: np.ndarray | None = None
    method: str = ""
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    feature_names: list[str] | None = None
    sample_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.values = _map(self.values, _to_numpy)
        if _is_parts(self.values):
            parts = _parts(self.values)
            if not parts:
                raise ValueError("Explanation.values holds no input's values")
            if any(p.ndim == 0 for p in parts) or len({len(p) for p in parts}) != 1:
                raise ValueError("Explanation.values: every input's values need the same batch axis; "
                                 f"got shapes {[p.shape for p in parts]}")
        elif self.values.ndim == 0:
            raise ValueError("Explanation.values must have a batch axis; got a scalar.")
        self.inputs = _map(self.inputs, _to_numpy)
        if _is_parts(self.inputs) != _is_parts(self.values) or (
                _is_parts(self.values) and self.inputs is not None
                and [p.shape[0] for p in _parts(self.inputs)] != [len(self)] * len(_parts(self.inputs))):
            if self.inputs is not None:
                raise ValueError("Explanation.inputs must have the structure of values (one array per "
                                 "input, each with the batch axis)")
        self.target = _to_numpy(self.target)
        self.output = _to_numpy(self.output)
        self.baseline_output = _to_numpy(self.baseline_output)
        self.sample_keys = tuple(self.sample_keys)
        n = len(self)
        for name in ("target", "output", "baseline_output") + (() if _is_parts(self.inputs) else ("inputs",)):
            arr = getattr(self, name)
            if arr is not None and arr.ndim > 0 and len(arr) != n:
                raise ValueError(
                    f"Explanation.{name} has {len(arr)} rows but values has {n}: "
                    "every per-sample field must share the batch axis."
                )
        for key in self.sample_keys:
            if key not in self.meta:
                raise ValueError(f"sample key {key!r} is not in meta")
            self.meta[key] = _to_numpy(self.meta[key])
            if len(self.meta[key]) != n:
                raise ValueError(f"meta[{key!r}] has {len(self.meta[key])} rows, expected {n}")
        if self.feature_names is not None:
            self.feature_names = [str(f) for f in self.feature_names]
            if (not self.several and self.values.ndim >= 2
                    and len(self.feature_names) != self.values.shape[-1]):
                raise ValueError(
                    f"Explanation.feature_names has {len(self.feature_names)} names but values has "
                    f"{self.values.shape[-1]} features on its last axis (shape {self.values.shape})"
                )

    # ------------------------------------------------------------------ batch behaviour
    def __len__(self) -> int:
        return len(_parts(self.values)[0])

    @property
    def several(self) -> bool:
        """True when the model took several explained inputs (``values`` is a tuple or dict)."""
        return _is_parts(self.values)

    @property
    def input_names(self) -> list[str] | None:
        """Names of the explained inputs (dict keys, or "0", "1"... for a tuple); None for one input."""
        if isinstance(self.values, Mapping):
            return list(self.values)
        if isinstance(self.values, tuple):
            return [str(i) for i in range(len(self.values))]
        return None

    def part(self, key: int | str) -> "Explanation":
        """The explanation of one input of a model of several inputs (a tuple index or dict key)."""
        if not self.several:
            raise ValueError("part: this explanation has a single input")
        names = self.input_names
        if isinstance(self.values, Mapping):
            if str(key) not in self.values:
                raise KeyError(f"part: no input named {key!r}; inputs are {names}")
            k = str(key)
        else:
            if isinstance(key, str) or not -len(names) <= int(key) < len(names):
                raise KeyError(f"part: give an index 0..{len(names) - 1}; got {key!r}")
            k = int(key)
        meta = dict(self.meta)
        meta["input"] = str(k)
        # feature_names of several tables name the columns of every input in order
        widths = [p.shape[-1] if p.ndim >= 2 else 1 for p in _parts(self.values)]
        fnames = None
        if self.feature_names is not None and len(self.feature_names) == sum(widths):
            at = names.index(str(k)) if isinstance(self.values, Mapping) else k % len(names)
            fnames = self.feature_names[sum(widths[:at]):sum(widths[:at + 1])]
        return Explanation(
            values=self.values[k], inputs=None if self.inputs is None else self.inputs[k],
            target=self.target, output=self.output, baseline_output=self.baseline_output,
            method=self.method, params=dict(self.params), meta=meta,
            sample_keys=self.sample_keys, feature_names=fnames,
        )

    def __array__(self, dtype=None, copy=None):
        if self.several:
            raise TypeError(
                "this explanation has one values array per input; use explanation.values[k] "
                "or explanation.part(k)")
        return np.asarray(self.values, dtype=dtype)

    def __getitem__(self, index) -> "Explanation":
        """Slice along the batch: ``expl[0]``, ``expl[2:5]``, ``expl[mask]``, ``expl[[0, 3]]``."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        if isinstance(index, tuple):
            raise IndexError("Explanation slices along the batch only; index values directly.")

        def take(a):
            return None if a is None or np.ndim(a) == 0 else a[index]

        meta = dict(self.meta)
        for key in self.sample_keys:
            meta[key] = self.meta[key][index]
        return Explanation(
            values=_map(self.values, lambda a: a[index]),
            inputs=_map(self.inputs, take),
            target=take(self.target),
            output=take(self.output),
            baseline_output=take(self.baseline_output),
            method=self.method,
            params=dict(self.params),
            meta=meta,
            feature_names=self.feature_names,
            sample_keys=self.sample_keys,
        )

    def __repr__(self) -> str:
        """One short line: method, values' shape and dtype, a few targets — never the arrays."""
        def few(a, k=4):
            items = np.asarray(a).ravel()
            return "[" + ", ".join(map(str, items[:k].tolist())) + (", …]" if len(items) > k else "]")

        if self.several:
            shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in zip(self.input_names, _parts(self.values)))
            values = "{" + (shapes if len(shapes) <= 120 else shapes[:119] + "…") + "}"
        else:
            values = f"{tuple(self.values.shape)} {self.values.dtype}"
        parts = [f"method={self.method[:40]!r}", f"values={values}"]
        if self.target is not None:
            parts.append(f"target={few(self.target)}")
        elif isinstance(self.meta.get("target"), str):
            parts.append(f"target={self.meta['target'][:30]!r}")
        if self.feature_names is not None:
            parts.append(f"features={len(self.feature_names)}")
        has = [n for n in ("inputs", "output", "baseline_output") if getattr(self, n) is not None]
        if has:
            parts.append("with " + "/".join(has))
        return f"Explanation({', '.join(parts)})"

    def _repr_html_(self) -> str:
        """Notebooks: a small table and a picture (inline PNG); every text is escaped."""
        from ..display.explanation import explanation_html

        return explanation_html(self)

    # ------------------------------------------------------------------ checks
    @property
    def completeness_gap(self) -> np.ndarray | None:
        """``|sum(values) - (output - baseline_output)|`` per sample, where both outputs exist."""
        if self.output is None or self.baseline_output is None:
            return None
        total = sum(p.reshape(len(self), -1).sum(axis=1) for p in _parts(self.values))
        return np.abs(total - (self.output - self.baseline_output))

    # ------------------------------------------------------------------ display
    def plot(self, kind: str | None = None, *, index: int | None = None, ax=None, **kwargs):
        """Draw the explanation and return the display (imports matplotlib lazily).

        A batch draws the batch: a grid of heatmaps for images, a beeswarm for tables; one sample
        (``index=i``, or a batch of one) a heatmap, or a waterfall (bar without a base value).
        ``kind`` names a display: ``"heatmap"``, ``"grid"``, ``"segments"``, ``"waterfall"``,
        ``"bar"``, ``"beeswarm"``, ``"force"``, ``"text"``, e.g. ``e[0].plot("force")``. Other
        keywords go to the display; see :func:`lumos.display.explanation.plot_explanation`.
        """
        from ..display.explanation import plot_explanation

        return plot_explanation(self, kind, index=index, ax=ax, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Save to ``path`` (a ``.npz`` file; a JSON side file ``path.json`` holds the rest).

        If ``path`` has no ``.npz`` suffix it is treated as a folder and ``explanation.npz`` and
        ``explanation.json`` are written inside it. Returns the path of the ``.npz`` file.
        Nothing is pickled: arrays go to ``.npz`` (``allow_pickle=False``), the rest to JSON.
        """
        path = Path(path)
        if path.suffix != ".npz":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "explanation.npz"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        structure = {}
        for name in ("values", "inputs"):
            value = getattr(self, name)
            if _is_parts(value):
                names = list(value) if isinstance(value, Mapping) else [str(i) for i in range(len(value))]
                structure[name] = {"kind": "dict" if isinstance(value, Mapping) else "tuple",
                                   "names": names}
                for key, arr in zip(names, _parts(value)):
                    if arr.dtype == object:
                        raise TypeError(f"Explanation.{name} holds Python objects and cannot be saved")
                    arrays[f"{name}__{key}"] = arr
        if "values" not in structure:
            arrays["values"] = self.values
        for name in ("inputs", "target", "output", "baseline_output"):
            arr = getattr(self, name)
            if arr is not None and name not in structure:
                if arr.dtype == object:
                    raise TypeError(f"Explanation.{name} holds Python objects and cannot be saved")
                arrays[name] = arr
        meta_json, meta_arrays = _split_meta(self.meta)
        for key, arr in meta_arrays.items():
            arrays["meta__" + key] = arr
        doc = {
            "format": _FORMAT,
            "method": self.method,
            "params": _jsonable(self.params),
            "meta": meta_json,
            "meta_arrays": sorted(meta_arrays),
            "feature_names": self.feature_names,
            "sample_keys": list(self.sample_keys),
            "parts": structure,
        }
        np.savez_compressed(path, **arrays)
        path.with_suffix(".json").write_text(json.dumps(doc, indent=2))
        return path


class ExplanationFileError(ValueError):
    """A saved explanation's files are missing, malformed or inconsistent."""


_MAX_JSON_DEPTH = 64


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, iteratively (a deep file cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((c, d + 1) for c in v.values())
        elif isinstance(v, list):
            stack.extend((c, d + 1) for c in v)
    return deepest


def _read_doc(json_path: Path) -> dict:
    def bad(msg: str) -> ExplanationFileError:
        return ExplanationFileError(f"{json_path}: {msg}")

    if not json_path.exists():
        raise FileNotFoundError(f"no side file {json_path} beside the saved explanation's arrays")
    try:
        doc = json.loads(json_path.read_text())
    except RecursionError:
        raise bad(f"nested deeper than {_MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise bad(f"expected a JSON object, got {type(doc).__name__}")
    if _depth(doc, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise bad(f"nested deeper than {_MAX_JSON_DEPTH} levels")
    if doc.get("format") != _FORMAT:
        raise bad(f"not a lumos explanation (format {doc.get('format')!r}, expected {_FORMAT!r})")
    expected = {"method": str, "params": dict, "meta": dict, "meta_arrays": list,
                "sample_keys": list}
    for key, kind in expected.items():
        if key not in doc:
            raise bad(f"field {key!r} is missing")
        if not isinstance(doc[key], kind):
            raise bad(f"field {key!r} must be a {kind.__name__}; got {type(doc[key]).__name__}")
    for key in ("meta_arrays", "sample_keys"):
        if not all(isinstance(k, str) for k in doc[key]):
            raise bad(f"field {key!r} must be a list of strings")
    names = doc.get("feature_names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, (str, int, float)) for n in names)):
        raise bad("field 'feature_names' must be null or a list of strings")
    return doc


def load(path: str | os.PathLike) -> Explanation:
    """Load an :class:`Explanation` written by :meth:`Explanation.save` (no pickle involved).

    Raises
    ------
    FileNotFoundError
        When the ``.npz`` or its ``.json`` side file is missing.
    ExplanationFileError (a ValueError)
        When either file is malformed: not JSON, a wrong or missing field, an array named in
        ``meta_arrays`` that the ``.npz`` lacks, rows that do not match. The message names the
        file and the field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "explanation.npz"
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    if not path.exists():
        raise FileNotFoundError(f"no saved explanation at {path}")
    json_path = path.with_suffix(".json")
    doc = _read_doc(json_path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:  # object arrays (would need pickle) or a corrupt archive
        raise ExplanationFileError(f"{path}: cannot be read without pickle ({e})") from None
    except (OSError, EOFError) as e:
        raise ExplanationFileError(f"{path}: not a readable .npz archive ({e})") from None
    structure = doc.get("parts") or {}
    if not isinstance(structure, dict):
        raise ExplanationFileError(f"{json_path}: field 'parts' must be an object")
    for name, spec in structure.items():
        if (name not in ("values", "inputs") or not isinstance(spec, dict)
                or spec.get("kind") not in ("tuple", "dict") or not isinstance(spec.get("names"), list)
                or not all(isinstance(k, str) for k in spec["names"])):
            raise ExplanationFileError(f"{json_path}: field 'parts' has a malformed entry {name!r}")
        missing = [k for k in spec["names"] if f"{name}__{k}" not in arrays]
        if missing:
            raise ExplanationFileError(f"{json_path}: parts of {name!r} missing in {path.name}: {missing}")
        got = [arrays.pop(f"{name}__{k}") for k in spec["names"]]
        arrays[name] = dict(zip(spec["names"], got)) if spec["kind"] == "dict" else tuple(got)
    if "values" not in arrays:
        raise ExplanationFileError(f"{path}: the array 'values' is missing")
    meta = dict(doc["meta"])
    for key in doc["meta_arrays"]:
        if "meta__" + key not in arrays:
            raise ExplanationFileError(
                f"{json_path}: meta_arrays names {key!r} but {path.name} has no array 'meta__{key}'")
        meta[key] = arrays.pop("meta__" + key)
    try:
        return Explanation(
            values=arrays["values"],
            inputs=arrays.get("inputs"),
            target=arrays.get("target"),
            output=arrays.get("output"),
            baseline_output=arrays.get("baseline_output"),
            method=doc["method"],
            params=doc["params"],
            meta=meta,
            feature_names=doc.get("feature_names"),
            sample_keys=doc["sample_keys"],
        )
    except (ValueError, TypeError) as e:
        raise ExplanationFileError(f"{json_path}: inconsistent with {path.name}: {e}") from None


def _split_meta(meta: Mapping[str, Any]) -> tuple[dict, dict]:
    """Arrays (anything of more than a few numbers) go to the npz; the rest to JSON."""
    js, arrs = {}, {}
    for key, value in meta.items():
        arr = _to_numpy(value) if hasattr(value, "detach") or isinstance(value, np.ndarray) else None
        if arr is not None and arr.dtype != object:
            arrs[key] = arr
        else:
            js[key] = _jsonable(value)
    return js, arrs


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 10_000 else f"<array {value.shape}>"
    if hasattr(value, "detach"):
        t = value.detach().cpu()
        return t.tolist() if t.numel() <= 10_000 else f"<tensor {tuple(t.shape)}>"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def concatenate(explanations: Sequence[Explanation]) -> Explanation:
    """Join explanations of the same method along the batch."""
    if not explanations:
        raise ValueError("concatenate needs at least one explanation")
    first = explanations[0]

    def cat(name):
        arrs = [getattr(e, name) for e in explanations]
        if any(a is None for a in arrs):
            return None
        if _is_parts(arrs[0]):
            keys = list(arrs[0]) if isinstance(arrs[0], Mapping) else range(len(arrs[0]))
            joined = {k: np.concatenate([a[k] for a in arrs]) for k in keys}
            return joined if isinstance(arrs[0], Mapping) else tuple(joined.values())
        return np.concatenate(arrs)

    meta = dict(first.meta)
    for key in first.sample_keys:
        meta[key] = np.concatenate([e.meta[key] for e in explanations])
    return Explanation(
        values=cat("values"), inputs=cat("inputs"), target=cat("target"), output=cat("output"),
        baseline_output=cat("baseline_output"), method=first.method, params=dict(first.params),
        meta=meta, feature_names=first.feature_names, sample_keys=first.sample_keys,
    )

