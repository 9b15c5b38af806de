"""How many threads array work should use."""

from __future__ import annotations

import os

__all__ = ["worker_count"]


def worker_count() -> int:
    """Threads worth running for array work: the usable cores, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))
