"""Feature dashboards: what each SAE feature responds to and what it does, as self-contained HTML.

:func:`feature_dashboards` streams a data set through the model up to layer ``at`` in batches,
encodes the layer's rows with the SAE and keeps, per feature, with memory bounded by the number of
features (never the whole activation tensor):

* **top contexts**: the ``k`` samples where the feature's largest activation (over the sample's
  positions) is highest; ties go to the earlier sample, so the list is exactly a full sort
  whatever the batch size. Each example is the sample's tokens around the arg-max position with
  the feature's activation per token (highlighted in the page), or the image crop of the arg-max
  position's receptive field (an inline PNG).
* **quantile bands**: ``bands`` are quantiles of the per-sample maximum among the samples where
  the feature fires (default 0, 0.5, 0.9, 0.99, 1: four bands). A first pass bins those maxima on
  a log grid (1/32 of an octave, so every band edge is its quantile to within 2.2 %); a second
  pass draws ``k_band`` samples per band uniformly at random (a seeded hash of the sample number
  is each sample's priority: the same seed gives the same samples, whatever the batch size).
* the **activation histogram** of the feature's non-zero activations (every position), exact on
  ``n_bins`` equal bins from 0 to the feature's maximum (second pass), drawn as inline SVG; the
  feature's **density** (fraction of positions where it fires).
* **output effects**: ``W_U · d_f`` for the decoder direction ``d_f`` (in the layer's units) and the
  unembedding ``W_U`` of the model where it has one: a Hugging Face model's output embeddings (with
  the gain of the final norm folded in and, for a LayerNorm, ``d_f`` centred: the direct effect on
  the logits, up to the norm's per-input scale), or a classifier ``Linear`` reading the layer's
  channels (``model.classifier`` of the demo CNN: the effect of a unit of pooled activation). Top
  positive and negative entries, labelled by the tokenizer or the class names.
* **nearest features** by cosine of decoder directions.

The page is built from a Jinja2 template with autoescaping on: every token, label and title is
escaped; there is no script and nothing is loaded from the network (images are ``data:`` PNGs).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.torch_model import ModelGuard, check_finite, model_device, model_dtype
from ..core.units import ActivationModel
from ..core.validation import check_number
from ..display._common import ShortRepr
from .attribution import _EvalSAE, _check_sae
from .cache import flatten_positions, model_batches

__all__ = ["feature_dashboards", "FeatureDashboards", "FeatureData", "Example", "unembedding"]

_OCTAVE_BINS = 32  # log-grid bins per octave for the band quantiles
_LOG_LOW, _LOG_HIGH = -40, 40  # octaves covered: 2**-40 .. 2**40 (values outside are clipped to the ends)


@dataclass
class Example:
    """One context of a feature.

    Attributes
    ----------
    sample : int
        Index of the sample in the data set (in streaming order).
    position : int
        The position (token, or ``h * W + w``) where the feature is largest in the sample.
    activation : float
        The feature's activation there.
    tokens : list of str or None
        The tokens of a window around the position (token models).
    values : list of float or None
        The feature's activation at each token of the window.
    focus : int
        Index of the position inside the window.
    image : ndarray (h, w, 3) uint8 or None
        The receptive-field crop of the position (image models).
    """

    sample: int
    position: int
    activation: float
    tokens: list | None = None
    values: list | None = None
    focus: int = 0
    image: np.ndarray | None = None


@dataclass(repr=False)
class FeatureData(ShortRepr):
    """Everything a dashboard page shows for one feature."""

    feature: int
    density: float
    max_activation: float
    top: list
    bands: list  # [(low, high, q_low, q_high, [Example, ...]), ...]
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    effects_pos: list  # [(label, value), ...]
    effects_neg: list
    neighbours: list  # [(feature, cosine), ...]
    n_positions: int


def _hash_keys(seed: int, samples: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random uint64 per (seed, sample, feature) (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        z = (np.asarray(samples, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(feature, np.uint64) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed & 0xFFFFFFFF))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _log_bin(v: np.ndarray) -> np.ndarray:
    n = (_LOG_HIGH - _LOG_LOW) * _OCTAVE_BINS
    with np.errstate(divide="ignore"):
        j = np.floor((np.log2(np.maximum(v, 1e-300)) - _LOG_LOW) * _OCTAVE_BINS)
    return np.clip(j, 0, n - 1).astype(np.int64)


def _log_quantiles(counts: np.ndarray, qs: Sequence[float], lo: float, hi: float) -> np.ndarray:
    """Quantiles from log-grid counts (bin lower edge; exact ends ``lo``/``hi``)."""
    total = counts.sum()
    out = []
    for q in qs:
        if q <= 0:
            out.append(lo)
        elif q >= 1:
            out.append(hi)
        else:
            j = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
            out.append(min(max(2.0 ** (_LOG_LOW + j / _OCTAVE_BINS), lo), hi))
    return np.asarray(out)


def unembedding(model: nn.Module, d_in: int) -> tuple[torch.Tensor | None, str]:
    """The model's unembedding ``(outputs, d_in)`` with the final norm folded in, and how it was found.

    A Hugging Face model's ``get_output_embeddings()`` (times the gain of the last norm module, whose
    centring is applied by :func:`feature_dashboards` for a LayerNorm); else a ``classifier``, ``fc``
    or ``head`` ``nn.Linear`` whose input width is ``d_in``. ``(None, reason)`` when there is none.
    """
    get = getattr(model, "get_output_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "weight", None) is not None and emb.weight.shape[-1] == d_in:
        W = emb.weight.detach()
        norm = None
        for name, m in model.named_modules():
            cls = type(m).__name__.lower()
            if ("layernorm" in cls or "rmsnorm" in cls) and getattr(m, "weight", None) is not None \
                    and m.weight.shape == (d_in,):
                norm = (name, m)  # the last registered norm of width d_in: the final one
        if norm is not None:
            W = W * norm[1].weight.detach()[None, :]
            return W, f"output embeddings x gain of {norm[0]!r}" + (" (centred)" if "layernorm" in
                                                                    type(norm[1]).__name__.lower() else "")
        return W, "output embeddings"
    for name in ("classifier", "fc", "head", "lm_head"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Linear) and m.in_features == d_in:
            return m.weight.detach(), f"{name} (linear read-out)"
    return None, "no unembedding found"


@functools.lru_cache(maxsize=1)
def _template():
    """The page template (compiled once; Jinja2 with autoescaping on)."""
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("lumos.dictionary", "templates"), autoescape=True,
                      keep_trailing_newline=True)
    return env.get_template("feature_dashboard.html.j2")


def _token_ids(batch) -> torch.Tensor | None:
    ids = batch.kwargs.get("input_ids")
    if ids is None and batch.args and isinstance(batch.args[0], torch.Tensor) and not batch.args[0].is_floating_point():
        ids = batch.args[0]
    return ids


def _decode(tokenizer, ids: Sequence[int]) -> list[str]:
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    if hasattr(tokenizer, "decode"):
        return [tokenizer.decode([int(i)]) for i in ids]
    return [str(tokenizer(int(i))) for i in ids]


@dataclass(repr=False)
class FeatureDashboards(ShortRepr):
    """Feature dashboards of an SAE at a layer (:func:`feature_dashboards`).

    Attributes
    ----------
    features : dict
        ``feature -> FeatureData``.
    layer : str
    n_samples, n_positions : int
        Samples and positions (rows) streamed.
    effects_source : str
        Where the output effects come from.
    title : str
    """

    features: dict
    layer: str
    n_samples: int
    n_positions: int
    effects_source: str
    title: str = ""
    params: dict = field(default_factory=dict)

    def __getitem__(self, feature: int) -> FeatureData:
        if feature not in self.features:
            raise KeyError(f"feature {feature} has no dashboard; features: {sorted(self.features)[:20]}...")
        return self.features[feature]

    def to_html(self, feature: int) -> str:
        """One feature's page: self-contained HTML (no script, no network; every text escaped)."""
        from ..concepts.embeddings import _png_base64

        fd = self[feature]
        scale = fd.max_activation if fd.max_activation > 0 else 1.0

        def context(ex: Example) -> dict:
            if ex.image is not None:
                return {"image": _png_base64(ex.image), "activation": ex.activation, "sample": ex.sample,
                        "position": ex.position}
            toks = [{"text": t, "value": v, "alpha": f"{min(max(v / scale, 0.0), 1.0):.3f}", "focus": i == ex.focus}
                    for i, (t, v) in enumerate(zip(ex.tokens or [], ex.values or []))]
            return {"tokens": toks, "activation": ex.activation, "sample": ex.sample, "position": ex.position}

        counts = fd.hist_counts
        peak = max(int(counts.max()) if counts.size else 0, 1)
        width, height = 420, 120
        bw = width / max(len(counts), 1)
        bars = [{"x": f"{i * bw:.2f}", "w": f"{max(bw - 1, 0.5):.2f}", "h": f"{height * c / peak:.2f}",
                 "y": f"{height - height * c / peak:.2f}", "n": int(c),
                 "lo": f"{fd.hist_edges[i]:.3g}", "hi": f"{fd.hist_edges[i + 1]:.3g}"}
                for i, c in enumerate(counts)]
        return _template().render(
            title=self.title or f"SAE features at {self.layer}", layer=self.layer, f=fd,
            top=[context(e) for e in fd.top],
            bands=[{"lo": lo, "hi": hi, "qlo": qlo, "qhi": qhi, "examples": [context(e) for e in exs]}
                   for lo, hi, qlo, qhi, exs in fd.bands],
            bars=bars, width=width, height=height, hist_max=fd.hist_edges[-1] if fd.hist_edges.size else 0.0,
            effects_source=self.effects_source, n_samples=self.n_samples, n_positions=self.n_positions)

    def save(self, folder: str | Path, features: Sequence[int] | None = None) -> list[Path]:
        """Write ``feature_<i>.html`` per feature into ``folder``; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for f in (sorted(self.features) if features is None else features):
            p = folder / f"feature_{int(f)}.html"
            p.write_text(self.to_html(int(f)), encoding="utf-8")
            out.append(p)
        return out


def feature_dashboards(model: nn.Module, sae: nn.Module, data: Any, at: str,
                       features: Sequence[int] | None = None, *, k: int = 8, k_band: int = 4,
                       bands: Sequence[float] = (0.0, 0.5, 0.9, 0.99, 1.0), n_bins: int = 30,
                       window: int = 8, n_effects: int = 8, n_neighbours: int = 5,
                       tokenizer: Any = None, class_names: Sequence[str] | None = None,
                       unembed: Any = "auto", crop_size: int = 48, labels: Any = None,
                       batch_size: int | None = None, seed: int = 0, title: str = "",
                       progress: bool | None = None) -> FeatureDashboards:
    """Feature dashboards of ``sae`` at layer ``at`` of ``model`` over ``data`` (see the module docs).

    Parameters
    ----------
    model : nn.Module
        Left exactly as found; the pass stops at the layer.
    sae : SAE
        Trained on the layer's rows (:func:`~lumos.dictionary.cache.flatten_positions`).
    data
        As for :func:`~lumos.dictionary.cache.cache_activations` (tensors, arrays, a tokenizer's
        dict, a DataLoader). Read twice: it must be re-iterable (not a generator).
    at : str
    features : sequence of int, optional
        Default: every feature.
    k : int, default 8
        Top contexts per feature.
    k_band : int, default 4
        Contexts drawn per quantile band.
    bands : sequence of float, default (0, 0.5, 0.9, 0.99, 1)
        Quantile edges of the band(s) (increasing, in [0, 1]); ``()`` for none.
    n_bins : int, default 30
        Histogram bins.
    window : int, default 8
        Tokens shown on each side of the arg-max token.
    n_effects, n_neighbours : int
        Entries of the output-effect lists (each side) and of the nearest-feature list.
    tokenizer : optional
        Turns token ids into strings (``decode``); also labels the output effects of a language model.
    class_names : sequence of str, optional
        Labels of a classifier's outputs (default ``model.class_names`` when it has them).
    unembed : "auto", None, tensor (outputs, d_in) or nn.Linear
        The output read-out for the effects (:func:`unembedding` for ``"auto"``; None: no effects).
    crop_size : int, default 48
        Largest side of an image crop in the page.
    batch_size : int, optional
    seed : int, default 0
        Seeds the band samples.
    """
    _check_sae(sae)
    k = int(check_number(k, "k", low=1, integer=True))
    k_band = int(check_number(k_band, "k_band", low=1, integer=True))
    n_bins = int(check_number(n_bins, "n_bins", low=1, integer=True))
    window = int(check_number(window, "window", low=0, integer=True))
    seed = int(check_number(seed, "seed", integer=True))
    qs = np.asarray(list(bands), dtype=np.float64)
    if qs.size == 1 or (qs.size and (np.any(np.diff(qs) <= 0) or qs[0] < 0 or qs[-1] > 1)):
        raise ValueError(f"bands must be at least two increasing quantiles in [0, 1] (or empty); got {bands!r}")
    if hasattr(data, "__next__"):
        raise TypeError("data: dashboards read the data twice (top contexts, then histograms and quantile "
                        "bands); give a tensor, an array, a dict, a list or a DataLoader, not an iterator")
    feats = np.arange(sae.n_features) if features is None else np.unique(np.asarray(
        [int(check_number(f, "features", low=0, high=sae.n_features - 1, integer=True)) for f in features]))
    if feats.size == 0:
        raise ValueError("features: give at least one feature")
    F = len(feats)
    ft = torch.as_tensor(feats)
    dev, dt = model_device(model), model_dtype(model)
    act_model = ActivationModel(model, at)
    rf = None

    def stream(desc):
        for b in model_batches(data, batch_size, dev, dt, labels=labels, progress=progress, desc=desc):
            with torch.no_grad():
                act = act_model(*b.args, **b.kwargs)
            if isinstance(act, (tuple, list)):
                act = act[0]
            check_finite(act, f"the data (at {at!r})")
            rows, idx = flatten_positions(act, b.mask)
            codes = sae.encode(rows.to(sae.W_dec.dtype)).detach().double().cpu()[:, ft]  # (rows, F)
            yield b, act, codes, idx.cpu().numpy()

    def per_sample_max(codes, idx, nb):
        smax = torch.full((nb, F), -math.inf, dtype=torch.float64)
        spos = torch.zeros((nb, F), dtype=torch.long)
        for i in range(nb):
            sel = idx[:, 0] == i
            if sel.any():
                v, j = codes[torch.as_tensor(sel)].max(0)
                smax[i], spos[i] = v, torch.as_tensor(idx[sel, 1])[j]
        return smax.numpy(), spos.numpy()

    def make_example(b, act, codes, idx, i, f_col, pos, value, sample) -> Example:
        nonlocal rf
        ids = _token_ids(b)
        if ids is not None and act.ndim == 3:
            sel = idx[:, 0] == i
            positions = idx[sel, 1]
            vals = codes[torch.as_tensor(sel), f_col].numpy()
            lo, hi = max(0, pos - window), pos + window + 1
            keep = (positions >= lo) & (positions < hi)
            tok = ids[i][positions[keep]].cpu().tolist()
            return Example(sample, int(pos), float(value), _decode(tokenizer, tok), vals[keep].tolist(),
                           int(np.flatnonzero(positions[keep] == pos)[0]))
        x = b.args[0] if b.args else None
        if isinstance(x, torch.Tensor) and x.ndim == 4 and act.ndim == 4:
            from ..concepts.exemplars import receptive_field
            from ..concepts.embeddings import _thumbnail

            if rf is None:
                rf = receptive_field(model, at, tuple(x.shape[1:]))
            w = act.shape[-1]
            (h0, h1), (w0, w1) = rf.box((pos // w, pos % w))
            crop = x[i:i + 1, :, h0:h1, w0:w1]
            return Example(sample, int(pos), float(value), image=_thumbnail(crop, crop_size)[0])
        return Example(sample, int(pos), float(value))

    with ModelGuard(model), _EvalSAE(sae):
        model.eval()
        # ---- pass 1: density, maxima, top-k, log-grid counts of per-sample maxima
        n_bins_log = (_LOG_HIGH - _LOG_LOW) * _OCTAVE_BINS
        logc = np.zeros((F, n_bins_log), np.int64)
        fired = np.zeros(F, np.int64)
        fmax = np.zeros(F)
        smax_lo, smax_hi = np.full(F, np.inf), np.zeros(F)
        top_v = np.full((F, 0), -np.inf)
        top_s = np.zeros((F, 0), np.int64)
        top_ex: list = [{} for _ in range(F)]  # per feature: sample -> Example of the current top-k
        n_samples = n_rows = 0
        for b, act, codes, idx in stream("dashboards (1/2)"):
            nb = b.n
            fired += (codes > 0).sum(0).numpy()
            fmax = np.maximum(fmax, codes.amax(0).clamp_min(0).numpy())
            smax, spos = per_sample_max(codes, idx, nb)
            pos_ = smax > 0
            si, sj = np.nonzero(pos_)
            np.add.at(logc, (sj, _log_bin(smax[si, sj])), 1)
            smax_lo = np.minimum(smax_lo, np.where(pos_, smax, np.inf).min(0))
            smax_hi = np.maximum(smax_hi, np.where(pos_, smax, 0.0).max(0))
            samples = n_samples + np.arange(nb)
            cand_v = np.concatenate([top_v, np.where(pos_, smax, -np.inf).T], 1)
            cand_s = np.concatenate([top_s, np.tile(samples, (F, 1))], 1)
            order = np.lexsort((cand_s, -cand_v), axis=1)[:, :k]
            top_v, top_s = np.take_along_axis(cand_v, order, 1), np.take_along_axis(cand_s, order, 1)
            for j in range(F):
                kept = {}
                for v, s in zip(top_v[j], top_s[j]):
                    if not np.isfinite(v):
                        continue
                    s = int(s)
                    if s in top_ex[j]:
                        kept[s] = top_ex[j][s]
                    else:
                        i = s - n_samples
                        kept[s] = make_example(b, act, codes, idx, i, j, int(spos[i, j]), v, s)
                top_ex[j] = kept
            n_samples += nb
            n_rows += len(codes)
        # ---- band edges (quantiles of the per-sample maxima among firing samples)
        edges = [(_log_quantiles(logc[j], qs, smax_lo[j], smax_hi[j]) if qs.size and fired[j] else None)
                 for j in range(F)]
        hist = np.zeros((F, n_bins), np.int64)
        band_keys = {}  # (j, band) -> list of (key, sample, example), smallest keys first
        thr = np.full((F, max(len(qs) - 1, 1)), np.iinfo(np.uint64).max, np.uint64)  # key to beat when full
        if True:  # ---- pass 2: exact histogram on (0, max], band samples
            seen = 0
            for b, act, codes, idx in stream("dashboards (2/2)"):
                nb = b.n
                c = codes.numpy()
                for j in np.flatnonzero(fmax > 0):
                    v = c[:, j][c[:, j] > 0]
                    if v.size:
                        hist[j] += np.histogram(v, bins=np.linspace(0.0, fmax[j], n_bins + 1))[0]
                if qs.size:
                    smax, spos = per_sample_max(codes, idx, nb)
                    samples = seen + np.arange(nb)
                    keys = _hash_keys(seed, samples[:, None], feats[None, :])  # (nb, F)
                    for j in range(F):
                        if edges[j] is None:
                            continue
                        e = edges[j]
                        # band t holds [e[t], e[t+1]); the last band also its upper edge
                        t_of = np.searchsorted(e, smax[:, j], side="right") - 1
                        t_of[smax[:, j] == e[-1]] = len(e) - 2
                        ok = (smax[:, j] > 0) & (t_of >= 0) & (t_of < len(e) - 1)
                        ok[ok] &= keys[ok, j] < thr[j, t_of[ok]]
                        for i in np.flatnonzero(ok):
                            t = int(t_of[i])
                            cur = band_keys.setdefault((j, t), [])
                            if len(cur) == k_band and keys[i, j] >= cur[-1][0]:
                                continue
                            ex = make_example(b, act, codes, idx, int(i), j, int(spos[i, j]), smax[i, j],
                                              int(samples[i]))
                            cur.append((int(keys[i, j]), int(samples[i]), ex))
                            cur.sort(key=lambda z: z[0])
                            del cur[k_band:]
                            if len(cur) == k_band:
                                thr[j, t] = cur[-1][0]
                seen += nb
    # ---- decoder geometry: nearest features and output effects
    with torch.no_grad():
        dec = (sae.W_dec.detach().double() / sae.input_scale.detach().double()).cpu()
        unit = dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-30)
        cos = unit[ft] @ unit.T  # (F, n_features)
        if unembed is None:
            W_U, source = None, "none"
        elif isinstance(unembed, str):
            if unembed != "auto":
                raise ValueError(f"unembed must be 'auto', None, a tensor (outputs, d_in) or an nn.Linear; got {unembed!r}")
            W_U, source = unembedding(model, sae.d_in)
        elif isinstance(unembed, nn.Linear):
            W_U, source = unembed.weight.detach(), "given linear read-out"
        else:
            W_U, source = torch.as_tensor(np.asarray(unembed) if not isinstance(unembed, torch.Tensor) else unembed), \
                "given unembedding"
            if W_U.ndim != 2 or W_U.shape[1] != sae.d_in:
                raise ValueError(f"unembed must have shape (outputs, {sae.d_in}); got {tuple(W_U.shape)}")
        effects = None
        if W_U is not None:
            d = dec[ft]
            if "(centred)" in source:
                d = d - d.mean(1, keepdim=True)
            effects = (d @ W_U.double().cpu().T).numpy()  # (F, outputs)
    names = list(class_names) if class_names is not None else getattr(model, "class_names", None)

    def label(o: int) -> str:
        if tokenizer is not None and names is None:
            return _decode(tokenizer, [o])[0]
        if names is not None and o < len(names):
            return str(names[o])
        return f"output {o}"

    out = {}
    for j, f in enumerate(feats):
        top = [top_ex[j][int(s)] for v, s in zip(top_v[j], top_s[j]) if np.isfinite(v)]
        band_list = []
        if edges[j] is not None:
            for t in range(len(edges[j]) - 1):
                exs = sorted((z[2] for z in band_keys.get((j, t), [])), key=lambda e: -e.activation)
                band_list.append((float(edges[j][t]), float(edges[j][t + 1]), float(qs[t]), float(qs[t + 1]), exs))
        pos_eff, neg_eff = [], []
        if effects is not None:
            e = effects[j]
            n_e = min(n_effects, len(e))
            o = np.argsort(-e, kind="stable")
            pos_eff = [(label(int(i)), float(e[i])) for i in o[:n_e] if e[i] > 0]
            o = np.argsort(e, kind="stable")
            neg_eff = [(label(int(i)), float(e[i])) for i in o[:n_e] if e[i] < 0]
        c = cos[j].clone()
        c[int(f)] = -math.inf
        nn_idx = torch.argsort(-c, stable=True)[:n_neighbours].tolist()
        out[int(f)] = FeatureData(
            feature=int(f), density=float(fired[j] / max(n_rows, 1)), max_activation=float(fmax[j]),
            top=top, bands=band_list, hist_counts=hist[j], hist_edges=np.linspace(0.0, fmax[j], n_bins + 1),
            effects_pos=pos_eff, effects_neg=neg_eff,
            neighbours=[(int(i), float(cos[j, i])) for i in nn_idx if math.isfinite(float(c[i]))],
            n_positions=int(n_rows))
    return FeatureDashboards(features=out, layer=str(at), n_samples=int(n_samples), n_positions=int(n_rows),
                             effects_source=source, title=title,
                             params={"k": k, "k_band": k_band, "bands": qs.tolist(), "n_bins": n_bins,
                                     "window": window, "seed": seed})
