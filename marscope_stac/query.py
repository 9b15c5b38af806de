"""Queries over an embedding set: scores, calibrated probabilities, refinement, composites.

Everything here works on arrays and cell indexes (plus a model to embed text and images).

Query vectors
    Text: MarScope's prompt-ensemble embedding. Examples: the normalised mean of example
    embeddings (cells picked by lon/lat or cell id, or image files). Hybrid: ``w * image +
    (1 - w) * text`` re-normalised (MarScope: w = 0.3). Refinement: Rocchio's update
    ``q + a * mean(positives) - b * mean(negatives)`` re-normalised.
Probabilities
    A cell's probability of showing the query is the softmax, at the model's own temperature
    (``logit_scale``), of its similarity to the query against its similarities to a fixed
    set of background prompts (plain terrain): p = e^(t s_q) / (e^(t s_q) + sum_b e^(t s_b)).
    It is 0.5 where the query explains the cell as well as all of background does together.
    The default detection threshold is 0.5; any threshold in [0, 1] can be chosen.
Composites (on probability maps)
    ``A and not B`` = p_A (1 - p_B); ``A near B within r km`` = p_A * max p_B over cells whose
    centres lie within r km (great circle on the body's sphere).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from marscope_stac.errors import ConfigError
from marscope_stac.grid import Grid
from marscope_stac.models import MARSCOPE_TEMPLATES, ClipModel
from marscope_stac.store import EmbeddingTable

__all__ = [
    "BACKGROUND_PROMPTS",
    "QuerySpec",
    "ScoredQuery",
    "and_not",
    "near",
    "probabilities",
    "query_vector",
    "run_query",
]

BACKGROUND_PROMPTS: tuple[str, ...] = (
    "plains",
    "smooth plains with small craters",
    "flat featureless terrain",
    "dusty ground",
)
"""What a cell is compared against when its probability is computed."""

MAX_QUERY_CHARS = 300


@dataclass
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

    def describe(self) -> dict[str, object]:
        """The query as recorded in products."""
        d: dict[str, object] = {}
        for key in ("text", "points", "cells", "images", "negatives_points", "negative_cells"):
            value = getattr(self, key)
            if value:
                d[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        d["image_weight"] = self.image_weight
        d["templates"] = list(self.templates)
        return d


@dataclass
class ScoredQuery:
    """Scores and probabilities of every embedded cell."""

    cells: NDArray[np.int64]
    scores: NDArray[np.float32]
    probability: NDArray[np.float32]
    vector: NDArray[np.float32]

    def top(self, k: int) -> NDArray[np.int64]:
        """Row numbers of the ``k`` best cells."""
        k = min(k, len(self.scores))
        part = np.argpartition(-self.scores, k - 1)[:k] if k else np.zeros(0, np.int64)
        return part[np.argsort(-self.scores[part], kind="stable")]


def _unit(v: NDArray[np.float32]) -> NDArray[np.float32]:
    n = float(np.linalg.norm(v))
    if n == 0:
        raise ConfigError("the query vector is zero; give different examples")
    return (v / n).astype(np.float32)


def _rows_for_points(
    table: EmbeddingTable, grid: Grid, points: Sequence[tuple[float, float]], what: str
) -> list[int]:
    rows = []
    lookup = {int(c): i for i, c in enumerate(table.cell_index.tolist())}
    for lon, lat in points:
        if not (-360 <= lon <= 360 and -90 <= lat <= 90):
            raise ConfigError(f"{what} ({lon}, {lat}) is not a lon/lat position")
        lon_n = (lon + 180.0) % 360.0 - 180.0
        idx = grid.cells_in_bbox(lon_n - 1e-9, lat - 1e-9, lon_n + 1e-9, lat + 1e-9)
        hit = [lookup[int(c)] for c in idx if int(c) in lookup]
        if not hit:
            raise ConfigError(
                f"{what} ({lon}, {lat}) is outside the embedded area; pick a point with imagery"
            )
        rows.append(hit[0])
    return rows


def _rows_for_cells(table: EmbeddingTable, grid: Grid, ids: Sequence[str], what: str) -> list[int]:
    lookup = {int(c): i for i, c in enumerate(table.cell_index.tolist())}
    rows = []
    for cid in ids:
        idx = grid.parse_cell_id(cid)
        if idx not in lookup:
            raise ConfigError(f"{what} {cid} is not in the embedding set (no imagery there)")
        rows.append(lookup[idx])
    return rows


def _image_vectors(model: ClipModel, paths: Sequence[str]) -> NDArray[np.float32]:
    from PIL import Image, UnidentifiedImageError

    from marscope_stac.errors import DataError

    imgs = []
    for p in paths:
        try:
            with Image.open(p) as im:
                g = im.convert("L").resize((model.image_size, model.image_size))
                imgs.append(np.asarray(g, np.float32) / 255.0)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read example image {p}: {exc}") from exc
    return model.encode_images(np.stack(imgs))


def query_vector(
    model: ClipModel, table: EmbeddingTable, grid: Grid, spec: QuerySpec
) -> NDArray[np.float32]:
    """The unit query vector of ``spec`` (see the module docstring)."""
    for t in spec.text:
        if not t or not t.strip():
            raise ConfigError("empty query text; type what to look for, e.g. 'alluvial fans'")
        if len(t) > MAX_QUERY_CHARS:
            raise ConfigError(
                f"query text of {len(t)} characters is too long "
                f"(at most {MAX_QUERY_CHARS}); describe the landform briefly"
            )
    if not 0.0 <= spec.image_weight <= 1.0:
        raise ConfigError(f"image weight {spec.image_weight} must be in [0, 1]")
    text = (
        _unit(model.encode_queries(spec.text, spec.templates).mean(axis=0)) if spec.text else None
    )
    rows = _rows_for_points(table, grid, spec.points, "example point")
    rows += _rows_for_cells(table, grid, spec.cells, "example cell")
    examples = [table.embedding[r] for r in rows]
    if spec.images:
        examples += list(_image_vectors(model, spec.images))
    image = _unit(np.mean(examples, axis=0)) if examples else None
    if text is None and image is None:
        raise ConfigError("nothing to look for: give query text, example points, cells or images")
    if text is not None and image is not None:
        q = _unit(spec.image_weight * image + (1.0 - spec.image_weight) * text)
    else:
        q = text if text is not None else image  # type: ignore[assignment]
    neg_rows = _rows_for_points(table, grid, spec.negatives_points, "counter-example point")
    neg_rows += _rows_for_cells(table, grid, spec.negative_cells, "counter-example cell")
    if neg_rows:
        pos = np.mean(examples, axis=0) if examples else np.zeros_like(q)
        neg = table.embedding[neg_rows].mean(axis=0)
        q = _unit(q + spec.refine_positive * pos - spec.refine_negative * neg)
    return q


def probabilities(
    model: ClipModel,
    embedding: NDArray[np.float32],
    scores: NDArray[np.float32],
    background: Sequence[str] = BACKGROUND_PROMPTS,
) -> NDArray[np.float32]:
    """Calibrated probability of each cell (softmax against background prompts)."""
    t = model.logit_scale
    bg = model.encode_queries(list(background), MARSCOPE_TEMPLATES)
    bg_scores = embedding @ bg.T  # (n, n_bg)
    m = np.maximum(scores, bg_scores.max(axis=1))
    num = np.exp(t * (scores - m))
    den = num + np.exp(t * (bg_scores - m[:, None])).sum(axis=1)
    return (num / den).astype(np.float32)


def run_query(model: ClipModel, table: EmbeddingTable, grid: Grid, spec: QuerySpec) -> ScoredQuery:
    """Score every embedded cell for ``spec`` and calibrate the scores to probabilities."""
    q = query_vector(model, table, grid, spec)
    scores = (table.embedding @ q).astype(np.float32)
    return ScoredQuery(table.cell_index, scores, probabilities(model, table.embedding, scores), q)


def and_not(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Probability of A and not B (independence assumed)."""
    return (a * (1.0 - b)).astype(np.float32)


def near(
    a: NDArray[np.float32],
    b: NDArray[np.float32],
    centres_lonlat: NDArray[np.float64],
    radius_km: float,
    body_radius_m: float,
) -> NDArray[np.float32]:
    """Probability of A with B nearby: p_A * max p_B within ``radius_km`` of each cell."""
    if radius_km <= 0:
        raise ConfigError(f"radius {radius_km} km must be positive")
    lon, lat = np.radians(centres_lonlat[:, 0]), np.radians(centres_lonlat[:, 1])
    xyz = np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    chord = 2.0 * np.sin(radius_km * 1000.0 / body_radius_m / 2.0)
    tree = cKDTree(xyz)
    best = np.array([b[idx].max() for idx in tree.query_ball_point(xyz, chord)], np.float32)
    return (a * best).astype(np.float32)
