"""``lumos serve`` in a real browser (issue 18): Playwright drives the system's headless Chromium (Debian's
package, installed by ``.ci/run``; nothing downloads a browser of its own) against the app started on
127.0.0.1 on a free port in a background thread.

What a user does, checked through the page: the app loads with no console error and asks nothing but its
own origin; a demo image explained with three methods end to end (progress, maps, scores; the values the
app serves are those of a direct ``lumos.explain`` call on the uploaded pixels); an oversized upload, an
image with too many pixels and malformed CSV give a readable message in the page, a failing method says
why beside the others; ``<script>`` and
``" onerror=`` in a model, class or feature name, a CSV header, a text token or a file name render as
text (no dialog fires, no script element appears); cancel stops a running job (the worker is free for
the next one at once). Screenshots of the pages are written to ``$LUMOS_TEST_ARTEFACTS`` (or a folder
under pytest's tmp_path).

One browser and one app for the whole module (module-scoped fixtures), a fresh page per test.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from playwright import sync_api  # the test extra: a missing Playwright is an error, not a skip

pytest.importorskip("starlette")  # the serve extra
pytest.importorskip("uvicorn")

XSS = "<script>alert(1)</script>"
ATTR = '" onerror="alert(2)'
MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 1_000_000
IMAGE_METHODS = ["saliency", "integrated_gradients", "gradcam"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (apt-get install chromium)")


# ----------------------------------------------------------------------------- fixtures
def _xss_model():
    """A user table model whose own name, class names and feature names carry markup."""
    from torch import nn

    from lumos.core.execution import seeded_global_rng
    from lumos.serve.models import served

    with seeded_global_rng(0):  # the layers' initial weights
        net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    return served(net, id="xss", name=f"model {XSS}", kind="table", class_names=[XSS, ATTR],
                  feature_names=[XSS, ATTR, "plain"])


def _xss_text_model():
    """The text world's BERT with two tokens added to its vocabulary: the markup strings themselves
    (the demo vocabulary turns them into [UNK]), so that a token carrying markup reaches the page.
    Loaded on first use, as the app loads its demo models."""
    import importlib.util

    from lumos.serve.models import ServedModel

    if importlib.util.find_spec("transformers") is None:
        return None

    def load(m):
        from lumos.core.execution import seeded_global_rng
        from lumos.data import load_text_classifier

        model, tok = load_text_classifier()
        tok.add_tokens([XSS, ATTR])
        with seeded_global_rng(0):  # the new embedding rows
            model.resize_token_embeddings(len(tok))
        m.class_names, m.tokenizer, m.model = list(model.class_names), tok, model

    return ServedModel("xss-text", "text with markup tokens", "text", example="a sentence", loader=load)


@pytest.fixture(scope="module")
def app_url():
    from lumos.serve import create_app, run_in_thread

    models = [m for m in (_xss_model(), _xss_text_model()) if m is not None]
    app = create_app(models=models, demo=("shapes", "credit"),
                     max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    url, stop = run_in_thread(app)
    try:
        yield url
    finally:
        t0 = time.monotonic()
        stop()
        assert time.monotonic() - t0 < 10  # bounded shutdown


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    out = os.environ.get("LUMOS_TEST_ARTEFACTS")
    path = Path(out) if out else tmp_path_factory.mktemp("serve_screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Watch:
    """What a page did: console messages, uncaught errors, requests, dialogs."""

    def __init__(self, page, origin: str):
        self.origin = origin
        self.console, self.errors, self.requests, self.dialogs, self.failed = [], [], [], [], []
        page.on("console", lambda m: self.console.append((m.type, f"{m.text} [{m.location.get('url', '')}]")))
        page.on("response", lambda r: self.failed.append((r.status, r.url)) if r.status >= 400 else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def foreign(self) -> list[str]:
        """Requests to anything but the app's own origin (data: URIs are not requests)."""
        return [u for u in self.requests if not u.startswith("data:")
                and "{0.scheme}://{0.netloc}".format(urlsplit(u)) != self.origin]

    def check(self, allow_http_errors: bool = False) -> None:
        """No script error, no dialog, no foreign request; no console error or warning. A 4xx answer of
        the app's API that the page expects (a refused upload) logs "Failed to load resource" in
        Chromium: allowed only when asked, and only for the API's own URLs."""
        assert self.errors == [] and self.dialogs == [], (self.errors, self.dialogs)
        assert self.foreign() == [], self.foreign()
        api = f"[{self.origin}/api/"
        bad = [t for k, t in self.console if k in ("error", "warning")
               and not (allow_http_errors and "Failed to load resource" in t and "status of 4" in t and api in t)]
        assert bad == [], (bad, self.failed)


