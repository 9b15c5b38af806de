"""The option groups of an embedding run: which cells, and where and how to compute them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from marscope_stac.core.errors import check_range

__all__ = ["CellSelection", "ComputeOptions"]


@dataclass(frozen=True, kw_only=True)
class CellSelection:
    """Which cells of a source an embedding run embeds.

    Attributes:
        bbox: Only cells in this lon/lat box (west, south, east, north; the body's degrees).
        asset: Data asset key (default: chosen by role and media type).
        collections: Only items of these collections.
        datetime: Only items in this RFC 3339 time or interval (``a/b``, ``a/..``).
        cql2: A CQL2 text filter for a STAC API's search (e.g. ``eo:cloud_cover < 10``).
        min_valid: Cells with a smaller share of valid data are not embedded (0..1).
    """

    bbox: Sequence[float] | None = None
    asset: str | None = None
    collections: Sequence[str] | None = None
    datetime: str | None = None
    cql2: str | None = None
    min_valid: float = 0.5

    def check(self) -> None:
        """Refuse values that cannot be used.

        Raises:
            ConfigError: naming the value.
        """
        check_range("min_valid", self.min_valid, 0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class ComputeOptions:
    """Where and how an embedding run computes.

    Attributes:
        batch_size: Cells per task.
        workers: Local worker threads (default 1: torch already uses every core).
        scheduler_address: Dask scheduler (else ``DASK_SCHEDULER_ADDRESS``, else local).
        read_processes: Read tiles in this many local processes and embed in this one (a GPU).
        device: Torch device for the model (``auto``, ``cpu``, ``cuda[:N]``).
    """

    batch_size: int = 128
    workers: int | None = None
    scheduler_address: str | None = None
    read_processes: int | None = None
    device: str = "auto"

    def check(self) -> None:
        """Refuse values that cannot be used.

        Raises:
            ConfigError: naming the value.
        """
        check_range("read_processes", self.read_processes, 1, 256, integer=True)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("workers", self.workers, 1, integer=True)
