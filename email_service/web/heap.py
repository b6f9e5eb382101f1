"""The server process's garbage collector, set for a long-lived heap and short requests.

A server process builds a large heap once (the parsed spec, its JSON Schema validators,
Connexion's routes, SQLAlchemy's mappers) that lives as long as the process. CPython's
cyclic collector still walks all of it on every full collection, and a request of
``listMessages`` alone makes hundreds of container objects (rows, their address lists),
so under load full collections came often: py-spy ``--native`` found the collector in a
quarter of the GIL-holding samples of an API process under the P3 load, and each full
pass stops every thread of the process at once (README "Performance", P3).

So, once the application is built (at the ASGI lifespan's startup, after Connexion has
built its middleware stack), :func:`settled_heap` collects once and moves every object
that exists then into the permanent generation (``gc.freeze``), which collections no
longer walk, and raises the young generation's threshold so the collector runs less
often. Garbage cycles are still collected; only the startup heap is exempt from scans.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

#: Allocations (net of deallocations) between young collections, and how many of each
#: generation's collections trigger the next one's (CPython's defaults: 700, 10, 10).
THRESHOLDS = (10_000, 50, 100)


def settle_heap() -> None:
    """Collect, freeze what is left (the startup heap), and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


@asynccontextmanager
async def settled_heap(_app: Any) -> AsyncIterator[None]:
    """A Connexion lifespan that settles the heap once the app is built."""
    settle_heap()
    yield
