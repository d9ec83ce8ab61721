"""Feature ablation: remove groups of features together (pixels, superpixels, column groups)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ...core.registry import register
from ._base import constant_fill, make_fill, perturbation_call, spatial_axes

__all__ = ["feature_ablation", "superpixels"]

_SUPERPIXELS = ("slic", "quickshift")


def superpixels(images: Any, method: str = "slic", **params: Any) -> np.ndarray:
    """Superpixel labels of a batch of images with scikit-image.

    Parameters
    ----------
    images : Tensor or ndarray, shape (n, C, H, W)
        Channels first (lumos' layout); any value range (each image is scaled to [0, 1] for the
        segmentation only).
    method : {"slic", "quickshift"}, default "slic"
        :func:`skimage.segmentation.slic` (Achanta et al., 2012; default ``n_segments=50``,
        ``compactness=10``) or :func:`skimage.segmentation.quickshift` (Vedaldi & Soatto, 2008;
        default ``kernel_size=3``, ``max_dist=6``, ``ratio=0.5``, ``rng=0``).
    **params
        Passed to the scikit-image function (they override the defaults).

    Returns
    -------
    ndarray of int64, shape (n, 1, H, W)
        Labels 0..k-1 per image, broadcastable over the channels.
    """
    from skimage import segmentation

    if method not in _SUPERPIXELS:
        raise ValueError(f"superpixels: method must be one of {_SUPERPIXELS}; got {method!r}")
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(
            f"superpixels need images of shape (batch, channels, height, width); got shape {arr.shape}"
        )
    out = np.empty((arr.shape[0], 1) + arr.shape[2:], dtype=np.int64)
    for i, img in enumerate(arr.astype(np.float64)):
        lo, hi = img.min(), img.max()
        img = np.moveaxis((img - lo) / (hi - lo) if hi > lo else img * 0, 0, -1)
        gray = img.shape[-1] == 1
        if method == "slic":
            kw = {"n_segments": 50, "compactness": 10.0, "start_label": 0}
            kw.update(params)
            lab = segmentation.slic(img[..., 0] if gray else img, channel_axis=None if gray else -1, **kw)
        else:
            kw = {"kernel_size": 3, "max_dist": 6, "ratio": 0.5, "rng": 0,
                  "convert2lab": img.shape[-1] == 3}
            kw.update(params)
            lab = segmentation.quickshift(np.repeat(img, 3, -1) if gray else img, **kw)
        # dense labels 0..k-1 whatever the library numbered
        out[i, 0] = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)
    return out


def _column_groups(groups: Sequence | Mapping, n_features: int, columns: list[str] | None) -> np.ndarray:
    """Lists of column indices/names -> one label per column; columns in no group stand alone."""
    items = list(groups.values()) if isinstance(groups, Mapping) else list(groups)
    labels = np.full(n_features, -1, dtype=np.int64)
    for g, cols in enumerate(items):
        cols = [cols] if isinstance(cols, (str, int, np.integer)) else list(cols)
        if not cols:
            raise ValueError(f"groups: group {g} is empty")
        for c in cols:
            if isinstance(c, str):
                if columns is None or c not in columns:
                    raise ValueError(f"groups: unknown column {c!r}" + (
                        "" if columns is None else f"; the columns are {columns}"))
                c = columns.index(c)
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n_features:
                raise ValueError(f"groups: column {c!r} is not an index in 0..{n_features - 1}")
            if labels[c] >= 0:
                raise ValueError(f"groups: column {c} is in two groups; groups must not overlap")
            labels[c] = g
    alone = labels < 0
    labels[alone] = len(items) + np.arange(alone.sum())
    return labels


def _resolve_groups(groups: Any, x: torch.Tensor, columns: list[str] | None,
                    superpixel_params: dict | None) -> tuple[np.ndarray, str]:
    """Integer labels of shape (1 or n, ...) with ``x``'s number of axes, broadcastable to ``x``;
    and a description of the grouping."""
    n, shape = len(x), tuple(x.shape[1:])
    if groups is None:
        return np.arange(int(np.prod(shape)), dtype=np.int64).reshape((1,) + shape), "single features"
    if isinstance(groups, str):
        if groups not in _SUPERPIXELS:
            raise ValueError(
                f"groups must be 'slic', 'quickshift', an array of labels, or a list of column "
                f"groups; got {groups!r}"
            )
        if len(shape) != 3:
            raise ValueError(
                f"groups={groups!r} makes superpixels of images (batch, C, H, W); inputs have "
                f"shape {tuple(x.shape)}"
            )
        return superpixels(x, groups, **(superpixel_params or {})), groups
    if isinstance(groups, Mapping) or (isinstance(groups, (list, tuple))
                                        and any(isinstance(g, (list, tuple, str)) for g in groups)):
        if len(shape) != 1:
            raise ValueError(
                "groups as lists of columns are for tabular inputs (batch, features); for other "
                "inputs give an array of integer labels"
            )
        return _column_groups(groups, shape[0], columns)[None], "column groups"
    lab = groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if lab.dtype.kind not in "iub":
        raise ValueError(f"groups must hold integer labels; got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    per_sample = lab.ndim == len(shape) + 1
    try:
        np.broadcast_shapes(lab.shape, tuple(x.shape) if per_sample else shape)
        if per_sample and lab.shape[0] not in (1, n):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"groups of shape {lab.shape} must broadcast to one sample {shape} (shared by all "
            f"samples) or, with a leading batch axis, to the inputs {tuple(x.shape)} (per-sample "
            "segmentations of images: (batch, 1, H, W))"
        ) from None
    if not per_sample:
        lab = lab.reshape((1,) * (len(shape) + 1 - lab.ndim) + lab.shape)
    return lab, "user labels"


@register("feature_ablation", "perturbation",
          "Ablate groups of features (superpixels, segments, column groups) and watch the score",
          models="any")
def feature_ablation(model: Any, inputs: Any, target: Any = None, *, groups: Any = None,
                     superpixel_params: dict | None = None, fill: Any = "zero", sigma: float = 5.0,
                     data: Any = None, seed: int = 0, batch_size: int | None = None,
                     progress: bool | None = None):
    """Feature ablation: the drop of the score when a group of features is replaced together.

    For each group ``G`` of sample ``i``: ``d_G = f(x) - f(x with G filled)``, and every element of
    ``G`` carries ``d_G`` (the group's whole value, as in Captum's ``FeatureAblation``; divide by
    the group size for a per-element share). Groups come from superpixels, a user segmentation or
    column groups; without groups each input element is its own group (single-feature ablation).

    Parameters
    ----------
    model : torch.nn.Module or callable
        A torch module, any function that scores a batch, or a scikit-learn estimator.
    inputs : Tensor, ndarray or DataFrame, shape (batch, ...)
    target : int, sequence, "predicted", callable or None
    groups : None, "slic", "quickshift", int array, or list/dict of column groups
        - ``None``: every element alone.
        - ``"slic"`` / ``"quickshift"``: superpixels of each image (batch, C, H, W) with
          scikit-image (see :func:`superpixels`; options in ``superpixel_params``); all channels
          of a superpixel are ablated together.
        - an integer array of labels (equal labels = one group) broadcastable to one sample, e.g.
          (H, W) for images, shared by every sample; or with a leading batch axis, per sample,
          e.g. (batch, 1, H, W).
        - for tabular inputs (batch, features): a list of column groups such as
          ``[[0, 1], [2, 5]]`` or ``{"size": ["height", "weight"]}`` (names need a DataFrame);
          columns in no group stand alone.
    superpixel_params : dict, optional
        Options for :func:`skimage.segmentation.slic` / ``quickshift``.
    fill : {"zero", "mean", "blur", "noise"}, float or array, default "zero"
        What ablated features become (see :func:`occlusion`); for tabular data ``fill="mean"``
        with ``data=X_train`` is the usual choice.
    sigma, data, seed : as in :func:`occlusion`.
    batch_size : int, optional
        Ablated inputs per model call (default 64).

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs``. ``meta``: ``n_evals``; per sample ``groups`` (the
        labels), ``n_groups`` and ``group_values`` (batch, max groups; NaN-padded), the drop of
        each group in the order of its label.
    """
    with perturbation_call(model, inputs, target, method="feature_ablation") as run:
        x, n, shape = run.x, run.n, run.sample_shape
        dev = x.device
        columns = getattr(inputs, "columns", None)
        columns = [str(c) for c in columns] if columns is not None else None
        labels, desc = _resolve_groups(groups, x, columns, superpixel_params)
        fill_t, fill_desc = make_fill(fill, x, blur_axes=spatial_axes(shape), sigma=sigma, data=data,
                                      seed=seed)
        const = constant_fill(fill)
        x_eval, fill_eval = run.prepare(x), run.prepare(fill_t)

        # Groups of every sample, flattened: (sample, dense label).
        per = [labels[min(i, len(labels) - 1)] for i in range(n)]
        dense, n_groups = [], []
        for lab in per:
            u, inv = np.unique(lab, return_inverse=True)
            dense.append(inv.reshape(lab.shape))
            n_groups.append(len(u))
        n_groups = np.asarray(n_groups)
        dense_t = torch.as_tensor(np.stack(dense), device=dev)          # (n, *label shape)
        offsets = np.concatenate([[0], np.cumsum(n_groups)])
        pair_sample = torch.as_tensor(np.repeat(np.arange(n), n_groups), device=dev)
        pair_group = torch.as_tensor(np.concatenate([np.arange(k) for k in n_groups]), device=dev)

        # Axes the labels are shared along (the channels of superpixels): the write covers them whole.
        lshape = tuple(dense_t.shape[1:])
        shared = [a for a in range(len(shape)) if lshape[a] == 1 and shape[a] > 1]
        nb = len(shared)
        whole = {a: torch.arange(shape[a], device=dev).reshape([1] + [shape[a] if q == i else 1 for i in range(nb)])
                 for q, a in enumerate(shared)}

        def build(sl):
            rows, grp = pair_sample[sl], pair_group[sl]
            lab = dense_t[rows]
            hit = (lab == grp.reshape((-1,) + (1,) * (lab.ndim - 1))).nonzero(as_tuple=True)
            # Index arrays of the ablated elements only (a group is small): one advanced-indexing
            # write instead of a full-size masked select over every chunk element.
            col = [-1] + [1] * nb
            idx = (hit[0].reshape(col),) + tuple(
                whole[a] if a in whole else hit[a + 1].reshape(col) for a in range(len(shape)))
            xb = x_eval[rows]
            if const is not None:
                xb[idx] = const
            else:
                xb[idx] = fill_eval[(rows[hit[0]].reshape(col),) + idx[1:]]
            return xb, rows, None

        scores = run.evaluate(int(offsets[-1]), build, batch_size, progress, desc="feature ablation")
        drop = run.scalar[pair_sample] - scores
        group_values = torch.full((n, int(n_groups.max())), float("nan"), dtype=torch.float64, device=dev)
        group_values[pair_sample, pair_group] = drop
        values = torch.gather(group_values, 1, dense_t.reshape(n, -1)).reshape(dense_t.shape)
        values = values.expand((n,) + shape).to(x.dtype).clone()
        sample_meta = {"groups": np.stack(dense), "n_groups": n_groups, "group_values": group_values}
        meta = {"fill": fill_desc, "grouping": desc}
        params = {"groups": groups if isinstance(groups, (str, type(None))) else desc,
                  "superpixel_params": superpixel_params,
                  "fill": fill if isinstance(fill, (str, int, float)) else "array",
                  "sigma": sigma, "seed": seed}
        return run.explanation(values, "feature_ablation", params, meta=meta, sample_meta=sample_meta)
