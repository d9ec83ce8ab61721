"""Gradient-based counterfactuals for torch models (Wachter, Mittelstadt & Russell, 2017).

Each restart ``r`` minimises, over the change ``u`` of the numeric mutable features in MAD units
(``z = x + MAD * u``),

    lambda_r * max(0, kappa - margin(z))**2  +  ||w_r * u||

where ``margin`` is the desired outcome's margin (positive when reached, see
:mod:`lumos.examples._model`), ``kappa`` (``margin=``) how far past the boundary the optimisation
aims, the norm is L1 (default: sparse changes, the MAD-L1 distance of Wachter et al.) or L2, and
``w_r`` are feature costs (all 1 for the first restart; drawn around 1 for the others, so that
restarts reach different sparse counterfactuals for the diverse selection). The squared hinge is
smooth, so proximal gradient descent (ISTA: a gradient step, then soft-thresholding, then the
projection onto the feasible intervals) converges to the minimiser, with exact zeros for the
features that do not move. The step is ``1 / (2 lambda ||a||^2)`` with ``a`` the margin's
gradient in MAD units (the inverse Lipschitz constant of the hinge term for a linear margin),
capped at a move of ``max_move`` MAD units per step.

``lambda`` starts where the first feature begins to move and is multiplied by 4 every ``stage``
steps until the restart reaches the desired outcome (Wachter et al. increase it until the
counterfactual is valid); a restart stops when it is valid and its iterate has converged. Its
closest valid iterate and its last one then go through a bisection on the segment from x to
them, to the boundary
(the closest valid point in that direction: for a linear model and the L1 norm the single feature
of largest ``|w_j| MAD_j`` moved exactly to the boundary, the closed form), integer features
are rounded away from x and validity re-checked.

Categorical features are held at x's values by this method (their codes have no gradient); the
genetic search changes them.
"""
from __future__ import annotations

import numpy as np

from ._search import Pool, _evaluate

__all__ = ["gradient_search"]


def _torch_margin(model, outcome, dtype, device):
    import torch

    from ..core.torch_model import check_finite, forward

    def fn(Z: np.ndarray):
        z = torch.tensor(Z, dtype=dtype, device=device, requires_grad=True)
        with torch.enable_grad():
            out = forward(model, z, "counterfactual candidates")
            check_finite(out.detach(), "counterfactual candidates")
            if out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if outcome.kind == "range":
                if out.ndim != 1:
                    raise ValueError("counterfactuals: desired is an output range but the model "
                                     f"returns {out.shape[1]} scores per row")
                m = torch.minimum(out - outcome.lo, outcome.hi - out)
            else:
                others = torch.cat([out[:, :outcome.cls], out[:, outcome.cls + 1:]], 1)
                m = out[:, outcome.cls] - others.max(1).values
            if not m.requires_grad:
                from ..core.torch_model import require_grad_path

                require_grad_path(m)
            (g,) = torch.autograd.grad(m.sum(), z, allow_unused=True)
        if g is None:
            from ..core.torch_model import require_grad_path

            require_grad_path(None)
        return m.detach().cpu().double().numpy(), g.detach().cpu().double().numpy()

    return fn


