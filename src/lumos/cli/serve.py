"""``lumos serve``: the local web app (:mod:`lumos.serve`) for exploring explanations in a browser.

Binds to 127.0.0.1 by default; another address needs ``--allow-remote`` (and prints a warning).
``--model package.module:factory`` (repeatable) opens a user's model beside the demo models; the
``--weights``, ``--kind``, ``--tokenizer``, ``--name`` and ``--size`` that follow a ``--model`` belong
to it. A text model is ``--kind text --tokenizer DIR`` (a Hugging Face tokenizer folder, read
offline), or a factory that returns ``(model, tokenizer)``; it is loaded as ``lumos explain --text``
loads it (:func:`lumos.core.io.load_text_model`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ._args import positive_int

__all__ = ["add_parser", "run"]


class _ModelOption(argparse.Action):
    """``--model`` starts a new model entry; ``--weights/--kind/--tokenizer/--name/--size`` fill the latest one."""

    def __call__(self, parser, namespace, values, option_string=None):
        models = list(getattr(namespace, "models", None) or [])
        if self.dest == "factory":
            models.append({"factory": values})
        else:
            if not models:
                parser.error(f"{option_string} belongs to a --model: give --model package.module:factory first")
            if self.dest in models[-1]:
                parser.error(f"{option_string} given twice for --model {models[-1]['factory']}")
            models[-1][self.dest] = values
        namespace.models = models


def _number(what: str, zero: bool = False):
    """argparse type: a finite number > 0 (>= 0 with ``zero``) of ``what``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {what}; got {text!r}") from None
        if not (value >= 0 if zero else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number of {what} {'>= 0' if zero else '> 0'}; got {text!r}")
        return value

    return parse


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web app: explain the demo models or yours in a browser",
                       description="Serve a web app on this machine: choose a model, upload an image, a "
                                   "table row (CSV) or a text, pick methods, see the maps and metric scores. "
                                   "Binds to 127.0.0.1 unless --allow-remote is given.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (the app has no login: anyone who reaches it can use it)")
    p.add_argument("--model", dest="factory", action=_ModelOption, metavar="PKG.MOD:FACTORY",
                   help="open your model (repeatable); the options below refer to the last --model")
    p.add_argument("--weights", dest="weights", action=_ModelOption, metavar="FILE",
                   help="its state dict (read with weights_only=True)")
    p.add_argument("--kind", dest="kind", action=_ModelOption, metavar="KIND",
                   help="its inputs: image, table or text (default: inferred from its first layer; text "
                        "when the factory returns (model, tokenizer))")
    p.add_argument("--tokenizer", dest="tokenizer", action=_ModelOption, metavar="DIR",
                   help="text models (--kind text): the folder of its Hugging Face tokenizer, read offline")
    p.add_argument("--name", dest="name", action=_ModelOption, metavar="NAME", help="its name on the pages")
    p.add_argument("--size", dest="size", action=_ModelOption, type=positive_int, nargs=2, metavar=("H", "W"),
                   help="image models: resize uploads to H x W (default: as uploaded)")
    p.add_argument("--no-demo", action="store_true", help="do not offer the demo models")
    p.add_argument("--max-upload-mb", type=_number("megabytes"), default=10.0, help="largest upload in MB (default 10)")
    p.add_argument("--max-pixels", type=positive_int, default=4_000_000,
                   help="largest image in pixels, width x height (default 4000000)")
    p.add_argument("--workers", type=positive_int, default=1, help="jobs run at the same time (default 1)")
    p.add_argument("--job-time-limit", type=_number("seconds", zero=True), default=600.0, metavar="SECONDS",
                   help="a job running longer stops and fails with a message (default 600; 0: no limit)")
    p.set_defaults(func=run, models=[])


def run(args) -> int:
    from ..core.io import check_file

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535; got {args.port}")
    for spec in args.models:
        if ":" not in spec["factory"]:
            raise ValueError(f"--model must be 'package.module:factory'; got {spec['factory']!r}")
        if spec.get("weights"):
            check_file(spec["weights"], "--weights")
        if spec.get("kind") not in (None, "image", "table", "text"):
            raise ValueError(f"--kind must be 'image', 'table' or 'text'; got {spec['kind']!r}")
        if spec.get("tokenizer") is not None:
            if spec.get("kind") != "text":
                raise ValueError(f"--tokenizer goes with --kind text (--model {spec['factory']}); got --kind "
                                 f"{spec.get('kind') or '(none)'}")
            if not Path(spec["tokenizer"]).is_dir():
                raise FileNotFoundError(f"--tokenizer: no such folder: {spec['tokenizer']}")
        if spec.get("kind") == "text" and spec.get("size") is not None:
            raise ValueError("--size is for image models, not --kind text")
    from ..serve import require_serve_extra
    from ..serve.server import check_host

    check_host(args.host, args.allow_remote)  # refused before anything is loaded
    require_serve_extra()
    import matplotlib

    matplotlib.use("Agg")  # pictures are drawn in worker threads, never shown
    from ..serve import create_app
    from ..serve.server import serve_forever

    app = create_app(args.models, demo=not args.no_demo, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_pixels=args.max_pixels, workers=args.workers,
                     job_time_limit=args.job_time_limit or None,
                     # a reachable server must not import modules named by whoever reaches it
                     allow_model_loading=not args.allow_remote,
                     allowed_hosts=None if args.allow_remote else
                     ("127.0.0.1", "localhost", "::1", "[::1]"))
    try:
        serve_forever(app, args.host, args.port, allow_remote=args.allow_remote, warn=lambda message: None,
                      announce=lambda url: print(f"lumos serve: {url} (Ctrl-C to stop)", flush=True))
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then re-raises it: the normal way to stop
        pass
    print("lumos serve: stopped", flush=True)
    return 0
