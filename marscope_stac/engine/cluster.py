"""Scoring an embedding set on a Dask cluster: every task scans a range of rows where it runs.

Given a scheduler address, the query engine keeps the set's small arrays (cells, background
term) and sends each scan to the cluster: the rows are cut into ranges on the scan's block
boundaries, a task per range memory-maps the set from its folder (a path every worker can
read: a shared file system, or the same path on each machine) and returns the float32 scores
of its rows. The scores are the very bits a single process computes, so the products are the
same. Only the scores travel back (4 bytes a row); a worker holds one range at a time.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError
from marscope_stac.index.scan import BLOCK_ROWS, score_row_range
from marscope_stac.index.store import EmbeddingSet, ScoringArrays

__all__ = ["ROWS_PER_TASK", "ClusterScorer"]

ROWS_PER_TASK = 2_000_000
"""Most rows one task scans (a multiple of the scan's block): 1 GB of 256-d float16."""


@lru_cache(maxsize=4)
def _arrays(root: str) -> ScoringArrays:
    """A set's scoring arrays, mapped once per worker process (a set never changes)."""
    return EmbeddingSet(Path(root)).scoring_arrays()


def _score_range(root: str, start: int, stop: int, q: NDArray[np.float32]) -> NDArray[np.float32]:
    """One task: the exact scores of rows ``start:stop`` of the set at ``root``."""
    return score_row_range(_arrays(root), start, stop, q)


class ClusterScorer:
    """Exact scores of every row of a set, computed on a Dask cluster.

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

    def scores(self, q: NDArray[np.float32]) -> NDArray[np.float32]:
        """The exact score of every row for the unit vector ``q``."""
        if not self.ranges:
            return np.zeros(0, np.float32)
        futures = self.client.map(
            _score_range,
            [self.root] * len(self.ranges),
            [a for a, _ in self.ranges],
            [b for _, b in self.ranges],
            [np.ascontiguousarray(q, np.float32)] * len(self.ranges),
            pure=False,
        )
        return np.concatenate(self.client.gather(futures)).astype(np.float32, copy=False)

    def close(self) -> None:
        """Let the scheduler go."""
        self.client.close()
