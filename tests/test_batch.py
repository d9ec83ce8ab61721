"""lumos.batch: whole data sets in shards, on the in-process engine and on Ray, resumably."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

import lumos.batch as lb  # noqa: E402
from lumos.batch import task as batch_task  # noqa: E402

W = np.array([0.5, -1.0, 2.0, 0.25, 0.0, 1.5, -0.5, 0.75])
X = np.random.default_rng(0).normal(size=(23, 8))
BG = np.random.default_rng(1).normal(size=(6, 8))
KS = dict(target=None, background=BG, budget=40)  # kernel SHAP sampling 40 of the 254 coalitions


def linear_logistic(x):
    """A black box with an interaction, so that kernel SHAP's sampling matters."""
    x = np.asarray(x, dtype=np.float64)
    return 1 / (1 + np.exp(-(x @ W + x[:, 0] * x[:, 1])))


def make_model():
    return linear_logistic


def make_model4():
    """A model of a 4-column table (DataFrame or array)."""
    return lambda x: linear_logistic(np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 4))))


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir()) if p.is_file()}


def same_output(out: Path, ref: Path) -> bool:
    """Every shard file byte for byte, and the manifests equal but for what the data was (a
    generator or an array: the rows' checksums are compared, not their container)."""
    a, b = files_of(out), files_of(ref)
    ma, mb = (json.loads(x.pop("manifest.json")) for x in (a, b))
    for m in (ma, mb):
        m["data"].pop("kind"), m["data"].pop("name")
    return a == b and ma == mb


def count_shards(monkeypatch) -> list:
    """Record every shard the (in-process) engine computes."""
    calls = []
    real = batch_task.explain_rows

    def counting(model, rows, start, job):
        calls.append(start)
        return real(model, rows, start, job)

    monkeypatch.setattr(batch_task, "explain_rows", counting)
    return calls


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ks"
    res = lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **KS)
    return out, res


# ---------------------------------------------------------------------- seeds, shard sizes, reading
def test_rows_do_not_depend_on_shards_and_equal_direct_per_row_calls(reference, tmp_path):
    import lumos

    out, res = reference
    other = lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "k8", shard_size=8, **KS)
    assert len(res) == len(other) == len(X) and res.complete
    assert np.array_equal(res[:].values, other[:].values)  # bit for bit, shard size 5 vs 8
    # row 7's value is the library's call on that row alone with the row's own seed
    direct = lumos.explain(linear_logistic, X[7:8], "kernel_shap", seed=lb.row_seed(0, 7), **KS)
    assert np.array_equal(res[7].values, direct.values)
    # a sampled method: a different seed gives different values (the seed is really used)
    again = lb.explain_dataset(make_model, X[:5], "kernel_shap", tmp_path / "s1", shard_size=5, seed=1, **KS)
    assert not np.array_equal(again[:].values, res[:5].values)


def test_reading_back_rows_slices_columns_and_statistics(reference):
    import lumos

    out, res = reference
    full = np.concatenate([lumos.explain(linear_logistic, X[i:i + 1], "kernel_shap", seed=lb.row_seed(0, i),
                                         **KS).values for i in range(len(X))])
    r = lb.open(out, verify=True)
    assert r[3:17].values.shape == (14, 8) and np.array_equal(r[3:17].values, full[3:17])  # across 3 shards
    assert np.array_equal(r[-1].values, full[-1:]) and list(r[3:5].meta["rows"]) == [3, 4]
    assert np.array_equal(r.column("x2"), full[:, 2]) and np.array_equal(r.column(0), full[:, 0])
    assert np.allclose(r.mean_abs(), np.abs(full).mean(axis=0), rtol=1e-12, atol=0)
    s = r.summary()
    assert s["rows"] == 23 and s["shards"] == 5 and abs(s["mean_abs"]["x1"] - np.abs(full[:, 1]).mean()) < 1e-12
    man = json.loads((out / "manifest.json").read_text())
    assert man["status"] == "complete" and man["rows"] == 23 and man["seed"] == 0 and man["per_row"] is True
    assert [(e["start"], e["stop"]) for e in man["shards"]] == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert man["params"]["background"]["shape"] == [6, 8] and len(man["model"]["hash"]) == 64
    with pytest.raises(ValueError, match="feature"):
        r.column("nope")


