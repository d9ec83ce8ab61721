"""Embeddings of a layer's activations: PCA, t-SNE and UMAP, scatter plots and an HTML view.

``embed(model, data, "features.10", method="tsne")`` streams ``data`` through the model, keeps one
activation vector per input (a conv map is averaged over positions by default, ``reduce=``), the
labels, the predictions and a small thumbnail, and reduces the vectors to two dimensions with
scikit-learn's ``PCA`` or ``TSNE`` or with ``umap-learn`` (the optional extra ``concepts``).

Reading the picture (Wattenberg, Viégas & Johnson, *How to Use t-SNE Effectively*, Distill 2016):
t-SNE keeps neighbourhoods, not distances. The sizes of clusters and the **distances between
clusters mean nothing**; the picture changes with the **perplexity** (roughly the number of
neighbours each point keeps) and with the seed. UMAP shares these caveats. PCA is linear and its
distances are true, but only within the plane of its two components. The caveats are printed
beside every picture.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.execution import check_batch_size, progress_bar
from ..core.torch_model import ModelGuard, model_device, model_dtype
from ..core.validation import check_choice, check_number
from ..display._common import ShortRepr, new_axes, short_label
from .objectives import OUTPUT
from ._capture import check_layers, iter_batches, record

__all__ = ["activations", "Activations", "embed", "reduce_activations", "Embedding", "METHODS", "caveats"]

METHODS = ("tsne", "pca", "umap")
REDUCTIONS = ("mean", "max", "flatten")
_NAMES = {"tsne": "t-SNE", "pca": "PCA", "umap": "UMAP"}


@dataclass(repr=False)
class Activations(ShortRepr):
    """One activation vector per input (:func:`activations`).

    Attributes
    ----------
    values : ndarray (n, d)
    labels : ndarray (n,) or None
        From ``(inputs, labels)`` batches or a ShapesData.
    predictions : ndarray (n,) or None
        The model's arg-max output.
    thumbnails : ndarray (n, h, w, 3) of uint8, or None
    layer : str
    reduce : str
    """

    values: np.ndarray
    labels: np.ndarray | None
    predictions: np.ndarray | None
    thumbnails: np.ndarray | None
    layer: str
    reduce: str


def _thumbnail(x: torch.Tensor, size: int) -> np.ndarray:
    """(b, C, H, W) → (b, h, w, 3) uint8, each image min-max scaled to [0, 255]."""
    x = x.detach().float()
    if x.ndim != 4:
        raise ValueError("thumbnails need image inputs (batch, C, H, W); pass thumbnail_size=None")
    h, w = x.shape[-2:]
    f = size / max(h, w)
    if f < 1:
        x = torch.nn.functional.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x[:, :3]
    lo = x.flatten(1).amin(1)[:, None, None, None]
    hi = x.flatten(1).amax(1)[:, None, None, None]
    x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def activations(model: nn.Module, data: Any, at: str, *, reduce: str = "mean", batch_size: int | None = None,
                predictions: bool = True, thumbnail_size: int | None = 32,
                progress: bool | None = None) -> Activations:
    """Activations of layer ``at`` over ``data``, one vector per input, streamed in batches.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode, left as found.
    data : tensor, array, ShapesData, DataLoader or iterable of batches
        Batches may be ``(inputs, labels)``.
    at : str
        The layer, by dotted name.
    reduce : {"mean", "max", "flatten"}, default "mean"
        How a map ``(C, *spatial)`` becomes a vector: mean or max over positions (``C`` values),
        or all values. Vectors are kept as they are.
    batch_size : int, optional
        Rows per pass for array inputs; results do not depend on it.
    predictions : bool, default True
        Also record the arg-max of the output (runs the whole model).
    thumbnail_size : int or None, default 32
        Keep a thumbnail of at most this side per input (for the HTML view); None: none.
    """
    check_choice(reduce, "reduce", REDUCTIONS)
    if thumbnail_size is not None:
        thumbnail_size = int(check_number(thumbnail_size, "thumbnail_size", low=1, integer=True))
    vals, labs, preds, thumbs = [], [], [], []
    with ModelGuard(model):
        model.eval()
        modules = check_layers(model, [at])
        keys = {at} | ({OUTPUT} if predictions else set())
        per_input = isinstance(data, (torch.Tensor, np.ndarray)) or hasattr(data, "images")
        first = getattr(data, "images", data)
        bs = check_batch_size(batch_size, row_bytes=int(np.prod(first.shape[1:])) * 4 if per_input else None)
        total = len(first) if per_input else (len(data) if hasattr(data, "__len__") else 0)
        with torch.no_grad(), progress_bar(total, "activations", progress if total else False,
                                           "input" if per_input else "batch") as bar:
            for x, y in iter_batches(data, bs, model_device(model), model_dtype(model)):
                acts = record(model, x, keys, what="the data", modules=modules)
                a = acts[at].detach()
                if a.ndim > 2 and reduce != "flatten":
                    a = a.flatten(2).mean(2) if reduce == "mean" else a.flatten(2).amax(2)
                vals.append(a.flatten(1).cpu().numpy())
                if y is not None:
                    labs.append(y.cpu().numpy())
                if predictions:
                    preds.append(acts[OUTPUT].detach().argmax(1).cpu().numpy())
                if thumbnail_size is not None:
                    thumbs.append(_thumbnail(x, thumbnail_size))
                bar.update(len(x) if per_input else 1)
    values = np.concatenate(vals)
    labels = np.concatenate(labs) if labs and sum(len(v) for v in labs) == len(values) else None
    return Activations(values=values, labels=labels, predictions=np.concatenate(preds) if preds else None,
                       thumbnails=np.concatenate(thumbs) if thumbs else None, layer=str(at), reduce=reduce)


def caveats(method: str, params: dict) -> list[str]:
    """The warnings printed beside an embedding picture."""
    if method == "pca":
        ev = params.get("explained_variance_ratio")
        share = f" (here {100 * sum(ev):.0f}% of the variance)" if ev is not None else ""
        return [f"PCA is linear: distances are true only within the plane of its two components{share}; "
                "what lies off the plane is not shown."]
    out = ["Distances between clusters mean nothing, and neither do cluster sizes: only who is "
           "whose neighbour is kept (Wattenberg et al. 2016)."]
    if method == "tsne":
        out.append(f"The picture depends on the perplexity (here {params.get('perplexity'):g}: about how "
                   "many neighbours each point keeps)" + (" and on the seed" if params.get("init") == "random"
                                                           else " and on the start (PCA here)")
                   + "; compare a few perplexities before reading shapes into it.")
    else:
        out.append(f"The picture depends on n_neighbors (here {params.get('n_neighbors')}) and min_dist "
                   f"(here {params.get('min_dist')}) and on the seed.")
    return out


def reduce_activations(values: Any, method: str = "tsne", *, n_components: int = 2, perplexity: float = 30.0,
                       seed: int | None = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                       init: str = "pca") -> tuple[np.ndarray, dict]:
    """``values`` (n, d) reduced to ``(n, n_components)`` by PCA, t-SNE or UMAP; returns the
    coordinates and the settings used (with PCA's explained variance ratio)."""
    check_choice(method, "method", METHODS)
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"values must be (n >= 2, d); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("values contain NaN or Inf")
    n_components = int(check_number(n_components, "n_components", low=1, integer=True))
    params: dict = {"method": method, "n_components": n_components, "seed": seed}
    if method == "pca":
        from sklearn.decomposition import PCA

        if n_components > min(x.shape):
            raise ValueError(f"n_components={n_components} exceeds min(n, d) = {min(x.shape)}")
        pca = PCA(n_components=n_components, svd_solver="full")
        coords = pca.fit_transform(x)
        params["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
        return coords, params
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = check_number(perplexity, "perplexity", low=0, low_open=True)
        if perplexity >= len(x):
            raise ValueError(f"perplexity must be smaller than the number of points ({len(x)}); got "
                             f"{perplexity:g}. Typical values are 5-50 (and at most about n/3).")
        check_choice(init, "init", ("pca", "random"))
        params["perplexity"] = float(perplexity)
        params["init"] = init
        tsne = TSNE(n_components=n_components, perplexity=float(perplexity), init=init,
                    learning_rate="auto", random_state=seed,
                    method="barnes_hut" if n_components < 4 else "exact")
        return tsne.fit_transform(x), params
    try:
        import umap  # noqa: F401
    except ImportError:
        raise ImportError("method='umap' needs the optional extra 'concepts' (umap-learn): "
                          "pip install 'lumos[concepts]'") from None
    n_neighbors = int(check_number(n_neighbors, "n_neighbors", low=2, integer=True))
    if n_neighbors >= len(x):
        raise ValueError(f"n_neighbors must be smaller than the number of points ({len(x)}); got {n_neighbors}")
    min_dist = check_number(min_dist, "min_dist", low=0)
    params.update(n_neighbors=n_neighbors, min_dist=float(min_dist))
    reducer = umap.UMAP(n_components=n_components, n_neighbors=n_neighbors, min_dist=float(min_dist),
                        random_state=seed)
    return np.asarray(reducer.fit_transform(x), dtype=np.float64), params


@dataclass(repr=False)
class Embedding(ShortRepr):
    """Two-dimensional (or more) coordinates of a layer's activations (:func:`embed`).

    Attributes
    ----------
    coords : ndarray (n, n_components)
    method : str
    params : dict
    labels, predictions : ndarray (n,) or None
    thumbnails : ndarray (n, h, w, 3) uint8 or None
    class_names : list of str or None
    layer : str
    caveats : list of str
    """

    coords: np.ndarray
    method: str
    params: dict
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    thumbnails: np.ndarray | None = None
    class_names: list | None = None
    layer: str = ""
    caveats: list = field(default_factory=list)

    @property
    def title(self) -> str:
        extra = f", perplexity {self.params['perplexity']:g}" if "perplexity" in self.params else ""
        return f"{_NAMES[self.method]} of {self.layer!r} activations ({len(self.coords)} inputs{extra})"

    def _colours(self, color_by: Any):
        """(values, kind, names): kind 'categorical' or 'continuous'."""
        if isinstance(color_by, str):
            check_choice(color_by, "color_by", ("label", "prediction", "correct"))
            if color_by == "correct":
                if self.labels is None or self.predictions is None:
                    raise ValueError("color_by='correct' needs labels and predictions")
                return (self.labels == self.predictions).astype(int), "categorical", ["wrong", "correct"]
            v = self.labels if color_by == "label" else self.predictions
            if v is None:
                raise ValueError(f"color_by={color_by!r}: the embedding has no {color_by}s")
            return np.asarray(v), "categorical", None
        v = np.asarray(color_by)
        if v.shape != (len(self.coords),):
            raise ValueError(f"color_by must be 'label', 'prediction', 'correct' or one value per point "
                             f"({len(self.coords)}); got shape {v.shape}")
        kind = "categorical" if v.dtype.kind in "biuUSO" and len(np.unique(v)) <= 20 else "continuous"
        return v, kind, None

    def _name(self, value, names) -> str:
        if names is not None:
            return names[int(value)]
        if self.class_names is not None and isinstance(value, (int, np.integer)) and 0 <= value < len(self.class_names):
            return str(self.class_names[int(value)])
        return str(value)

    def plot(self, color_by: Any = "label", ax=None, *, size: float = 12.0, cmap: str = "viridis"):
        """Scatter of the first two coordinates coloured by ``color_by`` ("label", "prediction",
        "correct" or one value per point: categorical gets a legend, continuous a colour bar); the
        caveats are printed under the picture. Returns the axes."""
        import matplotlib.pyplot as plt

        values, kind, names = self._colours(color_by)
        ax = new_axes(ax, (5.2, 5.0))
        xy = self.coords[:, :2] if self.coords.shape[1] > 1 else np.c_[self.coords[:, 0], np.zeros(len(self.coords))]
        if kind == "categorical":
            cats = list(np.unique(values))
            colours = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
            for j, c in enumerate(cats):
                sel = values == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=colours(j % colours.N), alpha=0.8,
                           label=short_label(self._name(c, names), 24), edgecolors="none")
            ax.legend(fontsize=7, markerscale=1.5, title=color_by if isinstance(color_by, str) else None,
                      title_fontsize=7, loc="best")
        else:
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=values.astype(float), cmap=cmap, alpha=0.85,
                            edgecolors="none")
            cb = ax.figure.colorbar(sc, ax=ax)
            cb.ax.tick_params(labelsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(short_label(self.title, 60), fontsize=9)
        ax.set_xlabel("\n".join(short_label(c, 80, 3) for c in self.caveats), fontsize=6.5, loc="left")
        self.ax_ = ax
        return ax

    def to_html(self, path: Any = None, *, color_by: Any = "label", title: str | None = None) -> str:
        """A self-contained HTML page: the scatter (inline SVG), hovering a point shows its
        thumbnail and label; the caveats beside the picture. Every label is escaped; nothing is
        loaded from the network. Returns the HTML (also written to ``path`` if given)."""
        from jinja2 import Environment

        import matplotlib

        values, kind, names = self._colours(color_by)
        xy = self.coords[:, :2] if self.coords.shape[1] > 1 else np.c_[self.coords[:, 0], np.zeros(len(self.coords))]
        lo, hi = xy.min(0), xy.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        pix = 20 + 560 * (xy - lo) / span
        pix[:, 1] = 600 - pix[:, 1]  # y up
        if kind == "categorical":
            cats = list(np.unique(values))
            cmap = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"]
            col = {c: matplotlib.colors.to_hex(cmap(j % cmap.N)) for j, c in enumerate(cats)}
            colours = [col[v] for v in values]
            legend = [(col[c], self._name(c, names)) for c in cats]
        else:
            v = values.astype(float)
            t = (v - v.min()) / (v.max() - v.min() if v.max() > v.min() else 1.0)
            cmap = matplotlib.colormaps["viridis"]
            colours = [matplotlib.colors.to_hex(cmap(float(a))) for a in t]
            legend = [(matplotlib.colors.to_hex(cmap(0.0)), f"{v.min():.3g}"),
                      (matplotlib.colors.to_hex(cmap(1.0)), f"{v.max():.3g}")]
        points = []
        for i in range(len(xy)):
            label = self._name(values[i], names)
            parts = [f"#{i}", f"{color_by if isinstance(color_by, str) else 'value'}: {label}"]
            by = color_by if isinstance(color_by, str) else None
            if self.labels is not None and by != "label":
                parts.append(f"label: {self._name(self.labels[i], None)}")
            if self.predictions is not None and by != "prediction":
                parts.append(f"prediction: {self._name(self.predictions[i], None)}")
            points.append({"x": f"{pix[i, 0]:.1f}", "y": f"{pix[i, 1]:.1f}", "colour": colours[i],
                           "text": " · ".join(parts),
                           "thumb": _png_base64(self.thumbnails[i]) if self.thumbnails is not None else ""})
        html = Environment(autoescape=True).from_string(_TEMPLATE).render(
            title=title or self.title, points=points, legend=legend, caveats=self.caveats,
            params={k: v for k, v in self.params.items() if k != "explained_variance_ratio"})
        if path is not None:
            from pathlib import Path

            Path(path).write_text(html, encoding="utf-8")
        return html


def _png_base64(thumb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(thumb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def embed(model: nn.Module, data: Any, at: str, *, method: str = "tsne", reduce: str = "mean",
          labels: Sequence | None = None, class_names: Sequence[str] | None = None, n_components: int = 2,
          perplexity: float = 30.0, seed: int | None = 0, init: str = "pca", n_neighbors: int = 15,
          min_dist: float = 0.1, batch_size: int | None = None, thumbnail_size: int | None = 32,
          progress: bool | None = None) -> Embedding:
    """Embed layer ``at``'s activations over ``data`` in two dimensions.

    Parameters
    ----------
    model, data, at, reduce, batch_size, thumbnail_size, progress
        As :func:`activations`.
    method : {"tsne", "pca", "umap"}, default "tsne"
        scikit-learn's ``TSNE`` (``init="pca"``, ``learning_rate="auto"``) or ``PCA``
        (``svd_solver="full"``), or ``umap.UMAP`` (optional extra ``concepts``).
    labels : sequence, optional
        One label per input (default: the labels found in ``data``).
    class_names : sequence of str, optional
        Names of integer labels (default: ``model.class_names`` when the model has them).
    perplexity : float, default 30
        t-SNE's perplexity; must be smaller than the number of inputs.
    seed : int, default 0
        t-SNE's and UMAP's ``random_state``. With t-SNE's ``init="pca"`` (the default) the
        result does not depend on it (the start is the PCA of the activations and Barnes-Hut
        t-SNE draws nothing else); with ``init="random"`` it sets the start.
    init : {"pca", "random"}, default "pca"
        t-SNE's initial layout.
    n_neighbors, min_dist
        UMAP's settings.
    """
    check_choice(method, "method", METHODS)
    if method == "tsne":
        check_number(perplexity, "perplexity", low=0, low_open=True)
    acts = activations(model, data, at, reduce=reduce, batch_size=batch_size,
                       thumbnail_size=thumbnail_size, progress=progress)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(acts.values),):
            raise ValueError(f"labels must have one entry per input ({len(acts.values)}); got shape {labels.shape}")
    else:
        labels = acts.labels
    coords, params = reduce_activations(acts.values, method, n_components=n_components, perplexity=perplexity,
                                        seed=seed, n_neighbors=n_neighbors, min_dist=min_dist, init=init)
    params["reduce"] = reduce
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    return Embedding(coords=coords, method=method, params=params, labels=labels, predictions=acts.predictions,
                     thumbnails=acts.thumbnails, class_names=names, layer=str(at),
                     caveats=caveats(method, params))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 1em; color: #222; }
.wrap { display: flex; gap: 1.5em; align-items: flex-start; }
svg { border: 1px solid #ccc; background: #fff; }
circle { stroke: none; opacity: 0.85; }
circle:hover { stroke: #000; stroke-width: 1.5; opacity: 1; }
.side { max-width: 28em; font-size: 0.9em; }
.caveat { background: #fff6d5; border-left: 4px solid #e0b000; padding: 0.4em 0.6em; margin: 0.4em 0; }
#thumb { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #ccc; display: block; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: middle; }
</style></head>
<body>
<h2>{{ title }}</h2>
<div class="wrap">
<svg width="600" height="600" viewBox="0 0 600 600" role="img" aria-label="{{ title }}">
{% for p in points %}<circle cx="{{ p.x }}" cy="{{ p.y }}" r="4" fill="{{ p.colour }}" data-thumb="{{ p.thumb }}" data-text="{{ p.text }}"><title>{{ p.text }}</title></circle>
{% endfor %}</svg>
<div class="side">
<img id="thumb" alt="hover a point">
<p id="info">Hover a point to see its input.</p>
<h3>Legend</h3>
<ul>{% for colour, name in legend %}<li><span class="swatch" style="background: {{ colour }}"></span>{{ name }}</li>{% endfor %}</ul>
<h3>Read with care</h3>
{% for c in caveats %}<p class="caveat">{{ c }}</p>{% endfor %}
<h3>Settings</h3>
<ul>{% for k, v in params.items() %}<li>{{ k }}: {{ v }}</li>{% endfor %}</ul>
</div></div>
<script>
(function () {
  var img = document.getElementById("thumb"), info = document.getElementById("info");
  document.querySelectorAll("circle").forEach(function (c) {
    c.addEventListener("mouseenter", function () {
      var t = c.getAttribute("data-thumb");
      if (t) { img.src = "data:image/png;base64," + t; }
      info.textContent = c.getAttribute("data-text");
    });
  });
})();
</script>
</body></html>
"""
