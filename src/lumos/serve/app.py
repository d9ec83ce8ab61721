"""The Starlette application of ``lumos serve``: pages, the JSON API, uploads with limits.

See :mod:`lumos.serve` for the design and ``create_app`` for the parameters. Every page is a
Jinja2 template rendered with autoescaping; every user string (file names, feature and class
names, tokens, error messages) reaches the page through it or through ``textContent`` in
``static/app.js``, never as markup.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .inputs import InputError, read_csv_row, read_image, read_text
from .jobs import JobQueue, QueueFull
from .jobs import error_message as _said
from .models import DEMO_MODELS, ModelRegistry, ServedModel, demo_model, served, user_model
from .work import Request as WorkRequest
from .work import run_request

__all__ = ["build_app", "LOOPBACK_HOSTS"]

HERE = Path(__file__).resolve().parent
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]", "testserver")
FORM_SLACK = 256 * 1024        # bytes of form fields (CSV, text, methods, params) beside the file
MAX_METHODS = 32             # every method a model offers, at once

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class TooLarge(Exception):
    """The request body is over the upload limit."""


def _env():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.policies["json.dumps_kwargs"] = {"sort_keys": True}
    return env


def _host_name(netloc: str) -> str:
    """The host of a Host header or an Origin's netloc, without port or brackets (``[::1]:80`` -> ``::1``)."""
    from urllib.parse import urlsplit

    try:
        return (urlsplit("//" + netloc).hostname or "").lower()
    except ValueError:
        return ""