# ---------------------------------------------------------------------- resuming
def rows(fail_at=None):
    """The rows of X one by one, streamed; the data source fails ("disk went away") at ``fail_at``."""
    for i, row in enumerate(X):
        if i == fail_at:
            raise OSError("disk went away")
        yield row


def test_failing_data_iterator_then_resume_recomputes_nothing_finished(reference, tmp_path, monkeypatch):
    ref_out, _ = reference

    out = tmp_path / "ks"
    with pytest.raises(OSError, match="disk went away"):
        lb.explain_dataset(make_model, rows(fail_at=12), "kernel_shap", out, shard_size=5, **KS)
    man = json.loads((out / "manifest.json").read_text())
    assert [e["index"] for e in man["shards"]] == [0, 1] and man["status"] == "running"
    calls = count_shards(monkeypatch)
    lb.explain_dataset(make_model, rows(), "kernel_shap", out, shard_size=5, **KS)
    assert calls == [10, 15, 20]  # shards 0 and 1 kept, never recomputed
    assert same_output(out, ref_out)  # every shard and the manifest


def test_model_failing_at_a_row_then_resume(reference, tmp_path, monkeypatch):
    ref_out, _ = reference
    out = tmp_path / "ks"

    def bad_model():
        def f(x):
            if np.any(np.all(np.asarray(x) == X[16], axis=1)):
                raise RuntimeError("scorer down")
            return linear_logistic(x)
        return f

    with pytest.raises(RuntimeError, match=r"shard 3 \(rows 15..19\) failed.*scorer down"):
        lb.explain_dataset(bad_model, X, "kernel_shap", out, shard_size=5, max_retries=0, **KS)
    calls = count_shards(monkeypatch)
    # the scorer is mended under the same name (the job names its factory by module:qualname)
    res = lb.explain_dataset(_renamed(make_model, bad_model), X, "kernel_shap", out, shard_size=5, **KS)
    assert calls == [15, 20] and res.complete
    for name in ("shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet", "shard-00003.parquet",
                 "shard-00004.parquet"):
        assert (out / name).read_bytes() == (ref_out / name).read_bytes()


def _renamed(factory, like):
    """``factory`` under the name of ``like`` (the model was mended; its name is unchanged)."""
    def mended():
        return factory()
    mended.__qualname__, mended.__module__ = like.__qualname__, like.__module__
    return mended


def test_corrupted_shard_detected_and_redone(reference, tmp_path, monkeypatch):
    import shutil

    ref_out, _ = reference
    out = tmp_path / "ks"
    shutil.copytree(ref_out, out)
    path = out / "shard-00002.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(lb.BatchFileError, match="shard-00002.parquet: checksum"):
        lb.open(out, verify=True)
    (out / "shard-00004.parquet").unlink()  # a shard listed but missing: redone too
    calls = count_shards(monkeypatch)
    res = lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **KS)
    assert calls == [10, 20] and res.redone == [2, 4]
    assert files_of(out) == files_of(ref_out)


def test_changed_parameters_or_method_are_refused(reference, tmp_path):
    import shutil

    ref_out, _ = reference
    out = tmp_path / "ks"
    shutil.copytree(ref_out, out)
    before = files_of(out)
    with pytest.raises(ValueError, match=r"params\.budget: 40 in the output, 30 now"):
        lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **{**KS, "budget": 30})
    with pytest.raises(ValueError, match=r"method: \"kernel_shap\" in the output, \"permutation_shap\" now"):
        lb.explain_dataset(make_model, X, "permutation_shap", out, shard_size=5, **KS)
    with pytest.raises(ValueError, match=r"params\.background: .*sha256"):
        lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **{**KS, "background": BG + 1})
    with pytest.raises(ValueError, match="shard_size: 5 in the output, 4 now"):
        lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=4, **KS)
    with pytest.raises(ValueError, match=r"data: rows 5..9 differ"):
        lb.explain_dataset(make_model, X + (np.arange(23)[:, None] == 7), "kernel_shap", out, shard_size=5, **KS)
    assert files_of(out) == before  # nothing touched


