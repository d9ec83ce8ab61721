"""Shapley values of any model: exact enumeration, KernelSHAP and permutation sampling.

All three explain the interventional game ``v(S) = E_b f(x_S, b_{not S})`` given by a masker
(background rows for tables, a fill for superpixels, deletion for words), carry the base value
``v(∅)`` as ``baseline_output`` so that ``baseline_output + values.sum() == output`` can be
checked, and record the number of model evaluations (and standard errors where estimated) in
``meta``.
"""
