"""Exact Shapley interaction values by enumerating every coalition.

Grabisch & Roubens (1999), "An axiomatic approach to the concept of interaction among players in
cooperative games" (the Shapley interaction index), in the form of Lundberg et al. (2020), "From
local explanations to global understanding with explainable AI for trees", which shap's
``shap_interaction_values`` returns:

    Φ_ij = Σ_{S ⊆ N∖{i,j}} |S|! (M − |S| − 2)! / (2 (M − 1)!) ∇_ij(S),   i ≠ j,
    ∇_ij(S) = v(S ∪ {i,j}) − v(S ∪ {i}) − v(S ∪ {j}) + v(S),

so the interaction index is split in half between ``Φ_ij`` and ``Φ_ji``, and the diagonal holds
the main effects ``Φ_ii = φ_i − Σ_{j≠i} Φ_ij``: each row sums to the Shapley value ``φ_i`` and the
whole matrix to ``f(x) − v(∅)``.
"""
from __future__ import annotations

from math import lgamma, exp
from typing import Any

import numpy as np

from ...core.registry import register
from ..maskers import Masker
from ._common import open_game
from .exact import coalition_tables, shapley_from_table

__all__ = ["exact_shapley_interactions", "interactions_from_table"]


def interactions_from_table(v: np.ndarray, M: int) -> np.ndarray:
    """Shapley interaction values from the value of every coalition.

    Parameters
    ----------
    v : array (..., 2**M)
        ``v[..., c]``: the value of the coalition whose bit ``j`` of ``c`` is feature ``j``.

    Returns
    -------
    array (..., M, M), symmetric; off the diagonal half the Shapley interaction index, on it the
    main effects, so that ``out.sum(-1)`` are the Shapley values.
    """
    codes = np.arange(1 << M, dtype=np.int64)
    size = np.zeros(1 << M, dtype=np.int64)
    for j in range(M):
        size += (codes >> j) & 1
    # weight of ∇_ij(S) with |S| = s, halved: s! (M - s - 2)! / (2 (M - 1)!)
    w = np.array([exp(lgamma(s + 1) + lgamma(M - s - 1) - lgamma(M)) / 2 for s in range(max(M - 1, 1))])
    out = np.zeros(v.shape[:-1] + (M, M))
    for i in range(M):
        for j in range(i + 1, M):
            S = codes[((codes >> i) & 1 == 0) & ((codes >> j) & 1 == 0)]
            bi, bj = 1 << i, 1 << j
            nabla = v[..., S | bi | bj] - v[..., S | bi] - v[..., S | bj] + v[..., S]
            out[..., i, j] = out[..., j, i] = nabla @ w[size[S]]
    phi = shapley_from_table(v, M)
    idx = np.arange(M)
    out[..., idx, idx] = phi - out.sum(-1)
    return out


@register("exact_shapley_interactions", "shapley",
          "Exact Shapley interaction values (pairs; main effects on the diagonal) by enumeration",
          models="any")
def exact_shapley_interactions(model: Any, inputs: Any, target: Any = None, *,
                               background: Any = None, background_size: int | None = None,
                               masker: Masker | None = None, groups: Any = None,
                               link: str = "identity", max_features: int = 12,
                               output: str = "auto", batch_size: int | None = None,
                               progress: bool | None = None, forward_args: Any = None):
    """Exact pairwise Shapley interaction values of a table's features (or column groups).

    The game is exact_shapley's, built by the same set-up (:func:`~._common.open_game`):
    ``v(S) = link(E_b f(x_S, b_not S))`` over the background, with the user's column ``groups``
    as players and columns equal to every background row as null players (their rows and
    columns are exactly 0). Every one of the ``2**M`` coalitions is evaluated once
    (``(2**M − 2) B`` model rows per row explained, B background rows) and the interactions
    follow by vectorised sums (see the module docstring for the definition, the one of shap's
    ``shap_interaction_values``).

    Parameters
    ----------
    model, inputs, target, background, background_size, masker, groups, link, output, batch_size, progress, forward_args
        As for :func:`~lumos.agnostic.shapley.exact.exact_shapley` (tables only). With
        ``groups`` the matrix is over groups (its row sums are exact_shapley's group values);
        with ``link="logit"`` it splits the log-odds ``logit(f(x)) − logit(v(∅))``.
    max_features : int, default 12
        Refuse more players than this: the work is ``2**M`` coalitions and ``M² 2**M`` sums.

    Returns
    -------
    Explanation
        ``values`` (n, M, M), symmetric; ``values.sum(2)`` are the Shapley values
        (``meta["shapley_values"]``) and ``baseline_output + values.sum((1, 2)) == output``.
        ``feature_names`` name both axes (the groups' names with ``groups``). For a model of
        several inputs the matrix is over the columns of all inputs together, named
        ``"<input>:<column>"`` (one array: pairs cross inputs).
    """
    from ...core.validation import check_number

    max_features = check_number(max_features, "max_features", low=2, integer=True)
    game = open_game("exact_shapley_interactions", model, inputs, target, masker, background,
                     output, batch_size, progress, groups, link, background_size, forward_args)
    if game.data.modality != "tabular":
        raise ValueError(f"inputs: exact_shapley_interactions explains the columns of a table; "
                         f"got {game.data.modality} inputs (use exact_shapley for the values)")
    top = int(game.M.max())
    if top > max_features:
        raise ValueError(
            f"inputs: exact_shapley_interactions enumerates 2**M coalitions and these inputs have "
            f"M = {top} players (max_features={max_features}); group features or raise max_features")
    P = game.max_players
    values = np.zeros((game.n, P, P))
    for M, rows, table in coalition_tables(game, "exact_shapley_interactions"):
        values[rows, :M, :M] = interactions_from_table(table, M)
    return game.explanation(
        values, "exact_shapley_interactions",
        {"max_features": max_features, "output": output, "link": link,
         "background_size": background_size, "groups": groups, "forward_args": forward_args},
        baseline=game.empty_value(), meta={"interactions": True},
        sample_meta={"n_coalitions": np.maximum((1 << game.M) - 2, 0)},
        feature_meta={"shapley_values": values.sum(2)},
    )
