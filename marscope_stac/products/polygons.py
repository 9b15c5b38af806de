"""Many polygons as flat arrays: coordinates and offsets, no Python object per polygon.

:class:`PolygonArrays` is the layout of shapely's ragged-array export of MultiPolygons
(coordinates; ring, part and feature offsets). Detections are built in it, their WKB is
written from it and their vector tiles are encoded from it, so a planet's half a million
detections need no shapely object on the way to the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from numpy.typing import NDArray

__all__ = ["PolygonArrays", "expand_ranges"]


def expand_ranges(starts: NDArray[np.int64], lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, all at once."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    shift = np.asarray(starts, np.int64) - (np.cumsum(lengths) - lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(shift, lengths)


def _offsets(lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


@dataclass(frozen=True)
class PolygonArrays:
    """Polygons with holes, several parts per feature allowed, as flat arrays.

    Attributes:
        coords: (P, 2) float64 x, y of every ring's points, each ring closed.
        rings: (R + 1,) offsets of each ring's points in ``coords``.
        parts: (Q + 1,) offsets of each polygon part's rings in ``rings``; a part's first
            ring is its exterior, the others its holes.
        features: (n + 1,) offsets of each feature's parts in ``parts``.
    """

    coords: NDArray[np.float64]
    rings: NDArray[np.int64]
    parts: NDArray[np.int64]
    features: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.features) - 1

    @classmethod
    def empty(cls) -> PolygonArrays:
        """No features."""
        zero = np.zeros(1, np.int64)
        return cls(np.zeros((0, 2)), zero, zero, zero)

    @classmethod
    def boxes(
        cls,
        x0: NDArray[np.float64],
        y0: NDArray[np.float64],
        x1: NDArray[np.float64],
        y1: NDArray[np.float64],
    ) -> PolygonArrays:
        """One rectangle per feature, its ring (x0, y0), (x0, y1), (x1, y1), (x1, y0), closed.

        That is the order in which GDAL traces a rectangle of pixels when ``(x0, y0)`` is its
        top-left corner and ``(x1, y1)`` its bottom-right one.
        """
        n = len(x0)
        xs = np.stack([x0, x0, x1, x1, x0], axis=1)
        ys = np.stack([y0, y1, y1, y0, y0], axis=1)
        coords = np.stack([xs, ys], axis=2).reshape(-1, 2).astype(np.float64)
        steps = np.arange(n + 1, dtype=np.int64)
        return cls(coords, steps * 5, steps, steps)

    @classmethod
    def from_shapely(cls, geoms: Sequence[Any] | NDArray[Any]) -> PolygonArrays:
        """The arrays of shapely Polygons and MultiPolygons (empty ones have no parts)."""
        geoms = np.asarray(geoms, dtype=object)
        if len(geoms) == 0:
            return cls.empty()
        kind, coords, offsets = shapely.to_ragged_array(geoms)
        if kind == shapely.GeometryType.POLYGON:
            rings, parts = offsets
            features = np.arange(len(parts), dtype=np.int64)
        elif kind == shapely.GeometryType.MULTIPOLYGON:
            rings, parts, features = offsets
        else:
            raise ValueError(f"polygons expected, not {kind.name.lower()}s")
        # empty polygons become features (or parts) with no part (no ring) at all
        n_rings = np.diff(parts)
        kept = n_rings > 0
        part_feature = np.repeat(np.arange(len(geoms)), np.diff(features))
        return cls(
            coords,
            np.asarray(rings, np.int64),
            _offsets(n_rings[kept]),
            _offsets(np.bincount(part_feature[kept], minlength=len(geoms))),
        )

    def to_shapely(self) -> NDArray[Any]:
        """One shapely geometry per feature: a Polygon when it has one part, else a MultiPolygon."""
        if len(self) == 0:
            return np.zeros(0, dtype=object)
        multi = shapely.from_ragged_array(
            shapely.GeometryType.MULTIPOLYGON,
            self.coords,
            (self.rings, self.parts, self.features),
        )
        single = np.diff(self.features) == 1
        multi[single] = shapely.get_geometry(multi[single], 0)
        return multi

    def take(self, index: NDArray[np.int64]) -> PolygonArrays:
        """The features at ``index``, in that order."""
        index = np.asarray(index, np.int64)
        f0, n_parts = self.features[index], np.diff(self.features)[index]
        part_ids = expand_ranges(f0, n_parts)
        n_rings = np.diff(self.parts)[part_ids]
        ring_ids = expand_ranges(self.parts[part_ids], n_rings)
        n_pts = np.diff(self.rings)[ring_ids]
        pts = expand_ranges(self.rings[ring_ids], n_pts)
        return PolygonArrays(
            self.coords[pts], _offsets(n_pts), _offsets(n_rings), _offsets(n_parts)
        )

    @staticmethod
    def concat(items: Sequence[PolygonArrays]) -> PolygonArrays:
        """The features of ``items``, one after the other."""
        if not items:
            return PolygonArrays.empty()

        def joined(name: str) -> NDArray[np.int64]:
            lengths = [np.diff(getattr(item, name)) for item in items]
            return _offsets(np.concatenate(lengths))

        return PolygonArrays(
            np.concatenate([item.coords for item in items]).reshape(-1, 2),
            joined("rings"),
            joined("parts"),
            joined("features"),
        )

    def boxes_within(self) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The features that are axis-aligned rectangles, and their corners.

        A rectangle here is one ring of four corners running ``(xa, ya), (xa, yb), (xb, yb),
        (xb, ya)`` and closed (as :meth:`boxes` makes them); returns the features' indexes
        and ``xa, ya, xb, yb`` of each.
        """
        idx = np.flatnonzero(np.diff(self.features) == 1)
        part = self.features[idx]
        idx, part = idx[np.diff(self.parts)[part] == 1], part[np.diff(self.parts)[part] == 1]
        ring = self.parts[part]
        five = np.diff(self.rings)[ring] == 5
        idx, ring = idx[five], ring[five]
        c = self.coords[self.rings[ring][:, None] + np.arange(5)]
        square = (c[:, 0, 0] == c[:, 1, 0]) & (c[:, 1, 1] == c[:, 2, 1])
        square &= (c[:, 2, 0] == c[:, 3, 0]) & (c[:, 3, 1] == c[:, 0, 1])
        square &= (c[:, 4] == c[:, 0]).all(axis=1)
        return idx[square], np.column_stack([c[square, 0], c[square, 2]])

    def ring_feature(self) -> NDArray[np.int64]:
        """The feature of each ring."""
        part_feature = np.repeat(np.arange(len(self)), np.diff(self.features))
        return part_feature[np.repeat(np.arange(len(self.parts) - 1), np.diff(self.parts))]

    def ring_is_exterior(self) -> NDArray[np.bool_]:
        """Whether each ring is its part's exterior (its first ring)."""
        out = np.zeros(len(self.rings) - 1, bool)
        out[self.parts[:-1][np.diff(self.parts) > 0]] = True
        return out

    def point_feature(self) -> NDArray[np.int64]:
        """The feature of each point."""
        return np.repeat(self.ring_feature(), np.diff(self.rings))

    def bounds(self) -> NDArray[np.float64]:
        """(n, 4) min x, min y, max x, max y of each feature (NaN for one with no points)."""
        out = np.full((len(self), 4), np.nan)
        starts = self.rings[self.parts[self.features[:-1]]]
        ends = self.rings[self.parts[self.features[1:]]]
        has = ends > starts
        if has.any():
            at = starts[has]
            out[has, :2] = np.minimum.reduceat(self.coords, at, axis=0)
            out[has, 2:] = np.maximum.reduceat(self.coords, at, axis=0)
        return out

    def wkb(self) -> pa.BinaryArray:
        """Little-endian WKB of every feature (Polygon with one part, else MultiPolygon).

        The bytes are those shapely writes, built with numpy: each ring's coordinates are
        copied as one block, with the headers that go before it (the feature's and part's
        for a first ring, then the ring's point count) slotted in between.
        """
        n_parts, n_rings = np.diff(self.features), np.diff(self.parts)
        if (n_parts == 0).any() or (n_rings == 0).any():  # empty geometries: rare, left to shapely
            data = [bytes(w) for w in shapely.to_wkb(self.to_shapely())]
            return pa.array(data, pa.binary())
        n_pts = np.diff(self.rings)
        ring_part = np.repeat(np.arange(len(n_rings)), n_rings)
        ring_feat = np.repeat(np.arange(len(self)), n_parts)[ring_part]
        head = np.zeros((len(n_pts), 22), np.uint8)
        used = np.zeros(head.shape, bool)
        first = np.zeros(len(n_pts), bool)
        first[self.parts[self.features[:-1]]] = True
        multi = first & (n_parts > 1)[ring_feat]  # MultiPolygon header
        head[multi, 0], head[multi, 1] = 1, 6
        head[multi, 5:9] = _u32(n_parts[ring_feat[multi]])
        used[multi, :9] = True
        part_first = np.zeros(len(n_pts), bool)
        part_first[self.parts[:-1]] = True  # Polygon header
        head[part_first, 9], head[part_first, 10] = 1, 3
        head[part_first, 14:18] = _u32(n_rings[ring_part[part_first]])
        used[part_first, 9:18] = True
        head[:, 18:] = _u32(n_pts)  # the ring's point count
        used[:, 18:] = True
        head_len = used.sum(axis=1)
        ring_len = head_len + 16 * n_pts
        ring_start = np.cumsum(ring_len) - ring_len
        total = int(ring_len.sum())
        is_head = np.zeros(total, bool)
        is_head[expand_ranges(ring_start, head_len)] = True
        out = np.empty(total, np.uint8)
        out[is_head] = head[used]
        out[~is_head] = np.ascontiguousarray(self.coords, "<f8").view(np.uint8).ravel()
        offsets = np.r_[ring_start[first], total]
        small = total < 2**31
        kind = pa.binary() if small else pa.large_binary()
        buffers = [None, pa.py_buffer(offsets.astype(np.int32 if small else np.int64))]
        return pa.Array.from_buffers(kind, len(self), [*buffers, pa.py_buffer(out)])


def _u32(values: NDArray[np.int64]) -> NDArray[np.uint8]:
    """Little-endian uint32 bytes of each value, one row each."""
    return np.asarray(values, "<u4").view(np.uint8).reshape(-1, 4)
