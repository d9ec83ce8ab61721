"""Counterfactual explanations: the smallest changes of an input that give a desired outcome.

``counterfactuals(model, x, desired=..., method=...)`` answers "what would have to be different
for the model to decide otherwise?" for one row of a table, with several diverse answers, every
constraint respected and the answer's quality measured.

Methods
-------
- ``"genetic"`` (default, any model): a genetic search over a data-driven neighbourhood of x
  (features redrawn from the background's values and ranges), then a refinement that reverts
  changes and shortens numeric moves while the outcome holds (sparser, closer answers).
- ``"random"`` (any model): the same neighbourhood sampled afresh each round (no evolution), then
  the same refinement.
- ``"kdtree"`` (any model): the nearest *real* rows of ``background`` that have the desired outcome
  and satisfy every constraint (a k-d tree on the MAD-scaled features; plausible by construction).
- ``"gradient"`` (torch modules): Wachter et al. (2017), proximal gradient descent on a squared
  hinge on the desired margin plus the MAD-scaled L1 (or L2) distance, ``lambda`` raised until
  valid, a line search to the boundary, integers rounded and re-checked. Categorical features are
  held fixed by this method.

Several counterfactuals are chosen from the valid candidates with DiCE's determinantal
diversity (Mothilal, Sharma & Tan 2020): the closest first, then greedily the candidate that most
increases ``diversity * det(K) - mean distance``, ``K_ij = 1 / (1 + dist(c_i, c_j))``.

Distance is the MAD-scaled L1 distance (numeric features divided by their median absolute
deviation over ``background``; 1 per changed categorical feature): see
:mod:`lumos.examples._space`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..agnostic._tabular import TabularData, is_several
from ..core.execution import rng as make_rng
from ..core.validation import check_choice, check_number
from ._model import Outcome, Scorer
from ._search import Pool, dpp_diversity, genetic, kdtree, refine, select
from ._space import Space

__all__ = ["counterfactuals", "Counterfactuals", "METHODS"]

METHODS = ("genetic", "random", "kdtree", "gradient")


def _one_row(x: Any) -> tuple[Any, str, Any]:
    """``(table of one row, kind, torch dtype)`` for x given as a DataFrame, array or tensor."""
    if is_several(x):
        raise ValueError("x: counterfactuals explain one table row; models of several inputs are "
                         "not supported")
    if hasattr(x, "iloc") and not hasattr(x, "columns"):
        raise ValueError("x: give one row as a one-row DataFrame (df.iloc[[i]]), not a Series")
    if hasattr(x, "columns"):
        if len(x) != 1:
            raise ValueError(f"x must be one row; got a DataFrame of {len(x)} rows (explain rows one "
                             "at a time: df.iloc[[i]])")
        return x.reset_index(drop=True), "frame", None
    dtype = None
    if hasattr(x, "detach"):
        dtype = x.dtype
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or len(a) != 1:
        raise ValueError(f"x must be one row, shape (d,) or (1, d); got shape {np.shape(x)} (explain "
                         "rows one at a time)")
    return a, ("tensor" if dtype is not None else "array"), dtype


def _table(background: Any, kind: str) -> Any:
    if background is None:
        return None
    if hasattr(background, "detach"):
        background = background.detach().cpu().numpy()
    if kind == "frame":
        if not hasattr(background, "columns"):
            raise ValueError("background: x is a DataFrame, so the background must be a DataFrame "
                             "with the same columns")
        return background.reset_index(drop=True)
    b = np.asarray(background)
    if b.ndim != 2 or len(b) == 0:
        raise ValueError(f"background must be a table of shape (rows, features); got shape {b.shape}")
    return b


def counterfactuals(model: Any, x: Any, desired: Any = "opposite", *, method: str = "genetic",
                    background: Any = None, n: int = 3, immutable: Any = None, ranges: Any = None,
                    monotone: Any = None, categorical: Any = None, integer: Any = None,
                    feature_names: Any = None, output: str = "auto", budget: int | None = None,
                    time_limit: float | None = None, n_iter: int | None = None,
                    population: int = 100, diversity: float = 1.0, refine_found: bool = True,
                    margin: float = 0.05, distance: str = "l1", seed: int | None = 0,
                    batch_size: int | None = None) -> "Counterfactuals":
    """Find ``n`` diverse counterfactuals of the row ``x``: nearby rows with the ``desired`` outcome.

    Parameters
    ----------
    model : callable, scikit-learn estimator or pipeline, or torch.nn.Module
        Called through :class:`lumos.core.blackbox.BlackBox` on batches of rows (a torch module
        under :class:`~lumos.core.torch_model.ModelGuard`: it is left as found).
    x : one-row DataFrame, array of shape (d,) or (1, d), or tensor
        The explained row. The counterfactuals come back in the same form.
    desired : int, "opposite" or (low, high), default "opposite"
        A class index (the model's argmax must become it), "opposite" (the other class of a
        binary classifier), or an output range for a model with one score per row (regression,
        a logit, a probability), ``None`` for an open end: ``desired=(0.5, None)``.
    method : {"genetic", "random", "kdtree", "gradient"}, default "genetic"
        See the module docstring. ``"gradient"`` needs a torch module.
    background : DataFrame or array (m, d)
        Reference rows: the MAD scales of the distance, the default ranges (each numeric
        feature within the data's [min, max], widened to include x), the values the searches
        draw from, the real rows of ``"kdtree"``, and the plausibility metric. Required except
        for ``"gradient"`` (without it, distances are in raw units and ranges open).
    n : int, default 3
        Number of counterfactuals.
    immutable : feature or list of features (names or indices)
        Held at x's values.
    ranges : dict, optional
        ``{feature: (low, high)}`` for numeric features (``None`` = open end; replaces the data's
        range), ``{feature: [allowed categories]}`` for categorical ones.
    monotone : dict, optional
        ``{feature: "increase" | "decrease"}`` (or +1 / -1): the feature may only move that way.
    categorical, integer : list of features, optional
        Columns to treat as categorical / integer besides those the data say (string and
        categorical columns; integer dtypes).
    feature_names : list of str, optional
        Names of an array's columns.
    output : {"auto", "predict_proba", "decision_function", "predict"}
        Which scores of an estimator (see :mod:`lumos.core.blackbox`).
    budget : int, optional
        Most model evaluations (rows) the search may make; it stops there and says so. The
        genetic and random searches keep a fifth of it for the refinement.
    time_limit : float, optional
        Most seconds the search may take; it stops there and says so.
    n_iter : int, optional
        Generations (genetic, default 50), rounds of ``population`` draws (random, default 50) or
        gradient steps (gradient, default 300). Not used by ``"kdtree"``.
    population : int, default 100
        Individuals per generation (genetic, random).
    diversity : float, default 1.0
        Weight of the determinantal diversity against proximity in the selection; 0 gives the
        ``n`` closest candidates.
    refine_found : bool, default True
        Genetic and random search: make the best candidates sparser and closer (greedy reverts and
        line searches towards x) before the selection.
    margin : float, default 0.05
        Gradient: how far past the decision boundary (in the model's output units) the
        optimisation aims before the line search pulls back to the boundary.
    distance : {"l1", "l2"}, default "l1"
        Gradient: the MAD-scaled norm of the change in the objective. Proximity is reported as
        the MAD-scaled L1 distance either way.
    seed : int, numpy Generator or None, default 0
    batch_size : int, optional
        Rows per model call.

    Returns
    -------
    Counterfactuals
        ``found``, ``reason`` (why nothing was found), ``counterfactuals``, ``table()``,
        ``styled()``, ``metrics`` (validity, proximity, sparsity, diversity, plausibility),
        ``plot()``.

    Notes
    -----
    Every candidate is projected into the feasible set before the model sees it, so every
    counterfactual respects every constraint by construction; the returned ones are checked
    again (the model re-evaluated, each constraint re-checked as stated) and any that fails is
    dropped and counted in ``meta["dropped"]``.
    """
    check_choice(method, "method", METHODS)
    check_choice(distance, "distance", ("l1", "l2"))
    n = int(check_number(n, "n", low=1, integer=True))
    if budget is not None:
        budget = int(check_number(budget, "budget", low=1, integer=True))
    if time_limit is not None:
        time_limit = float(check_number(time_limit, "time_limit", low=0, low_open=True))
    if n_iter is not None:
        n_iter = int(check_number(n_iter, "n_iter", low=1, integer=True))
    population = int(check_number(population, "population", low=2, integer=True))
    diversity = float(check_number(diversity, "diversity", low=0))
    margin = float(check_number(margin, "margin", low=0, low_open=True))
    gen = make_rng(seed)
    x_table, kind, torch_dtype = _one_row(x)
    B_table = _table(background, kind)
    if B_table is None and method != "gradient":
        raise ValueError(f"background: method={method!r} needs background data (the neighbourhood "
                         "it searches, the scale of the distance); pass background=X_train")
    layout = TabularData.from_data(B_table, x_table, categorical=categorical,
                                   feature_names=feature_names, name="x")
    x_enc = layout.encode(x_table, name="x")[0]
    B = layout.encode(B_table, name="background") if B_table is not None else None
    space = Space(layout, x_enc, B, immutable=immutable, ranges=ranges, monotone=monotone,
                  integer=integer)
    scorer = Scorer(model, space, output, batch_size, budget, time_limit)
    s0 = scorer.scores(x_enc[None], "x", search=False)
    outcome = Outcome(desired, s0)
    params = dict(method=method, desired=desired if not isinstance(desired, tuple) else list(desired),
                  n=n, budget=budget, time_limit=time_limit, n_iter=n_iter, population=population,
                  diversity=diversity, seed=seed if not isinstance(seed, np.random.Generator) else "generator")
    result = dict(model_outcome=outcome, space=space, scorer=scorer, x_scores=s0[0], kind=kind,
                  torch_dtype=torch_dtype, params=params, x_table=x_table)
    if outcome.valid(outcome.margin(s0))[0]:
        return Counterfactuals._build(np.empty((0, len(x_enc))), reason=(
            f"x already has the desired outcome ({outcome.describe()}): nothing to change"), **result)

    pool = Pool(len(x_enc))
    report: dict = {}
    if method in ("genetic", "random"):
        iters = n_iter if n_iter is not None else 50
        if refine_found and budget is not None:
            scorer.budget = max(int(0.8 * budget), 1)   # a fifth of the budget kept for refining
        genetic(space, scorer, outcome, pool, gen, population=population, n_iter=iters,
                evolve=method == "genetic")
        scorer.budget = budget
        cands = pool.array()
        if not len(cands) and refine_found and budget is not None and scorer.stopped == "budget":
            scorer.stopped = None   # nothing to refine: the fifth kept for it searches on
            genetic(space, scorer, outcome, pool, gen, population=population, n_iter=iters,
                    evolve=method == "genetic")
            cands = pool.array()
        if refine_found and len(cands):
            refine(space, scorer, outcome, pool, select(space, cands, max(2 * n, 5), diversity))
            cands = pool.array()
    elif method == "kdtree":
        cands = kdtree(space, scorer, outcome, pool, B, report)
    else:
        from ._gradient import gradient_search

        cands = gradient_search(model, space, scorer, outcome, pool, gen,
                                n_restarts=1 if n == 1 else 3 * n,
                                n_iter=n_iter if n_iter is not None else 300, margin=margin,
                                distance=distance)
    chosen = select(space, cands, n, diversity)
    reason = None if len(chosen) else _why(space, scorer, outcome, pool, method, report, B,
                                           n_iter)
    return Counterfactuals._build(chosen, reason=reason, **result)


def _why(space, scorer, outcome, pool, method, report, B, n_iter) -> str:
    """Why nothing was found: which limit stopped the search, how close it came, what blocked."""
    if method == "kdtree":
        scored, m = report.get("scored", 0), len(B)
        msg = (f"no background row has {outcome.describe()} and satisfies every constraint: of the "
               f"{scored} rows scored{'' if scored == m else f' (of {m}; the budget ran out)'}, "
               f"{report.get('desired', 0)} have the desired outcome")
        blocked = report.get("blocked") or {}
        if blocked:
            msg += "; the constraints rule out " + ", ".join(
                f"{k}: {v}" for k, v in sorted(blocked.items(), key=lambda kv: -kv[1]))
        return msg
    best = pool.best_margin
    stop = {"budget": f"the budget of {scorer.budget} model evaluations ran out",
            "time": f"the time limit of {scorer.time_limit:g} s was reached" if scorer.time_limit else "",
            None: f"all {n_iter if n_iter is not None else 'default'} iterations ran"}[scorer.stopped]
    need = ">= 0" if outcome.kind == "range" else "> 0"
    msg = (f"no counterfactual reached {outcome.describe()} within {scorer.used} model evaluations "
           f"({stop}); the best margin reached was {best:.4g} (needs {need})")
    if pool.best_row is not None:
        pins = space.pinned(pool.best_row)
        if pins:
            msg += "; the best candidate sits against the constraints on " + ", ".join(pins)
    return msg


class Counterfactuals:
    """Counterfactuals of one row, with their quality (see :func:`counterfactuals`).

    Attributes
    ----------
    found : bool
        At least one counterfactual was found.
    reason : str or None
        Why none was found (the limit that stopped the search, the best margin reached, the
        constraints the best candidate sits against); ``None`` when found.
    counterfactuals : DataFrame, ndarray or tensor (k, d)
        The counterfactuals (k <= n), in the form x was given.
    x : DataFrame, ndarray or tensor (1, d)
        The explained row as given.
    encoded : ndarray (k, d)
        The counterfactuals encoded (categorical columns as codes into ``categories``).
    feature_names : list of str
    scores, x_scores : ndarray
        The model's scores of the counterfactuals (k,) or (k, classes), and of x.
    metrics : dict
        ``validity`` (k,) bool: the model gives the desired outcome (re-evaluated);
        ``constraints_ok`` (k,) bool: every constraint holds (re-checked as stated);
        ``proximity`` (k,): MAD-scaled L1 distance to x; ``sparsity`` (k,): features changed;
        ``diversity``: det(K), K_ij = 1/(1 + dist(c_i, c_j)) (1 for one counterfactual);
        ``mean_pairwise_distance``; ``plausibility`` (k,): mean MAD-L1 distance to the 5 nearest
        background rows (NaN without background; compare ``plausibility_x``, x's own);
        ``n_evals``: model rows evaluated by the search, ``seconds``, ``stopped`` ("budget",
        "time" or None).
    mad : ndarray (d,)
        The scales of the distance (1 for categorical features).
    params, meta : dict
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @classmethod
    def _build(cls, Z, *, reason, model_outcome, space, scorer, x_scores, kind, torch_dtype, params,
               x_table) -> "Counterfactuals":
        dropped = 0
        scores = np.empty((0,) + np.shape(x_scores))
        if len(Z):
            scores = scorer.scores(Z, "the counterfactuals (re-check)", search=False)
            valid = model_outcome.valid(model_outcome.margin(scores))
            ok = np.array([not v for v in space.violations(Z)], bool)
            keep = valid & ok
            dropped = int((~keep).sum())
            Z, scores = Z[keep], scores[keep]
            if not len(Z):
                reason = (f"{dropped} candidate(s) failed the final re-check (validity or constraints) "
                          "and were dropped")
        self = cls(found=bool(len(Z)), reason=reason, encoded=Z, x_encoded=space.x.copy(),
                   feature_names=list(space.names), scores=scores, x_scores=np.asarray(x_scores),
                   mad=space.mad.copy(), params=params, _space=space, _outcome=model_outcome,
                   _kind=kind, _torch_dtype=torch_dtype)
        self.x = x_table if kind != "tensor" else _as_tensor(x_table, torch_dtype)
        self.counterfactuals = self._user_form(Z)
        d = space.distance(Z)
        k = len(Z)
        metrics = {
            "validity": model_outcome.valid(model_outcome.margin(scores)) if k else np.zeros(0, bool),
            "constraints_ok": np.array([not v for v in space.violations(Z)], bool) if k else np.zeros(0, bool),
            "proximity": d,
            "sparsity": space.changed(Z).sum(1) if k else np.zeros(0, np.int64),
            "diversity": dpp_diversity(space, Z),
            "mean_pairwise_distance": (float(space.pairwise(Z)[np.triu_indices(k, 1)].mean())
                                       if k > 1 else float("nan")),
            "plausibility": np.full(k, np.nan),
            "plausibility_x": float("nan"),
            "n_evals": int(scorer.used),
            "seconds": float(scorer.seconds),
            "stopped": scorer.stopped,
        }
        if space.background is not None:
            from sklearn.neighbors import NearestNeighbors

            B = space.background
            nn = NearestNeighbors(n_neighbors=min(5, len(B)), metric="manhattan").fit(space.embed(B))
            rows = np.concatenate([space.x[None], Z]) if k else space.x[None]
            dist, _ = nn.kneighbors(space.embed(rows))
            metrics["plausibility_x"] = float(dist[0].mean())
            metrics["plausibility"] = dist[1:].mean(1)
        self.metrics = metrics
        self.meta = {"dropped": dropped, "desired": model_outcome.describe(),
                     "n_evals_extra": int(scorer.extra)}
        return self

    def _user_form(self, Z: np.ndarray):
        layout = self._space.layout
        if not len(Z):
            if self._kind == "frame":
                return self.x.iloc[:0]
            out = np.empty((0, len(self.feature_names)))
            return _as_tensor(out, self._torch_dtype) if self._kind == "tensor" else out
        out = layout.decode(Z)
        return _as_tensor(out, self._torch_dtype) if self._kind == "tensor" else out

    def __len__(self) -> int:
        return len(self.encoded)

    def __repr__(self) -> str:
        if not self.found:
            return f"Counterfactuals(found=False, reason={self.reason!r})"
        m = self.metrics
        return (f"Counterfactuals({len(self)} found for {self.meta['desired']}, method="
                f"{self.params['method']!r}, proximity {np.mean(m['proximity']):.3g}, sparsity "
                f"{np.mean(m['sparsity']):.2g}, {m['n_evals']} evaluations)")

    # ------------------------------------------------------------------ tables
    def _outcomes(self) -> list:
        S = np.concatenate([self.x_scores[None], self.scores]) if len(self) else self.x_scores[None]
        pred = self._outcome.predicted(S)
        return [int(p) if S.ndim == 2 else float(p) for p in pred]

    def changed(self) -> np.ndarray:
        """(k, d) bool: which features each counterfactual changes."""
        return self._space.changed(self.encoded) if len(self) else np.zeros((0, len(self.feature_names)), bool)

    def table(self) -> Any:
        """A DataFrame: the row ``"x"``, then one row per counterfactual (``"cf 1"``, ...), the
        features in their own types, and the model's ``outcome`` (class or output) last."""
        import pandas as pd

        rows = np.concatenate([self.x_encoded[None], self.encoded])
        decoded = self._space.layout.decode(rows)
        if hasattr(decoded, "columns"):
            df = decoded.copy()
            df.columns = self.feature_names
        else:
            df = pd.DataFrame(np.asarray(decoded), columns=self.feature_names)
        df.index = ["x"] + [f"cf {i + 1}" for i in range(len(self))]
        out_col = "outcome" if "outcome" not in df.columns else "outcome (model)"
        df[out_col] = self._outcomes()
        return df

    def styled(self) -> Any:
        """``table()`` as a pandas Styler: changed cells highlighted, every text escaped."""
        import pandas as pd

        df = self.table()
        changed = np.concatenate([np.zeros((1, len(self.feature_names)), bool), self.changed()])

        def colour(frame):
            css = np.full(frame.shape, "", dtype=object)
            css[:, :changed.shape[1]] = np.where(changed, "background-color: #fde0c5; font-weight: bold", "")
            return pd.DataFrame(css, index=frame.index, columns=frame.columns)

        return (df.style.apply(colour, axis=None).format(escape="html", precision=4)
                .format_index(escape="html", axis=0).format_index(escape="html", axis=1))

    def _repr_html_(self) -> str:
        from jinja2 import Environment

        df = self.table()
        changed = np.concatenate([np.zeros((1, len(self.feature_names)), bool), self.changed()])
        rows = []
        for i, (label, row) in enumerate(df.iterrows()):
            cells = []
            for j, v in enumerate(row.tolist()):
                text = f"{v:.4g}" if isinstance(v, float) else str(v)
                cells.append((text, j < changed.shape[1] and bool(changed[i, j])))
            rows.append((str(label), cells))
        m = self.metrics
        summary = None
        if self.found:
            summary = (f"{len(self)} counterfactual(s) for {self.meta['desired']} by "
                       f"{self.params['method']}: proximity (MAD L1) "
                       + ", ".join(f"{v:.3g}" for v in m["proximity"])
                       + "; features changed " + ", ".join(str(int(v)) for v in m["sparsity"])
                       + f"; diversity det(K) {m['diversity']:.3g}; {m['n_evals']} model evaluations")
        return Environment(autoescape=True).from_string(_TEMPLATE).render(
            columns=[str(c) for c in df.columns], rows=rows, summary=summary, reason=self.reason)

    # ------------------------------------------------------------------ picture
    def plot(self, index: int = 0, ax=None, **kwargs):
        """A diverging bar per changed feature of counterfactual ``index`` (change in MAD units;
        a changed category as a bar of length 1 labelled "old → new"). See
        :class:`lumos.display.counterfactuals.CounterfactualDisplay`."""
        from ..display.counterfactuals import CounterfactualDisplay

        return CounterfactualDisplay.from_result(self, index=index).plot(ax=ax, **kwargs)


def _as_tensor(a, dtype):
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)


_TEMPLATE = """<div class="lumos-counterfactuals">
{% if reason %}<p><b>No counterfactual:</b> {{ reason }}</p>{% endif %}
{% if summary %}<p>{{ summary }}</p>{% endif %}
<table style="border-collapse: collapse">
<thead><tr><th></th>{% for c in columns %}<th style="padding: 2px 6px">{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for label, cells in rows %}<tr><th style="padding: 2px 6px">{{ label }}</th>{% for text, hot in cells %}<td style="padding: 2px 6px{% if hot %}; background-color: #fde0c5; font-weight: bold{% endif %}">{{ text }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>"""
