"""Explanations of a conditional generator ``g(z, c) -> images``: "why did the generator make this?"

- :class:`GeneratorRegion`: a small ``nn.Module`` whose output is one scalar per row, a region of the
  generated image (the mean or sum of the pixels under ``masks``) or any differentiable score of the
  image (``score=``, e.g. a classifier's logit). Its input is the latent, the condition, or both
  side by side, so every lumos method on a torch model attributes the region to the latent
  dimensions and to the condition: ``lumos.explain(GeneratorRegion(g, masks, condition=c), z,
  "integrated_gradients")``. IG's completeness holds: the attributions sum to
  ``region(z) - region(baseline)``. :func:`explain_generator` builds it and names the features.
- :func:`latent_traversal`: images along each latent dimension (the others held at a seeded draw),
  deterministic for a seed; :meth:`LatentTraversal.plot` draws the grid (matplotlib imported
  lazily).
- :class:`ResizedClassifier` and :func:`classifier_saliency`: a classifier trained at another size
  (the shipped ``DemoCNN`` at 64×64) read on generated images (32×32 silhouettes) through a
  differentiable transform and resize, so any image method says which pixels of the *generated* image make the classifier call it
  a circle; :func:`recognition` counts how often it names each class's samples by their class.

The guidance of diffusion models is explained in :mod:`lumos.multimodal.diffusion`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.generative import condition_vector

__all__ = ["GeneratorRegion", "explain_generator", "latent_traversal", "LatentTraversal", "ResizedClassifier",
           "classifier_saliency", "recognition", "Recognition"]

_WRT = ("latent", "condition", "both")


def _dims(generator: Any, latent_dim: int | None, n_classes: int | None) -> tuple[int, int]:
    from ..core.validation import check_number

    d = latent_dim if latent_dim is not None else getattr(generator, "latent_dim", None)
    k = n_classes if n_classes is not None else getattr(generator, "n_classes", None)
    if d is None or k is None:
        raise ValueError("generator: give latent_dim= and n_classes= (the generator has no latent_dim/n_classes "
                         "attributes)")
    return int(check_number(d, "latent_dim", low=1, integer=True)), int(check_number(k, "n_classes", low=1,
                                                                                      integer=True))


def _fixed_condition(condition: Any, n_classes: int) -> torch.Tensor:
    """One condition vector ``(n_classes,)`` from a class index or a vector of ``n_classes`` values."""
    if isinstance(condition, (int, np.integer)) and not isinstance(condition, bool):
        return condition_vector(int(condition), 1, n_classes, "condition")[0]
    v = torch.as_tensor(np.asarray(condition.detach().cpu() if isinstance(condition, torch.Tensor)
                                   else condition, dtype=np.float64), dtype=torch.float32).reshape(-1)
    if v.numel() != n_classes or not torch.isfinite(v).all():
        raise ValueError(f"condition must be a class index or {n_classes} finite values; got {v.numel()} values")
    return v


class GeneratorRegion(nn.Module):
    """``output(row) = region of g(z, c)``: one scalar per row, for attribution to ``z`` and/or ``c``.

    Parameters
    ----------
    generator : nn.Module or callable
        ``generator(z, c)``: ``z`` of shape ``(m, latent_dim)``, ``c`` a float ``(m, n_classes)``
        condition; returns images ``(m, C, H, W)``. A module is registered as a submodule, so the
        ModelGuard of a lumos method covers it.
    masks : array-like of shape (H, W) or (C, H, W), or None
        The region (bool or float weights). Exactly one of ``masks`` and ``score``.
    score : callable or None
        ``score(images) -> (m,)``, differentiable (e.g. ``lambda im: classifier(im)[:, 0]``).
    condition : int, float vector of length n_classes, or None
        The fixed condition when ``wrt="latent"``, shared by every row.
    latent : array-like of shape (latent_dim,) or None
        The fixed latent when ``wrt="condition"``, shared by every row.
    wrt : {"latent", "condition", "both"}, default "latent"
        What the module's input is: ``z`` ``(m, latent_dim)``, ``c`` ``(m, n_classes)``, or
        ``[z, c]`` side by side ``(m, latent_dim + n_classes)``.
    reduce : {"mean", "sum"}, default "mean"
        The region's weighted mean (sum of weighted pixels over the sum of weights) or sum.
    latent_dim, n_classes : int or None
        Read from the generator's attributes of those names when not given.
    """

    def __init__(self, generator: Callable, masks: Any = None, *, score: Callable | None = None,
                 condition: Any = None, latent: Any = None, wrt: str = "latent", reduce: str = "mean",
                 latent_dim: int | None = None, n_classes: int | None = None):
        super().__init__()
        from ..core.validation import check_choice

        self.wrt = check_choice(wrt, "wrt", _WRT)
        self.reduce = check_choice(reduce, "reduce", ("mean", "sum"))
        if not callable(generator):
            raise TypeError(f"generator must be callable as generator(z, c); got {type(generator).__name__}")
        self.generator = generator  # an nn.Module becomes a submodule
        self.latent_dim, self.n_classes = _dims(generator, latent_dim, n_classes)
        if (masks is None) == (score is None):
            raise ValueError("give exactly one of masks= (a region of the image) and score= (a callable of it)")
        if score is not None and not callable(score):
            raise TypeError(f"score must be callable as score(images) -> (batch,); got {type(score).__name__}")
        self.score = score
        if masks is not None:
            m = torch.as_tensor(np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks),
                                dtype=torch.float32)
            if m.dim() not in (2, 3) or not torch.isfinite(m).all():
                raise ValueError(f"masks must be a finite (H, W) or (C, H, W) array; got shape {tuple(m.shape)}")
            if float(m.abs().sum()) == 0:
                raise ValueError("masks selects no pixel (all zero)")
            self.register_buffer("masks", m, persistent=False)
        else:
            self.masks = None
        self._condition = None
        self._latent = None
        if self.wrt == "latent":
            if condition is None:
                raise ValueError("condition: with wrt='latent' give the fixed condition (a class index or a vector)")
            self._condition = _fixed_condition(condition, self.n_classes)
        elif latent is not None or self.wrt == "condition":
            if self.wrt == "condition" and latent is None:
                raise ValueError("latent: with wrt='condition' give the fixed latent code, shape (latent_dim,)")
            z = torch.as_tensor(np.asarray(latent.detach().cpu() if isinstance(latent, torch.Tensor) else latent),
                                dtype=torch.float32).reshape(-1)
            if z.numel() != self.latent_dim:
                raise ValueError(f"latent must have {self.latent_dim} values; got {z.numel()}")
            self._latent = z

    @property
    def n_inputs(self) -> int:
        """Width of the module's input rows."""
        return {"latent": self.latent_dim, "condition": self.n_classes,
                "both": self.latent_dim + self.n_classes}[self.wrt]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, c)`` for input rows ``x``."""
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"GeneratorRegion(wrt={self.wrt!r}): inputs must have shape (batch, {self.n_inputs}); "
                             f"got {tuple(x.shape)}")
        m = len(x)
        if self.wrt == "latent":
            return x, self._condition.to(x).expand(m, -1)
        if self.wrt == "condition":
            return self._latent.to(x).expand(m, -1), x
        return x[:, :self.latent_dim], x[:, self.latent_dim:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, c = self.split(x)
        images = self.generator(z, c)
        if self.score is not None:
            out = self.score(images)
            if not isinstance(out, torch.Tensor) or out.shape != (len(x),):
                raise ValueError(f"score must return a tensor of shape ({len(x)},); got "
                                 f"{getattr(out, 'shape', type(out).__name__)}")
            return out
        m = self.masks.to(images)
        if m.dim() == 2:
            m = m[None].expand(images.shape[1], -1, -1)
        if tuple(m.shape) != tuple(images.shape[1:]):
            raise ValueError(f"masks has shape {tuple(self.masks.shape)} but the generated images are "
                             f"{tuple(images.shape[1:])}")
        total = (images * m).flatten(1).sum(1)
        return total / m.sum() if self.reduce == "mean" else total

    def feature_names(self) -> list[str]:
        """``z0, z1, …`` and ``c:<class name>`` (from the generator's ``class_names``, else ``c0, c1, …``)."""
        names = getattr(self.generator, "class_names", None)
        cn = [f"c:{n}" for n in names] if names is not None and len(names) == self.n_classes else \
            [f"c{i}" for i in range(self.n_classes)]
        zn = [f"z{i}" for i in range(self.latent_dim)]
        return {"latent": zn, "condition": cn, "both": zn + cn}[self.wrt]


def explain_generator(generator: Callable, z: Any, c: Any, masks: Any = None, *, score: Callable | None = None,
                      wrt: str = "both", method: str = "integrated_gradients", reduce: str = "mean",
                      **params: Any):
    """Attribute a region (or score) of the generated images ``g(z, c)`` to the latent and the condition.

    Parameters
    ----------
    generator : nn.Module or callable
        ``generator(z, c)``, see :class:`GeneratorRegion`.
    z : array-like of shape (batch, latent_dim)
    c : int, class indices (batch,), or float (batch, n_classes)
        With ``wrt="latent"`` one class shared by all rows (an int, or equal indices); with
        ``wrt="condition"`` ``z`` must be one code shared by all rows.
    masks, score, reduce
        The region, see :class:`GeneratorRegion`.
    wrt : {"both", "latent", "condition"}, default "both"
        What is attributed. With ``"both"`` the default baseline of IG-like methods is all zeros:
        the prior's mean for ``z`` and "no class" for ``c``.
    method : str, default "integrated_gradients"
        Any lumos method for torch models (``lumos.methods()``).
    **params
        Passed to the method (``baselines``, ``n_steps``, …).

    Returns
    -------
    Explanation
        Values ``(batch, n_features)`` with feature names ``z0, …`` and ``c:<class>``.
    """
    from ..core.registry import explain

    region_kw = dict(masks=masks, score=score, wrt=wrt, reduce=reduce)
    d, k = _dims(generator, None, None)
    zt = torch.as_tensor(np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z), dtype=torch.float32)
    if zt.dim() != 2 or zt.shape[1] != d:
        raise ValueError(f"z must have shape (batch, {d}); got {tuple(zt.shape)}")
    cv = condition_vector(c, len(zt), k, "c").float()
    if wrt == "latent":
        if not torch.equal(cv, cv[:1].expand_as(cv)):
            raise ValueError("c: with wrt='latent' every row must have the same condition (explain one class at a "
                             "time, or use wrt='both')")
        module, inputs = GeneratorRegion(generator, condition=cv[0], **region_kw), zt
    elif wrt == "condition":
        if not torch.equal(zt, zt[:1].expand_as(zt)):
            raise ValueError("z: with wrt='condition' every row must have the same latent code (or use wrt='both')")
        module, inputs = GeneratorRegion(generator, latent=zt[0], **region_kw), cv
    else:
        module, inputs = GeneratorRegion(generator, **region_kw), torch.cat([zt, cv], 1)
    return explain(module, inputs, method, feature_names=module.feature_names(), **params)


