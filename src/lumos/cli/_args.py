"""Arguments shared by several subcommands, and their checks (no torch here)."""
from __future__ import annotations

import argparse
import ast
from typing import Any, Sequence

from ..core.io import check_file

__all__ = ["add_model_args", "check_model_files", "parse_params", "parse_value", "positive_int"]


def parse_value(text: str) -> Any:
    """``KEY=VALUE`` values: Python literals where they parse (3, 0.5, [8, 8], True), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_params(items: Sequence[str] | None) -> dict:
    """``["n_steps=32", "mode=abs"]`` → ``{"n_steps": 32, "mode": "abs"}``; ValueError naming ``--param``."""
    params = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects KEY=VALUE; got {item!r}")
        params[key.strip()] = parse_value(value.strip())
    return params


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a bad value is a usage error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int; got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser, torchscript: bool = True) -> None:
    """``--model``, ``--weights``, ``--size`` (and ``--torchscript``)."""
    p.add_argument("--model", help="package.module:factory returning an nn.Module")
    p.add_argument("--weights", help="state_dict file (loaded with weights_only=True)")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="resize image inputs")
    if torchscript:
        p.add_argument("--torchscript", help="a TorchScript file instead of --model")


def check_model_files(args, need_model: bool = True) -> None:
    """Every file argument exists and ``--model`` has its form: before anything heavy is imported."""
    for flag in ("input", "weights", "torchscript"):
        value = getattr(args, flag, None)
        if value:
            check_file(value, f"--{flag}")
    if getattr(args, "torchscript", None):
        return
    if args.model is None:
        if need_model:
            raise ValueError("--model package.module:factory (or --torchscript FILE) is required")
        return
    if ":" not in args.model:
        raise ValueError(f"--model must be 'package.module:factory'; got {args.model!r}")
