"""Stand-in for torchvision, only what Lucent imports (see ../README.md)."""
from . import transforms  # noqa: F401