@dataclass
class LatentTraversal:
    """Images along latent dimensions: ``images[i, j]`` is ``g(z with z[dims[i]] = values[j], c)``.

    Attributes
    ----------
    images : ndarray, shape (n_dims, n_values, C, H, W)
    dims : list of int
    values : ndarray, shape (n_values,)
    z : ndarray, shape (latent_dim,)
        The code the other dimensions are held at.
    condition : ndarray, shape (n_classes,)
    condition_name : str
    seed : int or None
    """

    images: np.ndarray
    dims: list
    values: np.ndarray
    z: np.ndarray
    condition: np.ndarray
    condition_name: str
    seed: int | None

    def plot(self, title: str | None = None, cell: float = 0.9):
        """The grid: one row per dimension (labelled ``z<d>``), one column per value. Returns the figure."""
        import matplotlib.pyplot as plt

        from ..display._common import ensure_layout

        n_d, n_v = self.images.shape[:2]
        fig, axes = plt.subplots(n_d, n_v, figsize=(cell * n_v + 0.8, cell * n_d + 0.7), squeeze=False)
        for i in range(n_d):
            for j in range(n_v):
                ax = axes[i, j]
                im = np.clip(np.moveaxis(self.images[i, j], 0, -1), 0, 1)
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None,
                          vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"z{self.dims[i]}", fontsize=8, rotation=0, ha="right", va="center")
                if i == n_d - 1:
                    ax.set_xlabel(f"{self.values[j]:+.1f}", fontsize=7)
        fig.suptitle(title if title is not None else f"latent traversal, condition {self.condition_name}",
                     fontsize=9)
        ensure_layout(fig)
        return fig


