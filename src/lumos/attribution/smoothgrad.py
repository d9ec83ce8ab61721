"""SmoothGrad, SmoothGrad² and VarGrad around any registered attribution method.

- SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg, 2017, "SmoothGrad: removing noise by
  adding noise"): the mean of the base attribution over noisy copies of the input.
- SmoothGrad² (Hooker, Erhan, Kindermans & Kim, 2019, "A Benchmark for Interpretability Methods in
  Deep Neural Networks"): the mean of the squared attributions.
- VarGrad (Adebayo, Gilmer, Goodfellow & Kim, 2018, "Local Explanation Methods for Deep Neural
  Networks Lack Sensitivity to Parameter Values"): their variance.

The noise of sample ``i`` has standard deviation ``noise_level * (max(x_i) - min(x_i))`` (the
paper's "noise level relative to the input range"). Draw ``j`` is a standard-normal field from its
own random stream, keyed by ``(seed, j)`` (:func:`noise_draws`), shared by all samples (each
scaled by its own sigma): a sample's result depends only on the sample and the seed, never on
``batch_size`` nor on the other samples in the batch. The draws are made per chunk, for the rows
of that chunk only, so ``batch_size`` bounds the memory of the noise as it bounds that of the
passes (all ``n_samples`` draws are never held at once).

All noisy copies are evaluated as one stacked batch of ``batch * n_samples`` rows, ``batch_size``
rows at a time, with the target resolved once at the clean input (``"predicted"`` means the class
predicted for the clean sample). Base methods with a row kernel (saliency, gradient × input,
integrated gradients: see :mod:`lumos.attribution.gradient`) are evaluated directly on the stacked
batch; any other registered method is called on each chunk of it.
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ..core.execution import check_batch_size, chunks
from ..core.inputs import rows_of
from ..core.registry import _REGISTRY, get_method, register
from ..core.torch_model import NonFiniteOutputError, Prepared, torch_call
from ..core.layout import BatchLayout
from ..core.validation import check_choice, check_number
from .gradient import row_bytes
from .integrated_gradients import _describe, _packed_baselines

__all__ = ["smoothgrad", "smoothgrad_sq", "vargrad", "VARIANTS", "noise_draws"]

VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")
_VARIANT_ALIASES = {"smoothgrad2": "smoothgrad_sq", "smoothgrad_squared": "smoothgrad_sq",
                    "sg": "smoothgrad", "sg_sq": "smoothgrad_sq", "var": "vargrad"}
_OWN = ("batch_size", "progress")


def _check_variant(variant: Any) -> str:
    key = variant.strip().lower() if isinstance(variant, str) else variant
    key = _VARIANT_ALIASES.get(key, key) if isinstance(key, str) else key
    return check_choice(key if key in VARIANTS else variant, "variant", VARIANTS)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> int:
    """The seed as an int; ``None`` draws one from the OS (recorded in the Explanation)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None; got {seed!r}")
    return int(seed)


def noise_draws(seed: int, draws: Any, shape: tuple, dtype: torch.dtype = torch.float32,
                device: Any = "cpu") -> torch.Tensor:
    """Standard-normal fields ``z_j`` for the draw indices ``draws``, shape ``(len(draws), *shape)``.

    Draw ``j`` comes from its own stream (a generator seeded from ``SeedSequence(seed,
    spawn_key=(j,))``), so it is the same whichever other draws are made with it: chunks of any
    size give identical noise, and only the draws a chunk needs are ever in memory.
    """
    draws = [int(j) for j in draws]
    z = torch.empty((len(draws),) + tuple(shape), dtype=dtype)
    g = torch.Generator()
    for k, j in enumerate(draws):
        g.manual_seed(int(np.random.SeedSequence(seed, spawn_key=(j,)).generate_state(1, np.uint64)[0]))
        z[k] = torch.randn(tuple(shape), generator=g, dtype=dtype)
    return z.to(device)


