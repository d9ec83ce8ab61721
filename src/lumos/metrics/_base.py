"""What every metric shares: the result type, the registry, how an explanation's features are laid
out, how removed features are replaced, and how the model is evaluated on stacks of changed inputs.

- :class:`MetricResult` holds one score per sample, the metric's direction and its curves.
- :func:`register_metric` / :func:`available` / :func:`evaluate`: the registry of metrics, each
  declaring its family, its direction and what it needs (a model, a ground-truth mask...).
- :class:`Layout` reads an :class:`~lumos.core.explanation.Explanation` as *features*: image
  pixels (all channels of a pixel form one feature, ranked by the channel sum of the attribution),
  superpixels or any other grouping given as a label map, table columns, tokens.
- :func:`model_scorer` evaluates a torch module (under ``torch.inference_mode`` inside
  :class:`~lumos.core.torch_model.ModelGuard`, so the model is left as found) or any black-box
  predict function (through :class:`~lumos.core.blackbox.BlackBox`) on stacks of changed inputs,
  ``batch_size`` rows per call: never a Python loop over samples.

Randomness comes only from explicit seeds, and every random draw belongs to one (sample, draw)
pair (:func:`row_rng`), so results never depend on the batch size.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..core.blackbox import as_blackbox
from ..core.execution import check_batch_size, chunks
from ..core.explanation import Explanation
from ..core.targets import resolve_target
from ..core.torch_model import ModelGuard, as_tensor, check_input_shape, forward, model_device

__all__ = [
    "MetricResult", "MetricInfo", "register_metric", "available", "get_metric", "evaluate",
    "Layout", "layout", "model_scorer", "Scorer", "removal_fill", "row_rng", "check_explanation",
    "rowwise_pearson", "rowwise_spearman", "DIRECTIONS",
]

DIRECTIONS = ("higher", "lower")


# ----------------------------------------------------------------------------- the result
@dataclass(eq=False)
class MetricResult:
    """The scores of one metric for one explanation batch.

    Attributes
    ----------
    name : str
        The metric's registry name.
    scores : ndarray of float, shape (n,)
        One score per explained sample (NaN where the metric is undefined for a sample).
    direction : {"higher", "lower"}
        Whether a higher or a lower score means a better explanation.
    method : str
        The explanation method that was scored.
    params : dict
        The metric's parameters.
    curves : dict of str to ndarray
        Curves behind the score, e.g. ``{"x": fractions (S,), "y": scores (n, S)}`` for deletion.
    meta : dict
        Anything else: model evaluations, chance levels, layer names.
    """

    name: str
    scores: np.ndarray
    direction: str
    method: str = ""
    params: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}; got {self.direction!r}")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        """Mean score over samples (NaN scores ignored)."""
        s = self.scores[np.isfinite(self.scores)]
        return float(s.mean()) if len(s) else float("nan")

    @property
    def std(self) -> float:
        """Standard deviation of the scores over samples: the spread, not an error of the mean."""
        s = self.scores[np.isfinite(self.scores)]
        return float(s.std()) if len(s) else float("nan")

    @property
    def sem(self) -> float:
        """Standard error of the mean score."""
        s = self.scores[np.isfinite(self.scores)]
        return float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan")

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    def to_dict(self) -> dict:
        """JSON-ready numbers: scores, summary, curves; meta entries that are plain numbers/strings."""
        meta = {}
        for k, v in self.meta.items():
            if isinstance(v, (bool, int, float, str)) or v is None:
                meta[k] = v
            elif isinstance(v, (list, tuple)) and all(isinstance(t, (int, float, str)) for t in v):
                meta[k] = list(v)
        return {
            "name": self.name, "method": self.method, "direction": self.direction,
            "mean": _finite(self.mean), "std": _finite(self.std),
            "scores": [_finite(s) for s in self.scores.tolist()],
            "params": {k: v for k, v in self.params.items()
                       if isinstance(v, (bool, int, float, str, list, tuple)) or v is None},
            "curves": {k: np.asarray(v).tolist() for k, v in self.curves.items()
                       if np.asarray(v).dtype.kind in "biuf" and np.asarray(v).size <= 100_000},
            "meta": meta,
        }

    def __repr__(self) -> str:
        arrow = "↑" if self.higher_is_better else "↓"
        return (f"MetricResult({self.name}{arrow} of {self.method or 'explanation'!r}: "
                f"{self.mean:.4g} ± {self.std:.3g} over {len(self)} samples)")


def _finite(v: float):
    return float(v) if np.isfinite(v) else None


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class MetricInfo:
    """One row of the metric registry.

    ``needs`` names what the metric takes besides the explanation: ``"model"`` (it evaluates the
    model; the function is ``fn(model, explanation, ...)``), ``"mask"`` (a ground-truth mask),
    ``"baseline"`` (a reference input), ``"explainer"`` (it re-runs the explanation method).
    Metrics without ``"model"`` are ``fn(explanation, ...)``.
    """

    name: str
    family: str
    direction: str
    needs: tuple[str, ...]
    description: str
    func: Callable

    def __str__(self) -> str:
        arrow = "higher" if self.direction == "higher" else "lower"
        return f"{self.name:<28} {self.family:<15} {arrow:<7} {','.join(self.needs) or '-':<22} {self.description}"


class MetricTable(list):
    """A list of :class:`MetricInfo` that prints as a table."""

    def __str__(self) -> str:
        head = f"{'metric':<28} {'family':<15} {'better':<7} {'needs':<22} description"
        return "\n".join([head, "-" * len(head)] + [str(m) for m in self])

    def names(self) -> list[str]:
        return [m.name for m in self]

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


_METRICS: dict[str, MetricInfo] = {}
_NEEDS = ("model", "mask", "baseline", "explainer")


def register_metric(name: str, family: str, direction: str, needs: Sequence[str], description: str
                    ) -> Callable:
    """Decorator: register a metric function under ``name``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    bad = [n for n in needs if n not in _NEEDS]
    if bad:
        raise ValueError(f"needs: unknown requirement(s) {bad}; known: {_NEEDS}")

    def deco(func: Callable) -> Callable:
        _METRICS[name] = MetricInfo(name, family, direction, tuple(needs), description, func)
        return func

    return deco


