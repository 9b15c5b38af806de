"""Plain-text summaries that commands print for people."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["count_list", "counted", "join_lines", "one_line"]


def one_line(text: str) -> str:
    """``text`` as one line for a terminal.

    Line breaks and tabs become spaces (runs of spaces fold to one); other characters that
    are not printable (a NUL, a record separator, a Unicode line separator) are written as
    Python escapes, so a bad path is shown, never lost or split over lines.
    """
    out = []
    for ch in text:
        if ch in "\n\r\t":
            out.append(" ")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return re.sub(" {2,}", " ", "".join(out)).strip()


def join_lines(*parts: str | None) -> str:
    """The given lines joined, leaving out ``None`` and empty ones."""
    return "\n".join(p for p in parts if p)


def count_list(values: Mapping[str, int], names: Mapping[str, str] | None = None) -> str:
    """``"name count, name count"`` in the mapping's order, keys renamed through ``names``."""
    return ", ".join(f"{(names or {}).get(k, k)} {v}" for k, v in values.items())


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 problem"``, ``"3 problems"``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
