"""The black-box model adapter: any predict function, scikit-learn estimator or pipeline,
XGBoost/LightGBM model or torch module, seen as ``f(X) -> scores`` on batches.

Model-agnostic methods (LIME, Shapley values, occlusion, global effects) call the model only
through :class:`BlackBox`, which
- chooses the scoring function of an estimator sensibly (``predict_proba`` for classifiers,
  ``predict`` for regressors, ``decision_function`` when there are no probabilities) and records it;
- rebuilds pandas DataFrames with the user's column names and dtypes, so pipelines with
  column transformers and categorical string columns work;
- hands the model a *copy* of every batch, so a predict function that normalises its argument in
  place cannot change the inputs a method builds its perturbations from;
- runs a torch module the way every torch method does: under :class:`~lumos.core.torch_model.ModelGuard`
  (the model is left as found, its per-model lock held), with a warning when dropout or batch norm is
  in training mode, inputs cast to the model's dtype and device and checked (the error names the
  argument), ``torch.no_grad``, and the output unpacked as :func:`~lumos.core.torch_model.forward`
  does (a tuple's first tensor, an object's ``.logits``);
- evaluates in chunks of ``batch_size`` rows and counts the rows it evaluated;
- checks every answer: the right number of rows, numeric (:func:`check_numeric`), finite;
- calls a model of **several inputs** with the rows of each (:class:`Parts`: a tuple positionally,
  a dict as keywords) and passes **extra arguments** (``forward_args=``, as for torch methods, see
  :mod:`lumos.core.inputs`): a per-sample argument (first axis = the number of explained samples)
  is expanded to the rows of every batch by the ``rows=`` the method passes (the explained sample
  of each row), through :class:`~lumos.core.inputs.BoundModel`, the one place that does it for
  torch methods too.

Which output is explained (``output=``, the same for every black-box method)
----------------------------------------------------------------------------
``"auto"`` (default): ``predict_proba`` for a classifier that has it, else ``decision_function``
for a classifier, else ``predict``; a plain callable or torch module is called as it is.
``"predict_proba"``, ``"decision_function"``, ``"predict"``: that method of the estimator (an
error if it has none). The choice is recorded as ``meta["score"]``; the target then picks one
column of the scores (see :mod:`lumos.core.targets`).
"""
from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import numpy as np

from .execution import check_batch_size

__all__ = ["BlackBox", "Parts", "as_blackbox", "check_numeric", "OUTPUTS"]

#: The values of ``output=`` (see the module docstring).
OUTPUTS = ("auto", "predict_proba", "decision_function", "predict")


def check_numeric(out: np.ndarray, method: str = "this method") -> np.ndarray:
    """``out`` if its scores are numbers; a ValueError that says so otherwise."""
    out = np.asarray(out)
    if out.dtype.kind not in "biuf":
        sample = out.ravel()[:3].tolist() if out.size else []
        raise ValueError(
            f"model returned {out.dtype} scores (e.g. {sample}); {method} needs numeric outputs, one "
            "score or one row of scores per input. For a classifier that predicts labels, pass "
            "output='predict_proba' (or a predict function returning probabilities)."
        )
    return out


class Parts:
    """Rows of the several inputs of one model call: one table (array, DataFrame) per input.

    Slices and copies all inputs together; :meth:`call` calls a function with them the way the
    user's inputs were given: a tuple positionally, a dict as keyword arguments.
    """

    def __init__(self, items: Sequence, kind: str, names: Sequence[str]):
        self.items = list(items)
        self.kind = kind      # "tuple" or "dict"
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.items[0])

    def __getitem__(self, rows) -> "Parts":
        return Parts([p.iloc[rows] if hasattr(p, "iloc") else p[rows] for p in self.items],
                     self.kind, self.names)

    def copy(self) -> "Parts":
        return Parts([np.array(p, copy=True) if isinstance(p, np.ndarray) else _copy(p)
                      for p in self.items], self.kind, self.names)

    def call(self, fn, args: Sequence = (), kwargs: dict | None = None):
        kwargs = kwargs or {}
        if self.kind == "dict":
            return fn(*args, **dict(zip(self.names, self.items)), **kwargs)
        return fn(*self.items, *args, **kwargs)


