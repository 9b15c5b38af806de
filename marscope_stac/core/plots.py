"""Matplotlib for the pictures the project writes, without side effects on the caller.

Figures are made with :class:`matplotlib.figure.Figure` (no pyplot, no change of the
caller's backend: a notebook keeps its own), and matplotlib's notes about a configuration
folder it could not write (it then works from a temporary one) stay out of the log: they
say nothing a user of this project can act on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from marscope_stac.core.errors import OutputError
from marscope_stac.core.fs import atomic_output, check_output_file

__all__ = ["FIGURE_FORMATS", "check_figure_path", "figure", "matplotlib", "save_figure"]

FIGURE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""The picture formats a figure is written in, by the file name's suffix."""

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


def check_figure_path(path: str | os.PathLike[str], what: str = "the picture") -> Path:
    """Refuse, before any work, a path a figure cannot be written to.

    The name must end in one of :data:`FIGURE_FORMATS` and must not be a folder, a device,
    a FIFO or a socket (a file already there is replaced, as any output file is).

    Raises:
        OutputError: naming the path and the fix.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{what} {target} is a folder; give a file name ending in .png")
    if target.suffix.lower() not in FIGURE_FORMATS:
        known = ", ".join(FIGURE_FORMATS)
        raise OutputError(f"{what} {target} must end in {known}; give a name such as plot.png")
    return check_output_file(target)


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (else PNG).

    The folder is made when missing; a reader never sees half a picture.
    """
    out = Path(path)
    fmt = FIGURE_FORMATS.get(out.suffix.lower(), "png")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out, suffix=f".{fmt}") as tmp:
        fig.savefig(tmp, dpi=dpi, format=fmt)
    return out
