"""Warnings silenced while a block runs, safely across threads.

``warnings.catch_warnings`` saves the process's whole filter list and puts it back, so two
threads whose blocks overlap put back each other's lists: a filter outlives both, or one
another thread added meanwhile is lost. :func:`quiet_warnings` instead adds one filter entry
for a category when the first block begins and removes that entry alone when the last one
ends (blocks of every thread counted together).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any, cast

__all__ = ["quiet_warnings"]

_LOCK = threading.Lock()
_USERS: dict[type[Warning], int] = {}  # blocks under way, per category
_ADDED: set[type[Warning]] = set()  # categories whose filter entry is ours


def _entry(category: type[Warning]) -> tuple[Any, ...]:
    return ("ignore", None, category, None, 0)


@contextlib.contextmanager
def quiet_warnings(category: type[Warning]) -> Iterator[None]:
    """Ignore warnings of ``category`` while any thread is inside such a block.

    A filter of the user's that is the same entry is left as it is (and never removed).
    """
    with _LOCK:
        if not _USERS.get(category) and _entry(category) not in warnings.filters:
            warnings.filterwarnings("ignore", category=category)
            _ADDED.add(category)
        _USERS[category] = _USERS.get(category, 0) + 1
    try:
        yield
    finally:
        with _LOCK:
            _USERS[category] -= 1
            if not _USERS[category] and category in _ADDED:
                _ADDED.discard(category)
                with contextlib.suppress(ValueError):  # taken out by someone else meanwhile
                    cast(list[Any], warnings.filters).remove(_entry(category))  # a list at run time
                    getattr(warnings, "_filters_mutated", lambda: None)()  # drop cached answers