class _Headers:
    """ASGI middleware: security headers on every response; a Host header outside ``allowed_hosts``
    (DNS rebinding: a foreign name resolving to 127.0.0.1) and cross-origin POSTs are refused."""

    def __init__(self, app, allowed_hosts: Sequence[str] | None = None):
        self.app = app
        self.allowed = None if allowed_hosts is None or "*" in allowed_hosts else \
            {h.strip("[]").lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed is not None and _host_name(headers.get("host", "")) not in self.allowed:
            resp = JSONResponse({"error": "invalid host header"}, status_code=400)
            return await resp(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            # A browser names the page a POST comes from; "null" is a sandboxed frame, a file:// page
            # or a redirect chain, never this app's own pages (their referrer policy is
            # same-origin, so their forms send the real origin): refused like any other origin.
            # A request with no Origin at all comes from a script or a test client, not a web page.
            origin = headers.get("origin")
            if origin:
                from urllib.parse import urlsplit

                if origin == "null" or urlsplit(origin).netloc != headers.get("host", ""):
                    resp = JSONResponse({"error": "cross-origin request refused"}, status_code=403)
                    return await resp(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class State:
    """Everything the routes share: models, jobs, limits, templates."""

    def __init__(self, registry: ModelRegistry, jobs: JobQueue, *, max_upload_bytes: int, max_pixels: int,
                 allow_model_loading: bool):
        self.registry, self.jobs = registry, jobs
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.allow_model_loading = allow_model_loading
        self.env = _env()

    def index_page(self, status: int = 200, error: str | None = None) -> HTMLResponse:
        """The index (every model of the registry), with ``error`` shown in its alert."""
        return self.page("index.html.j2", status, models=[m.describe() for m in self.registry], error=error)

    def page(self, name: str, status: int = 200, **context) -> HTMLResponse:
        context.setdefault("error", None)
        context.setdefault("allow_model_loading", self.allow_model_loading)
        context["limits"] = {"upload_mb": self.max_upload_bytes / 2**20, "max_pixels": self.max_pixels}
        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status)


def _json_error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


async def _form(request: Request, limit: int):
    """The request's multipart form, read with the body capped at ``limit + FORM_SLACK`` bytes."""
    cap = limit + FORM_SLACK
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise TooLarge(f"upload too large: {_mb(int(length))} (limit {_mb(limit)})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise TooLarge(f"upload too large: more than {_mb(cap)} (limit {_mb(limit)})")
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    buffered = Request(request.scope, replay)
    return await buffered.form(max_files=2, max_fields=64, max_part_size=cap)


async def _file_bytes(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"upload too large: {upload.filename!r} is over {_mb(limit)} (limit {_mb(limit)})")
    return data


def _target(text: Any, m: ServedModel):
    if text in (None, "", "predicted"):
        return None if m.single_output else "predicted"
    if m.single_output:
        raise InputError("target: this model explains one output score; there is no class to choose")
    try:
        t = int(str(text))
    except ValueError:
        raise InputError(f"target: 'predicted' or a class index; got {str(text)!r}") from None
    n = len(m.class_names) if m.class_names else None
    if t < 0 or (n is not None and t >= n):
        raise InputError(f"target: class index {t} is out of range" + (f" (0..{n - 1})" if n else ""))
    return t


def _params(text: Any, methods: Sequence[str]) -> dict:
    if text in (None, ""):
        return {}
    try:
        params = json.loads(str(text))
    except json.JSONDecodeError as err:
        raise InputError(f"params: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise InputError('params: a JSON object of method -> parameters, e.g. {"integrated_gradients": {"n_steps": 32}}')
    unknown = [k for k in params if k not in methods]
    if unknown:
        raise InputError(f"params: {unknown} not among the chosen methods {list(methods)}")
    for method, kw in params.items():
        for k in kw:
            if k in ("background", "tokenizer", "forward_args", "progress"):
                raise InputError(f"params: {method}.{k} is set by the app")
    return params


async def _request_from_form(state: State, m: ServedModel, form) -> WorkRequest:
    """Read and check the input, methods, target and parameters of a run form."""
    offered = m.methods()
    methods = [str(x) for x in form.getlist("methods")][: MAX_METHODS + 1] or m.default_methods()
    if len(methods) > MAX_METHODS:
        raise InputError(f"methods: at most {MAX_METHODS} at a time")
    bad = [x for x in methods if x not in offered]
    if bad:
        raise InputError(f"methods: {bad} not offered for this model; choose from {offered}")
    methods = list(dict.fromkeys(methods))
    target = _target(form.get("target"), m)
    params = _params(form.get("params"), methods)
    names = None
    if m.kind == "image":
        upload = form.get("image")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise InputError("image: choose an image file to upload")
        data = await _file_bytes(upload, state.max_upload_bytes)
        name = upload.filename
        x = await run_in_threadpool(read_image, data, name, max_pixels=state.max_pixels, size=m.input_size,
                                    channels=m.channels)
    elif m.kind == "table":
        text = form.get("csv")
        upload = form.get("csv_file")
        name = "CSV row"
        if isinstance(upload, UploadFile) and upload.filename:
            raw = await _file_bytes(upload, state.max_upload_bytes)
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise InputError(f"CSV: {upload.filename!r} is not UTF-8 text") from None
            name = upload.filename
        if not isinstance(text, str):
            raise InputError("CSV: paste a header line and one row of values")
        x, names = read_csv_row(text, feature_names=m.feature_names, numeric_only=m.is_torch,
                                background=m.background)
    else:
        names = None
        text = form.get("text")
        x = [read_text(text if isinstance(text, str) else "")]
        name = x[0][:80]
    return WorkRequest(inputs=x, input_name=str(name), methods=methods, target=target, params=params,
                       feature_names=names)


def _model_or_404(state: State, model_id: str) -> ServedModel:
    return state.registry.get(model_id)


async def _loaded(m: ServedModel) -> ServedModel:
    if not m.loaded:
        await run_in_threadpool(m.ensure_loaded)
    return m


async def _submit(state: State, model_id: str, request: Request):
    """(job, None, model) or (None, (message, HTTP status), model or None)."""
    try:
        m = _model_or_404(state, model_id)
    except KeyError:
        return None, (f"no model {model_id!r}", 404), None
    try:
        await _loaded(m)
    except Exception as err:  # noqa: BLE001 - a demo model that cannot load says why
        return None, (f"model {model_id!r} could not be loaded: {err}", 500), m
    try:
        form = await _form(request, state.max_upload_bytes)
        req = await _request_from_form(state, m, form)
    except TooLarge as err:
        return None, (str(err), 413), m
    except (InputError, ValueError) as err:
        return None, (str(err), 400), m
    except Exception as err:  # noqa: BLE001 - a form that cannot be parsed
        detail = getattr(err, "detail", None) or str(err) or type(err).__name__
        return None, (f"the form could not be read: {detail}", 400), m
    try:
        job = state.jobs.submit(lambda job: run_request(job, m, req), m.id, label=", ".join(req.methods))
    except QueueFull as err:
        return None, (str(err), 429), m
    return job, None, m


async def _load_user_model(state: State, request: Request) -> ServedModel:
    """POST /models/load and /api/models: factory + weights file -> a new open model."""
    if not state.allow_model_loading:
        raise PermissionError("loading models from the page is switched off on this server "
                              "(start it with --model instead)")
    form = await _form(request, state.max_upload_bytes)
    factory = str(form.get("factory") or "").strip()
    kind = str(form.get("kind") or "auto")
    if kind not in ("auto", "image", "table", "text"):
        raise InputError(f"kind: 'auto', 'image', 'table' or 'text'; got {kind!r}")
    if ":" not in factory or len(factory) > 300:
        raise InputError(f"factory: 'package.module:factory'; got {factory!r}")
    # a folder on this machine (the page imports code of this machine too: off beyond the loopback)
    tokenizer = str(form.get("tokenizer") or "").strip()
    if len(tokenizer) > 1000:
        raise InputError("tokenizer: a folder path of at most 1000 characters")
    if tokenizer and kind != "text":
        raise InputError(f"tokenizer: a tokenizer folder goes with the inputs 'text'; got {kind!r}")
    upload = form.get("weights")
    path = None
    try:
        if isinstance(upload, UploadFile) and upload.filename:
            data = await _file_bytes(upload, state.max_upload_bytes)
            fd, path = tempfile.mkstemp(prefix="lumos-serve-", suffix=".pt")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        name = str(form.get("name") or "").strip()[:200]
        label = name or factory + (f" + {upload.filename}" if path else "")

        def load():
            m = user_model(factory, path, kind=None if kind == "auto" else kind, id="loading", name=label,
                           tokenizer=tokenizer or None)
            m.id = state.registry.next_user_id()  # only a model that loaded takes an id
            return state.registry.add(m)

        return await run_in_threadpool(load)
    finally:
        if path is not None:
            os.unlink(path)


def build_app(models: Sequence[Any] | None = None, *, demo: bool | Sequence[str] = True,
              max_upload_bytes: int = 10 * 2**20, max_pixels: int = 4_000_000, workers: int = 1,
              allow_model_loading: bool = True, max_queued: int = 16, keep_jobs: int = 64,
              job_time_limit: float | None = 600.0,
              allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> Starlette:
    """The app; see :func:`lumos.serve.create_app`."""
    from ..core.validation import check_number

    check_number(max_upload_bytes, "max_upload_bytes", low=1, integer=True)
    check_number(max_pixels, "max_pixels", low=1, integer=True)
    registry = ModelRegistry()
    if demo is True:
        names = [k for k, (_, available) in DEMO_MODELS.items() if available()]
    elif demo is False or demo is None:
        names = []
    else:
        names = [demo] if isinstance(demo, str) else list(demo)
    for name in names:
        registry.add(demo_model(name))
    for item in models or ():
        if isinstance(item, ServedModel):
            registry.add(item)
        elif isinstance(item, dict):
            spec = dict(item)
            unknown = set(spec) - {"factory", "weights", "kind", "name", "size", "tokenizer"}
            if unknown or "factory" not in spec:
                raise ValueError("models: a dict has 'factory' and optionally 'weights', 'kind', 'name', 'size', "
                                 f"'tokenizer'; got {sorted(item)}")
            mid = _slugged(spec.get("name")) or registry.next_user_id()
            registry.add(user_model(spec["factory"], spec.get("weights"), kind=spec.get("kind"), id=mid,
                                    name=spec.get("name") or spec["factory"], size=spec.get("size"),
                                    tokenizer=spec.get("tokenizer")))
        else:
            registry.add(served(item, id=registry.next_user_id(), name=type(item).__name__))
    jobs_holder: dict = {}

    def state_of(request: Request) -> State:
        return request.app.state.lumos

    # ------------------------------------------------------------------ pages
    async def index(request: Request):
        st = state_of(request)
        return st.index_page()

    async def model_page(request: Request):
        st = state_of(request)
        model_id = request.path_params["model_id"]
        try:
            m = _model_or_404(st, model_id)
        except KeyError:
            return st.index_page(404, error=f"no model {model_id!r}")
        try:
            await _loaded(m)
        except Exception as err:  # noqa: BLE001
            return st.index_page(500, error=f"model {model_id!r} could not be loaded: {err}")
        return st.page("model.html.j2", model=m.describe(), example=m.example, job=None)

    async def run_form(request: Request):
        st = state_of(request)
        job, err, m = await _submit(st, request.path_params["model_id"], request)
        if err is not None:
            message, status = err
            if m is None or status == 500:
                return st.index_page(status, error=message)
            return st.page("model.html.j2", status, model=m.describe(), example=m.example, job=None, error=message)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    async def job_page(request: Request):
        st = state_of(request)
        try:
            job = st.jobs.get(request.path_params["job_id"])
        except KeyError:
            return st.index_page(404, error="no such job")
        m = st.registry.get(job.model_id)
        return st.page("model.html.j2", model=m.describe(), example=m.example, job=job.as_json(),
                       error=job.error)

    async def job_fragment(request: Request):
        st = state_of(request)
        try:
            job = st.jobs.get(request.path_params["job_id"])
        except KeyError:
            return HTMLResponse("", status_code=404)
        return HTMLResponse(st.env.get_template("_result.html.j2").render(job=job.as_json()))

    async def cancel_form(request: Request):
        st = state_of(request)
        try:
            job = st.jobs.cancel(request.path_params["job_id"])
        except KeyError:
            return st.index_page(404, error="no such job")
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    async def load_form(request: Request):
        st = state_of(request)
        try:
            m = await _load_user_model(st, request)
        except TooLarge as err:
            return st.index_page(413, error=str(err))
        except PermissionError as err:
            return st.index_page(403, error=str(err))
        except Exception as err:  # noqa: BLE001 - import errors, LoadError, bad kinds: the user's message
            return st.index_page(400, error=_said(err))
        return RedirectResponse(f"/models/{m.id}", status_code=303)

    # ------------------------------------------------------------------ JSON API
    async def api_models(request: Request):
        st = state_of(request)
        if request.method == "GET":
            return JSONResponse({"models": [m.describe() for m in st.registry]})
        try:
            m = await _load_user_model(st, request)
        except TooLarge as err:
            return _json_error(str(err), 413)
        except PermissionError as err:
            return _json_error(str(err), 403)
        except Exception as err:  # noqa: BLE001
            return _json_error(_said(err), 400)
        return JSONResponse({"model": m.describe()}, status_code=201)

    async def api_submit(request: Request):
        st = state_of(request)
        job, err, _ = await _submit(st, request.path_params["model_id"], request)
        if err is not None:
            return _json_error(*err)
        return JSONResponse({"job": job.as_json()}, status_code=202)

    def job_or_404(request: Request, cancel: bool = False):
        """(job, None), or (None, the 404 response)."""
        jobs = state_of(request).jobs
        try:
            return (jobs.cancel if cancel else jobs.get)(request.path_params["job_id"]), None
        except KeyError:
            return None, _json_error("no such job", 404)

    async def api_job(request: Request):
        job, missing = job_or_404(request)
        return missing or JSONResponse({"job": job.as_json()})

    async def api_cancel(request: Request):
        job, missing = job_or_404(request, cancel=True)
        return missing or JSONResponse({"job": job.as_json()})

    async def api_file(request: Request):
        job, missing = job_or_404(request)
        if missing:
            return missing
        folder, name = request.path_params["folder"], request.path_params["name"]
        data = job.files.get(f"{folder}/{name}")
        if data is None:
            return _json_error("no such file", 404)
        media = "image/png" if name.endswith(".png") else "application/octet-stream"
        return Response(data, media_type=media, headers={"cache-control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.lumos = State(registry, JobQueue(workers=workers, max_queued=max_queued, keep=keep_jobs,
                                                 time_limit=job_time_limit),
                                max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                                allow_model_loading=allow_model_loading)
        jobs_holder["queue"] = app.state.lumos.jobs
        try:
            yield
        finally:
            app.state.lumos.jobs.shutdown(timeout=5.0)

    routes = [
        Route("/", index),
        Route("/models/load", load_form, methods=["POST"]),
        Route("/models/{model_id}", model_page),
        Route("/models/{model_id}/run", run_form, methods=["POST"]),
        Route("/jobs/{job_id}", job_page),
        Route("/jobs/{job_id}/fragment", job_fragment),
        Route("/jobs/{job_id}/cancel", cancel_form, methods=["POST"]),
        Route("/api/models", api_models, methods=["GET", "POST"]),
        Route("/api/models/{model_id}/jobs", api_submit, methods=["POST"]),
        Route("/api/jobs/{job_id}", api_job),
        Route("/api/jobs/{job_id}/cancel", api_cancel, methods=["POST"]),
        Route("/api/jobs/{job_id}/{folder:str}/{name:str}", api_file),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Headers, allowed_hosts=allowed_hosts)], lifespan=lifespan)
    app.state.registry = registry
    return app


def _slugged(name: Any) -> str | None:
    if not name:
        return None
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-")[:64] or None
