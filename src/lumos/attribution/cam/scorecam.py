"""Score-CAM (Wang et al., 2020)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...core.execution import check_batch_size, chunks, rng
from ...core.registry import register
from ...core.torch_model import as_tensor, check_finite, forward, torch_call
from ...core.validation import check_choice, check_number
from ._base import FAMILY, Layout, capture, finish, resolve_layer, row_bytes, upsample, weighted_sum

__all__ = ["scorecam"]

_SCORES = ("softmax", "raw")


def _fill(fill: Any, x: torch.Tensor) -> torch.Tensor:
    """``X_b``: the fill as a tensor shaped like ``x`` (a finite number or a broadcastable tensor)."""
    if not isinstance(fill, (torch.Tensor, np.ndarray, list, tuple)):
        return torch.full_like(x, check_number(fill, "fill"))
    b = as_tensor(fill, x.device, name="fill", dtype=x.dtype)  # also refuses NaN and Inf
    try:
        return torch.broadcast_to(b, x.shape).clone()
    except RuntimeError:
        raise ValueError(f"fill of shape {tuple(b.shape)} does not broadcast to inputs of shape "
                         f"{tuple(x.shape)}; give a number, one sample's shape or the batch's shape")


@register("scorecam", FAMILY, "Score-CAM: channel weights from forward passes on inputs masked by "
          "each activation map (Wang et al., 2020)")
def scorecam(model: torch.nn.Module, inputs: Any, target: Any = None, *, at: Any = None,
             score: str | None = None, fill: Any = 0.0, n_channels: int | None = None,
             seed: int | None = 0, batch_size: int | None = None, progress: bool | None = None,
             forward_args: Any = None):
    """Score-CAM: each channel weighted by how much the input seen through it raises the score.

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu (2020), "Score-CAM: Score-Weighted Visual
    Explanations for Convolutional Neural Networks". For each channel ``k`` the activation map is
    upsampled to the input (bilinear, ``align_corners=False``) and scaled to [0, 1] -- this mask
    ``H_k`` is part of the method, not display. The input seen through it,
    ``X_k = X_b + (X - X_b) * H_k`` (the paper's ``X * H_k`` for the default ``fill=0``), is
    scored, and the weight is the increase of confidence over the baseline (the paper's
    Definition 2): ``alpha_k = f(X_k) - f(X_b)``. The map is ``sum_k alpha_k A_k`` (the paper's
    final ReLU is left to display). Channels whose map is constant give an all-zero mask, hence
    ``X_k = X_b`` and ``alpha_k = 0`` exactly; their forward passes are skipped.

    The masked inputs of all (sample, channel) pairs run through the model ``batch_size`` at a
    time: the cost is one forward pass per pair with a non-constant map, batched. On CPU, float32
    images go through a 2-D conv net in channels-last layout (about twice as fast with oneDNN;
    equal to float32 rounding), unless the model cannot take it (``meta["memory_format"]``).

    Parameters
    ----------
    model : torch.nn.Module
    inputs : Tensor or ndarray, shape (batch, channels, *spatial)
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
        A ``lumos.Neuron("layer", index)`` is scored raw (its activation; ``score="softmax"``
        is refused for it).
    at : str, nn.Module or None, default None
        The layer; None takes the last layer with a spatial output.
    score : {"softmax", "raw"} or None, default None
        ``f``: ``"softmax"`` is the target class's softmax probability, as in the paper (needs a
        class-index target); ``"raw"`` is the target scalar itself (logit, callable target's
        value). None: ``"softmax"`` for class-index targets on a multi-class output, else ``"raw"``.
    fill : float or Tensor, default 0.0
        ``X_b``, the fill value of the masked-out part of the input (called ``baseline`` before;
        it is a fill, not a path baseline); a finite number, one sample's shape or the batch's
        shape.
    n_channels : int, optional
        Use a random subset of this many channels (the same subset for every sample, drawn from
        ``seed``) and scale the weights by ``K / n_channels`` so the map estimates the full one.
        None uses every channel.
    seed : int or None, default 0
        Seed of the channel subset (only used with ``n_channels``): two identical calls give the
        same map. ``None`` draws a fresh subset each call.
    batch_size : int, optional
        Masked inputs per forward pass (default: sized by memory, at most 64). The result does
        not depend on it.
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained; per-sample ones go with their
        sample to its activation pass, its fill input and every one of its masked inputs, in
        any chunk (see :mod:`lumos.core.inputs`).

    Returns
    -------
    Explanation
        ``values`` (batch, 1, *input_spatial) upsampled; ``meta["layer_map"]`` at the layer;
        ``meta["channel_weights"]`` (batch, K): ``alpha`` (0 for channels not used);
        ``meta["baseline_score"]`` (batch,): ``f(X_b)``; ``meta["n_forward"]``: masked passes.
        A NaN or Inf model output on the filled or masked inputs raises
        :class:`~lumos.core.torch_model.NonFiniteOutputError` naming which.
    """
    check_choice(score, "score", (None,) + _SCORES)
    check_batch_size(batch_size)
    rng(seed)  # the seed's own check, also when no subset is drawn
    if n_channels is not None:
        n_channels = check_number(n_channels, "n_channels", low=1, integer=True)
    # The activation pass gives the output too: no separate clean forward pass.
    with torch_call(model, inputs, target, method="scorecam", clean_forward=False,
                    forward_args=forward_args) as p:
        model = p.model  # the user's model with its forward arguments bound (or a Neuron's view)
        bs = check_batch_size(batch_size, row_bytes=row_bytes(p.x))
        layer = resolve_layer(model, p.x, at, "scorecam", probe=False)
        layout = Layout(model, p.x)
        outs, acts = zip(*[layout.run(lambda xb: capture(model, xb, layer,
                                                         rows=torch.arange(sl.start, sl.stop)),
                                      p.x[sl])
                           for sl in chunks(p.n, bs, progress=False)])
        p.resolve(torch.cat(outs))
        a = torch.cat(acts)
        classes = p.output.ndim >= 2 and p.output.shape[1] > 1
        index_target = p.target.indices is not None and "neuron" not in p.meta
        if score is None:
            score = "softmax" if index_target and classes else "raw"
        elif score == "softmax" and not (index_target and classes):
            raise ValueError(
                "score='softmax' needs a class-index target on a multi-class output (it reads the "
                "target class's probability); use score='raw' for callable targets, Neuron targets "
                "and scalar outputs"
            )

        def f(out, rows):
            if score == "softmax":
                out = torch.softmax(out, dim=1)
            return p.target.select(out, rows)

        k_total = a.shape[1]
        channels = np.arange(k_total)
        if n_channels is not None:
            if n_channels > k_total:
                raise ValueError(f"n_channels must be an int in 1..{k_total} (the layer's channels) "
                                 f"or None; got {n_channels!r}")
            # One draw, before any batching, shared by all samples: batch-size independent.
            channels = np.sort(rng(seed).choice(k_total, size=int(n_channels), replace=False))
        base = _fill(fill, p.x)

        def scores(xb, rows, what="Score-CAM's masked inputs"):
            # inference_mode: scores are only compared, never differentiated
            with torch.inference_mode():
                out = forward(model, xb, name="masked inputs", rows=rows)
                check_finite(out, what)
                return f(out, rows)

        f_base = torch.cat([layout.run(scores, base[sl], torch.arange(sl.start, sl.stop),
                                       what="the fill input X_b (everything masked out)")
                            for sl in chunks(p.n, bs, progress=False)])

        sub = a[:, torch.as_tensor(channels, device=a.device)]
        flat = sub.flatten(2)
        # Constant maps give an all-zero mask, X_k = X_b, alpha_k = 0: no forward pass needed.
        pairs = torch.nonzero(flat.amax(2) > flat.amin(2))
        alpha = torch.zeros(sub.shape[:2], dtype=p.x.dtype, device=p.x.device)
        size = p.x.shape[2:]
        for sl in chunks(len(pairs), bs, desc="scorecam", progress=progress):
            i, j = pairs[sl, 0], pairs[sl, 1]
            m = upsample(sub[i, j][:, None], size).flatten(1)
            lo, hi = m.amin(1, keepdim=True), m.amax(1, keepdim=True)
            span = hi - lo
            mask = torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1), 0)
            mask = mask.reshape((len(i), 1) + tuple(size))
            s = layout.run(scores, base[i] + (p.x[i] - base[i]) * mask, i)
            alpha[i, j] = torch.where(span[:, 0] > 0, s - f_base[i], 0).to(alpha.dtype)
        weights = torch.zeros(a.shape[:2], dtype=alpha.dtype, device=alpha.device)
        weights[:, torch.as_tensor(channels, device=a.device)] = alpha * (k_total / len(channels))
        meta = {"score": score, "n_forward": int(len(pairs)), "n_channels_used": int(len(channels)),
                "memory_format": layout.name}
        if n_channels is not None:
            meta.update(channels=channels.tolist(), seed=seed)
        return finish(p, layer, weighted_sum(weights, a), "scorecam",
                      {"score": score, "fill": fill if isinstance(fill, (int, float)) else
                       "<tensor>", "n_channels": n_channels, "seed": seed}, meta,
                      {"channel_weights": weights, "baseline_score": f_base})
