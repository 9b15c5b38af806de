"""Matplotlib for the pictures the project writes, without side effects on the caller.

Figures are made with :class:`matplotlib.figure.Figure` (no pyplot, no change of the
caller's backend: a notebook keeps its own), and matplotlib's notes about a configuration
folder it could not write (it then works from a temporary one) stay out of the log: they
say nothing a user of this project can act on.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

__all__ = ["figure", "matplotlib"]

_NOISE = ("created a temporary cache directory", "mkdir -p failed for path")


class _QuietConfigNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in _NOISE)


_FILTER = _QuietConfigNotes()


def matplotlib() -> ModuleType:
    """The ``matplotlib`` module, imported with its configuration-folder notes kept quiet."""
    logger = logging.getLogger("matplotlib")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    import matplotlib as mpl

    return mpl


def figure(**kwargs: Any) -> Any:
    """A new :class:`matplotlib.figure.Figure` (``kwargs``: its own, e.g. ``figsize``)."""
    matplotlib()
    from matplotlib.figure import Figure

    return Figure(**kwargs)
