"""``explain_dataset``: every row of a data set explained, in shards, resumably."""
from __future__ import annotations

import hashlib
import inspect
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .sources import as_source, rows_digest
from .store import FORMAT, BatchFileError, read_manifest, sha256_file, write_manifest  # noqa: F401

__all__ = ["explain_dataset", "settings_differ"]

ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 256
# methods whose work per row is as cheap as moving the row (tree SHAP: ~0.015 ms per row): bigger
# shards by default, so that a task lasts long enough (~0.25 s) for Ray's per-task cost to vanish
CHEAP_SHARD_SIZE = {"tree_shap": 16384}


def _describe(value: Any) -> Any:
    """A parameter as JSON for the manifest; arrays and tables by shape and SHA-256."""
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not (value and all(isinstance(v, (int, float)) for v in value)
                                                   and len(value) > 64):
        return [_describe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if hasattr(value, "columns") or isinstance(value, np.ndarray) or hasattr(value, "detach") \
            or isinstance(value, (list, tuple)):
        shape = list(np.shape(value)) if not hasattr(value, "columns") else list(value.shape)
        return {"data": type(value).__name__, "shape": shape, "sha256": rows_digest(value)}
    if callable(value):
        return {"callable": f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"}
    return {"object": type(value).__name__, "repr": repr(value)[:200]}


def _factory_name(factory: Any) -> str:
    if isinstance(factory, str):
        return factory
    if not callable(factory):
        raise TypeError(f"model_factory must be 'package.module:factory' or a callable returning the model; "
                        f"got {type(factory).__name__}")
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', type(factory).__name__)}"


def _remove_temporaries(out: Path) -> None:
    """Temporary files of writers killed before their rename (shards or the manifest)."""
    for stray in list(out.glob(".shard-*.tmp")) + list(out.glob(".manifest.json.*.tmp")):
        stray.unlink(missing_ok=True)


def settings_differ(old: dict, new: dict) -> list[str]:
    """Names of the job settings that differ between an existing manifest and this call."""
    out = []
    for key in ("method", "seed", "per_row", "shard_size", "model"):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {json.dumps(old.get(key))} in the output, {json.dumps(new.get(key))} now")
    mo, mn = old.get("metrics") or {}, new.get("metrics") or {}
    for name in sorted(set(mo) | set(mn)):
        if name not in mo or name not in mn:
            out.append(f"metrics.{name}: {'absent' if name not in mo else 'scored'} in the output, "
                       f"{'absent' if name not in mn else 'asked'} now")
            continue
        for key in sorted(set(mo[name]) | set(mn[name])):
            if mo[name].get(key, "<unset>") != mn[name].get(key, "<unset>"):
                out.append(f"metrics.{name}.{key}: {json.dumps(mo[name].get(key, '<unset>'))} in the output, "
                           f"{json.dumps(mn[name].get(key, '<unset>'))} now")
    po, pn = old.get("params", {}), new.get("params", {})
    for key in sorted(set(po) | set(pn)):
        if po.get(key, "<unset>") != pn.get(key, "<unset>"):
            out.append(f"params.{key}: {json.dumps(po.get(key, '<unset>'))} in the output, "
                       f"{json.dumps(pn.get(key, '<unset>'))} now")
    return out


def _metrics(metrics: Any, metric_params: Any) -> dict[str, dict]:
    """The job's metrics as ``{registry name: parameters}``, checked against the registry."""
    from ..metrics.registry import get_metric
    from ..core.validation import check_kwargs

    if metrics is None:
        if metric_params:
            raise ValueError("metric_params: given without metrics=[...]")
        return {}
    if isinstance(metrics, str):
        metrics = [metrics]
    if isinstance(metrics, dict):
        pairs = list(metrics.items())
    elif isinstance(metrics, (list, tuple)):
        pairs = [(m, {}) for m in metrics]
    else:
        raise TypeError(f"metrics must be a list of metric names or a dict name -> parameters; "
                        f"got {type(metrics).__name__}")
    if metric_params is not None and not isinstance(metric_params, dict):
        raise TypeError(f"metric_params must be a dict name -> parameters; got {type(metric_params).__name__}")
    out: dict[str, dict] = {}
    for name, params in pairs:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise TypeError(f"metrics[{name!r}]: parameters must be a dict; got {type(params).__name__}")
        info = get_metric(name)
        if info.name in out:
            raise ValueError(f"metrics: {info.name!r} is given twice")
        out[info.name] = dict(params)
    for name, params in (metric_params or {}).items():
        key = get_metric(name).name
        if key not in out:
            raise ValueError(f"metric_params: {name!r} is not among metrics {sorted(out)}")
        if not isinstance(params, dict):
            raise TypeError(f"metric_params[{name!r}] must be a dict; got {type(params).__name__}")
        out[key].update(params)
    for name, params in out.items():
        info = get_metric(name)
        if "seed" in params:
            raise TypeError(f"metrics[{name!r}]: seed is explain_dataset's own argument (each row's metric "
                            "seed derives from it); pass seed=...")
        check_kwargs(info.parameters, params, f"metrics[{name!r}]")
        if "masks" in info.needs and params.get("masks") is None:
            raise ValueError(f"metrics[{name!r}]: needs ground-truth masks, one per data-set row "
                             f"(metric_params={{{name!r}: {{'masks': ...}}}}; a memory-mapped .npy works)")
        if params.get("masks") is not None and not hasattr(params["masks"], "__getitem__"):
            raise TypeError(f"metrics[{name!r}]: masks must be an array with one mask per data-set row")
    return out


def explain_dataset(model_factory: Any, data: Any, method: str = "integrated_gradients",
                    out: str | Path = "lumos-out/batch", *, engine: str = "local", shard_size: int | None = None,
                    seed: int = 0, weights: str | Path | None = None, workers: int | None = None,
                    address: str | None = None, max_retries: int = 3, max_in_flight: int | None = None,
                    per_row: bool | None = None, threads: int | None = 1, progress: bool | None = None,
                    image_size: Any = None, metrics: Any = None, metric_params: dict | None = None,
                    **params: Any):
    """Explain every row of a data set with one method, in shards, resumably.

    Each shard of ``shard_size`` rows is explained by one task calling :func:`lumos.explain` and
    written to ``out`` as a file (Parquet for tables and token results, ``.npz`` for tensors) that
    ``manifest.json`` lists with its row range and SHA-256. Running the same call again continues
    from the manifest: finished shards are verified by checksum and kept (never recomputed), a
    shard whose file is missing or does not match is redone, and the result equals an
    uninterrupted run's byte for byte. A call whose method, parameters, seed, shard size or model
    differ from the output's is refused.

    Parameters
    ----------
    model_factory : str or callable
        ``"package.module:factory"`` (as ``lumos explain --model``) or a picklable callable
        returning the model (a torch module, any predict function or estimator; or
        ``(model, tokenizer)`` for text). Each worker builds the model once.
    data : array, DataFrame, path, DataLoader or iterable
        See :func:`lumos.batch.sources.as_source`: a NumPy array or ``.npy``, a Parquet/CSV
        table, a folder of images, a ``.txt`` file of lines, a DataLoader or any iterable of
        rows. Files and iterables are streamed, never loaded whole.
    method : str
        A name from :func:`lumos.methods`.
    out : str or Path
        The output folder.
    engine : {"local", "ray"}
        ``"local"``: tasks one after another in this process. ``"ray"``: Ray workers
        (``pip install 'lumos[batch]'``).
    shard_size : int, optional
        Rows per shard (per task and per output file). Default 256; 16,384 for tree SHAP, whose
        per-row work is so cheap that smaller tasks would spend their time being handed out.
    seed : int, default 0
        Seeds of the sampling methods are derived from it and the row index
        (:func:`lumos.batch.task.row_seed`), never from the worker or the order.
    weights : str or Path, optional
        A state-dict file for the factory's model, read by each worker (``weights_only=True``).
    workers : int, optional
        Ray: the number of workers (``ray.init(num_cpus=workers)`` on this machine; with a
        cluster, the number of tasks run at once). Default: every CPU.
    address : str, optional
        Ray: a cluster address (``"ray://host:10001"`` or ``"auto"``); the output folder must
        then be shared by the workers and the driver.
    max_retries : int, default 3
        Retries of a shard whose task raised or whose worker died.
    max_in_flight : int, optional
        Shards handed out at once (default: ``workers``): the driver holds at most this many
        shards' rows, plus the one being read.
    per_row : bool, optional
        One call per row, a seeded method with the row's own seed (default for methods that take
        a ``seed``): a row's result then depends on the row, its index and ``seed`` only, whatever
        ``shard_size``, bit for bit. ``False``: one call per shard, a seeded method seeded by the
        shard's first row (faster; the values then depend on ``shard_size``). Methods without a
        seed run per shard by default; their rows are the same for any shard size up to float
        rounding (a matrix product of one row can take another kernel than one of many), and bit
        for bit with ``per_row=True``.
    threads : int or None, default 1
        torch intra-op threads per task (the same on every engine, so the arithmetic is the same);
        ``None`` leaves torch's setting.
    progress : bool, optional
        A progress bar of finished shards (default: on a terminal).
    image_size : (H, W), optional
        Resize the images of a folder.
    metrics : list of str or dict, optional
        Metrics of :func:`lumos.metrics.available` scored on every row's explanation in the task
        that explains it (``["sparseness", "deletion"]``, or ``{"deletion": {"n_steps": 10}}``),
        stored per row beside the attributions (``metric:<name>`` columns, ``metric__<name>``
        arrays) and summarised by :meth:`BatchResults.metric_distribution`. A metric that takes a
        ``seed`` is scored one row per call with :func:`lumos.batch.task.metric_seed` of the
        row's index. Metrics that re-run the explanation (robustness, randomisation) re-run the
        job's method with its parameters. Localisation metrics need ``masks``: one per data-set
        row (sliced per shard; a memory-mapped ``.npy`` works). Part of the job's settings: a
        resumed run with other metrics or metric parameters is refused.
    metric_params : dict, optional
        ``{metric name: parameters}`` added to ``metrics`` given as a list.
    **params
        The method's own parameters (``target=``, ``background=``, ``n_steps=`` ...); ``target``
        must be the same for every row (an int, ``"predicted"`` or a callable).

    Returns
    -------
    BatchResults
        :func:`lumos.batch.open` of ``out``.
    """
    from ..core.execution import progress_bar
    from ..core.registry import get_method
    from ..core.validation import check_choice, check_kwargs, check_number
    from .engines import LocalEngine, RayEngine
    from .results import open as open_results

    info = get_method(method)
    check_choice(engine, "engine", ENGINES)
    if shard_size is None:
        shard_size = CHEAP_SHARD_SIZE.get(info.name, DEFAULT_SHARD_SIZE)
    shard_size = int(check_number(shard_size, "shard_size", low=1, integer=True))
    seed = int(check_number(seed, "seed", low=0, integer=True))
    max_retries = int(check_number(max_retries, "max_retries", low=0, integer=True))
    if workers is not None:
        workers = int(check_number(workers, "workers", low=1, integer=True))
        if engine == "local" and workers > 1:
            raise ValueError(f"workers={workers}: the local engine runs one shard at a time in this process; "
                             "use engine='ray' for several workers")
    if address is not None and engine != "ray":
        raise ValueError("address: a Ray cluster address needs engine='ray'")
    if max_in_flight is not None:
        max_in_flight = int(check_number(max_in_flight, "max_in_flight", low=1, integer=True))
    if "seed" in params:
        raise TypeError("seed is explain_dataset's own argument (row seeds derive from it); pass seed=...")
    target = params.get("target")
    if isinstance(target, (list, tuple, np.ndarray)) or hasattr(target, "detach"):
        raise ValueError("target: give one target for every row (an int, 'predicted' or a callable); "
                         "a per-row list does not follow the rows into their shards")
    sig = inspect.signature(info.func).parameters
    check_kwargs(info.func, {k: v for k, v in params.items() if k not in ("target", "feature_names")},
                 f"{info.name}", skip=("model", "inputs", "target"))
    seeded = "seed" in sig
    per_row = seeded if per_row is None else bool(per_row)
    factory_name = _factory_name(model_factory)
    weights_sha = None
    if weights is not None:
        from ..core.io import check_file

        weights = str(check_file(weights, "weights").resolve())
        weights_sha = sha256_file(Path(weights))
    model_doc = {"factory": factory_name, "weights_sha256": weights_sha}
    model_key = hashlib.sha256(json.dumps(model_doc, sort_keys=True).encode()).hexdigest()
    model_doc["hash"] = model_key
    metrics = _metrics(metrics, metric_params)
    settings = {"method": info.name, "params": _describe(params), "seed": seed, "per_row": per_row,
                "shard_size": shard_size, "model": model_doc}
    if metrics:  # absent without metrics: outputs written before metrics existed still resume
        settings["metrics"] = {name: _describe(p) for name, p in metrics.items()}

    source = as_source(data, image_size)
    for name, p in metrics.items():
        if p.get("masks") is not None and source.n_rows is not None and len(p["masks"]) != source.n_rows:
            raise ValueError(f"metrics[{name!r}]: masks has {len(p['masks'])} rows; the data has {source.n_rows} "
                             "(one mask per data-set row)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    if manifest is not None:
        differ = settings_differ(manifest, settings)
        if differ:
            raise ValueError(f"out {str(out)!r} holds results of another job; refusing to mix them. "
                             f"Differences: {'; '.join(differ)}. Choose another out, or remove it")
    else:
        manifest = {"format": FORMAT, **settings, "data": {"kind": source.kind, "name": source.name},
                    "status": "running", "shards": []}
    _remove_temporaries(out)
    done: dict[int, dict] = {}
    for entry in manifest["shards"]:
        path = out / entry["file"]
        if path.exists() and sha256_file(path) == entry["sha256"]:
            done[entry["index"]] = entry
    redone = sorted({e["index"] for e in manifest["shards"]} - set(done))
    if redone or not (out / "manifest.json").exists():
        manifest["shards"] = list(done.values())
        manifest["status"] = "running"
        manifest.pop("rows", None)
        write_manifest(out, manifest)

    # workers cache the model per job (a later call with a mended factory of the same name rebuilds it)
    job = {"factory": model_factory, "weights": weights, "model_key": f"{model_key}-{uuid.uuid4().hex}",
           "method": info.name, "params": params, "seed": seed, "per_row": per_row, "seeded": seeded, "threads": threads,
           "metrics": metrics,
           "out": str(out.resolve()), "storage": manifest.get("storage")}
    if engine == "local":
        runner = LocalEngine(job, max_retries=max_retries)
    else:
        runner = RayEngine(job, workers=workers, address=address, max_retries=max_retries,
                           max_in_flight=max_in_flight)
    digests: dict[int, str] = {}
    n_rows = [0]
    n_shards = -(-source.n_rows // shard_size) if source.n_rows is not None else None

    def todo():
        for index, start, rows in source.shards(shard_size):
            digest = rows_digest(rows)
            digests[index] = digest
            n_rows[0] = start + len(rows)
            if index in done:
                entry = done[index]
                if entry.get("input_sha256") != digest or entry["start"] != start \
                        or entry["stop"] != start + len(rows):
                    raise ValueError(
                        f"data: rows {start}..{start + len(rows) - 1} differ from the data that produced "
                        f"{entry['file']} in {str(out)!r}; refusing to mix results of different data")
                continue
            yield index, start, rows

    bar = progress_bar(n_shards, desc=f"{info.name} shards", progress=progress, unit="shard")
    bar.update(len(done))
    try:
        for entry in runner.run(todo()):
            entry["input_sha256"] = digests[entry["index"]]
            done[entry["index"]] = entry
            manifest["shards"] = list(done.values())
            manifest["status"] = "running"
            manifest.pop("rows", None)
            manifest.setdefault("storage", "parquet" if entry["file"].endswith(".parquet") else "npz")
            write_manifest(out, manifest)
            bar.update(1)
    finally:
        bar.close()
        runner.close()
    extra = sorted(i for i in done if i not in digests)
    if extra:
        raise ValueError(f"data: has {n_rows[0]} rows but {str(out)!r} holds shards beyond them "
                         f"({[done[i]['file'] for i in extra]}); refusing to mix results of different data")
    manifest["rows"] = n_rows[0]
    manifest["data"]["sha256"] = hashlib.sha256("".join(digests[i] for i in sorted(digests)).encode()).hexdigest()
    manifest["status"] = "complete"
    write_manifest(out, manifest)
    _remove_temporaries(out)  # left by a worker killed while writing (its task was retried)
    results = open_results(out)
    results.redone = redone
    return results


# BatchFileError is re-exported for callers that catch a malformed output folder
__all__.append("BatchFileError")
