"""Scoring similarity maps by localisation in the image–text world.

For each image one object is named by a "colour shape" phrase ("red circle"); an image method on
the image tower with :func:`~lumos.multimodal.similarity_target` of that phrase should light that
object. :func:`localisation_table` runs a set of methods on the same images and phrases and
scores every map with the pointing game and the relevance mass inside the named object's mask
(and, as a control, inside the other object's mask).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from .targets import similarity_target

__all__ = ["query_phrases", "similarity_maps", "localisation_table", "DEFAULT_METHODS"]

#: Methods and their settings on the 64×64 images of the image–text world (``quick`` settings in
#: ``localisation_table`` take fewer samples).
DEFAULT_METHODS = {
    "saliency": {},
    "integrated_gradients": {"n_steps": 32},
    "occlusion": {"window": 12, "stride": 4},
    "rise": {"n_masks": 1000, "grid": 8},
    "gradcam": {"at": "features.7"},
    "crop_similarity": {"n_crops": 400, "sizes": (0.25, 0.6)},
}
_QUICK = {"integrated_gradients": {"n_steps": 16}, "rise": {"n_masks": 300}, "crop_similarity": {"n_crops": 150}}


def query_phrases(data, which: int = 0) -> list[str]:
    """The "colour shape" phrase of object ``which`` of every image (e.g. ``"red circle"``)."""
    from ..data.image_text import phrase

    return [phrase(int(data.shape[i, which]), int(data.colour[i, which]), article=False) for i in range(len(data))]


def similarity_maps(model, data, method: str, queries: Sequence[str], **params: Any):
    """Explain ``model.image_encoder`` at ``data.images`` with ``method``, each image against its query.

    Images sharing a query are explained in one call. Returns the per-image values stacked in the
    order of ``data`` as one :class:`~lumos.core.explanation.Explanation`-like array
    ``(n, C, H, W)`` (or the method's map shape) and the seconds spent.
    """
    import lumos

    out: list = [None] * len(data)
    t0 = time.perf_counter()
    for q in sorted(set(queries)):
        idx = [i for i, s in enumerate(queries) if s == q]
        tgt = similarity_target(q, encoder=model.encode_text)
        e = lumos.explain(model.image_encoder, data.images[torch.as_tensor(idx)], method, target=tgt, **params)
        for j, i in enumerate(idx):
            out[i] = e[j]
    return out, time.perf_counter() - t0


def _stack(expls):
    from ..core.explanation import Explanation

    first = expls[0]
    return Explanation(values=np.concatenate([np.asarray(e.values) for e in expls]),
                       inputs=np.concatenate([np.asarray(e.inputs) for e in expls]),
                       method=first.method, params=first.params)


def localisation_table(model, data, methods: dict | None = None, quick: bool = False, which: int = 0) -> list[dict]:
    """Pointing game and relevance mass of each method's similarity maps on the named object.

    Parameters
    ----------
    model : ImageTextModel
    data : ImageTextData
    methods : {name: params} or None
        Default :data:`DEFAULT_METHODS` (fewer samples with ``quick``).
    which : int, default 0
        Which object of each image the query names.

    Returns
    -------
    list of dict
        Per method: ``method``, ``pointing_game`` (share of images whose map maximum lies on the
        named object), ``quadrant`` (share whose maximum lies in the named object's quadrant: coarse
        localisation, what crop maps achieve), ``mass`` (share of positive relevance on it),
        ``mass_other`` (on the other object), ``chance`` (mean area of the named object / image), ``seconds``, and
        ``explanations`` (one per image).
    """
    from ..metrics import pointing_game, relevance_mass_accuracy

    if methods is None:
        methods = {k: {**v, **(_QUICK.get(k, {}) if quick else {})} for k, v in DEFAULT_METHODS.items()}
    queries = query_phrases(data, which)
    masks = data.masks[:, which].numpy()
    other = data.masks[:, 1 - which].numpy()
    rows = []
    for name, params in methods.items():
        expls, secs = similarity_maps(model, data, name, queries, **params)
        e = _stack(expls)
        maps = np.asarray(e.values).reshape(len(data), -1, *data.images.shape[-2:]).sum(1)
        top = maps.reshape(len(data), -1).argmax(1)
        r, c = np.unravel_index(top, maps.shape[1:])
        quadrant = 2 * (r >= maps.shape[1] // 2) + (c >= maps.shape[2] // 2)
        rows.append({
            "method": name,
            "pointing_game": float(np.nanmean(pointing_game(e, masks).scores)),
            "mass": float(np.nanmean(relevance_mass_accuracy(e, masks).scores)),
            "quadrant": float(np.mean(quadrant == data.position[:, which])),
            "mass_other": float(np.nanmean(relevance_mass_accuracy(e, other).scores)),
            "chance": float(masks.mean()),
            "seconds": secs,
            "explanations": expls,
        })
    return rows
