"""Faithfulness: does the model's output follow what the explanation says matters?

- :func:`deletion` / :func:`insertion`: remove (or insert) features in the order of the
  explanation and follow the explained score; the area under the curve summarises it
  (Petsiuk, Das & Saenko, 2018, "RISE"; Samek et al., 2017, "Evaluating the visualization of what a
  deep neural network has learned" for most- and least-relevant-first orders).
- :func:`road`: deletion with noisy linear imputation of the removed pixels (Rong et al., 2022).
- :func:`faithfulness_correlation`: correlation between the attribution of random feature subsets
  and the score drop when they are removed (Bhatt, Weller & Moura, 2020).
- :func:`infidelity`: squared error between the attribution's prediction of the effect of random
  input noise and the real effect (Yeh et al., 2019).
- :func:`monotonicity`: rank correlation between the attribution of feature groups and the effect
  of removing each group alone (Nguyen & Martínez, 2020).

Every model evaluation happens in stacked batches of changed inputs (``batch_size`` rows per
model call) over the whole explanation batch. All random draws belong to one (sample, draw) pair,
so results do not depend on ``batch_size``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..core.explanation import Explanation
from ..core.validation import check_number
from .layouts import Layout, check_explanation, layout
from .registry import register_metric
from .removal import noisy_linear_impute, removal_fill
from .results import MetricResult
from .scoring import model_scorer
from .stats import rowwise_pearson, rowwise_spearman
from .streams import random_order, row_rng

__all__ = ["deletion", "insertion", "road", "removal_curve", "faithfulness_correlation",
           "infidelity", "monotonicity"]

_ORDERS = ("morf", "lerf")
_MODES = ("deletion", "insertion")


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.integrate import trapezoid

    return trapezoid(y, x, axis=-1)


def default_fill(fill: Any, lay: Layout) -> Any:
    """``fill=None``: the blurred image for images, zero otherwise.

    Petsiuk et al. (2018) delete to black and insert onto a blurred canvas. Black pixels are far
    from the data of many image models: on the demo CNN a few percent of scattered black pixels
    flip the class whatever their order, so zero-fill deletion ranks every method like random
    (docs/metrics.md). Removing towards the blurred image, the canvas insertion starts from, keeps
    the changed inputs near the data; ``fill="zero"`` gives the paper's deletion.
    """
    if fill is not None:
        return fill
    return "blur" if lay.expand == (0,) and len(lay.map_shape) == 2 else "zero"


class _Remover:
    """Builds rows of ``x`` with a per-row set of features replaced by the fill."""

    def __init__(self, scorer, lay: Layout, fill: Any, *, background=None, sigma=5.0, noise=0.01, seed=0):
        self.x = scorer.x
        self.lay = lay
        fill = default_fill(fill, lay)
        self.fill, self.fill_name = removal_fill(fill, self.x, lay, background=background, sigma=sigma)
        self.noise = check_number(noise, "noise", low=0)
        self.seed = seed
        const = isinstance(fill, (int, float, np.integer, np.floating)) and not isinstance(fill, bool)
        self.const = float(fill) if const else (0.0 if isinstance(fill, str) and fill == "zero" else None)

    def rows(self, removed: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """``removed``: (m, F) bool features to replace in sample ``rows[k]``; ``keys``: per-row
        draw ids for the ROAD noise."""
        em = self.lay.element_mask(removed, rows)
        xi = self.x[rows]
        if self.fill is None:  # ROAD: imputation of exactly this row's removed pixels
            miss = em.reshape((len(rows),) + self.lay.map_shape).cpu().numpy()
            rngs = [row_rng(self.seed, 11, int(i), int(k)) for i, k in zip(rows.tolist(), keys.tolist())]
            imp = noisy_linear_impute(xi.cpu().numpy(), miss, self.noise, rngs)
            return torch.as_tensor(imp, dtype=xi.dtype, device=xi.device)
        if self.const is not None:
            return xi.masked_fill_(em, self.const)
        return torch.where(em, self.fill[rows], xi)


def removal_curve(model: Any, explanation: Explanation, *, mode: str = "deletion", order: str = "morf",
                  n_steps: int = 20, fill: Any = None, features: Any = None, background: Any = None,
                  sigma: float = 5.0, noise: float = 0.01, scale: str = "auto", target: Any = None,
                  seed: int = 0, batch_size: int | None = None, progress: bool | None = None,
                  name: str | None = None) -> MetricResult:
    """Deletion or insertion curve of an explanation and the area under it.

    Features are ranked by their attribution (the channel sum per pixel for images; random
    tie-breaking). Deletion replaces the first ``k`` features of the ranking by ``fill`` for
    ``k = round(s / n_steps · F)``, ``s = 0..n_steps``; insertion starts from the fill and puts the
    first ``k`` features back. The explained score is recorded at each step.

    Parameters
    ----------
    model : torch.nn.Module, callable or estimator
    explanation : Explanation
        With ``inputs``; its ``target`` selects the scored class.
    mode : {"deletion", "insertion"}
    order : {"morf", "lerf"}, default "morf"
        Most relevant first or least relevant first.
    n_steps : int, default 20
        Curve resolution: ``n_steps + 1`` points, ``n_steps`` model evaluations per sample.
    fill : {"zero", "mean", "blur", "road"}, number or array, optional
        What replaces removed features. Default (``None``): ``"blur"`` for images (the canvas of
        Petsiuk et al.'s insertion; see :func:`default_fill`), ``"zero"`` otherwise. ``"road"``:
        noisy linear imputation (Rong et al., 2022). ``"mean"`` uses the mean of ``background``
        (or of each sample).
    features : int array, optional
        Feature labels (superpixels...), see :func:`lumos.metrics.layout`.
    background : array, optional
        Samples whose mean is the fill for ``fill="mean"``.
    sigma : float, default 5.0
        Blur std in pixels for ``fill="blur"``.
    noise : float, default 0.01
        Std of the ROAD imputation noise.
    scale : {"auto", "probability", "raw"}, default "auto"
        What the curve follows: ``"probability"`` of the target class (the softmax, unless the
        model outputs probabilities), ``"raw"`` output, or ``"auto"``: the probability for class
        targets of an output with two or more columns (bounded: areas of different samples then
        average meaningfully, and :func:`lumos.metrics.compare` uses the same default), the raw
        output otherwise. The scale used is ``result.params["scale"]`` and is printed with the score.
    target : optional
        Overrides the explanation's target (needed for callable targets).
    seed : int, default 0
        For tie-breaking and the ROAD noise.
    batch_size : int, optional
        Changed inputs per model call (default 64).

    Returns
    -------
    MetricResult
        ``scores``: area under the curve per sample (fraction removed on the x axis, from 0 to 1).
        ``curves``: ``{"x": (n_steps+1,), "y": (n, n_steps+1)}``. Direction: lower is better for
        MoRF deletion and LeRF insertion, higher for the other two.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}; got {order!r}")
    steps = check_number(n_steps, "n_steps", low=1, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    explanation = check_explanation(explanation)
    lay = layout(explanation, features)
    attr = lay.feature_sums(lay.map)
    ranks = random_order(attr, lay.valid(), seed, descending=(order == "morf"))
    n = lay.n
    fractions = np.arange(steps + 1) / steps
    # features present after s steps; rounding half-up so that ks is monotone and ends at F
    ks = np.floor(fractions[None, :] * lay.n_features[:, None] + 0.5).astype(np.int64)
    with model_scorer(model, explanation, target, batch_size=batch_size, scale=scale,
                      progress=progress) as sc:
        rem = _Remover(sc, lay, fill, background=background, sigma=sigma, noise=noise, seed=seed)
        dev = sc.x.device
        ranks_t = torch.as_tensor(ranks, device=dev)
        ks_t = torch.as_tensor(ks, device=dev)
        # deletion at s=0 and insertion at s=steps are the inputs themselves: f0, no evaluation
        offset = 1 if mode == "deletion" else 0

        def build(sl):
            r = torch.arange(sl.start, sl.stop, device=dev)
            i, s = r // steps, r % steps + offset
            first_k = ranks_t[i] < ks_t[i, s][:, None]
            removed = first_k if mode == "deletion" else ~first_k
            return rem.rows(removed, i, s), i

        vals = sc.evaluate(n * steps, build, desc=mode).reshape(n, steps)
        y = np.empty((n, steps + 1))
        if mode == "deletion":
            y[:, 0], y[:, 1:] = sc.f0, vals
        else:
            y[:, :-1], y[:, -1] = vals, sc.f0
        n_evals = sc.n_evals
    auc = _trapezoid(y, fractions)
    lower = (mode == "deletion") == (order == "morf")
    metric = name or (mode if order == "morf" else f"{mode}_lerf")
    if isinstance(fill, str) and fill == "road" and name is None:
        metric = "road" if mode == "deletion" and order == "morf" else f"road_{mode}_{order}"
    return MetricResult(
        name=metric, scores=auc, direction="lower" if lower else "higher", method=explanation.method,
        params={"mode": mode, "order": order, "n_steps": steps, "fill": rem.fill_name, "scale": sc.scale,
                "seed": seed, "features": lay.description},
        curves={"x": fractions, "y": y},
        meta={"n_evals": int(n_evals), "f0": sc.f0, "n_features": lay.n_features},
    )


@register_metric("deletion", "faithfulness", "lower", ("model",),
                 "Area under the score curve as the most relevant features are removed first (Petsiuk et al., 2018)",
                 forwards=removal_curve, fixed=("mode", "name"))
def deletion(model: Any, explanation: Explanation, *, order: str = "morf", n_steps: int = 20,
             fill: Any = None, **kwargs: Any) -> MetricResult:
    """Deletion curve and its area: most relevant features removed first.

    Petsiuk, Das & Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box
    Models"; Samek et al. (2017) for the MoRF/LeRF orders. A faithful explanation makes the score
    fall fast (low area). With ``order="lerf"`` (least relevant first) the score should stay high
    (high area). See :func:`removal_curve` for all parameters (the fill defaults to the blurred
    image for images, the scale to the class probability for classifiers).
    """
    return removal_curve(model, explanation, mode="deletion", order=order, n_steps=n_steps, fill=fill, **kwargs)


@register_metric("deletion_lerf", "faithfulness", "higher", ("model",),
                 "Area under the score curve as the least relevant features are removed first (Samek et al., 2017)",
                 forwards=removal_curve, fixed=("mode", "order", "name"))
def deletion_lerf(model: Any, explanation: Explanation, **kwargs: Any) -> MetricResult:
    """:func:`deletion` with ``order="lerf"``: the score should survive removing the least relevant."""
    return removal_curve(model, explanation, mode="deletion", order="lerf", **kwargs)


@register_metric("insertion", "faithfulness", "higher", ("model",),
                 "Area under the score curve as the most relevant features are inserted first (Petsiuk et al., 2018)",
                 forwards=removal_curve, fixed=("mode", "name"))
def insertion(model: Any, explanation: Explanation, *, order: str = "morf", n_steps: int = 20,
              fill: Any = None, **kwargs: Any) -> MetricResult:
    """Insertion curve and its area: starting from the fill, most relevant features put back first.

    Petsiuk, Das & Saenko (2018). A faithful explanation makes the score rise fast (high area).
    The default canvas for images is the blurred image (the paper's choice), ``"zero"`` otherwise.
    See :func:`removal_curve` for all parameters.
    """
    return removal_curve(model, explanation, mode="insertion", order=order, n_steps=n_steps, fill=fill, **kwargs)


@register_metric("road", "faithfulness", "lower", ("model",),
                 "Deletion with noisy linear imputation, so the mask's shape does not leak (Rong et al., 2022)",
                 forwards=removal_curve, fixed=("mode", "fill", "name", "background", "sigma"))
def road(model: Any, explanation: Explanation, *, order: str = "morf", n_steps: int = 10,
         noise: float = 0.01, **kwargs: Any) -> MetricResult:
    """ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci & Kasneci, 2022, "A Consistent and
    Efficient Evaluation Strategy for Attribution Methods", ICML).

    Removed pixels are replaced by noisy linear imputation from their neighbours
    (:func:`lumos.metrics.removal.noisy_linear_impute`), so the model cannot read the removal
    pattern itself. ``order="morf"`` (default): lower area is better; ``"lerf"``: higher.
    Images only. Each step solves one sparse system per image (a CPU cost beside the model's).
    """
    return removal_curve(model, explanation, mode="deletion", order=order, n_steps=n_steps, fill="road",
                         noise=noise, **kwargs)


# ----------------------------------------------------------------------------- random subsets
def _subset_sizes(sizes: Sequence[Any], n_features: np.ndarray, name: str) -> np.ndarray:
    """Sizes as fractions (float in (0, 1]) or counts (int) → (n, L) counts in [1, F_i]."""
    out = []
    for s in sizes:
        if isinstance(s, (float, np.floating)) and 0 < s <= 1:
            out.append(np.maximum(1, np.floor(s * n_features + 0.5)).astype(np.int64))
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1:
            out.append(np.minimum(int(s), n_features))
        else:
            raise ValueError(f"{name} must hold fractions in (0, 1] or positive ints; got {s!r}")
    return np.stack(out, axis=1)


def subset_effects(model: Any, explanation: Explanation, sizes: Sequence[Any], n_subsets: int, *,
                   fill: Any = None, features: Any = None, background: Any = None, sigma: float = 5.0,
                   scale: str = "raw", target: Any = None, seed: int = 0,
                   batch_size: int | None = None, progress: bool | None = None, tag: int = 3):
    """Attribution sums of random feature subsets and the score drops when they are removed.

    Returns ``(sums, drops, counts, layout, n_evals, fill_name)``; ``sums`` and ``drops`` have
    shape (n, len(sizes), n_subsets), ``counts`` (n, len(sizes)).
    """
    n_subsets = check_number(n_subsets, "n_subsets", low=2, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    explanation = check_explanation(explanation)
    lay = layout(explanation, features)
    counts = _subset_sizes(sizes, lay.n_features, "subset sizes")
    n, L, R, F = lay.n, counts.shape[1], n_subsets, lay.F
    attr = lay.feature_sums(lay.map)
    chosen = np.zeros((n, L, R, F), dtype=bool)
    sums = np.empty((n, L, R))
    for i in range(n):  # all draws before any batching: one generator per sample
        g = row_rng(seed, tag, i)
        Fi = int(lay.n_features[i])
        for l in range(L):
            k = int(counts[i, l])
            pick = (np.argpartition(g.random((R, Fi)), k - 1, axis=1)[:, :k] if k < Fi
                    else np.tile(np.arange(Fi), (R, 1)))
            np.put_along_axis(chosen[i, l, :, :Fi], pick, True, axis=1)
            sums[i, l] = attr[i, pick].sum(1)
    with model_scorer(model, explanation, target, batch_size=batch_size, scale=scale,
                      progress=progress) as sc:
        rem = _Remover(sc, lay, fill, background=background, sigma=sigma, seed=seed)
        dev = sc.x.device
        chosen_t = torch.as_tensor(chosen.reshape(n * L * R, F), device=dev)

        def build(sl):
            r = torch.arange(sl.start, sl.stop, device=dev)
            i = r // (L * R)
            return rem.rows(chosen_t[r], i, r % (L * R)), i

        vals = sc.evaluate(n * L * R, build, desc="random subsets").reshape(n, L, R)
        drops = sc.f0[:, None, None] - vals
        n_evals = sc.n_evals
    return sums, drops, counts, lay, n_evals, rem.fill_name, sc.scale


@register_metric("faithfulness_correlation", "faithfulness", "higher", ("model",),
                 "Pearson correlation of subset attribution and score drop over random subsets (Bhatt et al., 2020)",
                 forwards=subset_effects, fixed=("sizes", "tag"))
def faithfulness_correlation(model: Any, explanation: Explanation, *, subset_size: float | int = 0.1,
                             n_subsets: int = 64, fill: Any = None, **kwargs: Any) -> MetricResult:
    """Faithfulness correlation (Bhatt, Weller & Moura, 2020, "Evaluating and Aggregating
    Feature-based Model Explanations", IJCAI).

    For ``n_subsets`` random subsets S of ``subset_size`` features per sample: the Pearson
    correlation between ``sum_{i in S} a_i`` and ``f(x) - f(x with S replaced by fill)``.
    1 for attributions that predict the effect of removals exactly (a linear model's
    contributions), about 0 for random ones.

    Parameters
    ----------
    subset_size : float in (0, 1] or int, default 0.1
        Fraction of the features (or a count) per subset.
    n_subsets : int, default 64
        Random subsets per sample (model evaluations per sample).
    fill, features, background, sigma, target, seed, batch_size, progress
        As for :func:`removal_curve`.
    scale : {"raw", "probability", "auto"}, default "raw"
        The output whose drops are compared with the attribution sums: the raw output, which is
        what the attribution explains (see :func:`removal_curve` for the others).
    """
    sums, drops, counts, lay, n_evals, fill_name, scale = subset_effects(
        model, explanation, [subset_size], n_subsets, fill=fill, **kwargs)
    corr = rowwise_pearson(sums[:, 0], drops[:, 0])
    return MetricResult(
        "faithfulness_correlation", corr, "higher", explanation.method,
        params={"subset_size": subset_size, "n_subsets": n_subsets, "fill": fill_name, "scale": scale,
                "seed": kwargs.get("seed", 0)},
        meta={"n_evals": int(n_evals), "subset_counts": counts[:, 0]},
    )


@register_metric("monotonicity", "faithfulness", "higher", ("model",),
                 "Spearman correlation of group attribution and the effect of removing the group (Nguyen & Martinez, 2020)")
def monotonicity(model: Any, explanation: Explanation, *, n_groups: int = 20, fill: Any = None,
                 features: Any = None, background: Any = None, sigma: float = 5.0, scale: str = "raw",
                 target: Any = None, seed: int = 0, batch_size: int | None = None,
                 progress: bool | None = None) -> MetricResult:
    """Monotonicity correlation (Nguyen & Martínez, 2020, "On quantitative aspects of model
    interpretability").

    The features of each sample are sorted by attribution and cut into ``n_groups`` groups of
    (almost) equal size; each group alone is removed (replaced by ``fill``), and the Spearman
    correlation between the groups' attribution sums and the score drops is the score. Where the
    paper measures the variance of the output under random replacement, this uses the signed drop
    for one fill, which makes it 1 for the exact contributions of a linear model and -1 for their
    negation.

    Parameters
    ----------
    n_groups : int, default 20
        Groups per sample (capped at the number of features); model evaluations per sample.
    fill, features, background, sigma, target, seed, batch_size, progress
        As for :func:`removal_curve`.
    scale : {"raw", "probability", "auto"}, default "raw"
        As for :func:`faithfulness_correlation`.
    """
    n_groups = check_number(n_groups, "n_groups", low=2, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    explanation = check_explanation(explanation)
    lay = layout(explanation, features)
    n = lay.n
    G = int(min(n_groups, lay.n_features.min()))
    if G < 2:
        raise ValueError("monotonicity needs at least 2 features per sample")
    attr = lay.feature_sums(lay.map)
    ranks = random_order(attr, lay.valid(), seed, descending=False)
    group = np.where(lay.valid(), ranks * G // lay.n_features[:, None], -1)  # ascending attribution
    gsum = np.stack([np.where(group == g, attr, 0).sum(1) for g in range(G)], axis=1)
    with model_scorer(model, explanation, target, batch_size=batch_size, scale=scale,
                      progress=progress) as sc:
        rem = _Remover(sc, lay, fill, background=background, sigma=sigma, seed=seed)
        dev = sc.x.device
        group_t = torch.as_tensor(group, device=dev)

        def build(sl):
            r = torch.arange(sl.start, sl.stop, device=dev)
            i, g = r // G, r % G
            return rem.rows(group_t[i] == g[:, None], i, g), i

        vals = sc.evaluate(n * G, build, desc="monotonicity").reshape(n, G)
        drops = sc.f0[:, None] - vals
        n_evals = sc.n_evals
    corr = rowwise_spearman(gsum, drops)
    return MetricResult(
        "monotonicity", corr, "higher", explanation.method,
        params={"n_groups": G, "fill": rem.fill_name, "scale": sc.scale, "seed": seed},
        curves={"group_attribution": gsum, "drop": drops},
        meta={"n_evals": int(n_evals)},
    )


@register_metric("infidelity", "faithfulness", "lower", ("model",),
                 "Squared error of the attribution's prediction of the effect of perturbations (Yeh et al., 2019)")
def infidelity(model: Any, explanation: Explanation, *, perturbation: str = "noise",
               noise_std: float | Any = 0.1, subset_size: float | int = 0.25, n_samples: int = 32,
               normalise: bool = True, fill: Any = None, features: Any = None, scale: str = "raw",
               target: Any = None, seed: int = 0, batch_size: int | None = None,
               progress: bool | None = None) -> MetricResult:
    """Explanation infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, 2019, "On the (In)fidelity
    and Sensitivity of Explanations", NeurIPS).

    ``INFD = E_I[(I · a - (f(x) - f(x - I)))^2]`` over random perturbations ``I``. Which
    perturbation fits depends on what the attribution claims:

    - ``perturbation="noise"``: Gaussian ``I ~ N(0, noise_std^2)`` on every input element. Fits
      attributions *per input unit* (gradients, SmoothGrad): for a linear model the gradient scores 0.
    - ``perturbation="subset"``: ``I`` removes a random subset S of features (replaced by
      ``fill``), and ``I · a`` is read as ``sum_{i in S} a_i`` (Yeh et al.'s removal perturbations,
      Captum's ``multiply_by_inputs``). Fits attributions that share out ``f(x) - f(x0)``
      (gradient × input, integrated gradients, Shapley values, LRP): for a linear model the exact
      contributions score 0.

    With ``normalise=True`` the attribution is first scaled per sample by the least-squares factor
    ``beta = E[(I·a) Δ] / E[(I·a)^2]`` (Yeh et al.'s scale-free version, Captum's
    ``normalize=True``), so methods with arbitrary scales compare fairly.

    Parameters
    ----------
    perturbation : {"noise", "subset"}, default "noise"
    noise_std : float or array, default 0.1
        Std of the noise in input units (an array broadcasting to one sample gives one std per
        feature, for tables with features on different scales).
    subset_size : float in (0, 1] or int, default 0.25
        Features per removed subset (``perturbation="subset"``).
    n_samples : int, default 32
        Perturbations drawn per sample (model evaluations per sample).
    normalise : bool, default True
    fill, features : for ``perturbation="subset"``, as for :func:`removal_curve`.
    scale : {"raw", "probability", "auto"}, default "raw"
        As for :func:`faithfulness_correlation`.

    Notes
    -----
    With ``"noise"``, attributions given per pixel (``(n, 1, H, W)``) or per token are multiplied
    with the noise summed over the channels / embedding axis.
    """
    if perturbation not in ("noise", "subset"):
        raise ValueError(f"perturbation must be 'noise' or 'subset'; got {perturbation!r}")
    R = check_number(n_samples, "n_samples", low=2, integer=True)
    seed = check_number(seed, "seed", low=0, integer=True)
    explanation = check_explanation(explanation)
    if perturbation == "subset":
        sums, drops, _, _, n_evals, fill_name, scale = subset_effects(
            model, explanation, [subset_size], R, fill=fill, features=features, scale=scale,
            target=target, seed=seed, batch_size=batch_size, progress=progress, tag=29)
        pred, delta = sums[:, 0], drops[:, 0]
        params = {"perturbation": "subset", "subset_size": subset_size, "fill": fill_name}
    else:
        pred, delta, n_evals, std, scale = _noise_effects(model, explanation, noise_std, R, scale, target, seed,
                                                          batch_size, progress)
        params = {"perturbation": "noise",
                  "noise_std": float(std.flat[0]) if np.all(std == std.flat[0]) else "array"}
    n = len(pred)
    if normalise:
        den = (pred * pred).sum(1)
        beta = np.where(den > 0, (pred * delta).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    else:
        beta = np.ones(n)
    infid = ((beta[:, None] * pred - delta) ** 2).mean(1)
    params.update({"n_samples": R, "normalise": normalise, "scale": scale, "seed": seed})
    return MetricResult("infidelity", infid, "lower", explanation.method, params=params,
                        meta={"n_evals": int(n_evals), "beta": beta})


def _noise_effects(model, explanation, noise_std, R, scale, target, seed, batch_size, progress):
    """(I·a, f(x) - f(x - I)) for Gaussian perturbations, each (n, R)."""
    lay = layout(explanation)
    values = np.asarray(explanation.values, dtype=np.float64)
    elementwise = values.shape[1:] == lay.input_shape
    phi = (values if elementwise else lay.map).reshape(lay.n, -1)
    n = lay.n
    with model_scorer(model, explanation, target, batch_size=batch_size, scale=scale,
                      progress=progress) as sc:
        x = sc.x
        if not x.is_floating_point():
            raise ValueError("infidelity with noise perturbs inputs; integer inputs (token ids) take "
                             "perturbation='subset'")
        std = np.asarray(noise_std, dtype=np.float64)
        if np.any(~np.isfinite(std)) or np.any(std <= 0):
            raise ValueError(f"noise_std must be positive; got {noise_std!r}")
        try:
            std = np.broadcast_to(std, lay.input_shape)
        except ValueError:
            raise ValueError(f"noise_std of shape {std.shape} does not broadcast to one sample "
                             f"{lay.input_shape}") from None
        pred = np.empty(n * R)
        dev = x.device

        std32 = std.astype(np.float32)

        def build(sl):
            r = np.arange(sl.start, sl.stop)
            i = r // R
            noise = np.empty((len(r),) + lay.input_shape, dtype=np.float32)
            for k, (a, b) in enumerate(zip(i, r % R)):  # one generator per (sample, draw)
                row_rng(seed, 5, a, b).standard_normal(lay.input_shape, dtype=np.float32, out=noise[k])
            noise *= std32
            red = noise if elementwise else noise.sum(axis=tuple(a + 1 for a in lay.expand))
            pred[sl] = np.einsum("ij,ij->i", red.reshape(len(r), -1), phi[i], dtype=np.float64)
            it = torch.as_tensor(i, device=dev)
            return x[it] - torch.from_numpy(noise).to(dtype=x.dtype, device=dev), it

        vals = sc.evaluate(n * R, build, desc="infidelity").reshape(n, R)
        delta = sc.f0[:, None] - vals
        n_evals = sc.n_evals
    return pred.reshape(n, R), delta, n_evals, std, sc.scale
