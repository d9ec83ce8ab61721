"""LRP composites: which rule applies to which operation.

A composite maps operations to rules by (in this order of precedence) module name (dotted name,
glob patterns allowed), module class, position (``"first"``: the first linear/convolution
operation of the forward pass; ``"dense"``: every linear / matrix-product operation) and operation
kind (``"conv"``, ``"linear"``, ``"avg_pool"``, ``"batch_norm"``, ``"add"`` ...). Names, classes
and positions choose among the rules of *weighted* operations (linear, convolution, batch norm,
pooling, sums); additions, products and activations follow their kind.

Presets (Kohlbrenner et al., 2020, "Towards Best Practice in Explaining Neural Network
Decisions with LRP"; Montavon et al., 2019):

- ``epsilon_plus``: z⁺ on convolutions, ε on dense layers.
- ``epsilon_gamma_box``: zᴮ on the first layer, γ on convolutions, ε on dense layers.
- ``epsilon_alpha2_beta1``: α2β1 on convolutions, ε on dense layers.
- ``epsilon_plus_flat``: flat on the first layer, z⁺ on convolutions, ε on dense layers.
- ``epsilon``: ε everywhere; ``zero``: LRP-0 everywhere (equals gradient × input on a ReLU
  network without biases).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Mapping

from torch import nn

from .canonizers import FoldBatchNorm, track_uses
from .engine import Composite, OpCall, Rule
from .lrp import (
    AddRule, AlphaBeta, Epsilon, Flat, Gamma, LRPRule, Pass, ProductRule, ZBox, Zero, ZPlus,
)

__all__ = ["LRPComposite", "PRESETS", "resolve_composite", "epsilon_plus", "epsilon_gamma_box",
           "epsilon_alpha2_beta1", "epsilon_plus_flat", "epsilon", "zero"]

WEIGHTED = ("linear", "conv", "conv_transpose", "matmul", "batch_norm", "avg_pool", "sum")
_KINDS = WEIGHTED + ("add", "sub", "mul", "div", "neg", "relu", "activation", "max_pool")
_POSITIONS = ("first", "dense")


class LRPComposite(Composite):
    """Rules for LRP, chosen per operation.

    Parameters
    ----------
    mapping : dict, optional
        Keys: an operation kind (``"conv"``, ``"linear"``, ``"conv_transpose"``, ``"matmul"``,
        ``"batch_norm"``, ``"avg_pool"``, ``"sum"``, ``"add"``, ``"sub"``, ``"mul"``,
        ``"activation"``, ``"relu"``, ``"max_pool"``), a position (``"first"``, ``"dense"``), a
        module class (``nn.Conv2d``) or a module name (``"features.0"``, ``"layer*.conv1"``).
        Values: a rule (``Epsilon()``, ``ZPlus()``, ``Gamma(0.25)``, ``AlphaBeta(2, 1)``,
        ``ZBox(0, 1)``, ``Flat()``, ``WSquare()``, ``Zero()``, ``Pass()``) or ``None`` (plain
        gradient, for ``max_pool``: the winner takes all).
        Kinds not given use the defaults: ε (1e-6) on weighted operations, proportional splitting
        on additions, relevance passed unchanged through activations and constant scalings,
        winner-takes-all through max pooling.
    canonize : bool, default True
        Merge each batch norm into the convolution / linear operation before it (see
        :mod:`lumos.rules.canonizers`).
    name : str
    """

    def __init__(self, mapping: Mapping[Any, Rule | None] | None = None, *, canonize: bool = True,
                 name: str = "custom"):
        super().__init__({}, strict=True, needs_names=True, name=name)
        self.canonize = bool(canonize)
        kinds: dict[str, Rule | None] = {k: Epsilon() for k in WEIGHTED}
        default_pass = Pass()
        kinds.update({"add": AddRule(), "sub": AddRule(), "mul": ProductRule(), "div": Pass(),
                      "neg": Pass(), "relu": Pass(), "activation": default_pass, "max_pool": None})
        self.positions: dict[str, Rule] = {}
        self.names: list[tuple[str, Rule]] = []
        self.classes: list[tuple[type, Rule]] = []
        if mapping is not None and not isinstance(mapping, Mapping):
            raise TypeError(f"composite mapping must be a dict; got {type(mapping).__name__}")
        for key, rule in (mapping or {}).items():
            if rule is not None and not isinstance(rule, Rule):
                raise TypeError(f"composite[{key!r}] must be a lumos rule (e.g. Epsilon()); "
                                f"got {type(rule).__name__}")
            if isinstance(key, type) and issubclass(key, nn.Module):
                self.classes.append((key, rule))
            elif key in _POSITIONS:
                self.positions[key] = rule
            elif key in _KINDS:
                if key in ("add", "sub") and isinstance(rule, Epsilon):
                    rule = AddRule(rule.epsilon)
                kinds[key] = rule
            elif isinstance(key, str):
                self.names.append((key, rule))
            else:
                raise TypeError(f"composite key {key!r}: expected an operation kind, 'first', "
                                "'dense', a module class or a module name")
        self.rules = kinds
        self._default_pass = default_pass
        self._fold = FoldBatchNorm(kinds["batch_norm"])

    def check_names(self, model: nn.Module) -> None:
        """Every module-name key must match a module of ``model``."""
        names = [n for n, _ in model.named_modules()]
        for pat, _ in self.names:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise ValueError(
                    f"composite: no module of the model matches the name {pat!r} (keys that are "
                    f"not operation kinds {sorted(_KINDS)} or positions {list(_POSITIONS)} are "
                    "module names; see lumos.layers(model))"
                )

    def rule_for(self, call: OpCall) -> Rule | None:
        rule = self._choose(call)
        if call.kind == "activation" and rule is self._default_pass and call.session is not None:
            # a safe default, but not a derived rule: lrp() warns with the names
            call.session.state.setdefault("passed", set()).add(call.name)
        if call.session is not None and isinstance(rule, (LRPRule, AddRule)):
            call.session.state.setdefault("rules", {})[f"{call.module_name or '<root>'}:"
                                                       f"{call.kind}#{call.index}"] = repr(rule)
        return rule

    def _choose(self, call: OpCall) -> Rule | None:
        k = call.kind
        if k == "batch_norm" and self.canonize:
            return self._fold
        if k in WEIGHTED:
            for pat, rule in self.names:
                if fnmatch.fnmatchcase(call.module_name, pat):
                    return rule
            for cls, rule in self.classes:
                if isinstance(call.module, cls):
                    return rule
            if call.first and "first" in self.positions:
                return self.positions["first"]
            if k in ("linear", "matmul") and "dense" in self.positions:
                return self.positions["dense"]
        return self.rules.get(k)

    def unsupported(self, call: OpCall) -> str | None:
        if call.kind == "softmax":
            return ("LRP explains a logit: the model applies a softmax on the way to the "
                    "output; pass the model without it (explain the logits); for a softmax "
                    "inside the model (attention) use composite='attnlrp' or 'cp_lrp'")
        if call.kind == "norm":
            return ("layer/group/instance normalisation divides by an input-dependent statistic "
                    "and has no rule in this composite (layer norm and RMS norm: "
                    "composite='attnlrp' or 'cp_lrp')")
        return None

    def observe(self, session, args, kwargs) -> None:
        if self.canonize:
            track_uses(session, args, kwargs)

    def describe(self) -> dict:
        """The mapping, as strings (for Explanation.params/meta)."""
        out = {k: repr(v) for k, v in self.rules.items() if k in WEIGHTED}
        out.update({p: repr(v) for p, v in self.positions.items()})
        out.update({getattr(c, "__name__", str(c)): repr(v) for c, v in self.classes})
        out.update({n: repr(v) for n, v in self.names})
        return out

    def __repr__(self) -> str:
        return f"LRPComposite({self.name!r}, canonize={self.canonize})"


def epsilon_plus(epsilon: float = 1e-6, canonize: bool = True) -> LRPComposite:
    """z⁺ on convolutions, ε on dense layers."""
    return LRPComposite({"conv": ZPlus(), "conv_transpose": ZPlus(), "linear": Epsilon(epsilon),
                         "matmul": Epsilon(epsilon)}, canonize=canonize, name="epsilon_plus")


def epsilon_plus_flat(epsilon: float = 1e-6, canonize: bool = True) -> LRPComposite:
    """Flat on the first layer, z⁺ on convolutions, ε on dense layers."""
    return LRPComposite({"first": Flat(), "conv": ZPlus(), "conv_transpose": ZPlus(),
                         "linear": Epsilon(epsilon), "matmul": Epsilon(epsilon)},
                        canonize=canonize, name="epsilon_plus_flat")


def epsilon_gamma_box(low: Any = None, high: Any = None, gamma: float = 0.25,
                      epsilon: float = 1e-6, canonize: bool = True) -> LRPComposite:
    """zᴮ (bounds ``low``/``high``) on the first layer, γ on convolutions, ε on dense layers."""
    return LRPComposite({"first": ZBox(low, high), "conv": Gamma(gamma),
                         "conv_transpose": Gamma(gamma), "linear": Epsilon(epsilon),
                         "matmul": Epsilon(epsilon)}, canonize=canonize, name="epsilon_gamma_box")


def epsilon_alpha2_beta1(epsilon: float = 1e-6, canonize: bool = True) -> LRPComposite:
    """α2β1 on convolutions, ε on dense layers."""
    return LRPComposite({"conv": AlphaBeta(2, 1), "conv_transpose": AlphaBeta(2, 1),
                         "linear": Epsilon(epsilon), "matmul": Epsilon(epsilon)},
                        canonize=canonize, name="epsilon_alpha2_beta1")


def epsilon(epsilon: float = 1e-6, canonize: bool = True) -> LRPComposite:  # noqa: F811
    """ε on every weighted operation and on additions."""
    m: dict = {k: Epsilon(epsilon) for k in WEIGHTED}
    m.update(add=AddRule(epsilon), sub=AddRule(epsilon))
    return LRPComposite(m, canonize=canonize, name="epsilon")


def zero(canonize: bool = True) -> LRPComposite:
    """LRP-0 on every weighted operation and unstabilised proportional additions."""
    m: dict = {k: Zero() for k in WEIGHTED}
    m.update(add=AddRule(0.0), sub=AddRule(0.0))
    return LRPComposite(m, canonize=canonize, name="zero")


PRESETS = {
    "epsilon_plus": epsilon_plus, "epsilon_gamma_box": epsilon_gamma_box,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1, "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon": epsilon, "zero": zero,
}


def resolve_composite(composite: Any, *, epsilon: float = 1e-6, gamma: float = 0.25,
                      low: Any = None, high: Any = None, canonize: bool = True) -> LRPComposite:
    """A preset name, a mapping or an :class:`LRPComposite` -> :class:`LRPComposite`."""
    if isinstance(composite, LRPComposite):
        return composite
    if isinstance(composite, str):
        key = composite.strip().lower().replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"composite: unknown preset {composite!r}; presets: {sorted(PRESETS)} "
                             "(or pass a dict mapping operations to rules)")
        if key == "epsilon_gamma_box":
            return epsilon_gamma_box(low, high, gamma, epsilon, canonize)
        if key == "zero":
            return zero(canonize)
        return PRESETS[key](epsilon, canonize)
    if isinstance(composite, Mapping):
        return LRPComposite(composite, canonize=canonize)
    raise TypeError(f"composite must be a preset name, a dict or an LRPComposite; got "
                    f"{type(composite).__name__}")
