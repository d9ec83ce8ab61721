"""The ``lumos`` command: demo, explain, compare, methods, layers, train-demo."""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]


def _parse_value(text: str) -> Any:
    """``k=v`` values: Python literals where they parse (3, 0.5, [8, 8], True), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_params(items: Sequence[str] | None) -> dict:
    params = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"lumos: --param expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        params[k.strip()] = _parse_value(v.strip())
    return params


def _parse_target(text: str | None):
    if text is None or text == "predicted":
        return text
    if "," in text:
        return [int(t) for t in text.split(",")]
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"lumos: --target must be an int, a comma list of ints or 'predicted'; got {text!r}")


def load_user_model(spec: str | None, weights: str | None = None, torchscript: str | None = None):
    """A user's model from ``package.module:factory`` (+ a state_dict file) or a TorchScript file.

    Weights are loaded with ``torch.load(..., weights_only=True)``: nothing is unpickled.
    """
    import torch

    if torchscript:
        model = torch.jit.load(torchscript, map_location="cpu")
        return model.eval()
    if not spec or ":" not in spec:
        raise SystemExit("lumos: --model must be 'package.module:factory' (or give --torchscript FILE)")
    mod_name, attr = spec.split(":", 1)
    sys.path.insert(0, str(Path.cwd()))
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"lumos: cannot load --model {spec!r}: {err}")
    model = factory()
    if weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        model.load_state_dict(state)
    return model.eval()


def load_input(path: str, size: Sequence[int] | None = None):
    """An image file (PNG/JPEG...) → (1, C, H, W) in [0, 1]; ``.pt`` / ``.npy`` → a tensor as saved."""
    import numpy as np
    import torch

    p = Path(path)
    if not p.exists():
        raise SystemExit(f"lumos: --input {path!r} does not exist")
    if p.suffix == ".pt":
        t = torch.load(p, map_location="cpu", weights_only=True)
        if not isinstance(t, torch.Tensor):
            raise SystemExit("lumos: a .pt --input must hold one tensor")
        return t.float()
    if p.suffix == ".npy":
        return torch.from_numpy(np.load(p, allow_pickle=False)).float()
    from PIL import Image

    im = Image.open(p).convert("RGB")
    if size:
        im = im.resize((size[-1], size[0]), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _cmd_demo(args) -> int:
    from .report.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def _cmd_methods(args) -> int:
    from . import methods

    print(methods(args.family))
    return 0


def _cmd_layers(args) -> int:
    from . import layers

    model = load_user_model(args.model, args.weights)
    x = load_input(args.input, args.size) if args.input else None
    print(layers(model, x))
    return 0


def _cmd_explain(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import explain

    model = load_user_model(args.model, args.weights, args.torchscript)
    x = load_input(args.input, args.size)
    params = _parse_params(args.param)
    if args.at:
        params["at"] = args.at
    expl = explain(model, x, method=args.method, target=_parse_target(args.target), **params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = expl.save(out / f"{args.method}.npz")
    display = expl.plot()
    display.figure_.savefig(out / f"{args.method}.png", dpi=120)
    plt.close(display.figure_)
    info = {"method": expl.method, "target": None if expl.target is None else expl.target.tolist(),
            "output": None if expl.output is None else expl.output.tolist(), "meta": {
                k: v for k, v in expl.meta.items() if isinstance(v, (int, float, str))}}
    print(json.dumps(info, indent=2))
    print(f"wrote {saved} and {out / (args.method + '.png')}")
    return 0


def _cmd_train_demo(args) -> int:
    from .data.train import train_demo_model

    kwargs = {"epochs": args.epochs} if args.epochs is not None else {}
    _, report = train_demo_model(out=args.out, seed=args.seed, progress=True, threads=args.threads, **kwargs)
    print(json.dumps(report, indent=2, default=str))
    return 0


def _cmd_compare(args) -> int:
    try:
        from .metrics.compare import main as compare_main
    except ModuleNotFoundError as err:  # pragma: no cover - until the metrics land
        raise SystemExit(f"lumos compare is not available: {err}")
    return compare_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lumos", description="Explain models, and measure the explanations.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="explain the shipped demo model with every method")
    p.add_argument("--out", default="lumos-out/demo", help="output folder (default lumos-out/demo)")
    p.add_argument("--quick", action="store_true", help="smaller tabular/metric sections")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("methods", help="list the registered methods")
    p.add_argument("--family", default=None)
    p.set_defaults(func=_cmd_methods)

    def model_args(p):
        p.add_argument("--model", help="package.module:factory returning an nn.Module")
        p.add_argument("--weights", help="state_dict file (loaded with weights_only=True)")
        p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize image inputs")

    p = sub.add_parser("layers", help="list a model's layers with output shapes")
    model_args(p)
    p.add_argument("--input", help="an image file or a saved tensor, to record output shapes")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("explain", help="explain your model on an image file or a saved tensor")
    model_args(p)
    p.add_argument("--torchscript", help="a TorchScript file (for methods that need no rules)")
    p.add_argument("--input", required=True, help="image file (.png/.jpg), .pt tensor or .npy array")
    p.add_argument("--method", default="integrated_gradients")
    p.add_argument("--target", default=None, help="class index, comma list, or 'predicted'")
    p.add_argument("--at", default=None, help="layer (dotted module name) for layer methods")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--out", default="lumos-out/explain")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("compare", help="score several methods with faithfulness/robustness metrics")
    model_args(p)
    p.add_argument("--torchscript", help=argparse.SUPPRESS)
    p.add_argument("--input", help="image file or tensor (default: the demo world)")
    p.add_argument("--methods", default=None, help="comma list of methods (default: a standard set)")
    p.add_argument("--metrics", default=None, help="comma list of metrics (default: a standard set)")
    p.add_argument("--n", type=int, default=16, help="samples from the demo world")
    p.add_argument("--target", default=None)
    p.add_argument("--out", default="lumos-out/compare")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("train-demo", help="retrain the shipped demo model reproducibly")
    p.add_argument("--out", default=None,
                   help="folder for demo_cnn.pt/.json ('package' replaces the shipped weights; default: print only)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the float result depends on it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=_cmd_train_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError) as err:
        # Errors of lumos name the argument; show them without a traceback.
        print(f"lumos {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
