"""The value function shared by the perturbation explainers.

``Game`` binds a black-box model, a masker bound to the explained inputs and a target: ``v(rows,
Z)`` is the explained scalar of sample ``rows[k]`` with only the *players* in coalition ``Z[k]``
kept, averaged over the masker's background rows (the interventional value function,
``v(S) = E_b f(x_S, b_{not S})``), and mapped through the output link. Coalitions of many samples
are evaluated together, so the model sees large batches; the number of model rows is counted per
sample.

Players are the masker's features (columns, superpixels, words), or for tables the ``groups`` of
columns the user names. A model of several inputs (a tuple/dict of tables) plays with the columns
of all its inputs (:class:`~lumos.agnostic._tabular.SeveralTables`); its values come back as one
array per input, or per group when ``groups`` are given (groups may join columns of different
inputs). Extra model arguments (``forward_args``) are passed on every call, per-sample ones
expanded to the explained sample of every masked row. With ``drop_null=True`` a table column whose explained value equals the
value of every background row is no player at all: its presence cannot change any masked input,
so its Shapley value is exactly 0 and it costs no budget.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..core.groups import column_groups, group_members  # noqa: F401 (column_groups re-exported)
from ..core.blackbox import BlackBox
from ..core.execution import check_batch_size, progress_bar
from ..core.explanation import Explanation
from ..core.targets import resolve_target
from ..core.validation import check_choice
from ._tabular import SeveralTables
from .maskers import MaskedInputs, MaskedTable, Masker, default_masker, table_fields

__all__ = ["Game", "clean_params", "row_generators", "LINKS", "column_groups"]

#: Output links: Shapley values of ``link(v(S))`` (shap's ``link=``).
LINKS = ("identity", "logit")


def row_generators(seed, n: int) -> list[np.random.Generator]:
    """One generator per explained sample: a sample's draws do not depend on the others."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int or None; got {seed!r}")
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


