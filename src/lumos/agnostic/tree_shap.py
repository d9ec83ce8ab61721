"""TreeSHAP: exact Shapley values of tree ensembles, path-dependent or interventional.

Lundberg, Erion & Lee (2018), "Consistent Individualized Feature Attribution for Tree Ensembles"
(path-dependent TreeSHAP, Algorithm 2) and Lundberg et al. (2020), "From local explanations to
global understanding with explainable AI for trees" (interventional TreeSHAP against a background).

The model parsers live in :mod:`lumos.agnostic.trees` (one module per library).

How it is computed (pure numpy, no compiled code)
-------------------------------------------------
Every leaf ``l`` of the ensemble is one *path*: its value ``v_l`` and, for each distinct feature
``j`` split on the way from the root (repeated splits on a feature are merged into one interval),
the *zero fraction* ``z_j`` (the share of training cover that follows the path at the splits on
``j``) and, for an explained row ``x``, the *one fraction* ``o_j ∈ {0, 1}`` (does ``x_j`` lie in
the path's interval). The path-dependent value function is
``v(S) = Σ_l v_l Π_{j∈S} o_j Π_{j∉S} z_j`` and its Shapley values are, per path,

    φ_i = v_l (o_i − z_i) ∫_0^1 Π_{j≠i} (z_j + u (o_j − z_j)) du,

because the Shapley weight ``|S|! (D−|S|−1)! / D!`` is the Beta integral ``∫ u^|S| (1−u)^(D−1−|S|)``.
The integrand is a polynomial of degree ``D − 1``, so Gauss-Legendre quadrature with ``ceil(D/2)``
nodes is exact (the polynomial view of Linear TreeShap, Yu et al. 2022; per-path work as in
GPUTreeShap, Mitchell et al. 2022). A path's contribution depends on ``x`` only through the ``D``
bits ``o`` — so when a path has fewer possible patterns (``2^D``) than there are rows, the
contribution of every pattern is tabulated once per path and each row just looks its pattern up
(the precomputation of Fast TreeSHAP v2, Yang 2021); longer paths are computed row by row with
one small matrix product per path. Rows × paths are processed as numpy arrays in chunks.

The interventional game ``v(S) = mean_b f(x_S, b_S̄)`` is, per path and background row ``b``,
the same game with ``z_j`` replaced by ``b``'s bit. A pair ``(x, b)`` contributes only when no
condition of the path fails for both; with ``U_x``, ``U_b`` the sets of failed conditions the
contribution is a Beta integral in ``|U_x|`` and ``|U_b|``. Summed over the background it is

    φ_i = −v/n_b ∫ (1−u)^(m−1) Z(u)[p_x] du                 (i ∈ U_x, m = |U_x|)
    φ_i =  v/n_b ∫ (1−u)^m (Z(u)[p_x] − Z(u)[p_x∖i]) / u du  (i ∉ U_x)

with ``Z(u)[p] = Σ_{b: U_b ⊆ p} u^|U_b|`` the subset-sum (zeta) transform of the background's
failure-pattern histogram. Its cost per path is ``O(2^D D²)``, independent of the number of
background rows; the per-row work is again one table look-up per path (very long paths fall back
to the pair-by-pair formula).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.execution import progress_bar
from ..core.explanation import Explanation
from ..core.registry import register
from ..core.targets import resolve_target
from .trees import TreeEnsemble, parse_trees
from .trees.paths import WORK as _WORK
from .trees.paths import PathGroup, paths, predict

__all__ = ["tree_shap", "tree_shap_interactions", "TreeEnsemble", "parse_trees"]

# Largest table (paths x patterns x slots x nodes) built at once.
_TABLE = 1 << 21


# =============================================================================================
# The Shapley arithmetic
# =============================================================================================
def _gauss(D: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes/weights on [0, 1], exact for polynomials of degree ``D - 1``."""
    q = max(1, -(-D // 2))
    x, w = np.polynomial.legendre.leggauss(q)
    return (x + 1) / 2, w / 2


def _all_patterns(D: int) -> np.ndarray:
    """Bits of every pattern 0..2^D-1, shape (D, 2^D); bit j of pattern p is slot j."""
    return ((np.arange(1 << D)[None, :] >> np.arange(D)[:, None]) & 1).astype(bool)


def _path_dependent(o: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Unit-value contributions ``(o_i − z_i) ∫ Π_{j≠i} (z_j + u (o_j − z_j)) du``.

    Parameters
    ----------
    o : ndarray of bool, shape (D, L, n)
        One fractions (may be a broadcast view, e.g. every pattern for a table).
    z : ndarray, shape (D, L)
        Zero fractions.

    Returns
    -------
    ndarray, shape (D, L, n)

    Notes
    -----
    With ``o`` binary each factor is ``z_j + u (1 − z_j)`` or ``z_j (1 − u)``, so at the ``Q``
    Gauss-Legendre nodes ``log Π_j f_j = Σ_j log a_j + o · (log b_j − log a_j)``: one small
    matrix product per path instead of ``Q × D`` elementwise passes. Dividing the product by the
    own factor gives the "all but i" product; for ``o_i = 0`` the factor ``z_i`` cancels, so
    every such slot gets ``−Σ_q w_q G_q / (1 − u_q)``.
    """
    D = o.shape[0]
    u, w = _gauss(D)
    zc = np.maximum(z.T, 1e-300)[:, :, None]                 # (L, D, 1); z = 0 gives G ≈ 0
    la = np.log(zc) + np.log1p(-u)                          # (L, D, Q) log z(1-u)
    fb = zc + u * (1 - zc)                                  # (L, D, Q) z + u(1-z)
    delta = np.log(fb) - la
    O = np.moveaxis(o, 0, -1).astype(np.float64)            # (L, n, D)
    G = np.exp(O @ delta + la.sum(1)[:, None, :])           # (L, n, Q)
    M1 = (w * (1 - zc) / fb).transpose(0, 2, 1)             # (L, Q, D)
    c1 = G @ M1                                             # (L, n, D)
    c0 = G @ (w / (1 - u))                                  # (L, n)
    return np.moveaxis(np.where(O > 0, c1, -c0[..., None]), -1, 0)


def _interventional_table(bb: np.ndarray) -> np.ndarray:
    """Unit-value contributions of every x-pattern, summed over the background.

    ``bb`` (D, L, n_b) are the background's bits. Returns (D, L, 2^D), to be divided by n_b.
    """
    D, L, nb = bb.shape
    P = 1 << D
    u, w = _gauss(D)
    Q = len(u)
    fail = _pack(~bb)                                          # (L, n_b) failure pattern U_b
    hist = np.zeros((L, P))
    np.add.at(hist, (np.broadcast_to(np.arange(L)[:, None], fail.shape), fail), 1.0)
    pop = _all_patterns(D).sum(0)                              # |S| of each pattern, (P,)
    Z = hist[:, None, :] * u[None, :, None] ** pop             # (L, Q, P)
    for j in range(D):                                         # subset-sum (zeta) transform
        Zr = Z.reshape(L, Q, P >> (j + 1), 2, 1 << j)
        Zr[:, :, :, 1, :] += Zr[:, :, :, 0, :]
    # W1/W0 depend on the x-pattern only through m = |U_x| = D - |p|; the dropped pattern
    # p \ j has |p| - 1 set bits, so its weight is a function of the dropped pattern itself.
    m = D - pop                                                # |U_x| of each x-pattern
    one_m = 1 - u[:, None]                                     # (Q, 1)
    W1 = w[:, None] * one_m ** m[None, :] / u[:, None]         # (Q, P)
    W0 = w[:, None] * one_m ** np.maximum(m - 1, 0)[None, :]
    Wd = w[:, None] * one_m ** np.maximum(m - 1, 0)[None, :] / u[:, None]  # p as some p∖j
    Zf = Z.reshape(L, Q, P)
    s1 = np.einsum("lqp,qp->lp", Zf, W1)                       # (L, P)
    s0 = np.einsum("lqp,qp->lp", Zf, W0)
    Y = np.einsum("lqp,qp->lp", Zf, Wd)
    p_all = np.arange(P)
    out = np.empty((D, L, P))
    for j in range(D):
        follows = ((p_all >> j) & 1).astype(bool)
        out[j] = np.where(follows, s1 - Y[:, p_all & ~(1 << j)], -s0)
    return out


def _beta_tables(D: int) -> tuple[np.ndarray, np.ndarray]:
    """``c1[k, m] = (k−1)! m! / (k+m)!`` and ``c0[k, m] = k! (m−1)! / (k+m)!`` (0 where undefined).

    The Shapley weight of a slot that only the explained row satisfies (``c1``) or only the
    background row satisfies (``c0``), with ``k`` and ``m`` such slots on the path.
    """
    from math import lgamma

    c1 = np.zeros((D + 1, D + 1))
    c0 = np.zeros((D + 1, D + 1))
    for k in range(D + 1):
        for m in range(D + 1 - k):
            if k:
                c1[k, m] = np.exp(lgamma(k) + lgamma(m + 1) - lgamma(k + m + 1))
            if m:
                c0[k, m] = np.exp(lgamma(k + 1) + lgamma(m) - lgamma(k + m + 1))
    return c1, c0


def _interventional_direct(o: np.ndarray, bb: np.ndarray,
                           pair_weight: np.ndarray | None = None) -> np.ndarray:
    """Sum over background rows, pair by pair: o (D, L, n), bb (D, L, n_b) -> (D, L, n).

    A pair contributes when no slot fails for both (``U_x ∩ U_b = ∅``); slots only the row
    satisfies get ``c1(|U_b|, |U_x|)``, slots only the background row satisfies ``−c0``.
    ``pair_weight`` (n, n_b) scales each pair's contribution (the per-pair rescaling of a
    probability output).
    """
    D = o.shape[0]
    c1, c0 = _beta_tables(D)
    fx, fb = ~o, ~bb
    ux, ub = _pack(fx), _pack(fb)                             # (L, n), (L, n_b)
    mx, kb = fx.sum(0), fb.sum(0)
    valid = (ux[:, :, None] & ub[:, None, :]) == 0            # (L, n, n_b)
    W1 = np.where(valid, c1[kb[:, None, :], mx[:, :, None]], 0.0)
    W0 = np.where(valid, c0[kb[:, None, :], mx[:, :, None]], 0.0)
    if pair_weight is not None:
        W1 *= pair_weight[None]
        W0 *= pair_weight[None]
    W0 = W0.sum(-1)                                           # (L, n)
    A = W1 @ np.moveaxis(fb, 0, -1).astype(np.float64)        # (L, n, D)
    return np.moveaxis(A, -1, 0) - W0[None] * fx


def _pack(o: np.ndarray) -> np.ndarray:
    """Pattern index (...) of bits (D, ...), D <= 62: bit j is slot j."""
    idx = o[0].astype(np.intp)
    for j in range(1, len(o)):
        idx |= o[j].astype(np.intp) << j
    return idx


def _scatter_matrix(feat: np.ndarray, n_features: int):
    """Sparse (F, D*L) one-hot that adds slot contributions (D*L, n) into features (F, n)."""
    from scipy.sparse import csr_matrix

    flat = feat.reshape(-1)
    return csr_matrix((np.ones(len(flat)), (flat, np.arange(len(flat)))),
                      shape=(n_features, len(flat)))


def _each_group(ens: TreeEnsemble, groups: list[PathGroup], R: int, desc: str,
                progress: bool | None, long_work: int):
    """Each path group (bounds rounded to float32 where the model compares in float32) with the
    progress bar (shown for long work: paths x rows above ``long_work``)."""
    f32 = np.dtype(ens.input_dtype) == np.float32
    work = sum(len(g.leaf) for g in groups)
    with progress_bar(work, desc, progress if work * R > long_work else False, unit="path") as bar:
        for g in groups:
            yield (g.as_float32() if f32 else g), bar


def _shap(ens: TreeEnsemble, groups: list[PathGroup], X: np.ndarray, cls: np.ndarray,
          background: np.ndarray | None, progress: bool | None,
          algorithm: str = "auto", pair_weight: np.ndarray | None = None) -> np.ndarray:
    """Shapley values (n, F) of output ``cls[r]`` for every row.

    ``pair_weight`` (n, n_b): interventional only, each (row, background row) pair's values
    scaled (pair by pair, so the table algorithm is not used).
    """
    R, F = len(X), ens.n_features
    f32 = np.dtype(ens.input_dtype) == np.float32
    XT = np.ascontiguousarray(X.T, dtype=np.float32 if f32 else np.float64)   # (F, R)
    phiT = np.zeros((F, R))
    one_cls = bool(np.all(cls == cls[0]))
    has_nan = bool(np.isnan(X).any())
    BT = None if background is None else np.ascontiguousarray(background.T, dtype=XT.dtype)
    nb = 0 if background is None else len(background)
    bg_nan = background is not None and bool(np.isnan(background).any())
    for g, bar in _each_group(ens, groups, R, "tree_shap", progress, 50_000_000):
        D, L = g.D, len(g.leaf)
        P = 1 << D
        Q = max(1, -(-D // 2))
        V = ens.value[g.leaf]                                   # (L, K)
        if pair_weight is not None:
            tab = False
        elif algorithm != "auto":
            tab = algorithm == "table"
        elif background is None:
            tab = 2 * P <= R                                    # a table pays off
        else:
            tab = P * Q * D <= 10 * R * nb
        if background is None:
            per, row_cost = P * (D + 2 * Q), (D if tab else D + 2 * Q)
        else:
            per, row_cost = P * Q * (D + 3), (D if tab else nb + D)
        lstep = max(1, min(L, (_TABLE // per) if tab else (_WORK // (16 * row_cost))))
        for l0 in range(0, L, lstep):
            ls = slice(l0, min(L, l0 + lstep))
            nl = ls.stop - ls.start
            v = V[ls, cls[0]] if one_cls else None              # (nl,)
            S = _scatter_matrix(g.feat[:, ls], F)
            if background is not None:
                bb = g.bits(BT, ls, bg_nan)                     # (D, nl, nb)
            if tab:
                if background is None:
                    T = _path_dependent(np.broadcast_to(_all_patterns(D)[:, None, :],
                                                        (D, nl, P)), g.z[:, ls])
                else:
                    T = _interventional_table(bb) / nb
                if one_cls:
                    T *= v[None, :, None]
                T = T.reshape(-1)
                offs = (np.arange(D)[:, None, None] * nl + np.arange(nl)[None, :, None]) * P
            rstep = max(1, _WORK // (nl * row_cost))
            for r0 in range(0, R, rstep):
                rs = slice(r0, min(R, r0 + rstep))
                o = g.bits(np.ascontiguousarray(XT[:, rs]), ls, has_nan)   # (D, nl, r)
                if tab:
                    c = T[offs + _pack(o)[None]]                # (D, nl, r)
                elif background is None:
                    c = _path_dependent(o, g.z[:, ls])
                else:
                    c = _interventional_direct(
                        o, bb, None if pair_weight is None else pair_weight[rs]) / nb
                if not one_cls:
                    c *= V[ls][:, cls[rs]][None]
                elif not tab:
                    c *= v[None, :, None]
                phiT[:, rs] += S @ c.reshape(D * nl, -1)
            bar.update(nl)
    return phiT.T.copy()


def _path_interactions(o: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Unit-value interaction contributions of slot pairs (s ≠ t) of each path.

    Conditioning the path-dependent game on ``t`` being known (factor ``o_t``) or unknown
    (``z_t``) and halving the difference of the Shapley values of ``s`` (Lundberg et al. 2020)
    gives, per path,

        Φ_st = (o_s − z_s)(o_t − z_t) / 2 ∫_0^1 Π_{k≠s,t} (z_k + u (o_k − z_k)) du,

    evaluated at the same Gauss-Legendre nodes as the values (exact: degree ``D − 2``).

    Parameters
    ----------
    o : bool (D, L, n); z : (D, L)

    Returns
    -------
    (D, D, L, n) with zeros on the slot diagonal.
    """
    D = o.shape[0]
    u, w = _gauss(D)
    zc = np.maximum(z, 1e-300)[:, :, None, None]            # (D, L, 1, 1)
    of = o[..., None].astype(np.float64)                    # (D, L, n, 1)
    f = zc + u * (of - zc)                                  # (D, L, n, Q), > 0 inside (0, 1)
    G = np.prod(f, axis=0) * w                              # (L, n, Q)
    a = (of - zc) / f                                       # (D, L, n, Q)
    out = np.einsum("slnq,tlnq,lnq->stln", a, a, G) / 2
    idx = np.arange(D)
    out[idx, idx] = 0.0
    return out


def _interactions(ens: TreeEnsemble, groups: list[PathGroup], X: np.ndarray, cls: np.ndarray,
                  progress: bool | None) -> np.ndarray:
    """Off-diagonal path-dependent interaction values (n, F, F) of output ``cls[r]``."""
    R, F = len(X), ens.n_features
    f32 = np.dtype(ens.input_dtype) == np.float32
    XT = np.ascontiguousarray(X.T, dtype=np.float32 if f32 else np.float64)
    has_nan = bool(np.isnan(X).any())
    out = np.zeros((F * F, R))
    one_cls = bool(np.all(cls == cls[0]))
    for g, bar in _each_group(ens, groups, R, "tree_shap_interactions", progress, 5_000_000):
        D, L = g.D, len(g.leaf)
        if D < 2:
            bar.update(L)
            continue
        Q = max(1, -(-D // 2))
        V = ens.value[g.leaf]
        per = D * D * Q
        lstep = max(1, min(L, _WORK // (16 * per)))
        for l0 in range(0, L, lstep):
            ls = slice(l0, min(L, l0 + lstep))
            nl = ls.stop - ls.start
            pair = (g.feat[:, None, ls] * F + g.feat[None, :, ls])            # (D, D, nl)
            S = _scatter_matrix(pair, F * F)
            rstep = max(1, _WORK // (nl * per))
            for r0 in range(0, R, rstep):
                rs = slice(r0, min(R, r0 + rstep))
                o = g.bits(np.ascontiguousarray(XT[:, rs]), ls, has_nan)
                c = _path_interactions(o, g.z[:, ls])                          # (D, D, nl, r)
                c *= (V[ls, cls[0]][:, None] if one_cls else V[ls][:, cls[rs]])[None, None]
                out[:, rs] += S @ c.reshape(D * D * nl, -1)
            bar.update(nl)
    return out.T.reshape(R, F, F)


# =============================================================================================
# The method
# =============================================================================================
_PERTURBATIONS = ("auto", "tree_path_dependent", "interventional")
_OUTPUTS = ("raw", "probability", "log_odds")


def _as_matrix(X: Any, name: str, n_features: int) -> tuple[np.ndarray, list[str] | None]:
    names = None
    if hasattr(X, "columns") and hasattr(X, "dtypes"):
        names = [str(c) for c in X.columns]
        bad = [c for c, t in zip(names, X.dtypes) if not (np.issubdtype(t, np.number) or t == bool)]
        if bad:
            raise TypeError(f"{name}: tree_shap needs numeric columns; {bad[:5]} are not")
        X = X.to_numpy(dtype=np.float64)
    elif hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric 2-D array or DataFrame") from e
    if X.ndim == 1:
        raise ValueError(f"{name} must be 2-D (rows, features); for one row use X[None] or X[[i]]")
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, features); got shape {X.shape}")
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features but the model was fitted on {n_features}")
    if np.isinf(X).any():
        raise ValueError(f"{name} contains Inf values")
    return X, names


def _prepare(model: Any, inputs: Any, target: Any, background: Any, feature_perturbation: str,
             check: bool, method: str, forward_args: Any = None) -> dict:
    """What both TreeSHAP methods share: the parsed ensemble checked against the model, the
    rows, the paths, the raw outputs, the background and the resolved target."""
    from ..core.validation import check_choice
    from ._tabular import is_several

    if forward_args is not None:
        raise ValueError(
            f"forward_args: {method} reads the fitted trees, which are a function of one feature "
            "matrix and take no other argument; to explain a model with extra arguments use a "
            "model-agnostic method (kernel_shap, permutation_shap, exact_shapley, lime)")
    for what, value in (("inputs", inputs), ("background", background)):
        if value is not None and is_several(value):
            raise ValueError(
                f"{what}: {method} explains one table (the trees were fitted on one feature "
                f"matrix); got a {type(value).__name__} of several inputs. Concatenate the tables "
                "the trees were fitted on (np.hstack, pd.concat(axis=1)), or use kernel_shap / "
                "exact_shapley, which take several inputs")

    check_choice(feature_perturbation, "feature_perturbation", _PERTURBATIONS)
    if feature_perturbation == "auto":
        feature_perturbation = "tree_path_dependent" if background is None else "interventional"
    if feature_perturbation == "interventional" and background is None:
        raise ValueError("background: interventional TreeSHAP needs background rows "
                         "(for example 100-1000 training rows)")
    if feature_perturbation == "tree_path_dependent" and background is not None:
        raise ValueError("background: the path-dependent game uses the trees' training cover, "
                         "not a background; pass feature_perturbation='interventional' to use it")
    ens = parse_trees(model)
    X, names = _as_matrix(inputs, "inputs", ens.n_features)
    if names is None and getattr(model, "feature_names_in_", None) is not None:
        names = [str(c) for c in model.feature_names_in_]
    Xm = X.astype(ens.input_dtype).astype(np.float64)
    groups, expected, depth = paths(ens)
    raw = predict(ens, Xm, depth)                                   # (n, K)
    if ens.reference is not None and (check or ens.meta.get("offset_from_model")):
        ref = np.asarray(ens.reference(inputs if hasattr(inputs, "columns") else X),
                         dtype=np.float64).reshape(len(X), -1)
        if ref.shape[1] != raw.shape[1]:
            raise RuntimeError(f"model returned {ref.shape[1]} outputs where the parsed trees "
                               f"have {raw.shape[1]}")
        tol = 1e-5 * max(1.0, np.abs(ref).max())
        if ens.meta.get("offset_from_model") and np.abs(ref - raw).max() > tol:
            # an objective whose base score we cannot convert: take it from the model's margins
            off = np.median(ref - raw, axis=0)
            ens.offset = ens.offset + off
            raw, expected = raw + off, expected + off
            ens.meta["offset_from_model"] = True
        gap = np.abs(ref - raw).max()
        if check and gap > tol:
            raise RuntimeError(
                f"model: the parsed trees reproduce the model's {ens.output_name} only to "
                f"{gap:.3g}; the explanation would not be trustworthy (unsupported option?)"
            )
    params = {"feature_perturbation": feature_perturbation, "check": check}
    meta: dict[str, Any] = {
        "model_type": ens.model_type, "model_output": ens.output_name,
        "output_space": ens.output_space, "n_trees": ens.n_trees, "max_depth": depth,
        "feature_perturbation": feature_perturbation,
    }
    bg = bg_raw = None
    if feature_perturbation == "interventional":
        bg, _ = _as_matrix(background, "background", ens.n_features)
        bg = bg.astype(ens.input_dtype).astype(np.float64)
        bg_raw = predict(ens, bg, depth)
        expected = bg_raw.mean(0)
        # every background row is used (no subsample): recorded so a reader can check
        params["background"] = f"<{len(bg)} rows>"
        meta["n_background"] = len(bg)
    tgt = resolve_target(target, raw[:, 0] if raw.shape[1] == 1 else raw)
    if tgt.fn is not None:
        raise ValueError(f"target: {method} explains one model output; give a class index")
    cls = (tgt.indices if tgt.indices is not None else np.zeros(len(X), dtype=np.int64))
    return dict(ens=ens, X=X, Xm=Xm, names=names, groups=groups, expected=expected,
                raw=raw, bg=bg, bg_raw=bg_raw, params=params, meta=meta, tgt=tgt, cls=cls,
                feature_perturbation=feature_perturbation)


def _logistic(m: np.ndarray, scale: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-scale * m))


def _probability_weights(ens: TreeEnsemble, mx: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Per (row, background row) factor ``(σ(m_x) − σ(m_b)) / (m_x − m_b)`` (1 where equal).

    Scaling each pair's margin values by it makes them add up to ``σ(m_x) − σ(m_b)``: shap's
    TreeExplainer(model_output="probability") rescaling of the interventional game, pair by pair.
    """
    d = mx[:, None] - mb
    diff = _logistic(mx, ens.link_scale)[:, None] - _logistic(mb, ens.link_scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, 1.0, diff / d)


@register("tree_shap", "shapley",
          "Exact TreeSHAP for tree ensembles: path-dependent or interventional (Lundberg 2018/2020)",
          models="any")
def tree_shap(model: Any, inputs: Any, target: Any = None, *, background: Any = None,
              feature_perturbation: str = "auto", model_output: str = "raw",
              algorithm: str = "auto", check: bool = True,
              progress: bool | None = None, forward_args: Any = None) -> Explanation:
    """Exact Shapley values of a tree ensemble's output.

    Lundberg, Erion & Lee (2018), "Consistent Individualized Feature Attribution for Tree
    Ensembles" (path-dependent); Lundberg et al. (2020), "From local explanations to global
    understanding with explainable AI for trees" (interventional).

    Parameters
    ----------
    model : fitted tree model
        scikit-learn ``DecisionTree*``, ``RandomForest*``, ``ExtraTrees*``,
        ``GradientBoosting*``, ``HistGradientBoosting*``; XGBoost and LightGBM models (wrapper or
        booster).
    inputs : ndarray or DataFrame, shape (n, n_features)
        The rows to explain. DataFrame column names become ``feature_names``. Missing values
        (NaN) follow the model's own missing-value directions.
    target : int, sequence of int, "predicted" or None
        The output to explain when the model has several (classes): ``None`` explains the
        predicted class. See :mod:`lumos.core.targets`.
    background : ndarray or DataFrame, shape (m, n_features), optional
        Background rows for the interventional game ``E_b f(x_S, b_S̄)``. Every row is used
        (``meta["n_background"]``); the cost per path does not grow with it.
    feature_perturbation : {"auto", "tree_path_dependent", "interventional"}, default "auto"
        ``"tree_path_dependent"`` uses the training cover stored in the trees as the
        distribution of the unknown features (no background needed); ``"interventional"``
        averages over ``background``. ``"auto"`` is interventional when a background is given.
    model_output : {"raw", "probability", "log_odds"}, default "raw"
        ``"raw"``: the model's raw output (below). ``"probability"`` (interventional only, binary
        classifiers whose raw output is a log-odds margin): each (row, background row) pair's
        margin values are rescaled by ``(σ(m_x) − σ(m_b)) / (m_x − m_b)`` so that they add up
        to the difference of probabilities, as ``shap.TreeExplainer(model, data,
        feature_perturbation="interventional", model_output="probability")``; values then sum
        to ``p(x) − E_b p(b)``. ``"log_odds"``: the margin of a logistic model (as ``"raw"``,
        refused where the raw output is not a log-odds). For tree and forest classifiers the raw
        output already is the probability, so ``"probability"`` is ``"raw"``.
    algorithm : {"auto", "table", "direct"}, default "auto"
        How each group of paths is evaluated: ``"table"`` tabulates the contribution of every
        pattern of path conditions once and looks rows up; ``"direct"`` computes each
        (row, path) pair (pair by pair with the background for interventional). ``"auto"``
        picks the cheaper per group; all give the same values to rounding.
    check : bool, default True
        Compare the parsed ensemble's output with the model's own (raw) output on ``inputs``
        and raise when they differ (a parse the explanation could not be trusted with).
    progress : bool, optional
        Progress bar; ``None`` shows one on a terminal for long work.
    forward_args : None
        Refused with a clear error: the parsed trees are a function of one feature matrix, with
        no other argument (the parameter exists so that the refusal is explicit). A model of
        several inputs is refused likewise: concatenate the tables the trees were fitted on.

    Returns
    -------
    Explanation
        ``values`` (n, n_features). The raw output explained is ``predict_proba`` for
        scikit-learn tree/forest classifiers, the margin (log-odds, ``decision_function``) for
        gradient boosting, ``predict`` for regressors (``meta["model_output"]``,
        ``meta["output_space"]``). ``baseline_output`` is the expected value (cover-weighted for
        path-dependent, the background mean for interventional) and
        ``baseline_output + values.sum(1) == output`` to rounding.

    Examples
    --------
    >>> expl = lumos.explain(forest, X_test, "tree_shap", target=1)
    >>> expl = lumos.explain(gbm, X_test, "tree_shap", background=X_train[:200])
    >>> expl = lumos.explain(gbm, X_test, "tree_shap", background=X_train[:200],
    ...                      model_output="probability")
    """
    from ..core.validation import check_choice

    check_choice(algorithm, "algorithm", ("auto", "table", "direct"))
    check_choice(model_output, "model_output", _OUTPUTS)
    c = _prepare(model, inputs, target, background, feature_perturbation, check, "tree_shap",
                 forward_args)
    ens, cls, raw, expected = c["ens"], c["cls"], c["raw"], c["expected"]
    params, meta = c["params"], c["meta"]
    params.update(algorithm=algorithm, model_output=model_output)
    pair_weight = None
    if model_output != "raw" and ens.output_space != "probability":
        if ens.link != "logistic":
            raise ValueError(
                f"model_output={model_output!r} needs a binary classifier whose raw output is a "
                f"log-odds margin; {ens.model_type}'s output ({ens.output_space}) has link "
                f"{ens.link!r}" + (" (the softmax couples the classes; explain the margins with "
                                   "model_output='raw')" if ens.link == "softmax" else ""))
        if model_output == "probability":
            if c["feature_perturbation"] != "interventional":
                raise ValueError("model_output='probability' is defined for the interventional "
                                 "game: pass background= (the path-dependent game explains "
                                 "the margin, as shap's TreeExplainer)")
            rows = np.arange(len(cls))
            pair_weight = _probability_weights(ens, raw[rows, cls], c["bg_raw"][:, cls].T)
    elif model_output == "log_odds" and ens.output_space == "probability":
        raise ValueError(f"model_output='log_odds': {ens.model_type} outputs probabilities "
                         "(averaged leaves), not a log-odds margin; use 'raw' or 'probability'")
    values = _shap(ens, c["groups"], c["Xm"], cls, c["bg"], progress, algorithm, pair_weight)
    output = raw[np.arange(len(cls)), cls]
    base = expected[cls]
    if pair_weight is not None:
        output = _logistic(output, ens.link_scale)
        p_bg = _logistic(c["bg_raw"], ens.link_scale).mean(0)
        base = p_bg[cls]
        expected = p_bg
        meta["output_space"] = "probability"
    meta["target"] = c["tgt"].description
    meta["expected_value"] = expected if len(expected) > 1 else float(expected[0])
    meta["completeness_gap"] = np.abs(values.sum(1) + base - output)
    return Explanation(values=values, inputs=c["X"], target=c["tgt"].indices, output=output,
                       baseline_output=base, method="tree_shap", params=params, meta=meta,
                       feature_names=c["names"], sample_keys=("completeness_gap",))


@register("tree_shap_interactions", "shapley",
          "TreeSHAP interaction values of tree ensembles (path-dependent; Lundberg 2020)",
          models="any")
def tree_shap_interactions(model: Any, inputs: Any, target: Any = None, *, check: bool = True,
                           progress: bool | None = None, forward_args: Any = None) -> Explanation:
    """Exact pairwise Shapley interaction values of a tree ensemble (path-dependent game).

    Lundberg et al. (2020), "From local explanations to global understanding with explainable
    AI for trees": ``Φ_ij`` (i ≠ j) is half the Shapley interaction index of the game that the
    path-dependent TreeSHAP explains, and the diagonal holds the main effects
    ``Φ_ii = φ_i − Σ_{j≠i} Φ_ij``, as shap's ``TreeExplainer.shap_interaction_values``. Per path
    the interaction of two of its features has a closed form (conditioning the path's game on one
    of them, see :func:`_path_interactions`), evaluated by the same Gauss-Legendre quadrature as
    the values; the cost is ``D²`` times that of the values per path of ``D`` features.

    Parameters
    ----------
    model, inputs, target, check, progress, forward_args
        As for :func:`tree_shap` (the path-dependent game: no background).

    Returns
    -------
    Explanation
        ``values`` (n, F, F), symmetric; ``values.sum(2)`` equals ``tree_shap``'s values
        (``meta["shapley_values"]``) and ``baseline_output + values.sum((1, 2)) == output``.
        ``feature_names`` name both axes.
    """
    c = _prepare(model, inputs, target, None, "tree_path_dependent", check,
                 "tree_shap_interactions", forward_args)
    ens, cls, raw, expected = c["ens"], c["cls"], c["raw"], c["expected"]
    phi = _shap(ens, c["groups"], c["Xm"], cls, None, False)
    values = _interactions(ens, c["groups"], c["Xm"], cls, progress)
    idx = np.arange(ens.n_features)
    values[:, idx, idx] = phi - values.sum(2)
    output = raw[np.arange(len(cls)), cls]
    base = expected[cls]
    meta = c["meta"]
    meta["target"] = c["tgt"].description
    meta["expected_value"] = expected if len(expected) > 1 else float(expected[0])
    meta["interactions"] = True
    meta["shapley_values"] = phi
    meta["completeness_gap"] = np.abs(values.sum((1, 2)) + base - output)
    return Explanation(values=values, inputs=c["X"], target=c["tgt"].indices, output=output,
                       baseline_output=base, method="tree_shap_interactions", params=c["params"],
                       meta=meta, feature_names=c["names"],
                       sample_keys=("completeness_gap", "shapley_values"))
