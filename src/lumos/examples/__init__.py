"""Example-based explanations: counterfactuals, prototypes and criticisms, influential training
examples, neighbours.

- :func:`counterfactuals`: the smallest changes of a row that give a desired outcome, several and
  diverse, under constraints (immutable features, ranges, monotone directions, categorical and
  integer features), by genetic or random search, nearest real rows (k-d tree), or gradients
  (Wachter et al. 2017) for torch models; returns :class:`Counterfactuals` (table with the changes
  highlighted, validity, proximity, sparsity, diversity, plausibility).
- :func:`prototypes`: MMD-critic prototypes and criticisms (Kim et al. 2016) with the witness
  function, per class or global, in the inputs or any layer's activations.
- :func:`tracin`, :func:`influence_functions`, :func:`self_influence`: influential training
  examples (TracIn over checkpoints, Pruthi et al. 2020, with random projection; influence functions,
  Koh & Liang 2017, exact, LiSSA or Arnoldi); proponents, opponents, suspicious points.
- :func:`neighbours`: nearest training examples in any layer's representation, with distances.
"""
from .counterfactual import Counterfactuals, counterfactuals
from .influence import Influence, influence_functions, per_example_gradients, self_influence, tracin
from .nearest import Neighbours, neighbours
from .mmd_critic import Prototypes, prototypes, witness

__all__ = ["counterfactuals", "Counterfactuals",
           "prototypes", "Prototypes", "witness",
           "tracin", "influence_functions", "self_influence", "per_example_gradients", "Influence",
           "neighbours", "Neighbours"]