class BlackBox:
    """A model seen only through its outputs.

    Parameters
    ----------
    model : callable, scikit-learn estimator/pipeline, xgboost/lightgbm model or torch.nn.Module
    columns : sequence of str, optional
        Column names: when given, the model is called with a pandas DataFrame of these columns
        (``dtypes`` restores the column dtypes).
    dtypes : mapping, optional
        Column dtypes of the user's DataFrame.
    output : {"auto", "predict_proba", "decision_function", "predict"}
        Which scoring function of an estimator to use (see the module docstring).
    batch_size : int, optional
        Rows per model call (default: all at once up to 4096).
    method : str, optional
        The method using the model, for error messages.
    numeric : bool, default True
        Refuse non-numeric outputs (:func:`check_numeric`). ``False`` lets labels through, for
        scorers that compare predicted labels (accuracy in permutation importance).
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (see :mod:`lumos.core.inputs`):
        passed after the inputs on every call; an array or tensor whose first axis has the
        length of ``inputs`` is per sample and expanded by the ``rows`` of each call
        (``lumos.Shared(value)`` for one that is the same for every row).
    inputs : optional
        The explained inputs as the user gave them (one table, or a tuple/dict of tables): their
        number of samples says which forward arguments are per sample, and a torch module of
        several inputs is bound to their structure.

    Attributes
    ----------
    n_evals : int
        Rows evaluated so far.
    score_name : str
        The scoring function used (recorded in the explanation's meta).
    """

    def __init__(self, model: Any, columns: Sequence[str] | None = None, dtypes=None,
                 output: str = "auto", batch_size: int | None = None, method: str = "",
                 numeric: bool = True, forward_args: Any = None, inputs: Any = None):
        if isinstance(model, BlackBox):
            model = model.model
        self.model = model
        self.columns = list(columns) if columns is not None else None
        self.dtypes = dtypes
        self.batch_size = check_batch_size(batch_size) if batch_size is not None else 4096
        self.method = method or "this method"
        self.numeric = numeric
        self.n_evals = 0
        #: some forward argument is per sample (it belongs to the explained samples, so rows
        #: that belong to none, such as background rows, cannot be evaluated with it)
        self.per_sample_args = False
        if forward_args is not None:
            from .inputs import is_per_sample, split_forward_args

            args, kwargs = split_forward_args(forward_args)
            n = _n_samples(inputs)
            self.per_sample_args = any(is_per_sample(a, n) for a in list(args) + list(kwargs.values()))
        self._fn, self.score_name = self._choose(model, output, forward_args, inputs)

    def _choose(self, model: Any, output: str, forward_args: Any = None, inputs: Any = None):
        from .validation import check_choice

        check_choice(output, "output", OUTPUTS)
        # A torch module exists only if torch was imported: no need to pay for importing it.
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(model, torch.nn.Module):
            if output not in ("auto",):
                raise ValueError(f"output={output!r} applies to scikit-learn estimators; a torch "
                                 "module is called as it is (output='auto'); choose the score with target=")
            return self._torch(model, forward_args, inputs), "torch forward"
        bind = (lambda fn: self._bound(fn, forward_args, inputs))
        if output != "auto":
            fn = getattr(model, output, None)
            if fn is None:
                raise ValueError(f"output: the model has no {output} method")
            return bind(fn), output
        if hasattr(model, "predict") and hasattr(model, "fit"):  # an estimator
            is_clf = getattr(model, "_estimator_type", None) == "classifier" or hasattr(model, "classes_")
            try:
                from sklearn.base import is_classifier

                is_clf = is_clf or is_classifier(model)
            except Exception:  # pragma: no cover
                pass
            if is_clf and hasattr(model, "predict_proba"):
                return bind(model.predict_proba), "predict_proba"
            if is_clf and hasattr(model, "decision_function"):
                return bind(model.decision_function), "decision_function"
            return bind(model.predict), "predict"
        if callable(model):
            return bind(model), getattr(model, "__name__", type(model).__name__)
        if hasattr(model, "predict"):  # a fitted booster without the scikit-learn interface
            return bind(_booster_predict(model)), "predict"
        raise TypeError(
            "model must be a callable that scores a batch, a scikit-learn estimator or a torch "
            f"module; got {type(model).__name__}"
        )

    def _bound(self, fn, forward_args: Any, inputs: Any):
        """``fn(X)`` (or ``fn(*parts)``), with the forward arguments bound and expanded by rows."""
        if forward_args is None:
            return _plain(fn)
        from .inputs import BoundModel, split_forward_args

        args, kwargs = split_forward_args(forward_args)
        n = _n_samples(inputs)
        _check_clash(inputs, kwargs)

        def call(batch, *a, **k):
            X = batch.X
            return X.call(fn, a, k) if isinstance(X, Parts) else fn(X, *a, **k)

        # BoundModel expands per-sample arguments (the one place, shared with torch methods);
        # it calls ``call`` as it would call a module, with the rows in a box that has the
        # batch length it reads (lists of texts and Parts have no shape).
        bound = BoundModel(call, None, n, args, kwargs)

        def predict(X, what, rows=None):
            with bound.rows(rows) if rows is not None else _nothing():
                return bound(_Batch(X))

        return predict

    def _torch(self, model, forward_args: Any, inputs: Any):
        from .inputs import is_several

        several = inputs is not None and is_several(inputs)
        return _torch_predict(model, inputs if several or forward_args is not None else None,
                              forward_args)

    def _frame(self, X: np.ndarray, copy: bool = True):
        """What the model is given for an array chunk: the array (a copy unless ``copy=False``),
        or a DataFrame of the user's columns."""
        if self.columns is None:
            return np.array(X, copy=True) if copy else X
        import pandas as pd

        df = pd.DataFrame(np.array(X, copy=True), columns=self.columns)
        if self.dtypes is not None:
            df = df.astype(dict(self.dtypes))
        return df

    def __call__(self, X, what: str = "the inputs", copy: bool = True, rows=None) -> np.ndarray:
        """Scores for the rows of ``X``: shape (n,) or (n, outputs), float64 (labels as they
        are with ``numeric=False``).

        ``what`` names the rows in error messages ("masked inputs"). The model gets a copy of
        ``X``; ``copy=False`` hands over the rows themselves, for callers that built ``X`` for
        this call only (masked inputs), where a copy would cost as much as building them.
        ``X`` is one table (array, DataFrame, list of texts, image batch) or :class:`Parts` for a
        model of several inputs. ``rows`` (int array, one per row of ``X``) is the explained
        sample each row belongs to: per-sample forward arguments are expanded by it (without
        it only a batch of exactly the explained samples can be evaluated).
        """
        n = len(X)
        if n == 0:
            raise ValueError(f"cannot evaluate the model on zero rows of {what}")
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if len(rows) != n:
                raise ValueError(f"internal error: {len(rows)} row ids for {n} {what}")
        parts = []
        for start in range(0, n, self.batch_size):
            chunk = X[start:start + self.batch_size]
            if isinstance(chunk, np.ndarray):
                arg = self._frame(chunk, copy)
            else:
                arg = _copy(chunk) if copy else chunk
            sub = None if rows is None else rows[start:start + self.batch_size]
            out = _to_numpy(self._fn(arg, what, sub))
            if self.numeric:
                check_numeric(out, self.method)
            if out.ndim == 0 or len(out) != len(chunk):
                raise ValueError(
                    f"model returned {'a scalar' if out.ndim == 0 else f'{len(out)} rows'} for "
                    f"{len(chunk)} {what}; a predict function must return one row per input"
                )
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                bad = int((~np.isfinite(out)).sum())
                raise ValueError(f"model returned {bad} NaN or Inf scores on {what}; explanations "
                                 "need finite outputs")
            parts.append(out.astype(np.float64) if out.dtype.kind in "biuf" else out)
            self.n_evals += len(chunk)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _plain(fn):
    """A predict function called with the rows only (``what`` is for torch's input checks)."""
    def call(X, what, rows=None):
        return X.call(fn) if isinstance(X, Parts) else fn(X)

    return call


