"""What removed features are replaced with: constant, mean and blurred fills, and ROAD's noisy
linear imputation."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..core.images import gaussian_blur
from ..core.torch_model import as_tensor
from ..core.validation import check_number
from .layouts import Layout

__all__ = ["FILLS", "removal_fill", "noisy_linear_impute"]

FILLS = ("zero", "mean", "blur", "road", "uniform")


def removal_fill(fill: Any, x: torch.Tensor, layout_: Layout, *, background: Any = None, sigma: float = 5.0,
                 name: str = "fill") -> tuple[torch.Tensor | None, str]:
    """What removed features are replaced with: a tensor of the shape of ``x`` (or ``None`` for
    ``"road"``, whose imputation depends on the removed set and is built per row).

    ``"zero"`` or a number: that value; ``"mean"``: the per-element mean of ``background`` (samples
    on the first axis; without ``background``, the mean of each sample over its map elements, per channel);
    ``"blur"``: a Gaussian-blurred copy (std ``sigma`` pixels, images only); ``"road"``: noisy
    linear imputation from the neighbours (Rong et al., 2022; images only); an array that
    broadcasts to one sample or to the batch.
    """
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"{name} must be one of {FILLS}, a number or an array; got {fill!r}")
        spatial = list(range(1, len(layout_.input_shape))) if layout_.expand == (0,) else None
        if fill in ("blur", "road") and (spatial is None or len(layout_.map_shape) != 2):
            raise ValueError(f"{name}={fill!r} works on images (n, C, H, W); these inputs have "
                             f"samples of shape {layout_.input_shape}")
        if not x.is_floating_point() and fill != "zero":
            raise ValueError(f"{name}: integer inputs (token ids) take a number (an id) as fill; got {fill!r}")
        if fill == "zero":
            return torch.zeros_like(x), "zero"
        if fill == "road":
            return None, "road"
        if fill == "blur":
            sigma = check_number(sigma, "sigma", low=0, low_open=True)
            return gaussian_blur(x, sigma, spatial), f"blur(sigma={sigma:g})"
        if fill == "uniform":
            raise ValueError(f"{name}='uniform' is not a removal fill; give a number, 'zero', 'mean', 'blur' or 'road'")
        if background is not None:
            d = as_tensor(background, x.device, name="background", dtype=x.dtype)
            if tuple(d.shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(f"background must have samples of shape {tuple(x.shape[1:])}; got {tuple(d.shape)}")
            return d.mean(0, keepdim=True).expand_as(x).clone(), "mean(background)"
        # the sample's own mean per channel (images) or overall
        axes = tuple(range(2, x.ndim)) if layout_.expand == (0,) else tuple(range(1, x.ndim))
        return x.mean(dim=axes, keepdim=True).expand_as(x).clone(), "mean(sample)"
    if isinstance(fill, bool):
        raise ValueError(f"{name} must be a string, a number or an array; got a bool")
    if isinstance(fill, (int, float, np.integer, np.floating)):
        fill = check_number(fill, name)
        return torch.full_like(x, fill), f"constant({fill:g})"
    f = as_tensor(fill, x.device, name=name, dtype=x.dtype)
    try:
        return torch.broadcast_to(f, x.shape).clone(), "array"
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(f.shape)} broadcasts neither to one sample "
                         f"{tuple(x.shape[1:])} nor to the inputs {tuple(x.shape)}") from None


# Rong et al. (2022): each missing pixel is the weighted mean of its 8 neighbours.
_ROAD_NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6),
                    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))


def noisy_linear_impute(images: np.ndarray, missing: np.ndarray, noise: float = 0.01,
                        rngs: Sequence[np.random.Generator] | None = None) -> np.ndarray:
    """Noisy linear imputation (Rong, Leemann, Borisov, Kasneci & Kasneci, 2022, "A Consistent and
    Efficient Evaluation Strategy for Attribution Methods", ROAD).

    Every missing pixel takes the weighted mean of its in-image neighbours (weight 1/6 for the four
    direct, 1/12 for the four diagonal neighbours), known neighbours fixed: one sparse linear
    system for all missing pixels of all images of the stack (block diagonal), solved with
    :func:`scipy.sparse.linalg.spsolve` for all channels at once; then Gaussian noise of std
    ``noise`` is added to the imputed values. Replacing the removed pixels by values that continue
    their surroundings keeps the mask's shape from leaking the removed set to the model.

    Parameters
    ----------
    images : ndarray, shape (m, C, H, W)
    missing : ndarray of bool, shape (m, H, W)
    noise : float, default 0.01
        Standard deviation of the noise added to imputed values (the paper's default).
    rngs : sequence of m numpy Generators, optional
        One per image, for the noise (required when ``noise > 0``).

    Returns
    -------
    ndarray, shape (m, C, H, W), float64
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    m, C, H, W = images.shape
    out = images.astype(np.float64, copy=True)
    idx = np.flatnonzero(missing.reshape(-1))
    if len(idx) == 0:
        return out
    var = np.full(m * H * W, -1, dtype=np.int64)
    var[idx] = np.arange(len(idx))
    b_, r_, c_ = np.unravel_index(idx, (m, H, W))
    flat = out.transpose(0, 2, 3, 1).reshape(m * H * W, C)  # pixel-major for row gathers
    rows, cols, vals = [], [], []
    diag = np.zeros(len(idx))
    rhs = np.zeros((len(idx), C))
    for dr, dc, w in _ROAD_NEIGHBOURS:
        rr, cc = r_ + dr, c_ + dc
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        j = np.flatnonzero(ok)
        nb = (b_[j] * H + rr[j]) * W + cc[j]
        diag[j] += w
        unknown = var[nb] >= 0
        rows.append(j[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(unknown.sum(), -w))
        rhs[j[~unknown]] += w * flat[nb[~unknown]]
    rows.append(np.arange(len(idx)))
    cols.append(np.arange(len(idx)))
    vals.append(diag)
    A = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(idx), len(idx)))
    sol = spsolve(A, rhs)
    sol = sol.reshape(len(idx), C)
    if noise:
        if rngs is None:
            raise ValueError("noisy_linear_impute: noise > 0 needs one generator per image (rngs=)")
        # one draw of the whole image per row, so the noise does not depend on the stack
        z = np.stack([g.standard_normal((H * W, C)) for g in rngs]).reshape(m * H * W, C)
        sol = sol + noise * z[idx]
    flat[idx] = sol
    return flat.reshape(m, H, W, C).transpose(0, 3, 1, 2)
