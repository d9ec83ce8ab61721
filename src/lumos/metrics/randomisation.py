"""Randomisation: does the explanation depend on what the model learned?

- :func:`model_parameter_randomisation`: the sanity check of Adebayo et al. (2018): re-initialise
  the model's layers from the output down (cascading, cumulatively) or one at a time
  (independent), re-explain, and compare each map with the original one. An explanation that
  barely changes when the weights are random cannot be explaining the trained model.
- :func:`random_logit`: explain a random other class and compare (Sixt, Granz & Landgraf, 2020):
  an explanation that looks the same for every class does not explain the decision.

Comparison measures (Adebayo et al., 2018): Spearman rank correlation of the absolute maps (and
of the signed maps, in ``curves``), and SSIM of the absolute maps, each scaled to [0, 1] by its
maximum. For images, maps are the per-pixel channel sums of ``|values|``.

The user's model is never touched: randomisation runs on ``copy.deepcopy`` copies, re-initialised
with explicit torch generators (one per layer, from ``seed``): the same seed gives the same random
layers in both orders.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.execution import torch_generator
from ..core.explanation import Explanation
from ..core.torch_model import ModelGuard, as_tensor, forward, model_device
from ..core.validation import check_number
from .explainers import make_explainer
from .layouts import check_explanation, layout
from .registry import register_metric
from .results import MetricResult
from .scoring import row_target
from .stats import rowwise_spearman
from .streams import row_rng

__all__ = ["model_parameter_randomisation", "random_logit", "randomisable_layers", "randomise_layer",
           "map_similarity"]

_SIMILARITIES = ("spearman", "spearman_signed", "ssim")


def randomisable_layers(model: nn.Module, inputs: Any) -> list[str]:
    """Dotted names of the modules that own parameters, in the order the forward pass calls them,
    from the output down (top layer first). Found with one forward pass of one sample on a copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: parameter randomisation needs a torch.nn.Module; got {type(model).__name__}")
    twin = copy.deepcopy(model)
    order: list[str] = []
    handles = []
    for name, m in twin.named_modules():
        if any(True for _ in m.parameters(recurse=False)):
            def hook(mod, inp, out, name=name):
                if name not in order:
                    order.append(name)
            handles.append(m.register_forward_hook(hook))
    try:
        x = as_tensor(inputs, model_device(twin), name="explanation.inputs")[:1]
        with torch.no_grad():
            forward(twin, x if x.is_floating_point() else x.long())
    finally:
        for h in handles:
            h.remove()
    if not order:
        raise ValueError("model: no module with parameters runs in the forward pass; nothing to randomise")
    return order[::-1]


def _layer_seed(seed: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), 17, int(k)]).generate_state(1)[0])


def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the parameters owned by ``module`` (in place) from ``generator``.

    Parameters with two or more axes get PyTorch's default Kaiming-uniform initialisation
    (``a = sqrt(5)``, bound ``1/sqrt(fan_in)``); one-axis parameters (biases, normalisation scales
    and shifts) are uniform on ``±1/sqrt(fan_in)`` of the module's weight, or on ``±1`` when the
    module has no weight matrix.
    """
    weight = getattr(module, "weight", None)
    fan_in = None
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        fan_in = nn.init._calculate_fan_in_and_fan_out(weight)[0]
    with torch.no_grad():
        for _, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=generator)
            else:
                bound = 1.0 / math.sqrt(fan_in) if fan_in else 1.0
                p.uniform_(-bound, bound, generator=generator)


def _ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM per sample of (n, H, W) non-negative maps, each scaled to [0, 1] by its maximum."""
    from skimage.metrics import structural_similarity

    n = len(a)
    if a.ndim != 3 or min(a.shape[1:]) < 3:
        return np.full(n, np.nan)
    win = min(7, min(a.shape[1:]) - (1 - min(a.shape[1:]) % 2))  # odd, at most the map size
    out = np.empty(n)
    for i in range(n):  # no model evaluation: one SSIM per map pair
        ma, mb = a[i].max(), b[i].max()
        out[i] = structural_similarity(a[i] / ma if ma > 0 else a[i], b[i] / mb if mb > 0 else b[i],
                                       data_range=1.0, win_size=win)
    return out


