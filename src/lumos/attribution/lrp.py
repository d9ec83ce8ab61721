"""Layer-wise relevance propagation with rules on operations and composites."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..core.registry import register
from ..core.validation import check_choice, check_number
from ..rules.composites import resolve_composite
from ..rules.engine import propagate
from ..rules.lrp import check_bound

__all__ = ["lrp"]


@register("lrp", "propagation",
          "Layer-wise relevance propagation with per-operation rules and composites (Bach et al., 2015)")
def lrp(model: torch.nn.Module, inputs: Any, target: Any = None, *,
        composite: Any = "epsilon_plus", epsilon: float = 1e-6, gamma: float = 0.25,
        low: Any = None, high: Any = None, canonize: bool = True, start: str = "logit",
        batch_size: int | None = None, progress: bool | None = None, forward_args: Any = None,
        at: str | None = None, layer_side: str = "output"):
    """Layer-wise relevance propagation: redistribute the explained logit backwards, layer by
    layer, with a rule per operation.

    Bach et al. (2015), "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
    Layer-Wise Relevance Propagation"; Montavon et al. (2019), "Layer-Wise Relevance Propagation:
    An Overview"; composites after Kohlbrenner et al. (2020), "Towards Best Practice in Explaining
    Neural Network Decisions with LRP".

    The relevance starts as ``output ⊙ d target / d output`` (for a class index: the logit at
    that class, zero elsewhere; the papers' definition, ``start="logit"``) and is passed back
    through every operation of the forward pass,
    whether it comes from a module, a functional call or a reused module: linear, convolution
    and pooling operations use the rule the composite chooses (see :mod:`lumos.rules.lrp`);
    additions (residual connections) split relevance in proportion to their summands; max
    pooling gives it to the winners; activations pass it unchanged. Any other operation on the
    path raises an error naming it.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, not compiled, returning logits (a final softmax is refused).
    inputs : Tensor or ndarray, shape (batch, ...), or a tuple / dict of them
        Several inputs (a model ``model(x1, x2)`` or ``model(a=..., b=...)``) give one values
        array per input; conservation holds over all of them together.
    target : int, sequence of int, "predicted", callable, lumos.Neuron or None
        ``lumos.Neuron("layer", index)`` starts the relevance at a unit: with
        ``start="logit"`` the unit's activation (for a bias-free linear unit ``j``, LRP-0 gives
        ``w_j ⊙ x``).
    composite : str, dict or LRPComposite, default "epsilon_plus"
        A preset (``"epsilon_plus"``, ``"epsilon_gamma_box"``, ``"epsilon_alpha2_beta1"``,
        ``"epsilon_plus_flat"``, ``"epsilon"``, ``"zero"``; transformers: ``"attnlrp"``,
        ``"cp_lrp"``, see :mod:`lumos.rules.transformer`), a mapping from operation kind /
        position / module class / module name to a rule (``{"conv": Gamma(0.25), "linear":
        Epsilon(0.1), "first": ZBox(0, 1)}``, rules from :mod:`lumos.rules.lrp`), or an
        :class:`~lumos.rules.composites.LRPComposite`.
    epsilon : float, default 1e-6
        ε of the ε rule in the presets.
    gamma : float, default 0.25
        γ of ``epsilon_gamma_box``.
    low, high : float or Tensor, optional
        Input bounds of the zᴮ rule in ``epsilon_gamma_box`` (default: each sample's min / max).
    canonize : bool, default True
        Merge batch norms into the preceding convolution / linear operation for the call (the
        model's parameters are never written).
    start : {"logit", "one_hot"}, default "logit"
        The relevance at the output. ``"logit"``: ``output ⊙ d target / d output``, the explained
        logit itself (Bach et al., 2015; Montavon et al., 2019), so the relevance sums to about
        the logit. ``"one_hot"``: ``d target / d output``, the one-hot vector for a class index
        (how Zennit is usually called, ``attributor(x, one_hot)``), so it sums to about 1. Every
        rule is linear in the relevance, so the two differ by the logit's value per sample:
        ``one_hot == logit / output``.
    batch_size : int, optional
        Samples per forward/backward pass (default: 64 samples, fewer for large inputs, sized
        by a memory budget).
    progress : bool, optional
    forward_args : tuple, dict, lumos.Args or None
        Extra arguments of the model that are not explained (a mask, a flag); per-sample ones
        (first axis of batch length) go with their sample in every chunk.
    at : str, optional
        Relevance at this layer's output (or input, ``layer_side="input"``) instead of the
        inputs: the rules apply to the operations after it (the ``"first"`` position is then the
        first weighted operation after the layer) and ``values`` has the activation's shape;
        conservation holds in the layer's space.
    layer_side : {"output", "input"}, default "output"

    Returns
    -------
    Explanation
        ``values``: the relevance of each input element (raw, signed). ``meta``:
        ``"composite"`` and ``"rules"`` (the rule used by each operation, ``"module:kind#call"``),
        ``"layers"`` and per-sample ``"layer_relevance"`` (batch, n_layers): the relevance summed
        at the input of each ruled operation, in forward order (conservation check: with zero
        biases and ε → 0 every column equals the start's sum, ``output`` with
        ``start="logit"``; no columns when the model has no weighted operation), per-sample
        ``"conservation_gap"``: the start's sum − ``values.sum()`` (what biases, stabilisers and
        constants absorbed; under ``composite="attnlrp"`` per-sample ``"absorbed"`` holds the
        share the softmax rule's bias term kept), and ``"batch_norm_merged"``.
    """
    check_choice(start, "start", ("logit", "one_hot"))
    # checked here, whichever composite uses them (NaN would pass ">= 0" and give NaN maps)
    epsilon = check_number(epsilon, "epsilon", low=0)
    gamma = check_number(gamma, "gamma", low=0)
    low, high = check_bound(low, "low"), check_bound(high, "high")
    comp = resolve_composite(composite, epsilon=epsilon, gamma=gamma, low=low, high=high,
                             canonize=canonize)
    if isinstance(model, torch.nn.Module):
        comp.check_names(model)
    p, values, sessions = propagate(model, inputs, target, comp, method="lrp",
                                    start="relevance" if start == "logit" else "gradient",
                                    batch_size=batch_size, progress=progress,
                                    forward_args=forward_args, at=at, layer_side=layer_side)
    passed = sorted(set().union(*(s.state.get("passed", set()) for s in sessions)))
    if passed:
        warnings.warn(
            f"lrp: relevance passed unchanged (rule Pass) through {', '.join(passed)}; LRP rules "
            "are derived for ReLU networks. Map 'activation' in the composite to silence this.",
            stacklevel=2)
    labels, layer_rel = layer_relevance(sessions, len(values))
    total = values.reshape(len(values), -1).sum(1)
    start_total = torch.cat([s.state["start_total"] for s in sessions])
    meta = {
        "composite": comp.name,
        "rules": dict(sessions[0].state.get("rules", {})),
        "layers": labels,
        "batch_norm_merged": list(sessions[0].state.get("folded", [])),
        "passed_ops": passed,
    }
    sample = {"layer_relevance": layer_rel, "conservation_gap": (start_total - total).numpy()}
    if "absorbed" in sessions[0].state:  # AttnLRP's softmax bias term (lumos.rules.transformer)
        sample["absorbed"] = torch.cat([s.state["absorbed"] for s in sessions]).numpy()
    params = {"composite": comp.name if isinstance(composite, str) else comp.describe(),
              "epsilon": epsilon, "gamma": gamma, "canonize": canonize, "start": start}
    if low is not None or high is not None:
        params.update(low=_jsonable(low), high=_jsonable(high))
    return p.explanation(values, "lrp", params, meta=meta, sample_meta=sample)


def layer_relevance(sessions, n: int) -> tuple[list[str], np.ndarray]:
    """Labels (forward order) and the relevance summed at each ruled operation's input, per
    sample: an ``(n, n_layers)`` table (``(n, 0)`` when no operation was ruled, e.g. a model
    that only max-pools)."""
    per: dict[str, list] = {}
    order: dict[str, int] = {}
    for s in sessions:
        for index, label, r_in in s.records:
            per.setdefault(label, []).append(r_in.cpu().numpy())
            order[label] = index
    labels = sorted(per, key=order.get)
    cols = []
    for lab in labels:
        col = np.concatenate(per[lab])
        if len(col) != n:  # an operation not met in every chunk: leave it out of the table
            continue
        cols.append(col)
    if not cols:
        return [], np.zeros((n, 0))
    return labels[:len(cols)], np.stack(cols, axis=1)


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist() if v.numel() <= 16 else f"<tensor {tuple(v.shape)}>"
    return v
