"""Permutation sampling of Shapley values with antithetic (reversed) permutations."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ...core.registry import register
from ..maskers import Masker
from ._common import start_estimate, stop_ratio

__all__ = ["permutation_shap"]


@register("permutation_shap", "shapley",
          "Shapley values from antithetic permutations (exact for pairwise interactions)",
          models="any")
def permutation_shap(model: Any, inputs: Any, target: Any = None, *, background: Any = None,
                     background_size: int | None = None, masker: Masker | None = None,
                     groups: Any = None, link: str = "identity", budget: int | None = None,
                     tol: float = 0.01, max_budget: int = 20_000, seed: int | None = 0,
                     output: str = "auto", batch_size: int | None = None,
                     progress: bool | None = None, forward_args: Any = None):
    """Shapley values as the mean marginal contribution over sampled feature orderings.

    Castro, Gómez & Tejada (2009), "Polynomial calculation of the Shapley value based on
    sampling"; antithetic sampling as in Mitchell, Cooper, Frank & Holmes (2022), "Sampling
    Permutations for Shapley Value Estimation": every permutation is paired with its reverse.
    One pair is *exact* for a model with at most pairwise interactions (feature ``j`` meets each
    partner once before and once after it). Each permutation is a chain of coalitions, so
    efficiency ``base + sum(phi) = f(x)`` holds exactly for any number of permutations. The
    standard error is the spread of the pair means; unless a ``budget`` is given, pairs are added
    until ``max(se) / (max(phi) - min(phi)) < tol`` and the last round moved no value by more
    than ``3 tol`` of that range.

    Parameters
    ----------
    model, inputs, target, background, background_size, masker, groups, link, output, batch_size, progress, seed, forward_args
        As for :func:`~lumos.agnostic.shapley.kernel.kernel_shap` (several inputs included).
    budget : int, optional
        Coalitions per sample; one antithetic pair costs ``2 (M - 1)``. At least one pair is
        evaluated. ``None``: automatic stop (at least 8 pairs, for a standard error).
    tol, max_budget
        Automatic stop rule and its cap, as for kernel_shap.

    Returns
    -------
    Explanation
        ``values`` (n, M), ``baseline_output``, ``meta["stderr"]`` (NaN with a single pair),
        ``meta["n_permutations"]``, ``meta["n_evals"]`` (n,).
    """
    game, budget, max_budget, base, full, gens = start_estimate(
        "permutation_shap", model, inputs, target, masker, background, output, batch_size, progress,
        budget, tol, max_budget, seed, groups, link, background_size, forward_args)
    n, Mmax = game.n, game.max_players
    cost = np.maximum(2 * (game.M - 1), 1)
    if budget is not None:
        pairs_wanted = np.maximum(1, budget // cost)
    else:
        # at least 8 pairs before a standard error is trusted: with fewer, all pairs can agree
        # by chance (one ordering class of three interacting features has probability 1/3)
        pairs_wanted = np.maximum(8, -(-64 // cost))
    sums = [np.zeros((0, int(M))) for M in game.M]  # per row: one row of pair means per pair
    phi = np.zeros((n, Mmax))
    se = np.zeros((n, Mmax))
    ratio = np.full(n, np.inf)
    rounds = np.zeros(n, np.int64)
    done = game.M <= 1  # at most one player: efficiency alone gives the value
    for i in np.flatnonzero(done):
        phi[i, : game.M[i]] = (full[i] - base[i])
        ratio[i] = 0.0
    while True:
        active = np.flatnonzero(~done)
        if len(active) == 0:
            break
        rows, Zs, plan = [], [], []
        for i in active:
            M = int(game.M[i])
            k = int(pairs_wanted[i] - len(sums[i]))
            perms = np.argsort(gens[i].random((k, M)), axis=1)
            perms = np.concatenate([perms, perms[:, ::-1]])  # antithetic partners
            rank = np.argsort(perms, axis=1)                  # position of each feature
            # coalition t of a permutation holds its first t features, t = 1..M-1
            t = np.arange(1, M)
            Z = np.zeros((2 * k, M - 1, Mmax), bool)
            Z[..., :M] = rank[:, None, :] < t[None, :, None]
            Zs.append(Z.reshape(-1, Mmax))
            rows.append(np.full(2 * k * (M - 1), i))
            plan.append((i, k, perms))
        Z = np.concatenate(Zs)
        r = np.concatenate(rows)
        v = game.value(r, Z, desc="permutation_shap")
        pos = 0
        for i, k, perms in plan:
            M = int(game.M[i])
            chain = np.empty((2 * k, M + 1))
            chain[:, 0] = base[i]
            chain[:, -1] = full[i]
            chain[:, 1:-1] = v[pos:pos + 2 * k * (M - 1)].reshape(2 * k, M - 1)
            pos += 2 * k * (M - 1)
            contrib = np.empty((2 * k, M))
            np.put_along_axis(contrib, perms, np.diff(chain, axis=1), axis=1)
            sums[i] = np.concatenate([sums[i], (contrib[:k] + contrib[k:]) / 2])
            P = len(sums[i])
            new = sums[i].mean(0)
            change = stop_ratio(new, np.abs(new - phi[i, :M])) if rounds[i] else np.inf
            phi[i, :M] = new
            se[i, :M] = sums[i].std(0, ddof=1) / np.sqrt(P) if P > 1 else np.nan
            ratio[i] = stop_ratio(phi[i, :M], se[i, :M]) if P > 1 else np.inf
            rounds[i] += 1
            used = P * cost[i]
            # as kernel_shap: a small standard error must survive one more round (a few pairs
            # can agree by chance when only some orderings of interacting features were drawn)
            settled = ratio[i] < tol and change < 3 * tol
            if budget is not None or M <= 1 or settled or used >= max_budget:
                done[i] = True
            else:
                grow = (ratio[i] / tol) ** 2 * 1.2 if np.isfinite(ratio[i]) else 2.0
                target_pairs = int(P * min(4.0, max(1.5, grow)))
                pairs_wanted[i] = max(P + 1, min(target_pairs, max_budget // cost[i]))
    n_perm = np.array([2 * len(s) for s in sums])
    converged = (ratio < tol) & ((rounds > 1) | (budget is not None) | (game.M <= 1))
    if budget is None and not converged.all():
        warnings.warn(
            f"permutation_shap: {int((~converged).sum())} of {n} samples did not reach tol={tol} "
            f"within max_budget={max_budget} coalitions; raise max_budget or tol", stacklevel=2)
    return game.explanation(
        phi, "permutation_shap",
        {"budget": budget, "tol": tol, "max_budget": max_budget, "seed": seed, "output": output,
         "link": link, "background_size": background_size, "groups": groups,
         "forward_args": forward_args},
        baseline=base,
        sample_meta={"n_permutations": n_perm, "n_coalitions": n_perm // 2 * cost,
                     "converged": converged, "stop_ratio": ratio},
        feature_meta={"stderr": se},
    )