@pytest.fixture
def page(browser, app_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    pg.watch = Watch(pg, app_url)
    try:
        yield pg
    finally:
        ctx.close()


# ----------------------------------------------------------------------------- helpers
def _demo_png(tmp_path: Path, index: int = 0) -> tuple[Path, np.ndarray]:
    """A shapes test image written as a 64x64 PNG; its pixels as the app will read them."""
    from PIL import Image

    from lumos.data import shapes_dataset

    x = shapes_dataset(index + 1, split="test", seed=3).images[index].numpy()
    pixels = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
    path = tmp_path / "shape.png"
    Image.fromarray(pixels).save(path)
    return path, (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def _choose_methods(page, methods) -> None:
    for box in page.locator("#methods input[type=checkbox]").all():
        box.set_checked(box.get_attribute("value") in methods)


def _is_job_post(response) -> bool:
    return response.request.method == "POST" and response.url.endswith("/jobs")


def _start(page) -> tuple[str | None, int]:
    """Click run; the id of the job the page submitted (None when the server refused it) and the
    status of the answer."""
    with page.expect_response(_is_job_post) as info:
        page.click("#run-button")
    response = info.value
    job = response.json().get("job") if response.status == 202 else None
    return (job or {}).get("id"), response.status


def _wait(page, job_id: str, timeout: float = 30.0) -> list[tuple[str, float]]:
    """Poll the page's job panel until it shows job ``job_id`` finished: the trace [(state, value), ...]
    (the panel may still show the previous job for a moment after the POST was answered)."""
    trace, t0 = [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        shown, state, value = page.evaluate(
            "() => { const j = document.querySelector('#job');"
            " return [j.dataset.jobId || '', j.dataset.state || '',"
            " Number(document.querySelector('#progress-bar').value)]; }")
        if shown == job_id:
            trace.append((state, value))
            if state in ("done", "failed", "cancelled"):
                return trace
        page.wait_for_timeout(40)
    raise AssertionError(f"the job did not finish in {timeout} s: {trace[-5:]}")


def _run_and_wait(page, timeout: float = 30.0) -> tuple[str, list[tuple[str, float]]]:
    job_id, status = _start(page)
    assert status == 202 and job_id, status
    return job_id, _wait(page, job_id, timeout)


def _api(url: str, data: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _error_text(page) -> str:
    err = page.locator("#error")
    err.wait_for(state="visible")
    return err.inner_text()


def _scripts(page) -> list[str]:
    """Every script element of the page: its src, or its first characters when inline."""
    return page.evaluate("() => [...document.querySelectorAll('script')].map(s => s.src || s.text.slice(0, 80))")


def _only_the_apps_script(page, app_url: str) -> None:
    assert all(s == f"{app_url}/static/app.js" for s in _scripts(page)), _scripts(page)


# ----------------------------------------------------------------------------- tests
def test_the_app_loads_clean(page, app_url, artefacts):
    response = page.goto(app_url + "/")
    # the browser itself refuses anything but the app's origin (and inline images)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    ids = page.locator("#models li.model").evaluate_all("els => els.map(e => e.dataset.modelId)")
    assert {"shapes", "credit", "xss"} <= set(ids)
    kinds = dict(page.locator("#models li.model").evaluate_all(
        "els => els.map(e => [e.dataset.modelId, e.dataset.kind])"))
    assert kinds["shapes"] == "image" and kinds["credit"] == "table"
    assert page.locator("#error").is_hidden()
    # the model's name with markup is the list's text
    assert f"model {XSS}" in page.locator("#models").inner_text()
    _only_the_apps_script(page, app_url)
    page.screenshot(path=artefacts / "serve_index.png", full_page=True)
    for model_id in ("shapes", "credit"):
        page.click(f"[data-testid=open-model-{model_id}]")
        page.wait_for_selector("#run-form")
        assert page.url == f"{app_url}/models/{model_id}"
        page.go_back()
    page.watch.check()
    assert len(page.watch.requests) >= 3  # the page, its CSS and its script were asked for, all from the app


def test_a_demo_image_explained_end_to_end(page, app_url, artefacts, tmp_path):
    import torch

    import lumos
    from lumos.data import load_demo_model

    png, pixels = _demo_png(tmp_path)
    page.goto(app_url + "/models/shapes")
    assert page.locator("#model-kind").inner_text().strip() == "image"
    page.set_input_files("#image-input", str(png))
    _choose_methods(page, IMAGE_METHODS)
    job_id, trace = _run_and_wait(page)
    assert trace[-1] == ("done", 1.0), trace[-5:]
    values = [v for _, v in trace]
    assert values == sorted(values)  # the bar only moves forward
    assert page.locator("#cancel-button").is_hidden()
    page.wait_for_selector("#result figure.map")
    figures = page.locator("#result figure.map")
    assert figures.evaluate_all("els => els.map(e => e.dataset.method)") == IMAGE_METHODS
    # every map decoded (a real picture, not a broken image) and captioned with its method
    page.wait_for_function("() => [...document.querySelectorAll('#result img.map-image')].every(i => i.complete)")
    sizes = page.locator("#result img.map-image").evaluate_all(
        "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight, e.alt])")
    assert len(sizes) == len(IMAGE_METHODS), sizes
    assert all(s[0] and s[1] > 50 and s[2] > 50 and s[3].startswith(m) for s, m in zip(sizes, IMAGE_METHODS)), sizes
    captions = page.locator("#result figure.map figcaption").all_inner_texts()
    assert [c.split()[0] for c in captions] == IMAGE_METHODS
    # the prediction and a score per method and metric
    model = load_demo_model()
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(pixels)), 1)[0].double().numpy()
    pred = int(probs.argmax())
    assert model.class_names[pred] in page.locator("#prediction").inner_text()
    rows = page.locator("#metrics-table tr[data-method]")
    assert rows.evaluate_all("els => els.map(e => e.dataset.method)") == IMAGE_METHODS
    page.screenshot(path=artefacts / "serve_result.png", full_page=True)
    # what the page shows is what lumos computes on the uploaded pixels
    assert all(f"/api/jobs/{job_id}/maps/" in page.locator("#result img.map-image").nth(i).get_attribute("src")
               for i in range(len(IMAGE_METHODS)))
    result = _api(f"{app_url}/api/jobs/{job_id}")["job"]["result"]
    assert result["prediction"]["class"] == pred and abs(result["prediction"]["probability"] - probs[pred]) < 1e-5
    for entry in result["methods"]:
        assert entry["error"] is None, entry
        with urllib.request.urlopen(app_url + entry["values_url"], timeout=10) as r:
            served_values = np.load(io.BytesIO(r.read()), allow_pickle=False)
        direct = lumos.explain(model, torch.from_numpy(pixels), entry["method"], target=pred, **entry["params"])
        ref = np.asarray(direct.values)
        assert served_values.shape == ref.shape
        tol = 1e-5 * max(np.abs(ref).max(), 1e-12)
        assert np.abs(served_values - ref).max() <= tol, entry["method"]
        assert set(entry["scores"]) == {m["name"] for m in result["metrics"]}
        assert all(v is None or np.isfinite(v) for v in entry["scores"].values())
    page.watch.check()


def test_a_failing_method_is_reported_beside_the_others(page, app_url, tmp_path):
    png, _ = _demo_png(tmp_path)
    page.goto(app_url + "/models/shapes")
    page.set_input_files("#image-input", str(png))
    _choose_methods(page, ["saliency", "integrated_gradients"])
    page.locator("#params-input").evaluate("e => e.closest('details').open = true")
    page.fill("#params-input", json.dumps({"integrated_gradients": {"n_steps": 0}}))
    _, trace = _run_and_wait(page)
    assert trace[-1][0] == "done", trace[-3:]
    page.wait_for_selector("#result figure.map")
    error = page.locator('#result figure.map[data-method="integrated_gradients"] p.method-error').inner_text()
    assert "n_steps" in error and "0" in error, error
    assert page.locator('#result figure.map[data-method="saliency"] img.map-image').count() == 1
    assert page.locator('#result figure.map[data-method="saliency"] p.method-error').count() == 0
    page.watch.check()


def test_an_oversized_upload_and_too_many_pixels_are_refused_in_the_page(page, app_url, artefacts, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(MAX_UPLOAD + 1024))
    page.goto(app_url + "/models/shapes")
    page.set_input_files("#image-input", str(big))
    _choose_methods(page, ["saliency"])
    page.click("#run-button")
    text = _error_text(page)
    assert "upload too large" in text and "limit" in text, text
    assert page.locator("#result figure.map").count() == 0
    page.screenshot(path=artefacts / "serve_error_upload.png", full_page=True)
    # a small file holding a large image: refused from its header, before the pixels are decoded
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1200, 1000), (200, 30, 30)).save(wide)
    assert wide.stat().st_size < MAX_UPLOAD
    page.set_input_files("#image-input", str(wide))
    page.click("#run-button")
    page.wait_for_function("() => document.querySelector('#error').textContent.includes('image too large')")
    assert "1200 x 1000" in _error_text(page)
    page.watch.check(allow_http_errors=True)


