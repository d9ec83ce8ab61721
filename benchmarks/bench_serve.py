"""Benchmark: ``lumos serve``'s time to first result for one image and three methods (issue 18).

Run: ``python benchmarks/bench_serve.py [--repeats 5] [--threads 1] [--no-browser]`` (CPU).

The app (:func:`lumos.serve.create_app` with the shapes demo model) runs on 127.0.0.1 on a free port in
a background thread, as ``lumos serve`` runs it. One 64x64 shapes test image (a PNG upload) is
explained with saliency, integrated gradients and Grad-CAM, each map scored with the app's metrics
(deletion, insertion, sparseness) and drawn as a PNG. Timed, interleaved and order-rotated
(``benchmarks/_timing.py``, best and median over ``repeats`` rounds after a warm-up round):

* ``app (HTTP)``: from the POST of the form (``/api/models/shapes/jobs``) to the finished job with its
  result (``GET /api/jobs/ID`` polled every 5 ms, as fast as a client can see it);
* ``browser``: in headless Chromium (Playwright, the system's Chromium), from the click on "Explain" to
  the three maps decoded in the page (the page polls every 250 ms: its own rhythm, not the app's);
* ``in-process work``: the same job's work called directly (:func:`lumos.serve.work.run_request`: explain,
  score, draw), without HTTP, queue or polling: what the app adds is the difference.

The first result after the start (the demo model loaded on first use, imports warmed) is timed once
before the rounds and printed apart: it is what a user waits for on the first click.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _timing import compare, header, set_threads  # noqa: E402

METHODS = ["saliency", "integrated_gradients", "gradcam"]


def _png() -> bytes:
    import numpy as np
    from PIL import Image

    from lumos.data import shapes_dataset

    x = shapes_dataset(1, split="test", seed=3).images[0].numpy()
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _http_run(client, url: str, png: bytes) -> dict:
    """POST the form, poll the job until it is finished; the job's JSON."""
    files = {"image": ("shape.png", png, "image/png")}
    r = client.post(f"{url}/api/models/shapes/jobs", files=files, data={"methods": METHODS, "target": "predicted"})
    if r.status_code != 202:
        raise RuntimeError(f"POST answered {r.status_code}: {r.text[:300]}")
    job_id = r.json()["job"]["id"]
    while True:
        job = client.get(f"{url}/api/jobs/{job_id}").json()["job"]
        if job["state"] in ("done", "failed", "cancelled"):
            if job["state"] != "done":
                raise RuntimeError(f"the job ended {job['state']}: {job['error']}")
            return job
        time.sleep(0.005)


class _Browser:
    """One headless Chromium page on the model's form, the image chosen once."""

    def __init__(self, url: str, png_path: str):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=shutil.which("chromium"),
                                                 args=["--no-sandbox", "--disable-gpu"])
        self.page = self._browser.new_page()
        self.page.set_default_timeout(60_000)
        self.page.goto(f"{url}/models/shapes")
        self.page.set_input_files("#image-input", png_path)
        for box in self.page.locator("#methods input[type=checkbox]").all():
            box.set_checked(box.get_attribute("value") in METHODS)

    def run(self) -> None:
        self.page.click("#run-button")
        self.page.wait_for_function(
            f"() => {{ const im = [...document.querySelectorAll('#result img.map-image')];"
            f" return im.length === {len(METHODS)} && im.every(i => i.complete && i.naturalWidth > 0); }}")

    def close(self) -> None:
        self._browser.close()
        self._pw.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings)")
    p.add_argument("--no-browser", action="store_true", help="skip the headless-Chromium timing")
    args = p.parse_args(argv)
    set_threads(args.threads)

    import httpx

    from lumos.serve import create_app, run_in_thread
    from lumos.serve.jobs import Job
    from lumos.serve.inputs import read_image
    from lumos.serve.models import demo_model
    from lumos.serve.work import Request, run_request

    png = _png()
    t0 = time.perf_counter()
    app = create_app(demo=("shapes",))
    url, stop = run_in_thread(app)
    started = time.perf_counter() - t0
    browser = None
    try:
        with httpx.Client(timeout=120) as client:
            t0 = time.perf_counter()
            first = _http_run(client, url, png)
            cold = time.perf_counter() - t0

            served = demo_model("shapes").ensure_loaded()
            x = read_image(png, "shape.png", max_pixels=4_000_000, size=served.input_size)

            def in_process():
                run_request(Job("shapes"), served, Request(x, "shape.png", list(METHODS)))

            fns = {"app (HTTP)": lambda: _http_run(client, url, png), "in-process work": in_process}
            if not args.no_browser and shutil.which("chromium"):
                tmp = tempfile.mkdtemp()
                path = os.path.join(tmp, "shape.png")
                with open(path, "wb") as f:
                    f.write(png)
                browser = _Browser(url, path)
                fns["browser"] = browser.run
            t = compare(fns, repeats=args.repeats)
            last = _http_run(client, url, png)
    finally:
        if browser is not None:
            browser.close()
        stop()

    print(header(f"lumos serve: one 64x64 image, {', '.join(METHODS)} (+ deletion, insertion, sparseness "
                 f"and a PNG per map), {args.repeats} rounds after a warm-up, {args.threads} torch thread(s)"))
    print(f"server started in {started:.2f} s")
    print(f"first result after the start (loads the demo model): {cold:.2f} s "
          f"(server-side {first['finished'] - first['created']:.2f} s)")
    print(t.table(against="in-process work"))
    print("per method, last run (explain only, s): "
          + ", ".join(f"{m['method']} {m['seconds']:.3f}" for m in last["result"]["methods"]))
    print(f"server-side, last run (created -> finished): {last['finished'] - last['created']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
