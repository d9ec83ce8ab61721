"""Training loop of a sparse autoencoder: Adam, warm-ups, dead features, checkpoints, seeded.

:func:`train_sae` trains an :class:`~lumos.dictionary.sae.SAE` in place on activations (an
:class:`~lumos.dictionary.cache.ActivationCache`, or a tensor/array ``(rows, d_in)`` in memory):

* Adam with a linear learning-rate warm-up (``lr_warmup_steps``) and, for the L1/L0 penalty, a
  linear warm-up of its coefficient from 0 (``l1_warmup_steps``).
* After every step the decoder directions are put back on the unit sphere; before it the gradient
  component parallel to them is removed (every kind: the L1 penalty of ``relu`` needs it, and TopK
  follows Gao et al. 2024 there).
* ``b_dec`` starts at the geometric median of a first batch (or its mean, or left at 0);
  ``normalize="scale"`` SAEs get their input scale from the same batch.
* Dead features (no activation in the last ``dead_after`` rows) are resampled every
  ``resample_every`` steps from badly reconstructed rows (Bricken et al. 2023;
  :func:`~lumos.dictionary.sae.resample_dead`), or, for ``topk``/``batchtopk``, trained back by the
  auxiliary-k loss at every step (Gao et al. 2024).
* Batches and resampling draw only from ``seed``: the same seed gives the same weights (on CPU;
  CUDA kernels may add float non-determinism).
* ``max_grad_norm`` clips the global gradient norm before each step (off by default; SAELens
  clips at 1.0, which measurably helps TopK on the demo CNN: see docs/dictionary.md).
* ``checkpoint_every`` steps the SAE is saved to ``checkpoint_dir/step_XXXXXXX.npz`` (without
  pickle; the optimiser state is not saved).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..core.execution import progress_bar, torch_generator
from ..core.validation import check_choice, check_number
from .cache import ActivationCache
from .sae import SAE, resample_dead

__all__ = ["train_sae", "TrainResult"]


@dataclass
class TrainResult:
    """What :func:`train_sae` returns.

    Attributes
    ----------
    sae : SAE
        The trained SAE (the one passed in, trained in place).
    history : dict of lists
        Per logged step: ``step``, ``loss``, ``mse``, ``sparsity``, ``aux``, ``l0``,
        ``explained_variance`` (of the batch), ``dead_fraction`` (by ``dead_after``), ``lr``.
    n_rows : int
        Activations seen.
    seconds : float
        Wall time of the loop (after the bias initialisation).
    resampled : list of (step, n)
        Resampling events.
    checkpoints : list of str
    """

    sae: SAE
    history: dict[str, list[float]]
    n_rows: int
    seconds: float
    resampled: list = field(default_factory=list)
    checkpoints: list = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.n_rows / self.seconds if self.seconds > 0 else float("nan")


def _stream(data: Any, batch_size: int, seed: int, device) -> tuple[Iterator[torch.Tensor], int]:
    """An endless stream of shuffled batches (a new permutation each epoch) and the width."""
    if isinstance(data, ActivationCache):
        def gen():
            epoch = 0
            while True:
                yield from data.batches(batch_size, shuffle=True, seed=seed + 7919 * epoch, drop_last=True,
                                        device=device)
                epoch += 1
        if len(data) < batch_size:
            raise ValueError(f"batch_size: {batch_size} is more than the cache's {len(data)} rows")
        return gen(), data.width
    x = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
    if x.ndim != 2:
        raise ValueError(f"data must be activations (rows, d_in) or an ActivationCache; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError("data must hold floating-point activations")
    if len(x) < batch_size:
        raise ValueError(f"batch_size: {batch_size} is more than the {len(x)} rows of data")
    g = torch_generator(seed)

    def gen():
        while True:
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x) - batch_size + 1, batch_size):
                yield x[perm[s:s + batch_size].to(x.device)].to(device=device, dtype=torch.float32)
    return gen(), x.shape[1]


def train_sae(sae: SAE, data: Any, *, n_steps: int = 1000, batch_size: int = 4096, lr: float = 1e-3,
              betas: tuple[float, float] = (0.9, 0.999), lr_warmup_steps: int = 0,
              l1_warmup_steps: int = 0, init_decoder_bias: str | None = "geometric_median",
              dead_after: int | None = None, resample_every: int | None = None,
              checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
              max_grad_norm: float | None = None, log_every: int = 10, seed: int = 0, device: Any = None,
              progress: bool | None = None) -> TrainResult:
    """Train ``sae`` in place on activations ``data``.

    Parameters
    ----------
    sae : SAE
    data : ActivationCache, tensor or array (rows, d_in)
    n_steps : int, default 1000
        Optimiser steps (``n_steps * batch_size`` rows, cycling through the data in shuffled epochs).
    batch_size : int, default 4096
        Rows per step.
    lr, betas
        Adam's learning rate and betas.
    lr_warmup_steps : int, default 0
        Linear learning-rate warm-up from 0.
    l1_warmup_steps : int, default 0
        Linear warm-up of the sparsity coefficient (L1 of ``relu``, L0 of ``jumprelu``) from 0.
    init_decoder_bias : {"geometric_median", "mean", None}, default "geometric_median"
        How ``b_dec`` starts (from the first batch); None leaves it.
    dead_after : int, optional
        Rows without activation after which a feature counts as dead; default ``100 * batch_size``
        capped at ``n_steps * batch_size // 4``.
    resample_every : int, optional
        Resample dead features every this many steps (Bricken et al. 2023); off by default.
        ``topk``/``batchtopk`` SAEs instead use their auxiliary-k loss (``aux_k``) on dead features.
    checkpoint_dir, checkpoint_every
        Save the SAE every ``checkpoint_every`` steps (``step_XXXXXXX.npz``).
    max_grad_norm : float, optional
        Clip the global gradient norm to this before each step (SAELens clips at 1.0; off by default).
    log_every : int, default 10
        Steps between entries of ``history``.
    seed : int, default 0
        Seed of the batch order and of resampling.
    device : optional
        Where to train; default: the SAE's device, or the data's when it is a CUDA tensor.
    progress : bool, optional
        A tqdm bar (None: on a terminal).
    """
    if not isinstance(sae, SAE):
        raise TypeError(f"sae must be a lumos.dictionary.SAE; got {type(sae).__name__}")
    n_steps = check_number(n_steps, "n_steps", low=1, integer=True)
    batch_size = check_number(batch_size, "batch_size", low=1, integer=True)
    lr = check_number(lr, "lr", low=0, low_open=True)
    lr_warmup_steps = check_number(lr_warmup_steps, "lr_warmup_steps", low=0, integer=True)
    l1_warmup_steps = check_number(l1_warmup_steps, "l1_warmup_steps", low=0, integer=True)
    log_every = check_number(log_every, "log_every", low=1, integer=True)
    if max_grad_norm is not None:
        max_grad_norm = check_number(max_grad_norm, "max_grad_norm", low=0, low_open=True)
    seed = check_number(seed, "seed", integer=True)
    if init_decoder_bias is not None:
        check_choice(init_decoder_bias, "init_decoder_bias", ("geometric_median", "mean"))
    if dead_after is None:
        dead_after = max(1, min(100 * batch_size, n_steps * batch_size // 4))
    dead_after = check_number(dead_after, "dead_after", low=1, integer=True)
    if resample_every is not None:
        resample_every = check_number(resample_every, "resample_every", low=1, integer=True)
    if checkpoint_every is not None:
        checkpoint_every = check_number(checkpoint_every, "checkpoint_every", low=1, integer=True)
        if checkpoint_dir is None:
            raise ValueError("checkpoint_dir: checkpoint_every needs a folder to write to")
    if device is None:
        device = (data.device if isinstance(data, torch.Tensor) and data.device.type != "cpu"
                  else sae.W_dec.device)
    device = torch.device(device)
    sae.to(device)
    stream, width = _stream(data, batch_size, seed, device)
    if width != sae.d_in:
        raise ValueError(f"data: rows of width {width} do not match the SAE's d_in={sae.d_in}")

    first = next(stream)
    sae.fit_normalization(first)
    if init_decoder_bias is not None:
        sae.init_decoder_bias(first, init_decoder_bias)
    sae.normalize_decoder_()
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=betas)
    topk_like = sae.kind in ("topk", "batchtopk")
    hist: dict[str, list[float]] = {k: [] for k in ("step", "loss", "mse", "sparsity", "aux", "l0",
                                                     "explained_variance", "dead_fraction", "lr")}
    result = TrainResult(sae, hist, 0, 0.0)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
    was = sae.training
    sae.train()
    t0 = time.perf_counter()
    x = first
    try:
        with progress_bar(n_steps, "train SAE", progress, "steps") as bar:
            for step in range(1, n_steps + 1):
                if step > 1:
                    x = next(stream)
                cur_lr = lr * min(1.0, step / lr_warmup_steps) if lr_warmup_steps else lr
                for group in opt.param_groups:
                    group["lr"] = cur_lr
                scale = min(1.0, step / l1_warmup_steps) if l1_warmup_steps else 1.0
                dead = sae.dead_mask(dead_after) if topk_like else None
                opt.zero_grad(set_to_none=True)
                loss, parts, out = sae.loss(x, sparsity_scale=scale, dead=dead)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the SAE loss became {float(loss)} at step {step}; lower lr")
                loss.backward()
                sae.remove_parallel_grad_()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(sae.parameters(), max_grad_norm)
                opt.step()
                sae.normalize_decoder_()
                sae.update_fired(out.codes)
                result.n_rows += len(x)
                if resample_every is not None and not topk_like and step % resample_every == 0 and step < n_steps:
                    dmask = sae.dead_mask(dead_after)
                    if bool(dmask.any()):
                        pool = torch.cat([x] + [next(stream) for _ in range(3)])
                        n = resample_dead(sae, pool, dmask, seed=seed + step, optimizer=opt)
                        result.resampled.append((step, n))
                if step % log_every == 0 or step == n_steps:
                    with torch.no_grad():
                        xs = x.double()
                        r = out.recon.detach().double()
                        tv = float((xs - xs.mean(0)).pow(2).sum())
                        ev = 1 - float((xs - r).pow(2).sum()) / tv if tv > 0 else float("nan")
                    hist["step"].append(step)
                    hist["loss"].append(parts["loss"])
                    hist["mse"].append(parts["mse"])
                    hist["sparsity"].append(parts.get("sparsity", 0.0))
                    hist["aux"].append(parts.get("aux", 0.0))
                    hist["l0"].append(float((out.codes != 0).sum(-1).double().mean()))
                    hist["explained_variance"].append(ev)
                    hist["dead_fraction"].append(float(sae.dead_mask(dead_after).double().mean()))
                    hist["lr"].append(cur_lr)
                    bar.set_postfix(loss=f"{parts['loss']:.4g}", l0=f"{hist['l0'][-1]:.1f}")
                if checkpoint_every is not None and step % checkpoint_every == 0:
                    p = sae.save(ckdir / f"step_{step:07d}.npz", meta={"step": step, "seed": seed})
                    result.checkpoints.append(str(p))
                bar.update(1)
    finally:
        sae.train(was)
    result.seconds = time.perf_counter() - t0
    return result
