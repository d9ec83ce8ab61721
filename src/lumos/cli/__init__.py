"""The ``lumos`` command: one small module per subcommand, no computation of its own.

Each subcommand module has ``add_parser(subparsers)`` and ``run(args) -> int``. Building the parser
and checking arguments import neither torch nor the methods, so a typo or a missing file is
reported at once; the work is imported by ``run``.

User errors (bad arguments, missing or unreadable files, bad values, unknown methods) print one
line ``lumos COMMAND: message`` and exit with status 2, as argparse does for its own errors.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from . import compare, demo, explain, explain_dataset, layers, methods, report, serve, train_demo

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = (demo, methods, layers, explain, compare, report, serve, train_demo, explain_dataset)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (imports nothing heavy)."""
    parser = argparse.ArgumentParser(prog="lumos", description="Explain models, and measure the explanations.")
    parser.add_argument("--version", action="version", version=f"lumos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lumos`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success, 2 on a user error (argparse's usage errors included), 130 on Ctrl-C.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help/--version (0) and usage errors (2)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError, ImportError) as err:
        # Errors of lumos name the argument (a missing optional dependency names the extra that
        # installs it); show them without a traceback.
        print(f"lumos {args.command}: {err}", file=sys.stderr)
        return 2
    except SystemExit as stop:  # a subcommand stopping with a message is a user error too
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        message = str(stop.code)
        print(message if message.startswith("lumos") else f"lumos {args.command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lumos {args.command}: interrupted", file=sys.stderr)
        return 130
