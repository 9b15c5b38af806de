"""Passes over ranges of rows merge into what one pass over the set gives."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from marscope_stac.index.scan import BLOCK_ROWS
from marscope_stac.index.table import quantize_int8
from marscope_stac.query.passes import int8_pass, int8_rows


def _arrays(n: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, 32)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    codes, scale = quantize_int8(e.astype(np.float16))
    background = rng.normal(8.0, 1.0, n).astype(np.float32)
    q = rng.standard_normal(32).astype(np.float32)
    return codes, scale, background, q / np.linalg.norm(q)


@settings(max_examples=25, deadline=None)
@given(
    blocks=st.integers(1, 9),
    tail=st.integers(0, BLOCK_ROWS - 1),
    cuts=st.lists(st.integers(1, 8), max_size=4),
    top_k=st.sampled_from([0, 1, 5, 300, 5000, 100_000]),
    threshold=st.sampled_from([None, 0.0, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 3),
)
def test_ranges_merge_to_one_pass(
    blocks: int, tail: int, cuts: list[int], top_k: int, threshold: float | None, seed: int
) -> None:
    n = blocks * BLOCK_ROWS + tail
    codes, scale, background, q = _arrays(n, seed)
    whole = int8_pass(codes, scale, background, (0, n), q, 30.0, threshold, top_k)
    edges = sorted({0, n, *(min(c * BLOCK_ROWS, n) for c in cuts)})
    parts = [
        int8_pass(codes, scale, background, (a, b), q, 30.0, threshold, top_k)
        for a, b in itertools.pairwise(edges)
    ]
    assert np.array_equal(np.concatenate([p.scores for p in parts]), whole.scores)
    np.testing.assert_array_equal(int8_rows(parts, top_k), int8_rows([whole], top_k))


def test_a_nan_row_does_not_hide_the_best_rows() -> None:
    n = 20_000
    codes, scale, background, q = _arrays(n, 0)
    background[:] = 1000.0  # every probability ~0: only the best-rows test picks candidates
    clean = int8_rows([int8_pass(codes, scale, background, (0, n), q, 30.0, None, 20)], 20)
    scale = scale.copy()
    scale[100] = np.nan
    found = int8_rows([int8_pass(codes, scale, background, (0, n), q, 30.0, None, 20)], 20)
    assert len(clean) >= 20 and set(clean.tolist()) <= set(found.tolist())


def test_without_a_ranking_only_the_flagged_rows_are_re_scored() -> None:
    n = 3 * BLOCK_ROWS
    codes, scale, background, q = _arrays(n, 5)
    ranked = int8_pass(codes, scale, background, (0, n), q, 30.0, 0.5, 5000)
    plain = int8_pass(codes, scale, background, (0, n), q, 30.0, 0.5, 0)
    assert np.array_equal(plain.scores, ranked.scores)
    flagged = ranked.rows[ranked.flagged]
    assert np.array_equal(int8_rows([plain], 0), flagged)
    assert len(int8_rows([ranked], 5000)) >= 5000 > len(flagged) > 0