def map_similarity(values_a: np.ndarray, values_b: np.ndarray, inputs: np.ndarray) -> dict:
    """Spearman (absolute and signed maps) and SSIM between two explanations of the same inputs.

    Returns a dict of (n,) arrays: ``spearman`` (of the absolute maps), ``spearman_signed``, ``ssim``.
    """
    la = layout(Explanation(values=values_a, inputs=inputs))
    lb = layout(Explanation(values=values_b, inputs=inputs))
    n = la.n
    return {
        "spearman": rowwise_spearman(la.abs_map.reshape(n, -1), lb.abs_map.reshape(n, -1)),
        "spearman_signed": rowwise_spearman(la.map.reshape(n, -1), lb.map.reshape(n, -1)),
        "ssim": _ssim(la.abs_map, lb.abs_map),
    }


def _check_similarity(similarity: str | None, map_ndim: int) -> str:
    if similarity is None:  # SSIM compares structure, for image maps; ranks otherwise
        return "ssim" if map_ndim == 2 else "spearman"
    if similarity not in _SIMILARITIES:
        raise ValueError(f"similarity must be one of {_SIMILARITIES}; got {similarity!r}")
    return similarity


@register_metric("randomisation", "randomisation", "lower", ("model", "explainer"),
                 "Mean similarity to the original map over cascading randomisation of the layers, top down (Adebayo et al., 2018)")
def model_parameter_randomisation(model: nn.Module, explanation: Explanation, *, order: str = "cascading",
                                  layers: int | Sequence[str] | None = None, similarity: str | None = None,
                                  explainer: Any = None, method_params: dict | None = None,
                                  target: Any = None, seed: int = 0, keep_maps: bool = True
                                  ) -> MetricResult:
    """Model-parameter randomisation test (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, 2018,
    "Sanity Checks for Saliency Maps", NeurIPS).

    Parameters
    ----------
    model : torch.nn.Module
        Never modified: the test works on deep copies.
    explanation : Explanation
        The original explanation (its values are the reference, unless ``explainer`` or
        ``method_params`` ask for a different function, which is then also run on the original
        model).
    order : {"cascading", "independent"}, default "cascading"
        Cascading: layers re-initialised cumulatively from the top (output) down; independent:
        one layer at a time, the others trained.
    layers : int or sequence of str, optional
        All modules with parameters (default), the top ``k``, or these dotted names.
    similarity : {"ssim", "spearman", "spearman_signed"}, optional
        The measure that gives the score. Default: ``"ssim"`` for image maps, ``"spearman"``
        otherwise.
    explainer, method_params : see :func:`lumos.metrics.explainers.make_explainer`
    target : optional
        Overrides the explanation's target.
    seed : int, default 0
        Seeds one torch generator per layer.
    keep_maps : bool, default True
        Keep the absolute maps, ``meta["maps"]`` of shape (steps + 1, n, *map_shape), float32,
        the original first (for :class:`lumos.display.metrics.RandomisationDisplay`).

    Returns
    -------
    MetricResult
        ``scores``: the similarity to the original averaged over the randomisation steps (the
        area under the cascade curve over its length); lower is better: the explanation follows
        the weights. ``curves``: ``spearman``, ``spearman_signed``, ``ssim``, each (n_steps, n)
        (the similarity after the whole cascade is ``curves[similarity][-1]``);
        ``meta["layers"]``: the randomised layer of each step.
    """
    if order not in ("cascading", "independent"):
        raise ValueError(f"order must be 'cascading' or 'independent'; got {order!r}")
    seed = check_number(seed, "seed", low=0, integer=True)
    explanation = check_explanation(explanation)
    similarity = _check_similarity(similarity, len(layout(explanation).map_shape))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: parameter randomisation needs a torch.nn.Module; got {type(model).__name__}")
    all_layers = randomisable_layers(model, explanation.inputs)
    if layers is None:
        chosen = list(all_layers)
    elif isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        chosen = all_layers[:check_number(layers, "layers", low=1, integer=True)]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in names if n not in all_layers]
        if unknown:
            raise ValueError(f"layers: {unknown} are not modules with parameters that the forward pass "
                             f"uses; available (top down): {all_layers}")
        chosen = [n for n in all_layers if n in names]
    fn, method = make_explainer(explanation, explainer, method_params)
    n = len(explanation)
    tgt = row_target(explanation, target, np.arange(n))
    inputs = torch.as_tensor(np.asarray(explanation.inputs))
    with ModelGuard(model):  # belt and braces: the original is only copied
        if explainer is None and not method_params:
            reference = np.asarray(explanation.values, dtype=np.float64)
        else:
            reference = fn(copy.deepcopy(model), inputs, tgt)
        sims = {k: [] for k in _SIMILARITIES}
        maps = [layout(Explanation(values=reference, inputs=explanation.inputs)).abs_map.astype(np.float32)]
        twin = copy.deepcopy(model) if order == "cascading" else None
        for name in chosen:
            k = all_layers.index(name)
            if order == "independent":
                twin = copy.deepcopy(model)
            randomise_layer(dict(twin.named_modules())[name], torch_generator(_layer_seed(seed, k)))
            values = fn(twin, inputs, tgt)
            if values.shape != reference.shape:
                raise ValueError(f"explainer returned values of shape {values.shape}; expected {reference.shape}")
            for key, v in map_similarity(reference, values, explanation.inputs).items():
                sims[key].append(v)
            if keep_maps:
                maps.append(layout(Explanation(values=values, inputs=explanation.inputs)).abs_map.astype(np.float32))
    curves = {k: np.stack(v) for k, v in sims.items()}
    sel = curves[similarity]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        scores = np.nanmean(sel, axis=0)
    meta = {"layers": chosen, "order": order, "explainer": method}
    if keep_maps:
        meta["maps"] = np.stack(maps)
    return MetricResult(
        "randomisation" if order == "cascading" else "randomisation_independent", scores, "lower",
        explanation.method,
        params={"order": order, "similarity": similarity, "seed": seed, "n_layers": len(chosen)},
        curves=curves, meta=meta,
    )


