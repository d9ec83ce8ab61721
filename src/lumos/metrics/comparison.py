"""Compare explanation methods on a model with a set of metrics: numbers, not taste.

:func:`compare` computes each method's explanation of the same inputs and target, scores each
with each metric, and ranks the methods per metric (by the metric's direction) and overall (mean
rank). A ``"random"`` pseudo-method (seeded noise) is the chance baseline every method should
beat. :class:`Comparison` prints the table (mean ± spread over samples, rank), saves it as JSON,
and draws the deletion/insertion curves and the randomisation picture.

``lumos compare`` (:func:`main`) runs it on the demo world or on a user's model and input.
"""
from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.explanation import Explanation
from ..core.validation import check_kwargs
from .registry import checks_keywords, get_metric
from .results import MetricResult
from .scoring import model_scorer

__all__ = ["compare", "Comparison", "random_explanation", "default_methods", "default_metrics", "main"]

RANDOM = "random"

# Parameters that keep the compared methods affordable (their own defaults are for single use).
COMPARE_METHOD_PARAMS: dict[str, dict] = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"n_samples": 16, "seed": 0},
    "smoothgrad_sq": {"n_samples": 16, "seed": 0},
    "vargrad": {"n_samples": 16, "seed": 0},
    "occlusion": {"window": 8, "stride": 4},
    "rise": {"n_masks": 1000, "seed": 0},
}


def random_explanation(inputs: Any, target: Any = None, seed: int = 0, method: str = RANDOM) -> Explanation:
    """Seeded uniform noise in [0, 1): the chance baseline of a comparison.

    One value per pixel for images ``(n, 1, H, W)``, per element otherwise.
    """
    x = np.asarray(inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else inputs)
    shape = (len(x), 1) + x.shape[2:] if x.ndim >= 4 else x.shape
    vals = np.stack([np.random.default_rng([int(seed), 31, i]).random(shape[1:]) for i in range(len(x))])
    tgt = None if target is None or callable(target) or isinstance(target, str) else np.asarray(target)
    return Explanation(values=vals, inputs=x, target=tgt, method=method, params={"seed": seed})


def _random_explainer(seed: int) -> Callable:
    def random(model, inputs, target):
        return random_explanation(inputs, target, seed).values

    return random


def default_methods(model: Any, inputs: Any) -> list[str]:
    """A standard set: gradients, a path method, a CAM and a propagation method for torch image
    models; gradients for other torch models; Shapley values and LIME for black boxes; plus the
    random baseline."""
    import torch

    nd = np.ndim(inputs) if not isinstance(inputs, torch.Tensor) else inputs.ndim
    if isinstance(model, torch.nn.Module):
        if nd == 4:
            return ["saliency", "integrated_gradients", "gradcam", "guided_backprop", RANDOM]
        return ["saliency", "gradient_x_input", "integrated_gradients", RANDOM]
    return ["permutation_shap", "kernel_shap", "lime", RANDOM]


def default_metrics(model: Any, masks: Any = None) -> list[str]:
    """Deletion, insertion, faithfulness correlation, sparseness; the randomisation test for torch
    models; pointing game and relevance mass when ground-truth masks are given."""
    import torch

    out = ["deletion", "insertion", "faithfulness_correlation"]
    if isinstance(model, torch.nn.Module):
        out.append("randomisation")
    if masks is not None:
        out += ["pointing_game", "relevance_mass_accuracy"]
    return out + ["sparseness"]


