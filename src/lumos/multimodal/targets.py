"""Embedding targets: the cosine similarity of the explained encoder's embedding with a query.

A dual encoder (CLIP-like) maps images and texts into one space and compares them by cosine
similarity. :func:`similarity_target` turns that comparison into a lumos target, a callable
``output -> (batch,)``, so any method explains the similarity: explained through the image tower
it says which pixels make the image match the query; through the text tower which words make the
text match it.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

__all__ = ["similarity_target", "SimilarityTarget"]


class SimilarityTarget:
    """``target(output) = cos(output, query)`` per row; built by :func:`similarity_target`.

    Attributes
    ----------
    query : Tensor, shape (D,), float64
        The query embedding (not normalised).
    __name__ : str
        Recorded by lumos as the target's description.
    """

    def __init__(self, query: torch.Tensor, description: str):
        self.query = query
        self.__name__ = description

    def __call__(self, output: Any) -> Any:
        if isinstance(output, torch.Tensor):
            out = output.reshape(len(output), -1)
            if out.shape[1] != self.query.numel():
                raise ValueError(f"similarity_target: the model's embeddings have {out.shape[1]} dimensions, "
                                 f"the query {self.query.numel()}")
            q = self.query.to(device=out.device, dtype=out.dtype)
            return torch.nn.functional.cosine_similarity(out, q[None], dim=1, eps=1e-12)
        out = np.asarray(output, dtype=np.float64)
        return self(torch.as_tensor(out)).numpy()

    def __repr__(self) -> str:
        return self.__name__


def similarity_target(query: Any, encoder: Callable | None = None) -> SimilarityTarget:
    """Target: cosine similarity of the explained model's embedding with ``query``'s embedding.

    Parameters
    ----------
    query : array-like of shape (D,) or (1, D), str, or an input of ``encoder``
        The query embedding itself, or (with ``encoder``) what the encoder embeds: a text (str)
        for a text tower, an image ``(C, H, W)`` or ``(1, C, H, W)`` for an image tower.
    encoder : callable or None, default None
        Embeds the query: called as ``encoder([query])`` for a string and ``encoder(query[None])``
        for an unbatched tensor/array (as is for one with a leading batch axis of 1); it must
        return one embedding, shape ``(1, D)`` or ``(D,)``. A torch module is run in eval mode
        without gradients and left as found.

    Returns
    -------
    SimilarityTarget
        A callable ``output (m, D) -> (m,)``: pass it as ``target=`` to any method. The same query
        serves every sample (explain one query against many images; for several queries call a
        method once per query).

    Raises
    ------
    ValueError, TypeError
        Naming ``query`` or ``encoder`` when the query is not one finite vector or cannot be embedded.

    Examples
    --------
    >>> from lumos.data.image_text import load_image_text_model
    >>> m = load_image_text_model()
    >>> tgt = similarity_target("red circle", encoder=m.encode_text)
    >>> # lumos.explain(m.image_encoder, images, "integrated_gradients", target=tgt)
    """
    desc = None
    if encoder is not None:
        if not callable(encoder):
            raise TypeError(f"encoder must be callable (it embeds the query); got {type(encoder).__name__}")
        if isinstance(query, str):
            arg, desc = [query], f"cosine similarity with {query!r}"
        else:
            t = query if isinstance(query, torch.Tensor) else torch.as_tensor(np.asarray(query))
            arg = t if (t.ndim >= 1 and t.shape[0] == 1 and t.ndim >= 2) else t[None]
            desc = "cosine similarity with an encoded query"
        emb = _embed(encoder, arg)
    else:
        if isinstance(query, str):
            raise TypeError("query: a string needs encoder= (the text tower that embeds it)")
        emb = query
    vec = emb.detach().cpu() if isinstance(emb, torch.Tensor) else torch.as_tensor(np.asarray(emb, dtype=np.float64))
    vec = vec.to(torch.float64)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1 or vec.numel() == 0:
        raise ValueError(f"query: expected one embedding of shape (D,) or (1, D); got shape {tuple(vec.shape)}"
                         + ("" if encoder is None else " from the encoder"))
    if not bool(torch.isfinite(vec).all()) or float(vec.norm()) == 0.0:
        raise ValueError("query: the embedding must be finite and non-zero (cosine similarity is undefined otherwise)")
    return SimilarityTarget(vec.clone(), desc or "cosine similarity with a query vector")


def _embed(encoder: Callable, arg: Any):
    if isinstance(encoder, torch.nn.Module):
        from ..core.torch_model import ModelGuard

        with ModelGuard(encoder):
            was = encoder.training
            encoder.eval()
            try:
                with torch.no_grad():
                    return encoder(arg)
            finally:
                encoder.train(was)
    with torch.no_grad():
        return encoder(arg)
