"""Feature visualisation: images that maximise an objective, by gradient ascent.

``visualise(model, objective, shape=(3, 64, 64))`` starts from a near-grey image in a
parametrisation (:mod:`~lumos.concepts.param`: Fourier with decorrelated colours by default, or
pixels), and for ``n_iter`` steps applies random robustness transformations
(:mod:`~lumos.concepts.transforms`), runs the model, and takes an Adam step up the gradient of the
objective (:mod:`~lumos.concepts.objectives`). It returns the images, the objective's curve of
every image and its value on the initial and final untransformed images.

:func:`layer_grid` draws one image per channel of a layer in one optimisation ("what each channel
of block k responds to").

After Olah, Mordvintsev & Schubert, *Feature Visualization*, Distill 2017; design after Lucent.
The model runs in eval mode and is left exactly as found (:class:`~lumos.core.torch_model.ModelGuard`);
its parameters are frozen during the optimisation. Randomness (initial values, transformations)
comes only from a :class:`torch.Generator` seeded by ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.execution import progress_bar, torch_generator
from ..core.torch_model import ModelGuard, as_tensor, frozen_parameters, model_device, model_dtype
from ..core.validation import check_choice, check_kwargs, check_number
from ..display._common import ShortRepr
from . import objectives as _obj
from . import transforms as _tf
from ._capture import check_layers, record
from .param import ImageParam, fourier_image, pixel_image

__all__ = ["visualise", "evaluate", "layer_grid", "FeatureVisualisation", "PARAMETRISATIONS"]

PARAMETRISATIONS = ("fourier", "pixel")


@dataclass(repr=False)
class FeatureVisualisation(ShortRepr):
    """The result of :func:`visualise` / :func:`layer_grid`.

    Attributes
    ----------
    images : ndarray of shape (batch, C, H, W)
        The optimised images, in ``value_range``.
    curve : ndarray of shape (n_iter, batch)
        The objective of each image at each step (on the transformed image the step used).
    initial : ndarray of shape (batch,)
        The objective on the initial images (untransformed).
    final : ndarray of shape (batch,)
        The objective on the returned images (untransformed).
    objective : str
        The objective's name.
    titles : list of str
        One readable title per image.
    params : dict
        The settings (parametrisation, n_iter, lr, seed, transforms, value_range, layer).
    """

    images: np.ndarray
    curve: np.ndarray
    initial: np.ndarray
    final: np.ndarray
    objective: str
    titles: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def plot(self, columns: int | None = None, *, title: str | None = None, image_size: float = 1.3,
             fig=None):
        """A grid of the images with their titles; returns the figure."""
        import matplotlib.pyplot as plt

        n = len(self.images)
        cols = int(columns) if columns else min(n, 8)
        rows = -(-n // cols)
        if fig is None:
            fig = plt.figure(figsize=(cols * image_size + 0.2, rows * (image_size + 0.3) + 0.5),
                             layout="constrained")
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        lo, hi = self.params.get("value_range", (0.0, 1.0))
        for i, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= n:
                ax.set_axis_off()
                continue
            im = np.clip((self.images[i] - lo) / (hi - lo), 0, 1)
            ax.imshow(np.moveaxis(im, 0, -1) if im.shape[0] in (3, 4) else im[0], cmap="gray")
            if i < len(self.titles):
                ax.set_title(self.titles[i], fontsize=7)
        fig.suptitle(title if title is not None else self.default_title(), fontsize=9)
        self.figure_ = fig
        return fig

    def default_title(self) -> str:
        p = self.params
        what = (f"What each channel of {p['layer']!r} responds to" if p.get("layer")
                else f"Maximising {self.objective}")
        return f"{what} ({p.get('param', '?')} parametrisation, {p.get('n_iter', '?')} steps, seed {p.get('seed')})"

    def plot_curve(self, ax=None):
        """The objective of each image against the step; returns the axes."""
        from ..display._common import new_axes

        ax = new_axes(ax, (4.2, 3.0))
        steps = np.arange(1, len(self.curve) + 1)
        for i in range(self.curve.shape[1]):
            ax.plot(steps, self.curve[:, i], lw=1, label=self.titles[i] if i < len(self.titles) else None)
        ax.set_xlabel("step")
        ax.set_ylabel("objective (transformed image)")
        ax.set_title(self.objective, fontsize=9)
        if 1 < self.curve.shape[1] <= 8:
            ax.legend(fontsize=7)
        return ax


def _input_shape(shape: Any) -> tuple[int, int, int]:
    if shape is None:
        raise ValueError("shape: give the model's input shape per image, (channels, height, width), "
                         "e.g. shape=(3, 64, 64) for the demo CNN")
    try:
        s = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be (channels, height, width); got {shape!r}") from None
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"shape must be 3 positive ints (channels, height, width); got {shape!r}")
    return s  # type: ignore[return-value]


def _value_range(value_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise TypeError(f"value_range must be (low, high); got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be finite with low < high; got {value_range!r}")
    return lo, hi


def _transform(transforms: Any, size: int) -> Callable | None:
    if transforms is None or transforms is False:
        return None
    if isinstance(transforms, str):
        check_choice(transforms, "transforms", ("standard",))
        return _tf.standard(size)
    if callable(transforms):
        return transforms
    if isinstance(transforms, Sequence):
        return _tf.compose(*transforms)
    raise TypeError(f"transforms must be 'standard', None, a callable t(images, generator) or a sequence "
                    f"of them; got {type(transforms).__name__}")


def _make_param(param: str, shape, generator, value_range, device, dtype, sd, decay_power) -> ImageParam:
    check_choice(param, "param", PARAMETRISATIONS)
    if param == "pixel":
        return pixel_image(shape, generator, sd=sd, value_range=value_range, device=device, dtype=dtype)
    return fourier_image(shape, generator, sd=sd, decay_power=decay_power, value_range=value_range,
                         device=device, dtype=dtype)


def _scores(model, objective, x, modules, what) -> torch.Tensor:
    acts = record(model, x, objective.layers - {_obj.INPUT}, what=what, modules=modules)
    acts[_obj.INPUT] = x
    return objective(acts)


def evaluate(model: nn.Module, objective: _obj.Objective, images: Any) -> np.ndarray:
    """The objective of each image (no transformation, no gradient): shape ``(batch,)``."""
    objective = _obj.as_objective(objective)
    with ModelGuard(model):
        x = as_tensor(images, model_device(model), name="images", dtype=model_dtype(model))
        modules = check_layers(model, objective.layers)
        with torch.no_grad():
            return _scores(model, objective, x, modules, "the images").detach().cpu().numpy().astype(np.float64)


def visualise(model: nn.Module, objective: _obj.Objective, *, shape: Sequence[int] | None = None,
              batch: int = 1, param: str = "fourier", n_iter: int = 256, lr: float = 0.05,
              transforms: Any = "standard", seed: int | None = 0,
              value_range: Sequence[float] = (0.0, 1.0), sd: float = 0.01, decay_power: float = 1.0,
              titles: Sequence[str] | None = None, progress: bool | None = None) -> FeatureVisualisation:
    """Images that maximise ``objective`` (activation maximisation).

    Parameters
    ----------
    model : nn.Module
        Any torch model taking ``(batch, C, H, W)`` images; run in eval mode, left as found.
    objective : Objective
        What to maximise (:mod:`lumos.concepts.objectives`); a per-image index in it (e.g.
        ``objectives.channel("features.6", [0, 1, 2])``) needs ``batch`` equal to its length.
    shape : (C, H, W)
        The model's input shape per image (required).
    batch : int, default 1
        How many images are optimised together (with a ``diversity`` term: different ones).
    param : {"fourier", "pixel"}, default "fourier"
        The parametrisation (:mod:`lumos.concepts.param`).
    n_iter : int, default 256
        Optimisation steps (Adam).
    lr : float, default 0.05
        Adam's learning rate.
    transforms : "standard", None, callable or sequence of callables, default "standard"
        Robustness transformations applied before each forward pass
        (:func:`lumos.concepts.transforms.standard`); ``None`` optimises the plain image.
    seed : int, default 0
        Seeds the one generator of the initial values and the transformations.
    value_range : (low, high), default (0, 1)
        The model's input range; images stay inside it (sigmoid).
    sd : float, default 0.01
        Standard deviation of the initial parameters.
    decay_power : float, default 1.0
        The ``1/f`` exponent of the Fourier parametrisation.
    titles : sequence of str, optional
        One title per image (default: the objective's name).
    progress : bool, optional
        Progress bar (default: on a terminal).

    Returns
    -------
    FeatureVisualisation
    """
    objective = _obj.as_objective(objective)
    c, h, w = _input_shape(shape)
    batch = int(check_number(batch, "batch", low=1, integer=True))
    n_iter = int(check_number(n_iter, "n_iter", low=1, integer=True))
    lr = check_number(lr, "lr", low=0, low_open=True)
    sd = check_number(sd, "sd", low=0)
    decay_power = check_number(decay_power, "decay_power")
    vr = _value_range(value_range)
    transform = _transform(transforms, min(h, w))
    if titles is not None and len(titles) != batch:
        raise ValueError(f"titles: {len(titles)} given for a batch of {batch}")
    with ModelGuard(model):
        model.eval()
        frozen_parameters(model)  # the guard restores the flags
        modules = check_layers(model, objective.layers)
        device, dtype = model_device(model), model_dtype(model) or torch.float32
        gen = torch_generator(seed)
        # the transformations draw from their own stream, so the images' initial values (one
        # draw per image) never shift the transformations: image i does not depend on the batch
        tgen = torch_generator(int(torch.randint(2**62, (1,), generator=gen)))
        image = _make_param(param, (batch, c, h, w), gen, vr, device, dtype, sd, decay_power)
        opt = torch.optim.Adam(image.params, lr=lr)
        curve = np.empty((n_iter, batch))
        initial = None
        if transform is not None:  # without transformations, step 0 scores the initial images
            with torch.no_grad():
                initial = _scores(model, objective, image(), modules, "the initial images")
        with torch.enable_grad(), progress_bar(n_iter, "feature visualisation", progress, "step") as bar:
            for step in range(n_iter):
                opt.zero_grad(set_to_none=True)
                img = image()
                x = transform(img, tgen) if transform is not None else img
                acts = record(model, x, objective.layers - {_obj.INPUT}, what="the optimised images",
                              modules=modules)
                acts[_obj.INPUT] = img
                scores = objective(acts)
                if scores.shape != (batch,):
                    raise ValueError(f"objective {objective.name!r} gave {tuple(scores.shape)} scores for a "
                                     f"batch of {batch} images")
                curve[step] = scores.detach().cpu().numpy()
                if initial is None:
                    initial = scores.detach()
                if step == 0 and not scores.requires_grad:
                    raise ValueError(f"objective {objective.name!r} does not depend on the image (no gradient "
                                     "path: a detached or argmax layer?)")
                (-scores.sum()).backward()
                opt.step()
                bar.update(1)
        with torch.no_grad():
            final_images = image().detach()
            final = _scores(model, objective, final_images, modules, "the optimised images")
    return FeatureVisualisation(
        images=final_images.cpu().numpy(), curve=curve,
        initial=initial.detach().cpu().numpy().astype(np.float64),
        final=final.detach().cpu().numpy().astype(np.float64),
        objective=objective.name,
        titles=list(titles) if titles is not None else [objective.name] * batch,
        params={"param": param, "n_iter": n_iter, "lr": lr, "seed": seed, "value_range": vr,
                "transforms": getattr(transform, "__name__", None) if transform is not None else None,
                "batch": batch, "shape": (c, h, w)},
    )


def _n_channels(model: nn.Module, layer: str, shape: tuple[int, int, int]) -> int:
    with ModelGuard(model):
        model.eval()
        modules = check_layers(model, [layer])
        x = torch.full((1,) + shape, 0.5, device=model_device(model), dtype=model_dtype(model) or torch.float32)
        with torch.no_grad():
            act = record(model, x, [layer], what="a grey image", modules=modules)[layer]
    if act.ndim < 2:
        raise ValueError(f"layer {layer!r} has no channel axis (activation shape {tuple(act.shape)})")
    return int(act.shape[1])


def layer_grid(model: nn.Module, layer: str, channels: Sequence[int] | int | None = None, *,
               shape: Sequence[int] | None = None, objective: str = "channel", n_iter: int = 256,
               param: str = "fourier", seed: int | None = 0, **kwargs) -> FeatureVisualisation:
    """One image per channel of ``layer`` ("what each channel of block k responds to").

    All channels are optimised together in one batch (image ``i`` maximises channel
    ``channels[i]``; images do not interact). ``result.plot()`` draws the grid with titles
    ``"<layer> ch <k>"``.

    Parameters
    ----------
    model, shape, n_iter, param, seed, **kwargs
        As :func:`visualise`.
    layer : str
        The layer, by dotted name.
    channels : int or sequence of int, optional
        The channels (default: all); an int ``n`` means the first ``n``.
    objective : {"channel", "neuron"}, default "channel"
        Maximise the channel's mean over positions, or the unit at the centre.
    """
    check_kwargs(visualise, kwargs, "layer_grid", skip=("model", "objective", "shape", "batch", "titles"))
    for fixed in ("batch", "titles"):
        if fixed in kwargs:
            raise TypeError(f"layer_grid: {fixed!r} is set by the channels (one image per channel)")
    s = _input_shape(shape)
    n_ch = _n_channels(model, layer, s)
    if channels is None:
        chans = list(range(n_ch))
    elif isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        chans = list(range(min(int(channels), n_ch)))
    else:
        chans = [int(c) for c in channels]
    if not chans or min(chans) < 0 or max(chans) >= n_ch:
        raise ValueError(f"channels: {layer!r} has {n_ch} channels; got {channels!r}")
    check_choice(objective, "objective", ("channel", "neuron"))
    obj = (_obj.channel(layer, chans) if objective == "channel" else _obj.neuron(layer, chans))
    res = visualise(model, obj, shape=s, batch=len(chans), n_iter=n_iter, param=param, seed=seed,
                    titles=[f"{layer} ch {c}" for c in chans], **kwargs)
    res.params["layer"] = layer
    res.params["channels"] = chans
    return res
