"""Shared timing for every benchmark script: interleaved, order-rotated, minimum over repeats.

Rules every ``bench_*.py`` follows (so the numbers in the docs reproduce):

* lumos and the peer run in **one process**, on the same model and inputs, **interleaved**: each
  round calls every contender once, so a load drift on a shared machine hits all of them alike;
* the **order rotates** from round to round (no contender always runs first, warm or cold);
* one warm-up round is discarded; the reported time is the **minimum** over the rounds (the least
  disturbed run), with the median beside it;
* the **machine load** (1-minute load average / cores) is printed with every table, and a warning
  when the machine is busy;
* the docs quote a ratio together with the command that reproduces it.

Usage::

    from _timing import compare, header, ratio
    t = compare({"lumos": f, "captum": g}, repeats=5)
    print(header("IG, 32 images"))
    print(t.row("lumos", against="captum"))
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Timings", "compare", "machine_load", "header", "ratio", "set_threads"]


def machine_load() -> float:
    """1-minute load average divided by the number of cores (0 = idle, 1 = every core busy)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # pragma: no cover - platforms without getloadavg
        return float("nan")


def set_threads(n: int | None) -> None:
    """Fix torch's intra-op threads (benchmarks default to 1 for stable timings)."""
    if n:
        import torch

        torch.set_num_threads(int(n))


@dataclass
class Timings:
    """Per-contender lists of wall-clock seconds, one entry per measured round."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    load_before: float = float("nan")
    load_after: float = float("nan")

    def best(self, name: str) -> float:
        return min(self.runs[name])

    def median(self, name: str) -> float:
        return statistics.median(self.runs[name])

    def ratio(self, name: str, against: str) -> float:
        """How many times faster ``name`` is than ``against`` (best against best)."""
        return self.best(against) / self.best(name)

    def row(self, name: str, against: str | None = None, width: int = 28) -> str:
        s = f"{name:<{width}} best {self.best(name) * 1e3:9.1f} ms   median {self.median(name) * 1e3:9.1f} ms"
        if against is not None and against != name:
            s += f"   {self.ratio(name, against):5.2f}x vs {against}"
        return s

    def table(self, against: str | None = None) -> str:
        width = max(len(k) for k in self.runs) + 2
        lines = [self.row(k, against, width) for k in self.runs]
        lines.append(f"(machine load {self.load_before:.2f} -> {self.load_after:.2f} per core)")
        return "\n".join(lines)


def compare(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> Timings:
    """Time every function of ``fns`` interleaved, rotating the order each round.

    Returns a :class:`Timings`; report ``best`` (the minimum over ``repeats`` rounds).
    """
    names = list(fns)
    t = Timings({k: [] for k in names}, load_before=machine_load())
    for r in range(warmup + repeats):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            start = time.perf_counter()
            fns[k]()
            if r >= warmup:
                t.runs[k].append(time.perf_counter() - start)
    t.load_after = machine_load()
    if max(t.load_before, t.load_after) > 0.75:
        print(f"warning: the machine is busy (load {max(t.load_before, t.load_after):.2f} per core); "
              "absolute times are noisy, ratios less so")
    return t


def ratio(a: float, b: float) -> str:
    """``b / a`` printed as a speed-up of ``a`` over ``b``."""
    return f"{b / a:.2f}x"


def header(title: str) -> str:
    return f"\n== {title} (load {machine_load():.2f} per core, {os.cpu_count()} cores) =="