class _Batch:
    """Rows handed through :class:`~lumos.core.inputs.BoundModel` (which reads ``shape[0]``)."""

    def __init__(self, X):
        self.X = X
        self.shape = (len(X),)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _n_samples(inputs: Any) -> int:
    """The number of explained samples of ``inputs`` (one table, or a tuple/dict of them)."""
    if inputs is None:
        raise ValueError("internal error: forward_args need the explained inputs")
    if isinstance(inputs, Mapping):
        inputs = next(iter(inputs.values()))
    elif isinstance(inputs, (tuple, list)) and inputs and not isinstance(inputs[0], str) and (
            hasattr(inputs[0], "shape")):
        inputs = inputs[0]
    return len(inputs)


def _check_clash(inputs: Any, kwargs: Mapping) -> None:
    if isinstance(inputs, Mapping):
        clash = sorted(set(map(str, inputs)) & set(kwargs))
        if clash:
            raise ValueError(f"forward_args: {clash} are also explained inputs")


def _copy(chunk):
    """A copy of a chunk that is not a numpy array (DataFrame, tensor, list of texts, Parts)."""
    if isinstance(chunk, Parts):
        return chunk.copy()
    if hasattr(chunk, "clone"):  # a torch tensor
        return chunk.detach().clone()
    if hasattr(chunk, "copy") and hasattr(chunk, "iloc"):  # a DataFrame
        return chunk.copy(deep=True)
    if isinstance(chunk, list):
        return list(chunk)
    return chunk


