"""Testing with concept activation vectors (TCAV): how much does a human concept drive a class?

Kim, Wattenberg, Gilmer, Cai, Wexler, Viégas and Sayres, *Interpretability Beyond Feature
Attribution: Quantitative Testing with Concept Activation Vectors (TCAV)* (ICML 2018).

1. **CAV.** A linear classifier (scikit-learn, seeded; or the difference of the class means)
   separates the layer-``at`` activations of examples of a concept (label 1) from those of other
   examples (label 0: a random set, or other concepts for a *relative* CAV). The CAV ``v`` is its weight vector, scaled to unit length; it
   points towards the concept.
2. **Directional derivative.** ``S_k(x) = ∇_a logit_k(a) · v`` at ``a = f_at(x)``: how class ``k``'s
   logit changes when the activation moves towards the concept.
3. **TCAV score.** The share of inputs of class ``k`` with ``S_k(x) > 0``.
4. **Significance.** A concept's CAV depends on the random set it was trained against, so
   :func:`tcav` repeats it against ``n_runs`` random sets and compares the scores with those of
   *random concepts* (a random set against the same random sets) by a two-sided t-test
   (``scipy.stats.ttest_ind``, Student's, as the reference implementation), corrected for the
   number of (concept, class) tests (Holm by default, or Bonferroni).

CAVs save to ``.npz`` (the arrays) plus ``.json`` (what made them), never pickle, and score new
inputs with :func:`tcav_score`.

>>> from lumos.concepts.cavs import tcav
>>> result = tcav(model, inputs, labels=labels, concepts={"watermark": marked_examples},
...               random=random_pool, at="features.7", targets=[0, 1, 2, 3], n_runs=10)
>>> print(result.table())
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core.execution import rng
from ..core.torch_model import ModelGuard, as_tensor, model_device, model_dtype
from ..core.validation import check_choice, check_number
from ._layers import layer_activations, layer_gradients

__all__ = ["CAV", "compute_cav", "cav_from_activations", "relative_cavs", "directional_derivatives",
           "tcav_score", "tcav", "TCAVResult", "holm", "bonferroni"]

_CLASSIFIERS = ("sgd", "logistic", "mean_difference")
_CORRECTIONS = ("holm", "bonferroni", "none")


@dataclass
class CAV:
    """A concept activation vector of one layer.

    Attributes
    ----------
    vector : np.ndarray
        ``(d,)`` unit vector in the flattened activation space, pointing towards the concept.
    intercept : float
        The classifier's intercept, in the units of the unit-length vector.
    layer, concept, negative : str
        Where, what, and against what (a random set's name or the other concepts).
    accuracy : float
        Accuracy of the classifier on the held-out share of the examples (NaN without one).
    shape : tuple of int
        One sample's activation shape at the layer.
    classifier : str
    seed : int
    """

    vector: np.ndarray
    intercept: float
    layer: str
    concept: str
    negative: str
    accuracy: float
    shape: tuple
    classifier: str = "sgd"
    seed: int = 0

    def save(self, path) -> tuple[Path, Path]:
        """Write ``path.npz`` (vector, intercept) and ``path.json`` (everything else); no pickle."""
        path = Path(path)
        base = path.with_suffix("") if path.suffix in (".npz", ".json") else path
        npz, js = base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")
        np.savez(npz, vector=np.asarray(self.vector, np.float64), intercept=np.float64(self.intercept))
        meta = {"format": "lumos.cav/1", "layer": self.layer, "concept": self.concept,
                "negative": self.negative, "accuracy": float(self.accuracy), "shape": list(self.shape),
                "classifier": self.classifier, "seed": int(self.seed)}
        js.write_text(json.dumps(meta, indent=1))
        return npz, js

    @classmethod
    def load(cls, path) -> "CAV":
        """Read a CAV written by :meth:`save` (``path`` with or without the suffix)."""
        path = Path(path)
        base = path.with_suffix("") if path.suffix in (".npz", ".json") else path
        npz, js = base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")
        for p in (npz, js):
            if not p.exists():
                raise FileNotFoundError(f"path: no CAV file {p}")
        meta = json.loads(js.read_text())
        if meta.get("format") != "lumos.cav/1":
            raise ValueError(f"path: {js} is not a lumos CAV (format {meta.get('format')!r})")
        with np.load(npz, allow_pickle=False) as z:
            vector, intercept = z["vector"].copy(), float(z["intercept"])
        return cls(vector=vector, intercept=intercept, layer=meta["layer"], concept=meta["concept"],
                   negative=meta["negative"], accuracy=meta["accuracy"], shape=tuple(meta["shape"]),
                   classifier=meta["classifier"], seed=meta["seed"])


def _classifier(kind: str, seed: int, n_samples: int, n_features: int):
    if kind == "sgd":
        from sklearn.linear_model import SGDClassifier

        # the reference implementation's settings (tcav/cav.py, also Captum's default)
        return SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed)
    from sklearn.linear_model import LogisticRegression

    # liblinear's dual solver works in the n×n sample space: with activations of thousands of
    # dimensions and tens of examples it is ~100× faster than lbfgs (whose default penalises
    # the same L2 norm, but not the intercept; liblinear's does, a negligible difference here)
    return LogisticRegression(C=1.0, solver="liblinear", dual=n_features > n_samples, max_iter=2000,
                              random_state=seed)


def cav_from_activations(concept_acts, negative_acts, *, layer: str = "", concept: str = "concept",
                         negative: str = "random", classifier: str = "sgd", seed: int = 0,
                         test_fraction: float = 0.25) -> CAV:
    """Fit a CAV on activations ``(n, ...)`` of concept examples against other examples.

    ``classifier``: ``"sgd"`` is the reference implementation's ``SGDClassifier(alpha=0.01,
    max_iter=1000, tol=1e-3)`` (also Captum's default), ``"logistic"`` a ``LogisticRegression``
    (liblinear), ``"mean_difference"`` the difference of the two class means (the "pattern" CAV;
    no fit, and far less noisy than the classifiers' weights on activations of thousands of
    dimensions with tens of examples). All are seeded by ``seed``.
    ``test_fraction`` of each side (drawn with ``seed``) is held out to measure the accuracy; the
    classifier is fitted on the rest. ``test_fraction=0`` fits on everything (accuracy NaN).
    """
    classifier = check_choice(classifier, "classifier", _CLASSIFIERS)
    test_fraction = check_number(test_fraction, "test_fraction", low=0.0, high=0.5)
    seed = int(check_number(seed, "seed", low=0, integer=True))
    pos = np.asarray(concept_acts.detach().cpu() if isinstance(concept_acts, torch.Tensor) else concept_acts,
                     np.float64)
    neg = np.asarray(negative_acts.detach().cpu() if isinstance(negative_acts, torch.Tensor) else negative_acts,
                     np.float64)
    if pos.shape[1:] != neg.shape[1:]:
        raise ValueError(f"concept and negative activations differ in shape: {pos.shape[1:]} vs {neg.shape[1:]}")
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"a CAV needs at least 2 examples on each side; got {len(pos)} and {len(neg)}")
    shape = tuple(pos.shape[1:])
    pos, neg = pos.reshape(len(pos), -1), neg.reshape(len(neg), -1)
    g = rng(seed)
    train, test = [], []
    for arr, lab in ((pos, 1), (neg, 0)):
        order = g.permutation(len(arr))
        n_test = int(round(test_fraction * len(arr)))
        test.append((arr[order[:n_test]], np.full(n_test, lab)))
        train.append((arr[order[n_test:]], np.full(len(arr) - n_test, lab)))
    x_tr = np.concatenate([a for a, _ in train])
    y_tr = np.concatenate([b for _, b in train])
    if classifier == "mean_difference":
        # the "pattern" CAV: difference of the class means; the decision boundary is the
        # perpendicular bisector of the two means
        mu1, mu0 = x_tr[y_tr == 1].mean(0), x_tr[y_tr == 0].mean(0)
        w = mu1 - mu0
        b = -float(w @ (mu1 + mu0)) / 2

        class _Clf:
            coef_, intercept_ = w[None], np.array([b])

            def predict(self, z):
                return (z @ w + b > 0).astype(int)

        clf = _Clf()
    else:
        clf = _classifier(classifier, seed, *x_tr.shape).fit(x_tr, y_tr)
    w = np.asarray(clf.coef_, np.float64).reshape(-1)
    norm = float(np.linalg.norm(w))
    if norm == 0.0:
        raise ValueError(f"the classifier for concept {concept!r} found no direction (zero weights): the "
                         "concept and negative activations are not separable at this layer")
    x_te = np.concatenate([a for a, _ in test])
    acc = float((clf.predict(x_te) == np.concatenate([b for _, b in test])).mean()) if len(x_te) else float("nan")
    return CAV(vector=w / norm, intercept=float(np.asarray(clf.intercept_).reshape(-1)[0]) / norm, layer=layer,
               concept=concept, negative=negative, accuracy=acc, shape=shape, classifier=classifier, seed=seed)


def _acts(model, inputs, at, batch_size, name) -> torch.Tensor:
    x = as_tensor(inputs, model_device(model), name=name, dtype=model_dtype(model))
    return torch.cat([a.detach().cpu() for _, a in layer_activations(model, x, at, batch_size)])


def compute_cav(model, concept_inputs, negative_inputs, at: Any, *, concept: str = "concept",
                negative: str = "random", classifier: str = "sgd", seed: int = 0, test_fraction: float = 0.25,
                batch_size: int | None = None) -> CAV:
    """The CAV of ``concept_inputs`` against ``negative_inputs`` at layer ``at`` (see the module docs)."""
    with ModelGuard(model):
        pos = _acts(model, concept_inputs, at, batch_size, "concept_inputs")
        neg = _acts(model, negative_inputs, at, batch_size, "negative_inputs")
    return cav_from_activations(pos, neg, layer=str(at), concept=concept, negative=negative,
                                classifier=classifier, seed=seed, test_fraction=test_fraction)


def relative_cavs(model, concepts: Mapping[str, Any], at: Any, *, classifier: str = "sgd", seed: int = 0,
                  test_fraction: float = 0.25, batch_size: int | None = None) -> dict[str, CAV]:
    """Relative CAVs: each concept against the union of the others (Kim et al., section 3.3).

    With two concepts A and B, the CAV of A points from B to A: a positive directional derivative
    means "more A rather than B", not "more A rather than anything".
    """
    if not isinstance(concepts, Mapping) or len(concepts) < 2:
        raise ValueError("concepts must map at least two concept names to their example inputs")
    with ModelGuard(model):
        acts = {k: _acts(model, v, at, batch_size, f"concepts[{k!r}]") for k, v in concepts.items()}
    out = {}
    for k in acts:
        others = [n for n in acts if n != k]
        out[k] = cav_from_activations(acts[k], torch.cat([acts[n] for n in others]), layer=str(at), concept=k,
                                      negative="+".join(others), classifier=classifier, seed=seed,
                                      test_fraction=test_fraction)
    return out


def _gradients(model, x, at, target, batch_size) -> np.ndarray:
    return torch.cat([g.flatten(1).double().cpu() for _, _, g in
                      layer_gradients(model, x, at, int(target), batch_size)]).numpy()


def directional_derivatives(model, inputs, target: int, cav: CAV, at: Any | None = None, *,
                            batch_size: int | None = None) -> np.ndarray:
    """``(n,)`` ``S_k(x) = ∇ logit_target · v`` at the CAV's layer (or ``at``) for each input."""
    at = cav.layer if at is None else at
    with ModelGuard(model):
        x = as_tensor(inputs, model_device(model), name="inputs", dtype=model_dtype(model))
        g = _gradients(model, x, at, target, batch_size)
    if g.shape[1] != cav.vector.shape[0]:
        raise ValueError(f"cav: its vector has {cav.vector.shape[0]} dimensions; layer {at!r} has {g.shape[1]}")
    return g @ cav.vector


def tcav_score(model, inputs, target: int, cav: CAV, at: Any | None = None, *,
               batch_size: int | None = None) -> float:
    """The TCAV score: share of ``inputs`` whose class-``target`` logit grows along the CAV."""
    return float((directional_derivatives(model, inputs, target, cav, at, batch_size=batch_size) > 0).mean())


def bonferroni(p) -> np.ndarray:
    """Bonferroni-adjusted p-values ``min(1, m·p)``."""
    p = np.asarray(p, np.float64)
    return np.minimum(1.0, p * p.size)


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979): uniformly more powerful than Bonferroni."""
    p = np.asarray(p, np.float64)
    flat = p.reshape(-1)
    m = flat.size
    order = np.argsort(flat, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * flat[order])
    out = np.empty(m)
    out[order] = np.minimum(1.0, adj)
    return out.reshape(p.shape)


def _ttest(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: the t statistic is undefined
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # scipy warns on constant samples (all scores 1); the p-value is right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


@dataclass
class TCAVResult:
    """TCAV scores of several concepts for several classes, with their significance.

    Attributes
    ----------
    layer : str
    concepts : list of str
    targets : list of int
    class_names : list of str
        Names of ``targets``.
    scores : np.ndarray
        ``(n_concepts, n_targets, n_runs)`` TCAV score of each concept's CAV of each run.
    random_scores : np.ndarray
        ``(n_targets, n_runs)`` the same for random concepts (the null).
    p_values, p_adjusted : np.ndarray
        ``(n_concepts, n_targets)`` two-sided t-test of scores against random scores, and corrected.
    significant : np.ndarray
        ``(n_concepts, n_targets)`` bool, ``p_adjusted < alpha``.
    cav_accuracy : np.ndarray
        ``(n_concepts, n_runs)`` held-out accuracy of each CAV.
    cavs : dict of str to list of CAV
    alpha : float
    correction : str
    """

    layer: str
    concepts: list
    targets: list
    class_names: list
    scores: np.ndarray
    random_scores: np.ndarray
    p_values: np.ndarray
    p_adjusted: np.ndarray
    significant: np.ndarray
    cav_accuracy: np.ndarray
    alpha: float
    correction: str
    cavs: dict = field(repr=False, default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """``(n_concepts, n_targets)`` mean TCAV score over the runs."""
        return self.scores.mean(axis=2)

    def table(self) -> str:
        rows = [f"{'concept':<18} {'class':<12} {'TCAV':>6} {'± sd':>6} {'random':>7} {'p':>9} "
                f"{'p (' + self.correction + ')':>11}  {'CAV acc':>7}"]
        for i, c in enumerate(self.concepts):
            for j, name in enumerate(self.class_names):
                star = " *" if self.significant[i, j] else ""
                rows.append(f"{c:<18} {name:<12} {self.scores[i, j].mean():6.3f} {self.scores[i, j].std():6.3f} "
                            f"{self.random_scores[j].mean():7.3f} {self.p_values[i, j]:9.2g} "
                            f"{self.p_adjusted[i, j]:11.2g}  {np.nanmean(self.cav_accuracy[i]):7.3f}{star}")
        rows.append(f"* significant at alpha={self.alpha:g} after {self.correction} correction over "
                    f"{self.p_values.size} tests; random: mean score of random concepts")
        return "\n".join(rows)

    def plot(self, ax=None):
        """Bars of the mean TCAV score per class and concept (error bars: sd over runs), the random
        concepts' mean beside them, ``*`` over significant bars; returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(1.6 + 1.3 * len(self.targets) * (len(self.concepts) + 1) / 2, 3.4))
        n_c = len(self.concepts) + 1
        width = 0.8 / n_c
        xs = np.arange(len(self.targets))
        for i, c in enumerate(self.concepts + ["random concepts"]):
            s = self.scores[i] if i < len(self.concepts) else self.random_scores
            pos = xs + (i - (n_c - 1) / 2) * width
            ax.bar(pos, s.mean(1), width, yerr=s.std(1), label=c, color=None if i < len(self.concepts) else "0.7",
                   capsize=2)
            if i < len(self.concepts):
                for j in np.flatnonzero(self.significant[i]):
                    ax.text(pos[j], min(1.02, s[j].mean() + s[j].std() + 0.02), "*", ha="center")
        ax.axhline(0.5, color="0.4", lw=0.8, ls=":")
        ax.set_xticks(xs, self.class_names)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("TCAV score")
        ax.set_title(f"TCAV at {self.layer} (* {self.correction}-corrected p < {self.alpha:g})")
        ax.legend(fontsize=7, loc="upper right")
        return ax


