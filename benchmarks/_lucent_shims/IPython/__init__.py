"""Stand-in for IPython, only what Lucent imports (see ../README.md)."""
from . import display  # noqa: F401
