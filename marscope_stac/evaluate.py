"""Global geo-localisation evaluation (the MarScope protocol) on arrays of cell scores.

Rank all cells by score and take the top K. Recall@K is the share of catalogue points with a
retrieved cell within radius r (great-circle, degrees); precision@K is the share of retrieved
cells within r of any point. The headline figures are the best F1 over K (F1@K*) and the area
under the precision-recall curve (AUPRC).

MarScope sweeps K in steps of 200 up to 20,000 over 1.44 million 0.2-degree cells with
r = 0.5 degree (2.5 cells). On small areas like the demo world this module sweeps every K
(1..n cells) and scales r with the grid: ``radius_cells`` cells (2.5 by default), i.e.
0.05 degree on the 0.02-degree demo grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
import shapely.affinity
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from shapely.geometry.base import BaseGeometry

from marscope_stac.errors import ConfigError

__all__ = [
    "PARAPHRASES",
    "RetrievalScore",
    "curve_from_neighbours",
    "neighbours_of_shapes",
    "retrieval_curve",
    "score_retrieval",
]

PARAPHRASES: dict[str, str] = {
    "alluvial_fan": "a triangular apron of sediment deposited where a canyon opens onto a plain",
    "glacier_like_form": "an ice-rich tongue of debris creeping down from an alcove",
    "landslide": "the collapsed debris of a failed slope spreading across the floor",
    "pitted_cone": "small mounds with a crater on each summit",
    "yardang": "streamlined ridges sculpted by wind erosion",
    "impact_crater": "a circular depression with a raised rim made by a meteorite",
    "dune_field": "dark wind-blown sand piled into ripples and crescents",
    "channel": "a winding trough carved by ancient water flow",
    "plains": "smooth flat ground with only tiny craters",
}
"""Queries phrased differently from the demo world's training captions, one per class."""


def _unit(lonlat: NDArray[np.float64]) -> NDArray[np.float64]:
    lon, lat = np.radians(lonlat[:, 0]), np.radians(lonlat[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def _chord(radius_deg: float) -> float:
    return float(2.0 * np.sin(np.radians(radius_deg) / 2.0))


@dataclass
class RetrievalScore:
    """The protocol's figures for one query."""

    best_f1: float
    best_k: int
    precision: float
    recall: float
    auprc: float
    n_points: int
    n_cells: int
    radius_deg: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict (for tables and JSON)."""
        return dict(self.__dict__)


def retrieval_curve(
    scores: ArrayLike,
    cell_lonlat: ArrayLike,
    points_lonlat: ArrayLike,
    radius_deg: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Precision and recall at every K = 1..n cells (cells ranked by descending score)."""
    s = np.asarray(scores, dtype=np.float64)
    cells = np.asarray(cell_lonlat, dtype=np.float64).reshape(-1, 2)
    pts = np.asarray(points_lonlat, dtype=np.float64).reshape(-1, 2)
    if len(s) != len(cells):
        raise ConfigError(f"{len(s)} scores for {len(cells)} cells")
    if not len(pts):
        raise ConfigError("no ground-truth points to evaluate against")
    if radius_deg <= 0:
        raise ConfigError(f"radius {radius_deg} must be positive")
    tree = cKDTree(_unit(cells))
    near = tree.query_ball_point(_unit(pts), _chord(radius_deg))
    return curve_from_neighbours(s, list(near))


def neighbours_of_shapes(
    cell_lonlat: ArrayLike, shapes: Sequence[BaseGeometry], radius_deg: float
) -> list[NDArray[np.int64]]:
    """For each ground-truth outline, the cells whose centre lies within ``radius_deg`` of it.

    Distances are planar in lon/lat degrees, with the east-west scale corrected by cos(lat)
    of the cell: good for the small radii used here, away from the poles.
    """
    cells = np.asarray(cell_lonlat, dtype=np.float64).reshape(-1, 2)
    out = []
    for shape in shapes:
        lat0 = float(shape.centroid.y)
        k = max(np.cos(np.radians(lat0)), 1e-6)
        minx, miny, maxx, maxy = shape.bounds
        pad_x, pad_y = radius_deg / k, radius_deg
        cand = np.flatnonzero(
            (cells[:, 0] >= minx - pad_x)
            & (cells[:, 0] <= maxx + pad_x)
            & (cells[:, 1] >= miny - pad_y)
            & (cells[:, 1] <= maxy + pad_y)
        )
        scaled = shapely.affinity.scale(shape, xfact=k, yfact=1.0, origin=(0, 0))
        pts = shapely.points(cells[cand, 0] * k, cells[cand, 1])
        hit = shapely.dwithin(pts, scaled, radius_deg)
        out.append(cand[hit].astype(np.int64))
    return out


def curve_from_neighbours(
    scores: ArrayLike, near: Sequence[ArrayLike]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Precision and recall at every K given, per ground-truth object, its nearby cells."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(near):
        raise ConfigError("no ground-truth objects to evaluate against")
    order = np.argsort(-s, kind="stable")
    rank = np.empty(len(s), np.int64)
    rank[order] = np.arange(len(s))
    # recall: an object is found once its best-ranked nearby cell is retrieved
    idx = [np.asarray(n, np.int64) for n in near]
    first = np.array([rank[n].min() if n.size else len(s) for n in idx])
    found_at = np.bincount(first[first < len(s)], minlength=len(s))
    recall = np.cumsum(found_at) / len(near)
    # precision: retrieved cells near any object
    hit = np.zeros(len(s), bool)
    for n in idx:
        hit[n] = True
    precision = np.cumsum(hit[order]) / np.arange(1, len(s) + 1)
    return precision, recall


def score_retrieval(
    scores: ArrayLike,
    cell_lonlat: ArrayLike,
    points_lonlat: ArrayLike | None,
    radius_deg: float,
    max_k: int | None = None,
    shapes: Sequence[BaseGeometry] | None = None,
) -> RetrievalScore:
    """Best F1 over K, its K, precision and recall there, and AUPRC (see the module docstring).

    Ground truth is points (the published protocol) or, with ``shapes``, outlines: then a
    cell counts as correct within ``radius_deg`` of any outline, and an outline is found when
    one such cell is retrieved.
    """
    if shapes is not None:
        if radius_deg < 0:
            raise ConfigError(f"radius {radius_deg} must not be negative")
        near = neighbours_of_shapes(cell_lonlat, shapes, radius_deg)
        precision, recall = curve_from_neighbours(scores, near)
        n_obj = len(shapes)
    else:
        if points_lonlat is None:
            raise ConfigError("give ground-truth points or shapes")
        precision, recall = retrieval_curve(scores, cell_lonlat, points_lonlat, radius_deg)
        n_obj = int(np.asarray(points_lonlat).size // 2)
    if max_k is not None:
        precision, recall = precision[:max_k], recall[:max_k]
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall + 1e-12), 0.0
    )
    k = int(np.argmax(f1))
    # AUPRC: step integration of precision over recall increments
    d_recall = np.diff(np.concatenate([[0.0], recall]))
    auprc = float(np.sum(precision * d_recall))
    return RetrievalScore(
        best_f1=float(f1[k]),
        best_k=k + 1,
        precision=float(precision[k]),
        recall=float(recall[k]),
        auprc=auprc,
        n_points=n_obj,
        n_cells=len(precision),
        radius_deg=float(radius_deg),
    )
