"""``lumos explain``: one method on a user's model and an image or saved tensor; writes the
Explanation (``.npz`` + JSON) and its picture, and prints the target and output (with the class
names when the model carries them)."""
from __future__ import annotations

import json
from pathlib import Path

from ._args import add_model_args, check_model_files, parse_params

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain your model on an image file or a saved tensor")
    add_model_args(p)
    p.add_argument("--input", required=True, help="image file (.png/.jpg), .pt tensor or .npy array")
    p.add_argument("--method", default="integrated_gradients")
    p.add_argument("--target", default=None, help="class index, comma list, or 'predicted'")
    p.add_argument("--at", default=None, help="layer (dotted module name) for layer methods")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--out", default="lumos-out/explain")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.io import parse_target

    # Everything the user typed is checked before torch and the methods are imported.
    check_model_files(args)
    target = parse_target(args.target)
    params = parse_params(args.param)
    if args.at:
        params["at"] = args.at

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.io import class_names_of, load_input, load_user_model
    from ..core.registry import explain

    model = load_user_model(args.model, args.weights, args.torchscript)
    x = load_input(args.input, args.size, name="--input")
    expl = explain(model, x, method=args.method, target=target, **params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = expl.save(out / f"{args.method}.npz")
    display = expl.plot()
    picture = out / f"{args.method}.png"
    display.figure_.savefig(picture, dpi=120)
    plt.close(display.figure_)
    info = {"method": expl.method, "target": None if expl.target is None else expl.target.tolist()}
    names = class_names_of(model)
    if names is not None and expl.target is not None:
        info["class"] = [names[int(t)] if 0 <= int(t) < len(names) else None for t in expl.target.ravel()]
    info["output"] = None if expl.output is None else expl.output.tolist()
    info["meta"] = {k: v for k, v in expl.meta.items() if isinstance(v, (int, float, str))}
    print(json.dumps(info, indent=2))
    print(f"wrote {saved} and {picture}")
    return 0