@dataclass
class Comparison:
    """Methods × metrics: the results and their ranking.

    Attributes
    ----------
    methods, metrics : list of str
    results : dict
        ``results[method][metric]`` is a :class:`MetricResult`, or a string saying why it is
        missing (the metric does not apply, or it failed).
    explanations : dict of str to Explanation
    seconds : dict
        ``seconds[method]``: time to explain; ``seconds[(method, metric)]``: time to score.
    """

    methods: list[str]
    metrics: list[str]
    results: dict
    explanations: dict
    seconds: dict = field(default_factory=dict)
    n_samples: int = 0

    def result(self, method: str, metric: str) -> MetricResult | None:
        r = self.results.get(method, {}).get(metric)
        return r if isinstance(r, MetricResult) else None

    def direction(self, metric: str) -> str:
        for m in self.methods:
            r = self.result(m, metric)
            if r is not None:
                return r.direction
        return get_metric(metric).direction

    def ranks(self) -> dict[str, dict[str, float]]:
        """``ranks[metric][method]``: 1 = best mean score (ties share the average rank)."""
        from scipy.stats import rankdata

        out = {}
        for metric in self.metrics:
            means = {m: self.result(m, metric).mean for m in self.methods
                     if self.result(m, metric) is not None and np.isfinite(self.result(m, metric).mean)}
            if not means:
                continue
            names = list(means)
            v = np.array([means[m] for m in names])
            r = rankdata(-v if self.direction(metric) == "higher" else v)
            out[metric] = dict(zip(names, r.tolist()))
        return out

    def mean_ranks(self) -> dict[str, float]:
        """Each method's mean rank over the metrics it was scored on (lower is better)."""
        ranks = self.ranks()
        out = {}
        for m in self.methods:
            rs = [ranks[k][m] for k in ranks if m in ranks[k]]
            out[m] = float(np.mean(rs)) if rs else float("nan")
        return out

    def order(self) -> list[str]:
        """Methods from the best mean rank to the worst."""
        mr = self.mean_ranks()
        return sorted(self.methods, key=lambda m: (np.inf if not np.isfinite(mr[m]) else mr[m], m))

    def table(self) -> list[str]:
        """The ranking table as text lines: ``mean ± std (rank)`` per method and metric."""
        ranks, mean_rank = self.ranks(), self.mean_ranks()
        cells = {}
        for m in self.methods:
            for k in self.metrics:
                r = self.result(m, k)
                if r is None:
                    cells[m, k] = "n/a"
                else:
                    rk = ranks.get(k, {}).get(m)
                    rank = f" ({rk:g})" if rk is not None else ""
                    cells[m, k] = f"{_fmt(r.mean)} ± {_fmt(r.std)}{rank}"
        heads = [f"{k} {'↑' if self.direction(k) == 'higher' else '↓'}" for k in self.metrics]
        wm = max([len("method")] + [len(m) for m in self.methods]) + 2
        widths = [max(len(h), *(len(cells[m, k]) for m in self.methods)) + 2 for h, k in zip(heads, self.metrics)]
        lines = ["method".ljust(wm) + "".join(h.rjust(w) for h, w in zip(heads, widths)) + "  mean rank"]
        lines.append("-" * len(lines[0]))
        for m in self.order():
            row = m.ljust(wm) + "".join(cells[m, k].rjust(w) for k, w in zip(self.metrics, widths))
            lines.append(row + f"  {mean_rank[m]:9.2f}" if np.isfinite(mean_rank[m]) else row + "        n/a")
        lines.append(f"(mean ± std over {self.n_samples} samples; (rank) per metric, 1 = best; "
                     "↑ higher is better, ↓ lower is better)")
        scales = {}
        for k in self.metrics:
            s = {self.result(m, k).scale for m in self.methods if self.result(m, k) is not None} - {None}
            if s:
                scales.setdefault(" / ".join(sorted(s)), []).append(k)
        for s, ks in scales.items():
            what = "probability of the target class" if s == "probability" else f"{s} model output"
            lines.append(f"scored on the {what}: {', '.join(ks)}")
        missing = [(m, k, v) for m in self.methods for k, v in self.results.get(m, {}).items()
                   if isinstance(v, str)]
        for m, k, v in missing:
            lines.append(f"  n/a {m} × {k}: {v}")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.table())

    def _repr_html_(self) -> str:
        """Notebooks: the ranking table in the report's style and the mean curves (escaped)."""
        from ..display.metrics import comparison_html

        return comparison_html(self, _fmt)

    def to_dict(self) -> dict:
        res = {m: {k: (v.to_dict() if isinstance(v, MetricResult) else {"missing": v})
                   for k, v in self.results.get(m, {}).items()} for m in self.methods}
        return {
            "format": "lumos.comparison/1", "methods": self.methods, "metrics": self.metrics,
            "n_samples": self.n_samples, "ranks": self.ranks(), "mean_ranks": self.mean_ranks(),
            "order": self.order(), "results": res,
            "seconds": {(k if isinstance(k, str) else f"{k[0]}|{k[1]}"): v for k, v in self.seconds.items()},
        }

    # ------------------------------------------------------------------ pictures
    def plot_curves(self, path: str | Path | None = None, metrics: Sequence[str] = ("deletion", "insertion")):
        """Mean deletion/insertion curves of every method (one panel per metric); returns the figure."""
        import matplotlib.pyplot as plt

        from ..display.metrics import CurvesDisplay

        kinds = [k for k in metrics if any(self.result(m, k) is not None and "y" in self.result(m, k).curves
                                             for m in self.methods)]
        if not kinds:
            return None
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.6), squeeze=False)
        for ax, k in zip(axes[0], kinds):
            CurvesDisplay.from_results({m: self.result(m, k) for m in self.order()
                                        if self.result(m, k) is not None}).plot(ax=ax)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig

    def plot_randomisation(self, path: str | Path | None = None, metric: str = "randomisation", sample: int = 0):
        """The cascading-randomisation picture (maps per randomised layer, similarity curves)."""
        from ..display.metrics import RandomisationDisplay

        res = {m: self.result(m, metric) for m in self.order() if self.result(m, metric) is not None
               and "maps" in self.result(m, metric).meta}
        if not res:
            return None
        inputs = next(iter(self.explanations.values())).inputs
        disp = RandomisationDisplay.from_results(res, inputs=inputs, sample=sample).plot()
        if path is not None:
            disp.figure_.savefig(path, dpi=110)
        return disp.figure_

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``table.txt``, ``comparison.json``, ``curves.png`` and ``randomisation.png``."""
        import matplotlib.pyplot as plt

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        (out / "table.txt").write_text("\n".join(self.table()) + "\n")
        written.append(out / "table.txt")
        (out / "comparison.json").write_text(json.dumps(self.to_dict(), indent=1))
        written.append(out / "comparison.json")
        fig = self.plot_curves(out / "curves.png")
        if fig is not None:
            plt.close(fig)
            written.append(out / "curves.png")
        fig = self.plot_randomisation(out / "randomisation.png")
        if fig is not None:
            plt.close(fig)
            written.append(out / "randomisation.png")
        return written


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "nan"
    a = abs(v)
    return f"{v:.3f}" if 0.01 <= a < 1000 or a == 0 else f"{v:.2e}"


def _resolve_target(model: Any, inputs: Any, target: Any):
    """Class indices per sample (so every method explains the same classes), or the callable."""
    if callable(target) and not isinstance(target, str):
        return target
    # a DataFrame's column names go with it, so an estimator fitted on named columns sees them
    names = [str(c) for c in inputs.columns] if hasattr(inputs, "columns") else None
    probe = Explanation(values=np.zeros(len(inputs)), inputs=inputs, feature_names=names)
    with model_scorer(model, probe, target) as sc:
        return target if sc.target.indices is None else sc.target.indices


@checks_keywords
def compare(model: Any, inputs: Any, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
            *, target: Any = "predicted", masks: Any = None, method_params: dict | None = None,
            metric_params: dict | None = None, seed: int = 0, log: Callable[[str], None] | None = None
            ) -> Comparison:
    """Explain ``inputs`` with several methods and score every explanation with several metrics.

    Parameters
    ----------
    model : torch.nn.Module, callable or estimator
    inputs : Tensor or array, shape (n, ...)
    methods : sequence of str, optional
        Method names (:func:`lumos.methods`) and ``"random"`` (the chance baseline). Default:
        :func:`default_methods`.
    metrics : sequence of str, optional
        Metric names (:func:`lumos.metrics.available`). Default: :func:`default_metrics`.
        Metrics that need a mask are skipped without ``masks``; those that need a torch model
        are skipped for other models.
    target : int, sequence, "predicted" or callable, default "predicted"
        Resolved once on the model's output, so every method explains the same classes.
    masks : bool array, shape (n, H, W) or like the attribution map, optional
        Ground-truth evidence for the localisation metrics.
    method_params : dict of str to dict, optional
        Per-method parameters (added to :data:`COMPARE_METHOD_PARAMS`).
    metric_params : dict of str to dict, optional
        Per-metric parameters, e.g. ``{"deletion": {"n_steps": 10}}``; checked against each
        metric's parameters before anything runs. Every metric runs with its own defaults
        otherwise, so a number in the table is what a direct call with the same parameters gives:
        the curve metrics (deletion, insertion, ROAD) score the class probability for class
        targets (``scale="auto"``) and the removal metrics replace image pixels by the blurred
        image (``fill=None``). The scale of each metric is printed under the table.
    seed : int, default 0
        For the random baseline (metrics take their own ``seed`` in ``metric_params``).
    log : callable, optional
        Called with a line of progress per method.

    Returns
    -------
    Comparison
    """
    import torch

    from ..core.registry import explain, get_method

    methods = list(methods) if methods is not None else default_methods(model, inputs)
    metrics = list(metrics) if metrics is not None else default_metrics(model, masks)
    if not methods or not metrics:
        raise ValueError("methods and metrics must each name at least one entry")
    for k in metrics:
        get_metric(k)
    for k, kw in (metric_params or {}).items():
        if get_metric(k).name not in [get_metric(m).name for m in metrics]:
            raise ValueError(f"metric_params: {k!r} is not one of the compared metrics {metrics}")
        if not isinstance(kw, dict):
            raise TypeError(f"metric_params[{k!r}] must be a dict of parameters; got {type(kw).__name__}")
        check_kwargs(get_metric(k).parameters, kw, f"compare: metric_params[{k!r}]")
    for m in methods:
        if m != RANDOM:
            get_method(m)
    method_params = dict(method_params or {})
    metric_params = dict(metric_params or {})
    tgt = _resolve_target(model, inputs, target)
    results: dict = {}
    explanations: dict = {}
    seconds: dict = {}
    n = len(inputs)
    for m in methods:
        t0 = time.perf_counter()
        if m == RANDOM:
            expl = random_explanation(inputs, tgt, seed)
            explainer = _random_explainer(seed)
        else:
            info = get_method(m)
            params = dict(COMPARE_METHOD_PARAMS.get(m, {}))
            params.update(method_params.get(m, {}))
            if "progress" in inspect.signature(info.func).parameters:
                params.setdefault("progress", False)
            try:
                expl = explain(model, inputs, method=m, target=tgt, **params)
            except Exception as err:  # one broken method must not hide the others
                results[m] = {k: f"explaining failed: {type(err).__name__}: {err}" for k in metrics}
                if log:
                    log(f"  {m}: explaining failed: {err}")
                continue
            explainer = None
        seconds[m] = time.perf_counter() - t0
        explanations[m] = expl
        results[m] = {}
        for k in metrics:
            info = get_metric(k)
            if "masks" in info.needs and masks is None:
                results[m][k] = "needs ground-truth masks"
                continue
            if k.startswith("randomisation") and not isinstance(model, torch.nn.Module):
                results[m][k] = "needs a torch model"
                continue
            # the metrics' own defaults (fill, scale): the table shows what a direct call gives
            kw = dict(metric_params.get(k, {}))
            if "masks" in info.needs:
                kw["masks"] = masks
            if "explainer" in info.needs and explainer is not None:
                kw.setdefault("explainer", explainer)
            t1 = time.perf_counter()
            try:
                results[m][k] = _evaluate(info, model, expl, kw)
            except (ValueError, TypeError) as err:
                results[m][k] = f"{type(err).__name__}: {err}"
            seconds[(m, k)] = time.perf_counter() - t1
        if log:
            log(f"  {m}: explained in {seconds[m]:.2f} s, scored in "
                f"{sum(v for kk, v in seconds.items() if isinstance(kk, tuple) and kk[0] == m):.2f} s")
    return Comparison(methods, metrics, results, explanations, seconds, n)


def _evaluate(info, model, expl, kw):
    if "model" in info.needs:
        return info.func(model, expl, **kw)
    return info.func(expl, **kw)


# ----------------------------------------------------------------------------- command line
def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main(args) -> int:
    """``lumos compare``: the demo world by default, or ``--model`` + ``--input``."""
    import matplotlib

    matplotlib.use("Agg")

    from ..core.io import load_input, load_user_model, parse_target as _parse_target

    masks = None
    if args.model or getattr(args, "torchscript", None):
        if not args.input:
            raise SystemExit("lumos compare: --input is required with --model")
        model = load_user_model(args.model, args.weights, getattr(args, "torchscript", None))
        x = load_input(args.input, args.size)
        target = _parse_target(args.target) if args.target else "predicted"
        where = f"model {args.model or args.torchscript} on {args.input}"
    else:
        from ..data import load_demo_model, shapes_dataset

        if args.n < 2:
            raise SystemExit("lumos compare: --n must be at least 2")
        model = load_demo_model()
        data = shapes_dataset(args.n, split="test", seed=7)
        x, masks = data.images, data.masks.numpy()
        target = _parse_target(args.target) if args.target else "predicted"
        where = f"the demo world ({args.n} shapes test images, shipped DemoCNN)"
    print(f"lumos compare: {where}")
    t0 = time.perf_counter()
    comp = compare(model, x, _split(args.methods), _split(args.metrics), target=target, masks=masks, log=print)
    print()
    for line in comp.table():
        print(line)
    written = comp.save(args.out)
    print(f"\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - t0:.1f} s")
    return 0
