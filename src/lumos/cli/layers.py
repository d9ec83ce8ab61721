"""``lumos layers``: a model's dotted layer names, with output shapes when an input is given."""
from __future__ import annotations

from ._args import add_model_args, check_model_files

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("layers", help="list a model's layers with output shapes")
    add_model_args(p)
    p.add_argument("--input", help="an image file or a saved tensor, to record output shapes")
    p.set_defaults(func=run)


def run(args) -> int:
    check_model_files(args)
    from .. import layers
    from ..core.io import load_input, load_user_model

    model = load_user_model(args.model, args.weights, args.torchscript)
    x = load_input(args.input, args.size, name="--input") if args.input else None
    print(layers(model, x))
    return 0
