"""Passes over ranges of rows merge into what one pass over the set gives."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
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
    compiled=st.booleans(),
)
def test_ranges_merge_to_one_pass(
    blocks: int,
    tail: int,
    cuts: list[int],
    top_k: int,
    threshold: float | None,
    seed: int,
    compiled: bool,
) -> None:
    n = blocks * BLOCK_ROWS + tail
    codes, scale, background, q = _arrays(n, seed)
    args = (q, 30.0, threshold, top_k, compiled)
    whole = int8_pass(codes, scale, background, (0, n), *args)
    edges = sorted({0, n, *(min(c * BLOCK_ROWS, n) for c in cuts)})
    parts = [int8_pass(codes, scale, background, span, *args) for span in itertools.pairwise(edges)]
    assert np.array_equal(np.concatenate([p.scores for p in parts]), whole.scores)
    np.testing.assert_array_equal(int8_rows(parts, top_k), int8_rows([whole], top_k))


def test_the_compiled_and_numpy_scans_agree_within_float32_rounding() -> None:
    n = 2 * BLOCK_ROWS + 77
    codes, scale, background, q = _arrays(n, 9)
    fast = int8_pass(codes, scale, background, (0, n), q, 30.0, 0.5, 100, True)
    plain = int8_pass(codes, scale, background, (0, n), q, 30.0, 0.5, 100, False)
    reference = (codes.astype(np.float64) @ q.astype(np.float64)) * scale
    np.testing.assert_allclose(fast.scores, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(plain.scores, reference, rtol=0, atol=1e-5)
    # the rows either scan re-scores exactly are the same but for rows at a bound's edge
    a, b = set(int8_rows([fast], 100).tolist()), set(int8_rows([plain], 100).tolist())
    assert len(a ^ b) <= 2


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


def test_the_int8_kernel_refuses_rows_that_do_not_fit_and_compiles_without_a_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numba

    from marscope_stac.index import kernels

    with pytest.raises(ValueError, match="do not fit"):
        kernels.int8_scores(
            np.ones((4, 64), np.int8), np.ones(4, np.float32), np.ones(16, np.float32)
        )
    with pytest.raises(ValueError, match="do not fit"):
        kernels.int8_scores(
            np.ones((4, 16), np.int8), np.ones(3, np.float32), np.ones(16, np.float32)
        )
    real = numba.njit

    def no_cache(*args: object, **kw: object) -> object:
        if kw.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kw)

    monkeypatch.setattr(numba, "njit", no_cache)
    kernel = kernels._compile_int8()  # a read-only install and no home: compiled here
    out = np.empty(3, np.float32)
    codes = np.arange(48, dtype=np.int8).reshape(3, 16)
    codes.flags.writeable = False
    ones = np.ones(16, np.float32)
    ones.flags.writeable = False
    scale = np.full(3, 0.5, np.float32)
    scale.flags.writeable = False
    kernel(codes, scale, ones, out)
    np.testing.assert_allclose(out, codes.sum(axis=1) * 0.5)
