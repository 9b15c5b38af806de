"""Scoring an embedding set on a Dask cluster: every task makes the pass over a range of rows.

Given a scheduler address, the query engine keeps the set's small arrays (cells, background
term, int8 scales) and sends the heavy pass of each query to the cluster: the rows are cut
into ranges on the scan's block boundaries, and a task per range memory-maps the rows it
reads from the set's folder (a path every worker can read: a shared file system, or the same
path on each machine). An ``exact`` task returns its rows' float32 scores; an ``int8`` task
(one byte a value read) returns its rows' int8 scores and the few rows it could not rule out
for exact re-scoring, with their bounds (:func:`~marscope_stac.query.passes.int8_pass`).
About 4 bytes a row travel back. These are the bits one process computes; the engine then
merges the candidates, re-scores those rows exactly and computes the probabilities as one
process does, so the products are the same.

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

from marscope_stac.core.dask import connect_scheduler
from marscope_stac.core.errors import ConfigError
from marscope_stac.index.scan import BLOCK_ROWS, range_scores
from marscope_stac.query.passes import Int8Pass, int8_pass

__all__ = ["ROWS_PER_TASK", "ClusterScorer"]

ROWS_PER_TASK = 2_000_000
"""Most rows one task scans (a multiple of the scan's block): 1 GB of 256-d float16."""


def _exact_task(root: str, start: int, stop: int, q: NDArray[np.float32]) -> NDArray[np.float32]:
    """One task: the exact scores of rows ``start:stop`` of the set at ``root``.

    The files are mapped for this task only (they are unmapped when it returns), so the
    worker's resident memory does not grow with the share of the set it has scanned.
    """
    return range_scores(np.load(Path(root) / "vectors.npy", mmap_mode="r"), start, stop, q)


def _int8_task(
    root: str,
    span: tuple[int, int],
    q: NDArray[np.float32],
    logit_scale: float,
    threshold: float | None,
    top_k: int,
    compiled: bool,
) -> Int8Pass:
    """One task: the ``int8`` pass over rows ``span`` (probabilities left to the engine)."""
    folder = Path(root)
    found = int8_pass(
        np.load(folder / "vectors-int8.npy", mmap_mode="r"),
        np.load(folder / "vectors-scale.npy", mmap_mode="r"),
        np.load(folder / "background.npy", mmap_mode="r"),
        span,
        q,
        logit_scale,
        threshold,
        top_k,
        compiled,
    )
    found.probability = None  # 4 bytes a row less to send; the engine computes the same bits
    return found


class ClusterScorer:
    """Passes over every row of a set computed on a Dask cluster (a ``Scanner``).

    Args:
        address: The scheduler's address (``tcp://host:8786``).
        root: The set's folder, as the workers see it.
        rows: The set's row count.
        compiled: ``int8`` tasks scan with the compiled kernel, else with numpy (the
            engine's choice, so the bits are its own).

    Raises:
        ConfigError: if the scheduler cannot be reached or has no workers (one line).
    """

    def __init__(self, address: str, root: str | Path, rows: int, compiled: bool = True) -> None:
        self.client: Any = connect_scheduler(address)
        self.root = str(root)
        self.compiled = compiled
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

    def exact(self, q: NDArray[np.float32]) -> NDArray[np.float32]:
        """Every row's exact score for the unit vector ``q``."""
        if not self.ranges:
            return np.zeros(0, np.float32)
        q = np.ascontiguousarray(q, np.float32)
        futures = self._submit(_exact_task, [(self.root, a, b, q) for a, b in self.ranges])
        return np.concatenate(self.client.gather(futures)).astype(np.float32, copy=False)

    def int8(
        self, q: NDArray[np.float32], logit_scale: float, threshold: float | None, top_k: int
    ) -> list[Int8Pass]:
        """``int8`` passes over every range, in row order (:mod:`~marscope_stac.query.passes`)."""
        q = np.ascontiguousarray(q, np.float32)
        args = [
            (self.root, span, q, logit_scale, threshold, top_k, self.compiled)
            for span in self.ranges
        ]
        return list(self.client.gather(self._submit(_int8_task, args)))

    def _submit(self, task: Any, args: list[tuple[Any, ...]]) -> list[Any]:
        """One task per range, range ``i`` preferring the same worker from query to query.

        While the workers stay the same, each reads the same share of the set every time, so
        its machine's page cache keeps that share (another worker takes the task when its
        worker is busy or gone).
        """
        workers = sorted(self.client.scheduler_info().get("workers", {}))
        return [
            self.client.submit(
                task,
                *a,
                workers=[workers[i % len(workers)]] if workers else None,
                allow_other_workers=True,
                pure=False,
            )
            for i, a in enumerate(args)
        ]

    def close(self) -> None:
        """Let the scheduler go."""
        self.client.close()