@register_metric("randomisation_independent", "randomisation", "lower", ("model", "explainer"),
                 "Mean similarity to the original map when each layer alone is randomised (Adebayo et al., 2018)",
                 forwards=model_parameter_randomisation, fixed=("order",))
def randomisation_independent(model: nn.Module, explanation: Explanation, **kwargs: Any) -> MetricResult:
    """:func:`model_parameter_randomisation` with ``order="independent"``."""
    return model_parameter_randomisation(model, explanation, order="independent", **kwargs)


@register_metric("random_logit", "randomisation", "lower", ("model", "explainer"),
                 "Similarity between the explanation of the class and of a random other class (Sixt et al., 2020)")
def random_logit(model: Any, explanation: Explanation, *, similarity: str | None = None, explainer: Any = None,
                 method_params: dict | None = None, seed: int = 0) -> MetricResult:
    """Random-logit test (Sixt, Granz & Landgraf, 2020, "When Explanations Lie: Why Many Modified BP
    Attributions Fail", ICML).

    For each sample, a class other than the explained one is drawn at random (from ``seed``), the
    explanation of that class is computed in one batched call, and compared with the original
    explanation. Needs an explanation of class-index targets.

    Parameters
    ----------
    similarity : {"ssim", "spearman", "spearman_signed"}, optional
        Default: ``"ssim"`` for image maps (as in Sixt et al.), ``"spearman"`` otherwise.
    explainer, method_params : see :func:`lumos.metrics.explainers.make_explainer`
    seed : int, default 0
    """
    seed = check_number(seed, "seed", low=0, integer=True)
    explanation = check_explanation(explanation)
    similarity = _check_similarity(similarity, len(layout(explanation).map_shape))
    if explanation.target is None:
        raise ValueError("explanation: the random-logit test needs class-index targets (explanation.target)")
    fn, method = make_explainer(explanation, explainer, method_params)
    n = len(explanation)
    target = np.asarray(explanation.target, dtype=np.int64)
    if isinstance(model, nn.Module):
        with ModelGuard(model), torch.no_grad():
            x = as_tensor(explanation.inputs, model_device(model), name="explanation.inputs")
            n_classes = forward(model, x[:1]).shape[1]
    else:
        from ..core.blackbox import as_blackbox

        n_classes = np.asarray(as_blackbox(model)(np.asarray(explanation.inputs)[:1])).shape[1]
    if n_classes < 2:
        raise ValueError("model: the random-logit test needs at least two classes")
    other = np.array([row_rng(seed, 13, i).integers(n_classes - 1) for i in range(n)])
    other = other + (other >= target)  # uniform over the classes other than the target
    inputs = torch.as_tensor(np.asarray(explanation.inputs)) if isinstance(model, nn.Module) else explanation.inputs
    reference = np.asarray(explanation.values, dtype=np.float64) if explainer is None and not method_params \
        else fn(model, inputs, target)
    values = fn(model, inputs, other)
    sims = map_similarity(reference, values, explanation.inputs)
    return MetricResult(
        "random_logit", sims[similarity], "lower", explanation.method,
        params={"similarity": similarity, "seed": seed, "explainer": method},
        curves={k: v for k, v in sims.items()}, meta={"random_class": other},
    )