def test_killed_driver_resumes_to_the_same_bytes(reference, tmp_path, monkeypatch):
    """The driver process is SIGKILLed once the manifest shows a finished shard."""
    ref_out, _ = reference
    out = tmp_path / "ks"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        import lumos.batch as lb
        import test_batch as t

        def slow_rows():
            for i, row in enumerate(t.X):
                if i and i % 5 == 0:
                    time.sleep(0.4)  # time for the test to see a finished shard and kill us
                yield row

        lb.explain_dataset(t.make_model, slow_rows(), "kernel_shap", {str(out)!r}, shard_size=5, **t.KS)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    deadline = time.time() + 30
    try:
        while time.time() < deadline:
            man = out / "manifest.json"
            if man.exists() and json.loads(man.read_text())["shards"]:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    kept = [e["start"] for e in json.loads((out / "manifest.json").read_text())["shards"]]
    assert 1 <= len(kept) < 5
    calls = count_shards(monkeypatch)
    lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **KS)
    assert sorted(calls) == [s for s in (0, 5, 10, 15, 20) if s not in kept]
    assert same_output(out, ref_out)


# ---------------------------------------------------------------------- streaming and sources
def test_a_generator_larger_than_the_memory_bound_is_streamed(tmp_path):
    n, shard = 3000, 100
    held = {"made": 0, "done": 0, "max": 0}

    def rows():
        rng = np.random.default_rng(5)
        for _ in range(n):
            held["made"] += 1
            held["max"] = max(held["max"], held["made"] - held["done"])
            yield rng.normal(size=4)

    def counting_model():
        def f(x):
            return np.asarray(x) @ W[:4]
        return f

    real = batch_task.explain_rows

    def explain_then_release(model, r, start, job):
        e = real(model, r, start, job)
        held["done"] += len(r)
        return e

    batch_task.explain_rows = explain_then_release
    try:
        res = lb.explain_dataset(counting_model, rows(), "exact_shapley", tmp_path / "g", shard_size=shard,
                                 background=BG[:, :4])
    finally:
        batch_task.explain_rows = real
    assert len(res) == n and held["max"] <= shard  # one shard held at a time, of 30
    # exact Shapley of a linear model: w * (x - mean background), checked on the last shard
    xs = np.random.default_rng(5).normal(size=(n, 4))[-shard:]
    assert np.allclose(res[n - shard:].values, W[:4] * (xs - BG[:, :4].mean(axis=0)), atol=1e-12)


