"""Detections: edge-connected cells at or above a threshold, as polygons with attributes.

A planet's answer for a common landform has tens or hundreds of thousands of detections, so
they are built and kept as arrays (:class:`Detections` over
:class:`~marscope_stac.products.polygons.PolygonArrays`): components that fill their bounding
box (most of them: single cells, short runs) become rectangles directly, and only the others
are traced by GDAL; no Python object is made per detection unless one is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray

from marscope_stac.grid.grids import Grid
from marscope_stac.products.polygons import PolygonArrays

__all__ = ["DETECTION_FIELDS", "Detections", "detections", "label_detections", "raster_detections"]

DETECTION_FIELDS = ("max_probability", "mean_probability", "cells")
"""Attributes of every detection: highest and mean probability of its cells, their number."""


@dataclass(frozen=True, eq=False)
class Detections(Sequence[tuple[Any, dict[str, float]]]):
    """Polygons and their attributes, column by column, best first.

    Also a sequence of ``(shapely geometry, {attribute: value})`` pairs, made on request.

    Attributes:
        polygons: The polygons in the body's lon/lat degrees.
        columns: Attribute name -> one value per polygon.
    """

    polygons: PolygonArrays
    columns: dict[str, NDArray[Any]]

    def __len__(self) -> int:
        return len(self.polygons)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.geometry[i], {k: v[i].item() for k, v in self.columns.items()}

    def __iter__(self) -> Iterator[tuple[Any, dict[str, float]]]:
        return (self[i] for i in range(len(self)))

    @cached_property
    def geometry(self) -> NDArray[Any]:
        """One shapely Polygon or MultiPolygon per detection (made on first use)."""
        return self.polygons.to_shapely()

    @classmethod
    def empty(cls) -> Detections:
        """No detections (with the attributes of :func:`raster_detections`)."""
        return cls(
            PolygonArrays.empty(),
            {k: np.zeros(0, np.int64 if k == "cells" else np.float64) for k in DETECTION_FIELDS},
        )

    @classmethod
    def from_features(cls, features: Sequence[tuple[Any, dict[str, float]]]) -> Detections:
        """Detections of ``(geometry, attributes)`` pairs (every pair with the same keys)."""
        if isinstance(features, Detections):
            return features
        keys = list(features[0][1]) if features else list(DETECTION_FIELDS)
        columns = {k: np.asarray([p[k] for _, p in features]) for k in keys}
        polygons = PolygonArrays.from_shapely([g for g, _ in features])
        return cls(polygons, columns)

    def geometry_types(self) -> list[str]:
        """GeoParquet geometry types present: Polygon and/or MultiPolygon."""
        n_parts = np.diff(self.polygons.features)
        kinds = {"Polygon": bool((n_parts == 1).any()), "MultiPolygon": bool((n_parts != 1).any())}
        return [k for k, present in kinds.items() if present]


def detections(
    grid: Grid, cells: NDArray[np.int64], probability: NDArray[np.float32], threshold: float
) -> Detections:
    """Merge edge-adjacent cells at or above ``threshold`` into polygons with attributes.

    See :func:`raster_detections`, which does the work on the probability raster.
    """
    from marscope_stac.products.render import cells_to_raster

    if not (np.asarray(probability) >= threshold).any():
        return Detections.empty()
    values, transform = cells_to_raster(grid, cells, probability)
    return raster_detections(values, transform, threshold)


def label_detections(
    values: NDArray[np.float32], threshold: float
) -> tuple[NDArray[np.int32], int]:
    """Each pixel's component (edge-connected pixels at or above ``threshold``; 0: none)."""
    from scipy import ndimage

    labels, n = ndimage.label(np.greater_equal(values, threshold))  # NaN is never one
    return labels, int(n)


