"""Multi-threaded scans over the rows of an embedding set's scoring arrays."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.threads import worker_count
from marscope_stac.index.store import ScoringArrays

__all__ = [
    "BLOCK_ROWS",
    "f16_table",
    "int8_range_scores",
    "int8_scores",
    "range_scores",
    "scan_rows",
    "score_rows",
]


_BLOCK = 2048
"""Rows per block of a scan: a block's float32 copy stays in the core's cache."""

BLOCK_ROWS = _BLOCK
"""Rows per block of a scan; a range that starts on a multiple of it scores its rows in the
very blocks a whole scan does, so to the same bits."""


@cache
def f16_table() -> NDArray[np.float32]:
    """float32 value of every float16 bit pattern (numpy's own float16 cast is scalar code)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def scan_rows(
    n: int, block_fn: Callable[[int, int], NDArray[np.float32]], width: int = 0
) -> NDArray[np.float32]:
    """Run ``block_fn(start, stop)`` over row blocks on all cores; concatenate the results.

    Results are one value per row, or ``width`` values per row when ``width`` > 0.
    """
    out = np.empty((n, width) if width else n, np.float32)

    def work(start: int) -> None:
        stop = min(start + _BLOCK, n)
        out[start:stop] = block_fn(start, stop)

    starts = range(0, n, _BLOCK)
    workers = worker_count()
    if workers == 1 or n <= _BLOCK * 4:
        for s in starts:
            work(s)
        return out
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:  # one BLAS thread each
        list(pool.map(work, starts))
    return out


def _exact_block(vectors: NDArray[np.float16], q: NDArray[np.float32]) -> NDArray[np.float32]:
    block = np.take(f16_table(), np.ascontiguousarray(vectors).view(np.uint16))
    return np.asarray(block @ q, np.float32)


def score_rows(
    arrays: ScoringArrays, q: NDArray[np.float32], rows: NDArray[np.int64] | None = None
) -> NDArray[np.float32]:
    """Exact scores (float32 arithmetic on the float16 vectors) of all rows or of ``rows``.

    ``q`` is one vector, or several as columns (dim, k): then the result is (rows, k), all
    read in one pass over the vectors.
    """
    v = arrays.vectors
    width = q.shape[1] if q.ndim == 2 else 0
    if rows is None:
        return scan_rows(len(v), lambda a, b: _exact_block(v[a:b], q), width)
    return scan_rows(len(rows), lambda a, b: _exact_block(arrays.vector_rows(rows[a:b]), q), width)


def range_scores(
    vectors: NDArray[np.float16], start: int, stop: int, q: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Exact scores of rows ``start:stop`` of ``vectors`` (a cluster task's share of a scan).

    They are those rows of :func:`score_rows`, to the bit, when ``start`` is a multiple of
    :data:`BLOCK_ROWS`.
    """
    v = vectors[start:stop]
    return scan_rows(len(v), lambda a, b: _exact_block(v[a:b], q))


def int8_range_scores(
    int8: NDArray[np.int8],
    scale: NDArray[np.float32],
    start: int,
    stop: int,
    q: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Scores of rows ``start:stop`` read from their int8 copies (``scale * int8 . q``).

    Like :func:`range_scores`, a range starting on a multiple of :data:`BLOCK_ROWS` gives
    the bits of the whole scan (:func:`int8_scores`).
    """
    v, s = int8[start:stop], scale[start:stop]

    def block(a: int, b: int) -> NDArray[np.float32]:
        return np.asarray((v[a:b].astype(np.float32) @ q) * s[a:b], np.float32)

    return scan_rows(len(v), block)


def int8_scores(arrays: ScoringArrays, q: NDArray[np.float32]) -> NDArray[np.float32]:
    """Scores of every row read from the int8 copies (one byte a value; see ``query.scoring``)."""
    return int8_range_scores(arrays.int8, arrays.scale, 0, len(arrays), q)
