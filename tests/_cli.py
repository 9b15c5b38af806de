"""Helpers of the suites that run the CLI on hostile input: a deadline, a tree snapshot."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the block after ``seconds`` (a hang), by SIGALRM."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every regular file under ``root`` (locks left out)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name.startswith(".marscope.lock") or p.is_symlink() or not p.is_file():
            continue
        out[str(p.relative_to(root))] = (p.stat().st_size, p.stat().st_mtime_ns)
    return out