@torch.no_grad()
def latent_traversal(generator: Callable, c: Any, dims: Sequence[int] | None = None, n_values: int = 7,
                     span: float = 2.5, z: Any = None, seed: int | None = 0) -> LatentTraversal:
    """Generate images along each of ``dims``, the other dimensions held at one code.

    Parameters
    ----------
    generator : nn.Module or callable
        ``generator(z, c)`` (with ``latent_dim``/``n_classes`` attributes). A module runs in eval
        mode under a ModelGuard and is left as found.
    c : int or float vector of length n_classes
        The condition of every image.
    dims : sequence of int or None
        Latent dimensions to traverse (default: all).
    n_values : int, default 7
        Values per dimension, evenly spaced on ``[-span, span]``.
    span : float, default 2.5
    z : array-like of shape (latent_dim,) or None
        The code the other dimensions are held at; ``None`` draws it from ``N(0, I)`` with ``seed``.
    seed : int or None, default 0
        Seeds the draw of ``z`` (ignored when ``z`` is given). Same seed, same images.

    Returns
    -------
    LatentTraversal
    """
    from ..core.torch_model import ModelGuard, check_finite
    from ..core.validation import check_number

    d, k = _dims(generator, None, None)
    n_values = int(check_number(n_values, "n_values", low=2, integer=True))
    span = float(check_number(span, "span", low=0, low_open=True))
    if dims is None:
        dims = list(range(d))
    dims = [int(check_number(i, "dims", low=0, high=d - 1, integer=True)) for i in dims]
    if not dims:
        raise ValueError("dims must name at least one latent dimension")
    if z is None:
        check_number(seed, "seed", low=0, integer=True)
        z0 = torch.randn(d, generator=torch.Generator().manual_seed(int(seed)))
    else:
        z0 = torch.as_tensor(np.asarray(z.detach().cpu() if isinstance(z, torch.Tensor) else z),
                             dtype=torch.float32).reshape(-1)
        if z0.numel() != d or not torch.isfinite(z0).all():
            raise ValueError(f"z must be {d} finite values; got shape {tuple(np.shape(z))}")
        seed = None
    cvec = _fixed_condition(c, k)
    values = torch.linspace(-span, span, n_values)
    rows = z0.repeat(len(dims) * n_values, 1)
    for i, dim in enumerate(dims):
        rows[i * n_values:(i + 1) * n_values, dim] = values
    cond = cvec[None].expand(len(rows), -1)

    def run():
        was = generator.training if isinstance(generator, nn.Module) else None
        if was is not None:
            generator.eval()
        try:
            return generator(rows, cond)
        finally:
            if was is not None:
                generator.train(was)

    if isinstance(generator, nn.Module):
        with ModelGuard(generator):
            images = run()
    else:
        images = run()
    images = torch.as_tensor(images)
    check_finite(images, "latent traversal images")
    names = getattr(generator, "class_names", None)
    hot = int(cvec.argmax())
    cname = (names[hot] if names is not None and len(names) == k else f"c{hot}") \
        if torch.equal(cvec, F.one_hot(torch.tensor(hot), k).float()) else np.array2string(cvec.numpy(), precision=2)
    return LatentTraversal(images.reshape(len(dims), n_values, *images.shape[1:]).cpu().numpy(), dims,
                           values.numpy(), z0.numpy(), cvec.numpy(), cname, seed)