def _to_numpy(out) -> np.ndarray:
    if hasattr(out, "detach"):
        return out.detach().cpu().numpy()
    if hasattr(out, "to_numpy"):
        return out.to_numpy()
    return np.asarray(out)


def _booster_predict(model):
    """``xgboost.Booster`` predicts on a DMatrix; ``lightgbm.Booster`` and others on arrays."""
    if type(model).__module__.split(".")[0] != "xgboost":
        return model.predict
    import xgboost

    def predict(X):
        return model.predict(xgboost.DMatrix(X, enable_categorical=hasattr(X, "columns")))

    return predict


def _user_stacklevel() -> int:
    """The stack level of the first frame outside lumos (where the user called it)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("lumos."):
        frame, level = frame.f_back, level + 1
    return level


def _torch_predict(model, inputs: Any = None, forward_args: Any = None):
    """A torch module called like every torch method calls it (see the module docstring).

    With several inputs or forward arguments the module is bound to them by
    :func:`lumos.core.inputs.bind` (as torch methods do): the rows of the inputs are packed into
    one tensor (integer inputs cast back to their dtype on the way in) and the per-sample
    arguments expanded by ``rows``.
    """
    import torch

    from .inputs import bind
    from .torch_model import ModelGuard, as_tensor, check_input_shape, forward, model_device, model_dtype
    from .torch_model import warn_if_training

    # once per adapter (one per method call), pointing at the user's line
    warn_if_training(model, stacklevel=_user_stacklevel() + 1)
    device, dtype = model_device(model), model_dtype(model) or torch.float32
    bound, packing = model, None
    if inputs is not None:
        bound, _, packing = bind(model, inputs, forward_args, dtype=dtype, device=device)

    def tensor(X, name):
        if hasattr(X, "iloc"):  # a DataFrame of numbers
            X = X.to_numpy(copy=True)  # writable: torch warns on a read-only array
        elif isinstance(X, np.ndarray) and not X.flags.writeable:
            X = X.copy()
        return as_tensor(X, device, name=name, dtype=dtype)

    def predict(X, what, rows=None):
        with ModelGuard(model), torch.no_grad():
            if isinstance(X, Parts):
                x = packing.pack([tensor(p, f"{what} ({k})") for k, p in zip(X.names, X.items)],
                                 dtype, device)
            else:
                x = tensor(X, what)
                check_input_shape(model, x, what)
            return forward(bound, x, what, rows=None if bound is model else rows).detach().cpu()

    predict.__name__ = type(model).__name__
    return predict


def as_blackbox(model: Any, X=None, output: str = "auto", batch_size: int | None = None,
                method: str = "") -> BlackBox:
    """Wrap ``model``; when ``X`` is a DataFrame, its column names and dtypes are kept."""
    columns = dtypes = None
    if X is not None and hasattr(X, "columns") and hasattr(X, "dtypes"):
        columns, dtypes = list(X.columns), X.dtypes.to_dict()
    return BlackBox(model, columns=columns, dtypes=dtypes, output=output, batch_size=batch_size,
                    method=method)
