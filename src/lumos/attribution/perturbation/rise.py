"""RISE: randomized input sampling for explanation (Petsiuk, Das & Saenko, 2018)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.execution import rng
from ...core.registry import register
from ...core.validation import check_number
from ._base import (axes_spec, ceil_div, checkpoints, constant_fill, expand_mask, make_fill,
                    perturbation_call, upsample)

__all__ = ["rise", "rise_masks"]


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, ...],
               cell: tuple[int, ...]) -> torch.Tensor:
    """Smooth masks from binary grids, as in the RISE paper.

    Each grid (g_1, ..., g_d) is upsampled (bi/trilinearly) to ``(g_a + 1) * cell_a`` per axis and
    cropped to ``size`` at the random offset ``shifts`` (each in ``[0, cell_a)``).

    Parameters
    ----------
    grids : Tensor, shape (m, g_1, ..., g_d), float
    shifts : Tensor of int, shape (m, d)
    size : the masked axes' lengths; cell : cell size per axis.

    Returns
    -------
    Tensor, shape (m, *size), values in [0, 1]
    """
    m, d = len(grids), grids.ndim - 1
    up = upsample(grids, [(g + 1) * c for g, c in zip(grids.shape[1:], cell)])
    index: list[torch.Tensor] = [torch.arange(m, device=grids.device).reshape([m] + [1] * d)]
    for a in range(d):
        ar = torch.arange(size[a], device=grids.device).reshape([1] * (a + 1) + [size[a]] + [1] * (d - a - 1))
        index.append(shifts[:, a].reshape([m] + [1] * d) + ar)
    return up[tuple(index)]


@register("rise", "perturbation",
          "Random low-resolution masks, score-weighted average (Petsiuk, Das & Saenko, 2018)",
          models="any")
def rise(model: Any, inputs: Any, target: Any = None, *, n_masks: int = 2000, grid: Any = 8,
         p: float = 0.5, center: bool = True, fill: Any = "zero", sigma: float = 5.0, background: Any = None,
         seed: int = 0, batch_size: int | None = None, progress: bool | None = None,
         forward_args: Any = None):
    """RISE: the average of random smooth masks, each weighted by the score of the masked input.

    Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box
    Models". ``n_masks`` binary grids with cells kept with probability ``p`` are upsampled
    (bilinearly, to one cell more than the input) and cropped at a random shift, giving smooth
    masks ``M_k`` in [0, 1]. The masked input is ``x * M_k + fill * (1 - M_k)`` and

    ``values = sum_k (f(x_k) - c) M_k / (n_masks * p)``

    with ``c = 0`` for the paper's map (``center=False``) and ``c`` the mean of ``f(x_k)`` over the
    masks for ``center=True`` (the default). Centring removes the term ``c * mean_k M_k / p``,
    which is nearly constant over the input (about ``E[f]``), carries no information about
    which element matters and dominates the paper's map whenever scores are far from zero; it
    also reduces the Monte-Carlo variance (a control variate). The same masks are used for every
    sample of the batch; they are drawn from ``seed`` before batching, so the map does not
    depend on ``batch_size``.

    Parameters
    ----------
    model : torch.nn.Module or callable
        A torch module or any function that scores a batch.
    inputs : Tensor, ndarray or DataFrame, shape (batch, ...)
    target : int, sequence, "predicted", callable or None
    n_masks : int, default 2000
        Number of random masks (model evaluations per sample).
    grid : int or tuple, default 8
        Cells of the low-resolution grid per axis (see ``axes_spec``): ``8`` is ``(None, 8, 8)``
        on images (the mask is shared by the channels); ``None`` shares the mask along an axis.
    p : float, default 0.5
        Probability that a cell is kept.
    center : bool, default True
        Subtract the mean masked score (see above); ``False`` gives the paper's map exactly.
    fill : {"zero", "mean", "blur", "noise"}, float or array, default "zero"
        What masked-out elements become (the paper: zero).
    sigma, background : for ``fill="blur"`` / ``fill="mean"``, as in :func:`occlusion`.
    seed : int, default 0
        Seed of the masks (and of a noise fill).
    batch_size : int, optional
        Masked inputs per model call; default 64 rows, fewer for large inputs (as in
        :func:`occlusion`).
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model (as in :func:`occlusion`): each masked copy of sample ``i``
        is scored with the per-sample arguments of sample ``i``. Several explained inputs are
        refused (masks need one input's layout).

    Returns
    -------
    Explanation
        ``values`` has the shape of ``inputs`` (constant along shared axes). ``meta``:
        ``n_evals``; ``convergence``: ``{"n_masks": [...], "relative_change": [...]}``, for
        ``N`` = n_masks/2^k, ..., n_masks the relative L2 change of the map from the previous
        checkpoint (mean over samples) — how far the estimate still moves as N doubles;
        per sample in ``meta["relative_change"]`` (batch, checkpoints - 1).
    """
    n_masks = check_number(n_masks, "n_masks", low=1, integer=True)
    p = check_number(p, "p (a probability)", low=0, high=1, low_open=True, high_open=True)
    with perturbation_call(model, inputs, target, method="rise", what="masked inputs",
                           forward_args=forward_args) as run:
        x, n, shape = run.x, run.n, run.sample_shape
        dev = x.device
        g = axes_spec(grid, shape, "grid")
        masked = [a for a, v in enumerate(g) if v is not None]
        if not masked:
            raise ValueError("grid: at least one axis must be masked (not None)")
        size = tuple(shape[a] for a in masked)
        cells = tuple(g[a] for a in masked)
        for a, c, L in zip(masked, cells, size):
            if c > L:
                raise ValueError(f"grid has {c} cells along axis {a}, more than its {L} elements")
        cell = tuple(ceil_div(L, c) for L, c in zip(size, cells))
        fill_t, fill_desc = make_fill(fill, x, blur_axes=masked, sigma=sigma, background=background,
                                      seed=seed)
        const = constant_fill(fill)
        x_eval, fill_eval = run.prepare(x), run.prepare(fill_t)

        # All randomness up front, so chunking cannot change it.
        gen = rng(seed)
        grids = torch.as_tensor(gen.random((n_masks,) + cells) < p, dtype=x.dtype, device=dev)
        shifts = torch.as_tensor(np.stack([gen.integers(0, c, n_masks) for c in cell], 1), device=dev)

        cps = checkpoints(n_masks)
        block_of = torch.as_tensor(np.searchsorted(np.asarray(cps), np.arange(n_masks), side="right"),
                                   device=dev)
        nb = len(cps)
        sal = torch.zeros((n * nb,) + size, dtype=torch.float64, device=dev)   # sum f M
        msum = torch.zeros((nb,) + size, dtype=torch.float64, device=dev)      # sum M
        fsum = torch.zeros(n * nb, dtype=torch.float64, device=dev)            # sum f

        # Mask-major order (k = mask * n + sample): a chunk upsamples each of its masks once.
        def build(sl):
            k = torch.arange(sl.start, sl.stop, device=dev)
            j, rows = k // n, k % n
            j0 = int(j[0])
            masks = rise_masks(grids[j0:int(j[-1]) + 1], shifts[j0:int(j[-1]) + 1], size, cell)
            mk = masks[j - j0]
            full = expand_mask(mk, g)
            xr = x_eval[rows]
            if const == 0.0:
                xb = xr * full
            else:
                xb = xr * full + (const if const is not None else fill_eval[rows]) * (1 - full)
            return xb, rows, (j, rows, mk, masks, j0)

        def consume(sl, s, ctx):
            j, rows, mk, masks, j0 = ctx
            b = block_of[j]
            slot = rows * nb + b
            sal.index_add_(0, slot, s.reshape([-1] + [1] * len(size)) * mk.to(torch.float64))
            fsum.index_add_(0, slot, s)
            first = rows == 0  # each mask counted once in the mask sum
            msum.index_add_(0, b[first], mk[first].to(torch.float64))

        run.evaluate(n * n_masks, build, batch_size, progress, desc="rise", consume=consume)

        sal = sal.reshape((n, nb) + size).cumsum(1)
        fsum = fsum.reshape(n, nb).cumsum(1)
        msum = msum.cumsum(0)
        counts = torch.as_tensor(cps, dtype=torch.float64, device=dev)
        bshape = (1, nb) + (1,) * len(size)
        maps = sal
        if center:
            maps = sal - (fsum / counts).reshape((n, nb) + (1,) * len(size)) * msum[None]
        maps = maps / (counts.reshape(bshape) * p)
        flat = maps.reshape(n, nb, -1)
        change = (flat[:, 1:] - flat[:, :-1]).norm(dim=2) / flat[:, 1:].norm(dim=2).clamp_min(1e-300)
        final = expand_mask(maps[:, -1], g)
        values = final.expand((n,) + shape).to(x.dtype).clone()
        meta = {
            "convergence": {"n_masks": cps[1:], "relative_change": change.mean(0).tolist()},
            "fill": fill_desc, "grid": list(cells), "cell": list(cell),
        }
        params = {"n_masks": n_masks, "grid": grid if not isinstance(grid, tuple) else list(grid),
                  "p": p, "center": center,
                  "fill": fill if isinstance(fill, (str, int, float)) else "array",
                  "sigma": sigma, "seed": seed}
        return run.explanation(values, "rise", params, meta=meta,
                               sample_meta={"relative_change": change})
