"""Crop-similarity saliency: random crops of an image, each crop's score painted back where it came from.

The map of the image–text notebooks (for CLIP: "which part of the image matches this sentence?"),
made a lumos method: any torch image model and any target, typically the image tower of a dual
encoder with :func:`lumos.multimodal.similarity_target`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attribution.perturbation._base import perturbation_call
from ..core.execution import rng
from ..core.registry import register
from ..core.validation import check_number

__all__ = ["crop_similarity", "crop_boxes", "resize_crop"]


def _check_sizes(sizes: Any) -> tuple[float, float]:
    if isinstance(sizes, (int, float, np.integer, np.floating)) and not isinstance(sizes, bool):
        sizes = (sizes, sizes)
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
        raise ValueError(f"sizes must be a fraction in (0, 1] or a pair (low, high) of them; got {sizes!r}")
    lo = check_number(sizes[0], "sizes[0] (smallest crop side, a fraction of the image side)",
                      low=0, high=1, low_open=True)
    hi = check_number(sizes[1], "sizes[1] (largest crop side, a fraction of the image side)",
                      low=0, high=1, low_open=True)
    if lo > hi:
        raise ValueError(f"sizes: the smallest crop side {lo} is larger than the largest {hi}")
    return float(lo), float(hi)


def crop_boxes(n_crops: int, image_size: tuple[int, int], sizes: Any = (0.25, 0.6),
               seed: int | np.random.Generator = 0) -> np.ndarray:
    """Random crop boxes, ``(n_crops, 4)`` int rows ``(top, left, height, width)``.

    Each side is drawn independently, uniformly among the integers from ``ceil(low * L)`` to
    ``floor(high * L)`` (at least 1) of its axis of length ``L``, and the box's position
    uniformly among those that keep it inside the image. Everything comes from ``seed``.
    """
    n_crops = check_number(n_crops, "n_crops", low=1, integer=True)
    lo, hi = _check_sizes(sizes)
    gen = rng(seed)
    out = np.empty((int(n_crops), 4), np.int64)
    for a, L in enumerate(image_size):
        smin = max(1, int(np.ceil(lo * L - 1e-9)))
        smax = max(smin, int(np.floor(hi * L + 1e-9)))
        side = gen.integers(smin, smax + 1, n_crops)
        start = np.floor(gen.random(n_crops) * (L - side + 1)).astype(np.int64)
        out[:, 2 + a] = side
        out[:, a] = start
    return out


def resize_crop(x: torch.Tensor, box, size: tuple[int, int]) -> torch.Tensor:
    """The crop ``box = (top, left, h, w)`` of images ``x`` ``(m, C, H, W)`` resized to ``size``
    (bilinear, ``align_corners=False``, no antialiasing)."""
    t, l, h, w = (int(v) for v in box)
    crop = x[:, :, t:t + h, l:l + w]
    if (h, w) == tuple(size):
        return crop
    return torch.nn.functional.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False)


class _Resized(torch.nn.Module):
    """The model seen through a resize to its input size: the whole image is scored resized, as
    every crop is (crops arrive at that size already and pass unchanged)."""

    def __init__(self, model: torch.nn.Module, size: tuple[int, int]):
        super().__init__()
        self.model, self.size = model, tuple(size)

    def forward(self, x, *args, **kwargs):
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.model(x, *args, **kwargs)


def _resized_fn(model: Any, size: tuple[int, int]):
    def predict(x, *args, **kwargs):
        t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        if t.ndim == 4 and tuple(t.shape[-2:]) != size:
            t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
            x = t if isinstance(x, torch.Tensor) else t.numpy()
        return model(x, *args, **kwargs)

    return predict


@register("crop_similarity", "multimodal",
          "Random crops resized to the model's input, each crop's score (e.g. similarity to a text) "
          "painted back by coverage, signed vs the whole image", models="any")
def crop_similarity(model: Any, inputs: Any, target: Any = None, *, n_crops: int = 500,
                    sizes: Any = (0.25, 0.6), input_size: Any = None, seed: int = 0,
                    batch_size: int | None = None, progress: bool | None = None,
                    forward_args: Any = None):
    """Crop-similarity saliency: where do crops score higher than the whole image?

    ``n_crops`` random boxes ``B_k`` (the same for every image, drawn from ``seed``) are cut from
    each image, resized to ``input_size`` and scored, ``s_k = target(model(resize(x[B_k])))``;
    with a :func:`~lumos.multimodal.similarity_target` the score is the crop's cosine similarity
    to the query. Each crop's score relative to the whole image's, ``s_k - s(x)``, is added to
    the pixels the crop covers and divided by the number of crops covering each pixel:

    ``values[p] = sum_{k: p in B_k} (s_k - s(x)) / #{k: p in B_k}``

    Positive (red) where the crops containing the pixel are closer to the query than the whole
    image, negative (blue) where they are farther. Pixels no crop covers get 0 and are counted in
    ``meta``. The image–text notebooks' random-crop saliency for CLIP, as a method of any image
    model and any target.

    Parameters
    ----------
    model : torch.nn.Module or callable
        The image model (for a dual encoder, its image tower), scoring a batch of images
        ``(m, C, h, w)`` of size ``input_size``.
    inputs : Tensor or ndarray, shape (batch, C, H, W)
    target : int, sequence, "predicted", callable or None
        Usually ``similarity_target(query, encoder)``.
    n_crops : int, default 500
        Crops per image (model evaluations per image, besides the image itself).
    sizes : float or (float, float), default (0.25, 0.6)
        Crop sides as fractions of the image's height and width, drawn uniformly per axis in
        ``[low, high]``.
    input_size : int, (int, int) or None, default None
        Size each crop is resized to (bilinear): the encoder's input size; ``None``: the image's
        own ``(H, W)``. With another size the whole image, the reference score, is resized to it
        too.
    seed : int, default 0
        Seed of the crop boxes (:func:`crop_boxes`).
    batch_size : int, optional
        Resized crops per model call; the result does not depend on it.
    progress : bool or None
    forward_args : extra model arguments, expanded per crop as in
        :func:`lumos.attribution.perturbation.occlusion.occlusion` (each crop of image ``i`` gets the
        arguments of image ``i``).

    Returns
    -------
    Explanation
        ``values`` ``(batch, C, H, W)``, constant over channels. ``meta``: ``boxes`` (the crops,
        ``(n_crops, 4)`` top/left/height/width), ``uncovered`` (pixels no crop covers) and
        ``uncovered_fraction``, ``coverage_min``/``coverage_max`` (crops per covered pixel),
        ``n_evals``; per sample ``crop_scores`` ``(batch, n_crops)``.
    """
    n_crops = check_number(n_crops, "n_crops", low=1, integer=True)
    lo, hi = _check_sizes(sizes)
    if input_size is not None:
        isz = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else input_size
        if not isinstance(isz, (tuple, list)) or len(isz) != 2:
            raise ValueError(f"input_size must be an int, a pair (h, w) or None; got {input_size!r}")
        input_size = tuple(int(check_number(v, "input_size", low=1, integer=True)) for v in isz)
        model = _Resized(model, input_size) if isinstance(model, torch.nn.Module) else _resized_fn(model, input_size)
    with perturbation_call(model, inputs, target, method="crop_similarity", what="resized crops",
                           forward_args=forward_args) as run:
        x, n, shape = run.x, run.n, run.sample_shape
        if len(shape) != 3:
            raise ValueError(f"inputs: crop_similarity explains images of shape (batch, C, H, W); got a sample "
                             f"shape {shape}")
        H, W = shape[1:]
        size = (H, W) if input_size is None else input_size
        boxes = crop_boxes(n_crops, (H, W), (lo, hi), seed)
        dev = x.device
        x_eval = run.prepare(x)

        # Crop-major order (k = crop * n + sample): one interpolate per crop for all its images.
        def build(sl):
            k = torch.arange(sl.start, sl.stop, device=dev)
            j, rows = k // n, k % n
            parts = []
            for c in range(int(j[0]), int(j[-1]) + 1):
                r = rows[j == c]
                parts.append(resize_crop(x_eval[r], boxes[c], size))
            return torch.cat(parts).contiguous(memory_format=run.memory_format), rows, j

        scores = run.evaluate(n * n_crops, build, batch_size, progress, desc="crop_similarity")
        scores = scores.reshape(n_crops, n).T  # (n, n_crops)
        rel = scores - run.scalar.to(dev)[:, None]
        # Box sums through a 2-D difference array: O(n_crops * n + H * W), no per-crop masks.
        diff = torch.zeros((n, H + 1, W + 1), dtype=torch.float64, device=dev)
        cdiff = torch.zeros((H + 1, W + 1), dtype=torch.float64, device=dev)
        b = torch.as_tensor(boxes, device=dev)
        t, l, h, w = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        for (ri, ci), sign in (((t, l), 1.0), ((t, l + w), -1.0), ((t + h, l), -1.0), ((t + h, l + w), 1.0)):
            flat = ri * (W + 1) + ci
            diff.view(n, -1).index_add_(1, flat, sign * rel)
            cdiff.view(-1).index_add_(0, flat, torch.full((n_crops,), sign, dtype=torch.float64, device=dev))
        total = diff.cumsum(1).cumsum(2)[:, :H, :W]
        cover = cdiff.cumsum(0).cumsum(1)[:H, :W].round()
        covered = cover > 0
        maps = torch.where(covered, total / cover.clamp_min(1.0), torch.zeros((), dtype=torch.float64, device=dev))
        values = maps[:, None].expand((n,) + shape).to(x.dtype).clone()
        unc = int((~covered).sum())
        meta = {"boxes": boxes.tolist(), "uncovered": unc, "uncovered_fraction": unc / (H * W),
                "coverage_min": int(cover[covered].min()) if bool(covered.any()) else 0,
                "coverage_max": int(cover.max()), "input_size": list(size)}
        params = {"n_crops": n_crops, "sizes": [lo, hi], "input_size": list(size), "seed": seed}
        return run.explanation(values, "crop_similarity", params, meta=meta,
                               sample_meta={"crop_scores": scores})
