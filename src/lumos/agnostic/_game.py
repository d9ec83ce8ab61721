"""The value function shared by the perturbation explainers.

``Game`` binds a black-box model, a masker bound to the explained inputs and a target: ``v(rows,
Z)`` is the explained scalar of sample ``rows[k]`` with only the features in coalition ``Z[k]``
kept, averaged over the masker's background rows (the interventional value function,
``v(S) = E_b f(x_S, b_{not S})``). Coalitions of many samples are evaluated together, so the model
sees large batches; the number of model rows is counted per sample.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.blackbox import BlackBox
from ..core.execution import check_batch_size, progress_bar
from ..core.explanation import Explanation
from ..core.targets import resolve_target
from .maskers import MaskedInputs, Masker, default_masker

__all__ = ["Game", "clean_params", "row_generators"]


def row_generators(seed, n: int) -> list[np.random.Generator]:
    """One generator per explained sample: a sample's draws do not depend on the others."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None; got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class Game:
    """A model, explained inputs behind a masker, and a target scalar.

    Parameters
    ----------
    model : callable, estimator, pipeline, booster or torch module
    inputs : DataFrame, array, image batch or list of texts
    target : int, sequence, "predicted", callable or None
    masker : Masker, optional
    background : DataFrame or array, optional
        Background data for tables (a :class:`~lumos.agnostic.maskers.TabularMasker` is built).
    output : {"auto", "predict_proba", "decision_function", "predict"}
        The estimator's scoring function (see :class:`~lumos.core.blackbox.BlackBox`).
    batch_size : int, optional
        Model rows per call (default: the masker's, 16384 table rows, 64 images, 512 texts).
    method : str
        For error messages.
    """

    def __init__(self, model: Any, inputs: Any, target: Any = None, masker: Masker | None = None,
                 background: Any = None, output: str = "auto", batch_size: int | None = None,
                 method: str = "", progress: bool | None = None):
        masker = default_masker(inputs, masker, background, method or "this method")
        self.data: MaskedInputs = masker.bind(inputs)
        self.batch = check_batch_size(batch_size) if batch_size is not None else self.data.default_batch
        self.f = BlackBox(model, output=output, batch_size=self.batch)
        self.progress = progress
        self.method = method
        out = self.f(self.data.originals())
        if out.dtype.kind not in "biuf":
            raise ValueError(f"model returned {out.dtype} scores; {method} needs numeric outputs")
        self.raw_output = out
        self.target = resolve_target(target, out)
        self.fx = np.asarray(self.target.select(out), dtype=np.float64)
        self.n = self.data.n
        self.M = self.data.n_features.astype(np.int64)
        self.evals = np.full(self.n, 1, dtype=np.int64)  # the call above: one row per sample
        self._empty: np.ndarray | None = None

    @property
    def weights(self) -> np.ndarray:
        return self.data.weights

    def value(self, rows: np.ndarray, Z: np.ndarray, desc: str = "") -> np.ndarray:
        """``v`` of coalitions ``Z`` (m, M) of samples ``rows`` (m,): shape (m,) float64."""
        rows = np.asarray(rows, dtype=np.int64)
        Z = np.asarray(Z, dtype=bool)
        m = len(rows)
        B = self.data.n_background
        out = np.empty(m, dtype=np.float64)
        if m == 0:
            return out
        per = max(1, self.batch // B)  # coalitions per model call
        bar = progress_bar(m, desc or self.method, self.progress if m > 4 * per else False,
                           unit="coalition")
        with bar:
            for start in range(0, m, per):
                sl = slice(start, min(start + per, m))
                r = rows[sl]
                inp = self.data.masked(r, Z[sl])
                raw = self.f(inp)
                s = np.asarray(self.target.select(raw, np.repeat(r, B)), dtype=np.float64)
                out[sl] = _weighted_mean(s.reshape(-1, B), self.weights)
                bar.update(sl.stop - sl.start)
        np.add.at(self.evals, rows, B)
        return out

    def full_value(self) -> np.ndarray:
        """``v(N)`` per sample: ``f(x)`` averaged over the background weights the way every other
        coalition is, so that a feature the model ignores gets exactly zero (it equals ``f(x)``
        up to rounding)."""
        B = self.data.n_background
        return _weighted_mean(np.repeat(self.fx[:, None], B, axis=1), self.weights)

    def empty_value(self) -> np.ndarray:
        """``v(∅)`` per sample: the base value (the weighted mean output over the background)."""
        if self._empty is None:
            self._empty = self.value(np.arange(self.n), np.zeros((self.n, self.data.max_features), bool))
        return self._empty

    def explanation(self, per_feature: np.ndarray, method: str, params: dict, *, baseline=None,
                    meta: dict | None = None, sample_meta: dict | None = None,
                    feature_meta: dict | None = None) -> Explanation:
        """Assemble the result; ``feature_meta`` arrays (n, M) are laid out like ``per_feature``
        is in tables and texts, and kept per feature (segment) for images."""
        values, fields = self.data.layout(np.asarray(per_feature, dtype=np.float64))
        m = {"target": self.target.description, "score": self.f.score_name,
             "n_background": self.data.n_background, "modality": self.data.modality}
        m.update(fields["meta"])
        m.update(meta or {})
        smeta = dict(fields["sample_meta"])
        smeta["n_evals"] = self.evals.copy()
        smeta.update(sample_meta or {})
        smeta.update(feature_meta or {})
        m.update(smeta)
        p = clean_params(params)
        p.update(self.data.describe())
        return Explanation(
            values=values, inputs=fields["inputs"], target=self.target.indices, output=self.fx,
            baseline_output=baseline, method=method, params=p, meta=m,
            feature_names=fields["feature_names"], sample_keys=tuple(smeta),
        )


def _weighted_mean(s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise ``s @ w`` summed in a fixed order, so that equal rows give bit-equal values
    wherever they sit in a batch (BLAS may round differently by position): a feature the model
    ignores then gets exactly zero."""
    acc = s[:, 0] * w[0]
    for b in range(1, s.shape[1]):
        acc = acc + s[:, b] * w[b]
    return acc


def clean_params(params: dict) -> dict:
    """JSON-able parameters (arrays and callables described, data never copied)."""
    out = {}
    for k, v in params.items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(a, (bool, int, float, str)) for a in v):
            out[k] = list(v)
        elif callable(v) and not hasattr(v, "shape"):
            out[k] = getattr(v, "__name__", type(v).__name__)
        else:
            out[k] = f"<{type(v).__name__}>"
    return out