@pytest.mark.parametrize("csv, expected", [
    ("age,income\n41", "row 2 has 1 values but the header has 2 columns"),
    ('age,"income\n1,2', "CSV"),
])
def test_malformed_csv_gets_a_readable_message(page, app_url, csv, expected):
    page.goto(app_url + "/models/credit")
    page.fill("#csv-input", csv)
    page.click("#run-button")
    text = _error_text(page)
    assert text.startswith("CSV") and expected in text, text
    assert page.locator("#result figure.map").count() == 0
    page.watch.check(allow_http_errors=True)


def test_a_malformed_csv_file_gets_a_readable_message(page, app_url, tmp_path):
    bad = tmp_path / "rows.csv"
    bad.write_text("age,income\n41,50000,7\n")
    page.goto(app_url + "/models/credit")
    page.set_input_files("#csv-file-input", str(bad))
    page.click("#run-button")
    text = _error_text(page)
    assert text.startswith("CSV") and "row 2 has 3 values but the header has 2 columns" in text, text
    page.watch.check(allow_http_errors=True)


def test_markup_in_names_and_csv_headers_renders_as_text(page, app_url, artefacts):
    # a CSV header the model does not know: the message names it, as text
    page.goto(app_url + "/models/credit")
    page.fill("#csv-input", f'"{XSS}",income\n1,2')
    page.click("#run-button")
    assert XSS in _error_text(page)
    # a model whose name, classes and features carry markup: explained, every string shown as text
    page.goto(app_url + "/models/xss")
    assert page.locator("#model-name").inner_text() == f"model {XSS}"
    options = page.locator("#target-select option").all_inner_texts()
    assert any(XSS in o for o in options) and any(ATTR in o for o in options)
    header = ",".join(f'"{h}"' if '"' not in h else '"' + h.replace('"', '""') + '"' for h in (XSS, ATTR, "plain"))
    page.fill("#csv-input", header + "\n0.5,-1,2")
    _choose_methods(page, ["saliency", "gradient_x_input"])
    _, trace = _run_and_wait(page)
    assert trace[-1][0] == "done", trace[-3:]
    page.wait_for_selector("#result figure.map")
    body = page.locator("body").inner_text()
    assert XSS in body and ATTR in body
    _only_the_apps_script(page, app_url)
    assert page.evaluate("() => [...document.querySelectorAll('*')].flatMap(e => [...e.attributes])"
                         ".filter(a => a.name.startsWith('on')).length") == 0
    page.screenshot(path=artefacts / "serve_xss.png", full_page=True)
    page.watch.check(allow_http_errors=True)  # the unknown column was a 400


