"""Backward rules applied to *operations* (ReLU, linear, convolution, pooling, addition...).

``with rules.apply(model, composite): out = model(x)`` runs the forward pass with each operation's
backward replaced by the rule the composite chooses for it, whether the operation comes from a
module, a functional call or a tensor method, and however often a module is reused.
"""
from .engine import (
    KINDS, Composite, OpCall, Rule, Session, UnsupportedOperationError, apply, classify, propagate,
)
from .relu import DECONV, GUIDED, DeconvReLU, GuidedReLU

__all__ = [
    "apply", "propagate", "classify", "KINDS", "Composite", "Rule", "OpCall", "Session",
    "UnsupportedOperationError", "GUIDED", "DECONV", "GuidedReLU", "DeconvReLU",
]
