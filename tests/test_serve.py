"""``lumos serve`` (issue 18) through Starlette's TestClient, and the progress/cancel scope of
``lumos.core.execution`` it runs jobs in.

What must hold: the server refuses a non-loopback address without the flag; upload limits (bytes,
pixels) hold with a readable message; malformed CSV says what is wrong; a demo image explained with
three methods gives maps, metric scores equal to the metrics called directly, and values equal to
``lumos.explain`` on the same pixels; a job that raises reports its message and the server keeps
serving; cancelling a long job stops it well before it would have finished, with the model left as
found; several models are open at once; a user's model is loaded with ``weights_only`` (a pickled
file is refused); markup in names, CSV headers, texts and file names appears as text.
"""
from __future__ import annotations

import io
import json
import pickle
import re
import sys
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from starlette.testclient import TestClient  # noqa: E402

from conftest import assert_same_state, model_state  # noqa: E402
from lumos.core.execution import CancelToken, Cancelled, chunks, progress_bar, progress_scope  # noqa: E402
from lumos.serve import check_host, create_app, run_in_thread  # noqa: E402
from lumos.serve.models import served  # noqa: E402

XSS = "<script>alert(1)</script>"
ATTR = '" onerror=alert(2) x="'
ESCAPED_XSS = "&lt;script&gt;alert(1)&lt;/script&gt;"
ESCAPED_ATTR = "&#34; onerror=alert(2) x=&#34;"
METHODS3 = ["saliency", "integrated_gradients", "gradcam"]


# ----------------------------------------------------------------------------- models
class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.classifier(self.pool(self.features(x)).flatten(1))


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        raise RuntimeError("boom: the model broke <b>here</b>")


def _tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN().eval()


