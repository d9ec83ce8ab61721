"""``lumos report``: one self-contained HTML report (inputs and predictions, the maps of several
methods side by side, the metric table with its ranking, a card per method, a reproducibility
block). Without ``--model``: the demo world's report on the shipped DemoCNN; with ``--model
package.module:factory --weights W --input FILE`` (as ``lumos explain``): the user's model. The work
is :func:`lumos.report.build.build`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._args import add_model_args, check_model_files, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML report comparing methods")
    add_model_args(p)
    p.add_argument("--input", help="image file or tensor (default: the demo world)")
    p.add_argument("--methods", default=None, help="comma list of methods (default: a standard set)")
    p.add_argument("--metrics", default=None, help="comma list of metrics (default: a standard set)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="inputs from the demo world (default: 4 images, 4 applicants, 3 texts)")
    p.add_argument("--world", choices=("shapes", "credit", "text"), default="shapes",
                   help="the demo report without --model: shapes (images, DemoCNN), credit (a table, "
                        "gradient boosting, with global effects) or text (the text-world BERT, token "
                        "highlights and attention)")
    p.add_argument("--target", default=None, help="class index, comma list, or 'predicted'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lumos-out/report", help="folder of report.html")
    p.add_argument("--batch", default=None, metavar="DIR",
                   help="the page of an explain-dataset output folder instead (written to --out: a .html "
                        "file, or a folder's batch.html; lumos.report.batch)")
    p.add_argument("--masks", default=None, help="with --batch: a .npy of one boolean region per image")
    p.set_defaults(func=run)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run(args: argparse.Namespace) -> int:
    import time

    from ..core.io import parse_target

    if args.batch is not None or args.masks is not None:
        return _run_batch(args)

    check_model_files(args, need_model=False)
    if (args.model or args.torchscript) and not args.input:
        raise ValueError("--input is required with --model")
    if (args.model or args.torchscript) and args.world != "shapes":
        raise ValueError("--world chooses a demo report; it does not go with --model")
    if args.input and not (args.model or args.torchscript):
        raise ValueError("--input goes with --model package.module:factory (or --torchscript FILE)")
    target = parse_target(args.target) if args.target else "predicted"
    out = Path(args.out) / "report.html"
    t0 = time.perf_counter()
    timings: dict = {}
    if args.model or args.torchscript:
        from ..core.io import load_input, load_user_model
        from ..report.build import build

        model = load_user_model(args.model, args.weights, args.torchscript)
        x = load_input(args.input, args.size, name="--input")
        path = build(model, x, _split(args.methods), _split(args.metrics), target=target, out=out,
                     seed=args.seed, title=f"lumos report: {args.model or args.torchscript} on {args.input}",
                     log=print, timings=timings)
    else:
        if args.methods or args.metrics or args.size or args.weights:
            raise ValueError("--methods/--metrics/--weights/--size go with --model; the demo report "
                             "has its own set")
        from ..report.build import DEMO_WORLDS

        kw = {} if args.n is None else {"n": args.n}
        path = DEMO_WORLDS[args.world](out, seed=args.seed, log=print, timings=timings, **kw)
    for k, v in timings.items():
        print(f"  {k:<30}{v:7.2f} s")
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    if args.batch is None:
        raise ValueError("--masks goes with --batch DIR")
    if args.model or args.torchscript or args.input or args.methods or args.metrics:
        raise ValueError("--batch reports an explain-dataset output folder; --model/--input/--methods/--metrics "
                         "do not go with it")
    import numpy as np

    from ..core.io import check_file
    from ..report.batch import build_batch

    masks = np.load(check_file(args.masks, "--masks"), mmap_mode="r", allow_pickle=False) if args.masks else None
    out = Path(args.out)
    path = build_batch(args.batch, out if out.suffix.lower() in (".html", ".htm") else out / "batch.html",
                       masks=masks)
    print(f"wrote {path}")
    return 0
