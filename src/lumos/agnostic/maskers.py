"""Maskers: how a model-agnostic method switches features of an input off.

A *feature* is a column of a table, a superpixel of an image or a word of a text. Every
perturbation explainer (LIME, KernelSHAP, exact and permutation Shapley values, feature ablation)
describes a perturbed input by a boolean *coalition* ``z`` over the features (``True`` = kept as in
the explained input, ``False`` = removed), and a masker turns coalitions into model inputs:

- :class:`TabularMasker` replaces removed columns by the values of background rows (the
  interventional value function of Janzing et al. 2020 / Lundberg & Lee 2017): one coalition gives
  one model row per background row, averaged with the background weights. The background is the
  data set itself, a random sample, or a weighted k-means summary; numeric and categorical (string)
  columns are both handled and the column names are kept.
- :class:`ImageMasker` replaces removed superpixels (scikit-image SLIC or quickshift, or a regular
  grid) by a fill: the superpixel's mean colour, a blurred copy of the image, or a constant.
- :class:`TextMasker` removes removed words, or replaces them by a mask token.

A masker is *bound* to the explained inputs with :meth:`Masker.bind`, which returns a
:class:`MaskedInputs`: ``masked(rows, Z)`` gives the model inputs for coalitions ``Z`` (m, M) of
samples ``rows`` (m,), and ``layout(per_feature)`` turns one number per feature back into the
values layout of an :class:`~lumos.Explanation`:

==========  ==========================================================================
inputs      values layout
==========  ==========================================================================
tabular     ``(n, d)`` with ``feature_names``; ``inputs`` is the encoded float matrix
            (categories as codes, ``meta["categories"]``), ``meta["feature_values"]`` the
            readable values.
image       the input's shape: superpixel ``s``'s value spread evenly over its pixels and
            channels (each element holds ``phi_s / (channels * pixels_s)``), so maps plot like
            other image attributions *and* the values still sum to ``sum(phi)`` (completeness can
            be checked). ``meta["segments"]`` (n, H, W) holds the superpixel labels,
            ``meta["segment_values"]`` (n, S) the value per superpixel (0-padded).
text        ``(n, max_tokens)``, 0-padded; ``meta["tokens"]`` (n, max_tokens) str array
            ("" padded) and ``meta["n_tokens"]`` (n,).
==========  ==========================================================================
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

from ..core.execution import rng as make_rng
from ..core.superpixels import channel_axis, superpixels
from ._tabular import TabularData, _is_frame, check_several_tables, is_several, is_tabular, table_layout

__all__ = ["Masker", "MaskedInputs", "TabularMasker", "ImageMasker", "TextMasker", "default_masker",
           "is_text"]


def is_text(inputs: Any) -> bool:
    """A string, or a sequence / 1-D array of strings."""
    if isinstance(inputs, str):
        return True
    if isinstance(inputs, np.ndarray):
        return inputs.ndim == 1 and inputs.dtype.kind in "UO" and len(inputs) > 0 and isinstance(inputs[0], str)
    return isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(isinstance(t, str) for t in inputs)


class MaskedInputs:
    """A masker bound to the explained inputs (see the module docstring)."""

    #: number of explained samples
    n: int
    #: number of features of each sample, shape (n,)
    n_features: np.ndarray
    #: weights of the background rows each coalition is evaluated on, shape (B,), sum 1
    weights: np.ndarray
    #: "tabular", "image" or "text"
    modality: str
    #: model rows per model call that suit this modality
    default_batch: int = 8192

    @property
    def max_features(self) -> int:
        return int(self.n_features.max())

    @property
    def n_background(self) -> int:
        return len(self.weights)

    def originals(self):
        """The model inputs of the explained samples themselves."""
        raise NotImplementedError

    def masked(self, rows: np.ndarray, Z: np.ndarray):
        """Model inputs for coalitions ``Z`` (m, M) of samples ``rows`` (m,).

        Returns ``m * B`` model inputs ordered coalition-major: the ``B`` background rows of the
        first coalition, then those of the second... Columns of ``Z`` beyond a sample's own
        number of features are ignored.
        """
        raise NotImplementedError

    def layout(self, per_feature: np.ndarray) -> tuple[np.ndarray, dict]:
        """``(values, fields)``: per-feature numbers (n, M) in the explanation's layout, and the
        Explanation fields (``inputs``, ``feature_names``, ``meta``, ``sample_meta``) for it."""
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able description for ``Explanation.params``."""
        return {"masker": type(self).__name__}

    def background_meta(self) -> dict:
        """What background the values were computed against (for ``Explanation.meta``)."""
        return {}


