"""Shared execution: batching of internal samples, progress bars, explicit randomness.

Every method that evaluates a model on many internal samples (integration steps, noise draws,
masks, windows, coalitions) runs them through :func:`chunks` under a ``batch_size`` and shows a
progress bar through :func:`progress_bar` when the work is long. Randomness comes only from
:func:`rng` / :func:`torch_generator`, built from an explicit ``seed``: never the global RNG.
Results never depend on the batch size: random draws are made before batching.
"""
from __future__ import annotations

import sys
from typing import Iterator

import numpy as np

__all__ = ["chunks", "progress_bar", "rng", "torch_generator", "check_batch_size", "torch_threads",
           "seeded_global_rng", "DEFAULT_BATCH_SIZE",
           "BATCH_BYTES"]

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


def progress_bar(total: int, desc: str = "", progress: bool | None = None, unit: str = "it"):
    """A tqdm bar. ``progress=None`` shows it only on a terminal; ``False`` never; ``True`` always."""
    from tqdm.auto import tqdm

    if progress is None:
        disable = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    else:
        disable = not progress
    return tqdm(total=total, desc=desc, disable=disable, leave=False, unit=unit, dynamic_ncols=True)


def chunks(total: int, batch_size: int | None, desc: str = "", progress: bool | None = None,
           unit: str = "it") -> Iterator[slice]:
    """Yield slices covering ``range(total)`` in pieces of at most ``batch_size``.

    Shows a progress bar (see :func:`progress_bar`) when there are several chunks.
    """
    bs = check_batch_size(batch_size)
    n_chunks = -(-total // bs) if total else 0
    show = progress if progress is not None else (None if n_chunks >= _MIN_CHUNKS_FOR_BAR else False)
    if show is False:  # no bar: skip building a disabled tqdm (it costs more than a small chunk)
        for start in range(0, total, bs):
            yield slice(start, min(start + bs, total))
        return
    with progress_bar(total, desc, show, unit) as bar:
        for start in range(0, total, bs):
            stop = min(start + bs, total)
            yield slice(start, stop)
            bar.update(stop - start)


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