def raster_detections(
    values: NDArray[np.float32],
    transform: Affine,
    threshold: float,
    labelled: tuple[NDArray[np.int32], int] | None = None,
) -> Detections:
    """Polygons of edge-connected pixels at or above ``threshold`` (NaN is no data).

    A component that fills its bounding box is that rectangle, its ring in the order GDAL
    traces it; the others are traced in C (``rasterio.features.shapes``), all as arrays.
    Attributes: max and mean probability, number of cells (:data:`DETECTION_FIELDS`).
    Sorted by max probability, highest first; ties by the component's first pixel in
    raster order. ``labelled``: :func:`label_detections` of the same values and threshold,
    when the caller has it already.
    """
    labels, n = labelled if labelled is not None else label_detections(values, threshold)
    mask = labels > 0
    if n == 0:
        return Detections.empty()
    rows, cols = np.nonzero(mask)  # raster order
    lab = labels[rows, cols]
    val = values[rows, cols].astype(np.float64)
    count = np.bincount(lab, minlength=n + 1)[1:]
    vmean = np.bincount(lab, weights=val, minlength=n + 1)[1:] / np.maximum(count, 1)
    order = np.argsort(lab, kind="stable")
    first = np.cumsum(count) - count
    r_sorted, c_sorted = rows[order], cols[order]
    r0, r1 = r_sorted[first], r_sorted[first + count - 1]
    c0 = np.minimum.reduceat(c_sorted, first)
    c1 = np.maximum.reduceat(c_sorted, first)
    vmax = np.maximum.reduceat(val[order], first)
    filled = count == (r1 - r0 + 1) * (c1 - c0 + 1)
    a, c, e, f = transform.a, transform.c, transform.e, transform.f
    boxes = PolygonArrays.boxes(
        c + a * c0[filled], f + e * r0[filled], c + a * (c1[filled] + 1), f + e * (r1[filled] + 1)
    )
    traced, traced_labels = _traced(labels, mask & ~np.r_[False, filled][labels], transform)
    polygons = PolygonArrays.concat([boxes, traced])
    at = np.concatenate([np.flatnonzero(filled), traced_labels - 1])
    rank = np.lexsort((at, -vmax[at]))
    at = at[rank]
    columns = {"max_probability": vmax[at], "mean_probability": vmean[at], "cells": count[at]}
    return Detections(polygons.take(rank), columns)


def _traced(
    labels: NDArray[np.int32], mask: NDArray[np.bool_], transform: Affine
) -> tuple[PolygonArrays, NDArray[np.int64]]:
    """GDAL's polygons around the labelled regions under ``mask``, one feature per label.

    A label traced as several polygons (rare with 4-connected labels) is their union.
    """
    from rasterio.features import shapes

    if not mask.any():
        return PolygonArrays.empty(), np.zeros(0, np.int64)
    xy: list[tuple[float, float]] = []
    ring_len: list[int] = []
    poly_rings: list[int] = []
    poly_lab: list[int] = []
    # no warnings.catch_warnings here: it swaps the process's filters, and detections are
    # traced beside other threads (rasterio >= 1.4 warns of nothing here; tested)
    traced = list(shapes(labels.astype(np.int32), mask=mask, connectivity=4, transform=transform))
    for geom, lab in traced:
        for ring in geom["coordinates"]:
            xy.extend(ring)
            ring_len.append(len(ring))
        poly_rings.append(len(geom["coordinates"]))
        poly_lab.append(int(lab))
    pieces = PolygonArrays(
        np.asarray(xy, np.float64).reshape(-1, 2),
        np.concatenate([[0], np.cumsum(ring_len, dtype=np.int64)]),
        np.concatenate([[0], np.cumsum(poly_rings, dtype=np.int64)]),
        np.arange(len(poly_lab) + 1, dtype=np.int64),
    )
    piece_lab = np.asarray(poly_lab, np.int64)
    labs, first, n_pieces = np.unique(piece_lab, return_index=True, return_counts=True)
    whole = n_pieces == 1
    merged = [
        shapely.union_all(pieces.take(np.flatnonzero(piece_lab == lab)).to_shapely())
        for lab in labs[~whole]
    ]
    polygons = PolygonArrays.concat([pieces.take(first[whole]), PolygonArrays.from_shapely(merged)])
    return polygons, np.concatenate([labs[whole], labs[~whole]])
