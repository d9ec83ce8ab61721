"""Baselines (references) for path methods: integrated gradients, expected gradients, gradient SHAP.

A baseline answers "attribution relative to what?". :func:`make_baselines` turns the user's
``baselines=`` argument into a :class:`BaselineSet`: a bank of reference inputs and, for every
sample, the indices of the ``k`` bank rows it is compared with (its path integrals are averaged
over them, as in expected gradients). Random baselines are drawn from an explicit seed before any
batching, and one set of random draws is shared by all samples, so a sample's attribution does not
depend on the batch it is explained in.

See Sturmfels, Lundberg & Lee (2020), "Visualizing the Impact of Feature Attribution Baselines"
(Distill) for the blurred, uniform and Gaussian baselines, and Erion et al. (2021), "Improving
performance of deep learning models with axiomatic attribution priors and expected gradients" for
averaging over baselines sampled from data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.images import gaussian_blur
from ..core.execution import rng as make_rng

__all__ = ["BaselineSet", "make_baselines", "BASELINE_KINDS", "DEFAULT_BLUR_SIGMA",
           "DEFAULT_NOISE_SIGMA"]

BASELINE_KINDS = ("zero", "blur", "uniform", "gaussian", "mean")
#: Standard deviation of the blur, in pixels (elements of the spatial axes).
DEFAULT_BLUR_SIGMA = 5.0
#: Standard deviation of the Gaussian baseline's noise, relative to each sample's value range.
DEFAULT_NOISE_SIGMA = 0.1


@dataclass
class BaselineSet:
    """Reference inputs for ``n`` samples.

    Attributes
    ----------
    bank : Tensor, shape (m, ...)
        The distinct baselines (same feature shape, dtype and device as the inputs).
    index : LongTensor, shape (n, k)
        ``bank[index[i, b]]`` is the ``b``-th baseline of sample ``i``; attributions are averaged
        over the ``k`` baselines of each sample.
    description : str
        What the baselines are, recorded in ``Explanation.meta["baselines"]``.
    meta : dict
        Extra facts (sampled data indices, sigma) for ``Explanation.meta``.
    """

    bank: torch.Tensor
    index: torch.Tensor
    description: str
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    @property
    def n(self) -> int:
        return int(self.index.shape[0])


def _shared(bank: torch.Tensor, n: int, description: str, **meta) -> BaselineSet:
    k = len(bank)
    return BaselineSet(bank, torch.arange(k).repeat(n, 1), description, meta)


def _per_sample(bank: torch.Tensor, n: int, description: str, **meta) -> BaselineSet:
    k = len(bank) // n
    return BaselineSet(bank, torch.arange(n * k).view(n, k), description, meta)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _check_sigma(sigma: Any, default: float, what: str) -> float:
    if sigma is None:
        return default
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a non-negative number ({what}); got {sigma!r}")
    return float(sigma)


def _as_float_tensor(value: Any, x: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        arr = np.asarray(value)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return t


def _expand_features(t: torch.Tensor, feat: tuple, name: str, lead: int) -> torch.Tensor:
    """Broadcast the trailing axes of ``t`` (after ``lead`` leading axes) to ``feat``."""
    try:
        return t.expand(*t.shape[:lead], *feat).contiguous()
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} cannot be broadcast to the inputs' sample shape "
            f"{feat}"
        ) from None


def _sample_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(len(x), -1)
    view = (len(x),) + (1,) * (x.ndim - 1)
    return flat.min(1).values.view(view), flat.max(1).values.view(view)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur over the spatial axes (all axes after batch and channel)."""
    if x.ndim < 3:
        raise ValueError(
            f"baselines='blur' blurs the spatial axes of (batch, channels, ...) inputs; got inputs "
            f"of shape {tuple(x.shape)}. Use another baseline for tabular or flat inputs."
        )
    return gaussian_blur(x, sigma, range(1, x.ndim - 1))


