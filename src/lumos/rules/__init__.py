"""Backward rules applied to *operations* (ReLU, linear, convolution, pooling, addition...).

``with rules.apply(model, composite): out = model(x)`` runs the forward pass with each operation's
backward replaced by the rule the composite chooses for it, whether the operation comes from a
module, a functional call or a tensor method, and however often a module is reused.

- :mod:`lumos.rules.engine`: the mode, operation kinds, :class:`Composite`, :func:`apply`.
- :mod:`lumos.rules.relu`: guided backprop and DeconvNet (``GUIDED``, ``DECONV``).
- :mod:`lumos.rules.lrp`: LRP rules (``Zero``, ``Epsilon``, ``Gamma``, ``AlphaBeta``, ``ZPlus``,
  ``ZBox``, ``Flat``, ``WSquare``, ``Pass``, ``AddRule``, ``ProductRule``).
- :mod:`lumos.rules.composites`: :class:`LRPComposite` and the presets.
- :mod:`lumos.rules.canonizers`: batch norm merged into the preceding operation.
- :mod:`lumos.rules.deeplift`: the DeepLIFT Rescale rules.
- :mod:`lumos.rules.transformer`: softmax, layer / RMS norm and bilinear-product rules (AttnLRP,
  CP-LRP) and their composites.
"""
from .composites import (
    PRESETS, LRPComposite, epsilon_alpha2_beta1, epsilon_gamma_box, epsilon_plus,
    epsilon_plus_flat,
)
from .deeplift import DeepLiftComposite
from .engine import (
    KINDS, Composite, OpCall, Rule, RuleParameterError, Session, UnsupportedOperationError, apply,
    classify, propagate,
)
from .lrp import (
    AddRule, AlphaBeta, Epsilon, Flat, Gamma, Pass, ProductRule, WSquare, ZBox, Zero, ZPlus,
)
from .relu import DECONV, GUIDED, DeconvReLU, GuidedReLU
from .transformer import TransformerComposite, attnlrp, cp_lrp

__all__ = [
    "apply", "propagate", "classify", "KINDS", "Composite", "Rule", "OpCall", "Session",
    "UnsupportedOperationError", "RuleParameterError", "GUIDED", "DECONV", "GuidedReLU",
    "DeconvReLU", "Zero", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "Flat", "WSquare",
    "Pass", "AddRule", "ProductRule", "LRPComposite", "PRESETS", "epsilon_plus",
    "epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon_plus_flat", "DeepLiftComposite",
    "TransformerComposite", "attnlrp", "cp_lrp",
]
