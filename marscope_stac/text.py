"""Plain-text summaries that commands print for people."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["count_list", "join_lines"]


def join_lines(*parts: str | None) -> str:
    """The given lines joined, leaving out ``None`` and empty ones."""
    return "\n".join(p for p in parts if p)


def count_list(values: Mapping[str, int], names: Mapping[str, str] | None = None) -> str:
    """``"name count, name count"`` in the mapping's order, keys renamed through ``names``."""
    return ", ".join(f"{(names or {}).get(k, k)} {v}" for k, v in values.items())
