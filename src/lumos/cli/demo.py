"""``lumos demo [SECTION ...] [--all]``: the tour of every family, one family in full, or everything."""
from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a tour of every family on the demo worlds (under a minute)",
                       description="Without arguments: the quick tour of every section. With SECTION "
                                   "names: those sections in full. --all: every section in full. "
                                   "--list: the sections.")
    p.add_argument("sections", nargs="*", metavar="SECTION", help="run these sections in full")
    p.add_argument("--all", action="store_true", help="every section in its full form")
    p.add_argument("--list", action="store_true", help="list the sections and exit")
    p.add_argument("--out", default="lumos-out/demo", help="output folder (default lumos-out/demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.all and args.sections:
        raise ValueError("give SECTION names or --all, not both")
    from ..report.demo import run_demo, sections

    if args.list:
        for s in sections():
            print(f"{s.name:<14}{s.title}")
        return 0
    result = run_demo(args.out, only=args.sections or None, full=args.all)
    return 1 if result.failed else 0
