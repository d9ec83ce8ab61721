"""One shard's work: build (or reuse) the model, explain the rows, write the shard file.

This is the function every engine runs, in the driver's process (``engine="local"``) or in a Ray
worker. It depends only on the job description and the shard (its index, first row and rows),
never on the worker or the order, so every engine writes the same bytes.

Seeds. lumos's sampling methods draw per sample in one of two ways: SmoothGrad and gradient SHAP
share their draws between the samples of a call (a row's result depends on the seed only), while
the perturbation explainers (kernel/permutation SHAP, LIME) give the ``k``-th row of a call the
``k``-th child of ``SeedSequence(seed)``, so a row's draws depend on its place in the call. To make
a row's result a function of the row, its index in the data set and ``seed`` alone, a method that
takes a ``seed`` is run one row per call by default (``per_row=True``) with the row's own seed
:func:`row_seed` ``(seed, i)``. With ``per_row=False`` a whole shard is one call seeded with
``row_seed(seed, start)`` (the shard's first row): faster, the same for any engine and worker
count, but dependent on ``shard_size``. Methods without a seed run one call per shard by
default: their rows are then the same for any shard size up to float rounding (a matrix product
of one row may take another kernel than one of many rows), and bit for bit with ``per_row=True``.
"""
from __future__ import annotations

import contextlib
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["row_seed", "metric_seed", "build_model", "run_task", "explain_rows", "metric_scores",
           "keep_freed_memory"]

# Models built in this process, by the job's model key: a Ray worker builds each model once and
# reuses it for every shard it is handed.
_MODELS: dict[str, Any] = {}

# glibc malloc parameters (mallopt) set once in every process that runs tasks; see keep_freed_memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20   # blocks up to 32 MiB come from the heap (glibc's own ceiling for this)
TRIM_THRESHOLD = 64 << 20   # freed memory at the heap's top is given back to the OS beyond 64 MiB
_MALLOC_SET: list[bool] = []


def row_seed(seed: int, index: int) -> int:
    """The seed of data-set row ``index``: ``SeedSequence(seed, spawn_key=(index,))``'s first word.

    SmoothGrad's per-draw convention (:func:`lumos.attribution.smoothgrad.noise_draws`) applied
    to rows: independent streams per row, whatever the shards, workers or order.
    """
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(index),)).generate_state(1, np.uint32)[0])


def metric_seed(seed: int, index: int, metric: str) -> int:
    """The seed of metric ``metric`` on data-set row ``index``.

    ``SeedSequence(seed, spawn_key=(index, crc32(metric)))``'s first word: a stream per row and
    metric, apart from the row's explanation seed (:func:`row_seed`) and from the other metrics,
    whatever the shards, workers, order or the other metrics of the job.
    """
    key = zlib.crc32(str(metric).encode("utf-8"))
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(index), key)).generate_state(1, np.uint32)[0])


def build_model(factory: Any, weights: str | None = None):
    """The model of a job: ``factory`` is ``"package.module:factory"`` or a callable.

    ``weights`` is a state-dict file loaded with ``weights_only=True`` (as ``lumos explain``
    does). A factory may return ``(model, tokenizer)`` for text models.
    """
    from ..core.io import _load_weights, load_user_model

    if isinstance(factory, str):
        return load_user_model(factory, weights)
    model = factory()
    target = model[0] if isinstance(model, tuple) else model
    # the same loading as a "package.module:factory" string: weights_only, a state dict that does
    # not fit is named, a torch module goes to eval mode
    name = getattr(factory, "__qualname__", type(factory).__name__)
    _load_weights(target, None if weights is None else Path(weights), name)
    return model


def keep_freed_memory() -> bool:
    """Let this process's allocator keep freed work arrays for the next ones (glibc only; once).

    A task's explanation allocates and frees work arrays of a few MB, over and over (tree SHAP:
    ~90 MB per 20,000 rows). glibc serves a block above its mmap threshold with a fresh ``mmap``
    and gives it back on ``free``, and returns the heap's free top beyond its trim threshold; the
    next array is then faulted in again page by page. Both thresholds start at 128 KiB and grow
    with what the process freed before, so the cost depends on the process's history: ~22,000
    page faults per 20,000-row tree SHAP call in a fresh process (a Ray worker), 40 % of the call,
    fewer in a driver that freed big arrays earlier. With ``M_MMAP_THRESHOLD`` = 32 MiB and
    ``M_TRIM_THRESHOLD`` = 64 MiB the arrays are reused from the heap (a few faults per call),
    at the price of up to 64 MiB of freed memory held by the process.

    Every engine calls it in the process that runs its tasks (the caller's process for
    ``engine="local"``, each Ray worker), so the engines compute under the same allocator. The
    setting stays for the life of the process. Returns whether it was applied (``False`` on
    other C libraries, which are left as they are).
    """
    if _MALLOC_SET:
        return _MALLOC_SET[0]
    ok = False
    try:
        import ctypes
        import platform

        if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
                and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError, ValueError):  # pragma: no cover - no usable C library
        ok = False
    _MALLOC_SET.append(ok)
    return ok


