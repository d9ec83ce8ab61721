"""How a metric reads an explanation as *features*: image pixels (all channels of a pixel form one
feature, ranked by the channel sum of the attribution), superpixels or any other grouping given as
a label map, table columns, tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.explanation import Explanation

__all__ = ["Layout", "layout", "check_explanation"]


def check_explanation(explanation: Any, name: str = "explanation", inputs: bool = True) -> Explanation:
    if not isinstance(explanation, Explanation):
        raise TypeError(
            f"{name} must be a lumos Explanation (from lumos.explain); got {type(explanation).__name__}"
        )
    if inputs and explanation.inputs is None:
        raise ValueError(f"{name} has no inputs: metrics that change the input need the explained inputs")
    if not np.issubdtype(explanation.values.dtype, np.number):
        raise TypeError(f"{name}.values must be numeric; got dtype {explanation.values.dtype}")
    if not np.isfinite(explanation.values).all():
        raise ValueError(f"{name}.values contain NaN or Inf")
    return explanation


@dataclass
class Layout:
    """An explanation read as features.

    Attributes
    ----------
    map : ndarray of float64, shape (n, *map_shape)
        The attribution per map element: for images the channel sum of the attribution per pixel
        (a CAM's single channel as is), for tables and token sequences the values themselves, for
        token embeddings the sum over the embedding axis.
    abs_map : ndarray of float64, shape (n, *map_shape)
        The same reduction of ``|values|`` (the attribution's magnitude per element).
    map_shape : tuple
        Shape of one map (``(H, W)`` for images).
    expand : tuple of int
        Where axes are inserted to broadcast a map-shaped array over one input sample
        (the channel axis of images, the embedding axis of tokens).
    labels : ndarray of int64, shape (1 or n, prod(map_shape))
        The feature each map element belongs to (one per pixel unless ``features`` grouped them).
    n_features : ndarray of int, shape (n,)
        Features per sample (segmentations can differ per image).
    """

    map: np.ndarray
    abs_map: np.ndarray
    map_shape: tuple
    expand: tuple
    labels: np.ndarray
    n_features: np.ndarray
    input_shape: tuple
    description: str

    @property
    def n(self) -> int:
        return len(self.map)

    @property
    def F(self) -> int:
        """The largest feature count over samples (arrays of features are padded to it)."""
        return int(self.n_features.max())

    def feature_sums(self, maps: np.ndarray) -> np.ndarray:
        """Sum a (n, *map_shape) array within each feature: (n, F), zero for padding features."""
        n, F = len(maps), self.F
        flat = maps.reshape(n, -1).astype(np.float64)
        labels = np.broadcast_to(self.labels, flat.shape)
        offsets = (np.arange(n) * F)[:, None]
        return np.bincount((labels + offsets).ravel(), weights=flat.ravel(), minlength=n * F).reshape(n, F)

    def valid(self) -> np.ndarray:
        """(n, F) bool: which padded feature slots exist."""
        return np.arange(self.F)[None, :] < self.n_features[:, None]

    def element_mask(self, feature_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(m, F) bool per row → (m, *input-broadcastable map shape) bool mask of input elements."""
        labels = torch.as_tensor(self.labels, device=feature_mask.device)
        lab = labels.expand(len(rows), -1) if labels.shape[0] == 1 else labels[rows.to(labels.device)]
        m = torch.gather(feature_mask, 1, lab).reshape((len(rows),) + self.map_shape)
        for ax in self.expand:
            m = m.unsqueeze(ax + 1)
        return m

    def to_input(self, maps: torch.Tensor) -> torch.Tensor:
        """(m, *map_shape) → broadcastable over (m, *input_shape)."""
        for ax in self.expand:
            maps = maps.unsqueeze(ax + 1)
        return maps


def layout(explanation: Explanation, features: Any = None, name: str = "features") -> Layout:
    """Read ``explanation`` as features (see :class:`Layout`).

    Parameters
    ----------
    explanation : Explanation
        With ``inputs``. ``values`` may have the shape of the inputs, the shape of the inputs
        with one channel (``(n, 1, H, W)``, class activation maps) or without the channel axis
        (``(n, H, W)``), or without the trailing embedding axis (token attributions for
        ``(n, T, D)`` embeddings).
    features : None or array of int
        ``None``: each pixel (all its channels together), each table column, each token is one
        feature. An int array of labels of the map shape (``(H, W)``, shared) or ``(n, H, W)``
        (per sample) groups elements into features: superpixels (:func:`lumos.metrics.superpixels`),
        patches, groups of columns. Labels need not be contiguous.
    """
    values = np.asarray(explanation.values)
    n = len(values)
    if explanation.inputs is None:
        raise ValueError("explanation has no inputs: metrics that change the input need them")
    ishape = tuple(np.shape(explanation.inputs)[1:])
    vshape = values.shape[1:]
    v = values.astype(np.float64)
    if vshape == ishape and len(ishape) >= 3:  # images, volumes: channels first
        m, am, expand, desc = v.sum(1), np.abs(v).sum(1), (0,), "pixels"
    elif vshape == ishape:
        m, am, expand, desc = v, np.abs(v), (), "elements"
    elif len(ishape) >= 3 and vshape == (1,) + ishape[1:]:
        m, am, expand, desc = v[:, 0], np.abs(v[:, 0]), (0,), "pixels"
    elif len(ishape) >= 3 and vshape == ishape[1:]:
        m, am, expand, desc = v, np.abs(v), (0,), "pixels"
    elif len(ishape) >= 2 and vshape == ishape[:-1]:
        m, am, expand, desc = v, np.abs(v), (len(ishape) - 1,), "tokens"
    else:
        raise ValueError(
            f"explanation: values of shape {tuple(values.shape)} do not match inputs of shape "
            f"{(n,) + ishape}; metrics need one value per input element, per pixel ((n, 1, H, W) or "
            "(n, H, W) for images) or per token. Upsample low-resolution maps first."
        )
    map_shape = tuple(m.shape[1:])
    size = int(np.prod(map_shape)) if map_shape else 1
    if features is None:
        labels = np.arange(size, dtype=np.int64)[None]
        counts = np.full(n, size)
    else:
        lab = np.asarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features)
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"{name} must be an int array of feature labels; got dtype {lab.dtype}")
        if lab.shape == map_shape:
            lab = lab.reshape(1, -1)
        elif lab.shape == (n,) + map_shape:
            lab = lab.reshape(n, -1)
        else:
            raise ValueError(
                f"{name} must be a label array of shape {map_shape} (shared) or {(n,) + map_shape} "
                f"(per sample); got {lab.shape}"
            )
        # relabel to 0..k-1 per row (labels need not be contiguous)
        rel = np.empty(lab.shape, dtype=np.int64)
        counts = np.empty(len(lab), dtype=np.int64)
        for r in range(len(lab)):  # once per segmentation, not a model evaluation
            uniq, inv = np.unique(lab[r], return_inverse=True)
            rel[r], counts[r] = inv.reshape(-1), len(uniq)
        labels = rel
        counts = np.broadcast_to(counts, (n,)).copy() if len(counts) == 1 else counts
        desc = "features"
    return Layout(m, am, map_shape, expand, labels, np.asarray(counts, dtype=np.int64), ishape, desc)
