"""Scoring an embedding set on a Dask cluster: every task scans a range of rows where it runs.

Given a scheduler address, the query engine keeps the set's small arrays (cells, background
term, int8 scales) and sends the heavy pass of each query to the cluster: the rows are cut
into ranges on the scan's block boundaries, and a task per range memory-maps the rows it
scans from the set's folder (a path every worker can read: a shared file system, or the same
path on each machine) and returns their float32 scores, exact or read from the int8 copies
(one byte a value). Only the scores travel back (4 bytes a row). The scores are the very bits
a single process computes; ``int8`` scoring then re-scores its uncertain rows exactly in the
engine's process as a single process does, so the products are the same.

A task maps its files for its own rows and lets them go when it ends: a worker's resident
memory stays about one range (:data:`ROWS_PER_TASK` rows), however big the set; repeated
queries read the rows from the operating system's page cache of each machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError
from marscope_stac.index.scan import BLOCK_ROWS, int8_range_scores, range_scores

__all__ = ["ROWS_PER_TASK", "ClusterScorer"]

ROWS_PER_TASK = 2_000_000
"""Most rows one task scans (a multiple of the scan's block): 1 GB of 256-d float16."""


def _scan_range(
    root: str, how: str, start: int, stop: int, q: NDArray[np.float32]
) -> NDArray[np.float32]:
    """One task: the ``exact`` or ``int8`` scores of rows ``start:stop`` of the set at ``root``.

    The files are mapped for this task only (they are unmapped when it returns), so the
    worker's resident memory does not grow with the share of the set it has scanned.
    """
    folder = Path(root)
    if how == "exact":
        return range_scores(np.load(folder / "vectors.npy", mmap_mode="r"), start, stop, q)
    int8 = np.load(folder / "vectors-int8.npy", mmap_mode="r")
    scale = np.load(folder / "vectors-scale.npy", mmap_mode="r")
    return int8_range_scores(int8, scale, start, stop, q)


class ClusterScorer:
    """Full scans of a set (every row's score) computed on a Dask cluster.

    Args:
        address: The scheduler's address (``tcp://host:8786``).
        root: The set's folder, as the workers see it.
        rows: The set's row count.

    Raises:
        ConfigError: if the scheduler cannot be reached or has no workers (one line).
    """

    def __init__(self, address: str, root: str | Path, rows: int) -> None:
        from marscope_stac.embed.compute import connect_scheduler  # loads torch: not before

        self.client: Any = connect_scheduler(address)
        self.root = str(root)
        workers = len(self.client.scheduler_info().get("workers", {}))
        if not workers:
            self.client.close()
            raise ConfigError(
                f"the Dask scheduler at {address} has no workers; start some with "
                f"'dask worker {address}' (they must read {self.root})"
            )
        per_task = min(ROWS_PER_TASK, math.ceil(rows / (2 * workers)) if rows else 1)
        per_task = max(BLOCK_ROWS, math.ceil(per_task / BLOCK_ROWS) * BLOCK_ROWS)
        self.ranges = [(a, min(a + per_task, rows)) for a in range(0, rows, per_task)]

    def scan(self, how: str, q: NDArray[np.float32]) -> NDArray[np.float32]:
        """Every row's score for the unit vector ``q``: ``exact`` or ``int8`` (a ``Scan``)."""
        if how not in ("exact", "int8"):
            raise ValueError(f"unknown scan {how!r}")
        if not self.ranges:
            return np.zeros(0, np.float32)
        n = len(self.ranges)
        futures = self.client.map(
            _scan_range,
            [self.root] * n,
            [how] * n,
            [a for a, _ in self.ranges],
            [b for _, b in self.ranges],
            [np.ascontiguousarray(q, np.float32)] * n,
            pure=False,
        )
        return np.concatenate(self.client.gather(futures)).astype(np.float32, copy=False)

    def scores(self, q: NDArray[np.float32]) -> NDArray[np.float32]:
        """The exact score of every row for the unit vector ``q``."""
        return self.scan("exact", q)

    def close(self) -> None:
        """Let the scheduler go."""
        self.client.close()
