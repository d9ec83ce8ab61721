"""Benchmark: the demo reports' build time, by section (issue 18), for images, a table and texts.

Run: ``python benchmarks/bench_report.py [--repeats 3] [--worlds shapes,credit,text]`` (CPU).

For each demo world, builds its report (:data:`lumos.report.build.DEMO_WORLDS`) ``repeats`` times
after one warm-up build, in one process, and prints the fastest and the median seconds of each
section and of the whole build, with the machine load (``benchmarks/_timing.py``):

- ``shapes``: :func:`~lumos.report.build.demo_report`, the shipped DemoCNN on 4 shapes test
  images, 5 methods + the random baseline, 6 metrics;
- ``credit``: :func:`~lumos.report.build.tabular_demo_report`, a gradient-boosting classifier on 4
  credit-world applicants, exact Shapley, kernel SHAP and LIME, 4 metrics, global effects (PD +
  ICE, ALE of 3 features, permutation importance) on 100 background rows; the whole build
  includes fitting the model;
- ``text``: :func:`~lumos.report.build.text_demo_report`, the shipped 2-layer BERT on 3 text-world
  reviews, 3 methods, token deletion, attention pictures and head views; the whole build includes
  loading the model.

There is no peer: no other library builds these reports. The web app's time to first result is
``benchmarks/bench_serve.py``.
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


def bench_world(world: str, repeats: int, tmp: str) -> tuple[dict, int]:
    """Seconds per section over ``repeats`` builds after a warm-up, and the report's size."""
    from lumos.report.build import DEMO_WORLDS

    build = DEMO_WORLDS[world]
    runs: dict[str, list[float]] = {}
    path = os.path.join(tmp, f"{world}.html")
    for k in range(repeats + 1):  # the first build is a warm-up, not counted
        timings: dict = {}
        t0 = time.perf_counter()
        build(path, timings=timings)
        timings["whole build"] = time.perf_counter() - t0
        if k:
            for part, s in timings.items():
                runs.setdefault(part, []).append(s)
    return runs, os.path.getsize(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worlds", default="shapes,credit,text", help="comma list of shapes, credit, text")
    args = p.parse_args(argv)
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in worlds:
            results[w] = bench_world(w, args.repeats, tmp)
    print(header(f"demo report build by section, {args.repeats} builds after a warm-up"))
    for w, (runs, size) in results.items():
        print(f"\n{w} ({size / 1e3:.0f} kB)")
        print(f"{'section':<32}{'fastest s':>10}{'median s':>10}")
        for part, v in runs.items():
            print(f"{part:<32}{min(v):>10.2f}{statistics.median(v):>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
