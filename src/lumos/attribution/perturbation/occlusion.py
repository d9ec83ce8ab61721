"""Sliding-window occlusion (Zeiler & Fergus, 2014), with several window sizes and soft fills."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.registry import register
from ._base import axes_spec, constant_fill, make_fill, perturbation_call

__all__ = ["occlusion", "window_positions"]


def window_positions(length: int, window: int, stride: int) -> np.ndarray:
    """Start indices of the windows along one axis of ``length`` elements.

    Windows start at ``0, stride, 2*stride, ...`` while they fit; when the last one stops short of
    the end, one more window aligned with the end is added, so every element is covered.
    """
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return np.asarray(starts, dtype=np.int64)


def _as_list(spec: Any) -> list:
    """Several window sizes are a list; one window is an int or a tuple."""
    return list(spec) if isinstance(spec, list) else [spec]


@register("occlusion", "perturbation",
          "Sliding-window occlusion: score drop when a window is hidden (Zeiler & Fergus, 2014)",
          models="any")
def occlusion(model: Any, inputs: Any, target: Any = None, *, window: Any = 8, stride: Any = None,
              fill: Any = "zero", sigma: float = 5.0, background: Any = None, seed: int = 0,
              batch_size: int | None = None, progress: bool | None = None, forward_args: Any = None):
    """Occlusion: how much the explained score drops when a window of the input is hidden.

    Zeiler & Fergus (2014), "Visualizing and Understanding Convolutional Networks". For each
    window position ``w`` the input is copied with the window replaced by ``fill``, and

    ``values[e] = mean over the windows w covering e of ( f(x) - f(x with w filled) )``

    (for one window size; the same normalisation as Captum's ``Occlusion``). With several window
    sizes, each size gives such a map and ``values`` is their **mean over sizes** (each size
    weighs the same whatever its number of windows); the per-size maps are in
    ``meta["maps_per_window"]``. A window of one element and stride one is exactly single-feature
    ablation: ``values[e] = f(x) - f(x with e filled)``.

    The perturbed copies are built chunk by chunk and evaluated ``batch_size`` at a time (one
    model call per chunk, not per window); the model only needs to return scores, so any predict
    function works.

    Parameters
    ----------
    model : torch.nn.Module or callable
        A torch module, or any function that scores a batch (it receives perturbed inputs of the
        same type as ``inputs``), or a scikit-learn estimator.
    inputs : Tensor, ndarray or DataFrame, shape (batch, ...)
        Images (batch, C, H, W), signals (batch, L) or (batch, C, L), token embeddings
        (batch, T, D), tabular rows (batch, F)...
    target : int, sequence, "predicted", callable or None
    window : int, tuple, or list of those, default 8
        Window shape per sample axis (see :func:`~lumos.attribution.perturbation._base.axes_spec`):
        an int ``k`` is ``(None, k, k)`` on images (all channels at once) and ``(k,)`` on 1-D
        samples; ``None`` in a tuple covers the whole axis. A *list* gives several window sizes
        to combine, e.g. ``[4, 8, 16]``.
    stride : int, tuple, or list of those, optional
        Step per axis; default half the window (at least 1) along each axis. A list gives one
        stride per window size.
    fill : {"zero", "mean", "blur", "noise"}, float or array, default "zero"
        What hides a window: zeros, a constant, the dataset mean (``fill="mean"`` with
        ``background=``), a Gaussian-blurred copy of the input (std ``sigma`` along the axes
        windows slide on), a fixed noise draw (``seed``), or an array: **one fill per sample**
        when it has the inputs' number of axes (a baseline image per input (batch, C, H, W), a
        constant per input (batch, 1, 1, 1)), else one fill given once and broadcast to every
        sample (a mean image (C, H, W), per-channel values (C, 1, 1), per-column values (F,)).
    sigma : float, default 5.0
        Blur standard deviation in elements, for ``fill="blur"``.
    background : array, optional
        A dataset (samples along the first axis) whose mean is the fill for ``fill="mean"``.
    seed : int, default 0
        Seed of the noise for ``fill="noise"``.
    batch_size : int, optional
        Perturbed inputs per model call; default 64 rows, fewer for large inputs (a 2 MiB budget
        of input per call: 10 rows of 3x128x128 float32 images).
    progress : bool, optional
        Progress bar (default: on a terminal for long work).
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag): positional as a
        tuple, keyword as a dict, both as ``lumos.Args``. An argument whose first axis has the
        batch length is per sample: each occluded copy of sample ``i`` is scored with argument
        row ``i`` (wrap a batch-length value meant for every row in ``lumos.Shared``). Torch
        modules and plain predict functions (``predict(X, *args, **kwargs)``) take them.

    Several inputs (a tuple or dict) are refused: windows need the layout of one input. Explain
    one of them and pass the others with ``forward_args=``, or use ``feature_ablation``.
    ``target=lumos.Neuron(layer, index)`` explains a unit of a torch model's layer.

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs``. ``meta``: ``n_evals`` (model rows evaluated),
        ``n_windows`` per size, ``fill``; ``maps_per_window`` (batch, sizes, ...) for several sizes.
    """
    windows = _as_list(window)
    strides = _as_list(stride) if stride is not None else [None] * len(windows)
    if len(strides) != len(windows):
        raise ValueError(f"stride: give one stride per window size ({len(windows)}); got {len(strides)}")
    if not windows:
        raise ValueError("window: give at least one window shape")
    with perturbation_call(model, inputs, target, method="occlusion", what="occluded inputs",
                           forward_args=forward_args) as run:
        x, n, shape = run.x, run.n, run.sample_shape
        nd, dev = len(shape), x.device
        sizes, positions = [], []
        moving: set[int] = set()
        for w_spec, s_spec in zip(windows, strides):
            w = axes_spec(w_spec, shape, "window")
            w = tuple(L if v is None else v for v, L in zip(w, shape))
            for a, (v, L) in enumerate(zip(w, shape)):
                if v > L:
                    raise ValueError(
                        f"window {tuple(w)} is larger than the input along axis {a} "
                        f"(samples have shape {shape})"
                    )
            if s_spec is None:
                s = tuple(max(1, v // 2) for v in w)
            else:
                s = axes_spec(s_spec, shape, "stride")
                s = tuple(max(1, v) if sv is None else sv for sv, v in zip(s, w))
            starts = [window_positions(L, v, sv) for L, v, sv in zip(shape, w, s)]
            moving.update(a for a, v in enumerate(w) if v < shape[a])  # axes windows slide on
            sizes.append((w, s))
            positions.append(starts)
        fill_t, fill_desc = make_fill(fill, x, blur_axes=sorted(moving) or list(range(nd)),
                                      sigma=sigma, background=background, seed=seed)
        const = constant_fill(fill)

        # Every window of every size, flattened: start per axis and size index.
        all_start, all_sid = [], []
        for sid, starts in enumerate(positions):
            grid = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, nd)
            all_start.append(grid)
            all_sid.append(np.full(len(grid), sid))
        start_t = torch.as_tensor(np.concatenate(all_start), device=dev)
        sid_t = torch.as_tensor(np.concatenate(all_sid), device=dev)
        n_win = len(start_t)
        # offsets[s][a]: the element offsets a window of size s covers along axis a, shaped to
        # broadcast against the other axes (index arrays for one advanced-indexing write).
        offsets = [[torch.arange(w[a], device=dev).reshape([1] * (a + 1) + [w[a]] + [1] * (nd - a - 1))
                    for a in range(nd)] for w, _ in sizes]
        x_eval, fill_eval = run.prepare(x), run.prepare(fill_t)

        def build(sl):
            k = torch.arange(sl.start, sl.stop, device=dev)
            rows, j = k // n_win, k % n_win
            xb = x_eval[rows]
            # A window is a box: write the fill into it through index arrays (rows x box), which
            # touches only the box's elements, unlike a full-size mask over every chunk element.
            for sid in torch.unique(sid_t[j]).tolist():
                sel = (sid_t[j] == sid).nonzero()[:, 0] if len(sizes) > 1 else torch.arange(len(k), device=dev)
                lead = sel.reshape([-1] + [1] * nd)
                idx = tuple(start_t[j[sel], a].reshape([-1] + [1] * nd) + offsets[sid][a] for a in range(nd))
                if const is not None:
                    xb[(lead,) + idx] = const
                else:
                    xb[(lead,) + idx] = fill_eval[(rows[sel].reshape([-1] + [1] * nd),) + idx]
            return xb, rows, None

        scores = run.evaluate(n * n_win, build, batch_size, progress, desc="occlusion")
        drop = (run.scalar[:, None] - scores.reshape(n, n_win))

        aranges = [torch.arange(L, device=dev) for L in shape]
        maps, offset = [], 0
        for (w, _), starts in zip(sizes, positions):
            counts = [len(p) for p in starts]
            m = int(np.prod(counts))
            d = drop[:, offset:offset + m].reshape(n, *counts)
            ones = torch.ones(counts, dtype=torch.float64, device=dev)
            total, cover = d, ones
            for a in range(nd):
                # indicator[p, e] = window p along axis a covers element e; contracting the
                # position axes one at a time sums the drops of all windows covering e.
                st = torch.as_tensor(starts[a], device=dev)
                ind = ((aranges[a][None] >= st[:, None]) & (aranges[a][None] < st[:, None] + w[a])).double()
                total = torch.tensordot(total, ind, dims=([1], [0]))
                cover = torch.tensordot(cover, ind, dims=([0], [0]))
            maps.append(total / cover)
            offset += m
        stacked = torch.stack(maps, 1)
        values = stacked.mean(1).to(x.dtype)
        meta = {"n_windows": [int(np.prod([len(p) for p in st])) for st in positions],
                "windows": [list(w) for w, _ in sizes], "strides": [list(s) for _, s in sizes],
                "fill": fill_desc}
        sample_meta = {"maps_per_window": stacked.to(x.dtype)} if len(sizes) > 1 else {}
        params = {"window": window if not isinstance(window, tuple) else list(window),
                  "stride": stride if not isinstance(stride, tuple) else list(stride),
                  "fill": fill if isinstance(fill, (str, int, float)) else "array",
                  "sigma": sigma, "seed": seed}
        return run.explanation(values, "occlusion", params, meta=meta, sample_meta=sample_meta)
