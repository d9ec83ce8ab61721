"""The common representation of every parsed tree model: flat node arrays.

Each parser (:mod:`.sklearn`, :mod:`.xgboost`, :mod:`.lightgbm`) reads a fitted model into one
:class:`TreeEnsemble` through a :class:`Builder`; the TreeSHAP arithmetic
(:mod:`lumos.agnostic.tree_shap`) only ever sees this structure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["TreeEnsemble", "Builder"]


@dataclass
class TreeEnsemble:
    """All trees of a model as flat node arrays (node indices are global across trees).

    A row goes to ``left`` at an internal node when ``x[feature] <= threshold``, to ``left`` when
    ``x[feature]`` is missing and ``nan_left`` is set, else to ``right``. The model's raw output
    is ``offset + Σ_trees value[leaf]``, one column per output.

    Attributes
    ----------
    left, right : ndarray of int64, shape (N,)
        Children (``-1`` at leaves).
    feature : ndarray of int64, shape (N,)
        Split feature (``-1`` at leaves).
    threshold : ndarray of float64, shape (N,)
    nan_left : ndarray of bool, shape (N,)
    cover : ndarray of float64, shape (N,)
        Training cover (weighted sample count or hessian sum) of each node.
    value : ndarray of float64, shape (N, K)
        Each leaf's contribution to each of the ``K`` outputs (scaling already applied).
    roots : ndarray of int64, shape (T,)
    offset : ndarray of float64, shape (K,)
        The constant added to the trees' sum (initial prediction, base score).
    n_features : int
    input_dtype : numpy dtype
        The precision the model compares features in (float32 for scikit-learn trees and
        XGBoost: rows are rounded to it before comparing).
    output_name, output_space, model_type : str
        What is explained (recorded in the explanation's meta).
    reference : callable, optional
        ``X -> (n, K)`` the model's own raw output, to check the parse against.
    link : str
        How the raw output becomes a probability: ``"logistic"`` (``1 / (1 + exp(-link_scale *
        raw))``, binary classifiers' margins), ``"softmax"`` (multi-class margins),
        ``"identity"`` (the raw output is already the prediction: regressors, forest
        probabilities) or ``"other"`` (a link lumos does not apply).
    link_scale : float
        The logistic's slope (LightGBM's ``sigmoid`` parameter; 1 elsewhere).
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    nan_left: np.ndarray
    cover: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    offset: np.ndarray
    n_features: int
    input_dtype: Any = np.float64
    output_name: str = "predict"
    output_space: str = "raw"
    model_type: str = ""
    reference: Callable | None = None
    link: str = "identity"
    link_scale: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        return self.value.shape[1]

    @property
    def n_trees(self) -> int:
        return len(self.roots)


class Builder:
    """Collects trees (local node indices) into one :class:`TreeEnsemble`.

    Trees are only stored by :meth:`add`; the index shifts and leaf fix-ups are done once, over
    all nodes, in :meth:`build` (a forest of hundreds of trees parses in a few numpy calls).
    """

    _FIELDS = ("left", "right", "feature", "threshold", "nan_left", "cover", "value")

    def __init__(self, n_outputs: int):
        self.k = n_outputs
        self.parts: dict[str, list] = {f: [] for f in self._FIELDS}
        self.outputs: list[int] = []
        self.multi: list[bool] = []

    def add(self, left, right, feature, threshold, nan_left, cover, value, output=None):
        """Add one tree. ``value`` is (n_nodes,) for ``output``'s column, or (n_nodes, K)."""
        for f, a in zip(self._FIELDS, (left, right, feature, threshold, nan_left, cover, value)):
            self.parts[f].append(a)
        self.outputs.append(0 if output is None else int(output))
        self.multi.append(np.ndim(value) == 2)

    def build(self, offset, n_features, **kw) -> TreeEnsemble:
        if not self.outputs:
            raise ValueError("model: the ensemble has no trees (is it fitted?)")
        sizes = np.array([len(a) for a in self.parts["left"]], dtype=np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        shift = np.repeat(starts, sizes)
        left = np.concatenate([np.asarray(a, dtype=np.int64) for a in self.parts["left"]])
        right = np.concatenate([np.asarray(a, dtype=np.int64) for a in self.parts["right"]])
        leaf = left < 0
        n = len(left)
        value = np.zeros((n, self.k))
        if any(self.multi):
            for s0, m, v, is2 in zip(starts, sizes, self.parts["value"], self.multi):
                if is2:
                    value[s0:s0 + m] = np.asarray(v, dtype=np.float64)
        flat = [np.asarray(v, dtype=np.float64) for v, is2 in zip(self.parts["value"], self.multi)
                if not is2]
        if flat:
            rows = np.concatenate([np.arange(s0, s0 + m) for s0, m, is2
                                   in zip(starts, sizes, self.multi) if not is2])
            cols = np.repeat([o for o, is2 in zip(self.outputs, self.multi) if not is2],
                             [m for m, is2 in zip(sizes, self.multi) if not is2])
            value[rows, cols] = np.concatenate(flat)
        value[~leaf] = 0.0
        return TreeEnsemble(
            left=np.where(leaf, -1, left + shift), right=np.where(leaf, -1, right + shift),
            feature=np.where(leaf, -1, np.concatenate(
                [np.asarray(a, dtype=np.int64) for a in self.parts["feature"]])),
            threshold=np.concatenate([np.asarray(a, dtype=np.float64)
                                      for a in self.parts["threshold"]]),
            nan_left=np.concatenate([np.asarray(a).astype(bool) for a in self.parts["nan_left"]]),
            cover=np.concatenate([np.asarray(a, dtype=np.float64) for a in self.parts["cover"]]),
            value=value, roots=starts,
            offset=np.broadcast_to(np.asarray(offset, dtype=np.float64), (self.k,)).copy(),
            n_features=int(n_features), **kw,
        )
