from __future__ import annotations

import numpy as np
import pytest

from marscope_stac.core.errors import ConfigError
from marscope_stac.eval.evaluate import retrieval_curve, score_retrieval


def _cells() -> np.ndarray:
    lon, lat = np.meshgrid(np.arange(0, 2, 0.02) + 0.01, np.arange(0, 1, 0.02) + 0.01)
    return np.column_stack([lon.ravel(), lat.ravel()])


def test_perfect_ranking_scores_one() -> None:
    cells = _cells()
    points = cells[[10, 500, 2000]]
    scores = np.zeros(len(cells))
    scores[[10, 500, 2000]] = 1.0
    res = score_retrieval(scores, cells, points, radius_deg=0.005)
    assert res.best_f1 == pytest.approx(1.0) and res.best_k == 3
    assert res.auprc == pytest.approx(1.0)


def test_radius_counts_neighbours_and_random_is_worse() -> None:
    cells = _cells()
    points = cells[[1010, 3030]]
    near = np.linalg.norm(cells[:, None] - points[None], axis=2).min(axis=1)
    good = -near
    res = score_retrieval(good, cells, points, radius_deg=0.05)
    assert res.best_f1 == pytest.approx(1.0)
    rand = score_retrieval(np.random.default_rng(0).uniform(size=len(cells)), cells, points, 0.05)
    assert rand.best_f1 < 0.5
    precision, recall = retrieval_curve(good, cells, points, 0.05)
    assert recall[-1] == 1.0 and precision[0] == 1.0
    assert np.all(np.diff(recall) >= 0)


def test_bad_arguments() -> None:
    cells = _cells()
    with pytest.raises(ConfigError, match="no ground-truth"):
        score_retrieval(np.zeros(len(cells)), cells, np.zeros((0, 2)), 0.1)
    with pytest.raises(ConfigError, match="scores for"):
        score_retrieval(np.zeros(3), cells, cells[:1], 0.1)
    with pytest.raises(ConfigError, match="positive"):
        score_retrieval(np.zeros(len(cells)), cells, cells[:1], 0.0)


def test_outline_protocol() -> None:
    from shapely.geometry import box

    cells = _cells()
    shapes = [box(0.5, 0.5, 0.56, 0.52), box(1.5, 0.2, 1.52, 0.26)]
    inside = np.array(
        [
            s.buffer(0.01).contains(__import__("shapely").Point(x, y))
            for x, y in cells
            for s in shapes[:1]
        ]
    )
    inside2 = np.array(
        [shapes[1].buffer(0.01).contains(__import__("shapely").Point(x, y)) for x, y in cells]
    )
    scores = (inside | inside2).astype(float)
    res = score_retrieval(scores, cells, None, 0.01, shapes=shapes)
    assert res.best_f1 == pytest.approx(1.0) and res.n_points == 2
    only_one = score_retrieval(inside.astype(float), cells, None, 0.01, shapes=shapes)
    assert only_one.recall == pytest.approx(0.5)
