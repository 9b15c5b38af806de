"""Fault injection for the interruption tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def interrupting(real: Callable[..., Any], on_call: int) -> Callable[..., Any]:
    """``real``, except that its ``on_call``-th call raises KeyboardInterrupt (as Ctrl-C)."""
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == on_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper
