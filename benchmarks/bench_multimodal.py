"""Benchmark: image–text similarity maps (lumos.multimodal) on the image–text world.

Run: ``python benchmarks/bench_multimodal.py`` (CPU, one thread by default; LUMOS_BENCH_THREADS=n to
change, LUMOS_BENCH_REPEATS=n rounds, LUMOS_BENCH_IMAGES=n images for the localisation table).

1. Localisation: the shipped dual encoder (``lumos train-demo --image-text``), test images of the
   image–text world, each explained against the "colour shape" phrase of its first object
   ("red circle") with :func:`lumos.multimodal.similarity_target`; per method the pointing game,
   the share of positive relevance on the named object ("mass") and on the other object
   ("other", a control), and the time (:func:`lumos.multimodal.localisation_table`).
2. Crop-similarity time versus the number of crops (one 64x64 image, batched through the image
   tower), beside the naive per-crop loop a user writes from the notebooks: for each crop, slice,
   resize, one forward pass of one crop, similarity, add into a dense map and a coverage count.
   Both compute the same map (checked before timing). Timing by ``benchmarks/_timing.py``
   (interleaved, order rotated, minimum over rounds, load printed).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import compare, header, set_threads  # noqa: E402

from lumos.data.image_text import image_text_dataset, load_image_text_model  # noqa: E402
from lumos.multimodal import crop_boxes, crop_similarity, localisation_table, similarity_target  # noqa: E402


def naive_crop_map(model, image, target, n_crops, sizes=(0.25, 0.6), seed=0):
    """The per-crop loop: one forward pass per crop, dense masks."""
    _, _, H, W = image.shape
    with torch.no_grad():
        full = float(target(model(image))[0])
        acc, cover = torch.zeros(H, W, dtype=torch.float64), torch.zeros(H, W, dtype=torch.float64)
        for (t, l, h, w) in crop_boxes(n_crops, (H, W), sizes, seed):
            crop = torch.nn.functional.interpolate(image[:, :, t:t + h, l:l + w], size=(H, W), mode="bilinear",
                                                   align_corners=False)
            acc[t:t + h, l:l + w] += float(target(model(crop))[0]) - full
            cover[t:t + h, l:l + w] += 1
    return torch.where(cover > 0, acc / cover.clamp_min(1), torch.zeros(()))


def bench_localisation(model, n_images: int) -> None:
    print(header(f"localisation of similarity maps, {n_images} test images, query = the first object's "
                 "'colour shape'"))
    data = image_text_dataset(n_images, split="test", seed=1)
    rows = localisation_table(model, data)
    print(f"named object area: {rows[0]['chance']:.1%} of the image (the chance level of pointing and mass)")
    print(f"{'method':<22} {'pointing':>8} {'quadrant':>8} {'mass':>6} {'other':>6} {'seconds':>8}")
    for r in rows:
        print(f"{r['method']:<22} {r['pointing_game']:>8.2f} {r['quadrant']:>8.2f} {r['mass']:>6.2f} {r['mass_other']:>6.2f} "
              f"{r['seconds']:>8.2f}")


def bench_crop_time(model, repeats: int) -> None:
    print(header("crop_similarity vs a naive per-crop loop, one 64x64 image"))
    data = image_text_dataset(1, split="test", seed=2)
    tgt = similarity_target("red circle", encoder=model.encode_text)
    tower = model.image_encoder
    x = data.images
    ref = naive_crop_map(tower, x, tgt, 64)
    got = crop_similarity(tower, x, target=tgt, n_crops=64).values[0, 0]
    print(f"same map: max |lumos - naive| = {np.abs(np.asarray(got) - ref.numpy()).max():.1e}")
    for n_crops in (100, 400, 1600):
        t = compare({"lumos crop_similarity": lambda: crop_similarity(tower, x, target=tgt, n_crops=n_crops),
                     "naive per-crop loop": lambda: naive_crop_map(tower, x, tgt, n_crops)}, repeats=repeats)
        print(f"n_crops={n_crops}")
        print(t.table(against="naive per-crop loop"))


def main() -> None:
    set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
    repeats = int(os.environ.get("LUMOS_BENCH_REPEATS", "3"))
    model = load_image_text_model()
    bench_localisation(model, int(os.environ.get("LUMOS_BENCH_IMAGES", "48")))
    bench_crop_time(model, repeats)


if __name__ == "__main__":
    main()
