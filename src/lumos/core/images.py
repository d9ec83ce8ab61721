"""Image operations shared by methods and metrics (blurred baselines, fills and removals)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["gaussian_blur"]


def gaussian_blur(x: torch.Tensor, sigma: float | Sequence[float], axes: Sequence[int]) -> torch.Tensor:
    """A Gaussian-blurred copy of ``x`` (n, ...) along sample ``axes`` (0 = first sample axis).

    Uses :func:`scipy.ndimage.gaussian_filter` in float64 with mirror padding at the borders
    (``mode="reflect"``); the result has the dtype and device of ``x``. One ``sigma`` for every
    axis or one per axis, in elements (pixels).
    """
    from scipy.ndimage import gaussian_filter

    sig = [0.0] * x.ndim
    sigmas = [float(sigma)] * len(axes) if np.isscalar(sigma) else [float(s) for s in sigma]
    for a, s in zip(axes, sigmas):
        sig[a + 1] = s
    arr = x.detach().cpu().numpy()
    out = gaussian_filter(arr.astype(np.float64), sigma=sig, mode="reflect")
    return torch.as_tensor(out, dtype=x.dtype, device=x.device)
