"""LIME: a sparse, locally weighted linear surrogate of any model.

Ribeiro, Singh & Guestrin (2016), "'Why Should I Trust You?': Explaining the Predictions of Any
Classifier". Tables, images (superpixels) and texts (words).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.blackbox import BlackBox
from ..core.execution import chunks
from ..core.explanation import Explanation
from ..core.groups import column_groups
from ..core.registry import register
from ..core.targets import resolve_target
from ._game import Game, clean_params, row_generators
from ._surrogate import SELECTIONS, check_surrogate, fit_surrogate
from ._tabular import TabularData, _is_frame, check_several_tables, is_several, is_tabular, table_layout
from .maskers import Masker, default_masker, table_fields

__all__ = ["lime"]

_DISCRETIZERS = ("quartile", "decile", "entropy", None)


@register("lime", "surrogate",
          "LIME: K-Lasso local linear surrogate on perturbed samples (tables, images, texts)",
          models="any")
def lime(model: Any, inputs: Any, target: Any = None, *, background: Any = None,
         masker: Masker | None = None, n_samples: int | None = None, n_features: int | None = None,
         selection: str = "lars", surrogate: Any = "ridge", kernel: Callable | None = None,
         sampler: Callable | None = None, groups: Sequence | Mapping | None = None,
         discretizer: str | None = "quartile", labels: Any = None,
         categorical: Sequence | None = None, feature_names: Sequence[str] | None = None,
         kernel_width: float | None = None, sample_around_instance: bool = True,
         alpha: float = 1.0, stability: int = 0, seed: int | None = 0, output: str = "auto",
         batch_size: int | None = None, progress: bool | None = None,
         forward_args: Any = None) -> Explanation:
    """Explain each sample by a weighted linear model fitted on perturbed copies of it.

    The samples and their *interpretable representation* (the surrogate's features) are:

    - **tables** (``background`` = training data): each column is redrawn from its training
      distribution (its empirical marginal, which is LIME's "pick a bin by frequency, then a value
      in the bin"), and the representation is 1 where the sample falls in the same bin as the
      explained value (numeric columns discretised by ``discretizer``) or has the same category;
      with ``discretizer=None`` numeric columns are drawn from ``x + sd * N(0, 1)``
      (``sample_around_instance``) or ``mean + sd * N(0, 1)``, clipped to the column's training
      range, and represented by
      ``(z - x) / sd``, so the coefficient divided by ``sd`` is the local slope
      (``meta["slopes"]``);
    - **column groups** (``groups=``, tables): each group is one interpretable feature, kept
      (its columns as in the explained row) or removed (its columns taken together from one
      random training row, so the values within a group stay consistent) uniformly at random;
      the representation is the on/off pattern, as for images;
    - **images**: superpixels kept or filled (uniformly random on/off, as LIME), via the masker;
    - **texts**: a random number of words removed, via the masker.

    Proximity weights are LIME's: ``sqrt(exp(-d² / width²))`` with the Euclidean distance in the
    representation for tables (width ``0.75 sqrt(d)``), the cosine distance for images (width
    0.25) and 100 × the cosine distance for texts (width 25); ``kernel=`` replaces them. The
    first sample is the input itself. The surrogate is by default scikit-learn's ``Ridge(alpha)``
    with ``sample_weight`` on at most ``n_features`` features chosen by the LARS/Lasso path
    (K-Lasso, ``"lars"``), forward selection or the largest ridge weights; ``surrogate=`` takes
    the Lasso path itself or any scikit-learn regressor. Sampling is vectorised for all samples at
    once and the model sees large batches; ``seed`` fixes the result.

    Parameters
    ----------
    model : callable, scikit-learn estimator or pipeline, booster or torch module
    inputs : DataFrame or array (n, d), image batch, or list of str; or a tuple/dict of tables
        For a model of several inputs (``model(x_num, x_cat)``, or keywords for a dict), one
        table per input with the same rows: the columns of all inputs are the surrogate's
        features, named ``"<input>:<column>"``, and ``values`` holds one ``(n, d_k)`` array per
        input (one ``(n, groups)`` array with ``groups``; the per-feature ``meta`` arrays keep
        all columns in that order). Images and texts take one input.
    target : int, sequence of int, "predicted", callable or None
    background : DataFrame or array (a tuple/dict of tables for several inputs), optional
        Training data of a table (required for tables unless a ``masker`` is given). Every row
        is used (no subsample): ``meta["n_background"]`` records how many.
    masker : Masker, optional
        For images and texts (default: SLIC superpixels with mean fill; word deletion). For a
        table, a :class:`~lumos.agnostic.maskers.TabularMasker` switches to coalition sampling
        over its background instead of LIME's distribution sampling.
    n_samples : int, optional
        Perturbed samples per explained input (default 5000 for tables and texts, 1000 for images).
    n_features : int, optional
        Most features in the surrogate (K). ``None``: all.
    selection : {"lars", "forward", "highest_weights", "none"}, default "lars"
        How the K features are chosen (for ``surrogate="lasso_path"`` the path itself chooses).
    surrogate : {"ridge", "lasso_path"} or scikit-learn regressor, default "ridge"
        The local model: weighted ``Ridge(alpha)`` on the selected features; the weighted Lasso
        path (LARS) read at its last point with at most ``n_features`` non-zero coefficients
        (the path's coefficients, no refit); or any regressor instance with ``coef_`` whose
        ``fit`` takes ``sample_weight`` (cloned for every explained sample; its ``coef_`` are the
        values).
    kernel : callable, optional
        Proximity kernel ``distances (S,) -> weights (S,)`` (non-negative, finite). Default
        LIME's exponential kernel ``sqrt(exp(-d² / kernel_width²))``.
    sampler : callable, optional
        Draws the perturbed samples from ``generator`` (a numpy Generator, one per explained
        sample). Tables: ``sampler(x, n_samples, generator) -> (n_samples, d)`` rows around the
        encoded row ``x`` (categorical columns as codes), represented as LIME's bins or
        continuous differences; groups, images, texts and maskers:
        ``sampler(n_features, n_samples, generator) -> bool (n_samples, n_features)`` on/off
        patterns of the interpretable features. The first sample is always the input itself.
    groups : sequence of column lists, or mapping name -> columns, optional
        Tables: explain groups of columns (by name or index) as single features; columns in no
        group stand alone. ``values`` then has one column per group and ``feature_names`` the
        group names (the mapping's keys, or the members joined by ``+``).
    discretizer : {"quartile", "decile", "entropy", None}, default "quartile"
        Bins of numeric columns: training quartiles or deciles, or the thresholds of a depth-3
        decision tree of each column against ``labels`` (entropy for class labels; the model's
        predicted class on ``background`` when ``labels`` is not given). ``None``: continuous mode.
    labels : array, optional
        Training labels for the entropy discretizer.
    categorical, feature_names
        Column kinds and names of an array (a DataFrame's are read from it).
    kernel_width : float, optional
        Width of the proximity kernel (defaults above).
    sample_around_instance : bool, default True
        Continuous mode: draw around the explained input (LIME's default draws around the mean).
    alpha : float, default 1.0
        Ridge penalty of the surrogate.
    stability : int, default 0
        Extra runs with seeds ``seed + 1 ..``: ``meta["stability"]`` (n,) is the mean pairwise
        Jaccard index of the selected features across the ``1 + stability`` runs (the K largest
        |coefficients| when no K is set, K = min(10, d)) and ``meta["selection_frequency"]``
        (n, d) how often each feature was selected.
    seed : int, default 0
    output, batch_size, progress
        Scoring function of an estimator, model rows per call, progress bar.
    forward_args : tuple, dict, lumos.Args or None
        Extra model arguments that are not explained; per-sample ones (first axis = the number of
        explained samples) are expanded to every perturbed sample of their row (see
        :func:`~lumos.agnostic.shapley.kernel.kernel_shap`).

    Returns
    -------
    Explanation
        ``values`` the surrogate's coefficients (n, d) for tables (0 for features not selected;
        layouts for images and texts in :mod:`lumos.agnostic.maskers`), ``meta["intercept"]``,
        ``meta["r2"]`` (weighted R², the local fidelity), ``meta["local_prediction"]``,
        ``meta["selected"]``, ``meta["conditions"]`` for tables (not with ``groups``),
        ``meta["n_background"]`` the training rows used.
    """
    from ..core.validation import check_choice, check_number

    check_choice(selection, "selection", SELECTIONS)
    check_choice(discretizer, "discretizer", _DISCRETIZERS)
    if n_features is not None:
        n_features = check_number(n_features, "n_features", low=1, integer=True)
    if n_samples is not None:
        n_samples = check_number(n_samples, "n_samples", low=2, integer=True)
    stability = check_number(stability, "stability", low=0, integer=True)
    if kernel_width is not None:
        kernel_width = check_number(kernel_width, "kernel_width", low=0, low_open=True)
    alpha = check_number(alpha, "alpha", low=0)
    surrogate = check_surrogate(surrogate)
    for name, fn in (("kernel", kernel), ("sampler", sampler)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be a callable or None; got {type(fn).__name__}")
    params = dict(n_samples=n_samples, n_features=n_features, selection=selection,
                  surrogate=surrogate if isinstance(surrogate, str) else repr(surrogate),
                  kernel=kernel, sampler=sampler, discretizer=discretizer,
                  kernel_width=kernel_width, sample_around_instance=sample_around_instance,
                  alpha=alpha, stability=stability, seed=seed, output=output,
                  forward_args=forward_args)
    seeds = [None if seed is None else int(seed) + r for r in range(1 + int(stability))]
    local = _Local(n_features, selection, surrogate, alpha, kernel, kernel_width, sampler)
    several = is_several(inputs)
    if several:
        check_several_tables(inputs, "lime")
    if (several or is_tabular(inputs)) and masker is None:
        if background is None:
            raise ValueError("background: lime on a table needs the training data "
                             "(background=X_train; one table per input for several inputs) to "
                             "draw perturbed samples from, or masker=TabularMasker(X_train)")
        return _lime_tabular(model, inputs, target, background, n_samples or 5000, local, groups,
                             discretizer, labels, categorical, feature_names,
                             sample_around_instance, seeds, output, batch_size, progress, params,
                             forward_args)
    if background is not None and masker is None:
        raise ValueError("background= is for tables; for images and texts pass masker=")
    if groups is not None:
        raise ValueError("groups: lime takes column groups for tables given with background=; "
                         "for images and texts the masker's segments or words are the features")
    return _lime_masked(model, inputs, target, masker, n_samples, local, seeds, output,
                        batch_size, progress, params, forward_args)


# ---------------------------------------------------------------------- shared
class _Local:
    """How each local surrogate is fitted: kernel, sampler, feature selection and regressor."""

    def __init__(self, k, selection, surrogate, alpha, kernel, width, sampler):
        self.k, self.selection, self.surrogate, self.alpha = k, selection, surrogate, alpha
        self.kernel, self.width, self.sampler = kernel, width, sampler

    def weights(self, dist: np.ndarray, default_width: float) -> np.ndarray:
        """Proximity weights of distances (..., S): LIME's exponential kernel or the user's."""
        if self.kernel is None:
            width = self.width if self.width is not None else default_width
            return np.sqrt(np.exp(-dist ** 2 / width ** 2))
        out = np.empty(dist.shape)
        for idx in np.ndindex(dist.shape[:-1]):
            w = np.asarray(self.kernel(dist[idx].copy()), dtype=np.float64)
            if w.shape != dist.shape[-1:] or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"kernel must return {dist.shape[-1]} finite, non-negative weights "
                                 f"(one per distance); got shape {w.shape}")
            out[idx] = w
        return out

    def patterns(self, M: int, S: int, gen: np.random.Generator, default) -> np.ndarray:
        """On/off patterns (S, M) of ``M`` interpretable features: the user's sampler or
        ``default(M, S, gen)``; the first is all on (the input itself)."""
        if self.sampler is None:
            z = default(M, S, gen)
        else:
            z = np.asarray(self.sampler(M, S, gen))
            if z.shape != (S, M):
                raise ValueError(f"sampler must return on/off patterns of shape (n_samples, "
                                 f"n_features) = ({S}, {M}); got {z.shape}")
            z = z.astype(bool)
        z[0] = True
        return z

    def fit(self, reps, ys, ws, x0s) -> list[dict]:
        return [fit_surrogate(R, y, w, x0, self.k, self.selection, self.alpha, self.surrogate)
                for R, y, w, x0 in zip(reps, ys, ws, x0s)]


def _half(M: int, S: int, gen: np.random.Generator) -> np.ndarray:
    """LIME's image (and group) sampling: every feature on or off with probability 1/2."""
    return gen.random((S, M)) < 0.5


def _text_patterns(M: int, S: int, gen: np.random.Generator) -> np.ndarray:
    """LIME's text sampling: remove a uniform number (1..M) of distinct words."""
    n_off = gen.integers(1, M + 1, size=S)
    order = np.argsort(gen.random((S, M)), axis=1)
    return np.argsort(order, axis=1) >= n_off[:, None]


def _stability(fits_by_seed: list[list[dict]], k: int | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(fits_by_seed[0])
    d = len(fits_by_seed[0][0]["coef"])
    kk = min(10, d) if k is None else k
    stab = np.empty(n)
    freq = np.zeros((n, d))
    for i in range(n):
        sets = []
        for fits in fits_by_seed:
            f = fits[i]
            if k is None:
                top = np.argsort(-np.abs(f["coef"]), kind="stable")[:kk]
                sel = np.zeros(d, bool)
                sel[top] = True
            else:
                sel = f["selected"]
            sets.append(sel)
            freq[i] += sel
        jac = [np.sum(a & b) / max(1, np.sum(a | b)) for a_i, a in enumerate(sets) for b in sets[a_i + 1:]]
        stab[i] = float(np.mean(jac)) if jac else 1.0
    return stab, freq / len(fits_by_seed)


def _result_meta(fits: list[dict]) -> dict:
    return {
        "intercept": np.array([f["intercept"] for f in fits]),
        "r2": np.array([f["r2"] for f in fits]),
        "local_prediction": np.array([f["local_prediction"] for f in fits]),
    }


# ---------------------------------------------------------------------- tables
class _TabularSampler:
    """LIME's sampling of tables, vectorised over explained rows and samples."""

    def __init__(self, table: TabularData, train: np.ndarray, discretizer: str | None,
                 labels: np.ndarray | None, sample_around_instance: bool, seed):
        self.table = table
        self.train = train
        self.discretizer = discretizer
        self.around = sample_around_instance
        num = ~table.categorical
        self.mean = np.nanmean(train, 0)
        self.lo, self.hi = np.nanmin(train, 0), np.nanmax(train, 0)
        sd = np.nanstd(train, 0)
        self.sd = np.where((sd > 0) & num, sd, 1.0)
        self.edges: dict[int, np.ndarray] = {}
        # the bin (or category) of every training value, once: samples are training values
        self.train_bins = train.copy()
        if discretizer is not None:
            for j in np.flatnonzero(num):
                self.edges[j] = self._edges(train[:, j], discretizer, labels, seed)
                self.train_bins[:, j] = self.bins(train[:, j], j)

    @staticmethod
    def _edges(col: np.ndarray, how: str, labels, seed) -> np.ndarray:
        col_ok = col[np.isfinite(col)]
        if how in ("quartile", "decile"):
            qs = [25, 50, 75] if how == "quartile" else list(range(10, 100, 10))
            return np.unique(np.percentile(col_ok, qs))
        from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

        ok = np.isfinite(col)
        lab = labels[ok]
        if lab.dtype.kind in "f" and len(np.unique(lab)) > 20:
            tree = DecisionTreeRegressor(max_depth=3, random_state=0)
        else:
            tree = DecisionTreeClassifier(criterion="entropy", max_depth=3, random_state=0)
        tree.fit(col_ok[:, None], lab)
        t = tree.tree_.threshold[tree.tree_.feature >= 0]
        return np.unique(t) if len(t) else np.unique(np.percentile(col_ok, [50]))

    def bins(self, Z: np.ndarray, j: int) -> np.ndarray:
        # bin k holds values in (edge[k-1], edge[k]]: LIME's "a < x <= b"
        return np.searchsorted(self.edges[j], Z, side="left")

    def all_bins(self, Z: np.ndarray) -> np.ndarray:
        """Bins of the discretised columns, categories (codes) and values of the others."""
        out = Z.copy()
        for j in self.edges:
            out[..., j] = self.bins(Z[..., j], j)
        return out

    def sample(self, X: np.ndarray, S: int, gens: list[np.random.Generator],
               sampler: Callable | None = None):
        """``(samples (n, S, d), representation (n, S, d), x representation (n, d), d² (n, S))``;
        row ``i`` draws from ``gens[i]`` (its result does not depend on the other rows)."""
        n, d = X.shape
        num = ~self.table.categorical
        xb = self.all_bins(X)
        if sampler is None:
            # every column redrawn from its training marginal (bin by frequency, value in the bin)
            pick = np.stack([g.integers(0, len(self.train), size=(S, d)) for g in gens])
            flat = pick * d + np.arange(d)  # flat take: cheaper than 2-D fancy indexing
            Zs = self.train.reshape(-1).take(flat)
            # bins (or categories) of the samples are looked up, not recomputed
            rep = (self.train_bins.reshape(-1).take(flat) == xb[:, None, :]).astype(np.float64)
            if self.discretizer is None:
                noise = np.stack([g.standard_normal((S, d)) for g in gens])
                centre = X[:, None, :] if self.around else self.mean
                # kept within each column's training range: a model (or formula) need not be
                # defined beyond it (a negative income, a ratio above 1)
                drawn = np.clip(centre + noise * self.sd, self.lo, self.hi)
                Zs[..., num] = drawn[..., num]
        else:
            Zs = np.empty((n, S, d))
            for i, g in enumerate(gens):
                z = np.asarray(sampler(X[i].copy(), S, g), dtype=np.float64)
                if z.shape != (S, d):
                    raise ValueError(f"sampler must return samples of shape (n_samples, d) = "
                                     f"({S}, {d}); got {z.shape}")
                Zs[i] = z
            rep = (self.all_bins(Zs) == xb[:, None, :]).astype(np.float64)
        x0 = np.ones((n, d))
        Zs[:, 0, :] = X  # the first sample is the input itself
        if self.discretizer is None:
            rep[..., num] = (Zs[..., num] - X[:, None, num]) / self.sd[num]
            x0[:, num] = 0.0
        rep[:, 0, :] = x0
        diff = rep - x0[:, None, :]
        d2 = np.sum(diff * diff, axis=2)
        return Zs, rep, x0, d2

    def conditions(self, X: np.ndarray) -> np.ndarray:
        n, d = X.shape
        names = self.table.names
        shown = self.table.describe(X)
        out = np.empty((n, d), dtype=object)
        for j in range(d):
            if self.table.categorical[j] or self.discretizer is None:
                out[:, j] = [f"{names[j]} = {v}" for v in shown[:, j]]
                continue
            e = self.edges[j]
            b = self.bins(X[:, j], j)
            for i in range(n):
                k = b[i]
                if k == 0:
                    out[i, j] = f"{names[j]} <= {e[0]:.4g}"
                elif k == len(e):
                    out[i, j] = f"{names[j]} > {e[-1]:.4g}"
                else:
                    out[i, j] = f"{e[k - 1]:.4g} < {names[j]} <= {e[k]:.4g}"
        return out.astype(str)


def _evaluate(f: BlackBox, tgt, table: TabularData, Zs: np.ndarray, b0: int, progress) -> np.ndarray:
    """The explained scalar of the model on samples Zs (nb, S, d) of rows b0.. : shape (nb, S)."""
    nb, S, d = Zs.shape
    flat = Zs.reshape(nb * S, d)
    rows = np.repeat(np.arange(b0, b0 + nb), S)  # the explained sample of every perturbed row
    y = np.empty(nb * S)
    for sl in chunks(nb * S, f.batch_size, desc="lime", progress=progress, unit="sample"):
        y[sl] = tgt.select(f(table.decode(flat[sl]), rows=rows[sl]), rows[sl])
    return y.reshape(nb, S)


def _lime_tabular(model, inputs, target, background, S, local, groups, discretizer, labels,
                  categorical, feature_names, around, seeds, output, batch_size, progress,
                  params, forward_args=None) -> Explanation:
    several = is_several(inputs)
    if not several and not is_several(background) and _is_frame(background) != _is_frame(inputs):
        raise ValueError("inputs and background must both be DataFrames or both arrays")
    table = table_layout(background, inputs, categorical=categorical, feature_names=feature_names)
    train = table.encode(background, name="background")
    X = table.encode(inputs)
    f = BlackBox(model, output=output, batch_size=batch_size if batch_size is not None else 65536,
                 method="lime", forward_args=forward_args, inputs=inputs)
    out = f(table.decode(X), rows=np.arange(len(X)))
    tgt = resolve_target(target, out)
    fx = np.asarray(tgt.select(out), dtype=np.float64)
    n, d = X.shape
    if groups is not None:
        labels_, names = column_groups(groups, table.names)
        M = len(names)
        width = 0.75 * np.sqrt(M)
    else:
        if discretizer == "entropy" and labels is None:
            if f.per_sample_args:
                raise ValueError(
                    "labels: discretizer='entropy' labels the background rows by the model, but "
                    "forward_args has per-sample arguments, which belong to the explained samples, "
                    "not to background rows; pass labels= (the training labels)")
            pred = f(table.decode(train))
            labels = pred.argmax(1) if pred.ndim == 2 and pred.shape[1] > 1 else pred.reshape(len(pred))
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != len(train):
                raise ValueError(f"labels has {len(labels)} entries but background has {len(train)} rows")
        sampler = _TabularSampler(table, train, discretizer, labels, around, seeds[0])
        M, names = d, table.names
        width = 0.75 * np.sqrt(d)
    fits_by_seed = []
    n_evals = np.ones(n, dtype=np.int64)
    # rows in blocks of a few million sampled cells: bounded memory, still large model batches
    block = max(1, 4_000_000 // (S * d))
    for sd in seeds:
        gens = row_generators(sd, n)
        fits: list[dict] = []
        for b0 in range(0, n, block):
            Xb = X[b0:b0 + block]
            gb = gens[b0:b0 + len(Xb)]
            if groups is not None:
                # a removed group takes its columns together from one random training row
                on = np.stack([local.patterns(M, S, g, _half) for g in gb])      # (nb, S, M)
                pick = np.stack([g.integers(0, len(train), size=S) for g in gb])
                Zs = np.where(on[..., labels_], Xb[:, None, :], train[pick])
                rep = on.astype(np.float64)
                x0 = np.ones((len(Xb), M))
                dist = np.sqrt(M - rep.sum(2))
            else:
                Zs, rep, x0, d2 = sampler.sample(Xb, S, gb, local.sampler)
                dist = np.sqrt(d2)
            y = _evaluate(f, tgt, table, Zs, b0, progress)
            fits += local.fit(rep, y, local.weights(dist, width), x0)
        n_evals += S
        fits_by_seed.append(fits)
    fits = fits_by_seed[0]
    values = np.stack([f_["coef"] for f_ in fits])
    fields = table_fields(table, X)
    inputs_out = X
    if several and groups is None:  # one array per input, in the inputs' structure
        values_out, inputs_out = table.unpack(values), table.unpack(X)
    else:
        values_out = values
    meta = {"target": tgt.description, "score": f.score_name, "modality": "tabular",
            "n_background": len(train),
            "kernel_width": float(local.width if local.width is not None else width),
            "representation": "continuous" if discretizer is None and groups is None else "binary"}
    meta.update(fields["meta"])
    smeta = dict(fields["sample_meta"])
    smeta.update(_result_meta(fits))
    smeta["selected"] = np.stack([f_["selected"] for f_ in fits])
    smeta["n_evals"] = n_evals
    if groups is not None:
        meta["groups"] = {g: [table.names[c] for c in np.flatnonzero(labels_ == k)]
                          for k, g in enumerate(names)}
    else:
        smeta["conditions"] = sampler.conditions(X)
        if discretizer is None:
            smeta["slopes"] = np.where(table.categorical, np.nan, values / sampler.sd)
            meta["scale"] = sampler.sd
    if len(seeds) > 1:
        smeta["stability"], smeta["selection_frequency"] = _stability(fits_by_seed, local.k)
    meta.update(smeta)
    return Explanation(values=values_out, inputs=inputs_out, target=tgt.indices, output=fx, method="lime",
                       params=clean_params(params), meta=meta, feature_names=names,
                       sample_keys=tuple(smeta))


# ---------------------------------------------------------------------- images, texts, maskers
def _lime_masked(model, inputs, target, masker, S, local, seeds, output, batch_size, progress,
                 params, forward_args=None) -> Explanation:
    masker = default_masker(inputs, masker, None, "lime")
    game = Game(model, inputs, target, masker, None, output, batch_size, method="lime",
                progress=progress, forward_args=forward_args)
    modality = game.data.modality
    if S is None:
        S = 1000 if modality == "image" else 5000
    n, Mmax = game.n, game.data.max_features
    default = _text_patterns if modality == "text" else _half
    fits_by_seed = []
    for sd in seeds:
        gens = row_generators(sd, n)
        Zall = np.zeros((n, S, Mmax), bool)
        for i in range(n):
            M = int(game.M[i])
            Zall[i, :, :M] = local.patterns(M, S, gens[i], default)
        rows = np.repeat(np.arange(n), S)
        y = game.value(rows, Zall.reshape(n * S, Mmax), desc="lime").reshape(n, S)
        reps, ws, x0s = [], [], []
        for i in range(n):
            M = int(game.M[i])
            Z = Zall[i, :, :M].astype(np.float64)
            on = Z.sum(1)
            cos = 1.0 - np.where(on > 0, on / np.sqrt(np.maximum(on, 1) * M), 0.0)
            if modality == "text":
                dist, width = cos * 100, 25.0
            elif modality == "image":
                dist, width = cos, 0.25
            else:
                dist, width = np.sqrt(M - on), 0.75 * np.sqrt(M)
            reps.append(Z)
            ws.append(local.weights(dist, width))
            x0s.append(np.ones(M))
        fits_by_seed.append(local.fit(reps, list(y), ws, x0s))
    fits = fits_by_seed[0]
    coef = np.zeros((n, Mmax))
    selected = np.zeros((n, Mmax), bool)
    for i, f_ in enumerate(fits):
        M = int(game.M[i])
        coef[i, :M] = f_["coef"]
        selected[i, :M] = f_["selected"]
    smeta = _result_meta(fits)
    if len(seeds) > 1:
        stab, freq = _stability_ragged(fits_by_seed, local.k, game.M, Mmax)
        smeta["stability"] = stab
        feature_meta = {"selected": selected, "selection_frequency": freq}
    else:
        feature_meta = {"selected": selected}
    return game.explanation(coef, "lime", params, baseline=None,
                            meta={"representation": "binary"}, sample_meta=smeta,
                            feature_meta=feature_meta)


def _stability_ragged(fits_by_seed, k, Ms, Mmax):
    n = len(Ms)
    stab = np.empty(n)
    freq = np.zeros((n, Mmax))
    for i in range(n):
        s, fr = _stability([[fits[i]] for fits in fits_by_seed], k)
        stab[i] = s[0]
        freq[i, : int(Ms[i])] = fr[0]
    return stab, freq
