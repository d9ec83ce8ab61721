"""The background job queue of ``lumos serve``: long work off the request path, with progress and
cancellation.

A :class:`JobQueue` runs jobs on a small pool of worker threads. Each job runs inside a
:func:`lumos.core.execution.progress_scope` opened *in its worker thread* (context variables do not
follow a function into a new thread): every :func:`~lumos.core.execution.chunks` loop and progress
bar of lumos reports to the job, and a cancelled job stops with
:class:`~lumos.core.execution.Cancelled` at its next chunk. A job that raises is ``failed`` with its
message (never a traceback); the queue and the server keep running.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
import queue
from typing import Any, Callable

from ..core.execution import CancelToken, Cancelled, progress_scope

__all__ = ["Job", "JobQueue", "QueueFull", "STATES", "error_message"]

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


class QueueFull(RuntimeError):
    """Too many jobs are waiting."""


class Job:
    """One unit of work: its state, progress (0..1), current stage, error message and result."""

    def __init__(self, model_id: str, label: str = "", time_limit: float | None = None):
        self.id = uuid.uuid4().hex[:16]
        self.model_id = model_id
        self.label = label
        self.state = "queued"
        self.progress = 0.0
        self.stage = ""
        self.error: str | None = None
        self.result: Any = None
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.token = CancelToken()
        self.time_limit = time_limit
        self.timed_out = False
        self.files: dict[str, bytes] = {}  # map PNGs and value arrays served by the app
        self._lock = threading.Lock()
        self._steps = (0, 1)  # (index, count) of the stage being run
        self.done_event = threading.Event()

    # ---------------------------------------------------------------- called by the work
    def step(self, index: int, count: int, stage: str) -> None:
        """Start stage ``index`` of ``count`` (progress moves to ``index / count``)."""
        with self._lock:
            self._steps = (index, max(1, count))
            self.stage = stage
            self.progress = max(self.progress, min(1.0, index / max(1, count)))
        self._check_time()
        self.token.check()

    def _check_time(self) -> None:
        """Past its time limit, the job cancels itself (it fails with a message saying so)."""
        if self.time_limit is not None and self.started is not None and \
                time.time() - self.started > self.time_limit and not self.token.cancelled:
            self.timed_out = True
            self.token.cancel()

    def report(self, done: int, total: int, desc: str = "") -> None:
        """A chunk of the current stage finished (the callback of the job's progress scope)."""
        self._check_time()
        if total <= 0:
            return
        with self._lock:
            i, n = self._steps
            value = (i + min(1.0, done / total)) / n
            self.progress = max(self.progress, min(value, 1.0))

    # ---------------------------------------------------------------- read by the app
    @property
    def finished_state(self) -> bool:
        return self.state in FINISHED

    def as_json(self, with_result: bool = True) -> dict:
        return {"id": self.id, "model": self.model_id, "state": self.state, "label": self.label,
                "progress": round(float(self.progress), 4), "stage": self.stage, "error": self.error,
                "created": self.created, "started": self.started, "finished": self.finished,
                "result": self.result if with_result and self.state == "done" else None}


def error_message(err: BaseException) -> str:
    """A one-paragraph message for the page: the error's own text (lumos's errors name the argument
    and what was expected), prefixed by its type for unexpected errors; never a traceback."""
    text = " ".join(str(err).split())
    if not text:
        return type(err).__name__
    if isinstance(err, (ValueError, TypeError, KeyError, FileNotFoundError, PermissionError)):
        return text[:2000]
    return f"{type(err).__name__}: {text}"[:2000]


class JobQueue:
    """Worker threads running jobs in order of submission.

    Parameters
    ----------
    workers : int, default 1
        Jobs run at the same time (jobs on one torch model run one after another anyway: lumos
        holds a lock per model).
    max_queued : int, default 16
        Jobs waiting or running at once; one more raises :class:`QueueFull`.
    keep : int, default 64
        Finished jobs kept for their results (the oldest are dropped first).
    time_limit : float or None, default None
        Seconds a job may run; past them it stops at its next chunk and fails with a message that
        says so (None: no limit).
    """

    def __init__(self, workers: int = 1, max_queued: int = 16, keep: int = 64, time_limit: float | None = None):
        if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float))
                                       or not time_limit > 0):
            raise ValueError(f"time_limit must be a positive number of seconds or None; got {time_limit!r}")
        self.time_limit = time_limit
        for name, v in (("workers", workers), ("max_queued", max_queued), ("keep", keep)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        # daemon threads (not a ThreadPoolExecutor, whose threads the interpreter joins at exit): a
        # job stuck in work that never reaches a chunk cannot keep a stopped server's process alive
        self._todo: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._worker, name=f"lumos-serve-job-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self.max_queued, self.keep = max_queued, keep
        self._closed = False

    def submit(self, work: Callable[[Job], Any], model_id: str, label: str = "") -> Job:
        """Queue ``work(job) -> result``; returns the job at once."""
        job = Job(model_id, label, self.time_limit)
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            active = sum(1 for j in self._jobs.values() if not j.finished_state)
            if active >= self.max_queued:
                raise QueueFull(f"{active} jobs are already queued or running (limit {self.max_queued}); "
                                "wait for one to finish or cancel one")
            self._jobs[job.id] = job
            self._forget_old()
        self._todo.put((job, work))
        return job

    def _worker(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:  # shutdown
                return
            self._run(*item)

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.finished_state]
        for k in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[k]

    def _run(self, job: Job, work: Callable[[Job], Any]) -> None:
        # the final state is set last, after ``finished`` (and the result or error): a client that
        # sees a finished state also sees its time and its result
        final, error, result = None, None, None
        try:
            with job._lock:
                if job.token.cancelled:  # cancelled while queued
                    final = "cancelled"
                    return
                job.state, job.started = "running", time.time()
            # the scope is opened here, in the worker thread: context variables do not follow a
            # function into a thread pool
            with progress_scope(job.report, job.token):
                result = work(job)
            final = "done"
        except Cancelled:
            if job.timed_out:
                error = (f"time limit reached: the job ran for more than {job.time_limit:g} s and was "
                         f"stopped during {job.stage or 'its first stage'} (fewer steps or samples, or a "
                         "longer limit: lumos serve --job-time-limit)")
                final = "failed"
            else:
                final = "cancelled"
        except Exception as err:  # noqa: BLE001 - any failure of the work is the job's, not the server's
            error, final = error_message(err), "failed"
        finally:
            if final is None:  # a BaseException (the interpreter stopping) went through
                final = "cancelled" if job.token.cancelled else "failed"
                error = None if job.token.cancelled else "the job was interrupted"
            with job._lock:
                if job.finished is None:
                    job.finished = time.time()
                if final == "done":
                    job.result, job.progress = result, 1.0
                if error is not None:
                    job.error = error
                job.state = final
            job.done_event.set()

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop: a queued one never starts, a running one stops at its next chunk."""
        job = self.get(job_id)
        with job._lock:
            if job.finished_state:
                return job
            job.token.cancel()
            if job.state == "queued":
                job.state = "cancelled"
                job.finished = time.time()
                job.done_event.set()
        return job

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel every job and wait (at most ``timeout`` seconds) for the workers."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            try:
                self.cancel(job.id)
            except KeyError:
                pass
        deadline = time.monotonic() + timeout
        for job in jobs:
            job.done_event.wait(max(0.0, deadline - time.monotonic()))
        for _ in self._threads:
            self._todo.put(None)
