"""``lumos compare``: rank several methods with faithfulness, sanity and localisation metrics
(the work is :func:`lumos.metrics.comparison.main`)."""
from __future__ import annotations

import argparse

from ._args import add_model_args, check_model_files, positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="score several methods with faithfulness/robustness metrics")
    add_model_args(p, torchscript=False)
    p.add_argument("--torchscript", help=argparse.SUPPRESS)
    p.add_argument("--input", help="image file or tensor (default: the demo world)")
    p.add_argument("--methods", default=None, help="comma list of methods (default: a standard set)")
    p.add_argument("--metrics", default=None, help="comma list of metrics (default: a standard set)")
    p.add_argument("--n", type=positive_int, default=16, help="samples from the demo world")
    p.add_argument("--target", default=None)
    p.add_argument("--out", default="lumos-out/compare")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.io import parse_target

    check_model_files(args, need_model=False)
    if (args.model or args.torchscript) and not args.input:
        raise ValueError("--input is required with --model")
    parse_target(args.target)
    from ..metrics.comparison import main as compare_main

    return compare_main(args)
