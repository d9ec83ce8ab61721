"""A tiny conditional diffusion model (DDPM) of the shapes world's silhouettes, with classifier-free guidance.

:class:`ShapesDDPM` predicts the noise ``eps(x_t, t, c)`` of a noisy silhouette (Ho, Jain & Abbeel,
*Denoising Diffusion Probabilistic Models*, NeurIPS 2020) with a small U-Net: two resolutions below
the input, residual blocks, a sinusoidal time embedding and a class condition. The condition is a
float vector ``c`` of ``n_classes`` values, one-hot for a class and **all zeros for the null
condition** (no class) of classifier-free guidance (Ho & Salimans, *Classifier-Free Diffusion
Guidance*, 2022): during training the condition is dropped (set to zeros) with probability
``p_uncond``, so one network predicts both ``eps(x_t, t, c)`` and ``eps(x_t, t, null)``. A continuous
condition between the null vector and a one-hot class is a valid input, which is what an attribution
to the condition integrates along.

The images are the VAE's (:func:`lumos.data.generative.vae_images`): the shapes world's evidence
masks pooled 2×2, 32×32, one channel, scaled to ``[-1, 1]`` (``x = 2 m - 1``: +1 on the shape, -1
off it). :func:`to_unit` maps samples back to ``[0, 1]`` for :class:`~lumos.data.generative.SilhouetteRGB`.

The noise schedule (:class:`DiffusionSchedule`, cosine by default: Nichol & Dhariwal, *Improved
Denoising Diffusion Probabilistic Models*, ICML 2021) has ``T`` steps, ``t = 0 … T-1``; ``x_t =
sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps`` with ``ab_t`` the cumulative product of ``1 - beta``.
:func:`sample` runs the guided sampler (DDPM ancestral or DDIM) with the guided noise

    eps_w(x_t, t, c) = eps(x_t, t, null) + w (eps(x_t, t, c) - eps(x_t, t, null))

(``w = 1``: the conditional model; ``w = 0``: unconditional). Every random draw comes from one
``torch.Generator`` per image seeded from ``seed`` (image ``i`` of a call with ``seed=s`` uses
``s + i``), so an image does not depend on the other images of the call or on the batch size.

:func:`train_shapes_ddpm` trains it reproducibly (``lumos train-demo --diffusion``, one CPU thread);
:func:`load_shapes_ddpm` reads the shipped weights with ``weights_only=True``.

>>> from lumos.data.diffusion import load_shapes_ddpm, sample, to_unit
>>> model = load_shapes_ddpm()
>>> images = to_unit(sample(model, [0, 1, 2, 3], seed=0, w=2.0))   # (4, 1, 32, 32) in [0, 1]
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .generative import VAE_SIZE, condition_vector, vae_images
from .shapes import CLASS_NAMES, shapes_dataset
from .models import read_record, read_state
from .train import save_weights

__all__ = ["ShapesDDPM", "DiffusionSchedule", "sample", "SampleTrajectory", "guided_eps", "null_condition",
           "diffusion_condition", "predicted_x0", "to_unit", "train_shapes_ddpm", "load_shapes_ddpm",
           "shapes_ddpm_info", "recognition_rates", "demo_silhouette_classifier", "WEIGHTS_PATH", "INFO_PATH", "DEFAULTS"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "shapes_ddpm.pt"
INFO_PATH = WEIGHTS_DIR / "shapes_ddpm.json"
#: The settings the shipped weights were trained with.
DEFAULTS = dict(seed=0, steps=4000, n_train=6000, batch_size=32, lr=2e-3, T=100, schedule="cosine",
                p_uncond=0.15, channels=24, ema=0.995)


@dataclass
class DiffusionSchedule:
    """The forward process' noise schedule, ``T`` steps ``t = 0 … T-1`` (float64).

    Parameters
    ----------
    T : int, default 100
    kind : {"cosine", "linear"}, default "cosine"
        Cosine: ``ab_t = f(t+1) / f(0)``, ``f(s) = cos²((s/T + 0.008) / 1.008 · π/2)``, betas clipped
        at 0.999 (Nichol & Dhariwal 2021). Linear: betas from ``1e-4 · 1000/T`` to ``0.02 · 1000/T``
        (Ho et al. 2020, rescaled to ``T`` steps), clipped at 0.999.

    Attributes
    ----------
    betas, alphas_cumprod : Tensor of shape (T,), float64
    """

    T: int = 100
    kind: str = "cosine"
    betas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        from ..core.validation import check_choice, check_number

        self.T = int(check_number(self.T, "T", low=2, integer=True))
        self.kind = check_choice(self.kind, "kind", ("cosine", "linear"))
        if self.kind == "cosine":
            s = torch.arange(self.T + 1, dtype=torch.float64) / self.T
            f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            scale = 1000.0 / self.T
            betas = torch.linspace(1e-4 * scale, 0.02 * scale, self.T, dtype=torch.float64).clamp(max=0.999)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)

    def check_t(self, t: Any, name: str = "t") -> int:
        """``t`` as an int in ``[0, T)``; ValueError naming ``name`` otherwise."""
        from ..core.validation import check_number

        return int(check_number(t, name, low=0, high=self.T - 1, integer=True))


def null_condition(n: int, n_classes: int = len(CLASS_NAMES), dtype=torch.float32) -> torch.Tensor:
    """The null condition of classifier-free guidance: ``n`` rows of zeros."""
    return torch.zeros(n, n_classes, dtype=dtype)


def diffusion_condition(c: Any, n: int, n_classes: int, name: str = "c") -> torch.Tensor:
    """A float ``(n, n_classes)`` condition: class indices → one-hot rows, ``None`` → the null
    condition (zeros), a float ``(n, n_classes)`` tensor as is (gradients flow through it)."""
    if c is None:
        return null_condition(n, n_classes)
    return condition_vector(c, n, n_classes, name)


class _TimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        dtype = self.mlp[0].weight.dtype
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=dtype, device=t.device) / half)
        a = t.to(dtype)[:, None] * freqs[None]
        return self.mlp(torch.cat([a.sin(), a.cos()], 1))


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1 = nn.GroupNorm(min(8, cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2 = nn.GroupNorm(min(8, cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.e(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class ShapesDDPM(nn.Module):
    """Noise predictor ``eps(x_t, t, c)`` of 32×32 one-channel silhouettes: a small U-Net.

    A stride-2 4×4 convolution takes the 32×32 image to ``C`` channels at 16×16 (four times
    cheaper than working at full resolution, which a few minutes of one CPU thread cannot
    afford), ``2C`` channels at 8×8 and 4×4; the output convolution makes 4 channels at 16×16,
    rearranged to 32×32 (pixel shuffle). Residual blocks (GroupNorm, SiLU, 3×3 convolutions) take
    the sum of a sinusoidal time embedding (through a small MLP) and a linear embedding of the
    condition vector (no bias: the null condition, all zeros, adds nothing). Skip connections by
    concatenation; nearest-neighbour upsampling. No dropout and no batch statistics: a row's
    output never depends on the other rows.

    Parameters
    ----------
    n_classes : int, default 4
    channels : int, default 24
        ``C``.
    T : int, default 100
    schedule : {"cosine", "linear"}, default "cosine"
        The noise schedule (:class:`DiffusionSchedule`, held as ``model.schedule``; not a parameter).
    """

    class_names = list(CLASS_NAMES)

    def __init__(self, n_classes: int = len(CLASS_NAMES), channels: int = DEFAULTS["channels"],
                 T: int = DEFAULTS["T"], schedule: str = DEFAULTS["schedule"]):
        super().__init__()
        for name, v in (("n_classes", n_classes), ("channels", channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        self.n_classes, self.channels = n_classes, channels
        self.image_shape = (1, VAE_SIZE, VAE_SIZE)
        self.schedule = DiffusionSchedule(T, schedule)
        C, E = channels, 4 * channels
        # the input layer first: lumos reads a module's first layer to check input shapes
        self.inc = nn.Conv2d(1, C, 4, stride=2, padding=1)
        self.temb = _TimeEmbedding(E)
        self.cemb = nn.Linear(n_classes, E, bias=False)
        self.b1 = _ResBlock(C, C, E)
        self.d1 = nn.Conv2d(C, 2 * C, 3, stride=2, padding=1)
        self.b2 = _ResBlock(2 * C, 2 * C, E)
        self.d2 = nn.Conv2d(2 * C, 2 * C, 3, stride=2, padding=1)
        self.mid = _ResBlock(2 * C, 2 * C, E)
        self.u2 = nn.Conv2d(2 * C, 2 * C, 3, padding=1)
        self.b3 = _ResBlock(4 * C, 2 * C, E)
        self.u1 = nn.Conv2d(2 * C, C, 3, padding=1)
        self.b4 = _ResBlock(2 * C, C, E)
        self.out = nn.Sequential(nn.GroupNorm(min(8, C), C), nn.SiLU(), nn.Conv2d(C, 4, 3, padding=1),
                                 nn.PixelShuffle(2))

    @property
    def T(self) -> int:
        return self.schedule.T

    def forward(self, x: torch.Tensor, t: Any, c: Any = None) -> torch.Tensor:
        """Predicted noise, shape of ``x``.

        Parameters
        ----------
        x : Tensor of shape (batch, 1, 32, 32)
            Noisy images ``x_t``.
        t : int or Tensor of shape (batch,)
            Timesteps in ``[0, T)``.
        c : class indices, float (batch, n_classes) condition, or None (the null condition)
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (batch, 1, {VAE_SIZE}, {VAE_SIZE}); got {tuple(x.shape)}")
        n = len(x)
        tt = torch.as_tensor(t, device=x.device)
        if tt.dim() == 0:
            tt = tt.expand(n)
        cv = diffusion_condition(c, n, self.n_classes).to(x)
        emb = self.temb(tt) + self.cemb(cv)
        h1 = self.b1(self.inc(x), emb)
        h2 = self.b2(self.d1(h1), emb)
        h = self.mid(self.d2(h2), emb)
        h = self.u2(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.b3(torch.cat([h, h2], 1), emb)
        h = self.u1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.b4(torch.cat([h, h1], 1), emb)
        return self.out(h)


def _ab(model: Any, t: int, like: torch.Tensor) -> torch.Tensor:
    return model.schedule.alphas_cumprod[t].to(like)


def guided_eps(model: Any, x: torch.Tensor, t: Any, c: Any, w: float) -> torch.Tensor:
    """``eps(x, t, null) + w (eps(x, t, c) - eps(x, t, null))``: both evaluated in one batched call."""
    n = len(x)
    cv = diffusion_condition(c, n, model.n_classes).to(x)
    tt = torch.as_tensor(t, device=x.device)
    tt = tt.expand(n) if tt.dim() == 0 else tt
    both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cv, torch.zeros_like(cv)]))
    e_c, e_0 = both[:n], both[n:]
    return e_0 + w * (e_c - e_0)


