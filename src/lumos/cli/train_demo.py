"""``lumos train-demo``: reproduce the shipped demo model's weights (``--text``: the text models'; ``--image-text``: the image–text dual encoder's; ``--vae``: the shapes-world conditional VAE's; ``--diffusion``: the shapes-world DDPM's)."""
from __future__ import annotations

import json

from ._args import positive_int

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("train-demo", help="retrain the shipped demo model reproducibly")
    p.add_argument("--out", default=None,
                   help="folder for demo_cnn.pt/.json ('package' replaces the shipped weights; default: print only)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (the float result depends on it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=positive_int, default=None)
    p.add_argument("--text", action="store_true",
                   help="retrain the text models instead: the text-world classifier, the tiny LM and the "
                        "MiniLM head (--epochs: the classifier's)")
    p.add_argument("--image-text", action="store_true",
                   help="retrain the image–text dual encoder instead (--epochs: its epochs)")
    p.add_argument("--vae", action="store_true",
                   help="retrain the conditional VAE of the shapes world instead (--vae-steps: its steps)")
    p.add_argument("--vae-steps", type=positive_int, default=None, help="with --vae: optimiser steps")
    p.add_argument("--diffusion", action="store_true",
                   help="retrain the conditional DDPM of the shapes world instead (--diffusion-steps: its steps)")
    p.add_argument("--diffusion-steps", type=positive_int, default=None, help="with --diffusion: optimiser steps")
    p.add_argument("--lm-steps", type=positive_int, default=None, help="with --text: the tiny LM's steps")
    p.set_defaults(func=run)


def run(args) -> int:
    if sum(bool(getattr(args, k, False)) for k in ("text", "image_text", "vae", "diffusion")) > 1:
        raise ValueError("--text, --image-text, --vae and --diffusion train different models; give one of them")
    if getattr(args, "diffusion", False):
        from ..data.diffusion import train_shapes_ddpm

        kwargs = {"steps": args.diffusion_steps} if args.diffusion_steps is not None else {}
        _, report = train_shapes_ddpm(out=args.out, seed=args.seed, progress=True, threads=args.threads,
                                      evaluate=100, **kwargs)
        print(json.dumps(report, indent=2, default=str))
        return 0
    if getattr(args, "vae", False):
        from ..data.generative import train_shapes_vae

        kwargs = {"steps": args.vae_steps} if args.vae_steps is not None else {}
        _, report = train_shapes_vae(out=args.out, seed=args.seed, progress=True, threads=args.threads, **kwargs)
        print(json.dumps(report, indent=2, default=str))
        return 0
    if args.image_text:
        from ..data.image_text import train_image_text_model

        kwargs = {"epochs": args.epochs} if args.epochs is not None else {}
        _, report = train_image_text_model(out=args.out, seed=args.seed, progress=True, threads=args.threads,
                                           **kwargs)
        print(json.dumps(report, indent=2, default=str))
        return 0
    if args.text:
        from ..data.text_train import train_text_models

        reports = train_text_models(out=args.out, seed=args.seed, progress=True, threads=args.threads,
                                    epochs=args.epochs, lm_steps=args.lm_steps)
        print(json.dumps(reports, indent=2, default=str))
        return 0
    from ..data.train import train_demo_model

    kwargs = {"epochs": args.epochs} if args.epochs is not None else {}
    _, report = train_demo_model(out=args.out, seed=args.seed, progress=True, threads=args.threads, **kwargs)
    print(json.dumps(report, indent=2, default=str))
    return 0
