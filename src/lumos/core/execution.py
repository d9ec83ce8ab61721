"""Shared execution: batching of internal samples, progress bars, explicit randomness.

Every method that evaluates a model on many internal samples (integration steps, noise draws,
masks, windows, coalitions) runs them through :func:`chunks` under a ``batch_size`` and shows a
progress bar through :func:`progress_bar` when the work is long. Randomness comes only from
:func:`rng` / :func:`torch_generator`, built from an explicit ``seed``: never the global RNG.
Results never depend on the batch size: random draws are made before batching.

Long work can be watched and stopped from outside: inside a :func:`progress_scope`, every
:func:`chunks` loop and every :func:`progress_bar` reports its progress to the scope's callback
and raises :class:`Cancelled` at its next step once the scope's :class:`CancelToken` is
cancelled. The scope lives in a :mod:`contextvars` variable, so it follows the code of one thread
(or task); a new thread starts without it and must open its own (``lumos serve`` opens one inside
each job's worker thread).
"""
from __future__ import annotations

import contextvars
import sys
import threading
from typing import Callable, Iterator

import numpy as np

__all__ = ["chunks", "progress_bar", "rng", "torch_generator", "check_batch_size", "torch_threads",
           "seeded_global_rng", "progress_scope", "CancelToken", "Cancelled", "check_cancelled",
           "DEFAULT_BATCH_SIZE", "BATCH_BYTES"]

DEFAULT_BATCH_SIZE = 64
# Bytes of input per internal batch when the batch size is left to lumos: rows beyond this stop
# paying off on CPU (activations leave the caches; measured on the demo CNN at 128x128, where 64-row
# batches made occlusion 2.4x slower than 8-row ones) and bound the peak memory of a call.
BATCH_BYTES = 2 * 2**20
# Work shorter than this many chunks gets no bar even on a terminal.
_MIN_CHUNKS_FOR_BAR = 4


