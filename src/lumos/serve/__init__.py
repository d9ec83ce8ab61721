"""``lumos serve``: a local web app to explain models, several at once, on one port.

Design
------
- **Stack**: Starlette + uvicorn (the ``serve`` extra), Jinja2 templates rendered on the server with
  autoescaping, one small vanilla JS file; every asset ships in the package (``templates/``,
  ``static/``): no CDN, no network. Starlette is imported only when an app is built, and a missing
  extra is an ImportError that names it.
- **Binding**: 127.0.0.1 by default. A non-loopback host is refused unless ``allow_remote`` /
  ``--allow-remote`` is given, and then a warning is printed (the app has no login). On loopback
  the Host header must be a loopback name (DNS rebinding) and cross-origin POSTs are refused.
- **Models** (:mod:`.models`): a registry of :class:`ServedModel` by id. The demo models (the shapes
  world CNN, the credit world scorer, the text world classifier when ``transformers`` is installed)
  load on first use; a user's model is ``package.module:factory`` plus a state dict read with
  ``torch.load(weights_only=True)`` (:func:`lumos.core.io.load_user_model`): nothing is unpickled.
  Each model offers the registered methods that fit its kind of input, with cheap defaults.
- **Inputs** (:mod:`.inputs`): an image (Pillow; limits on upload bytes and on pixels, checked from
  the header before decoding), a table row as CSV (a malformed one is a message naming the row and
  column), or a text. The request body itself is read with a byte cap.
- **Jobs** (:mod:`.jobs`): the work runs in a worker thread inside a
  :func:`lumos.core.execution.progress_scope` opened in that thread, so every batched lumos loop
  reports progress and a cancelled job stops at its next chunk. A failing job reports its message;
  the server keeps serving. Models are left as found (every method runs under ``ModelGuard``).
- **Results** (:mod:`.work`): per method a map (PNG with a colour bar through :mod:`lumos.display`;
  a bar chart for table rows; highlighted tokens for texts), its values (``.npy``, no pickle), and a
  few fast metric scores from :mod:`lumos.metrics`.

Use
---
>>> from lumos.serve import create_app, run_in_thread
>>> app = create_app(demo=("shapes",))
>>> url, stop = run_in_thread(app)      # 127.0.0.1 on a free port
>>> stop()

From the command line: ``lumos serve [--host H] [--port P] [--allow-remote] [--model pkg.mod:make
[--weights w.pt] [--kind image|table|text] [--tokenizer DIR] [--name NAME]]...``. Routes, JSON shapes and the element ids
of the pages are listed in ``docs/report.md`` ("lumos serve").
"""
from __future__ import annotations

from typing import Any, Sequence

from .models import ServedModel, served
from .server import check_host, is_loopback

__all__ = ["create_app", "run_in_thread", "ServedModel", "served", "check_host", "is_loopback",
           "require_serve_extra"]


def require_serve_extra() -> None:
    """ImportError naming the ``serve`` extra when Starlette, uvicorn or python-multipart is missing."""
    import importlib.util

    missing = [name for name, module in (("starlette", "starlette"), ("uvicorn", "uvicorn"),
                                         ("python-multipart", "multipart"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"lumos serve needs {', '.join(missing)}: install the 'serve' extra "
                          "(pip install 'lumos[serve]')", name=missing[0])


def create_app(models: Sequence[Any] | None = None, *, demo: bool | Sequence[str] = True,
               max_upload_bytes: int = 10 * 2**20, max_pixels: int = 4_000_000, workers: int = 1,
               allow_model_loading: bool = True, max_queued: int = 16, keep_jobs: int = 64,
               job_time_limit: float | None = 600.0, allowed_hosts: Sequence[str] | None = ("127.0.0.1", "localhost", "::1", "[::1]", "testserver")):
    """The ``lumos serve`` ASGI application (Starlette).

    Parameters
    ----------
    models : sequence, optional
        User models: a ``torch.nn.Module`` (its kind inferred from its first layer), a
        :class:`ServedModel` (see :func:`served`), or a dict ``{"factory": "pkg.mod:make",
        "weights": "w.pt", "kind": "image" | "table" | "text" | None, "name": str, "size": (H, W),
        "tokenizer": "DIR"}`` loaded as ``lumos explain`` does (``weights_only=True``; a text model
        with the Hugging Face tokenizer of the folder ``DIR``, read offline, or the one its
        factory returns as ``(model, tokenizer)``). Their ids are ``user1``, ``user2``, ... (or the
        slugified ``name``).
    demo : bool or sequence of str, default True
        The demo models: every available one (True), none (False), or these ids (``"shapes"``,
        ``"credit"``, ``"text"``).
    max_upload_bytes : int, default 10 MiB
        Largest uploaded file (the request body may hold 256 KiB of form fields beside it).
    max_pixels : int, default 4_000_000
        Largest image (width x height), checked before the pixels are decoded.
    workers : int, default 1
        Jobs that run at the same time.
    allow_model_loading : bool, default True
        Whether the index page may load a user's model (imports ``package.module``).
    max_queued, keep_jobs : int
        Jobs waiting or running at once (one more is refused with 429), finished jobs kept.
    job_time_limit : float or None, default 600
        Seconds a job may run before it stops at its next chunk and fails with a message that says
        so (a huge ``n_steps`` typed in the page cannot hold the queue forever); None: no limit.
    allowed_hosts : sequence of str or None
        Host header values accepted (loopback names by default); None or ``"*"``: any.

    Returns
    -------
    starlette.applications.Starlette
    """
    require_serve_extra()
    from .app import build_app

    return build_app(models, demo=demo, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                     workers=workers, allow_model_loading=allow_model_loading, max_queued=max_queued,
                     keep_jobs=keep_jobs, job_time_limit=job_time_limit, allowed_hosts=allowed_hosts)


def run_in_thread(app, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False,
                  timeout: float = 10.0):
    """Serve ``app`` with uvicorn in a background thread: ``(url, stop)``; see
    :func:`lumos.serve.server.run_in_thread`."""
    require_serve_extra()
    from .server import run_in_thread as _run

    return _run(app, host, port, allow_remote=allow_remote, timeout=timeout)
