"""Reading a classifier's outputs: are they probabilities already, and their softmax."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_probability", "softmax"]


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "softmax")


def is_probability(out: Any, atol: float = 1e-6) -> bool:
    """True for rows that are already probabilities: 2-D, non-negative and summing to one."""
    o = out.detach().double().cpu().numpy() if _is_tensor(out) else np.asarray(out, np.float64)
    return bool(o.ndim == 2 and (o >= 0).all() and np.allclose(o.sum(1), 1.0, rtol=0, atol=atol))


def softmax(out: Any):
    """Softmax over the class axis (1) in float64, for tensors and arrays alike."""
    if _is_tensor(out):
        import torch

        return torch.softmax(out.to(torch.float64), dim=1)
    o = np.asarray(out, dtype=np.float64)
    e = np.exp(o - o.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