def _cached_model(job: dict):
    key = job["model_key"]
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker at a time: a new job's model replaces the old one
        _MODELS[key] = build_model(job["factory"], job["weights"])
    return _MODELS[key]


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op threads and the OpenMP/BLAS pools (threadpoolctl, scikit-learn's own
    dependency) fixed to ``n`` for the task: the same arithmetic and the same share of the
    machine on every engine (Ray starts its workers with one thread each)."""
    if not n:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n)):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def _take(rows: Any, i: int) -> Any:
    if hasattr(rows, "iloc"):
        return rows.iloc[i:i + 1]
    return rows[i:i + 1]


def explain_rows(model: Any, rows: Any, start: int, job: dict):
    """The Explanation of one shard's rows (rows ``start ..``), seeded by row index."""
    from ..core.explanation import concatenate
    from ..core.registry import explain

    params = dict(job["params"])
    if isinstance(model, tuple):  # (model, tokenizer)
        model, params["tokenizer"] = model
    method, seed = job["method"], job["seed"]

    def seeded(first: int) -> dict:
        return {"seed": row_seed(seed, first)} if job["seeded"] else {}

    if not job["per_row"]:
        return explain(model, rows, method, **seeded(start), **params)
    return concatenate([explain(model, _take(rows, i), method, **seeded(start + i), **params)
                        for i in range(len(rows))])


def _metric_params(name: str, params: dict, job: dict, start: int, stop: int) -> dict:
    """A metric's parameters for rows ``start .. stop`` of the data set."""
    from ..metrics.registry import get_metric

    info = get_metric(name)
    params = dict(params)
    if params.get("masks") is not None:  # one mask per data-set row: this shard's rows
        masks = np.asarray(params["masks"][start:stop])
        if len(masks) != stop - start:
            raise ValueError(f"metrics[{name!r}]: masks has no rows {start}..{stop - 1} (it has {len(params['masks'])} "
                             "rows; give one mask per data-set row)")
        params["masks"] = masks
    if "explainer" in info.needs and "explainer" not in params:
        # re-run the job's own method with its parameters (arrays included, not their summaries)
        params["explainer"] = job["method"]
        params.setdefault("method_params", {k: v for k, v in job["params"].items() if k != "target"})
    if "progress" in info.parameters:
        params.setdefault("progress", False)
    return params


def metric_scores(model: Any, expl, start: int, job: dict) -> dict[str, np.ndarray]:
    """Each of the job's metrics scored on the shard's explanation: ``{name: scores (n,)}``.

    A metric that takes a ``seed`` is scored one row per call with the row's :func:`metric_seed`
    (its draws then depend on the row, its index and the job's ``seed`` only, as the
    explanations' do); the others per shard, or per row with ``per_row=True``.
    """
    from ..metrics.registry import evaluate, get_metric

    if isinstance(model, tuple):  # (model, tokenizer)
        model = model[0]
    n = len(expl)
    out = {}
    for name, given in sorted(job.get("metrics", {}).items()):
        info = get_metric(name)
        params = _metric_params(name, given, job, start, start + n)
        if "seed" in info.parameters or job["per_row"]:
            scores = []
            for i in range(n):
                p = dict(params)
                if p.get("masks") is not None:
                    p["masks"] = p["masks"][i:i + 1]
                if "seed" in info.parameters:
                    p["seed"] = metric_seed(job["seed"], start + i, name)
                scores.append(evaluate(name, model, expl[i:i + 1], **p).scores)
            got = np.concatenate(scores) if scores else np.zeros(0)
        else:
            got = evaluate(name, model, expl, **params).scores
        got = np.asarray(got, dtype=np.float64).reshape(-1)
        if len(got) != n:
            raise RuntimeError(f"metrics[{name!r}]: {len(got)} scores for {n} rows")
        out[name] = got
    return out


def run_task(job: dict, index: int, start: int, rows: Any, model: Any = None) -> dict:
    """Explain one shard (and score it with the job's metrics) and write its file; returns its
    manifest entry (without the input digest)."""
    from .store import write_shard

    keep_freed_memory()
    if model is None:
        model = _cached_model(job)
    with _threads(job.get("threads")):
        expl = explain_rows(model, rows, start, job)
        if len(expl) != len(rows):
            raise RuntimeError(f"shard {index}: {job['method']} returned {len(expl)} rows for {len(rows)}")
        scores = metric_scores(model, expl, start, job) if job.get("metrics") else None
    name, digest = write_shard(Path(job["out"]), index, start, expl, job.get("storage"), metrics=scores)
    return {"index": int(index), "start": int(start), "stop": int(start + len(rows)), "file": name,
            "sha256": digest, "status": "done"}
