"""Exact Shapley values by enumerating every coalition (Shapley, 1953)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.registry import register
from ...core.validation import check_number
from ..maskers import Masker
from ._common import open_game, shapley_weights

if TYPE_CHECKING:
    from .._game import Game

__all__ = ["exact_shapley", "shapley_from_table", "coalition_tables"]

# Coalitions per value-function call: bounds the memory of the mask matrix.
_CHUNK = 1 << 16


def shapley_from_table(v: np.ndarray, M: int) -> np.ndarray:
    """Shapley values from the value of every coalition.

    Parameters
    ----------
    v : array (..., 2**M)
        ``v[..., c]`` is the value of the coalition whose bit ``j`` of ``c`` says whether
        feature ``j`` is in it (``c = 0`` the empty coalition, ``2**M - 1`` all features).

    Returns
    -------
    phi : array (..., M), ``phi_j = sum_{S without j} w(|S|) (v(S ∪ j) - v(S))``
        computed as differences, so a feature the model ignores gets exactly 0.
    """
    codes = np.arange(1 << M, dtype=np.int64)
    size = np.zeros(1 << M, dtype=np.int64)
    for j in range(M):
        size += (codes >> j) & 1
    w = shapley_weights(M)
    phi = np.empty(v.shape[:-1] + (M,))
    for j in range(M):
        without = codes[((codes >> j) & 1) == 0]
        diff = v[..., without | (1 << j)] - v[..., without]
        phi[..., j] = diff @ w[size[without]]
    return phi


def coalition_tables(game: Game, desc: str):
    """The value of every coalition, per number of features ``M``: yields ``(M, rows, table)``
    with ``table[k, c]`` the value of coalition ``c`` (bit ``j`` = feature ``j`` kept) of sample
    ``rows[k]``; the model sees large batches of coalitions."""
    base, full = game.empty_value(), game.full_value()
    Mmax = game.data.max_features
    for M in np.unique(game.M):
        M = int(M)
        rows = np.flatnonzero(game.M == M)
        table = np.empty((len(rows), 1 << M))
        table[:, 0] = base[rows]
        table[:, -1] = full[rows]
        inner = np.arange(1, (1 << M) - 1, dtype=np.int64)
        bits = np.arange(M, dtype=np.int64)
        for start in range(0, len(inner), _CHUNK):
            codes = inner[start:start + _CHUNK]
            Z = np.zeros((len(codes), Mmax), bool)
            Z[:, :M] = ((codes[:, None] >> bits) & 1).astype(bool)
            r = np.repeat(rows, len(codes))
            v = game.value(r, np.tile(Z, (len(rows), 1)), desc=desc)
            table[:, codes] = v.reshape(len(rows), len(codes))
        yield M, rows, table


@register("exact_shapley", "shapley", "Exact Shapley values by enumerating all 2^M coalitions",
          models="any")
def exact_shapley(model: Any, inputs: Any, target: Any = None, *, background: Any = None,
                  background_size: int | None = None, masker: Masker | None = None,
                  groups: Any = None, link: str = "identity", max_features: int = 20,
                  output: str = "auto", batch_size: int | None = None,
                  progress: bool | None = None, forward_args: Any = None):
    """Exact Shapley values of the masker's game, by evaluating all ``2**M`` coalitions.

    Shapley (1953), "A Value for n-Person Games"; the game is ``v(S) = E_b f(x_S, b_{not S})``
    over the background (Lundberg & Lee, 2017). Each explained sample costs ``(2**M - 2) * B``
    model rows (B background rows), evaluated in large batches; the values are then a vectorised
    weighted sum of marginal contributions, exact up to floating point: efficiency
    ``base + sum(phi) = f(x)``, zero for features the model ignores, equal values for
    symmetric features.

    Parameters
    ----------
    model, inputs, target, background, background_size, masker, groups, link, output, batch_size, progress, forward_args
        As for :func:`~lumos.agnostic.shapley.kernel.kernel_shap` (several inputs included). With the whole background
        (the default) the values are exact for the background passed.
    max_features : int, default 20
        Refuse more players (features or groups) than this (2**20 coalitions per sample is
        already a million).

    Returns
    -------
    Explanation
        ``values`` (n, M) (one array per input for several inputs), ``baseline_output`` the base
        value, ``meta["n_evals"]`` (n,).
    """
    max_features = check_number(max_features, "max_features", low=1, integer=True)
    game = open_game("exact_shapley", model, inputs, target, masker, background, output,
                     batch_size, progress, groups, link, background_size, forward_args)
    top = int(game.M.max())
    if top > max_features:
        raise ValueError(
            f"inputs: exact_shapley enumerates 2**M coalitions and these inputs have M = {top} "
            f"features (max_features={max_features}); use kernel_shap or permutation_shap, group "
            "features (fewer superpixels), or raise max_features"
        )
    base = game.empty_value()
    n, Mmax = game.n, game.max_players
    phi = np.zeros((n, Mmax))
    for M, rows, table in coalition_tables(game, "exact_shapley"):
        phi[rows, :M] = shapley_from_table(table, M)
    return game.explanation(
        phi, "exact_shapley", {"max_features": max_features, "output": output, "link": link,
                               "background_size": background_size, "groups": groups,
                               "forward_args": forward_args},
        baseline=base,
        sample_meta={"n_coalitions": np.maximum((1 << game.M) - 2, 0)},
    )
