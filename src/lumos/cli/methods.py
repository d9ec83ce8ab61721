"""``lumos methods [--family F]``: the registered methods as a table."""
from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the registered methods")
    p.add_argument("--family", default=None, help="only this family (an unknown family is an error)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..core.registry import methods
    from ..core.validation import check_choice

    if args.family is not None:
        check_choice(args.family, "--family", sorted({m.family for m in methods()}))
    print(methods(args.family))
    return 0
