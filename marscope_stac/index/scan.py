"""Multi-threaded scans over the rows of an embedding set's scoring arrays."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.threads import worker_count
from marscope_stac.index.kernels import int8_scores
from marscope_stac.index.store import ScoringArrays

__all__ = [
    "BLOCK_ROWS",
    "exact_block",
    "f16_table",
    "int8_block",
    "range_scores",
    "run_blocks",
    "scan_rows",
    "score_rows",
]


_BLOCK = 2048
"""Rows per block of a scan (one thread's unit of work)."""

BLOCK_ROWS = _BLOCK
"""Rows per block of a scan; a range that starts on a multiple of it scores its rows in the
very blocks a whole scan does, so to the same bits."""


@cache
def f16_table() -> NDArray[np.float32]:
    """float32 value of every float16 bit pattern (numpy's own float16 cast is scalar code)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def run_blocks(n: int, work: Callable[[int, int], None], block: int = _BLOCK) -> None:
    """Run ``work(start, stop)`` on every block of ``n`` rows, on all cores.

    Blocks start on multiples of ``block`` (:data:`BLOCK_ROWS` by default; elementwise
    work wants bigger ones: numpy's per-call cost dominates small blocks); ``work`` writes
    its results itself (numpy releases the interpreter lock, so the threads run at once).
    """
    starts = range(0, n, block)
    workers = worker_count()
    if workers == 1 or n <= block * 4:
        for s in starts:
            work(s, min(s + block, n))
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:  # one BLAS thread each
        list(pool.map(lambda s: work(s, min(s + block, n)), starts))


def scan_rows(
    n: int, block_fn: Callable[[int, int], NDArray[np.float32]], width: int = 0
) -> NDArray[np.float32]:
    """Run ``block_fn(start, stop)`` over row blocks on all cores; concatenate the results.

    Results are one value per row, or ``width`` values per row when ``width`` > 0.
    """
    out = np.empty((n, width) if width else n, np.float32)

    def work(start: int, stop: int) -> None:
        out[start:stop] = block_fn(start, stop)

    run_blocks(n, work)
    return out


_local = threading.local()


def _scratch(rows: int, dim: int) -> NDArray[np.float32]:
    """This thread's float32 block buffer, reused from block to block.

    A new 2 MB array per block costs a fresh mapping and its page faults whenever the C
    library hands big allocations straight to the kernel (it does in Dask workers, which
    set ``MALLOC_TRIM_THRESHOLD_``): twice the time of the scan itself.
    """
    buf: NDArray[np.float32] | None = getattr(_local, "buf", None)
    if buf is None or buf.size < rows * dim:
        buf = _local.buf = np.empty(max(rows, _PIECE) * dim, np.float32)
    return buf[: rows * dim].reshape(rows, dim)


_PIECE = 512
"""Rows converted to float32 at a time within a block: the copy stays in the core's L2 cache."""


def exact_block(vectors: NDArray[np.float16], q: NDArray[np.float32]) -> NDArray[np.float32]:
    """Exact scores of one block of float16 rows (float32 arithmetic; the scans' kernel)."""
    bits = np.ascontiguousarray(vectors).view(np.uint16)
    out = np.empty((len(bits), *q.shape[1:]), np.float32)
    table = f16_table()
    for a in range(0, len(bits), _PIECE):
        piece = bits[a : a + _PIECE]
        rows = np.take(table, piece, out=_scratch(*piece.shape), mode="clip")
        out[a : a + len(piece)] = rows @ q
    return out


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
        return scan_rows(len(v), lambda a, b: exact_block(v[a:b], q), width)
    return scan_rows(len(rows), lambda a, b: exact_block(arrays.vector_rows(rows[a:b]), q), width)


def range_scores(
    vectors: NDArray[np.float16], start: int, stop: int, q: NDArray[np.float32]
) -> NDArray[np.float32]:
    """Exact scores of rows ``start:stop`` of ``vectors`` (a cluster task's share of a scan).

    They are those rows of :func:`score_rows`, to the bit, when ``start`` is a multiple of
    :data:`BLOCK_ROWS`.
    """
    v = vectors[start:stop]
    return scan_rows(len(v), lambda a, b: exact_block(v[a:b], q))


def int8_block(
    int8: NDArray[np.int8],
    scale: NDArray[np.float32],
    q: NDArray[np.float32],
    compiled: bool = True,
) -> NDArray[np.float32]:
    """Scores of one block of rows from their int8 copies (the scans' kernel).

    ``compiled``: with the compiled kernel (:func:`~marscope_stac.index.kernels.int8_scores`),
    else with numpy (each piece of rows converted to float32 in a cache-sized buffer, then
    one matrix-vector product). The two differ in the last bits; a scan uses one of them
    throughout. numpy's needs no kernel loaded (about 0.4 s), which a process making one
    scan saves; the compiled kernel scans 2 to 3 times faster.
    """
    if compiled:
        return int8_scores(int8, scale, q)
    out = np.empty(len(int8), np.float32)
    for c in range(0, len(int8), _PIECE):
        rows = _scratch(min(_PIECE, len(int8) - c), int8.shape[1])
        rows[...] = int8[c : c + len(rows)]
        out[c : c + len(rows)] = rows @ q
    return np.asarray(out * scale, np.float32)