def _random_sets(random, n_runs: int, size: int, seed: int) -> list:
    if isinstance(random, (list, tuple)):
        if len(random) < 2:
            raise ValueError("random: give at least 2 random sets (or one pool of inputs to draw them from)")
        return list(random)
    pool = random
    n = len(pool)
    if size > n:
        raise ValueError(f"random: the pool has {n} inputs; each random set needs {size}")
    g = rng(seed)
    return [pool[torch.as_tensor(np.sort(g.choice(n, size, replace=False)))] if isinstance(pool, torch.Tensor)
            else np.asarray(pool)[np.sort(g.choice(n, size, replace=False))] for _ in range(n_runs)]


def tcav(model, inputs, concepts: Mapping[str, Any], random, at: Any, *, targets: Sequence[int],
         labels=None, n_runs: int = 10, random_size: int | None = None, classifier: str = "sgd",
         seed: int = 0, alpha: float = 0.05, correction: str = "holm", test_fraction: float = 0.25,
         class_names: Sequence[str] | None = None, batch_size: int | None = None) -> TCAVResult:
    """TCAV scores of ``concepts`` for each class in ``targets``, tested against random concepts.

    Parameters
    ----------
    model : nn.Module
        A classifier returning ``(batch, n_classes)`` logits.
    inputs : tensor or array ``(n, ...)``
        The inputs whose directional derivatives are counted.
    concepts : mapping str -> inputs
        Example inputs of each concept.
    random : inputs, or a list of input sets
        A pool from which ``n_runs`` random sets of ``random_size`` inputs are drawn (seeded), or
        the random sets themselves (``n_runs`` is then their number).
    at : str or nn.Module
        The layer.
    targets : sequence of int
        The classes tested.
    labels : sequence of int, optional
        Classes of ``inputs``; then class ``k`` is scored on the inputs labelled ``k`` (Kim et al.),
        otherwise on all inputs.
    n_runs : int, default 10
        CAVs per concept, each against another random set; at least 2.
    random_size : int, optional
        Size of each drawn random set; default the largest concept's number of examples.
    classifier : {"sgd", "logistic", "mean_difference"}, default "sgd"
        See :func:`cav_from_activations`.
    seed : int, default 0
        Draws the random sets and seeds every classifier (run ``r`` uses ``seed + r``).
    alpha : float, default 0.05
    correction : {"holm", "bonferroni", "none"}, default "holm"
        Over all ``len(concepts) × len(targets)`` tests.
    test_fraction : float, default 0.25
        Held-out share for each CAV's accuracy.

    Returns
    -------
    TCAVResult

    Notes
    -----
    Run ``r``: each concept's CAV against random set ``r``, and the random concept ``r + 1``
    (mod ``n_runs``) against the same set ``r`` for the null distribution. Gradients are computed
    once per class; each CAV's score is then one matrix product.
    """
    classifier = check_choice(classifier, "classifier", _CLASSIFIERS)
    correction = check_choice(correction, "correction", _CORRECTIONS)
    alpha = check_number(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    seed = int(check_number(seed, "seed", low=0, integer=True))
    if not isinstance(concepts, Mapping) or not concepts:
        raise ValueError("concepts must map concept names to their example inputs")
    targets = [int(check_number(t, "targets", low=0, integer=True)) for t in targets]
    if not targets:
        raise ValueError("targets must name at least one class")
    if isinstance(random, (list, tuple)):
        n_runs = len(random)
    n_runs = int(check_number(n_runs, "n_runs", low=2, integer=True))
    size = random_size if random_size is not None else max(len(v) for v in concepts.values())
    size = int(check_number(size, "random_size", low=2, integer=True))
    with ModelGuard(model):
        x = as_tensor(inputs, model_device(model), name="inputs", dtype=model_dtype(model))
        y = None
        if labels is not None:
            y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
            if y.shape != (len(x),):
                raise ValueError(f"labels must have shape ({len(x)},); got {y.shape}")
        c_acts = {k: _acts(model, v, at, batch_size, f"concepts[{k!r}]") for k, v in concepts.items()}
        r_acts = [_acts(model, r, at, batch_size, f"random set {i}")
                  for i, r in enumerate(_random_sets(random, n_runs, size, seed))]
        grads = {}
        for t in targets:
            xt = x if y is None else x[torch.as_tensor(np.flatnonzero(y == t))]
            if len(xt) == 0:
                raise ValueError(f"targets: no input is labelled {t}")
            grads[t] = _gradients(model, xt, at, t, batch_size)
    names = list(c_acts)
    cavs = {k: [] for k in names}
    scores = np.zeros((len(names), len(targets), n_runs))
    rnd = np.zeros((len(targets), n_runs))
    acc = np.zeros((len(names), n_runs))

    def score(v: np.ndarray) -> np.ndarray:
        return np.array([(grads[t] @ v > 0).mean() for t in targets])

    for r in range(n_runs):
        for i, k in enumerate(names):
            cav = cav_from_activations(c_acts[k], r_acts[r], layer=str(at), concept=k, negative=f"random {r}",
                                       classifier=classifier, seed=seed + r, test_fraction=test_fraction)
            cavs[k].append(cav)
            acc[i, r] = cav.accuracy
            scores[i, :, r] = score(cav.vector)
        null = cav_from_activations(r_acts[(r + 1) % n_runs], r_acts[r], layer=str(at),
                                    concept=f"random {(r + 1) % n_runs}", negative=f"random {r}",
                                    classifier=classifier, seed=seed + r, test_fraction=test_fraction)
        rnd[:, r] = score(null.vector)
    p = np.array([[_ttest(scores[i, j], rnd[j]) for j in range(len(targets))] for i in range(len(names))])
    adj = {"holm": holm, "bonferroni": bonferroni, "none": lambda q: q.copy()}[correction](p)
    all_names = list(class_names) if class_names is not None else list(
        getattr(model, "class_names", None) or [])
    cls_names = [all_names[t] if t < len(all_names) else f"class {t}" for t in targets]
    return TCAVResult(layer=str(at), concepts=names, targets=targets, class_names=cls_names, scores=scores,
                      random_scores=rnd, p_values=p, p_adjusted=adj, significant=adj < alpha, cav_accuracy=acc,
                      alpha=float(alpha), correction=correction, cavs=cavs)
