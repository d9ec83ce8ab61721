"""Feature ablation: remove groups of features together (pixels, superpixels, column groups)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ...core.groups import column_groups
from ...core.inputs import Packing
from ...core.registry import register
from ...core.superpixels import SUPERPIXEL_METHODS, superpixels
from ._base import constant_fill, make_fill, perturbation_call, spatial_axes

__all__ = ["feature_ablation"]


def _label_names(labels: np.ndarray, names: list[str]) -> list[str]:
    """Names of the groups of integer column labels (d,): members joined by ``+``, in label order."""
    return ["+".join(names[c] for c in np.flatnonzero(labels == g)) for g in np.unique(labels)]


def _int_labels(value: Any, name: str, shape: tuple[int, ...], n: int) -> tuple[np.ndarray, bool]:
    """``value`` as int64 labels checked against samples of ``shape``: ``(labels, per_sample)``,
    per sample when it has one more axis than a sample (a leading batch axis of 1 or ``n``)."""
    lab = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if lab.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer labels; got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    per_sample = lab.ndim == len(shape) + 1
    try:
        np.broadcast_shapes(lab.shape, ((n,) if per_sample else ()) + shape)
        if per_sample and lab.shape[0] not in (1, n):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name} of shape {lab.shape} must broadcast to one sample {shape} (shared by all "
            f"samples) or, with a leading batch axis, to {(n,) + shape} (one labelling per sample, "
            "e.g. (batch, 1, H, W) for images)"
        ) from None
    return lab, per_sample


def _resolve_groups(groups: Any, x: torch.Tensor, columns: list[str] | None,
                    superpixel_params: dict | None) -> tuple[np.ndarray, str, list[str] | None]:
    """Integer labels of shape (1 or n, ...) with ``x``'s number of axes, broadcastable to ``x``;
    a description of the grouping; and for tables grouped alike in every row, the group names
    (values then come back per group)."""
    n, shape = len(x), tuple(x.shape[1:])
    if groups is None:
        return np.arange(int(np.prod(shape)), dtype=np.int64).reshape((1,) + shape), "single features", None
    if isinstance(groups, str):
        if groups not in SUPERPIXEL_METHODS:
            raise ValueError(
                f"groups must be one of {', '.join(map(repr, SUPERPIXEL_METHODS))} (superpixels), an "
                f"array of labels, or a list of column groups; got {groups!r}"
            )
        if len(shape) != 3:
            raise ValueError(
                f"groups={groups!r} makes superpixels of images (batch, C, H, W); inputs have "
                f"shape {tuple(x.shape)}"
            )
        return superpixels(x, groups, channels="first", **(superpixel_params or {}))[:, None], groups, None
    names = columns if columns is not None else [f"x{j}" for j in range(shape[0])] if len(shape) == 1 else None
    if isinstance(groups, Mapping) or (isinstance(groups, (list, tuple))
                                        and any(isinstance(g, (list, tuple, str)) for g in groups)):
        if len(shape) != 1:
            raise ValueError(
                "groups as lists of columns are for tabular inputs (batch, features); for other "
                "inputs give an array of integer labels"
            )
        labels, group_names = column_groups(groups, names)
        return labels[None], "column groups", group_names
    lab, per_sample = _int_labels(groups, "groups", shape, n)
    if not per_sample:
        lab = lab.reshape((1,) * (len(shape) + 1 - lab.ndim) + lab.shape)
    if len(shape) == 1 and lab.shape == (1, shape[0]):  # a group mask of the columns of a table
        return lab, "column labels", _label_names(lab[0], names)
    return lab, "user labels", None


def _packed_groups(groups: Any, packing: Packing, n: int) -> np.ndarray:
    """Integer labels (1 or n, D) over the packed columns of several inputs.

    ``groups`` holds one label array per input (a tuple/list, or a dict with the inputs' names),
    each broadcastable to one sample of its input (shared by every sample) or, with a leading
    batch axis, to the input itself (per sample). The same label in two inputs is **one group
    across inputs** (ablated together). ``None`` for an input (or ``groups=None``) makes each of
    its elements a group of its own, with labels after every label given.
    """
    k = len(packing.names)
    if groups is None:
        return np.arange(packing.width, dtype=np.int64)[None]
    if isinstance(groups, str):
        raise ValueError(
            f"groups={groups!r}: superpixels are made of one image; with several inputs give one "
            "integer label array per input (a tuple, or a dict with the inputs' names), or None")
    if isinstance(groups, Mapping):
        keys = {str(g) for g in groups}
        if packing.kind != "dict" or keys != set(packing.names):
            raise ValueError(f"groups: give one label array (or None) per input {list(packing.names)}; "
                             f"got keys {sorted(keys)}")
        parts = [next(v for g, v in groups.items() if str(g) == name) for name in packing.names]
    elif isinstance(groups, (tuple, list)) and len(groups) == k:
        parts = list(groups)
    else:
        raise ValueError(
            f"groups: with several inputs give one integer label array (or None) per input, {k} "
            f"as a {'dict with keys ' + str(list(packing.names)) if packing.kind == 'dict' else 'tuple'}"
            f"; got {type(groups).__name__}")
    arrays = []
    for name, part, shape in zip(packing.names, parts, packing.shapes):
        if part is None:
            arrays.append(None)
            continue
        lab, per_sample = _int_labels(part, f"groups[{name!r}]", shape, n)
        lab = np.broadcast_to(lab, ((lab.shape[0],) if per_sample else ()) + shape)
        arrays.append(lab.reshape((lab.shape[0] if per_sample else 1), -1))
    given = [a for a in arrays if a is not None]
    nxt = max((int(a.max()) for a in given), default=-1) + 1  # singletons after every given label
    for i, size in enumerate(packing.sizes):
        if arrays[i] is None:
            arrays[i] = np.arange(nxt, nxt + size, dtype=np.int64)[None]
            nxt += size
    m = max(a.shape[0] for a in arrays)
    return np.concatenate([np.broadcast_to(a, (m, a.shape[1])) for a in arrays], 1)


@register("feature_ablation", "perturbation",
          "Ablate groups of features (superpixels, segments, column groups) and watch the score",
          models="any")
def feature_ablation(model: Any, inputs: Any, target: Any = None, *, groups: Any = None,
                     superpixel_params: dict | None = None, fill: Any = "zero", sigma: float = 5.0,
                     background: Any = None, seed: int = 0, batch_size: int | None = None,
                     progress: bool | None = None, forward_args: Any = None):
    """Feature ablation: the drop of the score when a group of features is replaced together.

    For each group ``G`` of sample ``i``: ``d_G = f(x) - f(x with G filled)``, and every element of
    ``G`` carries ``d_G`` (the group's whole value, as in Captum's ``FeatureAblation``; divide by
    the group size for a per-element share). Groups come from superpixels, a user segmentation or
    column groups; without groups each input element is its own group (single-feature ablation).

    Parameters
    ----------
    model : torch.nn.Module or callable
        A torch module, any function that scores a batch, or a scikit-learn estimator.
    inputs : Tensor, ndarray or DataFrame, shape (batch, ...); or several of them
        Several inputs of a torch model: a tuple (passed positionally) or a dict (passed as
        keywords) of tensors/arrays with the same batch length. ``values`` is then one array per
        input (a tuple or dict like ``inputs``), ``groups`` one label array per input (see below)
        and ``fill`` a value per input or one for all.
    target : int, sequence, "predicted", callable or None
        ``lumos.Neuron(layer, index)`` explains a unit of a torch model's layer.
    groups : None, "slic", "quickshift", int array, or list/dict of column groups
        - ``None``: every element alone.
        - ``"slic"`` / ``"quickshift"``: superpixels of each image (batch, C, H, W) with
          scikit-image (see :func:`superpixels`; options in ``superpixel_params``); all channels
          of a superpixel are ablated together.
        - an integer array of labels (equal labels = one group) broadcastable to one sample, e.g.
          (H, W) for images, shared by every sample; or with a leading batch axis, per sample,
          e.g. (batch, 1, H, W).
        - for tabular inputs (batch, features): a list of column groups such as
          ``[[0, 1], [2, 5]]`` or ``{"size": ["height", "weight"]}`` (names need a DataFrame), or
          a group mask: one integer label per column (features,). Columns in no group stand
          alone. ``values`` then has **one column per group**, named in ``feature_names`` (a
          mapping's keys, else the members' names joined by ``+``; arrays' columns are
          ``x0, x1, ...``), like LIME's and the Shapley methods' groups.
        - for several inputs: one integer label array (or ``None``: each element alone) per
          input, as a tuple or a dict with the inputs' names, each broadcastable to one sample of
          its input (or per sample, with a leading batch axis). **Equal labels in different
          inputs are one group**, ablated together across the inputs (e.g. a token and its
          extra features); use disjoint labels for groups within each input. Default ``None``:
          every element of every input alone. Superpixels and column lists need one input.
    superpixel_params : dict, optional
        Options for :func:`lumos.core.superpixels.superpixels` (scikit-image's parameters, e.g.
        ``n_segments``; defaults documented there, quickshift's are LIME's).
    fill : {"zero", "mean", "blur", "noise"}, float or array, default "zero"
        What ablated features become (see :func:`occlusion`; an array with the inputs' number of
        axes is one fill per sample, e.g. one baseline row per table row); for tabular data
        ``fill="mean"`` with ``background=X_train`` is the usual choice. With several inputs:
        ``"zero"``, a number, ``"mean"`` (``background`` then one data set per input, a tuple or
        dict like ``inputs``), or one fill per input, ``fill=(f1, f2)`` or a dict, each a number,
        one sample's fill, or one per sample (leading batch axis); ``"blur"`` and ``"noise"``
        need one input's layout and are refused.
    sigma, background, seed : as in :func:`occlusion`.
    batch_size : int, optional
        Ablated inputs per model call; default 64 rows, fewer for large inputs (as in
        :func:`occlusion`).
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (as in :func:`occlusion`): every
        ablated copy of sample ``i`` is scored with the per-sample arguments of sample ``i``.

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (one array per input for several inputs), or
        (batch, groups) for grouped tables.
        ``meta``: ``n_evals``; per sample ``groups`` (the labels), ``n_groups`` and
        ``group_values`` (batch, max groups; NaN-padded), the drop of each group in the order of
        its label; for grouped tables ``groups`` maps each group name to its columns instead.
        For several inputs ``groups`` is left out of ``meta`` (the labels are the user's; the
        columns of ``group_values`` follow the sorted labels, each input's ``None`` labels after
        the given ones in input order).
    """
    with perturbation_call(model, inputs, target, method="feature_ablation", what="ablated inputs",
                           forward_args=forward_args, several=True) as run:
        x, n, shape = run.x, run.n, run.sample_shape
        dev = x.device
        packing = run.packing
        if packing is None:
            columns = getattr(inputs, "columns", None)
            columns = [str(c) for c in columns] if columns is not None else None
            labels, desc, group_names = _resolve_groups(groups, x, columns, superpixel_params)
        else:
            labels = _packed_groups(groups, packing, n)
            desc = "single features" if groups is None else "labels per input"
            group_names = None
            if isinstance(fill, str) and fill in ("blur", "noise"):
                raise ValueError(
                    f"fill={fill!r} needs the layout (blur) or the scale (noise) of one input; with "
                    "several inputs give 'zero', 'mean' (with background= per input), a number, or "
                    "one fill per input: fill=(f1, f2, ...) or a dict")
            fill = packing.pack_param(fill, "fill", x.dtype, dev)
            if background is not None:
                background = packing.pack_param(background, "background", x.dtype, dev)
        fill_t, fill_desc = make_fill(fill, x, blur_axes=spatial_axes(shape), sigma=sigma,
                                      background=background, seed=seed)
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
        meta = {"fill": fill_desc, "grouping": desc}
        params = {"groups": groups if isinstance(groups, (str, type(None))) else desc,
                  "superpixel_params": superpixel_params,
                  "fill": fill if isinstance(fill, (str, int, float)) else "array",
                  "sigma": sigma, "seed": seed}
        if group_names is not None:  # a table grouped alike in every row: one value per group
            names = columns if columns is not None else [f"x{j}" for j in range(shape[0])]
            meta["groups"] = {g: [names[c] for c in np.flatnonzero(dense[0] == k)]
                              for k, g in enumerate(group_names)}
            return run.explanation(group_values.to(x.dtype), "feature_ablation", params, meta=meta,
                                   sample_meta={"n_groups": n_groups}, feature_names=group_names)
        values = torch.gather(group_values, 1, dense_t.reshape(n, -1)).reshape(dense_t.shape)
        values = values.expand((n,) + shape).to(x.dtype).clone()
        sample_meta = {"groups": np.stack(dense), "n_groups": n_groups, "group_values": group_values}
        if packing is not None:
            del sample_meta["groups"]
        return run.explanation(values, "feature_ablation", params, meta=meta, sample_meta=sample_meta)