def test_markup_in_a_file_name_renders_as_text(page, app_url, tmp_path):
    png, _ = _demo_png(tmp_path)
    named = tmp_path / f'"><img src=x onerror=alert(3)>.png'
    named.write_bytes(b"not a picture")
    page.goto(app_url + "/models/shapes")
    page.set_input_files("#image-input", str(named))
    page.click("#run-button")
    text = _error_text(page)
    assert "onerror=alert(3)" in text and "not an image" in text, text
    assert page.locator("#error img").count() == 0
    page.watch.check(allow_http_errors=True)


def test_markup_in_a_text_token_renders_as_text(page, app_url, artefacts):
    pytest.importorskip("transformers")
    text = f"the acting was {XSS} wonderful {ATTR}"
    page.goto(app_url + "/models/xss-text")
    page.fill("#text-input", text)
    _choose_methods(page, ["saliency", "occlusion"])
    _, trace = _run_and_wait(page, timeout=60)
    assert trace[-1][0] == "done", trace[-3:]
    page.wait_for_selector("#result div.tokens")
    assert page.locator("#input-text").inner_text() == text
    for block in page.locator("#result div.tokens").all():
        # one highlighted span per token; the markup tokens are spans whose text is the markup
        spans = block.locator("span[title]").all_inner_texts()
        assert XSS in spans and ATTR in spans, spans
    assert page.locator("#result div.tokens script, #result div.tokens img").count() == 0
    _only_the_apps_script(page, app_url)
    page.screenshot(path=artefacts / "serve_text.png", full_page=True)
    page.watch.check()


