"""Engines: who runs the shards' tasks. Both yield each finished shard's manifest entry.

``LocalEngine`` runs the tasks one after another in this process (no Ray; small jobs, tests).
``RayEngine`` hands them to Ray workers (``ray.init(num_cpus=workers)`` on this machine, or a
cluster ``address=``), at most ``max_in_flight`` at once, retrying a task whose worker died or
which raised (``max_retries``). The model is built once per worker process from the factory (a
string or a picklable callable, with the weights' *path*: never weights shipped as tensors).
Ray is imported only here, only when ``engine="ray"`` is asked for.

Priority. Ray starts its worker processes 15 nice levels below the driver (its default
``worker_niceness``), so they yield to the driver and every ordinary process they compete
with, while the in-process engine runs at the caller's priority. The local Ray instance lumos starts sets
``worker_niceness`` to 0: workers run at the caller's priority (``nice lumos explain-dataset``
lowers the whole job), and the engines compete for the cores on equal terms. A cluster
(``address=``) or a Ray already started by the caller keeps its own setting.

Allocator. Whichever engine runs a task, the process running it keeps freed work memory for the
next task (:func:`lumos.batch.task.keep_freed_memory`, called by ``run_task``): a fresh Ray worker
otherwise faulted tree SHAP's work arrays in again every shard, which was most of Ray's overhead
over the in-process engine at one worker (docs/scale.md, "The cause: page faults").
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

from .task import build_model, run_task

__all__ = ["LocalEngine", "RayEngine", "ShardFailed", "import_ray", "start_ray"]


class ShardFailed(RuntimeError):
    """A shard's task failed (after its retries)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("engine='ray' needs Ray: pip install 'lumos[batch]' (or pip install ray)") from None
    return ray


class LocalEngine:
    """Tasks in this process, one at a time; the model is built once for the job."""

    workers = 1

    def __init__(self, job: dict, max_retries: int = 0):
        self.job = job
        self.max_retries = max_retries
        self.model = None

    def run(self, tasks: Iterable[tuple[int, int, Any]]) -> Iterator[dict]:
        for index, start, rows in tasks:
            if self.model is None:
                self.model = build_model(self.job["factory"], self.job["weights"])
            for attempt in range(self.max_retries + 1):
                try:
                    result = run_task(self.job, index, start, rows, model=self.model)
                    break
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:
                    if attempt == self.max_retries:
                        raise ShardFailed(_failed(index, start, rows, err)) from err
            yield result

    def close(self) -> None:
        self.model = None


def _failed(index, start, rows, err) -> str:
    return (f"shard {index} (rows {start}..{start + len(rows) - 1}) failed: {type(err).__name__}: {err}. "
            "Finished shards are kept; run the same call again to resume")


def start_ray(workers: int | None = None, address: str | None = None) -> bool:
    """Start Ray as the Ray engine does, unless it is already running.

    Benchmarks call it too, so that they time the engine's own Ray.

    Parameters
    ----------
    workers : int, optional
        On this machine: ``num_cpus`` (default: every core); no dashboard; the workers at the
        caller's priority (``worker_niceness=0``).
    address : str, optional
        A cluster to join, with the cluster's own settings.

    Returns
    -------
    bool
        ``True`` if this call started Ray (the caller then shuts it down).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        # joining a cluster: its resources, dashboard and priorities are the cluster's own settings
        ray.init(address=address, log_to_driver=False)
    else:
        # workers at the caller's priority, not Ray's default 15 levels below (see the module notes)
        ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, _system_config={"worker_niceness": 0})
    return True


class RayEngine:
    """Tasks on Ray workers, at most ``max_in_flight`` at once, retried ``max_retries`` times."""

    def __init__(self, job: dict, workers: int | None = None, address: str | None = None,
                 max_retries: int = 3, max_in_flight: int | None = None):
        ray = import_ray()
        self.ray = ray
        self.started = start_ray(workers, address)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        self.workers = int(workers or cpus)
        self.max_in_flight = int(max_in_flight or self.workers)
        self.job_ref = ray.put(job)
        # in a list, so that Ray hands the task the reference instead of deserialising the job (the
        # model factory, the background...) for every shard: each worker resolves it once (_job_of)
        self.job_box = [self.job_ref]
        self.remote = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(_ray_task)

    def run(self, tasks: Iterable[tuple[int, int, Any]]) -> Iterator[dict]:
        ray = self.ray
        pending: dict = {}
        it, error = iter(tasks), None
        try:
            while True:
                try:
                    index, start, rows = next(it)
                except StopIteration:
                    break
                except Exception as err:  # the data failed: keep the shards already handed out
                    error = err
                    break
                finished = []
                while len(pending) >= self.max_in_flight:
                    finished += self._collect(pending)
                # the next shard goes out before the finished ones are handed back: their manifest
                # write (synced to disk) and the progress bar then overlap the worker's next task
                # instead of leaving it idle (a gap of 20-50 ms per task on a loaded machine)
                pending[self.remote.remote(self.job_box, index, start, rows)] = (index, start, len(rows))
                yield from finished
            while pending:
                yield from self._collect(pending)
            if error is not None:
                raise error
        finally:
            # the driver stops (an error, Ctrl-C, the data iterator raising): no orphan tasks
            for ref in pending:
                ray.cancel(ref, force=True)

    def _collect(self, pending: dict) -> list[dict]:
        """The entries of the tasks that finished first (at least one; waits for it)."""
        ray = self.ray
        done, _ = ray.wait(list(pending), num_returns=1)
        out = []
        for ref in done:
            index, start, n = pending.pop(ref)
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as err:
                cause = getattr(err, "cause", None) or err
                raise ShardFailed(_failed(index, start, range(n), cause)) from None
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


# the job of each reference this worker process has resolved (the latest only: one job at a time)
_JOBS: dict[str, dict] = {}


def _job_of(box: list) -> dict:
    import ray

    key = box[0].hex()
    if key not in _JOBS:
        _JOBS.clear()
        _JOBS[key] = ray.get(box[0])
    return _JOBS[key]


def _ray_task(job_box: list, index: int, start: int, rows: Any) -> dict:
    return run_task(_job_of(job_box), index, start, rows)
