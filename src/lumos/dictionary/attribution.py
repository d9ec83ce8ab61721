"""Attribution to and through the features of a sparse dictionary.

Two questions:

* **What in the input makes a feature fire?** :func:`feature_target` is a target that reads one SAE
  feature's activation at a layer, so every lumos method explains it by the input::

      lumos.explain(model, x, method="integrated_gradients", target=feature_target(sae, "features.10", 7))

  It is a :class:`~lumos.core.units.Neuron` whose unit is ``sae.encode(activation)[..., feature]``,
  summed over the layer's positions (or their mean or maximum, or one position). The model runs
  only up to the layer.
* **Which features make the model output what it does?** :func:`feature_attribution` splices the
  SAE into the model at the layer: the layer's output is replaced by ``decode(f) + ε`` with
  ``f = encode(activation)`` and the *error term* ``ε = activation - decode(encode(activation))``
  held constant, so the model's output is unchanged (Marks et al., "Sparse Feature Circuits",
  2024). Each feature then gets

  - ``"gradient_x_activation"``: ``Σ_positions f · ∂y/∂f`` (one backward pass); the error term gets
    ``ε · ∂y/∂ε`` (``meta["error"]``);
  - ``"ablation"``: ``y - y(f_i = 0 at every position)``, the error term kept (one forward pass per
    feature).

  On a model linear in the features both equal ``f_i · ∇y · d_i`` (``d_i`` the decoder direction)
  and add up, with the output at zero codes (error term kept), to ``y``. With ``error_term=False``
  the reconstruction alone replaces the activation (the output then differs from the model's by
  the SAE's error; ``meta["spliced_output"]`` holds it).

The spliced forward is :func:`~lumos.dictionary.metrics.splice`: a hook removed on exit, the model
left as found (:class:`~lumos.core.torch_model.ModelGuard`). The SAE is evaluated in eval mode (a
row's codes never depend on the other rows) and its parameters receive no gradient.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.explanation import Explanation
from ..core.modules import get_module
from ..core.targets import resolve_target
from ..core.torch_model import ModelGuard, as_tensor, check_finite, forward, frozen_parameters, model_device, \
    model_dtype
from ..core.units import Neuron
from ..core.validation import check_choice, check_number
from .cache import flatten_positions
from .metrics import splice

__all__ = ["FeatureTarget", "feature_target", "feature_attribution", "ATTRIBUTION_METHODS", "REDUCTIONS"]

ATTRIBUTION_METHODS = ("gradient_x_activation", "ablation")
REDUCTIONS = ("sum", "mean", "max")


class _EvalSAE:
    """Within the block: the SAE in eval mode with its parameters frozen (restored on exit)."""

    def __init__(self, sae: nn.Module):
        self.sae = sae

    def __enter__(self):
        self.was = self.sae.training
        self.frozen = frozen_parameters(self.sae)
        self.sae.eval()
        return self.sae

    def __exit__(self, *exc):
        self.frozen.__exit__()
        self.sae.train(self.was)


def _check_sae(sae: Any) -> None:
    if not (hasattr(sae, "encode") and hasattr(sae, "decode") and hasattr(sae, "n_features")):
        raise TypeError(f"sae must be a lumos.dictionary.SAE (encode, decode, n_features); got {type(sae).__name__}")


def _check_feature(sae, feature) -> int:
    f = check_number(feature, "feature", integer=True)
    if not 0 <= f < sae.n_features:
        raise ValueError(f"feature must be in [0, {sae.n_features}) (the SAE's features); got {feature!r}")
    return int(f)


class FeatureTarget(Neuron):
    """One SAE feature's activation at a layer, as the target of any lumos method.

    Parameters
    ----------
    sae : SAE
        Trained on the rows of layer ``at``'s output (see :func:`~lumos.dictionary.cache.flatten_positions`).
    at : str
        The layer, by dotted name.
    feature : int
    reduce : {"sum", "mean", "max"}, default "sum"
        How the feature's activations over the layer's positions (tokens, ``h * W + w``) become one
        scalar per sample.
    position : int, optional
        Explain the feature at this position only (overrides ``reduce``).
    """

    def __init__(self, sae: nn.Module, at: str, feature: int, *, reduce: str = "sum",
                 position: int | None = None):
        _check_sae(sae)
        self.sae, self.feature = sae, _check_feature(sae, feature)
        self.reduce = check_choice(reduce, "reduce", REDUCTIONS)
        self.position = None if position is None else int(check_number(position, "position", low=0, integer=True))
        super().__init__(at, self._value)

    def _value(self, act: torch.Tensor) -> torch.Tensor:
        b = len(act)
        rows, _ = flatten_positions(act)
        with _EvalSAE(self.sae) as sae:
            codes = sae.encode(rows)[:, self.feature].reshape(b, -1).to(act.dtype)
        if self.position is not None:
            if self.position >= codes.shape[1]:
                raise ValueError(f"position: the layer has {codes.shape[1]} positions; got {self.position}")
            return codes[:, self.position]
        if self.reduce == "sum":
            return codes.sum(1)
        if self.reduce == "mean":
            return codes.mean(1)
        return codes.amax(1)

    def __repr__(self) -> str:
        where = f"position={self.position}" if self.position is not None else f"reduce={self.reduce!r}"
        return f"FeatureTarget({self.at!r}, feature={self.feature}, {where})"


def feature_target(sae: nn.Module, at: str, feature: int, *, reduce: str = "sum",
                   position: int | None = None) -> FeatureTarget:
    """A target reading SAE feature ``feature`` at layer ``at`` (see :class:`FeatureTarget`)."""
    return FeatureTarget(sae, at, feature, reduce=reduce, position=position)


def feature_attribution(model: nn.Module, inputs: Any, sae: nn.Module, at: str, target: Any = "predicted", *,
                        method: str = "gradient_x_activation", features: Sequence[int] | None = None,
                        error_term: bool = True) -> Explanation:
    """Attribute a model output to the SAE features at layer ``at`` (see the module docs).

    Parameters
    ----------
    model : nn.Module
        Left exactly as found.
    inputs : tensor or array (batch, ...)
        The model's input (integer token ids are kept as integers).
    sae : SAE
        Trained on layer ``at``'s rows.
    at : str
        The layer whose output is replaced by the SAE's reconstruction (+ the error term).
    target : int, sequence, "predicted" or callable, default "predicted"
        The explained scalar per sample (as for every lumos method), resolved on the model's output.
    method : {"gradient_x_activation", "ablation"}
    features : sequence of int, optional
        The features attributed (default: all; ablation runs one forward pass per feature, so
        give a few).
    error_term : bool, default True
        Keep ``ε`` so that the spliced model computes exactly the model's output.

    Returns
    -------
    Explanation
        ``values`` ``(batch, n)`` one number per attributed feature; ``inputs`` ``(batch, n)`` the
        feature activations summed over positions; ``output`` the explained scalar of the spliced
        model; ``meta``: ``"features"``, ``"error"`` (the error term's gradient × value; 0 without
        it), ``"spliced_output"``, ``"zero_codes_output"`` (gradient × activation only: the output
        with every code 0 and the error term kept; on a model linear in the features
        ``values.sum(1) + zero_codes_output == output``).
    """
    _check_sae(sae)
    method = check_choice(method, "method", ATTRIBUTION_METHODS)
    get_module(model, at, arg="at")
    feats = np.arange(sae.n_features) if features is None else np.asarray(
        [_check_feature(sae, f) for f in features], dtype=np.int64)
    if feats.size == 0:
        raise ValueError("features: give at least one feature")
    dev, dt = model_device(model), model_dtype(model)
    x = inputs if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() else \
        as_tensor(inputs, dev, name="inputs", dtype=dt)
    x = x.to(dev)
    b = len(x)
    state: dict = {}

    def replace(rows: torch.Tensor, ablate: int | None = None) -> torch.Tensor:
        codes = sae.encode(rows.detach())
        err = (rows.detach() - sae.decode(codes)).detach()
        if ablate is None:
            codes = codes.detach().requires_grad_(method == "gradient_x_activation")
            err = err.requires_grad_(method == "gradient_x_activation" and error_term)
            state["codes"], state["err"] = codes, err
        else:
            codes = codes.detach().clone()
            codes[:, ablate] = 0
        recon = sae.decode(codes)
        return (recon + err if error_term else recon).to(rows.dtype)

    with ModelGuard(model), _EvalSAE(sae), frozen_parameters(model):
        model.eval()
        with torch.enable_grad(), splice(model, at, replace):
            out = forward(model, x, name="inputs")
        check_finite(out.detach(), "the spliced model")
        tgt = resolve_target(target, out.detach())
        y = tgt.select(out)
        codes, err = state["codes"], state["err"]
        n_pos = len(codes) // b
        summed = codes.detach().reshape(b, n_pos, -1).sum(1)
        meta: dict = {"target": tgt.description, "at": at, "features": feats.tolist(), "error_term": bool(error_term)}
        if method == "gradient_x_activation":
            wants = [codes] + ([err] if error_term else [])
            grads = torch.autograd.grad(y.sum(), wants, allow_unused=True)
            g_codes = grads[0] if grads[0] is not None else torch.zeros_like(codes)
            values = (g_codes * codes).detach().reshape(b, n_pos, -1).sum(1)[:, torch.as_tensor(feats)]
            if error_term and grads[1] is not None:
                meta["error"] = (grads[1] * err).detach().reshape(b, -1).sum(1).double().cpu().numpy()
            else:
                meta["error"] = np.zeros(b)
            with torch.no_grad(), splice(model, at, lambda r: replace(r, ablate=slice(None))):
                meta["zero_codes_output"] = tgt.select(forward(model, x, name="inputs")).double().cpu().numpy()
        else:
            values = torch.zeros(b, len(feats), dtype=torch.float64)
            meta["error"] = np.zeros(b)
            with torch.no_grad():
                for j, f in enumerate(feats):
                    with splice(model, at, lambda r, f=int(f): replace(r, ablate=f)):
                        o = forward(model, x, name="inputs (a feature ablated)")
                    check_finite(o, f"the model with feature {int(f)} ablated")
                    values[:, j] = (y.detach() - tgt.select(o)).double().cpu()
    y_np = y.detach().double().cpu().numpy()
    meta["spliced_output"] = y_np
    return Explanation(values=values.double().cpu().numpy(),
                       inputs=summed[:, torch.as_tensor(feats)].double().cpu().numpy(),
                       target=tgt.indices, output=y_np, method=f"feature_{method}",
                       params={"at": at, "method": method, "error_term": bool(error_term),
                               "features": None if features is None else feats.tolist()},
                       meta=meta, feature_names=[f"feature {int(f)}" for f in feats],
                       sample_keys=tuple(k for k in ("error", "spliced_output", "zero_codes_output") if k in meta))
