"""Benchmark: the demo report's build time, by part (issue 18).

Run: ``python benchmarks/bench_report.py [--repeats 3] [--n 4]`` (CPU).

Builds the demo report (:func:`lumos.report.build.demo_report`: the shipped DemoCNN on ``n`` shapes
test images, 5 methods + the random baseline, 6 metrics) ``repeats`` times after one warm-up build,
and prints the fastest and the median seconds of each part (explain and score, inputs, maps, metric
table and cards, render) and of the whole build, with the machine load (``benchmarks/_timing.py``).
There is no peer: no other library builds this report. The web app's time to first result is not
measured (``lumos serve`` is not built).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _timing import header  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=4, help="demo images")
    args = p.parse_args(argv)
    from lumos.report.build import demo_report

    runs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats + 1):  # the first build is a warm-up, not counted
            timings: dict = {}
            t0 = time.perf_counter()
            path = demo_report(os.path.join(tmp, "report.html"), n=args.n, timings=timings)
            timings["whole build"] = time.perf_counter() - t0
            if k:
                for part, s in timings.items():
                    runs.setdefault(part, []).append(s)
        size = os.path.getsize(path)
    print(header(f"demo report build, {args.n} images, {args.repeats} builds after a warm-up"))
    print(f"{'part':<32}{'fastest s':>10}{'median s':>10}")
    for part, v in runs.items():
        print(f"{part:<32}{min(v):>10.2f}{statistics.median(v):>10.2f}")
    print(f"report size: {size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
