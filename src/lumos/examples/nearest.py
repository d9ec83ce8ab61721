"""Nearest training examples of inputs, in the input space or in any layer's representation.

"These training cases look the same to the network": the training points closest to a query in a
layer's activations (Papernot & McDaniel, *Deep k-Nearest Neighbors*, 2018, use every layer this
way). Distances are exact in every mode: a brute-force search (``torch.cdist`` in chunks, float64)
for small data, scikit-learn's ``KDTree`` (low dimensions) or ``BallTree`` otherwise.

>>> from lumos.examples import neighbours
>>> nb = neighbours(test_images, train_images, k=5, model=model, at="pool")
>>> nb.indices[0], nb.distances[0]      # the 5 closest training images of test image 0
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._represent import represent

__all__ = ["neighbours", "Neighbours"]

_METRICS = ("euclidean", "cosine")
_ALGORITHMS = ("auto", "brute", "kd_tree", "ball_tree")
# brute force up to this many training points (auto); trees above it
_BRUTE_MAX = 20000
# KD trees lose to ball trees above this dimension (scikit-learn's own guidance is ~20)
_KD_MAX_DIM = 20


@dataclass
class Neighbours:
    """The ``k`` nearest training examples of each query.

    Attributes
    ----------
    indices : ndarray of int, (n_queries, k)
        Rows of the training data, nearest first (ties: the lower index first).
    distances : ndarray of float64, (n_queries, k)
        Euclidean distance, or cosine distance ``1 - cos``, in the representation used.
    metric, algorithm : str
        The distance and the search that was used (``"brute"``, ``"kd_tree"`` or ``"ball_tree"``).
    at : str or None
        The layer whose activations were compared (``None``: the inputs themselves).
    """

    indices: np.ndarray
    distances: np.ndarray
    metric: str
    algorithm: str
    at: Any = None

    def plot(self, queries: Any, train: Any, index: int = 0, ax=None, class_names=None, labels=None):
        """The query image beside its neighbours, each titled with its distance (images only)."""
        from ._pictures import example_row

        idx = self.indices[index]
        return example_row(queries[index], [train[int(i)] for i in idx],
                           [f"#{int(i)}\nd={d:.3g}" + ("" if labels is None else
                                                       f"\n{_name(labels[int(i)], class_names)}")
                            for i, d in zip(idx, self.distances[index])],
                           query_title="query", ax=ax)


def _name(label, class_names):
    label = int(label)
    return class_names[label] if class_names is not None else str(label)


def _normalise(a: np.ndarray, name: str) -> np.ndarray:
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"{name}: {int((norm == 0).sum())} points are zero vectors, whose cosine distance "
                         "is undefined; use metric='euclidean'")
    return a / norm


def _brute(q: np.ndarray, t: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    tt = torch.from_numpy(t)
    idx_out, dist_out = [], []
    for i in range(0, len(q), chunk):
        d = torch.cdist(torch.from_numpy(q[i:i + chunk]), tt, compute_mode="donot_use_mm_for_euclid_dist")
        d = d.numpy()
        # a stable sort: equal distances keep the lower training index first
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        idx_out.append(order)
        dist_out.append(np.take_along_axis(d, order, axis=1))
    return np.concatenate(idx_out), np.concatenate(dist_out)


def neighbours(inputs: Any, train: Any, k: int = 5, *, model: Any = None, at: Any = None,
               metric: str = "euclidean", algorithm: str = "auto", batch_size: int | None = None,
               layer_side: str = "output") -> Neighbours:
    """The ``k`` nearest training examples of every input, with their distances.

    Parameters
    ----------
    inputs : array, tensor or DataFrame, (n_queries, ...)
        The queries.
    train : array, tensor or DataFrame, (n_train, ...)
        The training examples searched.
    k : int, default 5
    model : torch.nn.Module, optional
        Compare activations of layer ``at`` of this model instead of the raw inputs (streamed in
        batches of ``batch_size``).
    at : str, optional
        Dotted layer name (``None`` with a model: its output).
    metric : {"euclidean", "cosine"}, default "euclidean"
        ``cosine`` is ``1 - cos(a, b)``, searched as the euclidean distance of unit vectors
        (``|a - b|² = 2 (1 - cos)``), so trees serve it too.
    algorithm : {"auto", "brute", "kd_tree", "ball_tree"}, default "auto"
        All are exact. ``auto``: brute force up to 20,000 training points, then a KD tree up to 20
        dimensions and a ball tree above.
    batch_size : int, optional
        Rows per forward pass, and queries per brute-force chunk.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Neighbours
    """
    from ..core.execution import check_batch_size
    from ..core.validation import check_choice, check_number

    k = check_number(k, "k", low=1, integer=True)
    check_choice(metric, "metric", _METRICS)
    check_choice(algorithm, "algorithm", _ALGORITHMS)
    t = represent(train, model, at, batch_size=batch_size, layer_side=layer_side, name="train")
    q = represent(inputs, model, at, batch_size=batch_size, layer_side=layer_side, name="inputs")
    if q.shape[1] != t.shape[1]:
        raise ValueError(f"inputs and train have {q.shape[1]} and {t.shape[1]} features per sample; "
                         "they must match")
    if k > len(t):
        raise ValueError(f"k must be at most the number of training examples ({len(t)}); got {k}")
    if metric == "cosine":
        q, t = _normalise(q, "inputs"), _normalise(t, "train")
    if algorithm == "auto":
        algorithm = "brute" if len(t) <= _BRUTE_MAX else ("kd_tree" if t.shape[1] <= _KD_MAX_DIM else "ball_tree")
    if algorithm == "brute":
        chunk = max(1, min(check_batch_size(batch_size), (1 << 25) // max(1, len(t))))
        idx, dist = _brute(q, t, k, chunk)
    else:
        from sklearn.neighbors import BallTree, KDTree

        tree = (KDTree if algorithm == "kd_tree" else BallTree)(t)
        dist, idx = tree.query(q, k=k)  # sorted, nearest first
        idx = np.asarray(idx, dtype=np.int64)
    if metric == "cosine":
        dist = dist ** 2 / 2.0  # unit vectors: |a - b|² / 2 = 1 - cos
    return Neighbours(indices=idx.astype(np.int64), distances=np.asarray(dist, dtype=np.float64),
                      metric=metric, algorithm=algorithm, at=at)