def check_batch_size(batch_size: int | None, name: str = "batch_size",
                     row_bytes: int | None = None) -> int:
    """Validate ``batch_size``; ``None`` means the default.

    The default is :data:`DEFAULT_BATCH_SIZE` rows, fewer when ``row_bytes`` (the bytes of one
    internal row, e.g. ``x[0].numel() * x.element_size()``) is given and that many rows would
    exceed :data:`BATCH_BYTES`: large images get small batches, tables and small images 64 rows.
    """
    if batch_size is None:
        if row_bytes:
            return int(max(1, min(DEFAULT_BATCH_SIZE, BATCH_BYTES // int(row_bytes))))
        return DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{name} must be a positive int; got {batch_size!r}")
    return int(batch_size)


class Cancelled(BaseException):
    """Raised inside a :func:`progress_scope` at the next chunk after its token was cancelled.

    A ``BaseException`` (as ``asyncio.CancelledError`` and ``KeyboardInterrupt`` are), so that a
    method's own ``except Exception`` fallback does not swallow the request to stop; context
    managers (``ModelGuard``) still restore what they guard on the way out.
    """


class CancelToken:
    """A thread-safe flag asking the work of a :func:`progress_scope` to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the work to stop (at its next chunk); may be called from any thread."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` when cancelled."""
        if self._event.is_set():
            raise Cancelled("cancelled")


class progress_scope:
    """Watch and stop the lumos work run inside this block (in this thread).

    Parameters
    ----------
    callback : callable, optional
        ``callback(done, total, desc)``, called after each chunk of every :func:`chunks` loop and
        each update of every :func:`progress_bar` run inside the block (``done`` of ``total``
        items of the loop described by ``desc``). Nested loops each report their own counts.
    token : CancelToken, optional
        When it is cancelled, the next chunk (or bar update) raises :class:`Cancelled`. Default:
        a fresh token, available as ``scope.token``.

    Notes
    -----
    The scope is held in a :mod:`contextvars` variable: threads started inside the block do not
    see it (open a scope in the thread itself). Scopes nest; the innermost one is reported to.

    >>> token = CancelToken()
    >>> with progress_scope(lambda done, total, desc: print(desc, done, total), token):
    ...     lumos.explain(model, x, "integrated_gradients", n_steps=256, batch_size=8)
    """

    def __init__(self, callback: Callable[[int, int, str], None] | None = None,
                 token: CancelToken | None = None):
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None; got {type(callback).__name__}")
        if token is not None and not isinstance(token, CancelToken):
            raise TypeError(f"token must be a CancelToken or None; got {type(token).__name__}")
        self.callback = callback
        self.token = CancelToken() if token is None else token

    def report(self, done: int, total: int, desc: str = "") -> None:
        """Pass progress to the callback, then stop if cancelled."""
        if self.callback is not None:
            self.callback(int(done), int(total), desc)
        self.token.check()

    def __enter__(self) -> "progress_scope":
        self.token.check()  # cancelled before it started: do not start
        self._reset = _SCOPE.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _SCOPE.reset(self._reset)


_SCOPE: contextvars.ContextVar[progress_scope | None] = contextvars.ContextVar("lumos_progress_scope",
                                                                               default=None)


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the current :func:`progress_scope` was cancelled (else nothing).

    For loops of lumos that use neither :func:`chunks` nor :func:`progress_bar`.
    """
    scope = _SCOPE.get()
    if scope is not None:
        scope.token.check()


class _ScopedBar:
    """A tqdm bar whose updates also go to the current :func:`progress_scope`."""

    def __init__(self, bar, scope: progress_scope, total: int, desc: str):
        self._bar, self._scope, self._total, self._desc, self._done = bar, scope, int(total or 0), desc, 0

    def update(self, n: int = 1):
        self._done += n
        out = self._bar.update(n)
        self._scope.report(self._done, self._total, self._desc)
        return out

    def __enter__(self) -> "_ScopedBar":
        self._bar.__enter__()
        self._scope.token.check()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._bar, name)


def progress_bar(total: int, desc: str = "", progress: bool | None = None, unit: str = "it"):
    """A tqdm bar. ``progress=None`` shows it only on a terminal; ``False`` never; ``True`` always.

    Inside a :func:`progress_scope` its updates are also reported to the scope (shown or not), and
    an update after the scope's token was cancelled raises :class:`Cancelled`.
    """
    bar = _tqdm(total, desc, progress, unit)
    scope = _SCOPE.get()
    return bar if scope is None else _ScopedBar(bar, scope, total, desc)


def _tqdm(total: int, desc: str, progress: bool | None, unit: str):
    from tqdm.auto import tqdm

    if progress is None:
        disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    else:
        disable = not progress
    return tqdm(total=total, desc=desc, disable=disable, leave=False, unit=unit, dynamic_ncols=True)


def chunks(total: int, batch_size: int | None, desc: str = "", progress: bool | None = None,
           unit: str = "it") -> Iterator[slice]:
    """Yield slices covering ``range(total)`` in pieces of at most ``batch_size``.

    Shows a progress bar (see :func:`progress_bar`) when there are several chunks. Inside a
    :func:`progress_scope`, each finished chunk is reported to the scope and a cancelled scope
    stops the loop with :class:`Cancelled` before the next chunk.
    """
    bs = check_batch_size(batch_size)
    n_chunks = -(-total // bs) if total else 0
    show = progress if progress is not None else (None if n_chunks >= _MIN_CHUNKS_FOR_BAR else False)
    scope = _SCOPE.get()
    if scope is not None:
        scope.token.check()
    if show is False:  # no bar: skip building a disabled tqdm (it costs more than a small chunk)
        for start in range(0, total, bs):
            stop = min(start + bs, total)
            yield slice(start, stop)
            if scope is not None:
                scope.report(stop, total, desc)
        return
    with _tqdm(total, desc, show, unit) as bar:  # the scope is told below, not through the bar
        for start in range(0, total, bs):
            stop = min(start + bs, total)
            yield slice(start, stop)
            bar.update(stop - start)
            if scope is not None:
                scope.report(stop, total, desc)


def rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from an explicit seed (or a Generator passed through)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an int, a numpy Generator or None; got {seed!r}")
    return np.random.default_rng(seed)


def torch_generator(seed: int | None, device="cpu"):
    """A torch.Generator seeded explicitly; ``seed=None`` draws a fresh seed from the OS."""
    import torch

    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or None; got {seed!r}")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class torch_threads:
    """Run a block with torch's intra-op threads set to ``n`` (``None``: unchanged); the caller's
    setting is restored afterwards, also on error.

    The demos and the trainers of the shipped models use it: small batches on a shared machine run
    faster and steadier on one thread, and a trainer's float result depends on the thread count.

    >>> with torch_threads(1):
    ...     train(...)
    """

    def __init__(self, n: int | None):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"threads must be a positive int or None; got {n!r}")
        self.n = n

    def __enter__(self) -> "torch_threads":
        import torch

        self._before = torch.get_num_threads()
        if self.n is not None:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.set_num_threads(self._before)


class seeded_global_rng:
    """Run a block with torch's *global* CPU generator seeded with ``seed``; the caller's generator
    state is restored afterwards (``torch.random.fork_rng``), also on error.

    The one place lumos touches the global generator. It exists for code that cannot take an
    explicit generator: constructing ``nn`` modules (their default initialisation draws from the
    global generator) and Hugging Face's ``_init_weights``. The trainers of the shipped models build
    their models inside it, so a model is the same for a seed and the caller's random stream is left
    as it was. Everything else takes a ``torch.Generator`` (:func:`torch_generator`).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __enter__(self) -> "seeded_global_rng":
        import torch

        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.random.default_generator.manual_seed(self.seed)
        return self

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