def _base_call(base: str, base_params: dict, seed):
    """Resolve the base method and validate the parameters forwarded to it."""
    if not isinstance(base, str):
        raise TypeError(f"base must be the name of a registered method; got {type(base).__name__}")
    try:
        info = get_method(base)
    except ValueError:  # the registry's message names `method`; here the argument is `base`
        check_choice(base, "base", sorted(k for k in _REGISTRY if k not in VARIANTS))
        raise
    if info.name in VARIANTS:
        raise ValueError(f"base must be a method other than {VARIANTS}; got {base!r}")
    sig = inspect.signature(info.func)
    accepted = {k for k, v in sig.parameters.items()
                if v.kind == inspect.Parameter.KEYWORD_ONLY or k not in ("model", "inputs", "target")}
    accepts_any = any(v.kind == inspect.Parameter.VAR_KEYWORD for v in sig.parameters.values())
    unknown = sorted(set(base_params) - accepted) if not accepts_any else []
    if unknown:
        raise ValueError(
            f"smoothgrad: the base method {info.name!r} has no parameter(s) {unknown}; it takes "
            f"{sorted(accepted - {'model', 'inputs', 'target'})}"
        )
    params = dict(base_params)
    if "seed" in accepted and "seed" not in params:
        params["seed"] = seed  # a random base method follows smoothgrad's seed
    return info, params, accepted | ({"batch_size", "progress"} if accepts_any else set())


class _Moments:
    """Running per-sample count, mean and sum of squared deviations (Chan, Golub & LeVeque, 1979).

    Combining chunk statistics this way keeps the variance a sum of squares, so VarGrad is never
    negative through cancellation, and the result depends on ``batch_size`` only through rounding.
    Without ``need_m2`` only sums are kept (one pass per chunk).
    """

    def __init__(self, n: int, need_m2: bool):
        self.n, self.need_m2 = n, need_m2
        self.count = self.total = self.mean = self.m2 = None

    def add(self, v: torch.Tensor, sample: torch.Tensor) -> None:
        if self.count is None:
            shape = (self.n,) + tuple(v.shape[1:])
            self.count = torch.zeros(self.n, dtype=v.dtype, device=v.device)
            if self.need_m2:
                self.mean = torch.zeros(shape, dtype=v.dtype, device=v.device)
                self.m2 = torch.zeros(shape, dtype=v.dtype, device=v.device)
            else:
                self.total = torch.zeros(shape, dtype=v.dtype, device=v.device)
        sample = sample.to(v.device)
        ones = torch.ones(len(v), dtype=v.dtype, device=v.device)
        if not self.need_m2:
            self.total.index_add_(0, sample, v)
            self.count.index_add_(0, sample, ones)
            return
        lo, hi = int(sample.min()), int(sample.max()) + 1  # rows are sample-major: a contiguous range
        local = sample - lo
        view = (-1,) + (1,) * (v.ndim - 1)
        cnt = torch.zeros(hi - lo, dtype=v.dtype, device=v.device).index_add_(0, local, ones)
        mean_c = torch.zeros((hi - lo,) + tuple(v.shape[1:]), dtype=v.dtype,
                             device=v.device).index_add_(0, local, v).div_(cnt.view(view))
        dev = v - mean_c.index_select(0, local)
        m2_c = torch.zeros_like(mean_c).index_add_(0, local, dev.mul_(dev))
        c0 = self.count[lo:hi]
        total = c0 + cnt
        delta = mean_c.sub_(self.mean[lo:hi])
        self.m2[lo:hi] += m2_c.addcmul_(delta, delta * (c0 * cnt / total).view(view))
        self.mean[lo:hi] += delta.mul_((cnt / total).view(view))
        self.count[lo:hi] = total

    def result(self, variance: bool) -> torch.Tensor:
        if not variance and self.need_m2:
            return self.mean
        s = self.m2 if variance else self.total
        return s / self.count.view((-1,) + (1,) * (s.ndim - 1))