def make_baselines(baselines: Any, x: torch.Tensor, *, n_baselines: int | None = None,
                   sigma: float | None = None, background: Any = None,
                   seed: int | np.random.Generator | None = 0,
                   name: str = "baselines") -> BaselineSet:
    """Build the baselines of each sample of ``x``.

    Parameters
    ----------
    baselines : str, float, Tensor or ndarray
        - ``"zero"`` (or ``None``): the all-zero input.
        - a number: the constant input of that value.
        - ``"blur"``: the input blurred by a Gaussian of standard deviation ``sigma`` pixels
          (default 5) over its spatial axes (SciPy ``gaussian_filter``, reflecting borders).
        - ``"uniform"``: uniform noise between each sample's minimum and maximum value;
          ``n_baselines`` draws (default 1), seeded.
        - ``"gaussian"``: the input plus Gaussian noise of standard deviation ``sigma`` times the
          sample's value range (default 0.1), clipped to that range; ``n_baselines`` draws.
        - ``"mean"``: the mean of ``background`` (shape ``(m, ...)``).
        - a tensor broadcastable to one sample (``(...)`` or ``(1, ...)``): one shared baseline.
        - a tensor of shape ``(batch, ...)``: one baseline per sample.
        - a tensor of shape ``(k, ...)``, ``k`` neither 1 nor the batch size: ``k`` baselines
          shared by all samples, attributions averaged over them. With ``n_baselines=m``,
          ``m`` of them are sampled (without replacement when ``m <= k``) — expected gradients
          with a background set. A ``(batch, ...)`` tensor counts as a set too when
          ``n_baselines`` is given.
        - a tensor of shape ``(1, k, ...)`` or ``(batch, k, ...)``: ``k`` baselines shared by all
          samples, or ``k`` per sample, averaged over.
    x : Tensor, shape (n, ...)
        The inputs.
    n_baselines : int, optional
        Number of random draws (``"uniform"``, ``"gaussian"``) or of baselines sampled from a set.
    sigma : float, optional
        ``"blur"``: Gaussian standard deviation in pixels. ``"gaussian"``: noise standard deviation
        relative to each sample's ``max - min``.
    background : array-like, shape (m, ...), optional
        Reference data for ``"mean"`` (its mean is the baseline).
    seed : int or numpy Generator, default 0
        Seed of every random draw.

    Returns
    -------
    BaselineSet
    """
    n, feat = len(x), tuple(x.shape[1:])
    if n_baselines is not None:
        n_baselines = _check_count(n_baselines, "n_baselines")
    if sigma is not None and not (isinstance(baselines, str) and baselines in ("blur", "gaussian")):
        raise ValueError(f"sigma is only used by baselines='blur' or 'gaussian'; got {name}={baselines!r}")
    if background is not None and not (isinstance(baselines, str) and baselines == "mean"):
        raise ValueError(f"background is only used by baselines='mean'; got {name}={baselines!r}")
    random_kinds = ("uniform", "gaussian")
    if n_baselines is not None and isinstance(baselines, str) and baselines not in random_kinds:
        raise ValueError(
            f"n_baselines is for random baselines ('uniform', 'gaussian') or a set of baseline "
            f"tensors to sample from; got {name}={baselines!r}"
        )
    if baselines is None:
        baselines = "zero"
    if isinstance(baselines, str):
        kind = baselines.strip().lower()
        if kind in ("zero", "zeros"):
            return _shared(torch.zeros((1,) + feat, dtype=x.dtype, device=x.device), n, "zero")
        if kind == "blur":
            s = _check_sigma(sigma, DEFAULT_BLUR_SIGMA, "blur width in pixels")
            return _per_sample(_blur(x, s), n, f"blur(sigma={s:g})", sigma=s)
        if kind in random_kinds:
            k = n_baselines or 1
            gen = make_rng(seed)
            lo, hi = _sample_range(x)
            if kind == "uniform":
                u = torch.from_numpy(gen.random((k,) + feat)).to(device=x.device, dtype=x.dtype)
                bank = lo[:, None] + (hi - lo)[:, None] * u[None]
            else:
                s = _check_sigma(sigma, DEFAULT_NOISE_SIGMA, "noise std relative to the range")
                z = torch.from_numpy(gen.standard_normal((k,) + feat)).to(device=x.device, dtype=x.dtype)
                bank = x[:, None] + (s * (hi - lo))[:, None] * z[None]
                bank = torch.maximum(torch.minimum(bank, hi[:, None]), lo[:, None])
            extra = {"sigma": s} if kind == "gaussian" else {}
            return _per_sample(bank.reshape((n * k,) + feat), n, f"{kind}(k={k})", **extra)
        if kind == "mean":
            if background is None:
                raise ValueError(f"{name}='mean' needs background=: an array of shape (m, *{feat})")
            d = _as_float_tensor(background, x, "background")
            if tuple(d.shape[1:]) != feat or d.ndim != x.ndim or len(d) == 0:
                raise ValueError(f"background must have shape (m, *{feat}) with m >= 1; got "
                                 f"{tuple(d.shape)}")
            return _shared(d.mean(0, keepdim=True), n, f"mean of background (m={len(d)})")
        raise ValueError(
            f"{name} must be one of {BASELINE_KINDS}, a number or a tensor; got {baselines!r}"
        )
    if isinstance(baselines, bool):
        raise TypeError(f"{name} must be a string, a number or a tensor; got a bool")
    if isinstance(baselines, (int, float, np.integer, np.floating)):
        if not np.isfinite(baselines):
            raise ValueError(f"{name} must be finite; got {baselines!r}")
        bank = torch.full((1,) + feat, float(baselines), dtype=x.dtype, device=x.device)
        return _shared(bank, n, f"constant {float(baselines):g}")
    if not (isinstance(baselines, (torch.Tensor, np.ndarray, list, tuple))):
        raise TypeError(f"{name} must be a string, a number or a tensor; got {type(baselines).__name__}")
    t = _as_float_tensor(baselines, x, name)
    d = x.ndim
    if t.ndim == 0:
        return _shared(t.expand((1,) + feat).contiguous(), n, f"constant {float(t):g}")
    if t.ndim < d - 1 or t.ndim > d + 1:
        raise ValueError(
            f"{name} must have shape {feat} (one baseline), ({n} or 1, *{feat}) or (k, *{feat}) "
            f"(a set), or ({n} or 1, k, *{feat}); got {tuple(t.shape)}"
        )
    if t.ndim == d - 1:
        return _shared(_expand_features(t[None], feat, name, 1), n, "tensor")
    if t.ndim == d + 1:
        if t.shape[0] not in (1, n):
            raise ValueError(f"{name} of shape {tuple(t.shape)}: the first axis must be 1 or the "
                             f"batch size {n} (shape (batch, k, ...))")
        sets = _expand_features(t, feat, name, 2)
        k = sets.shape[1]
        if sets.shape[0] == 1:
            return _subsample(_shared(sets[0], n, f"tensor set (k={k})"), n_baselines, seed, name)
        if n_baselines is not None:
            raise ValueError(f"n_baselines cannot sample from per-sample baseline sets {tuple(t.shape)}")
        return _per_sample(sets.reshape((n * k,) + feat), n, f"per-sample tensor sets (k={k})")
    bank = _expand_features(t, feat, name, 1)
    if len(bank) == 1 and n_baselines is None:
        return _shared(bank, n, "tensor")
    if len(bank) == n and n_baselines is None:
        return _per_sample(bank, n, "per-sample tensor")
    return _subsample(_shared(bank, n, f"tensor set (k={len(bank)})"), n_baselines, seed, name)


def _subsample(base: BaselineSet, n_baselines: int | None, seed, name: str) -> BaselineSet:
    """Keep ``n_baselines`` of a shared set, drawn once for all samples from ``seed``."""
    if n_baselines is None:
        return base
    k = len(base.bank)
    gen = make_rng(seed)
    pick = gen.choice(k, size=n_baselines, replace=n_baselines > k)
    bank = base.bank[torch.from_numpy(pick).to(base.bank.device)]
    return _shared(bank, base.n, f"{n_baselines} sampled from a set of {k}",
                   sampled_indices=pick.tolist())
