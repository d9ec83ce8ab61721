"""Targets: which scalar per sample is explained.

A target is an int (one class for every sample), a per-sample sequence/array/tensor of ints,
``"predicted"`` (the arg-max class at the explained input), ``None`` (the predicted class for
class scores; the output itself for a scalar output), or any callable mapping the model output to
one scalar per row (a logit difference, a segmentation region's sum, a regression output).

The resolved :class:`Target` works on torch tensors and numpy arrays alike, and on internal
batches in which each row belongs to some original sample (integration steps, noise draws,
masks): ``select(output, rows)`` picks, for row ``k``, the target of sample ``rows[k]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Target", "resolve_target"]


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "gather")


@dataclass
class Target:
    """A resolved target for ``n`` samples.

    Attributes
    ----------
    indices : ndarray of int, shape (n,), or None
        The class per sample, for index targets.
    fn : callable or None
        The user's callable, for callable targets.
    description : str
        Human-readable description, recorded in ``Explanation.meta["target"]``.
    """

    indices: np.ndarray | None
    fn: Callable | None
    description: str

    def select(self, output, rows=None):
        """One scalar per row of ``output``.

        Parameters
        ----------
        output : Tensor or ndarray, shape (m, ...)
            Model output for ``m`` rows.
        rows : array-like of int, shape (m,), optional
            Original sample of each row; ``None`` means row ``k`` is sample ``k``.
        """
        if self.fn is not None:
            out = self.fn(output)
            m = len(output)
            shape = tuple(out.shape) if hasattr(out, "shape") else np.shape(out)
            if shape not in ((m,), (m, 1)):
                raise ValueError(
                    f"target callable must return one scalar per row, shape ({m},); got {shape}"
                )
            return out.reshape(m)
        if self.indices is None:  # scalar output
            return output.reshape(len(output), -1)[:, 0] if output.ndim > 1 else output
        idx = self.indices if rows is None else self.indices[np.asarray(_cpu(rows))]
        if _is_tensor(output):
            import torch

            t = torch.as_tensor(idx, device=output.device, dtype=torch.long)
            if output.ndim == 2:
                return output.gather(1, t[:, None])[:, 0]
            picked = output[torch.arange(len(output), device=output.device), t]
            return picked.reshape(len(output), -1).sum(1)
        output = np.asarray(output)
        picked = output[np.arange(len(output)), idx]
        return picked.reshape(len(output), -1).sum(1)


def _cpu(x):
    return x.detach().cpu().numpy() if _is_tensor(x) else x


def resolve_target(target: Any, output, name: str = "target") -> Target:
    """Resolve ``target`` against the model ``output`` at the explained inputs.

    Parameters
    ----------
    target : int, sequence of int, ndarray, Tensor, "predicted", callable or None
    output : Tensor or ndarray, shape (n,) or (n, classes, ...)
        Model output at the explained inputs; used for ``"predicted"`` and range checks.

    Raises
    ------
    ValueError
        Naming ``target`` when it is out of range, of the wrong length or of an unknown kind.
    """
    n = len(output)
    shape = tuple(output.shape)
    if callable(target) and not isinstance(target, str):
        res = Target(None, target, getattr(target, "__name__", "callable"))
        res.select(output)  # validate the callable's shape once, with a clear error
        return res
    scalar_output = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    if target is None:
        if scalar_output:
            return Target(None, None, "output")
        if len(shape) > 2:
            raise ValueError(
                f"{name}: the model output has shape {shape}; give a class index or a callable "
                "that maps the output to one scalar per sample (for example a region's sum)"
            )
        target = "predicted"
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"{name} must be an int, a sequence of ints, 'predicted' or a callable; got {target!r}")
        if scalar_output:
            return Target(None, None, "output")
        flat = _cpu(output).reshape(n, shape[1], -1).sum(-1) if len(shape) > 2 else _cpu(output)
        idx = np.asarray(flat).argmax(1).astype(np.int64)
        return Target(idx, None, "predicted")
    if isinstance(target, bool):
        raise ValueError(f"{name} must be an int class index, not a bool")
    if isinstance(target, (int, np.integer)):
        idx = np.full(n, int(target), dtype=np.int64)
    else:
        arr = np.asarray(_cpu(target))
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"{name} must be an int, a 1-D sequence of ints (one per sample), 'predicted' "
                f"or a callable; got an array of shape {arr.shape} and dtype {arr.dtype}"
            )
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries but there are {n} samples")
        idx = arr.astype(np.int64)
    classes = 1 if len(shape) == 1 else shape[1]
    if len(shape) == 1:
        if np.any(idx != 0):
            raise ValueError(f"{name}: the model has a single output; use target=None or 0")
        return Target(None, None, "output")
    bad = (idx < 0) | (idx >= classes)
    if bad.any():
        raise ValueError(
            f"{name} out of range: the model has {classes} outputs (valid 0..{classes - 1}); "
            f"got {sorted(set(idx[bad].tolist()))}"
        )
    desc = f"class {int(idx[0])}" if np.all(idx == idx[0]) else "per-sample classes"
    return Target(idx, None, desc)