def _run(p: Prepared, info, params: dict, accepted: set, variant: str, noise_level: float,
         n_samples: int, seed: int, bs: int, progress) -> tuple[torch.Tensor, torch.Tensor]:
    x, n = p.x, p.n
    flat = x.reshape(n, -1)
    sigma = noise_level * (flat.max(1).values - flat.min(1).values)  # (n,)
    # Noisy copies are built in the storage layout of the batches (NHWC for channels-last conv
    # nets) and handed to the base method as model-layout views, without copies.
    lay = BatchLayout(p.model, x)
    x_int = lay.internal(x)
    view = (-1,) + (1,) * (x.ndim - 1)
    kernel = getattr(info.func, "row_kernel", None)
    moments = _Moments(n, need_m2=variant == "vargrad")
    total = n * n_samples
    same_shape = None
    for sl in chunks(total, bs, desc=f"smoothgrad({info.name})", progress=progress):
        r = torch.arange(sl.start, sl.stop)
        sample, draw = r // n_samples, r % n_samples
        dev_sample = sample.to(x.device)
        # only this chunk's draws, each from its own stream (see module docstring)
        used, which = torch.unique(draw, return_inverse=True)
        z_int = lay.internal(noise_draws(seed, used.tolist(), tuple(x.shape[1:]), x.dtype, x.device))
        noisy = lay.model_view(torch.addcmul(
            x_int.index_select(0, dev_sample), sigma.index_select(0, dev_sample).view(view),
            z_int.index_select(0, which.to(x.device))))
        del z_int
        try:
            if kernel is not None:
                a = kernel(p.model, noisy, p.target, sample, batch_size=bs, progress=False, **params)
            else:
                if p.target.fn is not None:
                    tgt = p.target.fn
                elif p.target.indices is not None:
                    tgt = p.target.indices[sample.numpy()]
                else:
                    tgt = None
                extra = {k: v for k, v in (("batch_size", bs), ("progress", False)) if k in accepted}
                # the base method sees the noisy batch as its samples: row k is a copy of sample
                # sample[k] (its per-sample forward arguments, its input for a layer attribution)
                with rows_of(p.model, sample):
                    e = info.func(p.model, noisy, target=tgt, **extra, **params)
                a = torch.as_tensor(np.asarray(e.values), device=x.device)
        except NonFiniteOutputError as err:  # say that the bad evaluation was a noisy copy
            raise NonFiniteOutputError(
                f"smoothgrad: on the noisy copies of the inputs (noise_level={noise_level:g}, "
                f"rows {sl.start}..{sl.stop - 1} of sample x draw): {err}") from err
        if same_shape is None:  # attributions shaped like the inputs share their layout
            same_shape = lay.nhwc and tuple(a.shape) == tuple(noisy.shape)
        if same_shape:
            a = lay.from_model(a)
        if variant == "smoothgrad_sq":
            a = a * a
        moments.add(a, sample)
    values = moments.result(variance=variant == "vargrad")
    return (lay.user(values) if same_shape else values), sigma


@register("smoothgrad", "gradient",
          "Mean (or mean square / variance) of a method over noisy inputs (Smilkov et al., 2017)")