def test_tables_from_parquet_and_csv_equal_the_array(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(X[:, :4], columns=["a", "b", "c", "d"])
    frame.to_parquet(tmp_path / "x.parquet")
    frame.to_csv(tmp_path / "x.csv", index=False)
    bg = pd.DataFrame(BG[:, :4], columns=frame.columns)
    got = {}
    for name in ("x.parquet", "x.csv"):
        res = lb.explain_dataset(make_model4, tmp_path / name, "exact_shapley", tmp_path / f"o-{name}",
                                 shard_size=7, background=bg)
        got[name] = res[:]
        assert res.feature_names == ["a", "b", "c", "d"] and res.manifest["data"]["kind"] == "table"
    mem = lb.explain_dataset(make_model4, frame, "exact_shapley", tmp_path / "o-df", shard_size=7,
                             background=bg)[:]
    arr = lb.explain_dataset(make_model4, X[:, :4], "exact_shapley", tmp_path / "o-arr", shard_size=7,
                             background=BG[:, :4])[:]
    assert np.array_equal(got["x.parquet"].values, mem.values)  # streamed file = the DataFrame in memory
    assert np.allclose(got["x.csv"].values, mem.values, atol=1e-12)  # CSV text round trip of floats
    assert np.allclose(mem.values, arr.values, atol=1e-12)


def _tiny_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_image_folder_with_weights_by_path_and_mask_share(tmp_path):
    import lumos
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    torch.save(_tiny_cnn().state_dict(), tmp_path / "w.pt")
    res = lb.explain_dataset(_tiny_cnn, folder, "gradient_x_input", tmp_path / "o", shard_size=2, target=1,
                             weights=tmp_path / "w.pt")
    assert res.shards[0]["file"].endswith(".npz") and res[:].values.shape == (5, 3, 8, 8)
    from lumos.core.io import load_input

    x = torch.cat([load_input(p) for p in sorted(folder.iterdir())])
    direct = lumos.explain(_tiny_cnn().eval(), x, "gradient_x_input", target=1)
    assert np.allclose(res[:].values, direct.values, atol=1e-6)
    masks = np.zeros((5, 8, 8), dtype=bool)
    masks[:, :4] = True
    a = np.abs(direct.values).sum(axis=1)
    assert np.allclose(res.mask_share(masks), a[:, :4].sum(axis=(1, 2)) / a.sum(axis=(1, 2)), atol=1e-6)
    share = a[:, :4].sum(axis=(1, 2)) / a.sum(axis=(1, 2))
    summary = res.summary(masks=masks)
    assert abs(summary["mask_share"] - share.mean()) < 1e-6
    assert summary["images_mostly_inside"] == np.mean(share > 0.5)


def test_text_lines_are_read_lazily(tmp_path):
    from lumos.batch.sources import as_source

    (tmp_path / "t.txt").write_text("one line\n\nsecond line\nthird\n")
    src = as_source(tmp_path / "t.txt")
    assert [r for _, _, r in src.shards(2)] == [["one line", "second line"], ["third"]]


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="engine"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", engine="dask", **KS)
    with pytest.raises(ValueError, match="workers=2: the local engine"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", workers=2, **KS)
    with pytest.raises(ValueError, match="shard_size"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", shard_size=0, **KS)
    with pytest.raises(ValueError, match="target: give one target"):
        lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "a", **{**KS, "target": [0, 1]})
    with pytest.raises(TypeError, match="n_step"):
        lb.explain_dataset(make_model, X, "integrated_gradients", tmp_path / "a", n_step=3)
    with pytest.raises(FileNotFoundError, match="data"):
        lb.explain_dataset(make_model, tmp_path / "missing.npy", "kernel_shap", tmp_path / "a", **KS)
    with pytest.raises(FileNotFoundError, match="manifest"):
        lb.open(tmp_path)


def test_lumos_imports_without_ray_and_names_the_extra(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        import numpy as np
        import lumos, lumos.batch as lb
        try:
            lb.explain_dataset(lambda: (lambda x: x.sum(1)), np.zeros((2, 2)), "exact_shapley", sys.argv[1],
                               engine="ray", background=np.zeros((1, 2)))
        except ImportError as err:
            print("ERR", err)
    """)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=60)
    assert "ERR engine='ray' needs Ray: pip install 'lumos[batch]'" in out.stdout, out.stderr[-2000:]


def test_cli_explain_dataset(tmp_path, monkeypatch, capsys):
    from lumos.cli import main

    np.save(tmp_path / "x.npy", X[:, :4].astype(np.float32))
    mod = tmp_path / "mymodels.py"
    mod.write_text("import torch\n\ndef net():\n    torch.manual_seed(0)\n"
                   "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))\n")
    monkeypatch.chdir(tmp_path)
    rc = main(["explain-dataset", "--model", "mymodels:net", "--data", "x.npy", "--method", "saliency",
               "--target", "1", "--out", "o", "--shard-size", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '"rows": 23' in printed and "wrote 3 shards" in printed
    assert lb.open(tmp_path / "o")[:].values.shape == (23, 4)
    np.save(tmp_path / "bg.npy", BG[:, :4].astype(np.float32))
    assert main(["explain-dataset", "--model", "mymodels:net", "--data", "x.npy", "--method", "exact_shapley",
                 "--background", "bg.npy", "--target", "0", "--out", "o2", "--shard-size", "10"]) == 0
    import importlib

    import lumos

    net = importlib.import_module("mymodels").net().eval()
    direct = lumos.explain(net, X[:, :4].astype(np.float32), "exact_shapley", target=0,
                           background=BG[:, :4].astype(np.float32))
    assert np.allclose(lb.open(tmp_path / "o2")[:].values, direct.values, atol=1e-6)
    assert main(["explain-dataset", "--model", "mymodels:net", "--data", "x.npy", "--method", "saliency",
                 "--target", "1", "--out", "o3", "--metric", "sparseness", "--metric", "entropy"]) == 0
    scored = lb.open(tmp_path / "o3")
    assert scored.metric_names == ["entropy", "sparseness"] and scored.shards[0]["stop"] == 23  # one shard of 256
    assert '"sparseness"' in capsys.readouterr().out
    assert main(["explain-dataset", "--model", "mymodels", "--data", "x.npy"]) == 2
    assert main(["explain-dataset", "--model", "mymodels:net", "--data", "nope.npy"]) == 2
    assert "nope.npy" in capsys.readouterr().err


# ---------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    # the test module is not importable by Ray's workers: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_ray_equals_local_with_one_and_two_workers(reference, ray_session, tmp_path):
    ref_out, res = reference
    builds = tmp_path / "builds"
    builds.mkdir()

    def logged_model():  # records which process built a model
        (builds / f"{os.getpid()}-{time.monotonic_ns()}").touch()
        return linear_logistic

    one = lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "r1", engine="ray", workers=1,
                             shard_size=5, **KS)
    assert files_of(tmp_path / "r1") == files_of(ref_out)  # same shards, same bytes as in-process
    two = lb.explain_dataset(_renamed(logged_model, make_model), X, "kernel_shap", tmp_path / "r2", engine="ray",
                             workers=2, shard_size=8, **KS)
    assert np.array_equal(two[:].values, res[:].values) and np.array_equal(one[:].values, res[:].values)
    pids = [p.name.split("-")[0] for p in builds.iterdir()]
    assert len(pids) == len(set(pids)) <= 2  # the model built once per worker process, for 3 shards


def test_ray_scores_metrics_as_the_local_engine(ray_session, tmp_path):
    """Per-row metric scores (a seeded one included) are the same bytes from two Ray workers."""
    kw = dict(metrics=["sparseness", "deletion"], metric_params={"deletion": {"n_steps": 4, "fill": 0.0}}, **KS)
    local = lb.explain_dataset(make_model, X[:10], "kernel_shap", tmp_path / "l", shard_size=5, **kw)
    ray_two = lb.explain_dataset(make_model, X[:10], "kernel_shap", tmp_path / "r", engine="ray", workers=2,
                                 shard_size=5, **kw)
    assert files_of(tmp_path / "r") == files_of(tmp_path / "l")
    assert ray_two.metric_distribution("deletion").quantiles == local.metric_distribution("deletion").quantiles


class CountedFactory:
    """A model factory that notes every time it is unpickled (the job is shipped with it)."""

    def __init__(self, log):
        self.log = log

    def __call__(self):
        log = self.log

        def f(x):
            with open(log / "calls", "a") as fh:
                fh.write(f"{os.getpid()}\n")
            return linear_logistic(x)
        return f

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.log / "unpickled", "a") as fh:
            fh.write(f"{os.getpid()}\n")


def test_ray_job_is_resolved_once_per_worker_and_workers_bound_the_tasks(ray_session, tmp_path):
    """One worker means one process; the job (factory, background) is deserialised once per worker
    process, not once per shard (it was 5 times for 5 shards)."""
    log = tmp_path / "log"
    log.mkdir()
    res = lb.explain_dataset(CountedFactory(log), X, "kernel_shap", tmp_path / "o", engine="ray", workers=1,
                             shard_size=5, **KS)
    assert len(res) == 23
    assert len(set((log / "calls").read_text().split())) == 1  # every model call in one worker process
    assert len((log / "unpickled").read_text().split()) == 1


def test_ray_worker_killed_mid_task_is_retried(reference, ray_session, tmp_path):
    ref_out, _ = reference
    marker = tmp_path / "killed-once"

    def dying_model():
        def f(x):
            if np.any(np.all(np.asarray(x) == X[12], axis=1)) and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)  # the worker process dies, as a killed one would
            return linear_logistic(x)
        return f

    out = tmp_path / "r"
    lb.explain_dataset(_renamed(dying_model, make_model), X, "kernel_shap", out, engine="ray", workers=2,
                       shard_size=5, max_retries=2, **KS)
    assert marker.exists()  # a worker really died
    assert files_of(out) == files_of(ref_out)


def test_ray_workers_run_at_the_callers_priority():
    """Ray's default starts workers 15 nice levels below the driver, so on a busy machine they yield
    to every other process while the in-process engine does not (the kernel-SHAP scaling of
    docs/scale.md). The Ray that lumos starts keeps them at the driver's niceness."""
    pytest.importorskip("ray")
    code = ("import os; from lumos.batch.engines import RayEngine\n"
            "e = RayEngine({}, workers=1)\n"
            "nice = e.ray.get(e.ray.remote(num_cpus=1)(lambda: os.nice(0)).remote())\n"
            "e.close(); print('NICE', os.nice(0), nice)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         preexec_fn=lambda: os.nice(3))  # the driver started with `nice -n 3`
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("NICE")][-1]
    driver, worker = map(int, line.split()[1:])
    assert driver == min(os.nice(0) + 3, 19) and worker == driver  # Ray's default gave driver + 15


def _mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))


def test_unseeded_torch_method_across_shard_sizes(tmp_path):
    """Per shard: equal up to float rounding (one row may take another matmul kernel); per row: bit for bit."""
    x = X.astype(np.float32)
    got = {(s, p): lb.explain_dataset(_mlp, x, "gradient_x_input", tmp_path / f"{s}-{p}", shard_size=s,
                                      per_row=p, target=2)[:].values for s in (1, 7) for p in (False, True)}
    assert np.array_equal(got[1, True], got[7, True]) and np.array_equal(got[1, True], got[1, False])
    assert np.allclose(got[7, False], got[1, False], rtol=0, atol=1e-6)
    assert lb.open(tmp_path / "7-False").manifest["per_row"] is False


def test_dataloader_batches_are_recut_into_shards(tmp_path):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.from_numpy(X), torch.zeros(len(X))), batch_size=4)
    via_loader = lb.explain_dataset(make_model, loader, "kernel_shap", tmp_path / "dl", shard_size=5, **KS)
    assert via_loader.manifest["data"]["kind"] == "iterable" and len(via_loader.shards) == 5
    lb.explain_dataset(make_model, X, "kernel_shap", tmp_path / "arr", shard_size=5, **KS)
    assert same_output(tmp_path / "dl", tmp_path / "arr")