class ResizedClassifier(nn.Module):
    """``classifier(resize(transform(x)))``: a classifier read on images of another size, differentiably.

    Parameters
    ----------
    classifier : nn.Module
    size : int, default 64
        The side the classifier expects (the shipped ``DemoCNN``: 64).
    mode : str, default "bilinear"
        ``torch.nn.functional.interpolate`` mode.
    transform : callable or None
        A differentiable map applied first, e.g. :class:`lumos.data.generative.SilhouetteRGB`
        (the shipped VAE's one-channel silhouettes as the RGB images the classifier reads; as a
        module, lumos' input checks see its one input channel).
    """

    def __init__(self, classifier: nn.Module, size: int = 64, mode: str = "bilinear",
                 transform: Callable | None = None):
        super().__init__()
        from ..core.validation import check_choice, check_number

        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be a torch nn.Module; got {type(classifier).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None; got {type(transform).__name__}")
        self.transform = transform  # registered first when a module: its first layer is the model's
        self.classifier = classifier
        self.size = int(check_number(size, "size", low=1, integer=True))
        self.mode = check_choice(mode, "mode", ("bilinear", "nearest", "bicubic", "area"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
        if self.transform is not None:
            x = self.transform(x)
        return self.classifier(F.interpolate(x, size=(self.size, self.size), mode=self.mode, **kw))


def classifier_saliency(classifier: nn.Module, images: Any, method: str = "integrated_gradients",
                        target: Any = "predicted", size: int = 64, transform: Callable | None = None,
                        **params: Any):
    """Which pixels of generated ``images`` make ``classifier`` predict ``target``.

    The classifier sees the images passed through ``transform`` (if given) and resized to ``size``
    (:class:`ResizedClassifier`); the explanation is on the generated pixels. Any lumos image method works (``method=``).

    Returns
    -------
    Explanation
        Values of the images' shape.
    """
    from ..core.registry import explain

    return explain(ResizedClassifier(classifier, size, transform=transform), images, method, target=target,
                   **params)


@dataclass
class Recognition:
    """How often a classifier calls a conditional generator's samples by their condition.

    Attributes
    ----------
    rates : dict
        Class name -> share of that class's samples the classifier predicts as the class.
    confusion : ndarray, shape (n_classes, n_outputs)
        Counts: row = the condition, column = the class the classifier predicted.
    class_names : list of str
    n_samples : int
        Samples per class.
    seed : int
    """

    rates: dict
    confusion: np.ndarray
    class_names: list
    n_samples: int
    seed: int

    def called(self, c: int) -> list[tuple[str, float]]:
        """What the samples of class ``c`` are called: ``(class name, share)``, most frequent first."""
        row = self.confusion[c] / max(1, self.confusion[c].sum())
        names = self.class_names + [f"output {j}" for j in range(len(self.class_names), len(row))]
        order = np.argsort(-row, kind="stable")
        return [(names[j], float(row[j])) for j in order if row[j] > 0]

    def line(self) -> str:
        """``circle 62.8%, square 62.0%, …`` in class order."""
        return ", ".join(f"{name} {rate:.1%}" for name, rate in self.rates.items())


@torch.no_grad()
def recognition(generator: Callable, classifier: nn.Module, n_samples: int = 500, seed: int = 1,
                size: int = 64, transform: Callable | None = None, batch_size: int = 250) -> Recognition:
    """Sample each class of a conditional generator from the prior and let a classifier name it.

    For each class ``c``, ``z`` of shape ``(n_samples, latent_dim)`` is drawn from ``N(0, I)`` with a
    fresh ``torch.Generator`` seeded with ``seed`` (the draw of ``ShapesVAE.sample(c, seed, n)``), the
    images ``generator(z, c)`` are read by ``ResizedClassifier(classifier, size, transform=transform)``
    and counted as recognised when its top class is ``c``. Both models run in eval mode under a
    ModelGuard and are left as found; the result does not depend on ``batch_size``.

    Parameters
    ----------
    generator : nn.Module or callable
        ``generator(z, c)`` with ``latent_dim``/``n_classes`` attributes (and ``class_names``).
    classifier : nn.Module
        Its output class ``j`` stands for the generator's class ``j``.
    n_samples : int, default 500
        Samples per class.
    seed : int, default 1
    size, transform
        See :class:`ResizedClassifier` (for the shipped VAE: ``transform=SilhouetteRGB()``).
    batch_size : int, default 250
        Images per model call.

    Returns
    -------
    Recognition
    """
    from ..core.execution import chunks
    from ..core.torch_model import ModelGuard, check_finite
    from ..core.validation import check_number

    d, k = _dims(generator, None, None)
    n_samples = int(check_number(n_samples, "n_samples", low=1, integer=True))
    seed = int(check_number(seed, "seed", low=0, integer=True))
    batch_size = int(check_number(batch_size, "batch_size", low=1, integer=True))
    clf = ResizedClassifier(classifier, size, transform=transform)
    names = getattr(generator, "class_names", None)
    names = list(names) if names is not None and len(names) == k else [f"c{i}" for i in range(k)]
    guards = [ModelGuard(m) for m in (generator, clf) if isinstance(m, nn.Module)]
    confusion = None
    with contextlib.ExitStack() as stack:
        for guard in guards:
            stack.enter_context(guard)
        for m in (generator, clf):
            if isinstance(m, nn.Module):
                m.eval()
        for c in range(k):
            z = torch.randn(n_samples, d, generator=torch.Generator().manual_seed(seed))
            cond = F.one_hot(torch.full((n_samples,), c), k).float()
            pred = []
            for sl in chunks(n_samples, batch_size, progress=False):
                images = torch.as_tensor(generator(z[sl], cond[sl]))
                check_finite(images, "generated images")
                out = clf(images)
                check_finite(out, "the classifier's outputs on generated images")
                pred.append(out.argmax(1))
            pred = torch.cat(pred)
            if confusion is None:
                confusion = np.zeros((k, max(k, out.shape[1])), dtype=np.int64)
            confusion[c] += np.bincount(pred.numpy(), minlength=confusion.shape[1])[:confusion.shape[1]]
    rates = {names[c]: float(confusion[c, c] / n_samples) for c in range(k)}
    return Recognition(rates, confusion, names, n_samples, seed)
