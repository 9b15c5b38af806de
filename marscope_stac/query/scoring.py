"""Scoring an embedding set: query vectors, scores, calibrated probabilities, composites.

Everything here works on arrays and cell indexes with numpy; texts and images are turned into
vectors by functions the caller passes (the query engine, which owns the model and its cache).

Query vectors
    Text: MarScope's prompt-ensemble embedding. Examples: the normalised mean of example
    embeddings (cells picked by lon/lat or cell id, or image files). Hybrid: ``w * image +
    (1 - w) * text`` re-normalised (MarScope: w = 0.3). Refinement: Rocchio's update
    ``q + a * mean(positives) - b * mean(negatives)`` re-normalised.
Scores
    Cosine similarity of every cell to the query. ``exact`` scoring reads the float16 vectors
    (float32 arithmetic: the same numbers as a float32 matrix product on the stored values).
    ``int8`` scoring reads the int8 copies (one byte a value) and then re-scores exactly every
    cell whose result could depend on the rounding: cells that may be among the ``top_k`` best
    and cells whose probability may be on either side of the detection threshold, each within
    6 standard deviations of its rounding error, and cells whose probability could move by
    more than :data:`~marscope_stac.query.passes.PROBABILITY_TOLERANCE` (half the products'
    storage step). So the ranking of the best ``top_k`` cells and the detections are those
    of exact scoring, and every probability is within about half a storage step (0.002, to
    first order) of it. (The query engine asks for the ranking of 20,000 cells when it
    writes the scores table, and for none otherwise: then only the few hundred cells near
    the threshold or of uncertain probability are re-scored.) ``auto`` picks ``exact`` up to
    :data:`EXACT_MAX_VALUES` stored values and ``int8`` above. Both read the set in one pass
    (:mod:`marscope_stac.query.passes`), in this process or on a Dask cluster.
Probabilities
    A cell's probability of showing the query is the softmax, at the model's own temperature
    ``t``, of its similarity to the query against its similarities to a fixed set of background
    prompts (plain terrain): ``p = e^(t s_q) / (e^(t s_q) + sum_b e^(t s_b))``, computed as
    ``sigmoid(t s_q - L)`` with ``L = log sum_b e^(t s_b)`` stored per cell. It is 0.5 where the
    query explains the cell as well as all of background does together. A set embedded with a
    calibrated model stores ``a t`` and ``a L - b`` instead (Platt's fix ``sigmoid(a z + b)``
    of that logit ``z``; see :mod:`marscope_stac.eval.calibration`), so the same formula
    gives the calibrated probability.
Composites (on probability maps)
    ``A and not B`` = p_A (1 - p_B); ``A near B within r km`` = p_A * max p_B over cells whose
    centres lie within r km (great circle on the body's sphere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.bodies import chord_length, unit_vectors
from marscope_stac.core.errors import ConfigError
from marscope_stac.core.prompts import MARSCOPE_TEMPLATES, check_phrases
from marscope_stac.grid.grids import Grid
from marscope_stac.index.scan import f16_table, score_rows
from marscope_stac.index.store import ScoringArrays
from marscope_stac.query.passes import (
    Scanner,
    exact_pass,
    int8_pass,
    int8_rows,
    probabilities,
    probabilities_pass,
)

__all__ = [
    "EXACT_MAX_VALUES",
    "SCORING_MODES",
    "QuerySpec",
    "ScoredQuery",
    "and_not",
    "classifier_scores",
    "example_rows",
    "hybrid_vector",
    "near",
    "probabilities",
    "query_vector",
    "score",
]

EXACT_MAX_VALUES = 1 << 27
"""``auto`` scoring reads float16 vectors up to this many stored values (rows x dim)."""

SCORING_MODES = ("auto", "exact", "int8")
"""Scoring modes (see the module docstring)."""

DEFAULT_TOP_K = 20_000
"""Best cells whose ranking ``int8`` scoring keeps exact (MarScope's largest K)."""


@dataclass(kw_only=True)
class QuerySpec:
    """What to look for.

    Attributes:
        text: Text queries (their embeddings are averaged when several are given).
        points: Example locations (lon, lat); each picks the embedded cell containing it.
        cells: Example cell ids.
        images: Example image files (single-band or RGB; scaled to 0..1).
        negatives_points: Counter-examples for refinement (lon, lat).
        negative_cells: Counter-example cell ids.
        image_weight: Weight of the examples in a hybrid query (MarScope: 0.3).
        templates: Prompt templates (MarScope's three by default; empty: none).
        refine_positive: Rocchio weight of the positive examples in refinement.
        refine_negative: Rocchio weight of the negative examples in refinement.
        composite: For a composite's product: the operator and both texts (``op``,
            ``first``, ``second``, ``within_km``); ``text`` then holds its label.
        learner: How examples are learnt from: ``prototype`` (MarScope's hybrid and
            refinement) or ``classifier`` (:mod:`marscope_stac.query.learn`).
    """

    text: list[str] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    negatives_points: list[tuple[float, float]] = field(default_factory=list)
    negative_cells: list[str] = field(default_factory=list)
    image_weight: float = 0.3
    templates: Sequence[str] = MARSCOPE_TEMPLATES
    refine_positive: float = 0.5
    refine_negative: float = 0.5
    composite: dict[str, object] | None = None
    learner: str = "prototype"

    def describe(self) -> dict[str, object]:
        """The query as recorded in products."""
        d: dict[str, object] = {}
        for key in ("text", "points", "cells", "images", "negatives_points", "negative_cells"):
            value = getattr(self, key)
            if value:
                d[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        d["image_weight"] = self.image_weight
        d["templates"] = list(self.templates)
        if self.composite is not None:
            d["composite"] = dict(self.composite)
        if self.negatives_points or self.negative_cells:
            d["refine"] = [self.refine_positive, self.refine_negative]
        if self.learner != "prototype":  # ids of prototype queries stay as they were
            d["learner"] = self.learner
        return d

    @property
    def has_examples(self) -> bool:
        """Whether the query has positive examples (points, cells or images)."""
        return bool(self.points or self.cells or self.images)


@dataclass
class ScoredQuery:
    """Scores and probabilities of every embedded cell.

    Attributes:
        cells: Cell index of each row.
        scores: Cosine similarity to the query.
        probability: Calibrated probability.
        vector: The unit query vector.
        scoring: How the scores were computed (``exact``, ``int8``, or ``composite``).
        exact_rows: Rows scored exactly (all of them for ``exact``).
    """

    cells: NDArray[np.int64]
    scores: NDArray[np.float32]
    probability: NDArray[np.float32]
    vector: NDArray[np.float32]
    scoring: str = "exact"
    exact_rows: int = -1

    def top(self, k: int) -> NDArray[np.int64]:
        """Row numbers of the ``k`` best cells."""
        k = min(k, len(self.scores))
        part = np.argpartition(-self.scores, k - 1)[:k] if k else np.zeros(0, np.int64)
        return part[np.argsort(-self.scores[part], kind="stable")]


def _unit(v: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
    n = float(np.linalg.norm(v))
    if not n > 0:
        raise ConfigError("the query vector is zero; give different examples")
    return (np.asarray(v, np.float64) / n).astype(np.float32)


# ----------------------------------------------------------------------------- scans


def resolve_mode(mode: str, arrays: ScoringArrays) -> str:
    """``exact`` or ``int8`` for a scoring mode and a set (see the module docstring).

    Raises:
        ConfigError: for an unknown mode.
    """
    if mode not in SCORING_MODES:
        raise ConfigError(f"unknown scoring {mode!r}; use one of {', '.join(SCORING_MODES)}")
    if mode == "auto":
        return "exact" if len(arrays) * arrays.dim <= EXACT_MAX_VALUES else "int8"
    return mode


def score(
    arrays: ScoringArrays,
    q: NDArray[np.float32],
    logit_scale: float,
    mode: str = "auto",
    top_k: int = DEFAULT_TOP_K,
    threshold: float | None = None,
    scanner: Scanner | None = None,
    compiled: bool = True,
) -> ScoredQuery:
    """Score every row of a set for the unit query ``q`` and calibrate the scores.

    Args:
        arrays: The set's scoring arrays (with their background term).
        q: Unit query vector.
        logit_scale: The model's temperature.
        mode: ``auto``, ``exact`` or ``int8`` (see the module docstring).
        top_k: With ``int8``: how many best cells keep an exact ranking.
        threshold: With ``int8``: the detection threshold whose crossings stay exact.
        scanner: Makes the passes over every row elsewhere, e.g. on a Dask cluster
            (:class:`marscope_stac.engine.cluster.ClusterScorer`), with the bits this
            process would compute; the rows ``int8`` re-scores exactly are read here.
        compiled: With ``int8`` in this process: scan with the compiled kernel, else with
            numpy (see :func:`~marscope_stac.index.scan.int8_block`).

    Raises:
        ConfigError: for an unknown mode.
    """
    if arrays.background is None:
        raise ConfigError("the embedding set has no background term; open it with its model")
    q = np.ascontiguousarray(q, np.float32)
    bg = np.asarray(arrays.background)
    cells = np.asarray(arrays.cells)
    n = len(arrays)
    how = resolve_mode(mode, arrays)
    if how == "exact" or n == 0:
        if scanner is not None and n:
            s = scanner.exact(q)
            prob = probabilities_pass(s, bg, logit_scale)
        else:
            s, prob = exact_pass(arrays.vectors, bg, q, logit_scale)
        return ScoredQuery(cells, s, prob, q, how, n)
    if scanner is not None:
        passes = scanner.int8(q, logit_scale, threshold, top_k)
    else:
        passes = [
            int8_pass(
                arrays.int8, arrays.scale, bg, (0, n), q, logit_scale, threshold, top_k, compiled
            )
        ]
    s = passes[0].scores if len(passes) == 1 else np.concatenate([p.scores for p in passes])
    given = [p.probability for p in passes]
    if len(given) == 1 and given[0] is not None:
        prob = given[0]
    else:
        prob = probabilities_pass(s, bg, logit_scale)
    rows = int8_rows(passes, top_k)
    s[rows] = score_rows(arrays, q, rows)
    prob[rows] = probabilities(s[rows], bg[rows], logit_scale)
    return ScoredQuery(cells, s, prob, q, how, len(rows))


# ----------------------------------------------------------------------------- query vectors


def _rows_for_points(
    arrays: ScoringArrays, grid: Grid, points: Sequence[tuple[float, float]], what: str
) -> list[int]:
    for lon, lat in points:
        if not (-360 <= lon <= 360 and -90 <= lat <= 90):
            raise ConfigError(f"{what} ({lon}, {lat}) is not a lon/lat position")
    if not points:
        return []
    cells = grid.locate(
        np.array([p[0] for p in points], np.float64), np.array([p[1] for p in points], np.float64)
    )
    rows = np.where(cells >= 0, arrays.rows_of(np.maximum(cells, 0)), -1)
    for (plon, plat), r in zip(points, rows.tolist(), strict=True):
        if r < 0:
            raise ConfigError(
                f"{what} ({plon}, {plat}) is outside the embedded area; pick a point with imagery"
            )
    return [int(r) for r in rows]


def _rows_for_cells(arrays: ScoringArrays, grid: Grid, ids: Sequence[str], what: str) -> list[int]:
    rows = []
    for cid in ids:
        r = int(arrays.rows_of(np.array([grid.parse_cell_id(cid)]))[0])
        if r < 0:
            raise ConfigError(f"{what} {cid} is not in the embedding set (no imagery there)")
        rows.append(r)
    return rows


def example_rows(
    arrays: ScoringArrays,
    grid: Grid,
    points: Sequence[tuple[float, float]],
    cells: Sequence[str],
    what: str = "example",
) -> list[int]:
    """Rows of example cells given by lon/lat points and by cell ids.

    Raises:
        ConfigError: for a position outside the set or an unknown cell id.
    """
    rows = _rows_for_points(arrays, grid, points, f"{what} point")
    return rows + _rows_for_cells(arrays, grid, cells, f"{what} cell")


def _row_vectors(arrays: ScoringArrays, rows: Sequence[int]) -> NDArray[np.float32]:
    idx = np.asarray(sorted(rows), np.int64)
    return np.take(f16_table(), arrays.vector_rows(idx).view(np.uint16))


TextVectors = Callable[[Sequence[str], Sequence[str]], NDArray[np.float32]]
"""``(phrases, templates) -> (n, dim)`` unit vectors."""
ImageVectors = Callable[[Sequence[str]], NDArray[np.float32]]
"""``(image paths) -> (n, dim)`` unit vectors."""


def query_vector(
    spec: QuerySpec,
    arrays: ScoringArrays,
    grid: Grid,
    text_vectors: TextVectors,
    image_vectors: ImageVectors,
) -> NDArray[np.float32]:
    """The unit query vector of ``spec`` (see the module docstring).

    Raises:
        ConfigError: for an empty or overlong text, a bad weight, examples outside the set, or
            nothing to look for.
    """
    if spec.text:
        check_phrases(spec.text)
    if not 0.0 <= spec.image_weight <= 1.0:
        raise ConfigError(f"image weight {spec.image_weight} must be in [0, 1]")
    rows = example_rows(arrays, grid, spec.points, spec.cells)
    neg_rows = example_rows(
        arrays, grid, spec.negatives_points, spec.negative_cells, "counter-example"
    )
    text = _unit(text_vectors(spec.text, spec.templates).mean(axis=0)) if spec.text else None
    examples = list(_row_vectors(arrays, rows)) if rows else []
    if spec.images:
        examples += list(image_vectors(spec.images))
    negatives = _row_vectors(arrays, neg_rows) if neg_rows else None
    return hybrid_vector(text, examples, negatives, spec)


def hybrid_vector(
    text: NDArray[np.float32] | None,
    examples: Sequence[NDArray[np.float32]],
    negatives: NDArray[np.float32] | None,
    spec: QuerySpec,
) -> NDArray[np.float32]:
    """MarScope's prototype: the text and the examples' mean, refined by counter-examples.

    ``q = unit(w * unit(mean(examples)) + (1 - w) * text)`` with ``w = spec.image_weight``
    (the text or the examples alone when only one is given), then, with counter-examples,
    Rocchio's ``unit(q + a * mean(examples) - b * mean(counter-examples))``.

    Raises:
        ConfigError: with neither text nor examples.
    """
    image = _unit(np.mean(examples, axis=0)) if len(examples) else None
    if text is None and image is None:
        raise ConfigError("nothing to look for: give query text, example points, cells or images")
    if text is not None and image is not None:
        q = _unit(spec.image_weight * image + (1.0 - spec.image_weight) * text)
    else:
        q = text if text is not None else image  # type: ignore[assignment]
    if negatives is not None and len(negatives):
        pos = np.mean(examples, axis=0) if len(examples) else np.zeros_like(q)
        q = _unit(q + spec.refine_positive * pos - spec.refine_negative * negatives.mean(axis=0))
    return q


def classifier_scores(
    spec: QuerySpec,
    arrays: ScoringArrays,
    grid: Grid,
    text_vectors: TextVectors,
    image_vectors: ImageVectors,
    logit_scale: float,
) -> ScoredQuery:
    """Scores and probabilities from a classifier fitted on ``spec``'s examples (exact scores).

    See :mod:`marscope_stac.query.learn`: positives are the example points, cells and images,
    negatives the counter-examples and a background sample; the text, if any, is the prior.

    Raises:
        ConfigError: without positive examples, or for examples outside the set.
    """
    from marscope_stac.query.learn import background_rows, fit_classifier

    if spec.text:
        check_phrases(spec.text)
    rows = example_rows(arrays, grid, spec.points, spec.cells)
    neg_rows = example_rows(
        arrays, grid, spec.negatives_points, spec.negative_cells, "counter-example"
    )
    positives = [*_row_vectors(arrays, rows)] if rows else []
    if spec.images:
        positives += list(image_vectors(spec.images))
    if not positives:
        raise ConfigError(
            "the classifier learns from examples: give example points, cells or images"
        )
    text = _unit(text_vectors(spec.text, spec.templates).mean(axis=0)) if spec.text else None
    taken = np.asarray(rows + neg_rows, np.int64)
    bg = _row_vectors(arrays, background_rows(len(arrays), taken).tolist())
    clf = fit_classifier(
        np.asarray(positives),
        _row_vectors(arrays, neg_rows) if neg_rows else None,
        bg,
        prior=None if text is None else np.float32(logit_scale) * text,
    )
    # exact scores: int8's re-scored rows are chosen by the text calibration, not this one
    scored = score(arrays, clf.unit(), logit_scale, "exact")
    scored.probability = clf.probability(scored.scores)
    scored.scoring = f"{scored.scoring}+classifier"
    return scored


# ----------------------------------------------------------------------------- composites


def and_not(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Probability of A and not B (independence assumed)."""
    return (a * (1.0 - b)).astype(np.float32)


def near(
    a: NDArray[np.float32],
    b: NDArray[np.float32],
    centres_lonlat: NDArray[np.float64],
    radius_km: float,
    body_radius_m: float,
    floor: float = 1e-3,
) -> NDArray[np.float32]:
    """Probability of A with B nearby: p_A * max p_B within ``radius_km`` of each cell.

    Only cells where p_A and p_B reach ``floor`` take part (a product below it rounds to
    zero in the products), so sparse maps of whole planets stay cheap.

    Raises:
        ConfigError: for a radius that is not positive.
    """
    from scipy.spatial import cKDTree

    if not radius_km > 0:
        raise ConfigError(f"radius {radius_km} km must be positive")
    out = np.zeros(len(a), np.float32)
    rows_a = np.flatnonzero(a >= floor)
    rows_b = np.flatnonzero(b >= floor)
    if not len(rows_a) or not len(rows_b):
        return out
    xyz = unit_vectors(centres_lonlat)
    tree = cKDTree(xyz[rows_b])
    chord = chord_length(radius_km * 1000.0 / body_radius_m)
    pb = b[rows_b]
    for k, hits in zip(rows_a.tolist(), tree.query_ball_point(xyz[rows_a], chord), strict=True):
        if hits:
            out[k] = a[k] * pb[hits].max()
    return out