class Game:
    """A model, explained inputs behind a masker, and a target scalar.

    Parameters
    ----------
    model : callable, estimator, pipeline, booster or torch module
    inputs : DataFrame, array, image batch or list of texts
    target : int, sequence, "predicted", callable or None
    masker : Masker, optional
    background : DataFrame or array, optional
        Background data for tables (a :class:`~lumos.agnostic.maskers.TabularMasker` is built).
    output : {"auto", "predict_proba", "decision_function", "predict"}
        The estimator's scoring function (see :mod:`lumos.core.blackbox`).
    batch_size : int, optional
        Model rows per call (default: the masker's; images sized by a memory budget).
    method : str
        For error messages.
    groups : optional
        Column groups of a table that play as one player each (see :func:`column_groups`).
    link : {"identity", "logit"}, default "identity"
        ``v(S)`` is ``link(E_b f(x_S, b))``: with "logit" the values are in log-odds and sum to
        ``logit(f(x)) - logit(E_b f(b))``.
    background_size : int, optional
        Keep a random sample of this many background rows (default: all of them).
    drop_null : bool, default False
        Table columns equal to every background row are no players (their value is exactly 0).
    forward_args : tuple, dict, lumos.Args or None
        Extra model arguments that are not explained (see :class:`~lumos.core.blackbox.BlackBox`).
    """

    def __init__(self, model: Any, inputs: Any, target: Any = None, masker: Masker | None = None,
                 background: Any = None, output: str = "auto", batch_size: int | None = None,
                 method: str = "", progress: bool | None = None, *, groups: Any = None,
                 link: str = "identity", background_size: int | None = None,
                 drop_null: bool = False, forward_args: Any = None):
        masker = default_masker(inputs, masker, background, method or "this method",
                                background_size=background_size)
        self.link = check_choice(link, "link", LINKS)
        self.data: MaskedInputs = masker.bind(inputs)
        if groups is not None and not isinstance(self.data, MaskedTable):
            raise ValueError(f"groups: {method or 'this method'} groups the columns of a table; for "
                             "images and texts the masker's segments or tokens are the players "
                             "(ImageMasker(segmentation=labels) groups pixels)")
        if batch_size is not None:
            self.batch = check_batch_size(batch_size)
        elif self.data.modality == "image":
            self.batch = min(self.data.default_batch,
                             check_batch_size(None, row_bytes=self.data.originals()[0].nbytes))
        else:
            self.batch = self.data.default_batch
        self.f = BlackBox(model, output=output, batch_size=self.batch, method=method,
                          forward_args=forward_args, inputs=inputs)
        self.progress = progress
        self.method = method
        out = self.f(self.data.originals(), what="inputs", rows=np.arange(self.data.n))
        self.raw_output = out
        self.target = resolve_target(target, out)
        self.fx = np.asarray(self.target.select(out), dtype=np.float64)
        self.n = self.data.n
        self.evals = np.full(self.n, 1, dtype=np.int64)  # the call above: one row per sample
        self._empty: np.ndarray | None = None
        self._players(groups, drop_null)
        self._check_link(self.fx, "the inputs")

    # ------------------------------------------------------------------ players
    def _players(self, groups: Any, drop_null: bool) -> None:
        """Map players to the masker's features: ``M`` (n,) players per sample, and for tables
        ``_slot`` (n, d), the player slot of each column (``max_players`` = always kept)."""
        self.groups = None
        table = isinstance(self.data, MaskedTable)
        if not table or (groups is None and not drop_null):
            return self._every_feature_plays()
        names = self.data.feature_names
        d = len(names)
        if groups is not None:
            members, gnames = group_members(*column_groups(groups, names))
            self.groups = (members, gnames)
        else:
            members, gnames = [np.array([j]) for j in range(d)], list(names)
        null = self.data.null_features() if drop_null else np.zeros((self.n, d), bool)
        if groups is None and not null.any():  # every column plays: no mapping needed
            return self._every_feature_plays()
        G = len(members)
        gnull = np.stack([null[:, m].all(1) for m in members], axis=1)  # (n, G)
        self.M = (~gnull).sum(1).astype(np.int64)
        self.max_players = max(int(self.M.max()), 1)
        # slot k of sample i plays group _group[i, k]; columns of null groups map to the
        # always-kept slot max_players
        self._group = np.full((self.n, self.max_players), -1, dtype=np.int64)
        self._slot = np.full((self.n, d), self.max_players, dtype=np.int64)
        for i in range(self.n):
            active = np.flatnonzero(~gnull[i])
            self._group[i, :len(active)] = active
            for k, g in enumerate(active):
                self._slot[i, members[g]] = k
        self._G = G

    def _every_feature_plays(self) -> None:
        self.M = self.data.n_features.astype(np.int64)
        self.max_players = self.data.max_features
        self._slot = None

    def _features(self, rows: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Coalitions of players -> coalitions of the masker's features."""
        if self._slot is None:
            return Z
        Zp = np.ones((len(Z), self.max_players + 1), dtype=bool)
        k = min(Z.shape[1], self.max_players)
        Zp[:, :k] = Z[:, :k]
        return np.take_along_axis(Zp, self._slot[rows], axis=1)

    # ------------------------------------------------------------------ values
    def _apply_link(self, v: np.ndarray) -> np.ndarray:
        if self.link == "identity":
            return v
        return np.log(v) - np.log1p(-v)

    def _check_link(self, v: np.ndarray, what: str) -> None:
        if self.link == "logit" and len(v) and not np.all((v > 0) & (v < 1)):
            raise ValueError(
                f"link='logit' needs probabilities strictly inside (0, 1), but the explained score "
                f"on {what} ranges over [{np.min(v):.4g}, {np.max(v):.4g}]; explain "
                "output='predict_proba' (a probability target) or use link='identity'")

    @property
    def weights(self) -> np.ndarray:
        return self.data.weights

    def value(self, rows: np.ndarray, Z: np.ndarray, desc: str = "") -> np.ndarray:
        """``v`` of coalitions ``Z`` (m, players) of samples ``rows`` (m,): shape (m,) float64."""
        rows = np.asarray(rows, dtype=np.int64)
        Z = np.asarray(Z, dtype=bool)
        m = len(rows)
        B = self.data.n_background
        out = np.empty(m, dtype=np.float64)
        if m == 0:
            return out
        per = max(1, self.batch // B)  # coalitions per model call
        bar = progress_bar(m, desc or self.method, self.progress if m > 4 * per else False,
                           unit="coalition")
        with bar:
            for start in range(0, m, per):
                sl = slice(start, min(start + per, m))
                r = rows[sl]
                inp = self.data.masked(r, self._features(r, Z[sl]))
                owner = np.repeat(r, B)  # the explained sample of every model row
                raw = self.f(inp, what="masked inputs", copy=False, rows=owner)  # built for this call only
                s = np.asarray(self.target.select(raw, owner), dtype=np.float64)
                out[sl] = _weighted_mean(s.reshape(-1, B), self.weights)
                bar.update(sl.stop - sl.start)
        np.add.at(self.evals, rows, B)
        self._check_link(out, "masked inputs (averaged over the background)")
        return self._apply_link(out)

    def full_value(self) -> np.ndarray:
        """``v(N)`` per sample: ``f(x)`` averaged over the background weights the way every other
        coalition is, so that a feature the model ignores gets exactly zero (it equals ``f(x)``
        up to rounding)."""
        B = self.data.n_background
        return self._apply_link(_weighted_mean(np.repeat(self.fx[:, None], B, axis=1), self.weights))

    def empty_value(self) -> np.ndarray:
        """``v(∅)`` per sample: the base value (the weighted mean output over the background)."""
        if self._empty is None:
            self._empty = self.value(np.arange(self.n), np.zeros((self.n, self.max_players), bool))
        return self._empty

    # ------------------------------------------------------------------ result
    def _per_group(self, a: np.ndarray) -> np.ndarray:
        """(n, players) -> (n, groups), or (n, players, players) -> (n, groups, groups) for
        interactions (0 for null groups)."""
        out = np.zeros((self.n,) + (self._G,) * (a.ndim - 1), dtype=a.dtype)
        for i in range(self.n):
            k = int(self.M[i])
            g = self._group[i, :k]
            if a.ndim == 2:
                out[i, g] = a[i, :k]
            else:
                out[i][np.ix_(g, g)] = a[i, :k, :k]
        return out

    @property
    def several(self) -> bool:
        """The model takes several inputs (tables): values come back per input."""
        return isinstance(getattr(self.data, "table", None), SeveralTables)

    def explanation(self, per_feature: np.ndarray, method: str, params: dict, *, baseline=None,
                    meta: dict | None = None, sample_meta: dict | None = None,
                    feature_meta: dict | None = None) -> Explanation:
        """Assemble the result; ``feature_meta`` arrays (n, players) are laid out like
        ``per_feature`` is in tables and texts, and kept per feature (segment) for images."""
        per_feature = np.asarray(per_feature, dtype=np.float64)
        feature_meta = dict(feature_meta or {})
        if self._slot is not None:
            per_feature = self._per_group(per_feature)
            feature_meta = {k: self._per_group(np.asarray(v)) for k, v in feature_meta.items()}
        if self.groups is not None:
            members, gnames = self.groups
            values = per_feature
            fields = table_fields(self.data.table, self.data.X)
            fields["feature_names"] = gnames
            fv = fields["sample_meta"]["feature_values"]
            names = self.data.feature_names
            fields["sample_meta"]["feature_values"] = np.array(
                [[", ".join(f"{names[j]}={row[j]}" for j in m) if len(m) > 1 else row[m[0]]
                  for m in members] for row in fv], dtype=str).reshape(self.n, len(members))
            fields["meta"]["groups"] = {g: [names[j] for j in m] for g, m in zip(gnames, members)}
        else:
            values, fields = self.data.layout(per_feature)
            if self.several and values.ndim == 2:  # one array per input, in the inputs' structure
                values = self.data.table.unpack(values)
                fields["inputs"] = self.data.table.unpack(fields["inputs"])
        m = {"target": self.target.description, "score": self.f.score_name,
             "n_background": self.data.n_background, "modality": self.data.modality,
             "link": self.link}
        m.update(self.data.background_meta())
        m.update(fields["meta"])
        m.update(meta or {})
        smeta = dict(fields["sample_meta"])
        smeta["n_evals"] = self.evals.copy()
        smeta.update(sample_meta or {})
        smeta.update(feature_meta)
        m.update(smeta)
        p = clean_params(params)
        p.update(self.data.describe())
        return Explanation(
            values=values, inputs=fields["inputs"], target=self.target.indices,
            output=self._apply_link(self.fx), baseline_output=baseline, method=method, params=p,
            meta=m, feature_names=fields["feature_names"], sample_keys=tuple(smeta),
        )


def _weighted_mean(s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Row-wise ``s @ w`` summed in a fixed order, so that equal rows give bit-equal values
    wherever they sit in a batch (BLAS may round differently by position): a feature the model
    ignores then gets exactly zero."""
    acc = s[:, 0] * w[0]
    for b in range(1, s.shape[1]):
        acc = acc + s[:, b] * w[b]
    return acc


def clean_params(params: dict) -> dict:
    """JSON-able parameters (arrays and callables described, data never copied)."""
    out = {}
    for k, v in params.items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(a, (bool, int, float, str)) for a in v):
            out[k] = list(v)
        elif callable(v) and not hasattr(v, "shape"):
            out[k] = getattr(v, "__name__", type(v).__name__)
        else:
            out[k] = f"<{type(v).__name__}>"
    return out