class Masker:
    """Base class: ``bind(inputs)`` returns a :class:`MaskedInputs`."""

    def bind(self, inputs: Any, name: str = "inputs") -> MaskedInputs:  # pragma: no cover
        raise NotImplementedError


# ====================================================================== tabular
class TabularMasker(Masker):
    """Removed columns take the values of background rows.

    Parameters
    ----------
    background : DataFrame or array, shape (rows, d); or a tuple/dict of them
        Background data: typically (a sample of) the training data. Every row is used unless
        ``background_size`` asks for fewer: each coalition then costs one model row per kept row.
        For a model of several inputs, one table per input in the inputs' structure (rows
        aligned: background row ``b`` of every input together is one background sample; the
        columns of all inputs are the features, see :mod:`lumos.agnostic._tabular`).
    background_size : int, optional
        Reduce a larger background to this many rows, by ``summary``. ``None`` (default) keeps
        every row, so that ``exact_shapley`` is exact for the background the user passed.
    summary : {"sample", "kmeans"}, default "sample"
        How to reduce it: a random sample without replacement (weights respected; an unbiased
        base value), or a ``background_size``-cluster k-means summary weighted by cluster size
        (scikit-learn's KMeans on standardised numeric and one-hot categorical columns; each
        centre's numeric values are snapped to the nearest value of a member row and its
        categorical values to the cluster's most frequent category, so every background row is a
        valid input).
    weights : array of shape (rows,), optional
        Weights of the background rows (default equal).
    categorical : sequence of int or str, optional
        Columns to treat as categorical (string, categorical and boolean columns always are).
    feature_names : sequence of str, optional
        Names of the columns of an array (a DataFrame's own names are kept).
    seed : int, default 0
        Seed of the sample / k-means summary.
    """

    def __init__(self, background: Any, background_size: int | None = None, summary: str = "sample",
                 weights: np.ndarray | None = None, categorical: Sequence | None = None,
                 feature_names: Sequence[str] | None = None, seed: int = 0):
        from ..core.validation import check_choice, check_number

        if background is None:
            raise ValueError("background: TabularMasker needs background data (for example the "
                             "training set)")
        check_choice(summary, "summary", ("sample", "kmeans"))
        if background_size is not None:
            background_size = check_number(background_size, "background_size", low=1, integer=True)
        if not (is_tabular(background) or is_several(background)):
            raise ValueError("background must be a DataFrame or a 2-D array (rows, features), or "
                             "one such table per input (a tuple or dict) for a model of several inputs")
        self.background = background
        self.summary = summary
        self.background_size = background_size
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.categorical = categorical
        self.feature_names = feature_names
        self.seed = seed

    def bind(self, inputs: Any, name: str = "inputs") -> "MaskedTable":
        several = is_several(inputs)
        if not several and not is_tabular(inputs):
            raise ValueError(f"{name}: a TabularMasker explains a DataFrame or a 2-D array (rows, "
                             f"features); got {type(inputs).__name__} of shape {np.shape(inputs)}")
        if not several and not is_several(self.background) and (
                _is_frame(self.background) != _is_frame(inputs)):
            raise ValueError(f"{name} and the background must both be DataFrames or both arrays")
        layout = table_layout(self.background, inputs, categorical=self.categorical,
                              feature_names=self.feature_names, name=name)
        bg = layout.encode(self.background, name="background")
        w = np.ones(len(bg)) if self.weights is None else self.weights
        if len(w) != len(bg) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {len(bg)} non-negative numbers with a positive sum")
        given = len(bg)
        size = self.background_size
        bg, w = summarise(bg, w, layout.categorical, self.summary if size else None,
                          size or given, self.seed)
        X = layout.encode(inputs, name=name)
        return MaskedTable(layout, X, bg, w / w.sum(), self, given)


