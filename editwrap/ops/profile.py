"""Per-phase CPU/wall time of an edit, for ``benchmarks/edit_speed.py --profile``.

The shared steps of the locate-then-edit methods (context templates, covariance statistics, key
reads, value optimisation, solve) mark themselves with :func:`phase`; outside :func:`profiling`
a phase costs one context-variable lookup. Nested phases count in both (the report shows the
top-level ones).
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Iterator

__all__ = ["phase", "profiling"]

_TIMES: contextvars.ContextVar[dict[str, list[float]] | None] = contextvars.ContextVar("editwrap_profile", default=None)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    times = _TIMES.get()
    if times is None:
        yield
        return
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        yield
    finally:
        slot = times.setdefault(name, [0.0, 0.0, 0])
        slot[0] += time.process_time() - c0
        slot[1] += time.perf_counter() - w0
        slot[2] += 1


@contextlib.contextmanager
def profiling() -> Iterator[dict[str, list[float]]]:
    """Collect ``{phase: [cpu_seconds, wall_seconds, calls]}`` for the code run inside."""
    times: dict[str, list[float]] = {}
    token = _TIMES.set(times)
    try:
        yield times
    finally:
        _TIMES.reset(token)