def gradient_search(model, space, scorer, outcome, pool: Pool, gen: np.random.Generator, *,
                    n_restarts: int, n_iter: int, margin: float, distance: str = "l1",
                    stage: int = 25, max_move: float = 1.0, n_bisect: int = 24) -> np.ndarray:
    """Valid counterfactuals, one per restart that reached the desired outcome (see the module
    docstring). Every model call is counted by ``scorer`` (one row per restart and step)."""
    import torch
    from torch import nn

    from ..core.torch_model import ModelGuard, frozen_parameters, model_device, model_dtype

    if not isinstance(model, nn.Module):
        raise TypeError("method='gradient' needs a torch.nn.Module (it follows the model's "
                        f"gradients); got {type(model).__name__}. For any predict function use "
                        "method='genetic', 'random' or 'kdtree'.")
    layout = space.layout
    if layout.kind == "object":
        raise ValueError("method='gradient': the inputs of a torch model must be numeric; got "
                         "columns of strings")
    base = np.asarray(layout.decode(space.x[None]), dtype=np.float64)[0]  # x as the model sees it
    move = space.mutable & space.numeric
    if not move.any():
        raise ValueError("method='gradient' moves numeric features only (categorical ones are held "
                         "fixed) and every numeric feature is fixed by the constraints; use "
                         "method='genetic' to change categories")
    cols = np.flatnonzero(move)
    mad = space.mad[cols]
    x_enc = space.x
    R = n_restarts
    W = np.ones((R, len(cols)))
    if R > 1:
        W[1:] = np.exp(gen.normal(0.0, 0.7, (R - 1, len(cols))))

    dtype, device = model_dtype(model) or torch.float32, model_device(model)
    fn = _torch_margin(model, outcome, dtype, device)

    def encoded(U):
        Z = np.repeat(x_enc[None], len(U), axis=0)
        Z[:, cols] = x_enc[cols] + mad * U
        return Z

    def actual(Zenc):
        A = np.repeat(base[None], len(Zenc), axis=0)
        A[:, cols] = Zenc[:, cols]
        return A

    V = np.zeros((R, len(cols)))           # v = w * u: the norm is plain in v
    lam = np.full(R, np.nan)
    best = [None] * R                      # the closest valid iterate of each restart
    last = [None] * R                      # its last valid iterate (the optimisation's end)
    best_d = np.full(R, np.inf)
    done = np.zeros(R, bool)
    with ModelGuard(model), frozen_parameters(model):
        for step in range(n_iter):
            act = np.flatnonzero(~done)
            if not len(act) or scorer.room(len(act)) < len(act):
                break
            U = V[act] / W[act]
            Zenc = space.project(encoded(U), round_integers=False)
            U = (Zenc[:, cols] - x_enc[cols]) / mad
            V[act] = U * W[act]
            m, g = fn(actual(Zenc))
            scorer.used += len(act)
            valid = outcome.valid(m)
            pool.best_margin = max(pool.best_margin, float(m.max()))
            if pool.best_row is None or m.max() >= pool.best_margin:
                pool.best_row = Zenc[int(np.argmax(m))].copy()
            d = space.distance(Zenc)
            for i, r in enumerate(act):
                if valid[i]:
                    last[r] = Zenc[i].copy()
                    if d[i] < best_d[r]:
                        best_d[r], best[r] = d[i], Zenc[i].copy()
            a = g[:, cols] * mad / W[act]   # the margin's gradient in v
            norm2 = (a ** 2).sum(1)
            short = np.maximum(margin - m, 0.0)
            first = np.isnan(lam[act])
            if first.any():
                # lambda at which the first feature starts to move, times 1.5
                amax = np.abs(a[first]).max(1)
                lam0 = 1.0 / np.maximum(2.0 * np.maximum(short[first], margin) * amax, 1e-300)
                lam[act[first]] = 1.5 * lam0
            L = lam[act]
            eta = 1.0 / np.maximum(2.0 * L * norm2, 1e-300)
            grad = -2.0 * L[:, None] * short[:, None] * a
            # a smaller step where the move would exceed max_move MAD units (still ISTA)
            move_len = np.abs(eta[:, None] * grad / W[act]).max(1)
            eta = eta * np.minimum(1.0, max_move / np.maximum(move_len, 1e-300))
            Vn = V[act] - eta[:, None] * grad
            if distance == "l1":
                Vn = np.sign(Vn) * np.maximum(np.abs(Vn) - eta[:, None], 0.0)
            else:
                nv = np.linalg.norm(Vn, axis=1)
                Vn = Vn * np.maximum(0.0, 1.0 - eta / np.maximum(nv, 1e-300))[:, None]
            change = np.abs(Vn - V[act]).max(1)
            V[act] = Vn
            # a valid restart stops once its iterate has converged (ISTA's exact zeros reached)
            done[act[valid & (change <= 1e-9 * (1.0 + np.abs(Vn).max(1)))]] = True
            if (step + 1) % stage == 0:
                for r in act:
                    if best[r] is None:
                        lam[r] *= 4.0
    found = [b for b in best + last if b is not None]
    if not found:
        return np.empty((0, len(x_enc)))
    Z = np.array(found)
    Z = _bisect(space, scorer, outcome, pool, Z, n_bisect)
    return _round_outward(space, scorer, outcome, pool, Z)


def _bisect(space, scorer, outcome, pool, Z, n_bisect):
    """The valid point closest to x on each segment x -> z (bisection on t in [0, 1])."""
    x = space.x
    lo = np.zeros(len(Z))
    hi = np.ones(len(Z))
    for _ in range(n_bisect):
        t = (lo + hi) / 2
        T = space.project(x + t[:, None] * (Z - x), round_integers=False)
        k = scorer.room(len(T))
        if k < len(T):
            break
        m = outcome.margin(scorer.scores(T, "counterfactual line search"))
        ok = outcome.valid(m)
        pool.add(T, m, ok)
        hi = np.where(ok, t, hi)
        lo = np.where(ok, lo, t)
    return space.project(x + hi[:, None] * (Z - x), round_integers=False)


def _round_outward(space, scorer, outcome, pool, Z):
    """Integer features rounded away from x (then projected); rows that stop being valid are
    dropped (their validity is re-checked by the model)."""
    Z = Z.copy()
    ints = space.integer
    if ints.any():
        up = Z[:, ints] > space.x[ints]
        Z[:, ints] = np.where(up, np.ceil(Z[:, ints]), np.floor(Z[:, ints]))
    Z = space.project(Z)
    Zv, m = _evaluate(scorer, outcome, pool, Z, "rounded counterfactuals")
    return Zv[outcome.valid(m)]