def test_text_file_with_the_shipped_text_classifier_gives_token_shards(tmp_path):
    pytest.importorskip("transformers")
    import lumos
    from lumos.data.text_models import load_text_classifier

    lines = ["the plot was dull", "a warm and clever film", "cheers"]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    res = lb.explain_dataset("lumos.data.text_models:load_text_classifier", tmp_path / "t.txt", "saliency",
                             tmp_path / "o", shard_size=2, target=1)
    assert res.shards[0]["file"].endswith(".parquet") and len(res) == 3
    model, tok = load_text_classifier()
    direct = lumos.explain(model, lines, "saliency", target=1, tokenizer=tok)
    for i in range(3):
        n = int(direct.meta["attention_mask"][i].sum())
        got = res[i]
        assert list(got.meta["tokens"][0]) == [str(t) for t in direct.meta["tokens"][i][:n]]
        assert np.allclose(got.values[0, :n], direct.values[i, :n], atol=1e-6)


def test_temporary_files_of_a_killed_writer_are_removed(reference, tmp_path):
    import shutil

    ref_out, _ = reference
    out = tmp_path / "ks"
    shutil.copytree(ref_out, out)
    (out / ".shard-00003.parquet.x1.tmp").write_bytes(b"half a shard")
    (out / ".manifest.json.x2.tmp").write_bytes(b"{")
    lb.explain_dataset(make_model, X, "kernel_shap", out, shard_size=5, **KS)
    assert files_of(out) == files_of(ref_out) and not list(out.glob(".*"))


