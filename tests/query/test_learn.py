"""The classifier learnt from labelled cells (marscope_stac.query.learn)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marscope_stac.core.errors import ConfigError
from marscope_stac.query.learn import background_rows, fit_classifier


def _sphere(rng: np.random.Generator, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    x = centre[None, :] + spread * rng.standard_normal((n, len(centre)))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(3, 20))
def test_it_ranks_the_labelled_kind_first(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    d = 32
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    pos, neg = _sphere(rng, a, k, 0.1), _sphere(rng, b, k, 0.1)
    bg = _sphere(rng, rng.standard_normal(d), 300, 1.0)
    clf = fit_classifier(pos, neg, bg)
    test_pos, test_neg = _sphere(rng, a, 50, 0.1), _sphere(rng, b, 50, 0.1)
    p_pos, p_neg = clf.probability(test_pos @ clf.unit()), clf.probability(test_neg @ clf.unit())
    assert p_pos.min() > p_neg.max()
    assert np.all((p_neg >= 0) & (p_pos <= 1))
    assert (clf.n_positive, clf.n_negative, clf.n_background) == (k, k, 300)


def test_the_text_prior_holds_when_the_labels_say_little() -> None:
    rng = np.random.default_rng(0)
    d = 16
    text = np.eye(d)[0]
    pos = _sphere(rng, np.ones(d), 1, 1.0)  # one uninformative example
    bg = _sphere(rng, rng.standard_normal(d), 200, 1.0)
    near_text = fit_classifier(pos, None, bg, prior=50 * text, l2=1.0)
    assert near_text.unit() @ text > 0.9
    free = fit_classifier(pos, None, bg, l2=1e-4)
    assert free.unit() @ text < near_text.unit() @ text


def test_errors_name_what_is_missing() -> None:
    bg = np.eye(4)
    with pytest.raises(ConfigError, match="needs positive examples"):
        fit_classifier(np.zeros((0, 4)), None, bg)
    with pytest.raises(ConfigError, match="counter-examples or background"):
        fit_classifier(np.eye(4)[:1], None, np.zeros((0, 4)))


def test_background_rows_leave_out_the_labelled_ones() -> None:
    rows = background_rows(5000, np.arange(100))
    assert len(rows) <= 2000 and rows.min() >= 100 and len(np.unique(rows)) == len(rows)
    assert np.array_equal(rows, background_rows(5000, np.arange(100)))  # fixed seed
    assert len(background_rows(10, np.arange(3))) == 7