def _load_all() -> None:
    # importing the package imports every metric module
    import lumos.metrics  # noqa: F401


def available(family: str | None = None) -> MetricTable:
    """All registered metrics (optionally of one family), sorted by family then name."""
    _load_all()
    rows = sorted(_METRICS.values(), key=lambda m: (m.family, m.name))
    if family is not None:
        rows = [m for m in rows if m.family == family]
    return MetricTable(rows)


def get_metric(name: str) -> MetricInfo:
    """Look a metric up by name, with a suggestion when the name is unknown."""
    import difflib

    _load_all()
    if not isinstance(name, str):
        raise TypeError(f"metric must be a string name; got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _METRICS:
        return _METRICS[key]
    close = difflib.get_close_matches(key, list(_METRICS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"metric: unknown metric {name!r}.{hint} Known metrics: {', '.join(sorted(_METRICS))}")


def evaluate(metric: str, model: Any, explanation: Explanation, **params: Any) -> MetricResult:
    """Score ``explanation`` with the metric named ``metric``.

    ``model`` is passed to metrics that need one and ignored (may be ``None``) by the others;
    ``params`` are the metric's own parameters (``mask=`` for localisation metrics).
    """
    info = get_metric(metric)
    if "mask" in info.needs and params.get("mask") is None:
        raise ValueError(f"mask: the metric {info.name!r} needs a ground-truth mask (mask=...)")
    if "model" in info.needs:
        if model is None:
            raise ValueError(f"model: the metric {info.name!r} evaluates the model; got None")
        return info.func(model, explanation, **params)
    return info.func(explanation, **params)


# ----------------------------------------------------------------------------- explanations
def check_explanation(explanation: Any, name: str = "explanation", inputs: bool = True) -> Explanation:
    if not isinstance(explanation, Explanation):
        raise TypeError(
            f"{name} must be a lumos Explanation (from lumos.explain); got {type(explanation).__name__}"
        )
    if inputs and explanation.inputs is None:
        raise ValueError(f"{name} has no inputs: metrics that change the input need the explained inputs")
    if not np.issubdtype(explanation.values.dtype, np.number):
        raise TypeError(f"{name}.values must be numeric; got dtype {explanation.values.dtype}")
    if not np.isfinite(explanation.values).all():
        raise ValueError(f"{name}.values contain NaN or Inf")
    return explanation


@dataclass
class Layout:
    """An explanation read as features.

    Attributes
    ----------
    map : ndarray of float64, shape (n, *map_shape)
        The attribution per map element: for images the channel sum of the attribution per pixel
        (a CAM's single channel as is), for tables and token sequences the values themselves, for
        token embeddings the sum over the embedding axis.
    abs_map : ndarray of float64, shape (n, *map_shape)
        The same reduction of ``|values|`` (the attribution's magnitude per element).
    map_shape : tuple
        Shape of one map (``(H, W)`` for images).
    expand : tuple of int
        Where axes are inserted to broadcast a map-shaped array over one input sample
        (the channel axis of images, the embedding axis of tokens).
    labels : ndarray of int64, shape (1 or n, prod(map_shape))
        The feature each map element belongs to (one per pixel unless ``features`` grouped them).
    n_features : ndarray of int, shape (n,)
        Features per sample (segmentations can differ per image).
    """

    map: np.ndarray
    abs_map: np.ndarray
    map_shape: tuple
    expand: tuple
    labels: np.ndarray
    n_features: np.ndarray
    input_shape: tuple
    description: str

    @property
    def n(self) -> int:
        return len(self.map)

    @property
    def F(self) -> int:
        """The largest feature count over samples (arrays of features are padded to it)."""
        return int(self.n_features.max())

    def feature_sums(self, maps: np.ndarray) -> np.ndarray:
        """Sum a (n, *map_shape) array within each feature: (n, F), zero for padding features."""
        n, F = len(maps), self.F
        flat = maps.reshape(n, -1).astype(np.float64)
        labels = np.broadcast_to(self.labels, flat.shape)
        offsets = (np.arange(n) * F)[:, None]
        return np.bincount((labels + offsets).ravel(), weights=flat.ravel(), minlength=n * F).reshape(n, F)

    def valid(self) -> np.ndarray:
        """(n, F) bool: which padded feature slots exist."""
        return np.arange(self.F)[None, :] < self.n_features[:, None]

    def element_mask(self, feature_mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(m, F) bool per row → (m, *input-broadcastable map shape) bool mask of input elements."""
        labels = torch.as_tensor(self.labels, device=feature_mask.device)
        lab = labels.expand(len(rows), -1) if labels.shape[0] == 1 else labels[rows.to(labels.device)]
        m = torch.gather(feature_mask, 1, lab).reshape((len(rows),) + self.map_shape)
        for ax in self.expand:
            m = m.unsqueeze(ax + 1)
        return m

    def to_input(self, maps: torch.Tensor) -> torch.Tensor:
        """(m, *map_shape) → broadcastable over (m, *input_shape)."""
        for ax in self.expand:
            maps = maps.unsqueeze(ax + 1)
        return maps


def layout(explanation: Explanation, features: Any = None, name: str = "features") -> Layout:
    """Read ``explanation`` as features (see :class:`Layout`).

    Parameters
    ----------
    explanation : Explanation
        With ``inputs``. ``values`` may have the shape of the inputs, the shape of the inputs
        with one channel (``(n, 1, H, W)``, class activation maps) or without the channel axis
        (``(n, H, W)``), or without the trailing embedding axis (token attributions for
        ``(n, T, D)`` embeddings).
    features : None or array of int
        ``None``: each pixel (all its channels together), each table column, each token is one
        feature. An int array of labels of the map shape (``(H, W)``, shared) or ``(n, H, W)``
        (per sample) groups elements into features: superpixels (:func:`lumos.metrics.superpixels`),
        patches, groups of columns. Labels need not be contiguous.
    """
    values = np.asarray(explanation.values)
    n = len(values)
    if explanation.inputs is None:
        raise ValueError("explanation has no inputs: metrics that change the input need them")
    ishape = tuple(np.shape(explanation.inputs)[1:])
    vshape = values.shape[1:]
    v = values.astype(np.float64)
    if vshape == ishape and len(ishape) >= 3:  # images, volumes: channels first
        m, am, expand, desc = v.sum(1), np.abs(v).sum(1), (0,), "pixels"
    elif vshape == ishape:
        m, am, expand, desc = v, np.abs(v), (), "elements"
    elif len(ishape) >= 3 and vshape == (1,) + ishape[1:]:
        m, am, expand, desc = v[:, 0], np.abs(v[:, 0]), (0,), "pixels"
    elif len(ishape) >= 3 and vshape == ishape[1:]:
        m, am, expand, desc = v, np.abs(v), (0,), "pixels"
    elif len(ishape) >= 2 and vshape == ishape[:-1]:
        m, am, expand, desc = v, np.abs(v), (len(ishape) - 1,), "tokens"
    else:
        raise ValueError(
            f"explanation: values of shape {tuple(values.shape)} do not match inputs of shape "
            f"{(n,) + ishape}; metrics need one value per input element, per pixel ((n, 1, H, W) or "
            "(n, H, W) for images) or per token. Upsample low-resolution maps first."
        )
    map_shape = tuple(m.shape[1:])
    size = int(np.prod(map_shape)) if map_shape else 1
    if features is None:
        labels = np.arange(size, dtype=np.int64)[None]
        counts = np.full(n, size)
    else:
        lab = np.asarray(features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features)
        if not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"{name} must be an int array of feature labels; got dtype {lab.dtype}")
        if lab.shape == map_shape:
            lab = lab.reshape(1, -1)
        elif lab.shape == (n,) + map_shape:
            lab = lab.reshape(n, -1)
        else:
            raise ValueError(
                f"{name} must be a label array of shape {map_shape} (shared) or {(n,) + map_shape} "
                f"(per sample); got {lab.shape}"
            )
        # relabel to 0..k-1 per row (labels need not be contiguous)
        rel = np.empty(lab.shape, dtype=np.int64)
        counts = np.empty(len(lab), dtype=np.int64)
        for r in range(len(lab)):  # once per segmentation, not a model evaluation
            uniq, inv = np.unique(lab[r], return_inverse=True)
            rel[r], counts[r] = inv.reshape(-1), len(uniq)
        labels = rel
        counts = np.broadcast_to(counts, (n,)).copy() if len(counts) == 1 else counts
        desc = "features"
    return Layout(m, am, map_shape, expand, labels, np.asarray(counts, dtype=np.int64), ishape, desc)


def superpixels(images: Any, n_segments: int = 64, compactness: float = 10.0, channel_axis: int = 0
                ) -> np.ndarray:
    """SLIC superpixels (Achanta et al., 2012, via :func:`skimage.segmentation.slic`) per image.

    Parameters
    ----------
    images : array or Tensor, shape (n, C, H, W)
    n_segments, compactness : passed to SLIC.

    Returns
    -------
    ndarray of int64, shape (n, H, W)
        Labels for the ``features=`` argument of the faithfulness metrics.
    """
    from skimage.segmentation import slic

    x = np.asarray(images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images,
                   dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (n, C, H, W); got {x.shape}")
    out = np.empty((len(x),) + x.shape[2:], dtype=np.int64)
    for i, im in enumerate(x):
        out[i] = slic(np.moveaxis(im, channel_axis, -1), n_segments=n_segments, compactness=compactness,
                      start_label=0, channel_axis=-1)
    return out


# ----------------------------------------------------------------------------- randomness
def row_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator owned by one (sample, draw) pair: the same numbers whatever the batching."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return np.random.default_rng([int(seed)] + [int(k) for k in keys])


def random_order(scores: np.ndarray, valid: np.ndarray, seed: int, descending: bool = True) -> np.ndarray:
    """Rank of each feature (0 = first) by score, ties broken at random, padding ranked last.

    Random tie-breaking keeps constant explanations from removing pixels in raster order.
    """
    n, F = scores.shape
    tie = np.empty((n, F))
    for i in range(n):  # one draw per sample, before any batching
        tie[i] = row_rng(seed, 7, i).random(F)
    key = -scores if descending else scores
    key = np.where(valid, key, np.inf)
    order = np.lexsort((tie, key), axis=-1)  # primary: key, then the random tie-breaker
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(F)[None].repeat(n, 0), axis=1)
    return ranks


# ----------------------------------------------------------------------------- fills
FILLS = ("zero", "mean", "blur", "road", "uniform")


def removal_fill(fill: Any, x: torch.Tensor, layout_: Layout, *, data: Any = None, sigma: float = 5.0,
                 name: str = "fill") -> tuple[torch.Tensor | None, str]:
    """What removed features are replaced with: a tensor of the shape of ``x`` (or ``None`` for
    ``"road"``, whose imputation depends on the removed set and is built per row).

    ``"zero"`` or a number: that value; ``"mean"``: the per-element mean of ``data`` (samples on the
    first axis; without ``data``, the mean of each sample over its map elements, per channel);
    ``"blur"``: a Gaussian-blurred copy (std ``sigma`` pixels, images only); ``"road"``: noisy
    linear imputation from the neighbours (Rong et al., 2022; images only); an array that
    broadcasts to one sample or to the batch.
    """
    from ..attribution.perturbation._base import gaussian_blur

    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"{name} must be one of {FILLS}, a number or an array; got {fill!r}")
        spatial = list(range(1, len(layout_.input_shape))) if layout_.expand == (0,) else None
        if fill in ("blur", "road") and (spatial is None or len(layout_.map_shape) != 2):
            raise ValueError(f"{name}={fill!r} works on images (n, C, H, W); these inputs have "
                             f"samples of shape {layout_.input_shape}")
        if not x.is_floating_point() and fill != "zero":
            raise ValueError(f"{name}: integer inputs (token ids) take a number (an id) as fill; got {fill!r}")
        if fill == "zero":
            return torch.zeros_like(x), "zero"
        if fill == "road":
            return None, "road"
        if fill == "blur":
            if not (np.isfinite(sigma) and sigma > 0):
                raise ValueError(f"sigma must be positive; got {sigma!r}")
            return gaussian_blur(x, sigma, spatial), f"blur(sigma={sigma:g})"
        if fill == "uniform":
            raise ValueError(f"{name}='uniform' is not a removal fill; give a number, 'zero', 'mean', 'blur' or 'road'")
        if data is not None:
            d = as_tensor(data, x.device, name="data", dtype=x.dtype)
            if tuple(d.shape[1:]) != tuple(x.shape[1:]):
                raise ValueError(f"data must have samples of shape {tuple(x.shape[1:])}; got {tuple(d.shape)}")
            return d.mean(0, keepdim=True).expand_as(x).clone(), "mean(data)"
        # the sample's own mean per channel (images) or overall
        axes = tuple(range(2, x.ndim)) if layout_.expand == (0,) else tuple(range(1, x.ndim))
        return x.mean(dim=axes, keepdim=True).expand_as(x).clone(), "mean(sample)"
    if isinstance(fill, bool):
        raise ValueError(f"{name} must be a string, a number or an array; got a bool")
    if isinstance(fill, (int, float, np.integer, np.floating)):
        if not np.isfinite(fill):
            raise ValueError(f"{name} must be finite; got {fill!r}")
        return torch.full_like(x, fill), f"constant({fill:g})"
    f = as_tensor(fill, x.device, name=name, dtype=x.dtype)
    try:
        return torch.broadcast_to(f, x.shape).clone(), "array"
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(f.shape)} broadcasts neither to one sample "
                         f"{tuple(x.shape[1:])} nor to the inputs {tuple(x.shape)}") from None


# Rong et al. (2022): each missing pixel is the weighted mean of its 8 neighbours.
_ROAD_NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6),
                    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12))


def noisy_linear_impute(images: np.ndarray, missing: np.ndarray, noise: float = 0.01,
                        rngs: Sequence[np.random.Generator] | None = None) -> np.ndarray:
    """Noisy linear imputation (Rong, Leemann, Borisov, Kasneci & Kasneci, 2022, "A Consistent and
    Efficient Evaluation Strategy for Attribution Methods", ROAD).

    Every missing pixel takes the weighted mean of its in-image neighbours (weight 1/6 for the four
    direct, 1/12 for the four diagonal neighbours), known neighbours fixed: one sparse linear
    system for all missing pixels of all images of the stack (block diagonal), solved with
    :func:`scipy.sparse.linalg.spsolve` for all channels at once; then Gaussian noise of std
    ``noise`` is added to the imputed values. Replacing the removed pixels by values that continue
    their surroundings keeps the mask's shape from leaking the removed set to the model.

    Parameters
    ----------
    images : ndarray, shape (m, C, H, W)
    missing : ndarray of bool, shape (m, H, W)
    noise : float, default 0.01
        Standard deviation of the noise added to imputed values (the paper's default).
    rngs : sequence of m numpy Generators, optional
        One per image, for the noise (required when ``noise > 0``).

    Returns
    -------
    ndarray, shape (m, C, H, W), float64
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    m, C, H, W = images.shape
    out = images.astype(np.float64, copy=True)
    idx = np.flatnonzero(missing.reshape(-1))
    if len(idx) == 0:
        return out
    var = np.full(m * H * W, -1, dtype=np.int64)
    var[idx] = np.arange(len(idx))
    b_, r_, c_ = np.unravel_index(idx, (m, H, W))
    flat = out.transpose(0, 2, 3, 1).reshape(m * H * W, C)  # pixel-major for row gathers
    rows, cols, vals = [], [], []
    diag = np.zeros(len(idx))
    rhs = np.zeros((len(idx), C))
    for dr, dc, w in _ROAD_NEIGHBOURS:
        rr, cc = r_ + dr, c_ + dc
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        j = np.flatnonzero(ok)
        nb = (b_[j] * H + rr[j]) * W + cc[j]
        diag[j] += w
        unknown = var[nb] >= 0
        rows.append(j[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(unknown.sum(), -w))
        rhs[j[~unknown]] += w * flat[nb[~unknown]]
    rows.append(np.arange(len(idx)))
    cols.append(np.arange(len(idx)))
    vals.append(diag)
    A = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(idx), len(idx)))
    sol = spsolve(A, rhs)
    sol = sol.reshape(len(idx), C)
    if noise:
        if rngs is None:
            raise ValueError("noisy_linear_impute: noise > 0 needs one generator per image (rngs=)")
        # one draw of the whole image per row, so the noise does not depend on the stack
        z = np.stack([g.standard_normal((H * W, C)) for g in rngs]).reshape(m * H * W, C)
        sol = sol + noise * z[idx]
    flat[idx] = sol
    return flat.reshape(m, H, W, C).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------- model evaluation
class Scorer:
    """The explained scalar of a model on stacks of inputs (see :func:`model_scorer`).

    Attributes
    ----------
    x : Tensor, shape (n, ...)
        The explained inputs (a copy; float, or int64 for token ids).
    f0 : ndarray of float64, shape (n,)
        The explained scalar at ``x``.
    target : Target
    n_evals : int
        Rows evaluated so far (the ``n`` at ``x`` included).
    """

    def __init__(self, x, score_fn, f0, target, batch_size, progress, model_kind):
        self.x = x
        self._score = score_fn
        self.f0 = f0
        self.target = target
        self.batch_size = batch_size
        self.progress = progress
        self.n_evals = len(x)
        self.model_kind = model_kind

    @property
    def n(self) -> int:
        return len(self.x)

    def score(self, xb: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
        """Explained scalar of each row of ``xb`` (one model call); ``rows[k]`` = its sample."""
        s = self._score(xb, rows)
        self.n_evals += len(xb)
        return s

    def evaluate(self, total: int, build: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
                 desc: str = "") -> np.ndarray:
        """Score ``total`` changed rows, built and evaluated ``batch_size`` at a time.

        ``build(sl)`` returns ``(xb, rows)`` for the flat row indices ``sl``.
        """
        out = np.empty(total, dtype=np.float64)
        for sl in chunks(total, self.batch_size, desc=desc, progress=self.progress, unit="input"):
            xb, rows = build(sl)
            out[sl] = self.score(xb, rows)
        return out


def _target_spec(explanation: Explanation, target: Any) -> Any:
    if target is not None:
        return target
    if explanation.target is not None:
        return np.asarray(explanation.target)
    desc = explanation.meta.get("target")
    if desc not in (None, "output", "predicted"):
        raise ValueError(
            f"target: the explanation was computed for the target {desc!r} (a callable), which is "
            "not stored in it; pass the same callable as target="
        )
    return None


def _softmax_select(target, softmax: bool):
    if not softmax:
        return target.select

    def select(out, rows=None):
        if isinstance(out, torch.Tensor):
            p = torch.softmax(out.to(torch.float64), dim=1)
        else:
            o = np.asarray(out, dtype=np.float64)
            e = np.exp(o - o.max(1, keepdims=True))
            p = e / e.sum(1, keepdims=True)
        return target.select(p, rows)

    return select


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


@contextlib.contextmanager
def model_scorer(model: Any, explanation: Explanation, target: Any = None, *,
                 batch_size: int | None = None, softmax: bool = False, progress: bool | None = None,
                 inputs: Any = None) -> Iterator[Scorer]:
    """Evaluate ``model``'s explained scalar on stacks of changed inputs.

    Parameters
    ----------
    model : torch.nn.Module, callable or scikit-learn estimator
        A torch module runs under ``torch.inference_mode`` inside
        :class:`~lumos.core.torch_model.ModelGuard` (left exactly as found, also on error);
        anything else goes through :class:`~lumos.core.blackbox.BlackBox`.
    explanation : Explanation
        Its ``inputs`` are evaluated (unless ``inputs`` is given) and its ``target`` indices
        select the scalar.
    target : int, sequence, callable, optional
        Overrides the explanation's target; needed for explanations of a callable target.
    softmax : bool, default False
        Score the softmax probability of the target class instead of the raw output
        (index targets of multi-class outputs).
    """
    bs = check_batch_size(batch_size)
    spec = _target_spec(explanation, target)
    raw = explanation.inputs if inputs is None else inputs
    if isinstance(model, nn.Module):
        with ModelGuard(model):
            dev = model_device(model)
            arr_kind = (raw.dtype.is_floating_point if isinstance(raw, torch.Tensor)
                        else np.asarray(raw).dtype.kind == "f")
            # float inputs take the model's float dtype (explanations hold numpy copies, which
            # may have become float64); integer inputs are token ids and stay integers
            x = as_tensor(raw, dev, name="explanation.inputs",
                          dtype=_float_dtype(model) if arr_kind else torch.long)
            if x.is_floating_point():
                check_input_shape(model, x, "explanation.inputs")
            with torch.inference_mode():  # in chunks: the metric's batch_size bounds memory
                out = torch.cat([forward(model, x[sl], name="explanation.inputs")
                                 for sl in chunks(len(x), bs, progress=False)])
            if not torch.isfinite(out).all():
                raise ValueError("model returned NaN or Inf at the explained inputs")
            tgt = resolve_target(spec, out)
            select = _softmax_select(tgt, softmax)

            def score(xb, rows):
                with torch.inference_mode():
                    o = forward(model, xb, name="changed inputs")
                    return select(o, rows).to(torch.float64).cpu().numpy()

            with torch.inference_mode():
                f0 = select(out).to(torch.float64).cpu().numpy()
            yield Scorer(x, score, f0, tgt, bs, progress, "torch")
        return
    if not callable(model) and not hasattr(model, "predict"):
        raise TypeError("model must be a torch.nn.Module, a predict function or a scikit-learn "
                        f"estimator; got {type(model).__name__}")
    arr = np.asarray(raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else raw)
    if arr.dtype == object:
        raise TypeError("explanation.inputs hold Python objects; metrics need numeric inputs "
                        "(encode categorical columns first)")
    columns = None
    names = explanation.feature_names
    if names is not None and hasattr(model, "feature_names_in_") and arr.ndim == 2 and len(names) == arr.shape[1]:
        columns = names  # the model was fitted on a DataFrame with these columns
    bb = as_blackbox(model, batch_size=bs)
    if columns is not None:
        bb.columns = list(columns)
    np_dtype = arr.dtype if arr.dtype.kind in "fiu" else np.float64
    x = as_tensor(arr, name="explanation.inputs",
                  dtype=torch.float64 if arr.dtype.kind == "f" else torch.long)

    def to_user(xb: torch.Tensor):
        return xb.detach().cpu().numpy().astype(np_dtype, copy=False)

    out = bb(to_user(x))
    tgt = resolve_target(spec, out)
    select = _softmax_select(tgt, softmax)

    def score(xb, rows):
        return np.asarray(select(bb(to_user(xb)), rows.cpu().numpy()), dtype=np.float64)

    f0 = np.asarray(select(out), dtype=np.float64)
    yield Scorer(x, score, f0, tgt, bs, progress, bb.score_name)


# ----------------------------------------------------------------------------- statistics
def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; NaN for constant rows."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ac = a - a.mean(-1, keepdims=True)
    bc = b - b.mean(-1, keepdims=True)
    na = np.sqrt((ac * ac).sum(-1))
    nb = np.sqrt((bc * bc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ac * bc).sum(-1) / (na * nb)
    # a row that is constant up to rounding carries no ordering information: NaN, not noise
    flat_a = na <= 1e-12 * np.sqrt((a * a).sum(-1)) + 1e-300
    flat_b = nb <= 1e-12 * np.sqrt((b * b).sum(-1)) + 1e-300
    return np.where(flat_a | flat_b, np.nan, np.clip(r, -1.0, 1.0))


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation per row (average ranks for ties, :func:`scipy.stats.rankdata`)."""
    from scipy.stats import rankdata

    return rowwise_pearson(rankdata(a, axis=-1), rankdata(b, axis=-1))


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_positive(value: Any, name: str, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number; got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- explanation functions
def _rerunnable(params: dict) -> dict:
    """Parameters recorded in an explanation that can be passed back (tensors were summarised)."""
    return {k: v for k, v in params.items()
            if not (isinstance(v, str) and (v.startswith("<tensor") or v.startswith("<array")))}


def make_explainer(explanation: Explanation, explainer: Any = None, method_params: dict | None = None
                   ) -> tuple[Callable, str]:
    """The explanation function a robustness or randomisation metric re-runs.

    Parameters
    ----------
    explanation : Explanation
        Its ``method`` and ``params`` are the default.
    explainer : None, str or callable
        ``None``: the explanation's own method and parameters; a method name for
        :func:`lumos.explain`; or a callable ``explainer(model, inputs, target) -> Explanation or
        array`` (values of the shape of the explanation's values).
    method_params : dict, optional
        Parameters for the method (added to / overriding the recorded ones).

    Returns
    -------
    (fn, name)
        ``fn(model, inputs, target) -> ndarray`` of values.
    """
    import inspect

    from ..core.registry import explain, get_method

    if callable(explainer) and not isinstance(explainer, str):
        if method_params:
            raise ValueError("method_params: a callable explainer takes no method parameters; bind them yourself")

        def fn(model, inputs, target):
            out = explainer(model, inputs, target)
            return np.asarray(out.values if isinstance(out, Explanation) else
                              (out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out),
                              dtype=np.float64)

        return fn, getattr(explainer, "__name__", "callable")
    if explainer is None:
        if not explanation.method:
            raise ValueError("explainer: the explanation names no method; pass explainer= (a method "
                             "name or a callable)")
        name, params = explanation.method, _rerunnable(dict(explanation.params))
    elif isinstance(explainer, str):
        name, params = explainer, {}
    else:
        raise TypeError(f"explainer must be None, a method name or a callable; got {type(explainer).__name__}")
    if method_params is not None and not isinstance(method_params, dict):
        raise TypeError(f"method_params must be a dict; got {type(method_params).__name__}")
    params.update(method_params or {})
    info = get_method(name)
    if "progress" in inspect.signature(info.func).parameters:
        params.setdefault("progress", False)

    def fn(model, inputs, target):
        try:
            return np.asarray(explain(model, inputs, method=name, target=target, **params).values,
                              dtype=np.float64)
        except TypeError as err:
            raise TypeError(f"explainer: re-running {name!r} with {sorted(params)} failed ({err}); pass "
                            "method_params= with the method's parameters") from err

    return fn, name


def row_target(explanation: Explanation, target: Any, rows: np.ndarray) -> Any:
    """The target of the explanation for stacked rows (``rows[k]`` = sample of row k)."""
    spec = _target_spec(explanation, target)
    if spec is None or callable(spec) or isinstance(spec, str):
        return spec
    if isinstance(spec, (int, np.integer)):
        return int(spec)
    arr = np.asarray(spec.detach().cpu().numpy() if isinstance(spec, torch.Tensor) else spec)
    return arr[rows] if arr.ndim == 1 else spec
