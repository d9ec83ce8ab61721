"""Global effects: what a model learned about a feature across the data.

- :func:`partial_dependence`: partial dependence of one feature or a pair, with ICE, centred and
  derivative ICE curves (Friedman 2001; Goldstein et al. 2015).
- :func:`ale`: accumulated local effects, first order (numeric and categorical) and second order,
  with bootstrap bands (Apley & Zhu 2020).
- :func:`permutation_importance`: with repeats, any metric, grouped columns (Breiman 2001;
  Fisher, Rudin & Dominici 2019).
- :func:`h_statistic`: Friedman's pairwise and total interaction strength (Friedman & Popescu 2008).

Every function works with any black-box model (called through :class:`lumos.core.blackbox.BlackBox`
on batches of rows) and returns a result dataclass with the numbers, ``feature_names``,
``to_frame()`` and ``plot(ax=...)``. These results are global, not per-sample, so they are not
:class:`lumos.Explanation` objects.
"""
from .accumulated import ALE, ale
from .importance import PermutationImportance, permutation_importance
from .interactions import HStatistic, h_statistic
from .pdp_ice import PartialDependence, partial_dependence

__all__ = [
    "partial_dependence", "PartialDependence", "ale", "ALE", "permutation_importance",
    "PermutationImportance", "h_statistic", "HStatistic",
]
