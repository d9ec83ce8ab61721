"""``python -m lumos``: the same command as ``lumos``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