def _table_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _wait(client, job_id, timeout=60.0, until=("done", "failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()["job"]
        if job["state"] in until:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


@pytest.fixture(scope="module")
def app():
    xss_table = served(_table_model(), id="xss", name=f"model {XSS}", kind="table", class_names=[XSS, ATTR],
                       feature_names=[XSS, ATTR, "plain"])
    return create_app([xss_table, served(_tiny_cnn(), id="tiny", name="tiny CNN"),
                       served(Boom(), id="boom", name="broken model", kind="table")],
                      demo=("shapes",), max_upload_bytes=64 * 1024, max_pixels=100 * 100)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def shapes_png():
    from lumos.data import shapes_dataset

    img = shapes_dataset(1, split="test", seed=7).images[0]
    arr = np.round(img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return _png(arr), arr


# ----------------------------------------------------------------------------- the scope
def test_scope_reports_every_chunk_and_cancel_stops_at_the_next():
    seen = []
    with progress_scope(lambda d, t, desc: seen.append((d, t, desc))):
        for _ in chunks(10, 3, desc="x", progress=False):
            pass
    assert seen == [(3, 10, "x"), (6, 10, "x"), (9, 10, "x"), (10, 10, "x")]

    token, ran = CancelToken(), []
    with pytest.raises(Cancelled):
        with progress_scope(None, token):
            for sl in chunks(100, 1, progress=False):
                ran.append(sl.start)
                if sl.start == 4:
                    token.cancel()
    assert ran == [0, 1, 2, 3, 4]  # stopped before chunk 5

    # progress_bar users (Shapley games, tree SHAP) report and stop too
    seen.clear()
    token = CancelToken()
    with pytest.raises(Cancelled):
        with progress_scope(lambda d, t, desc: seen.append(d), token):
            with progress_bar(5, "bar", progress=False) as bar:
                for i in range(5):
                    bar.update(1)
                    if i == 1:
                        token.cancel()
    assert seen == [1, 2, 3]  # the update after cancel() is reported, then raises


def test_scope_stays_in_its_thread_and_a_method_reports_through_it(linear_model):
    import lumos

    outside = []
    with progress_scope(lambda d, t, desc: outside.append(d)):
        th = threading.Thread(target=lambda: list(chunks(8, 2, progress=False)))
        th.start()
        th.join()
    assert outside == []  # a new thread does not inherit the scope

    seen = []
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    with progress_scope(lambda d, t, desc: seen.append((d, t))):
        lumos.explain(linear_model, x, "integrated_gradients", target=0, n_steps=8, batch_size=4)
    assert seen and seen[-1][0] == seen[-1][1] and len(seen) >= 4  # 16 rows in chunks of 4


def test_cancelled_method_leaves_the_model_as_found(linear_model):
    import lumos

    before = model_state(linear_model)
    token = CancelToken()
    calls = []

    def cb(done, total, desc):
        calls.append(done)
        if len(calls) == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        with progress_scope(cb, token):
            lumos.explain(linear_model, torch.ones(1, 6), "integrated_gradients", target=0, n_steps=64,
                          batch_size=1)
    assert len(calls) == 2
    assert_same_state(before, model_state(linear_model))


CHUNKED = {"saliency": {}, "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 4}, "deeplift": {},
           "lrp": {}, "guided_backprop": {}, "gradcam": {}, "occlusion": {"window": 4, "stride": 4},
           "rise": {"n_masks": 8}, "kernel_shap": {"budget": 16}, "lime": {"n_samples": 16}}


@pytest.mark.filterwarnings("ignore:budget=16 is below")  # kernel SHAP on 64 pixels with 16 coalitions
@pytest.mark.parametrize("method", list(CHUNKED))
def test_batched_methods_report_as_they_go_and_stop_at_the_next_chunk(method):
    """Progress arrives while the model is being called (not all at once before the work: DeepLIFT and
    the rules methods listed their chunks first), and a cancel stops the method after its first chunk."""
    import lumos

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _tiny_cnn()
    before = model_state(model)
    calls_at = []
    with progress_scope(lambda d, t, desc: calls_at.append(model.calls)):
        lumos.explain(model, x, method, target=0, batch_size=1, **CHUNKED[method])
    full = model.calls
    assert len(calls_at) >= 4 and calls_at[0] >= 1, calls_at
    assert calls_at == sorted(calls_at) and len(set(calls_at)) >= 4, calls_at
    model.calls = 0
    token = CancelToken()
    with pytest.raises(Cancelled):
        with progress_scope(lambda d, t, desc: token.cancel(), token):
            lumos.explain(model, x, method, target=0, batch_size=1, **CHUNKED[method])
    assert 1 <= model.calls <= max(2, full // 4), (model.calls, full)
    assert_same_state(before, model_state(model))


# ----------------------------------------------------------------------------- binding
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_non_loopback_host_is_refused_without_the_flag(host):
    with pytest.raises(ValueError, match="not a loopback address.*--allow-remote"):
        check_host(host)
    warned = []
    assert check_host(host, allow_remote=True, warn=warned.append) == host
    assert len(warned) == 1 and "WARNING" in warned[0] and host in warned[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_bind_without_warning(host):
    warned = []
    assert check_host(host, warn=warned.append) == host and warned == []


def test_cli_refuses_remote_host_and_run_in_thread_too(capsys):
    from lumos.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--no-demo"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    with pytest.raises(ValueError, match="loopback"):
        run_in_thread(create_app(demo=False), "0.0.0.0")


def test_run_in_thread_serves_on_a_free_port_and_stops():
    import httpx

    url, stop = run_in_thread(create_app(demo=False))
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0")
        r = httpx.get(url + "/api/models", timeout=10)
        assert r.status_code == 200 and r.json() == {"models": []}
        assert "default-src 'none'" in r.headers["content-security-policy"]
        # a foreign Host header (DNS rebinding) is refused; loopback names with any port pass
        assert httpx.get(url + "/", headers={"host": "evil.example"}, timeout=10).status_code == 400
        assert httpx.get(url + "/", headers={"host": "evil.example:8000"}, timeout=10).status_code == 400
        for host in ("localhost:1234", "[::1]:80", "127.0.0.1"):
            assert httpx.get(url + "/", headers={"host": host}, timeout=10).status_code == 200, host
    finally:
        t0 = time.monotonic()
        stop()
        assert time.monotonic() - t0 < 8
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/api/models", timeout=2)


@pytest.mark.parametrize("origin", ["http://evil.example", "null"])
def test_cross_origin_post_is_refused(client, origin):
    """A foreign page's POST is refused; so is Origin "null" (a sandboxed frame or a file:// page of
    any site can send it, and a form posted from there could load a model factory, i.e. import code),
    while the app's own pages send their real origin (referrer policy same-origin)."""
    r = client.post("/api/models/tiny/jobs", headers={"origin": origin},
                    files={"image": ("a.png", _png(np.zeros((8, 8, 3), np.uint8)), "image/png")})
    assert r.status_code == 403 and "cross-origin" in r.json()["error"]
    r = client.post("/models/load", headers={"origin": origin}, data={"factory": "nosuchmodule_xyz:make"})
    assert r.status_code == 403
    ok = client.get("/")
    assert ok.headers["referrer-policy"] == "same-origin"


# ----------------------------------------------------------------------------- limits and bad input
def test_upload_limits_bytes_and_pixels(client):
    rng = np.random.default_rng(0)
    big = _png(rng.integers(0, 256, (180, 180, 3), dtype=np.uint8))  # ~97 kB of noise > 64 kB
    assert len(big) > 64 * 1024
    r = client.post("/api/models/tiny/jobs", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "upload too large" in r.json()["error"] and "64 KB" not in r.json()["error"]
    assert "limit 0.0625 MB" in r.json()["error"]
    # small file, too many pixels (checked from the header before decoding)
    wide = _png(np.zeros((10, 1001, 3), np.uint8))
    assert len(wide) < 64 * 1024
    r = client.post("/api/models/tiny/jobs", files={"image": ("wide.png", wide, "image/png")})
    assert r.status_code == 400
    assert r.json()["error"] == "image too large: 1001 x 10 = 10010 pixels (limit 10000 pixels)"
    # at the limit: accepted
    ok = _png(np.zeros((100, 100, 3), np.uint8))
    r = client.post("/api/models/tiny/jobs", files={"image": ("ok.png", ok, "image/png")},
                    data={"methods": ["saliency"]})
    assert r.status_code == 202
    assert _wait(client, r.json()["job"]["id"])["state"] == "done"
    # the no-JS form path shows the same message in the page's error area
    r = client.post("/models/tiny/run", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413
    assert re.search(r'<div id="error"[^>]*role="alert"\s*>upload too large', r.text)
    # not an image
    r = client.post("/api/models/tiny/jobs", files={"image": ("notes.png", b"hello", "image/png")})
    assert r.status_code == 400 and "'notes.png' is not an image" in r.json()["error"]


@pytest.mark.parametrize("csv_text, message", [
    ("", "CSV: empty"),
    ("plain\n1", "CSV: missing columns"),
    (f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain\n1,2', "CSV: row 2 has 2 values but the header has 3 columns"),
    (f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain\n1,abc,3', "CSV: row 2, column '\" onerror=alert(2) x=\"': expected a number; got 'abc'"),
    (f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain\n1,2,3\n4,5,6', "one row of values under the header"),
    (f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain,extra\n1,2,3,4', "unknown column ['extra']"),
    ('a,"b\n1,2', "CSV: cannot be parsed"),
])
def test_malformed_csv_gets_a_readable_message(client, csv_text, message):
    r = client.post("/api/models/xss/jobs", data={"csv": csv_text})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    page = client.post("/models/xss/run", data={"csv": csv_text})  # the page shows it, escaped
    assert page.status_code == 400 and 'id="error"' in page.text
    assert XSS not in page.text and ATTR not in page.text


def test_csv_file_upload_is_read_like_the_text(client):
    good = f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain\n1,2,3\n'.encode("utf-8-sig")
    r = client.post("/api/models/xss/jobs", files={"csv_file": ("row.csv", good, "text/csv")},
                    data={"methods": ["saliency"]})
    job = _wait(client, r.json()["job"]["id"])
    assert job["state"] == "done" and job["result"]["input"]["name"] == "row.csv"
    assert [f["value"] for f in job["result"]["row"]] == ["1", "2", "3"]
    r = client.post("/api/models/xss/jobs", files={"csv_file": ("row.csv", b"\xff\xfe\x00bad", "text/csv")})
    assert r.status_code == 400 and r.json()["error"] == "CSV: 'row.csv' is not UTF-8 text"


def test_bad_methods_target_and_params_are_messages(client, shapes_png):
    png, _ = shapes_png
    files = {"image": ("s.png", png, "image/png")}
    r = client.post("/api/models/shapes/jobs", files=files, data={"methods": ["salincy"]})
    assert r.status_code == 400 and "methods: ['salincy'] not offered" in r.json()["error"]
    r = client.post("/api/models/shapes/jobs", files=files, data={"methods": ["saliency"], "target": "7"})
    assert r.status_code == 400 and "class index 7 is out of range (0..3)" in r.json()["error"]
    r = client.post("/api/models/shapes/jobs", files=files, data={"methods": ["saliency"], "params": "{oops"})
    assert r.status_code == 400 and r.json()["error"].startswith("params: not valid JSON")
    assert client.post("/api/models/nope/jobs", files=files).status_code == 404
    # a parameter the method does not take: the method's own message, in the result
    r = client.post("/api/models/shapes/jobs", files=files,
                    data={"methods": ["saliency", "integrated_gradients"],
                          "params": json.dumps({"integrated_gradients": {"nsteps": 4}})})
    job = _wait(client, r.json()["job"]["id"])
    assert job["state"] == "done"
    ig = job["result"]["methods"][1]
    assert ig["error"] and "did you mean 'n_steps'" in ig["error"] and ig["map_url"] is None
    assert job["result"]["methods"][0]["error"] is None


# ----------------------------------------------------------------------------- jobs
def test_demo_image_three_methods_end_to_end_equals_direct_calls(client, shapes_png):
    import lumos
    from lumos.data import load_demo_model
    from lumos.metrics.registry import evaluate
    from PIL import Image

    png, arr = shapes_png
    params = {"integrated_gradients": {"n_steps": 8}}
    r = client.post("/api/models/shapes/jobs", files={"image": ("shape.png", png, "image/png")},
                    data={"methods": METHODS3, "target": "predicted", "params": json.dumps(params)})
    assert r.status_code == 202
    job = _wait(client, r.json()["job"]["id"])
    assert job["state"] == "done" and job["progress"] == 1.0 and job["error"] is None
    res = job["result"]
    assert [m["method"] for m in res["methods"]] == METHODS3
    assert [k["name"] for k in res["metrics"]] == ["deletion", "insertion", "sparseness"]

    model = load_demo_model()
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    pred = int(model(x).argmax(1))
    assert res["prediction"]["class"] == pred and res["target"] == pred
    assert res["target_name"] == model.class_names[pred]
    for m in res["methods"]:
        assert m["error"] is None, m
        pic = client.get(m["map_url"])
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(pic.content)).size[0] > 100
        got = np.load(io.BytesIO(client.get(m["values_url"]).content), allow_pickle=False)
        kw = {"integrated_gradients": {"n_steps": 8}}.get(m["method"], {})
        want = lumos.explain(model, x, m["method"], target="predicted", **kw)
        np.testing.assert_allclose(got, want.values, rtol=0, atol=1e-6)
        for k, kkw in (("deletion", {"n_steps": 16}), ("insertion", {"n_steps": 16}), ("sparseness", {})):
            direct = float(evaluate(k, model, want, **kkw).mean)
            assert m["scores"][k] == pytest.approx(direct, abs=1e-6), (m["method"], k)
    assert res["methods"][1]["params"]["n_steps"] == 8
    # the page of the job shows the maps with the method names and the metric table
    page = client.get(f"/jobs/{job['id']}").text
    for name in METHODS3:
        assert f'data-method="{name}"' in page and f'src="/api/jobs/{job["id"]}/maps/{name}.png"' in page
    assert 'id="metrics-table"' in page and 'id="progress-bar"' in page


def test_failing_job_reports_and_the_server_keeps_serving(app, client):
    boom = app.state.registry.get("boom").model
    before = model_state(boom)
    r = client.post("/api/models/boom/jobs", data={"csv": "x0,x1,x2\n1,2,3", "methods": ["saliency", "integrated_gradients"]})
    assert r.status_code == 202
    job = _wait(client, r.json()["job"]["id"])
    assert job["state"] == "failed"
    assert job["error"].startswith("every method failed: saliency: ") and "integrated_gradients: " in job["error"]
    assert_same_state(before, model_state(boom))
    assert "boom: the model broke <b>here</b>" in job["error"] and "Traceback" not in job["error"]
    page = client.get(f"/jobs/{job['id']}").text
    assert "boom: the model broke &lt;b&gt;here&lt;/b&gt;" in page and "<b>here</b>" not in page
    # the server goes on: another model's job runs
    assert client.get("/").status_code == 200
    r = client.post("/api/models/xss/jobs", data={"csv": f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain\n1,2,3',
                                                 "methods": ["saliency"]})
    assert _wait(client, r.json()["job"]["id"])["state"] == "done"


def test_cancel_stops_a_long_job_and_leaves_the_model_as_found(app, client):
    tiny = app.state.registry.get("tiny").model
    before = model_state(tiny)
    n_steps = 200_000  # one model call per step: minutes of work
    tiny.calls = 0
    r = client.post("/api/models/tiny/jobs", files={"image": ("a.png", _png(np.full((8, 8, 3), 90, np.uint8)),
                                                              "image/png")},
                    data={"methods": ["integrated_gradients"],
                          "params": json.dumps({"integrated_gradients": {"n_steps": n_steps, "batch_size": 1,
                                                                            "integration": "riemann_middle"}})})
    job_id = r.json()["job"]["id"]
    deadline = time.monotonic() + 30
    while tiny.calls < 50:  # running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    running = client.get(f"/api/jobs/{job_id}").json()["job"]
    assert running["state"] == "running" and 0 < running["progress"] < 0.5
    assert running["stage"] == "integrated_gradients"
    page = client.get(f"/jobs/{job_id}").text  # the job's own page follows it (JS, or a refresh without)
    assert 'data-state="running"' in page and '<noscript><meta http-equiv="refresh" content="1"></noscript>' in page
    assert re.search(r'<button id="cancel-button"[^>]*type="submit">Cancel', page)  # shown (no hidden attribute)
    t0 = time.monotonic()
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    job = _wait(client, job_id, timeout=10)
    stopped_after = time.monotonic() - t0
    assert job["state"] == "cancelled" and job["result"] is None
    assert stopped_after < 2.0
    calls = tiny.calls
    time.sleep(0.2)
    assert tiny.calls == calls < n_steps / 4  # it stopped, far from the end
    assert_same_state(before, model_state(tiny))
    # the worker is free again at once
    r = client.post("/api/models/tiny/jobs", files={"image": ("a.png", _png(np.zeros((8, 8, 3), np.uint8)), "image/png")},
                    data={"methods": ["saliency"]})
    assert _wait(client, r.json()["job"]["id"], timeout=20)["state"] == "done"


@pytest.mark.parametrize("outcome", ["done", "failed", "cancelled"])
def test_a_finished_state_is_seen_with_its_time_and_result(monkeypatch, outcome):
    """A client polling a job never sees a finished state without ``finished`` (it raced: a test read
    "failed" with ``finished`` None) or "done" without the result."""
    from lumos.serve.jobs import Job, JobQueue

    seen = []
    plain = Job.__setattr__

    def record(self, name, value):
        if name == "state" and value in ("done", "failed", "cancelled"):
            seen.append((value, self.finished, self.result, self.error))
        plain(self, name, value)

    monkeypatch.setattr(Job, "__setattr__", record)
    started = threading.Event()

    def work(job):
        if outcome == "failed":
            raise ValueError("no luck")
        if outcome == "cancelled":
            started.set()
            for _ in range(500):
                job.step(0, 1, "waiting")  # raises Cancelled once the job is cancelled
                time.sleep(0.01)
        return {"answer": 42}

    queue = JobQueue(workers=1)
    try:
        job = queue.submit(work, "m")
        if outcome == "cancelled":
            assert started.wait(10)
            queue.cancel(job.id)
        assert job.done_event.wait(10)
    finally:
        queue.shutdown(timeout=5.0)
    assert [s[0] for s in seen] == [outcome]
    _, finished, result, error = seen[0]
    assert finished is not None
    assert (result == {"answer": 42}) if outcome == "done" else (result is None)
    assert (error == "no luck") if outcome == "failed" else (error is None)


def test_a_job_over_its_time_limit_stops_and_fails_with_a_message():
    tiny = _tiny_cnn()
    app = create_app([served(tiny, id="tiny", name="tiny")], demo=False, job_time_limit=0.3)
    with TestClient(app) as c:
        r = c.post("/api/models/tiny/jobs", files={"image": ("a.png", _png(np.zeros((8, 8, 3), np.uint8)), "image/png")},
                   data={"methods": ["integrated_gradients"],
                         "params": json.dumps({"integrated_gradients": {"n_steps": 200_000, "batch_size": 1,
                                                                        "integration": "riemann_middle"}})})
        job = _wait(c, r.json()["job"]["id"], timeout=20)
        assert job["state"] == "failed"
        assert job["error"].startswith("time limit reached: the job ran for more than 0.3 s and was stopped "
                                       "during integrated_gradients")
        assert job["finished"] - job["started"] < 2.0 and tiny.calls < 100_000


def test_the_pages_work_without_javascript(client):
    r = client.post("/models/tiny/run", files={"image": ("a.png", _png(np.zeros((8, 8, 3), np.uint8)), "image/png")},
                    data={"methods": ["saliency", "gradcam"]}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/jobs/")
    job_id = r.headers["location"].rsplit("/", 1)[1]
    job = _wait(client, job_id)
    page = client.get(f"/jobs/{job_id}").text
    assert job["state"] == "done" and 'data-state="done"' in page and '<noscript><meta http-equiv="refresh"' not in page
    assert 'data-method="saliency"' in page and 'data-method="gradcam"' in page
    r = client.post(f"/jobs/{job_id}/cancel", follow_redirects=False)  # a finished job stays as it is
    assert r.status_code == 303 and client.get(f"/api/jobs/{job_id}").json()["job"]["state"] == "done"
    assert client.get("/jobs/nope").status_code == 404 and client.get("/models/nope").status_code == 404


def test_every_method_offered_runs_on_its_kind_of_model():
    """The page offers only what runs: every method offered for a torch image model and a torch table
    model (with a background) gives a map and scores, in one job each."""
    g = torch.Generator().manual_seed(3)
    table = served(_table_model(), id="table", kind="table", background=torch.rand(8, 3, generator=g))
    app = create_app([served(_tiny_cnn(), id="tiny"), table], demo=False)
    image = _png(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    with TestClient(app) as c:
        models = {m["id"]: m for m in c.get("/api/models").json()["models"]}
        assert len(models["tiny"]["methods"]) >= 20 and len(models["table"]["methods"]) >= 15
        assert "occlusion" in models["table"]["methods"] and "gradcam" not in models["table"]["methods"]
        fast = {"meaningful_perturbation": {"n_iter": 20}, "feature_ablation": {}}
        jobs = []
        for mid, kw in (("tiny", {"files": {"image": ("a.png", image, "image/png")}}),
                        ("table", {"data": {"csv": "x0,x1,x2\n0.2,0.5,0.9"}})):
            methods = models[mid]["methods"]
            data = dict(kw.pop("data", {}), methods=methods,
                        params=json.dumps({m: fast[m] for m in methods if m in fast and fast[m]}))
            r = c.post(f"/api/models/{mid}/jobs", data=data, **kw)
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job"]["id"])
        for job_id in jobs:
            job = _wait(c, job_id, timeout=120)
            assert job["state"] == "done", job["error"]
            for m in job["result"]["methods"]:
                assert m["error"] is None and m["map_url"], (job["model"], m["method"], m["error"])
                for k, v in m["scores"].items():  # a number, or None with the reason (never NaN in JSON)
                    assert (v is not None and np.isfinite(v)) or m["score_errors"][k], (m["method"], k)


def test_several_models_at_once(client, shapes_png):
    models = {m["id"]: m for m in client.get("/api/models").json()["models"]}
    assert {"shapes", "tiny", "xss", "boom"} <= set(models)
    assert models["tiny"]["kind"] == "image" and models["xss"]["kind"] == "table"
    assert "gradcam" in models["tiny"]["methods"] and "gradcam" not in models["xss"]["methods"]
    png, _ = shapes_png
    a = client.post("/api/models/shapes/jobs", files={"image": ("s.png", png, "image/png")},
                    data={"methods": ["saliency"]}).json()["job"]["id"]
    b = client.post("/api/models/tiny/jobs", files={"image": ("t.png", png, "image/png")},
                    data={"methods": ["saliency"]}).json()["job"]["id"]
    ja, jb = _wait(client, a), _wait(client, b)
    assert ja["state"] == jb["state"] == "done"
    assert ja["model"] == "shapes" and jb["model"] == "tiny"
    va = np.load(io.BytesIO(client.get(ja["result"]["methods"][0]["values_url"]).content))
    vb = np.load(io.BytesIO(client.get(jb["result"]["methods"][0]["values_url"]).content))
    assert va.shape == (1, 3, 64, 64) and vb.shape == (1, 3, 64, 64)
    assert not np.allclose(va, vb)
    index = client.get("/").text
    for mid in ("shapes", "tiny", "xss", "boom"):
        assert f'data-testid="open-model-{mid}"' in index


# ----------------------------------------------------------------------------- user models
MODULE = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
'''


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the junk file below
def test_user_model_loaded_weights_only_and_pickles_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "serve_usermodel.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("serve_usermodel", None)
    import serve_usermodel

    model = serve_usermodel.make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    app = create_app(demo=False)
    with TestClient(app) as c:
        r = c.post("/api/models", data={"factory": "serve_usermodel:make", "kind": "auto"},
                   files={"weights": (f"{XSS}.pt", buf.getvalue(), "application/octet-stream")})
        assert r.status_code == 201, r.text
        m = r.json()["model"]
        assert m["id"] == "user1" and m["kind"] == "table" and m["feature_names"] == ["x0", "x1", "x2", "x3"]
        assert m["name"] == f"serve_usermodel:make + {XSS}.pt"
        index = c.get("/").text
        assert XSS not in index and f"serve_usermodel:make + {ESCAPED_XSS}.pt" in index
        loaded = app.state.registry.get("user1").model
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v)  # the uploaded weights, not the factory's
        r = c.post("/api/models/user1/jobs", data={"csv": "x0,x1,x2,x3\n1,2,3,4", "methods": ["gradient_x_input"]})
        assert _wait(c, r.json()["job"]["id"])["state"] == "done"

        evil = io.BytesIO()
        torch.save({"w": Evil()}, evil)
        r = c.post("/api/models", data={"factory": "serve_usermodel:make"},
                   files={"weights": ("evil.pt", evil.getvalue(), "application/octet-stream")})
        assert r.status_code == 400
        assert "pickled Python objects" in r.json()["error"] and "weights_only=False" not in r.json()["error"]
        r = c.post("/api/models", data={"factory": "serve_usermodel:make"},
                   files={"weights": ("junk.pt", pickle.dumps([1, 2]) + b"junk", "application/octet-stream")})
        assert r.status_code == 400 and "not a readable torch file" in r.json()["error"]
        assert "pwned" not in capsys.readouterr().out
        page = c.post("/models/load", data={"factory": "nosuchmodule_xyz:make"})
        assert page.status_code == 400 and "cannot load model" in page.text
        r = c.post("/api/models", data={"factory": "serve_usermodel:make", "name": "second one", "kind": "table"})
        assert r.status_code == 201 and r.json()["model"]["name"] == "second one"
        assert [x["id"] for x in c.get("/api/models").json()["models"]] == ["user1", "user2"]
    locked = create_app(demo=False, allow_model_loading=False)
    with TestClient(locked) as c:
        r = c.post("/api/models", data={"factory": "serve_usermodel:make"})
        assert r.status_code == 403
        assert 'id="load-model-form"' not in c.get("/").text


def test_create_app_opens_user_models_from_factory_specs(tmp_path, monkeypatch, capsys):
    (tmp_path / "serve_usermodel2.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    evil = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, evil)
    from lumos.core.io import LoadError

    with pytest.raises(LoadError, match="pickled Python objects"):
        create_app([{"factory": "serve_usermodel2:make", "weights": str(evil)}], demo=False)
    from lumos.cli import main  # the command line says the same before it serves anything

    assert main(["serve", "--no-demo", "--port", "0", "--model", "serve_usermodel2:make", "--weights", str(evil)]) == 2
    assert "pickled Python objects" in capsys.readouterr().err
    app = create_app([{"factory": "serve_usermodel2:make", "name": "my model", "kind": "table"}], demo=False)
    assert [m.id for m in app.state.registry] == ["my-model"]
    (tmp_path / "serve_cnn.py").write_text("import torch\nfrom torch import nn\n\ndef make():\n"
                                           "    torch.manual_seed(0)\n    return nn.Sequential(nn.Conv2d(1, 2, 3), "
                                           "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))\n")
    app = create_app([{"factory": "serve_cnn:make", "size": (16, 12)}], demo=False)
    with TestClient(app) as c:
        r = c.post("/api/models/user1/jobs", files={"image": ("big.png", _png(np.zeros((40, 50, 3), np.uint8)), "image/png")},
                   data={"methods": ["saliency"]})
        job = _wait(c, r.json()["job"]["id"])
        assert job["result"]["input"]["shape"] == [1, 1, 16, 12]  # grey (one input channel), resized


# ----------------------------------------------------------------------------- XSS
def test_markup_in_names_headers_and_file_names_is_text(client):
    page = client.get("/models/xss").text  # class names in the target options, feature names in the CSV
    assert XSS not in page and ATTR not in page
    assert ESCAPED_XSS in page and ESCAPED_ATTR in page
    index = client.get("/").text
    assert XSS not in index and ESCAPED_XSS in index
    csv_text = f'"{XSS}","{ATTR.replace(chr(34), chr(34) * 2)}",plain\n1,2,3'
    r = client.post("/api/models/xss/jobs", data={"csv": csv_text, "methods": ["saliency", "integrated_gradients"],
                                                 "target": "1"})
    job = _wait(client, r.json()["job"]["id"])
    assert job["state"] == "done" and job["result"]["target_name"] == ATTR
    assert [f["name"] for f in job["result"]["row"]] == [XSS, ATTR, "plain"]
    for html in (client.get(f"/jobs/{job['id']}").text, client.get(f"/jobs/{job['id']}/fragment").text):
        assert XSS not in html and ATTR not in html
        assert ESCAPED_XSS in html and ESCAPED_ATTR in html
    # a file name, in the result and in an error message
    # (httpx writes a double quote in a multipart file name as %22: a single quote tests the attribute case)
    name = f"{XSS}' onerror=alert(3) x='.png"
    r = client.post("/api/models/tiny/jobs", files={"image": (name, _png(np.zeros((8, 8, 3), np.uint8)), "image/png")},
                    data={"methods": ["saliency"]})
    job = _wait(client, r.json()["job"]["id"])
    assert job["result"]["input"]["name"] == name
    html = client.get(f"/jobs/{job['id']}/fragment").text
    assert XSS not in html and "' onerror" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#39; onerror=alert(3) x=&#39;.png" in html
    page = client.post("/models/tiny/run", files={"image": (f"{XSS}.png", b"not an image", "image/png")})
    assert page.status_code == 400 and XSS not in page.text and ESCAPED_XSS in page.text
    # the script tags of the page are only the app's own file
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/app.js" defer>']


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "fine", "film", XSS, '"', "onerror=alert(2)"]


def _word_tokenizer():
    """A word-level tokenizer (white-space split) of :data:`WORDS`, whose tokens hold markup."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _markup_text_model():
    """A tiny BERT whose word-level vocabulary holds tokens with markup (white-space split)."""
    from tiny_transformers import tiny_bert

    return served(tiny_bert(len(WORDS), num_labels=2), id="words", name=f"words {XSS}", kind="text",
                  tokenizer=_word_tokenizer(), class_names=["no", ATTR])


def test_markup_in_a_text_token_is_text():
    app = create_app([_markup_text_model()], demo=False)
    text = f'a fine film {XSS} " onerror=alert(2)'
    with TestClient(app) as c:
        r = c.post("/api/models/words/jobs", data={"text": text, "methods": ["saliency", "occlusion"]})
        job = _wait(c, r.json()["job"]["id"], timeout=60)
        assert job["state"] == "done", job["error"]
        res = job["result"]
        assert res["tokens"] == ["[CLS]", "a", "fine", "film", XSS, '"', "onerror=alert(2)", "[SEP]"]
        assert res["text"] == text
        assert all(m["tokens_html"] for m in res["methods"])
        for html in (c.get(f"/jobs/{job['id']}").text, c.get(f"/jobs/{job['id']}/fragment").text):
            assert XSS not in html and '" onerror' not in html
            assert html.count(ESCAPED_XSS) >= 3  # the input text and the token in both highlights
            assert 'class="tokens"' in html
            assert re.findall(r"<script[^>]*>", html) in ([], ['<script src="/static/app.js" defer>'])
        page = c.get("/models/words").text
        assert XSS not in page and ATTR not in page and ESCAPED_ATTR in page


# ----------------------------------------------------------------------------- user text models
TEXT_MODULE = '''
from lumos.core.io import load_tokenizer
from tiny_transformers import tiny_bert

def make():
    return tiny_bert({n}, num_labels=2)

def make_pair():
    return tiny_bert({n}, num_labels=2), load_tokenizer({folder!r})
'''


@pytest.fixture
def text_files(tmp_path, monkeypatch):
    """(module name, tokenizer folder, weights file, the model with those weights, the tokenizer):
    a user's text model as files, the way `lumos explain --text` takes it."""
    tok = _word_tokenizer()
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    (tmp_path / "serve_textmodel.py").write_text(TEXT_MODULE.format(n=len(WORDS), folder=str(folder)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("serve_textmodel", None)
    import serve_textmodel

    model = serve_textmodel.make()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5).add_(0.01)  # not the factory's weights
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    yield "serve_textmodel", folder, weights, model, tok
    sys.modules.pop("serve_textmodel", None)


def _served_app(monkeypatch, argv):
    """The app `lumos serve ARGV` would serve (serve_forever replaced; nothing listens)."""
    from lumos.cli import main

    apps = []
    monkeypatch.setattr("lumos.serve.server.serve_forever", lambda app, *a, **k: apps.append(app))
    rc = main(["serve", "--no-demo", "--port", "0"] + argv)
    return rc, (apps[0] if apps else None)


def test_cli_serves_a_text_model_with_its_tokenizer_folder_equal_to_a_direct_explain(text_files, monkeypatch,
                                                                                    capsys):
    import lumos

    mod, folder, weights, model, tok = text_files
    rc, app = _served_app(monkeypatch, ["--model", f"{mod}:make", "--weights", str(weights), "--kind", "text",
                                        "--tokenizer", str(folder), "--name", "my words"])
    assert rc == 0, capsys.readouterr().err
    m = app.state.registry.get("my-words")
    assert m.kind == "text" and m.tokenizer is not None
    for k, v in model.state_dict().items():
        assert torch.equal(m.model.state_dict()[k], v)  # the weights file, not the factory's
    text = "a fine film a film"
    methods = ["saliency", "integrated_gradients", "occlusion"]
    with TestClient(app, base_url="http://127.0.0.1") as c:  # the command line's app takes loopback hosts only
        assert c.get("/api/models").json()["models"][0]["kind"] == "text"
        r = c.post("/api/models/my-words/jobs", data={"text": text, "methods": methods, "target": "1"})
        assert r.status_code == 202, r.text
        job = _wait(c, r.json()["job"]["id"])
        assert job["state"] == "done", job["error"]
        res = job["result"]
        assert res["tokens"] == ["[CLS]", "a", "fine", "film", "a", "film", "[SEP]"] and res["target"] == 1
        from lumos.serve.models import default_params

        for entry in res["methods"]:
            assert entry["error"] is None and entry["tokens_html"]
            got = np.load(io.BytesIO(c.get(entry["values_url"]).content), allow_pickle=False)
            # the app's cheap defaults; occlusion: lumos' own text default (one token at a time)
            params = {} if entry["method"] == "occlusion" else default_params(entry["method"])
            direct = lumos.explain(model, [text], entry["method"], tokenizer=tok, target=1, **params)
            want = np.asarray(direct.values)
            assert got.shape == want.shape and np.abs(want).max() > 0
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_cli_text_model_errors_name_the_argument(text_files, monkeypatch, capsys, tmp_path):
    mod, folder, weights, model, _ = text_files
    cases = [
        (["--model", f"{mod}:make", "--tokenizer", str(folder)], "--tokenizer goes with --kind text"),
        (["--model", f"{mod}:make", "--kind", "image", "--tokenizer", str(folder)], "--tokenizer goes with --kind text"),
        (["--model", f"{mod}:make", "--kind", "text", "--tokenizer", str(tmp_path / "nowhere")],
         "--tokenizer: no such folder"),
        (["--model", f"{mod}:make", "--kind", "text"], "needs its tokenizer"),
        (["--model", f"{mod}:make", "--kind", "text", "--tokenizer", str(tmp_path)],
         "is not a readable Hugging Face tokenizer folder"),
        (["--model", f"{mod}:make", "--kind", "text", "--tokenizer", str(folder), "--size", "8", "8"],
         "--size is for image models"),
        (["--model", f"{mod}:make", "--kind", "words"], "--kind must be 'image', 'table' or 'text'"),
        (["--model", f"{mod}:make_pair", "--kind", "image"], "returns (model, tokenizer)"),
    ]
    for argv, message in cases:
        rc, app = _served_app(monkeypatch, argv)
        err = capsys.readouterr().err
        assert rc == 2 and app is None and message in err, (argv, err)
        assert "Traceback" not in err
    # a factory returning (model, tokenizer) is a text model with or without --kind text; the weights
    # go into its model
    for argv in (["--model", f"{mod}:make_pair"], ["--model", f"{mod}:make_pair", "--kind", "text",
                                                   "--weights", str(weights)]):
        rc, app = _served_app(monkeypatch, argv)
        assert rc == 0, capsys.readouterr().err
        (m,) = list(app.state.registry)
        assert m.kind == "text" and m.tokenizer.convert_tokens_to_ids(XSS) == WORDS.index(XSS)
        same = [torch.equal(m.model.state_dict()[k], v) for k, v in model.state_dict().items()]
        assert all(same) if "--weights" in argv else not any(same[:1])


def test_page_loads_a_text_model_with_a_tokenizer_folder_and_its_markup_tokens_are_text(text_files, tmp_path):
    mod, folder, weights, model, tok = text_files
    custom = tmp_path / "custom_tok"  # a tokenizer class of its own: code that must never run
    custom.mkdir()
    (custom / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["evil_tok.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}))
    (custom / "evil_tok.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').close()\n"
                                        "from transformers import PreTrainedTokenizer\n"
                                        "class EvilTokenizer(PreTrainedTokenizer):\n    pass\n")
    app = create_app(demo=False)
    with TestClient(app) as c:
        index = c.get("/").text
        assert 'id="tokenizer-input"' in index and 'name="tokenizer"' in index and '<option value="text">' in index
        # errors: in the page (form path) and as JSON
        for data, message, status in (
                ({"factory": f"{mod}:make", "kind": "text"}, "needs its tokenizer", 400),
                ({"factory": f"{mod}:make", "kind": "image", "tokenizer": str(folder)},
                 "tokenizer: a tokenizer folder goes with the inputs &#39;text&#39;", 400),
                ({"factory": f"{mod}:make", "kind": "text", "tokenizer": str(tmp_path / "nowhere")},
                 "tokenizer: no such folder", 400),
                ({"factory": f"{mod}:make", "kind": "text", "tokenizer": str(tmp_path)},
                 "is not a readable Hugging Face tokenizer folder", 400),
                ({"factory": f"{mod}:make", "kind": "text", "tokenizer": str(custom)},
                 "never runs code from a tokenizer folder", 400)):
            page = c.post("/models/load", data=data)
            assert page.status_code == status and message in page.text, (data, page.text[-2000:])
            assert message in re.search(r'<div id="error"[^>]*>([^<]*)</div>', page.text).group(1), data
            r = c.post("/api/models", data=data)
            assert r.status_code == status and message.replace("&#39;", "'") in r.json()["error"]
        assert c.get("/api/models").json()["models"] == []  # nothing half-loaded
        assert not (tmp_path / "PWNED").exists()
        # the JSON path: kind text + a tokenizer folder (and the uploaded weights)
        r = c.post("/api/models", data={"factory": f"{mod}:make", "kind": "text", "tokenizer": str(folder)},
                   files={"weights": ("w.pt", weights.read_bytes(), "application/octet-stream")})
        assert r.status_code == 201, r.text
        m = r.json()["model"]
        assert m["id"] == "user1" and m["kind"] == "text" and "saliency" in m["methods"]
        text = f'a fine film {XSS} " onerror=alert(2)'
        r = c.post("/api/models/user1/jobs", data={"text": text, "methods": ["saliency"], "target": "0"})
        job = _wait(c, r.json()["job"]["id"])
        assert job["state"] == "done", job["error"]
        assert job["result"]["tokens"] == ["[CLS]", "a", "fine", "film", XSS, '"', "onerror=alert(2)", "[SEP]"]
        import lumos

        got = np.load(io.BytesIO(c.get(job["result"]["methods"][0]["values_url"]).content), allow_pickle=False)
        np.testing.assert_allclose(got, lumos.explain(model, [text], "saliency", tokenizer=tok, target=0).values,
                                   rtol=1e-5, atol=1e-7)
        for html in (c.get(f"/jobs/{job['id']}").text, c.get(f"/jobs/{job['id']}/fragment").text):
            assert XSS not in html and '" onerror' not in html and html.count(ESCAPED_XSS) >= 2
            assert re.findall(r"<script[^>]*>", html) in ([], ['<script src="/static/app.js" defer>'])
        # the page form: a factory returning (model, tokenizer) needs no folder
        page = c.post("/models/load", data={"factory": f"{mod}:make_pair", "kind": "auto"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/models/user2"
        assert app.state.registry.get("user2").kind == "text"


def test_static_assets_and_templates_ship_in_the_package():
    from importlib.resources import files

    root = files("lumos.serve")
    for name in ("templates/base.html.j2", "templates/index.html.j2", "templates/model.html.j2",
                 "templates/_result.html.j2", "static/app.js", "static/app.css"):
        text = (root / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name


def test_lumos_serve_command_serves_a_user_model_and_stops_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess

    import httpx

    (tmp_path / "serve_cli_model.py").write_text(MODULE)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LUMOS_TEST_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lumos", "serve", "--no-demo", "--port", "0",
                             "--model", "serve_cli_model:make", "--name", "cli model", "--max-upload-mb", "0.5"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"lumos serve: (http://127\.0\.0\.1:\d+) \(Ctrl-C to stop\)\n", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = m.group(1)
        for _ in range(100):
            try:
                models = httpx.get(url + "/api/models", timeout=5).json()["models"]
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert [(x["id"], x["name"], x["kind"]) for x in models] == [("cli-model", "cli model", "table")]
        page = httpx.get(url + "/", timeout=5).text
        assert "Upload limit 0.5 MB" in page
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert rc == 0