def test_cancel_stops_a_running_job(page, app_url, artefacts, tmp_path):
    png, _ = _demo_png(tmp_path)
    page.goto(app_url + "/models/shapes")
    page.set_input_files("#image-input", str(png))
    _choose_methods(page, ["integrated_gradients"])
    page.locator("#params-input").evaluate("e => e.closest('details').open = true")
    # about a minute of work on two loaded cores (16 path points per chunk, each chunk a step of the bar)
    slow = {"integrated_gradients": {"n_steps": 20_000, "integration": "riemann_middle", "batch_size": 16}}
    page.fill("#params-input", json.dumps(slow))
    job_id, status = _start(page)
    assert status == 202
    page.wait_for_function(f"() => document.querySelector('#job').dataset.jobId === '{job_id}'"
                           " && document.querySelector('#job').dataset.state === 'running'"
                           " && Number(document.querySelector('#progress-bar').value) > 0")
    before = page.evaluate("() => Number(document.querySelector('#progress-bar').value)")
    page.wait_for_function(f"() => Number(document.querySelector('#progress-bar').value) > {before}", timeout=5_000)
    moving = page.evaluate("() => Number(document.querySelector('#progress-bar').value)")
    assert 0 < before < moving < 0.5  # the bar moves while the job runs
    page.screenshot(path=artefacts / "serve_running.png", full_page=True)
    t0 = time.monotonic()
    page.click("#cancel-button")
    page.wait_for_function("() => document.querySelector('#job').dataset.state === 'cancelled'", timeout=10_000)
    assert time.monotonic() - t0 < 5
    job = _api(f"{app_url}/api/jobs/{job_id}")["job"]
    assert job["state"] == "cancelled" and job["result"] is None and job["progress"] < 1
    time.sleep(0.5)
    assert _api(f"{app_url}/api/jobs/{job_id}")["job"]["progress"] == job["progress"]  # it stopped
    assert page.locator("#result figure.map").count() == 0
    page.screenshot(path=artefacts / "serve_cancelled.png", full_page=True)
    # the worker is free at once: a small job runs now, not after the cancelled one would have ended
    _choose_methods(page, ["saliency"])
    page.fill("#params-input", "")
    t0 = time.monotonic()
    _, trace = _run_and_wait(page, timeout=20)
    assert trace[-1][0] == "done" and time.monotonic() - t0 < 10
    page.watch.check()
