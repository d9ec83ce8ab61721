"""Drawing a report's pictures: a failure becomes a note in the page, and no figure is left open."""
from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def drawing(item: dict, what: str) -> Iterator[None]:
    """Run the block that draws ``item``'s picture.

    A ``ValueError``, ``TypeError`` or ``IndexError`` inside it (a picture that cannot be drawn for
    these values) is not raised: ``item["note"]`` says ``"<what>: <error>"`` and the report goes on
    without the picture. Every matplotlib figure opened inside the block is closed on the way out,
    also on error; figures the caller had open stay open.
    """
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        yield
    except (ValueError, TypeError, IndexError) as err:
        item["note"] = f"{what}: {err}"
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
