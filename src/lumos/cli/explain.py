"""``lumos explain``: one method on a user's model and an image or saved tensor; writes the
Explanation (``.npz`` + JSON) and its picture, and prints the target and output (with the class
names when the model carries them).

``lumos explain --text "a sentence" --model text-demo|minilm|package.module:factory`` explains a
text model on sentences instead: it prints every token with its attribution and writes the
Explanation (``.npz`` + JSON) and an HTML page of the highlighted tokens (every token escaped)."""
from __future__ import annotations

import json
from pathlib import Path

from ._args import add_model_args, check_model_files, parse_params

__all__ = ["add_parser", "run", "run_text", "TEXT_MODELS"]

# --model names of the shipped text models (lumos.data.text_models: loader returning (model, tokenizer))
TEXT_MODELS = {"text-demo": "load_text_classifier", "minilm": "load_minilm_classifier"}


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain your model on an image file or a saved tensor")
    add_model_args(p)
    p.add_argument("--input", help="image file (.png/.jpg), .pt tensor or .npy array")
    p.add_argument("--text", action="append", metavar="SENTENCE",
                   help="explain a text model on this sentence instead of --input (repeatable); "
                        "--model text-demo, minilm or package.module:factory with --tokenizer DIR")
    p.add_argument("--tokenizer", help="folder of a Hugging Face tokenizer, read offline (for --text with a "
                                       "package.module:factory model; not needed when the factory returns "
                                       "(model, tokenizer))")
    p.add_argument("--method", default="integrated_gradients")
    p.add_argument("--target", default=None, help="class index, comma list, or 'predicted'")
    p.add_argument("--at", default=None, help="layer (dotted module name) for layer methods")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (repeatable)")
    p.add_argument("--out", default="lumos-out/explain")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.io import parse_target

    if args.text:
        return run_text(args)
    if args.input is None:
        raise ValueError("one of these arguments is required: --input FILE (an image or a saved "
                         "tensor) or --text SENTENCE")
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


def _text_model(args):
    """(model, tokenizer) for ``--model`` with ``--text``."""
    from ..core.io import check_file

    if args.model in TEXT_MODELS:
        if args.weights or args.tokenizer:
            raise ValueError(f"--model {args.model} is a shipped model with its own weights and "
                             "tokenizer; --weights/--tokenizer go with package.module:factory")
        from ..data import text_models

        return getattr(text_models, TEXT_MODELS[args.model])()
    if args.model is None or ":" not in args.model:
        raise ValueError(f"--model with --text: one of {sorted(TEXT_MODELS)} or "
                         f"'package.module:factory'; got {args.model!r}")
    if args.weights:
        check_file(args.weights, "--weights")
    from ..core.io import load_text_model

    # --tokenizer DIR, read offline; required unless the factory returns (model, tokenizer)
    return load_text_model(args.model, args.weights, args.tokenizer, tokenizer_name="--tokenizer")


def run_text(args) -> int:
    """``--text``: token attributions of a text model, printed, saved (.npz) and highlighted (.html)."""
    from ..core.io import parse_target

    if args.input is not None:
        raise ValueError("give --input (an image or tensor) or --text (sentences), not both")
    if getattr(args, "torchscript", None) or args.at or args.size:
        raise ValueError("--torchscript, --at and --size are for image/tensor inputs, not --text")
    target = parse_target(args.target)
    params = parse_params(args.param)
    model, tok = _text_model(args)

    import numpy as np

    from ..core.registry import explain
    from ..display.text import TextDisplay

    expl = explain(model, list(args.text), method=args.method, target=target, tokenizer=tok, **params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = expl.save(out / f"{args.method}.npz")
    page = out / f"{args.method}.html"
    tokens = expl.meta["tokens"]
    blocks = []
    for i in range(len(expl)):
        n = int(expl.meta["attention_mask"][i].sum())
        blocks.append(TextDisplay([str(t) for t in tokens[i][:n]], np.asarray(expl.values[i][:n]),
                                  f"{expl.method}, text {i}").to_html())
        names = getattr(model, "class_names", None)
        head = f"text {i}: target {expl.meta.get('target', '')}"
        if expl.target is not None and names is not None and 0 <= int(expl.target[i]) < len(names):
            head += f" ({names[int(expl.target[i])]})"
        print(head)
        for tok_, v in zip(tokens[i][:n], expl.values[i][:n]):
            print(f"  {tok_:<20} {v:+.4f}")
    page.write_text("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>lumos explain --text"
                    "</title></head><body>\n" + "\n".join(blocks) + "\n</body></html>\n", encoding="utf-8")
    print(f"wrote {saved} and {page}")
    return 0