def predicted_x0(model: Any, x: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    """``x_0`` predicted from ``x_t`` and the noise ``eps``: ``(x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``."""
    ab = _ab(model, t, x)
    return (x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Samples in ``[-1, 1]`` as silhouettes in ``[0, 1]`` (clipped), the VAE's and the classifier's scale."""
    return ((x + 1) / 2).clamp(0, 1)


@dataclass
class SampleTrajectory:
    """What :func:`sample` recorded at the requested timesteps (before the step at ``t`` is taken).

    Attributes
    ----------
    timesteps : list of int
    x_t : dict int -> Tensor (batch, 1, H, W)
        The noisy images entering step ``t``.
    images : Tensor (batch, 1, H, W)
        The final samples ``x_0`` in ``[-1, 1]`` (not clipped).
    """

    timesteps: list
    x_t: dict
    images: torch.Tensor


def _row_generators(seed: Any, n: int) -> list[torch.Generator]:
    from ..core.validation import check_number

    if isinstance(seed, (list, tuple, np.ndarray)):
        seeds = [int(check_number(s, "seed", low=0, integer=True)) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"seed: give one int or one seed per image ({n}); got {len(seeds)} seeds")
    else:
        s0 = int(check_number(seed, "seed", low=0, integer=True))
        seeds = [s0 + i for i in range(n)]
    return [torch.Generator().manual_seed(s) for s in seeds]


def _randn(gens: list[torch.Generator], shape: tuple, dtype) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(dtype)


@torch.no_grad()
def sample(model: Any, c: Any, seed: Any = 0, w: float = 2.0, *, method: str = "ddpm",
           n_steps: int | None = None, record: Sequence[int] = (), x_T: torch.Tensor | None = None,
           batch_size: int | None = None, clip_x0: bool = True, return_trajectory: bool = False):
    """Guided samples of a conditional noise predictor, seeded.

    Parameters
    ----------
    model : nn.Module or callable
        ``model(x, t, c)`` → noise, with ``schedule`` (:class:`DiffusionSchedule`), ``n_classes``
        and ``image_shape`` attributes (:class:`ShapesDDPM`, or a hand-built denoiser). A module
        runs in eval mode under a ModelGuard and is left as found.
    c : int, sequence of int, float (batch, n_classes) or None
        One class index per image (an int: one image), a float condition, or ``None`` (the null
        condition, one image; use ``x_T`` or a float condition of zeros for more).
    seed : int or sequence of int, default 0
        Image ``i`` draws its start noise and (DDPM) its step noises from its own generator seeded
        ``seed + i`` (or ``seed[i]``): an image never depends on the other images or the batch size.
    w : float, default 2.0
        Guidance scale (0: unconditional, 1: conditional, > 1: guided beyond the condition).
    method : {"ddpm", "ddim"}, default "ddpm"
        Ancestral DDPM sampling (posterior variance ``beta~_t``) or deterministic DDIM (eta 0).
    n_steps : int or None
        DDIM only: the number of evenly spaced timesteps (default: all ``T``).
    record : sequence of int
        Timesteps at which to keep ``x_t`` (the image entering step ``t``); they must be visited.
    x_T : Tensor (batch, 1, H, W) or None
        The start noise; drawn from the seeds when None.
    batch_size : int or None
        Images per model call (default: all); the result does not depend on it.
    clip_x0 : bool, default True
        Clip each step's predicted clean image to ``[-1, 1]`` before the update (Ho et al.'s
        ``clip_denoised``; diffusers' ``clip_sample=True``). Without it a DDIM run of few steps
        blows up: at ``t = T-1`` of the cosine schedule ``sqrt(ab_t) ≈ 5e-4``, so a noise error of
        0.03 becomes a clean-image error of about 60, which DDIM carries to the next step almost
        undamped (DDPM's posterior mean damps it).
    return_trajectory : bool, default False
        Return a :class:`SampleTrajectory` instead of the images.

    Returns
    -------
    Tensor (batch, 1, H, W) in ``[-1, 1]`` (not clipped), or a SampleTrajectory.
    """
    from ..core.execution import check_batch_size
    from ..core.torch_model import ModelGuard, check_finite
    from ..core.validation import check_choice, check_number

    method = check_choice(method, "method", ("ddpm", "ddim"))
    w = float(check_number(w, "w"))
    sched = model.schedule
    T = sched.T
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape[1:]) != tuple(model.image_shape):
            raise ValueError(f"x_T must be a tensor of shape (batch, {', '.join(map(str, model.image_shape))}); "
                             f"got {tuple(getattr(x_T, 'shape', ()))}")
        n = len(x_T)
    elif c is None:
        n = 1
    elif isinstance(c, torch.Tensor) and c.is_floating_point():
        n = len(c)
    else:
        n = int(np.atleast_1d(np.asarray(c)).size)
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
        c = [int(c)] * n
    cv = diffusion_condition(c, n, model.n_classes)
    if method == "ddim" and n_steps is not None:
        k = int(check_number(n_steps, "n_steps", low=1, high=T, integer=True))
        ts = sorted({int(round(v)) for v in np.linspace(0, T - 1, k)}, reverse=True)
    else:
        if n_steps is not None:
            raise ValueError("n_steps: only DDIM skips timesteps; DDPM visits all T")
        ts = list(range(T - 1, -1, -1))
    rec = [sched.check_t(t, "record") for t in record]
    missing = sorted(set(rec) - set(ts))
    if missing:
        raise ValueError(f"record: timesteps {missing} are not visited by this sampler (visited: {ts})")
    bs = check_batch_size(batch_size) if batch_size is not None else max(n, 1)
    gens = _row_generators(seed, n)
    dtype = next((p.dtype for p in model.parameters()), torch.float32) if isinstance(model, nn.Module) \
        else torch.float32
    x = _randn(gens, tuple(model.image_shape), dtype) if x_T is None else x_T.to(dtype).clone()
    cv = cv.to(dtype)
    ab_all = sched.alphas_cumprod
    kept = {}

    def run():
        nonlocal x
        for i, t in enumerate(ts):
            if t in rec:
                kept[t] = x.clone()
            eps = torch.cat([guided_eps(model, x[s:s + bs], t, cv[s:s + bs], w) for s in range(0, n, bs)])
            check_finite(eps, f"the noise predicted at t={t}")
            ab = ab_all[t].item()
            x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            if clip_x0:
                x0 = x0.clamp(-1, 1)
                if method == "ddim":  # the noise consistent with the clipped prediction
                    eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            ab_prev = ab_all[t_prev].item() if t_prev >= 0 else 1.0
            if method == "ddim":
                x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
            else:
                beta = 1 - ab / ab_prev
                mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev)
                                                                       / (1 - ab)) * x
                x = mean
                if t_prev >= 0:
                    var = beta * (1 - ab_prev) / (1 - ab)
                    x = mean + math.sqrt(var) * _randn(gens, tuple(model.image_shape), dtype)
        return x

    if isinstance(model, nn.Module):
        with ModelGuard(model), torch.no_grad():  # the guard switches inference mode (and so grad) back on
            was = model.training
            model.eval()
            try:
                out = run()
            finally:
                model.train(was)
    else:
        out = run()
    return SampleTrajectory(sorted(rec, reverse=True), kept, out) if return_trajectory else out


def shapes_ddpm_info() -> dict:
    """The training record shipped beside the DDPM's weights."""
    return read_record(INFO_PATH, "lumos train-demo --diffusion")


def load_shapes_ddpm(device: str | torch.device = "cpu") -> ShapesDDPM:
    """The trained :class:`ShapesDDPM` shipped with lumos (eval mode), read with ``weights_only=True``."""
    state = read_state(WEIGHTS_PATH, "DDPM", "lumos train-demo --diffusion --out package", device)
    info = shapes_ddpm_info()
    model = ShapesDDPM(channels=int(info.get("channels", DEFAULTS["channels"])), T=int(info.get("T", DEFAULTS["T"])),
                       schedule=str(info.get("schedule", DEFAULTS["schedule"])))
    model.load_state_dict(state)
    return model.to(device).eval()


def demo_silhouette_classifier() -> nn.Module:
    """The shipped ``DemoCNN`` reading 32×32 silhouettes in ``[0, 1]``: :class:`SilhouetteRGB`, a bilinear
    resize to 64×64 (``align_corners=False``), the CNN. The same function as
    ``lumos.multimodal.generative.ResizedClassifier(cnn, 64, transform=SilhouetteRGB())`` (tested)."""
    from . import load_demo_model
    from .generative import SilhouetteRGB

    return nn.Sequential(SilhouetteRGB(), nn.Upsample(size=(64, 64), mode="bilinear", align_corners=False),
                         load_demo_model()).eval()


def recognition_rates(model: Any, classifier: nn.Module, n: int = 100, seed: int = 1, w: float = 2.0,
                      method: str = "ddpm", batch_size: int = 100, n_steps: int | None = None,
                      clip_x0: bool = True) -> list[float]:
    """Share of ``n`` samples per class (seeds ``seed + 1000 k + i``) that ``classifier`` (the shipped
    ``DemoCNN``, read through ``ResizedClassifier(…, transform=SilhouetteRGB())``) assigns to their class."""
    rates = []
    with torch.no_grad():
        for k in range(model.n_classes):
            imgs = sample(model, [k] * n, seed=seed + 1000 * k, w=w, method=method, batch_size=batch_size,
                          n_steps=n_steps, clip_x0=clip_x0)
            rates.append(float((classifier(to_unit(imgs)).argmax(1) == k).float().mean()))
    return rates


def train_shapes_ddpm(out: str | Path | None = None, seed: int = DEFAULTS["seed"], steps: int = DEFAULTS["steps"],
                      threads: int | None = 1, progress: bool | None = True, *, n_train: int = DEFAULTS["n_train"],
                      batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                      channels: int = DEFAULTS["channels"], T: int = DEFAULTS["T"],
                      schedule: str = DEFAULTS["schedule"], p_uncond: float = DEFAULTS["p_uncond"],
                      ema: float = DEFAULTS["ema"], evaluate: int = 0) -> tuple[ShapesDDPM, dict]:
    """Train :class:`ShapesDDPM` on the clean shapes world's silhouettes, reproducibly.

    Loss: the mean squared error of the predicted noise at a uniformly drawn timestep (Ho et al.
    2020), the condition replaced by the null condition with probability ``p_uncond``; Adam with a
    cosine-annealed learning rate; the returned (and shipped) weights are the exponential moving
    average of the iterates (decay ``ema``). Data, initialisation, batch order, timesteps, noise and
    condition dropout all come from ``seed``.

    Parameters
    ----------
    out : str, Path or None, default None
        Folder for ``shapes_ddpm.pt``/``.json``; ``"package"`` writes the shipped weights.
    seed : int, default 0
    steps : int, default 3000
    threads : int or None, default 1
        Torch CPU threads (restored afterwards). Bit-for-bit reproducible for the same thread count.
    progress : bool or None, default True
    n_train, batch_size, lr, channels, T, schedule, p_uncond, ema
    evaluate : int, default 0
        When > 0, the record gets the demo classifier's recognition of ``evaluate`` samples per
        class (seed 1, ``w`` 2, DDPM) under ``"recognised"``.

    Returns
    -------
    model : ShapesDDPM
        In eval mode (the averaged weights).
    report : dict
    """
    from ..core.execution import torch_threads
    from ..core.validation import check_number

    for name, val in (("steps", steps), ("n_train", n_train), ("batch_size", batch_size), ("channels", channels)):
        check_number(val, name, low=1, integer=True)
    check_number(seed, "seed", low=0, integer=True)
    check_number(lr, "lr", low=0, low_open=True)
    check_number(p_uncond, "p_uncond", low=0, high=1)
    check_number(ema, "ema", low=0, high=1, high_open=True)
    check_number(evaluate, "evaluate", low=0, integer=True)
    with torch_threads(None if threads is None else int(check_number(threads, "threads", low=1, integer=True))):
        return _train(out, int(seed), int(steps), progress, int(n_train), int(batch_size), float(lr),
                      int(channels), int(T), schedule, float(p_uncond), float(ema), int(evaluate))


def _train(out, seed, steps, progress, n_train, batch_size, lr, channels, T, schedule, p_uncond, ema, evaluate):
    from ..core.execution import progress_bar, seeded_global_rng

    t0, cpu0 = time.perf_counter(), time.process_time()
    data = shapes_dataset(n_train, split="train", watermark="none", seed=seed)
    x_all = vae_images(data.masks) * 2 - 1
    y_all = F.one_hot(torch.as_tensor(data.labels, dtype=torch.long), len(CLASS_NAMES)).float()
    with seeded_global_rng(seed):
        model = ShapesDDPM(channels=channels, T=T, schedule=schedule)
    avg = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    ab_all = model.schedule.alphas_cumprod.float()
    history = []
    model.train()
    order, pos = torch.randperm(n_train, generator=g), 0
    run_loss = 0.0
    with progress_bar(steps, "train-demo --diffusion", progress, unit="step") as bar:
        for step in range(steps):
            if pos + batch_size > n_train:
                order, pos = torch.randperm(n_train, generator=g), 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            x0, c = x_all[idx], y_all[idx]
            t = torch.randint(0, T, (len(idx),), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            keep = (torch.rand(len(idx), generator=g) >= p_uncond).float()[:, None]
            ab = ab_all[t][:, None, None, None]
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            loss = F.mse_loss(model(xt, t, c * keep), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        avg[k].mul_(ema).add_(v.detach(), alpha=1 - ema)
                    else:
                        avg[k].copy_(v)
            run_loss += loss.item()
            if (step + 1) % 250 == 0 or step + 1 == steps:
                k = (step % 250) + 1
                history.append({"step": step + 1, "loss": run_loss / k})
                bar.set_postfix(loss=f"{run_loss / k:.4f}")
                run_loss = 0.0
            bar.update(1)
    model.load_state_dict(avg)
    model.eval()
    report = {
        "seed": seed, "steps": steps, "n_train": n_train, "batch_size": batch_size, "lr": lr, "channels": channels,
        "T": T, "schedule": schedule, "p_uncond": p_uncond, "ema": ema, "image_size": VAE_SIZE,
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer": "Adam, cosine-annealed; weights: exponential moving average",
        "data": "shapes_dataset(split='train', watermark='none').masks, pooled 2x2 (silhouettes), scaled to [-1, 1]",
        "train_time_s": round(time.perf_counter() - t0, 2), "train_cpu_time_s": round(time.process_time() - cpu0, 2),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "history": history,
    }
    if evaluate:
        t1 = time.perf_counter()
        report["recognised"] = dict(zip(CLASS_NAMES, (round(r, 3) for r in recognition_rates(
            model, demo_silhouette_classifier(), n=evaluate, seed=1, w=2.0))))
        report["recognised_settings"] = {"n_per_class": evaluate, "seed": 1, "w": 2.0, "method": "ddpm", "clip_x0": True,
                                         "classifier": "DemoCNN on SilhouetteRGB, bilinear 32->64"}
        report["evaluate_time_s"] = round(time.perf_counter() - t1, 2)
    save_weights(model, report, out, WEIGHTS_PATH, INFO_PATH)
    return model, report