def test_tree_shap_defaults_to_large_shards(tmp_path):
    """Tree SHAP's per-row work is as cheap as handing the row out: 16,384 rows per shard by default."""
    from sklearn.tree import DecisionTreeRegressor

    tree = DecisionTreeRegressor(max_depth=3, random_state=0).fit(X, X @ W)
    res = lb.explain_dataset(lambda: tree, X, "tree_shap", tmp_path / "t")
    assert res.manifest["shard_size"] == 16384 and len(res.shards) == 1
    assert np.allclose(res[:].values.sum(axis=1) + res[:].baseline_output, tree.predict(X), atol=1e-9)
    small = lb.explain_dataset(make_model4, X[:, :4], "exact_shapley", tmp_path / "e", background=BG[:, :4])
    assert small.manifest["shard_size"] == 256


_FAULTS_JOB = """
import resource, sys
import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
import lumos.batch as lb
from lumos.batch import task

if sys.argv[1] == "off":  # the allocator as it was before keep_freed_memory
    task._MALLOC_SET.append(False)
rng = np.random.default_rng(0)
X = rng.normal(size=(60000, 6))
gbm = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0).fit(X[:300], X[:300, 0] * X[:300, 1])
faults, explain_rows = [], task.explain_rows

def counted(*a, **k):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = explain_rows(*a, **k)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out

task.explain_rows = counted
lb.explain_dataset(lambda: gbm, X, "tree_shap", sys.argv[2], shard_size=20000, progress=False)
print("FAULTS", *faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator (mallopt)")
def test_tasks_reuse_freed_work_memory_instead_of_faulting_it_in_again(tmp_path):
    """A fresh process (a Ray worker) gave tree SHAP's freed work arrays back to the OS and faulted
    them in again for the next ones: ~20,000 page faults per 20,000-row shard, 15-40 % of the call
    (Ray's overhead over the in-process engine in docs/scale.md). The process running the tasks
    now keeps them (keep_freed_memory): a few faults per shard after the first."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator (mallopt)")
    counts = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_JOB, mode, str(tmp_path / mode)], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        counts[mode] = [int(v) for v in out.stdout.split("FAULTS")[-1].split()]
    assert len(counts["on"]) == 3
    assert min(counts["off"][1:]) > 5000  # the allocator as before: the arrays are faulted in every shard
    assert max(counts["on"][1:]) < 500, counts


def test_a_callable_factory_loads_weights_like_a_factory_string(tmp_path):
    """build_model with a callable factory goes through the loader of 'package.module:factory':
    the state dict is applied and the module comes back in eval mode; weights that do not fit are a
    LoadError naming the factory, not torch's RuntimeError."""
    import torch

    from lumos.core.io import LoadError

    def make_linear():
        return torch.nn.Linear(3, 2).train()

    state = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.tensor([1.0, -1.0])}
    good = tmp_path / "good.pt"
    torch.save(state, good)
    model = batch_task.build_model(make_linear, str(good))
    assert not model.training and torch.equal(model.weight, state["weight"])
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(4, 4), "bias": torch.zeros(4)}, bad)
    with pytest.raises(LoadError, match="make_linear"):
        batch_task.build_model(make_linear, str(bad))
