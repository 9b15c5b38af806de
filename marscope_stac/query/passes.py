"""Passes over a set's rows: scores, probabilities and the rows ``int8`` scoring re-scores.

A pass covers a range of rows (the whole set in one process, one task's share on a Dask
cluster) and works on all cores: the rows' scores block by block, then, in bigger pieces,
their calibrated probabilities and, for ``int8`` scoring, the rows whose exact score could
change the result (see :mod:`marscope_stac.query.scoring`). A range starting on a multiple
of :data:`~marscope_stac.index.scan.BLOCK_ROWS` is cut into the very blocks a whole pass
uses for the scores, and the rest is elementwise, so passes over ranges, merged with
:func:`int8_rows`, give the bits one pass over the set gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from marscope_stac.index.scan import exact_block, int8_block, run_blocks, scan_rows

__all__ = [
    "MARGIN_PER_SCALE",
    "PROBABILITY_TOLERANCE",
    "Int8Pass",
    "Scanner",
    "exact_pass",
    "int8_pass",
    "int8_rows",
    "probabilities",
    "probabilities_pass",
]

_PIECE = 1 << 17
"""Rows per piece of the elementwise steps (numpy's per-call cost is small beside it)."""

PROBABILITY_TOLERANCE = 0.002
"""Largest probability error left by int8 scoring (half the products' 0.004 storage step)."""

MARGIN_PER_SCALE = 6.0 / math.sqrt(12.0)
"""A row's int8 rounding margin per unit of its scale: 6 standard deviations of the error.

The error is ``sum q_i d_i`` with ``d_i`` uniform in +-scale/2 and ``|q| = 1``."""


def probabilities(
    scores: NDArray[np.float32], background: NDArray[np.float32], logit_scale: float
) -> NDArray[np.float32]:
    """Calibrated probability of each cell: ``sigmoid(t * score - background)``."""
    with np.errstate(over="ignore"):
        z = np.exp(np.asarray(background, np.float32) - np.float32(logit_scale) * scores)
    return (1.0 / (1.0 + z)).astype(np.float32)


def probabilities_pass(
    scores: NDArray[np.float32], background: NDArray[np.float32], logit_scale: float
) -> NDArray[np.float32]:
    """:func:`probabilities` of every row, block by block on all cores (the same bits)."""
    out = np.empty(len(scores), np.float32)

    def work(a: int, b: int) -> None:
        out[a:b] = probabilities(scores[a:b], background[a:b], logit_scale)

    run_blocks(len(scores), work, _PIECE)
    return out


def exact_pass(
    vectors: NDArray[np.float16],
    background: NDArray[np.float32],
    q: NDArray[np.float32],
    logit_scale: float,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Exact scores of every row and their probabilities, in one pass over the vectors."""
    s = scan_rows(len(vectors), lambda a, b: exact_block(vectors[a:b], q))
    return s, probabilities_pass(s, background, logit_scale)


@dataclass
class Int8Pass:
    """What an ``int8`` pass over rows ``start:start + len(scores)`` found.

    Attributes:
        start: First row of the range.
        scores: Every row's score read from the int8 copies.
        probability: Their probabilities (``None`` when left for the receiver to compute).
        rows: Candidate rows for exact re-scoring (set row numbers, ascending).
        upper: Their scores' upper bounds (score + margin).
        flagged: Candidates re-scored whatever the best rows are: near the threshold, or
            with a probability the rounding could move by more than the tolerance.
        top_lower: The range's ``top_k`` largest lower bounds (score - margin).
    """

    start: int
    scores: NDArray[np.float32]
    probability: NDArray[np.float32] | None
    rows: NDArray[np.int64]
    upper: NDArray[np.float32]
    flagged: NDArray[np.bool_]
    top_lower: NDArray[np.float32]


def int8_pass(
    int8: NDArray[np.int8],
    scale: NDArray[np.float32],
    background: NDArray[np.float32],
    span: tuple[int, int],
    q: NDArray[np.float32],
    logit_scale: float,
    threshold: float | None,
    top_k: int,
    compiled: bool = True,
) -> Int8Pass:
    """One ``int8`` pass over rows ``span = (start, stop)`` of a set (whole arrays given).

    ``compiled``: scan with the compiled kernel or numpy (see
    :func:`~marscope_stac.index.scan.int8_block`).
    """
    start, stop = span
    n = stop - start
    codes, scales = int8[start:stop], scale[start:stop]
    s = scan_rows(n, lambda a, b: int8_block(codes[a:b], scales[a:b], q, compiled))
    p = np.empty(n, np.float32)
    lower = np.empty(n, np.float32)
    flag = np.empty(n, np.bool_)
    t = np.float32(logit_scale)
    logit = math.log(threshold / (1 - threshold)) if threshold and 0 < threshold < 1 else None

    def work(a: int, b: int) -> None:
        bg = np.asarray(background[start + a : start + b], np.float32)
        margin = MARGIN_PER_SCALE * np.asarray(scale[start + a : start + b], np.float32)
        sb = s[a:b]
        pb = p[a:b] = probabilities(sb, bg, logit_scale)
        lower[a:b] = sb - margin
        # dp/ds = t p (1 - p): cells of intermediate probability are sensitive to the rounding
        f = t * pb * (1 - pb) * margin > PROBABILITY_TOLERANCE
        if logit is not None:
            f |= np.abs(sb - ((logit + bg) / t).astype(np.float32)) <= margin
        flag[a:b] = f

    run_blocks(n, work, _PIECE)
    if top_k <= 0:  # no ranking asked for: the flagged rows only
        local = np.flatnonzero(flag)
        upper = s[local] + MARGIN_PER_SCALE * np.asarray(scale[start + local], np.float32)
        return Int8Pass(start, s, p, local + start, upper, flag[local], lower[:0].copy())
    k = min(top_k, n)
    top_lower = np.partition(lower, n - k)[n - k :].copy() if n else lower
    kth = top_lower[0] if n else np.float32(np.inf)  # the partition's element (never NaN-led)
    candidate = np.empty(n, np.bool_)

    def mark(a: int, b: int) -> None:
        margin = MARGIN_PER_SCALE * np.asarray(scale[start + a : start + b], np.float32)
        candidate[a:b] = flag[a:b] | (s[a:b] + margin >= kth)

    run_blocks(n, mark, _PIECE)
    local = np.flatnonzero(candidate)
    upper = s[local] + MARGIN_PER_SCALE * np.asarray(scale[start + local], np.float32)
    return Int8Pass(start, s, p, local + start, upper, flag[local], top_lower)


def int8_rows(passes: list[Int8Pass], top_k: int) -> NDArray[np.int64]:
    """The rows of the whole set whose exact score could change the result (ascending).

    They are the flagged rows and the rows that may be among the ``top_k`` best: at least
    ``top_k`` rows score at least the ``top_k``-th largest lower bound, so a row of the
    exact top ``top_k`` reaches it. Every range kept its own ``top_k`` largest lower bounds
    and the rows reaching its own (lower) bound, so the merge is what one pass finds.
    """
    n = sum(len(p.scores) for p in passes)
    if not n:
        return np.zeros(0, np.int64)
    if top_k <= 0:
        return np.concatenate([p.rows[p.flagged] for p in passes]).astype(np.int64, copy=False)
    k = min(top_k, n)
    lowers = np.concatenate([p.top_lower for p in passes])
    kth = np.partition(lowers, len(lowers) - k)[len(lowers) - k]
    keep = [p.rows[p.flagged | (p.upper >= kth)] for p in passes]
    return np.concatenate(keep).astype(np.int64, copy=False)


class Scanner(Protocol):
    """Passes over every row done elsewhere, with the bits this module's passes give.

    The query engine's Dask cluster path is one
    (:class:`~marscope_stac.engine.cluster.ClusterScorer`).
    """

    def exact(self, q: NDArray[np.float32]) -> NDArray[np.float32]:
        """Every row's exact score."""

    def int8(
        self, q: NDArray[np.float32], logit_scale: float, threshold: float | None, top_k: int
    ) -> list[Int8Pass]:
        """``int8`` passes over ranges covering every row, in row order."""
