"""Localisation: does the explanation point at the known evidence?

Each metric compares the attribution map (for images the per-pixel channel sum of the values, a
CAM's single channel as is; for tables and token sequences the values) with a ground-truth
``masks`` of the map's shape: ``(n, H, W)``, ``(H, W)`` shared, or ``(n, 1, H, W)``.

- :func:`pointing_game`: is the maximum inside the mask? (Zhang et al., 2018)
- :func:`relevance_mass_accuracy`: share of positive relevance inside the mask (Arras et al., 2022)
- :func:`relevance_rank_accuracy`: share of the top-K elements inside the mask, K = mask size
  (Arras et al., 2022)
- :func:`localisation_auc`: ROC AUC of the map as a score for "element is in the mask"
  (Fawcett, 2006).

All give 1 for the mask itself. For a map of independent noise, the first three have the chance
level ``mask area / map area`` (in ``meta["chance"]``) and the AUC 0.5.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.explanation import Explanation
from ..core.validation import check_number
from .layouts import check_explanation, layout
from .registry import register_metric
from .results import MetricResult
from .streams import row_rng

__all__ = ["pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "localisation_auc"]


def _maps_and_masks(explanation: Explanation, masks: Any):
    explanation = check_explanation(explanation)
    lay = layout(explanation)
    n, shape = lay.n, lay.map_shape
    m = np.asarray(masks.detach().cpu().numpy() if hasattr(masks, "detach") else masks)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("masks must be boolean (or 0/1): True where the evidence is")
        m = m.astype(bool)
    if m.shape == shape:
        m = np.broadcast_to(m, (n,) + shape)
    elif m.shape == (n, 1) + shape:
        m = m[:, 0]
    elif m.shape != (n,) + shape:
        raise ValueError(f"masks must have shape {(n,) + shape} (or {shape} shared); got {m.shape}")
    flat_mask = m.reshape(n, -1)
    area = flat_mask.mean(1)
    return lay.map.reshape(n, -1), flat_mask, area, explanation


def _result(name, scores, explanation, area, params=None, **meta):
    scores = np.where(area > 0, scores, np.nan)  # no evidence: nothing to localise
    return MetricResult(name, scores, "higher", explanation.method, params=params or {},
                        meta={"chance": area, **meta})


def _dilate(mask: np.ndarray, shape: tuple, tolerance: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation
    from skimage.morphology import disk

    if tolerance == 0:
        return mask
    if len(shape) != 2:
        raise ValueError("tolerance applies to 2-D maps (images)")
    fp = disk(tolerance).astype(bool)[None]
    return binary_dilation(mask.reshape((-1,) + shape), structure=fp).reshape(mask.shape)


@register_metric("pointing_game", "localisation", "higher", ("masks",),
                 "Whether the map's maximum lies in the ground-truth mask (Zhang et al., 2018)")
def pointing_game(explanation: Explanation, masks: Any, *, tolerance: int = 0) -> MetricResult:
    """Pointing game (Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, 2018, "Top-Down Neural Attention
    by Excitation Backprop", IJCV).

    A hit (1) when the map's maximum lies inside the mask. Where several elements share the
    maximum, the score is the share of them inside the mask (a constant map scores the mask's area,
    not a lucky first pixel).

    Parameters
    ----------
    masks : bool array, shape (n, *map_shape) or map_shape
    tolerance : int, default 0
        Pixels by which the mask is dilated (the paper uses 15 at 224 px).
    """
    tolerance = check_number(tolerance, "tolerance", low=0, integer=True)
    maps, masks, area, explanation = _maps_and_masks(explanation, masks)
    lay_shape = layout(explanation).map_shape
    masks = _dilate(masks, lay_shape, tolerance)
    top = maps == maps.max(1, keepdims=True)
    hits = (top & masks).sum(1) / top.sum(1)
    return _result("pointing_game", hits, explanation, area, {"tolerance": tolerance})


@register_metric("relevance_mass_accuracy", "localisation", "higher", ("masks",),
                 "Share of the positive relevance inside the ground-truth mask (Arras et al., 2022)")
def relevance_mass_accuracy(explanation: Explanation, masks: Any) -> MetricResult:
    """Relevance mass accuracy (Arras, Osman & Samek, 2022, "CLEVR-XAI: A benchmark dataset for the
    ground truth evaluation of neural network explanations", Information Fusion).

    ``sum of positive relevance inside the mask / sum of positive relevance``; NaN for a map
    without positive relevance.
    """
    maps, masks, area, explanation = _maps_and_masks(explanation, masks)
    pos = np.clip(maps, 0, None)
    total = pos.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (pos * masks).sum(1) / np.where(total > 0, total, 1.0), np.nan)
    return _result("relevance_mass_accuracy", share, explanation, area)


@register_metric("relevance_rank_accuracy", "localisation", "higher", ("masks",),
                 "Share of the K most relevant elements inside the mask, K = mask size (Arras et al., 2022)")
def relevance_rank_accuracy(explanation: Explanation, masks: Any, *, seed: int = 0) -> MetricResult:
    """Relevance rank accuracy (Arras, Osman & Samek, 2022).

    With ``K`` the number of mask elements: the share of the ``K`` highest-relevance elements that
    lie inside the mask. Ties at the cut are broken at random (``seed``).
    """
    seed = check_number(seed, "seed", low=0, integer=True)
    maps, masks, area, explanation = _maps_and_masks(explanation, masks)
    n, m = maps.shape
    tie = np.stack([row_rng(seed, 19, i).random(m) for i in range(n)])
    order = np.lexsort((tie, -maps), axis=-1)  # descending relevance, random among ties
    k = masks.sum(1)
    in_top = np.arange(m)[None, :] < k[:, None]
    hit = np.take_along_axis(masks, order, axis=1) & in_top
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = hit.sum(1) / np.where(k > 0, k, 1)
    return _result("relevance_rank_accuracy", acc, explanation, area, {"seed": seed})


@register_metric("localisation_auc", "localisation", "higher", ("masks",),
                 "ROC AUC of the map as a detector of the mask's elements (Fawcett, 2006)")
def localisation_auc(explanation: Explanation, masks: Any) -> MetricResult:
    """Area under the ROC curve of the attribution map as a score for mask membership
    (Fawcett, 2006, "An introduction to ROC analysis").

    Computed from ranks (Mann–Whitney U, average ranks for ties): 1 when every mask element
    outranks every other element, 0.5 for noise; NaN for an empty or full mask.
    """
    from scipy.stats import rankdata

    maps, masks, area, explanation = _maps_and_masks(explanation, masks)
    ranks = rankdata(maps, axis=1)
    pos = masks.sum(1)
    neg = masks.shape[1] - pos
    u = (ranks * masks).sum(1) - pos * (pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((pos > 0) & (neg > 0), u / np.where((pos > 0) & (neg > 0), pos * neg, 1), np.nan)
    res = _result("localisation_auc", auc, explanation, area)
    res.meta["chance"] = np.full(len(auc), 0.5)
    return res