def smoothgrad(model: torch.nn.Module, inputs: Any, target: Any = None, *, base: str = "saliency",
               variant: str = "smoothgrad", noise_level: float = 0.15, n_samples: int = 50,
               seed: int | None = 0, batch_size: int | None = None,
               progress: bool | None = None, forward_args: Any = None, at: str | None = None,
               layer_side: str = "output", **base_params: Any):
    """SmoothGrad and its variants around any registered attribution method.

    Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by adding
    noise"; SmoothGrad² from Hooker et al. (2019); VarGrad from Adebayo et al. (2018).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs give one values array per input; they are noised together (one noise
        level relative to the range of a sample's inputs taken together, as for the same model
        written on their concatenation).
    target : int, sequence, "predicted", callable, lumos.Neuron or None
        Resolved once at the clean inputs: ``"predicted"`` is the class predicted for the clean
        sample, used for all its noisy copies. A callable target is applied to the outputs of the
        noisy copies and must work row by row. ``lumos.Neuron("layer", index)`` explains a unit.
    base : str, default "saliency"
        The registered method evaluated on the noisy copies (``"saliency"``,
        ``"gradient_x_input"``, ``"integrated_gradients"``, ``"guided_backprop"``...).
    variant : {"smoothgrad", "smoothgrad_sq", "vargrad"}, default "smoothgrad"
        Mean of the attributions, mean of their squares, or their (population) variance.
    noise_level : float, default 0.15
        Noise standard deviation relative to each sample's value range ``max - min``; the paper
        recommends 0.1 to 0.2. ``0`` gives the base method itself.
    n_samples : int, default 50
        Noisy copies per sample.
    seed : int or None, default 0
        Seed of the noise: draw ``j`` comes from its own stream keyed by ``(seed, j)``, shared by
        all samples, so results do not depend on ``batch_size`` or on the other samples. Also
        passed to a random base method that takes a ``seed``. ``None`` draws a seed from the OS
        and records it in ``meta["seed"]``.
    batch_size : int, optional
        Noisy copies per forward+backward pass (default: sized by memory, at most 64); it also
        bounds the noise held in memory. A base method with internal rows (integrated gradients'
        steps) evaluates its own rows ``batch_size`` at a time.
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained; per-sample ones (first axis of
        batch length) go with their sample to each of its noisy copies (and to every integration
        step of a base method that has them), see :mod:`lumos.core.inputs`.
    at : str, optional
        Attribute to this layer's output (or input, ``layer_side="input"``) activation: the
        noise is added to the activation (its level relative to the activation's range), and
        ``values`` has the activation's shape.
    layer_side : {"output", "input"}, default "output"
    **base_params
        Parameters of the base method (``mode="abs"`` for saliency, ``n_steps=20`` for
        integrated gradients...). Per-sample tensor parameters (a per-sample baseline) are not
        supported: give shared ones. With several inputs ``baselines`` / ``background`` may
        be given per input (a tuple or dict), as for :func:`integrated_gradients`.

    Returns
    -------
    Explanation
        ``values`` has the shape of the base method's values; raw (the squared and variance
        variants are not normalised). ``meta["noise_sigma"]`` holds each sample's noise standard
        deviation. A NaN or Inf model output on a noisy copy raises
        :class:`~lumos.core.torch_model.NonFiniteOutputError` naming the noisy copies.
    """
    variant = _check_variant(variant)
    noise_level = check_number(noise_level, "noise_level", low=0)
    n_samples = _check_positive_int(n_samples, "n_samples")
    check_batch_size(batch_size)
    seed = _check_seed(seed)
    for k in _OWN:
        if k in base_params:  # pragma: no cover - caught by Python's signature already
            raise ValueError(f"{k} is smoothgrad's own parameter")
    info, params, accepted = _base_call(base, base_params, seed)
    with torch_call(model, inputs, target, method="smoothgrad", forward_args=forward_args,
                    several=True, at=at, layer_side=layer_side) as p:
        per_input = [k for k in ("baselines", "background") if k in params]
        if per_input:  # one entry per input (several inputs) packed like the inputs
            packed = dict(zip(("baselines", "background"),
                              _packed_baselines(p, params.get("baselines"), params.get("background"))))
            params.update({k: packed[k] for k in per_input})
        bs = check_batch_size(batch_size, row_bytes=row_bytes(p.x))
        values, sigma = _run(p, info, params, accepted, variant, noise_level, n_samples,
                             seed, bs, progress)
        return p.explanation(
            values, variant,
            {"base": info.name, "variant": variant, "noise_level": noise_level,
             "n_samples": n_samples, "seed": seed,
             **{k: _describe(v) if k in ("baselines", "background") else v
                for k, v in base_params.items()}},
            meta={"base": info.name, "variant": variant, "seed": seed, "n_samples": n_samples},
            sample_meta={"noise_sigma": sigma.cpu().numpy()},
        )


@register("smoothgrad_sq", "gradient", "SmoothGrad²: mean squared attribution over noisy inputs "
          "(Hooker et al., 2019)")
def smoothgrad_sq(model: torch.nn.Module, inputs: Any, target: Any = None, **params: Any):
    """``smoothgrad(..., variant="smoothgrad_sq")``; see :func:`smoothgrad`."""
    if "variant" in params:
        raise TypeError("smoothgrad_sq fixes variant='smoothgrad_sq'; use smoothgrad for others")
    return smoothgrad(model, inputs, target, variant="smoothgrad_sq", **params)


@register("vargrad", "gradient", "VarGrad: variance of attributions over noisy inputs "
          "(Adebayo et al., 2018)")
def vargrad(model: torch.nn.Module, inputs: Any, target: Any = None, **params: Any):
    """``smoothgrad(..., variant="vargrad")``; see :func:`smoothgrad`."""
    if "variant" in params:
        raise TypeError("vargrad fixes variant='vargrad'; use smoothgrad for others")
    return smoothgrad(model, inputs, target, variant="vargrad", **params)