def summarise(bg: np.ndarray, w: np.ndarray, categorical: np.ndarray, summary: str | None,
              max_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce the encoded background to at most ``max_samples`` weighted rows (``summary=None``
    keeps every row)."""
    if summary is None or len(bg) <= max_samples:
        return bg, w
    gen = make_rng(seed)
    if summary == "sample":
        idx = np.sort(gen.choice(len(bg), max_samples, replace=False, p=w / w.sum()))
        return bg[idx], np.ones(max_samples)
    from sklearn.cluster import KMeans

    num = ~categorical
    parts = []
    if num.any():
        A = bg[:, num]
        mu = np.nanmean(A, 0)
        sd = np.nanstd(A, 0)
        parts.append(np.nan_to_num((A - mu) / np.where(sd > 0, sd, 1.0)))
    for j in np.flatnonzero(categorical):
        codes = bg[:, j].astype(np.int64)
        parts.append(np.eye(codes.max() + 1)[codes] / np.sqrt(2.0))
    F = np.hstack(parts)
    km = KMeans(n_clusters=max_samples, n_init=3, random_state=int(gen.integers(2**31))).fit(F, sample_weight=w)
    labels = km.labels_
    rows, weights = [], []
    for c in range(max_samples):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        mw = w[members]
        row = np.empty(bg.shape[1])
        for j in range(bg.shape[1]):
            vals = bg[members, j]
            if categorical[j]:
                uniq, inv = np.unique(vals, return_inverse=True)
                row[j] = uniq[np.argmax(np.bincount(inv, weights=mw))]
            else:
                centre = np.average(vals, weights=mw) if np.all(np.isfinite(vals)) else np.nanmean(vals)
                row[j] = vals[np.nanargmin(np.abs(vals - centre))] if np.isfinite(centre) else np.nan
        rows.append(row)
        weights.append(mw.sum())
    return np.array(rows), np.array(weights)


class MaskedTable(MaskedInputs):
    modality = "tabular"
    default_batch = 65536

    def __init__(self, layout: TabularData, X: np.ndarray, background: np.ndarray,
                 weights: np.ndarray, masker: TabularMasker | None = None, n_given: int | None = None):
        self.table = layout
        self.n_given = len(background) if n_given is None else n_given
        self.X = X
        self.background = background
        self.weights = weights
        self.n = len(X)
        self.n_features = np.full(self.n, layout.n_features)
        self._masker = masker

    @property
    def feature_names(self) -> list[str]:
        return self.table.names

    def originals(self):
        return self.table.decode(self.X)

    def masked(self, rows, Z):
        Z = np.asarray(Z, bool)[:, : self.table.n_features]
        mixed = np.where(Z[:, None, :], self.X[rows][:, None, :], self.background[None])
        return self.table.decode(mixed.reshape(-1, self.table.n_features))

    def layout(self, per_feature):
        return per_feature, table_fields(self.table, self.X)

    def null_features(self) -> np.ndarray:
        """(n, d) bool: the explained value equals every (weighted) background row's value, so
        keeping or removing the column gives the same model inputs."""
        bg = self.background[self.weights > 0]
        same = (bg[None] == self.X[:, None]) | (np.isnan(bg[None]) & np.isnan(self.X[:, None]))
        return same.all(1)

    def background_meta(self) -> dict:
        m = self._masker
        B = self.n_background
        if m is None or m.background_size is None or B == self.n_given:
            how = f"all {self.n_given} rows"
        elif m.summary == "sample":
            how = f"a random sample of {B} of {self.n_given} rows (seed {m.seed})"
        else:
            how = f"a weighted k-means summary: {B} centres of {self.n_given} rows (seed {m.seed})"
        return {"background": how, "n_background_given": self.n_given}

    def describe(self):
        m = self._masker
        out = {"masker": "TabularMasker", "n_background": self.n_background}
        if m is not None:
            out.update(background_size=m.background_size, summary=m.summary)
        return out


def table_fields(table: TabularData, X: np.ndarray) -> dict:
    meta: dict = {}
    if table.categorical.any():
        meta["categories"] = table.category_lists()
    return {"inputs": X, "feature_names": table.names, "meta": meta,
            "sample_meta": {"feature_values": table.describe(X)}}


# ====================================================================== images
_SEGMENTATIONS = ("slic", "quickshift", "grid")


class ImageMasker(Masker):
    """Removed superpixels take a fill value.

    Parameters
    ----------
    segmentation : {"slic", "quickshift", "grid"}, callable or int array, default "slic"
        How to cut each image into superpixels: scikit-image SLIC (Achanta et al., 2012) or
        quickshift (Vedaldi & Soatto, 2008; LIME's default), a regular grid of about
        ``n_segments`` square cells, a callable ``image (H, W, C) in [0, 1] -> labels (H, W)``, or
        the labels themselves, (H, W) for all images or (n, H, W).
    n_segments : int, default 50
        Approximate number of superpixels (SLIC and grid).
    fill : {"mean", "blur"}, float or array, default "mean"
        What a removed superpixel shows: its own mean colour (LIME's ``hide_color=None``), the
        same pixels of a Gaussian-blurred copy (``blur_sigma``), a constant, or an array of the
        images' shape (per image or one for all).
    blur_sigma : float, optional
        Standard deviation of the blur in pixels (default: a tenth of the image side).
    channels : {"auto", "first", "last"}, default "auto"
        Where the channel axis of a (n, ., ., .) batch is: "first" (torch, NCHW) or "last"
        (NHWC). "auto" takes the axis of size 1, 3 or 4. A (n, H, W) batch has no channel axis.
    compactness : float, default 10
        SLIC's colour/space trade-off (on images scaled to [0, 1]).
    seed : int, default 0
        Seed of quickshift's random tie-breaking.
    """

    def __init__(self, segmentation: Any = "slic", n_segments: int = 50, fill: Any = "mean",
                 blur_sigma: float | None = None, channels: str = "auto", compactness: float = 10.0,
                 seed: int = 0):
        if isinstance(segmentation, str) and segmentation not in _SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {_SEGMENTATIONS}, a callable or a label "
                             f"array; got {segmentation!r}")
        if isinstance(fill, str) and fill not in ("mean", "blur"):
            raise ValueError(f"fill must be 'mean', 'blur', a number or an array; got {fill!r}")
        if channels not in ("auto", "first", "last"):
            raise ValueError(f"channels must be 'auto', 'first' or 'last'; got {channels!r}")
        if not isinstance(n_segments, (int, np.integer)) or n_segments < 1:
            raise ValueError(f"n_segments must be a positive int; got {n_segments!r}")
        self.segmentation = segmentation
        self.n_segments = int(n_segments)
        self.fill = fill
        self.blur_sigma = blur_sigma
        self.channels = channels
        self.compactness = compactness
        self.seed = seed

    def _channel_axis(self, shape: tuple) -> int | None:
        return channel_axis(shape, self.channels, name="inputs")

    def bind(self, inputs: Any, name: str = "inputs") -> "MaskedImages":
        if hasattr(inputs, "detach"):
            inputs = inputs.detach().cpu().numpy()
        x = np.asarray(inputs)
        if x.dtype == object or not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"{name} must be numeric images; got dtype {x.dtype}")
        if len(x) == 0:
            raise ValueError(f"{name} has no images")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf values; explanations need finite inputs")
        axis = self._channel_axis(x.shape)
        x = x.astype(np.float32 if x.dtype != np.float64 else np.float64, copy=True)
        hwc = x[..., None] if axis is None else (np.moveaxis(x, 1, -1) if axis == 1 else x)
        segments = self._segment(hwc, name)
        fill = self._fill(x, hwc, segments, axis, name)
        return MaskedImages(x, fill, segments, axis, self)

    def _segment(self, hwc: np.ndarray, name: str) -> np.ndarray:
        n, H, W, C = hwc.shape
        seg = self.segmentation
        if not isinstance(seg, str) and not callable(seg):
            labels = np.asarray(seg)
            if labels.shape == (H, W):
                labels = np.broadcast_to(labels, (n, H, W))
            if labels.shape != (n, H, W) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"segmentation: a label array must be int of shape ({H}, {W}) or "
                                 f"({n}, {H}, {W}); got {labels.dtype} {labels.shape}")
            return np.stack([_relabel(l) for l in labels])
        if seg == "slic":
            return superpixels(hwc, "slic", channels="last", n_segments=self.n_segments,
                               compactness=self.compactness)
        if seg == "quickshift":  # LIME's settings (see lumos.core.superpixels)
            return superpixels(hwc, "quickshift", channels="last", seed=self.seed)
        out = np.empty((n, H, W), dtype=np.int64)
        for i in range(n):
            if seg == "grid":
                out[i] = _grid(H, W, self.n_segments)
                continue
            img = hwc[i].astype(np.float64)
            lo, hi = img.min(), img.max()
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            lab = np.asarray(seg(img))
            if lab.shape != (H, W):
                raise ValueError(f"segmentation: the callable returned shape {lab.shape}; expected ({H}, {W})")
            out[i] = _relabel(lab)
        return out

    def _fill(self, x, hwc, segments, axis, name):
        fill = self.fill
        if isinstance(fill, str) and fill == "mean":
            out = np.empty_like(hwc)
            for i in range(len(hwc)):
                seg = segments[i].ravel()
                S = seg.max() + 1
                flat = hwc[i].reshape(-1, hwc.shape[-1])
                counts = np.bincount(seg, minlength=S)[:, None]
                sums = np.stack([np.bincount(seg, flat[:, c], minlength=S) for c in range(flat.shape[1])], 1)
                out[i] = (sums / np.maximum(counts, 1))[seg].reshape(hwc.shape[1:])
            return _from_hwc(out, axis)
        if isinstance(fill, str) and fill == "blur":
            from skimage.filters import gaussian

            sigma = self.blur_sigma if self.blur_sigma is not None else max(hwc.shape[1:3]) / 10
            out = np.stack([gaussian(h, sigma=sigma, channel_axis=-1, preserve_range=True) for h in hwc])
            return _from_hwc(out.astype(x.dtype), axis)
        if hasattr(fill, "detach"):
            fill = fill.detach().cpu().numpy()
        arr = np.asarray(fill, dtype=x.dtype)
        try:
            return np.broadcast_to(arr, x.shape).copy()
        except ValueError:
            raise ValueError(f"fill: an array fill must broadcast to the images' shape {x.shape}; "
                             f"got {arr.shape}") from None

    def describe_params(self) -> dict:
        seg = self.segmentation if isinstance(self.segmentation, str) else type(self.segmentation).__name__
        fill = self.fill if isinstance(self.fill, (str, int, float)) else "array"
        return {"masker": "ImageMasker", "segmentation": seg, "n_segments": self.n_segments, "fill": fill}


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, inv = np.unique(labels, return_inverse=True)
    return inv.reshape(labels.shape).astype(np.int64)


def _grid(H: int, W: int, n_segments: int) -> np.ndarray:
    side = max(1, int(round(np.sqrt(H * W / n_segments))))
    rows = np.arange(H) // side
    cols = np.arange(W) // side
    return rows[:, None] * (cols.max() + 1) + cols[None, :]


def _from_hwc(hwc: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return hwc[..., 0]
    return np.moveaxis(hwc, -1, 1) if axis == 1 else hwc


class MaskedImages(MaskedInputs):
    modality = "image"
    default_batch = 64

    def __init__(self, x, fill, segments, axis, masker: ImageMasker):
        self.x = x
        self.fill = fill
        self.segments = segments
        self.axis = axis
        self.n = len(x)
        self.n_features = segments.reshape(self.n, -1).max(1) + 1
        self.weights = np.ones(1)
        self._masker = masker

    def originals(self):
        return self.x

    def _pixel_mask(self, rows, Z):
        seg = self.segments[rows]  # (m, H, W)
        keep = np.take_along_axis(Z, seg.reshape(len(rows), -1), axis=1).reshape(seg.shape)
        if self.axis == 1:
            return keep[:, None]
        if self.axis == 3:
            return keep[..., None]
        return keep

    def masked(self, rows, Z):
        rows = np.asarray(rows)
        Z = np.asarray(Z, bool)
        if Z.shape[1] < self.max_features:
            raise ValueError(f"coalitions have {Z.shape[1]} columns; the images have up to "
                             f"{self.max_features} superpixels")
        return np.where(self._pixel_mask(rows, Z), self.x[rows], self.fill[rows])

    def layout(self, per_feature):
        n, S = per_feature.shape
        seg = self.segments
        C = 1 if self.axis is None else self.x.shape[self.axis]
        counts = np.stack([np.bincount(seg[i].ravel(), minlength=S)[:S] for i in range(n)])
        density = np.where(counts > 0, per_feature / np.maximum(counts, 1) / C, 0.0)
        pix = np.take_along_axis(density, seg.reshape(n, -1), axis=1).reshape(seg.shape)
        if self.axis == 1:
            values = np.repeat(pix[:, None], C, axis=1)
        elif self.axis == 3:
            values = np.repeat(pix[..., None], C, axis=3)
        else:
            values = pix
        return values, {"inputs": self.x, "feature_names": None, "meta": {},
                        "sample_meta": {"segments": seg, "segment_values": per_feature}}

    def describe(self):
        return self._masker.describe_params()


# ====================================================================== text
class TextMasker(Masker):
    """Removed words are deleted, or replaced by a mask token.

    Parameters
    ----------
    mask_token : str or None, default None
        ``None`` deletes a removed token (with one adjacent space, as LIME does with words);
        a string such as ``"[MASK]"`` or ``"<unk>"`` takes its place.
    tokenizer : str (a regular expression) or callable, default r"\\w+(?:'\\w+)*"
        A regex whose matches are the features (the default: words, punctuation stays), or a
        callable ``text -> list of str`` (for example a subword tokenizer's ``tokenize``); its
        tokens are found in the text in order (a leading "##" or "Ġ"/"▁" marker is ignored).
    """

    def __init__(self, mask_token: str | None = None, tokenizer: str | Callable = r"\w+(?:'\w+)*"):
        if mask_token is not None and not isinstance(mask_token, str):
            raise TypeError(f"mask_token must be a string or None; got {type(mask_token).__name__}")
        if not (isinstance(tokenizer, str) or callable(tokenizer)):
            raise TypeError("tokenizer must be a regular expression or a callable text -> tokens")
        self.mask_token = mask_token
        self.tokenizer = tokenizer

    def spans(self, text: str) -> list[tuple[int, int]]:
        if isinstance(self.tokenizer, str):
            return [m.span() for m in re.finditer(self.tokenizer, text)]
        out, pos = [], 0
        for tok in self.tokenizer(text):
            tok = str(tok)
            core = tok.lstrip("#").lstrip("Ġ▁") or tok
            at = text.find(core, pos)
            if at < 0:
                raise ValueError(f"tokenizer: token {tok!r} not found in the text after position {pos}")
            out.append((at, at + len(core)))
            pos = at + len(core)
        return out

    def bind(self, inputs: Any, name: str = "inputs") -> "MaskedTexts":
        if isinstance(inputs, str):
            raise ValueError(f"{name}: pass a list of texts (a single text: [text])")
        if not is_text(inputs):
            raise TypeError(f"{name}: a TextMasker explains a list of strings; got {type(inputs).__name__}")
        texts = [str(t) for t in inputs]
        spans = [self.spans(t) for t in texts]
        empty = [i for i, s in enumerate(spans) if not s]
        if empty:
            raise ValueError(f"{name}: texts {empty[:5]} have no tokens to explain")
        return MaskedTexts(texts, spans, self)


class MaskedTexts(MaskedInputs):
    modality = "text"
    default_batch = 512

    def __init__(self, texts: list[str], spans: list[list[tuple[int, int]]], masker: TextMasker):
        self.texts = texts
        self.spans = spans
        self.n = len(texts)
        self.n_features = np.array([len(s) for s in spans])
        self.weights = np.ones(1)
        self._masker = masker

    def originals(self):
        return list(self.texts)

    def _render(self, i: int, keep: np.ndarray) -> str:
        text, spans = self.texts[i], self.spans[i]
        token = self._masker.mask_token
        parts, pos = [], 0
        for k, (a, b) in enumerate(spans):
            if keep[k]:
                continue
            if token is None:
                # a word dropped with one following (or else preceding) space; a piece glued to
                # the previous characters (a subword) alone
                if a == 0 or text[a - 1].isspace():
                    if b < len(text) and text[b] == " ":
                        b += 1
                    elif a > pos and text[a - 1] == " ":
                        a -= 1
                parts.append(text[pos:a])
            else:
                parts.append(text[pos:a])
                parts.append(token)
            pos = b
        parts.append(text[pos:])
        return "".join(parts)

    def masked(self, rows, Z):
        Z = np.asarray(Z, bool)
        return [self._render(int(r), z) for r, z in zip(rows, Z)]

    def tokens(self) -> np.ndarray:
        M = self.max_features
        out = np.full((self.n, M), "", dtype=object)
        for i, (t, sp) in enumerate(zip(self.texts, self.spans)):
            out[i, : len(sp)] = [t[a:b] for a, b in sp]
        return out.astype(str)

    def layout(self, per_feature):
        return per_feature, {"inputs": np.asarray(self.texts, dtype=str), "feature_names": None,
                             "meta": {},
                             "sample_meta": {"tokens": self.tokens(), "n_tokens": self.n_features}}

    def describe(self):
        tok = self._masker.tokenizer
        return {"masker": "TextMasker", "mask_token": self._masker.mask_token,
                "tokenizer": tok if isinstance(tok, str) else getattr(tok, "__name__", "callable")}


# ====================================================================== choice
def default_masker(inputs: Any, masker: Masker | None = None, background: Any = None,
                   method: str = "this method", background_size: int | None = None) -> Masker:
    """The masker to use: the user's, or one that fits the inputs.

    A table needs ``background`` data (a :class:`TabularMasker` over all of it, or over a random
    sample of ``background_size`` rows); images get SLIC superpixels with mean fill; texts get
    word deletion.
    """
    if masker is not None:
        if not isinstance(masker, Masker):
            raise TypeError(f"masker must be a TabularMasker, ImageMasker or TextMasker; got "
                            f"{type(masker).__name__}")
        if background is not None:
            raise ValueError("give either masker= or background=, not both (the masker holds its background)")
        if background_size is not None:
            raise ValueError("background_size applies to background=; a masker holds its own "
                             "background (TabularMasker(background, background_size=...))")
        if is_several(inputs) and isinstance(masker, TabularMasker):
            check_several_tables(inputs, method)
        elif is_several(inputs):
            raise ValueError(f"inputs: {method} takes several inputs for tables only (one "
                             "TabularMasker over all their columns); images and texts take one input")
        return masker
    if is_several(inputs):  # several inputs: tables only (see lumos.agnostic._tabular)
        check_several_tables(inputs, method)
        if background is None:
            raise ValueError(
                f"background: {method} on tables needs background data to stand in for removed "
                "features: with several inputs give one background table per input, in the "
                "inputs' structure (a tuple or dict)")
        return TabularMasker(background, background_size=background_size)
    if is_text(inputs):
        return TextMasker()
    if is_tabular(inputs):
        if background is None:
            raise ValueError(
                f"background: {method} on a table needs background data to stand in for removed "
                "features: pass background=X_train (or a sample of it), or masker=TabularMasker(X_train)"
            )
        return TabularMasker(background, background_size=background_size)
    if background_size is not None:
        raise ValueError(f"background_size: {method} takes background rows for tables only")
    nd = np.ndim(inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else inputs)
    if nd in (3, 4):
        return ImageMasker()
    raise ValueError(f"inputs: expected a table (DataFrame or 2-D array), an image batch or a list of "
                     f"texts; got {type(inputs).__name__} with {nd} dimensions")
