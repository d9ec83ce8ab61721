"""Explanations of a conditional diffusion model's guidance: "which pixels of the noisy image make
the guidance push this region towards class c?"

Classifier-free guidance (Ho & Salimans 2022) steers a conditional noise predictor with the
**guidance direction**

    g(x_t, t, c) = w · (eps(x_t, t, c) - eps(x_t, t, null))

(the null condition is the all-zero condition vector of :mod:`lumos.data.diffusion`). Its effect on
the model's prediction of the clean image is

    Δx0(x_t, t, c) = -sqrt((1 - ab_t) / ab_t) · g(x_t, t, c)

(``x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``): positive where guidance makes the predicted
image brighter, which for the shapes silhouettes (+1 on the shape, -1 off it) means "puts shape
there".

- :class:`GuidanceRegion`: an ``nn.Module`` whose output is one scalar per row, the weighted mean
  (or sum) under ``masks`` of ``Δx0`` (``projection="x0"``, the default) or of ``g``
  (``projection="eps"``), at one timestep ``t`` and one condition ``c``. Its input is the noisy
  image ``x_t`` (``wrt="x_t"``) or the condition vector (``wrt="condition"``, ``x_t`` fixed or given
  per row as a forward argument), so every lumos method (saliency, IG, occlusion, …) attributes the
  guidance's push on the region. On the condition, IG from the null condition is complete: the
  null condition has no guidance (``g(x_t, t, null) = 0``), so the attributions sum to the
  projection itself.
- :func:`explain_guidance`: runs the seeded sampler to the chosen timesteps, explains the region
  there with any method, and returns a :class:`GuidanceExplanation` (one Explanation per timestep,
  the noisy images, predicted clean images and guidance directions) whose :meth:`~GuidanceExplanation.plot`
  draws timesteps as columns (matplotlib imported there).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.diffusion import diffusion_condition, sample
from .generative import _fixed_condition

__all__ = ["GuidanceRegion", "explain_guidance", "GuidanceExplanation", "guidance_direction", "blank_canvas"]

_WRT = ("x_t", "condition")
_PROJ = ("x0", "eps")


def _check_model(model: Any) -> None:
    missing = [a for a in ("schedule", "n_classes", "image_shape") if not hasattr(model, a)]
    if not callable(model) or missing:
        raise TypeError(f"model must be a noise predictor model(x, t, c) with schedule, n_classes and image_shape "
                        f"attributes (e.g. lumos.data.diffusion.ShapesDDPM); missing {missing}")


def _region_mask(masks: Any, image_shape: tuple) -> torch.Tensor | None:
    if masks is None:
        return None
    m = torch.as_tensor(np.asarray(masks.detach().cpu() if isinstance(masks, torch.Tensor) else masks,
                                   dtype=np.float64))
    shape = tuple(image_shape)
    if m.dim() == 2:
        m = m[None].expand(shape[0], -1, -1)
    if tuple(m.shape) != shape or not torch.isfinite(m).all():
        raise ValueError(f"masks must be a finite array of shape {shape[1:]} or {shape} (the model's images); "
                         f"got shape {tuple(np.shape(masks))}")
    if float(m.abs().sum()) == 0:
        raise ValueError("masks selects no pixel (all zero)")
    return m.clone()


def guidance_direction(model: Any, x_t: torch.Tensor, t: int, c: Any, w: float = 1.0,
                       projection: str = "x0") -> torch.Tensor:
    """``w (eps(x_t, t, c) - eps(x_t, t, null))`` (``projection="eps"``) or the change it makes to the
    predicted clean image, ``-sqrt((1 - ab_t) / ab_t)`` times that (``"x0"``). Differentiable; the
    two noise predictions are one batched call."""
    n = len(x_t)
    cv = diffusion_condition(c, n, model.n_classes).to(x_t)
    tt = torch.full((2 * n,), int(t), dtype=torch.long, device=x_t.device)
    both = model(torch.cat([x_t, x_t]), tt, torch.cat([cv, torch.zeros_like(cv)]))
    g = w * (both[:n] - both[n:])
    if projection == "eps":
        return g
    ab = float(model.schedule.alphas_cumprod[int(t)])
    return -math.sqrt((1 - ab) / ab) * g


class GuidanceRegion(nn.Module):
    """``output(row)`` = the guidance direction's projection on a region, at one timestep and condition.

    Parameters
    ----------
    model : nn.Module or callable
        The noise predictor ``model(x, t, c)`` with ``schedule``, ``n_classes`` and ``image_shape``
        attributes (:class:`lumos.data.diffusion.ShapesDDPM`). A module becomes a submodule, so a
        lumos method's ModelGuard covers it.
    t : int
        The timestep, in ``[0, T)``.
    condition : int or float vector of length n_classes
        The class whose guidance is explained (with ``wrt="x_t"``; with ``wrt="condition"`` the
        input is the condition and this is ignored, may be None).
    masks : array of shape (H, W) or (C, H, W), or None
        The region (weights; None: the whole image).
    w : float, default 1.0
        Guidance scale multiplying the direction.
    projection : {"x0", "eps"}, default "x0"
        ``"x0"``: the change the guidance makes to the predicted clean image (positive: brighter,
        i.e. more shape); ``"eps"``: the guidance term of the noise itself.
    wrt : {"x_t", "condition"}, default "x_t"
        The module's input: the noisy images ``(m, C, H, W)``, or condition vectors
        ``(m, n_classes)`` (the zero vector is the null condition, where the output is exactly 0).
    x_t : Tensor of shape (C, H, W) or (1, C, H, W), or None
        With ``wrt="condition"``: the fixed noisy image, unless ``forward(c, x_t)`` is given one per row
        (``lumos.explain(..., forward_args=(x_t,))``).
    reduce : {"mean", "sum"}, default "mean"
        Weighted mean (sum of weighted values over the sum of weights) or weighted sum.
    """

    def __init__(self, model: Any, t: int, condition: Any = None, masks: Any = None, *, w: float = 1.0,
                 projection: str = "x0", wrt: str = "x_t", x_t: Any = None, reduce: str = "mean"):
        super().__init__()
        from ..core.validation import check_choice, check_number

        _check_model(model)
        self.wrt = check_choice(wrt, "wrt", _WRT)
        if self.wrt == "condition":
            # the condition enters through a frozen identity layer registered before the model: lumos'
            # input checks read a module's first layer, and the model's is a convolution over images
            dtype = next((p.dtype for p in model.parameters()), torch.float32) if isinstance(model, nn.Module) \
                else torch.float32
            self.condition_in = nn.Linear(model.n_classes, model.n_classes, bias=False, dtype=dtype)
            with torch.no_grad():
                self.condition_in.weight.copy_(torch.eye(model.n_classes, dtype=dtype))
            self.condition_in.requires_grad_(False)
        self.model = model
        self.t = model.schedule.check_t(t, "t")
        self.w = float(check_number(w, "w"))
        self.projection = check_choice(projection, "projection", _PROJ)
        self.reduce = check_choice(reduce, "reduce", ("mean", "sum"))
        self.n_classes = int(model.n_classes)
        self.image_shape = tuple(model.image_shape)
        m = _region_mask(masks, self.image_shape)
        self.register_buffer("masks", m if m is not None else torch.ones(self.image_shape, dtype=torch.float64),
                             persistent=False)
        self._condition = None
        self._x_t = None
        if self.wrt == "x_t":
            if condition is None:
                raise ValueError("condition: with wrt='x_t' give the class (an index) or a condition vector")
            self._condition = _fixed_condition(condition, self.n_classes)
        elif x_t is not None:
            xt = torch.as_tensor(x_t.detach() if isinstance(x_t, torch.Tensor) else np.asarray(x_t))
            if xt.dim() == len(self.image_shape) + 1 and len(xt) == 1:
                xt = xt[0]
            if tuple(xt.shape) != self.image_shape:
                raise ValueError(f"x_t must have shape {self.image_shape} (one noisy image); got {tuple(xt.shape)}")
            self._x_t = xt.clone()

    def _project(self, d: torch.Tensor) -> torch.Tensor:
        m = self.masks.to(d)
        total = (d * m).flatten(1).sum(1)
        return total / m.sum() if self.reduce == "mean" else total

    def forward(self, inputs: torch.Tensor, x_t: torch.Tensor | None = None) -> torch.Tensor:
        if self.wrt == "x_t":
            if inputs.dim() != len(self.image_shape) + 1 or tuple(inputs.shape[1:]) != self.image_shape:
                raise ValueError(f"GuidanceRegion(wrt='x_t'): inputs must have shape (batch, "
                                 f"{', '.join(map(str, self.image_shape))}); got {tuple(inputs.shape)}")
            c = self._condition.to(inputs).expand(len(inputs), -1)
            return self._project(guidance_direction(self.model, inputs, self.t, c, self.w, self.projection))
        if inputs.dim() != 2 or inputs.shape[1] != self.n_classes:
            raise ValueError(f"GuidanceRegion(wrt='condition'): inputs must have shape (batch, {self.n_classes}); "
                             f"got {tuple(inputs.shape)}")
        if x_t is None:
            if self._x_t is None:
                raise ValueError("x_t: with wrt='condition' give the noisy image (x_t= here, or one per row as a "
                                 "forward argument)")
            x_t = self._x_t.to(inputs).expand(len(inputs), *self.image_shape)
        elif tuple(x_t.shape) != (len(inputs),) + self.image_shape:
            raise ValueError(f"x_t must have shape ({len(inputs)}, {', '.join(map(str, self.image_shape))}); "
                             f"got {tuple(x_t.shape)}")
        return self._project(guidance_direction(self.model, x_t.to(inputs), self.t, self.condition_in(inputs),
                                                self.w, self.projection))


@dataclass
class GuidanceExplanation:
    """The guidance explained at several timesteps of one seeded sampling run.

    Attributes
    ----------
    timesteps : list of int
        In sampling order (noisiest first).
    explanations : list of Explanation
        One per timestep: values of the noisy images' shape (``wrt="x_t"``) or ``(batch, n_classes)``.
    x_t : ndarray (n_timesteps, batch, C, H, W)
        The noisy image entering each step.
    x0 : ndarray (n_timesteps, batch, C, H, W)
        The guided prediction of the clean image there (scale ``[-1, 1]``, not clipped).
    direction : ndarray (n_timesteps, batch, C, H, W)
        The guidance direction in the chosen projection (``Δx0`` or ``g``).
    region : ndarray (n_timesteps, batch)
        The explained scalar (the module's output at ``x_t``).
    images : ndarray (batch, C, H, W) or None
        The finished samples (None when ``x_t`` was given).
    classes : ndarray (batch, n_classes)
    masks : ndarray (C, H, W)
    w, projection, wrt, method, seed
    """

    timesteps: list
    explanations: list
    x_t: np.ndarray
    x0: np.ndarray
    direction: np.ndarray
    region: np.ndarray
    images: np.ndarray | None
    classes: np.ndarray
    masks: np.ndarray
    w: float
    projection: str
    wrt: str
    method: str
    seed: Any
    class_names: list | None = None

    def __getitem__(self, t: int):
        """The Explanation at timestep ``t``."""
        if t not in self.timesteps:
            raise KeyError(f"timestep {t} was not explained; timesteps: {self.timesteps}")
        return self.explanations[self.timesteps.index(t)]

    def plot(self, row: int = 0, cell: float = 1.25, title: str | None = None):
        """Timesteps as columns; rows: ``x_t``, the predicted clean image, the guidance direction (signed,
        its colour bar) and the attribution map (signed, its colour bar; the region outlined).
        Attributions to the condition (``wrt="condition"``) are drawn as bars. Returns the figure."""
        import matplotlib.pyplot as plt

        from ..display._common import add_colorbar, ensure_layout
        from ..display.heatmap import DIVERGING

        n_t = len(self.timesteps)
        if not 0 <= row < self.x_t.shape[1]:
            raise ValueError(f"row must lie in [0, {self.x_t.shape[1]}); got {row}")
        fig, axes = plt.subplots(4, n_t, figsize=(cell * n_t + 1.6, cell * 4 + 0.7), squeeze=False)
        proj = "Δx̂0" if self.projection == "x0" else "g"
        d_scale = float(np.abs(self.direction[:, row]).max()) or 1.0
        vals = [np.asarray(e.values)[row] for e in self.explanations]
        a_scale = float(max(np.abs(v).max() for v in vals)) or 1.0
        region = self.masks.mean(0) if self.masks.ndim == 3 else self.masks
        whole = bool(np.all(region == region.flat[0]))
        for j, t in enumerate(self.timesteps):
            gray = dict(cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            axes[0, j].imshow(self.x_t[j, row].mean(0), **gray)
            axes[0, j].set_title(f"t = {t}", fontsize=8)
            axes[1, j].imshow(np.clip(self.x0[j, row].mean(0), -1, 1), **gray)
            im_d = axes[2, j].imshow(self.direction[j, row].mean(0), cmap=DIVERGING, vmin=-d_scale, vmax=d_scale,
                                     interpolation="nearest")
            if self.wrt == "x_t":
                im_a = axes[3, j].imshow(vals[j].sum(0), cmap=DIVERGING, vmin=-a_scale, vmax=a_scale,
                                         interpolation="nearest")
                if not whole:
                    axes[3, j].contour(region, levels=[0.5 * float(region.max())], colors="k", linewidths=0.6)
            else:
                names = self.class_names or [f"c{i}" for i in range(len(vals[j]))]
                axes[3, j].barh(range(len(vals[j])), vals[j],
                                color=["#b2182b" if v > 0 else "#2166ac" for v in vals[j]])
                axes[3, j].set_xlim(-a_scale * 1.05, a_scale * 1.05)
                axes[3, j].axvline(0, color="k", lw=0.5)
                axes[3, j].set_yticks(range(len(vals[j])), names if j == 0 else [""] * len(names), fontsize=6)
                axes[3, j].invert_yaxis()
                axes[3, j].tick_params(axis="x", labelsize=5)
            for i in range(4 if self.wrt == "x_t" else 3):
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
        for i, label in enumerate(["x_t", "predicted x0", f"guidance {proj}", self.method]):
            axes[i, 0].set_ylabel(label, fontsize=7)
        add_colorbar(fig, im_d, list(axes[2]), scale=d_scale, signed=True, label=proj, shrink=0.9)
        if self.wrt == "x_t":
            add_colorbar(fig, im_a, list(axes[3]), scale=a_scale, signed=True, label="attribution", shrink=0.9)
        cls = self.classes[row]
        hot = int(np.argmax(cls))
        name = self.class_names[hot] if self.class_names else f"c{hot}"
        fig.suptitle(title if title is not None else
                     f"guidance towards {name} (w = {self.w:g}), seed {self.seed}", fontsize=9)
        ensure_layout(fig)
        return fig


def blank_canvas(model: Any, t: int, n: int, seed: Any = 0, dtype=torch.float32) -> torch.Tensor:
    """The default baseline of IG-like methods on ``x_t``: an empty canvas (all -1, no shape) noised to
    step ``t``, ``sqrt(ab_t) · (-1) + sqrt(1 - ab_t) · eps``, with ``eps`` drawn per image from
    ``seed + i + 10**6`` (or ``seed[i] + 10**6``): deterministic, independent of the other images.

    Not the all-zero image: a constant image makes every channel after the network's first
    convolution constant, where GroupNorm's normalisation is singular (IG then needs thousands of
    steps to be complete)."""
    from ..core.validation import check_number

    t = model.schedule.check_t(t, "t")
    seeds = list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else \
        [int(check_number(seed, "seed", low=0, integer=True)) + i for i in range(n)]
    if len(seeds) != n:
        raise ValueError(f"seed: give one int or one seed per image ({n}); got {len(seeds)} seeds")
    ab = float(model.schedule.alphas_cumprod[t])
    eps = torch.stack([torch.randn(tuple(model.image_shape), generator=torch.Generator().manual_seed(int(s) + 10**6))
                       for s in seeds]).to(dtype)
    return -math.sqrt(ab) + math.sqrt(1 - ab) * eps


def explain_guidance(model: Any, classes: Any = None, *, x_t: Any = None, seed: Any = 0,
                     timesteps: Sequence[int] = (80, 50, 20), masks: Any = None,
                     method: str = "integrated_gradients", w: float = 2.0, projection: str = "x0",
                     wrt: str = "x_t", sampler: str = "ddpm", reduce: str = "mean", **params: Any
                     ) -> GuidanceExplanation:
    """Attribute the guidance direction's push on a region at chosen timesteps of a seeded sampling run.

    Parameters
    ----------
    model : nn.Module or callable
        The noise predictor (see :class:`GuidanceRegion`).
    classes : int, sequence of int, or float (batch, n_classes)
        The condition of each image (an int: one image).
    x_t : Tensor (batch, C, H, W), dict {t: Tensor}, or None
        Noisy images to explain instead of sampling: a tensor is read at the one timestep given
        (``timesteps`` must then hold one); a dict gives one per timestep. None: run
        :func:`lumos.data.diffusion.sample` with ``seed``, ``w`` and ``sampler`` and explain the
        image entering each chosen step.
    seed : int or sequence of int, default 0
        The sampler's seeds (image ``i``: ``seed + i``).
    timesteps : sequence of int, default (80, 50, 20)
        In ``[0, T)``; explained noisiest first.
    masks : array (H, W) or (C, H, W), or None
        The region (None: the whole image).
    method : str, default "integrated_gradients"
        Any lumos method for torch models; ``**params`` are passed to it (``n_steps``, ``baselines``,
        ``window`` …). Default baselines of methods that take them: on ``x_t`` the empty canvas
        noised to the step (:func:`blank_canvas`, seeded from ``seed``); on the condition the null
        condition (zeros), where the guidance is 0, so IG's attributions sum to the projection.
    w : float, default 2.0
        Guidance scale, of the sampler and of the explained direction.
    projection : {"x0", "eps"}, default "x0"
    wrt : {"x_t", "condition"}, default "x_t"
        Attribute to the pixels of the noisy image, or to the condition vector (with ``x_t`` fixed,
        per row).
    sampler : {"ddpm", "ddim"}, default "ddpm"
    reduce : {"mean", "sum"}, default "mean"

    Returns
    -------
    GuidanceExplanation
    """
    from ..core.registry import explain
    from ..core.torch_model import ModelGuard, check_finite
    from ..core.validation import check_choice, check_number

    _check_model(model)
    check_choice(wrt, "wrt", _WRT)
    check_choice(projection, "projection", _PROJ)
    w = float(check_number(w, "w"))
    if isinstance(timesteps, (int, np.integer)) and not isinstance(timesteps, bool):
        timesteps = [int(timesteps)]
    ts = [model.schedule.check_t(t, "timesteps") for t in timesteps]
    if not ts or len(set(ts)) != len(ts):
        raise ValueError(f"timesteps must name at least one timestep, each once; got {list(timesteps)}")
    ts = sorted(ts, reverse=True)
    if classes is None:
        raise ValueError("classes: give the class of each image (an index per image, or a float condition)")
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        classes = [int(classes)]
    n = len(classes)
    cv = diffusion_condition(classes if not isinstance(classes, list) else np.asarray(classes, dtype=np.int64),
                             n, model.n_classes, "classes").float()
    images = None
    if x_t is None:
        traj = sample(model, cv, seed=seed, w=w, method=sampler, record=ts, return_trajectory=True)
        xs = {t: traj.x_t[t] for t in ts}
        images = traj.images.detach().cpu().numpy()
    else:
        if isinstance(x_t, dict):
            if sorted(x_t) != sorted(ts):
                raise ValueError(f"x_t: the dict's timesteps {sorted(x_t)} differ from timesteps {sorted(ts)}")
            xs = dict(x_t)
        else:
            if len(ts) != 1:
                raise ValueError("x_t: one tensor is read at one timestep; give one timestep or a dict {t: x_t}")
            xs = {ts[0]: x_t}
        for t, v in xs.items():
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,) + tuple(model.image_shape):
                raise ValueError(f"x_t at t={t} must be a tensor of shape ({n}, "
                                 f"{', '.join(map(str, model.image_shape))}); got {tuple(getattr(v, 'shape', ()))}")
    dtype = next((p.dtype for p in model.parameters()), torch.float32) if isinstance(model, nn.Module) \
        else torch.float32
    import inspect

    from ..core.registry import get_method

    blank = wrt == "x_t" and "baselines" not in params and \
        "baselines" in inspect.signature(get_method(method).func).parameters
    expls, x0s, dirs, regions = [], [], [], []
    ab_all = model.schedule.alphas_cumprod
    for t in ts:
        xt = xs[t].detach().to(dtype)
        ab = float(ab_all[t])
        if wrt == "x_t":
            kw = {"baselines": blank_canvas(model, t, n, seed=seed, dtype=dtype)} if blank else {}
            if not torch.equal(cv, cv[:1].expand_as(cv)):
                # one module per class: rows of one class are explained together, then put back in order
                parts = {}
                for k in torch.unique(cv, dim=0):
                    rows = [i for i in range(n) if torch.equal(cv[i], k)]
                    mod = GuidanceRegion(model, t, k, masks, w=w, projection=projection, reduce=reduce)
                    parts[tuple(rows)] = explain(mod, xt[rows], method,
                                                 **{k: v[rows] for k, v in kw.items()}, **params)
                expl = _merge(parts, n)
            else:
                mod = GuidanceRegion(model, t, cv[0], masks, w=w, projection=projection, reduce=reduce)
                expl = explain(mod, xt, method, **kw, **params)
        else:
            mod = GuidanceRegion(model, t, None, masks, w=w, projection=projection, wrt="condition", reduce=reduce)
            names = getattr(model, "class_names", None)
            kw = {"feature_names": [f"c:{c}" for c in names]} if names is not None and \
                len(names) == model.n_classes and "feature_names" not in params else {}
            expl = explain(mod, cv.to(dtype), method, forward_args=(xt,), **kw, **params)
        with (ModelGuard(model) if isinstance(model, nn.Module) else nullcontext()), torch.no_grad():
            d = guidance_direction(model, xt, t, cv.to(dtype), w, projection)
            both = model(torch.cat([xt, xt]), torch.full((2 * n,), t, dtype=torch.long),
                         torch.cat([cv.to(dtype), torch.zeros_like(cv, dtype=dtype)]))
            eps = both[n:] + w * (both[:n] - both[n:])
            check_finite(eps, f"the noise predicted at t={t}")
            x0 = (xt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            m = mod.masks.to(d)
            r = (d * m).flatten(1).sum(1)
            r = r / m.sum() if reduce == "mean" else r
        expls.append(expl)
        x0s.append(x0.detach().cpu().numpy())
        dirs.append(d.detach().cpu().numpy())
        regions.append(r.detach().cpu().numpy())
    names = getattr(model, "class_names", None)
    return GuidanceExplanation(ts, expls, np.stack([xs[t].detach().cpu().numpy() for t in ts]), np.stack(x0s),
                               np.stack(dirs), np.stack(regions), images, cv.numpy(),
                               mod.masks.cpu().numpy(), w, projection, wrt, method, seed,
                               list(names) if names is not None else None)


def _merge(parts: dict, n: int):
    """One Explanation from per-class ones (``{rows: explanation}``), rows back in the caller's order."""
    from ..core.explanation import concatenate

    order = [r for rows in parts for r in rows]
    joined = concatenate(list(parts.values()))
    return joined[np.argsort(order)]
