"""Example-based explanations: counterfactuals, prototypes and criticisms, influential training
examples, neighbours.

- :func:`counterfactuals`: the smallest changes of a row that give a desired outcome, several and
  diverse, under constraints (immutable features, ranges, monotone directions, categorical and
  integer features), by genetic or random search, nearest real rows (k-d tree), or gradients
  (Wachter et al. 2017) for torch models; returns :class:`Counterfactuals` (table with the changes
  highlighted, validity, proximity, sparsity, diversity, plausibility).
"""
from .counterfactuals import Counterfactuals, counterfactuals

__all__ = ["counterfactuals", "Counterfactuals"]
