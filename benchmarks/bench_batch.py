"""Whole data sets (lumos.batch): throughput of the in-process engine and of Ray with 1 and 2 workers.

Three jobs, each timed with ``_timing.compare`` (interleaved, order rotated, one warm-up round,
minimum over the rounds; machine load printed):

* kernel SHAP, credit world: the OneHotEncoder + HistGradientBoosting pipeline of the agnostic
  demo, background 25 rows, explained through its decision function (rows/s);
* tree SHAP, credit world: a 100-tree scikit-learn gradient boosting on the six numeric columns
  (rows/s);
* integrated gradients, the shipped demo CNN on 64x64 shapes-world test images (images/s).

Each round writes into a fresh folder (a repeated folder would resume and compute nothing). Ray is
started once, as the engine starts it (``lumos.batch.engines.start_ray(2)``: ``num_cpus=2``,
workers at this process's priority; its start-up printed apart); ``workers=1`` and
``workers=2`` then bound the tasks run at once. The speed-up is t(1 worker) / t(2 workers); Ray's
overhead is t(Ray, 1 worker) / t(in-process) - 1. Both need an otherwise idle machine to mean
anything: on a shared one the second worker competes with everyone else's processes.

Beside each time the script prints the CPU seconds that this process and its children (Ray's
GCS, raylet and workers) spent in the best round, and the cores that makes on average
(CPU / wall). Two workers doing the same work as one spend the same CPU seconds; if they then
get fewer than ~2 cores, the missing speed-up was taken by other processes on the machine, not
lost in lumos or Ray (that is how the kernel-SHAP 0.96x of docs/scale.md was traced). The minor
page faults of the same processes follow: a process that gives its freed work arrays back to the
OS faults them in again for the next ones (how tree SHAP's Ray overhead was traced; see
``lumos.batch.task.keep_freed_memory``).

    python benchmarks/bench_batch.py            # ~3 minutes on 2 idle cores
    python benchmarks/bench_batch.py --quick    # fewer rows, one measured round
    python benchmarks/bench_batch.py --jobs kernel_shap --repeats 5   # one job, more rounds
    python benchmarks/bench_batch.py --jobs tree_shap --tree-rows 160000 --against 3e56ebb~1
        # also Ray at 1 worker with the engine of another git revision, in the same rounds
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import time
from pathlib import Path

from _timing import compare, header, machine_load


class CpuClock:
    """CPU seconds (user + system) of this process and all its descendants (Ray's processes), and
    their minor page faults (Linux: ``/proc/<pid>/stat``; 0 elsewhere).

    Counted per process id between two readings, so a worker that lived through both counts its
    difference and a worker started in between counts whole. ``None`` without psutil.
    """

    def __init__(self):
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil comes with Ray's dependencies here
            psutil = None
        self.psutil = psutil

    def read(self) -> dict | None:
        if self.psutil is None:
            return None
        me = self.psutil.Process()
        out = {}
        for proc in [me] + me.children(recursive=True):
            try:
                t = proc.cpu_times()
                out[proc.pid] = (t.user + t.system, _minor_faults(proc.pid))
            except self.psutil.Error:  # exited meanwhile
                pass
        return out

    @staticmethod
    def spent(before: dict | None, after: dict | None) -> tuple[float, int]:
        """CPU seconds and minor page faults between two readings."""
        if before is None or after is None:
            return float("nan"), 0
        cpu = sum(t - before.get(pid, (0.0, 0))[0] for pid, (t, _) in after.items())
        faults = sum(f - before.get(pid, (0.0, 0))[1] for pid, (_, f) in after.items())
        return cpu, faults


def _minor_faults(pid: int) -> int:
    """Minor page faults of a process so far (``/proc/<pid>/stat`` field 10; 0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0


class Fitted:
    """A factory returning an already fitted estimator (pickled to the workers with the job)."""

    def __init__(self, model):
        self.model = model

    def __call__(self):
        return self.model


def _engine_at(rev: str):
    """``RayEngine`` of ``src/lumos/batch/engines.py`` at git revision ``rev`` (shipped to Ray's
    workers by value)."""
    import importlib.util
    import subprocess
    import sys

    import ray

    root = Path(__file__).resolve().parents[1]
    code = subprocess.run(["git", "show", f"{rev}:src/lumos/batch/engines.py"], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="engine-")) / "engines_at_rev.py"
    path.write_text(code.replace("from .task import", "from lumos.batch.task import"))
    spec = importlib.util.spec_from_file_location("engines_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["engines_at_rev"] = module
    spec.loader.exec_module(module)
    ray.cloudpickle.register_pickle_by_value(module)
    return module.RayEngine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kernel-rows", type=int, default=48)
    ap.add_argument("--tree-rows", type=int, default=20000)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--jobs", nargs="+", default=["kernel_shap", "tree_shap", "integrated_gradients"],
                    choices=["kernel_shap", "tree_shap", "integrated_gradients"])
    ap.add_argument("--against", default=None, metavar="REV",
                    help="add 'ray, 1 worker' with src/lumos/batch/engines.py of git revision REV (A/B under "
                         "the same load)")
    args = ap.parse_args()
    if args.quick:
        args.kernel_rows, args.tree_rows, args.images, args.repeats = 8, 4000, 8, 1

    import numpy as np
    import ray
    from sklearn.ensemble import GradientBoostingClassifier

    import lumos.batch as lb
    from lumos.batch.engines import start_ray
    from lumos.agnostic._demo import _fit_credit_model
    from lumos.data.credit import credit_dataset
    from lumos.data.shapes import shapes_dataset

    world = credit_dataset(max(args.tree_rows, args.kernel_rows) + 400, seed=0)
    X, y = world.X, world.y
    pipe = _fit_credit_model(X.iloc[:400], y[:400])
    numeric = X.select_dtypes("number")
    gbm = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(numeric.iloc[:400], y[:400])
    images = np.ascontiguousarray(shapes_dataset(args.images, split="test").images.numpy())

    jobs = {
        "kernel_shap": dict(factory=Fitted(pipe), data=X.iloc[400:400 + args.kernel_rows].reset_index(drop=True),
                            params=dict(background=X.iloc[:25], output="decision_function"),
                            shard=max(1, args.kernel_rows // 8), unit="rows"),
        "tree_shap": dict(factory=Fitted(gbm), data=numeric.iloc[400:400 + args.tree_rows].reset_index(drop=True),
                          params={}, shard=max(1, args.tree_rows // 8), unit="rows"),
        "integrated_gradients": dict(factory="lumos.data.models:load_demo_model", data=images,
                                     params=dict(target="predicted", n_steps=32), shard=max(1, args.images // 8),
                                     unit="images"),
    }
    jobs = {k: v for k, v in jobs.items() if k in args.jobs}
    other_engine = _engine_at(args.against) if args.against else None
    clock = CpuClock()
    root = Path(tempfile.mkdtemp(prefix="bench_batch-"))
    counter = itertools.count()
    t0 = time.perf_counter()
    start_ray(2)  # as engine="ray" starts it: workers at this process's priority
    print(f"ray.init(num_cpus=2): {time.perf_counter() - t0:.1f} s (once per driver, not in the times below)")
    try:
        for method, job in jobs.items():
            n = len(job["data"])

            cpu: dict[str, list[tuple[float, float, int]]] = {}  # per setting: (wall, CPU s, faults) per round

            def run(name, engine, workers=None, job=job, method=method):
                out = root / f"run{next(counter)}"
                c0, t0 = clock.read(), time.perf_counter()
                lb.explain_dataset(job["factory"], job["data"], method, out, engine=engine, workers=workers,
                                   shard_size=job["shard"], progress=False, **job["params"])
                cpu.setdefault(name, []).append((time.perf_counter() - t0, *CpuClock.spent(c0, clock.read())))
                shutil.rmtree(out)

            settings = {"in-process": lambda: run("in-process", "local"),
                        "ray, 1 worker": lambda: run("ray, 1 worker", "ray", 1),
                        "ray, 2 workers": lambda: run("ray, 2 workers", "ray", 2)}
            if other_engine is not None:
                name = f"ray, 1 worker @{args.against}"

                def run_other(name=name):
                    import lumos.batch.engines as engines

                    current, engines.RayEngine = engines.RayEngine, other_engine
                    try:
                        run(name, "ray", 1)
                    finally:
                        engines.RayEngine = current

                settings[name] = run_other
            t = compare(settings, repeats=args.repeats)
            print(header(f"{method}: {n} {job['unit']}, shards of {job['shard']}"))
            for name in t.runs:
                # the CPU of the best measured round (the warm-up round is cpu[name][0])
                wall, used, faults = min(cpu[name][1:] or cpu[name])
                print(f"{name:<{max(16, len(name))}} best {t.best(name):7.2f} s  median {t.median(name):7.2f} s  "
                      f"{n / t.best(name):9.1f} {job['unit']}/s  "
                      f"{t.best(name) / n * 1e3:9.2f} ms per {job['unit'][:-1]}  "
                      f"CPU {used:6.2f} s ({used / wall:.2f} cores)  {faults / 1e3:6.1f}k page faults")
            print(f"speed-up 1 -> 2 workers: {t.best('ray, 1 worker') / t.best('ray, 2 workers'):.2f}x;  "
                  f"Ray overhead at 1 worker: {100 * (t.best('ray, 1 worker') / t.best('in-process') - 1):+.1f}%  "
                  f"(machine load {t.load_before:.2f} -> {t.load_after:.2f} per core)")
            for name in t.runs:
                if "@" in name:
                    print(f"Ray overhead at 1 worker with the engine {name.split('@')[1]}: "
                          f"{100 * (t.best(name) / t.best('in-process') - 1):+.1f}%")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine load at the end: {machine_load():.2f} per core")


if __name__ == "__main__":
    main()
