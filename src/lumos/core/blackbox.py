"""The black-box model adapter: any predict function, scikit-learn estimator or pipeline,
XGBoost/LightGBM model or torch module, seen as ``f(X) -> scores`` on batches.

Model-agnostic methods (LIME, Shapley values, occlusion, global effects) call the model only
through :class:`BlackBox`, which
- chooses the scoring function of an estimator sensibly (``predict_proba`` for classifiers,
  ``predict`` for regressors, ``decision_function`` when there are no probabilities) and records it;
- rebuilds pandas DataFrames with the user's column names and dtypes, so pipelines with
  column transformers and categorical string columns work;
- evaluates in chunks of ``batch_size`` rows and counts the rows it evaluated;
- checks every answer: the right number of rows, finite numbers.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from .execution import check_batch_size

__all__ = ["BlackBox", "as_blackbox"]


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
        Which scoring function of an estimator to use.
    batch_size : int, optional
        Rows per model call (default: all at once up to 4096).

    Attributes
    ----------
    n_evals : int
        Rows evaluated so far.
    score_name : str
        The scoring function used (recorded in the explanation's meta).
    """

    def __init__(self, model: Any, columns: Sequence[str] | None = None, dtypes=None,
                 output: str = "auto", batch_size: int | None = None):
        if isinstance(model, BlackBox):
            model = model.model
        self.model = model
        self.columns = list(columns) if columns is not None else None
        self.dtypes = dtypes
        self.batch_size = check_batch_size(batch_size) if batch_size is not None else 4096
        self.n_evals = 0
        self._fn, self.score_name = self._choose(model, output)

    @staticmethod
    def _choose(model: Any, output: str):
        valid = ("auto", "predict_proba", "decision_function", "predict")
        if output not in valid:
            raise ValueError(f"output must be one of {valid}; got {output!r}")
        # A torch module exists only if torch was imported: no need to pay for importing it.
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(model, torch.nn.Module):
            return _torch_predict(model), "torch forward"
        if output != "auto":
            fn = getattr(model, output, None)
            if fn is None:
                raise ValueError(f"model has no {output} method")
            return fn, output
        if hasattr(model, "predict") and hasattr(model, "fit"):  # an estimator
            is_clf = getattr(model, "_estimator_type", None) == "classifier" or hasattr(model, "classes_")
            try:
                from sklearn.base import is_classifier

                is_clf = is_clf or is_classifier(model)
            except Exception:  # pragma: no cover
                pass
            if is_clf and hasattr(model, "predict_proba"):
                return model.predict_proba, "predict_proba"
            if is_clf and hasattr(model, "decision_function"):
                return model.decision_function, "decision_function"
            return model.predict, "predict"
        if callable(model):
            return model, getattr(model, "__name__", type(model).__name__)
        if hasattr(model, "predict"):  # a fitted booster without the scikit-learn interface
            return _booster_predict(model), "predict"
        raise TypeError(
            "model must be a callable that scores a batch, a scikit-learn estimator or a torch "
            f"module; got {type(model).__name__}"
        )

    def _frame(self, X: np.ndarray):
        if self.columns is None:
            return X
        import pandas as pd

        df = pd.DataFrame(X, columns=self.columns)
        if self.dtypes is not None:
            df = df.astype(dict(self.dtypes))
        return df

    def __call__(self, X) -> np.ndarray:
        """Scores for the rows of ``X``: shape (n,) or (n, outputs)."""
        n = len(X)
        if n == 0:
            raise ValueError("cannot evaluate the model on zero rows")
        parts = []
        for start in range(0, n, self.batch_size):
            chunk = X[start:start + self.batch_size]
            out = self._fn(self._frame(chunk) if isinstance(chunk, np.ndarray) else chunk)
            out = _to_numpy(out)
            if out.ndim == 0 or len(out) != len(chunk):
                raise ValueError(
                    f"model returned {'a scalar' if out.ndim == 0 else f'{len(out)} rows'} for "
                    f"{len(chunk)} inputs; a predict function must return one row per input"
                )
            if out.dtype.kind in "fc" and not np.isfinite(out).all():
                raise ValueError("model returned NaN or Inf scores; explanations need finite outputs")
            parts.append(out.astype(np.float64) if out.dtype.kind in "biuf" else out)
            self.n_evals += len(chunk)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


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


def _torch_predict(model):
    import torch

    from .torch_model import model_device

    def predict(X):
        dev = model_device(model)
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(X), dtype=torch.float32, device=dev)
            return model(t).detach().cpu().numpy()

    predict.__name__ = type(model).__name__
    return predict


def as_blackbox(model: Any, X=None, output: str = "auto", batch_size: int | None = None) -> BlackBox:
    """Wrap ``model``; when ``X`` is a DataFrame, its column names and dtypes are kept."""
    columns = dtypes = None
    if X is not None and hasattr(X, "columns") and hasattr(X, "dtypes"):
        columns, dtypes = list(X.columns), X.dtypes.to_dict()
    return BlackBox(model, columns=columns, dtypes=dtypes, output=output, batch_size=batch_size)
