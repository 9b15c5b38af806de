"""Vector PMTiles of detections: Mapbox Vector Tiles on the z/x/y scheme of the body's sphere.

Each zoom is encoded in one pass over every feature (:func:`~marscope_stac.products.mvt.\
polygon_streams`); features are then sorted into the tiles they meet by their bounds, a
feature wholly inside a tile (with its buffer) reuses its stream with the first point moved
to the tile's corner, and only features crossing a tile's edge are cut (shapely) and encoded
again. Nothing is made per feature in Python.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

from marscope_stac.core.threads import worker_count
from marscope_stac.products.detections import Detections, detections, raster_detections
from marscope_stac.products.mvt import (
    BoxStreams,
    FeatureStreams,
    ValueColumns,
    box_streams,
    dense_records,
    layer_message,
    polygon_streams,
    records,
)
from marscope_stac.products.polygons import PolygonArrays, expand_ranges
from marscope_stac.products.render import _header, _lat_to_y, _tile_range, _write_archive

__all__ = [
    "TILE_GZIP_LEVEL",
    "Detections",
    "VectorLevels",
    "detections",
    "raster_detections",
    "vector_tile",
    "write_vector_pmtiles",
]

TILE_GZIP_LEVEL = 2
"""ISA-L gzip level of the vector tiles (the ISA-L library's default): tiles of half a
million detections are 6 % bigger than zlib's level 1 makes them, in a quarter of the time."""

EXTENT = 4096
"""Tile coordinate units across a tile."""

BUFFER = 64 / EXTENT
"""Tile margin (in tiles) kept around each tile so outlines do not end at its edge."""


def write_vector_pmtiles(
    path: str | os.PathLike[str],
    features: Detections | Sequence[tuple[Any, dict[str, float]]],
    metadata: dict[str, Any],
    zoom: tuple[int, int],
    layer: str = "detections",
    cell_deg: float | None = None,
) -> int:
    """Write gzip-compressed Mapbox Vector Tiles of lon/lat polygons as PMTiles.

    ``features`` are :class:`~marscope_stac.products.detections.Detections` or
    ``(geometry, attributes)`` pairs (attributes: numbers, the same keys in each). Feature
    ids are 1 + their position. Below the last zoom, polygons are simplified to half a tile
    pixel. ``cell_deg`` says their corners lie on a grid of cells that many degrees wide
    (detections traced on a raster): zooms where a cell spans at least two tile pixels are
    then not simplified, since nothing would be removed there. Returns the number of tiles.

    Raises:
        ValueError: if there are no features.
    """
    from pmtiles.tile import Compression, TileType

    found = Detections.from_features(features)
    if len(found) == 0:
        raise ValueError("no features to write")
    levels = VectorLevels(found, zoom, layer, cell_deg)
    tiles = _encode_tiles(levels)
    header = _header(levels.bounds, *zoom, TileType.MVT, Compression.GZIP)
    meta = _vector_metadata(metadata, layer, levels.values.keys, zoom)
    return _write_archive(path, tiles, header, meta)


class VectorLevels:
    """The features of a vector tile archive projected to each zoom, on first use.

    Args:
        found: The features (detections).
        zoom: First and last zoom level.
        layer: The tiles' layer name.
        cell_deg: See :func:`write_vector_pmtiles`.
    """

    def __init__(
        self,
        found: Detections,
        zoom: tuple[int, int],
        layer: str = "detections",
        cell_deg: float | None = None,
    ) -> None:
        self.found, self.zoom, self.layer, self.cell_deg = found, zoom, layer, cell_deg
        b = found.polygons.bounds()
        self.bounds = (
            float(np.nanmin(b[:, 0])),
            float(np.nanmin(b[:, 1])),
            float(np.nanmax(b[:, 2])),
            float(np.nanmax(b[:, 3])),
        )
        self.values = ValueColumns.of(found.columns)
        self._levels: dict[int, _Zoom] = {}

    def level(self, z: int) -> _Zoom:
        """Zoom ``z``'s features in its tile space (made once)."""
        if z not in self._levels:
            zmax = self.zoom[1]
            coarse = self.cell_deg is None or self.cell_deg / 360.0 * 2**z * EXTENT < 2.0
            if z < zmax and coarse:
                self._levels[z] = _Zoom.project(self.found.polygons, z, simplify=True)
            else:  # zmax's tile space scaled by a power of two: the same numbers, exactly
                if zmax not in self._levels:
                    self._levels[zmax] = _Zoom.project(self.found.polygons, zmax, simplify=False)
                self._levels[z] = self._levels[zmax].at(2.0 ** (z - zmax))
        return self._levels[z]

    def prepare(self, z: int) -> None:
        """Make zoom ``z``'s level and its command streams (then its tiles only read them)."""
        level = self.level(z)
        _ = level.box_streams, level.streams, level.other_row


def vector_tile(levels: VectorLevels, zxy: tuple[int, int, int]) -> bytes | None:
    """One tile of :func:`write_vector_pmtiles`'s archive, the same bytes (gzip MVT).

    None where the archive has no tile (outside its zooms or features, or nothing drawn).
    """
    z, x, y = zxy
    if not levels.zoom[0] <= z <= levels.zoom[1]:
        return None
    x0, x1, y0, y1 = _tile_range(levels.bounds, z)
    if not (x0 <= x <= x1 and y0 <= y <= y1):
        return None
    jobs = levels.level(z).jobs(z, (x, x, y, y))
    tile = jobs[0].encode(levels.values, levels.layer) if jobs else None
    return tile[1] if tile else None


@dataclass(frozen=True, eq=False)
class _Zoom:
    """One zoom's features in tile space: ``polygons`` in units of a zoom's tiles.

    ``factor`` (a power of two) turns their units into this zoom's. Rectangles (most
    detections) are encoded from their corners (:func:`~marscope_stac.products.mvt.\
box_streams`), the other features from their rings.
    """

    polygons: PolygonArrays
    bounds: NDArray[np.float64]
    box: NDArray[np.int64]  # each feature's row in ``corners``, -1 when not a rectangle
    corners: NDArray[np.float64]
    other: NDArray[np.int64]  # the features that are not rectangles
    factor: float = 1.0

    @classmethod
    def project(cls, polygons: PolygonArrays, z: int, simplify: bool) -> _Zoom:
        """Lon/lat polygons in zoom ``z``'s tile space (x right, y down; 1 unit = 1 tile)."""
        n = 2**z
        xy = polygons.coords
        projected = PolygonArrays(
            np.column_stack([(xy[:, 0] + 180.0) / 360.0 * n, _lat_to_y(xy[:, 1], n)]),
            polygons.rings,
            polygons.parts,
            polygons.features,
        )
        boxes, corners = projected.boxes_within()
        if simplify:  # below the last zoom, detail under half a tile pixel is invisible
            projected = _simplified(projected, boxes, 0.5 / EXTENT)
        box = np.full(len(projected), -1, np.int64)
        box[boxes] = np.arange(len(boxes))
        return cls(projected, projected.bounds(), box, corners, np.flatnonzero(box < 0))

    def at(self, factor: float) -> _Zoom:
        """The same features for a zoom whose tile space is ``factor`` times theirs."""
        return _Zoom(self.polygons, self.bounds, self.box, self.corners, self.other, factor)

    @cached_property
    def box_streams(self) -> BoxStreams:
        """Every rectangle's command stream with the tile corner at the origin."""
        return box_streams(self.corners, EXTENT * self.factor)

    @cached_property
    def streams(self) -> FeatureStreams:
        """Every other feature's command stream (rows of ``other``), corner at the origin."""
        return polygon_streams(self.polygons.take(self.other), EXTENT * self.factor)

    @cached_property
    def other_row(self) -> NDArray[np.int64]:
        """Each feature's row in :attr:`streams` (-1 for rectangles)."""
        row = np.full(len(self.polygons), -1, np.int64)
        row[self.other] = np.arange(len(self.other))
        return row

    def jobs(self, z: int, tile_range: tuple[int, int, int, int]) -> list[_TileJob]:
        """One job per tile of zoom ``z`` that a feature meets; the streams made first."""
        n = 2**z
        feats, inside, keys, starts = self._assign(tile_range, n)
        _ = self.box_streams, self.streams, self.other_row  # made once, before the threads
        return [
            _TileJob(self, z, int(keys[a] % n), int(keys[a] // n), feats[a:b], inside[a:b])
            for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)
        ]

    def _assign(
        self, tile_range: tuple[int, int, int, int], n: int
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
        """(feature, tile) pairs of features meeting a tile's buffered square, by tile.

        Returns each pair's feature, whether it lies wholly inside, its tile key
        (``ty * n + tx``) and where each tile's pairs start (and the end).
        """
        x0, x1, y0, y1 = tile_range
        b = self.bounds * self.factor
        fid = np.flatnonzero(~np.isnan(b[:, 0]))
        b = b[fid]
        # tiles whose square (tx - BUFFER, tx + 1 + BUFFER) overlaps the feature's extent
        tx0 = np.maximum(np.floor(b[:, 0] - 1 - BUFFER).astype(np.int64) + 1, x0)
        tx1 = np.minimum(np.ceil(b[:, 2] + BUFFER).astype(np.int64) - 1, x1)
        ty0 = np.maximum(np.floor(b[:, 1] - 1 - BUFFER).astype(np.int64) + 1, y0)
        ty1 = np.minimum(np.ceil(b[:, 3] + BUFFER).astype(np.int64) - 1, y1)
        nx, ny = np.maximum(tx1 - tx0 + 1, 0), np.maximum(ty1 - ty0 + 1, 0)
        count = nx * ny
        pair = np.repeat(np.arange(len(fid)), count)
        k = expand_ranges(np.zeros(len(fid), np.int64), count)
        tx = tx0[pair] + k % nx[pair]
        ty = ty0[pair] + k // nx[pair]
        bp = b[pair]
        inside = (bp[:, 0] >= tx - BUFFER) & (bp[:, 2] <= tx + 1 + BUFFER)
        inside &= (bp[:, 1] >= ty - BUFFER) & (bp[:, 3] <= ty + 1 + BUFFER)
        key = ty * n + tx  # sorted by row, then column, then feature:
        # the pairs come in feature order, so a stable sort by tile keeps it (numpy's radix
        # sort on 16-bit keys, up to zoom 8)
        order = np.argsort(key.astype(np.uint16) if n * n <= 1 << 16 else key, kind="stable")
        key, feats, inside = key[order], fid[pair][order], inside[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key
        return feats, inside, key, np.r_[starts, len(key)]

    def _tile_bytes(
        self,
        xy: tuple[int, int],
        feats: NDArray[np.int64],
        inside: NDArray[np.bool_],
        values: ValueColumns,
        layer: str,
    ) -> bytes:
        """The MVT of one tile (``b""`` when nothing in it has area at this zoom).

        Rectangles wholly inside come first, then the other features wholly inside, then
        the features cut at the tile's edge; each group by feature id.
        """
        tx, ty = xy
        corner = (tx * EXTENT, ty * EXTENT)
        whole = feats[inside]
        rect = whole[self.box[whole] >= 0]
        rect = rect[self.box_streams.drawn[self.box[rect]]]
        rest = whole[self.box[whole] < 0]
        rows = self.other_row[rest]
        drawn = self.streams.end[rows] > self.streams.start[rows]
        rest, rows = rest[drawn], rows[drawn]
        cut, cut_part = self._cut(xy, feats[~inside], corner)
        ids = np.concatenate([rect, rest, cut])
        if len(ids) == 0:
            return b""
        value_bytes, tags = values.tile(ids)
        m = len(rect)
        boxes = dense_records(rect + 1, tags[:m], self.box_streams.moved(self.box[rect], corner))
        head, tail = self.streams.moved(rows, corner)
        pad = np.zeros(len(cut), np.int64)
        geometry = [
            (head[0], np.r_[head[1], pad], np.r_[head[2], pad]),
            (tail[0], np.r_[tail[1], pad], np.r_[tail[2], pad]),
            (
                cut_part[0],
                np.r_[np.zeros(len(rest), np.int64), cut_part[1]],
                np.r_[np.zeros(len(rest), np.int64), cut_part[2]],
            ),
        ]
        others = records(np.r_[rest, cut] + 1, tags[m:], geometry)
        return layer_message(layer, [boxes, others], values.keys, value_bytes, EXTENT)

    def _cut(
        self, xy: tuple[int, int], feats: NDArray[np.int64], corner: tuple[int, int]
    ) -> tuple[NDArray[np.int64], Any]:
        """Features crossing the tile's edge, cut at its buffered square, and their streams."""
        none = np.zeros(0, np.int64)
        if len(feats) == 0:
            return none, (np.zeros(0, np.uint8), none, none)
        tx, ty = xy
        f = self.factor
        rect = ((tx - BUFFER) / f, (ty - BUFFER) / f, (tx + 1 + BUFFER) / f, (ty + 1 + BUFFER) / f)
        cut = shapely.clip_by_rect(self.polygons.take(feats).to_shapely(), *rect)
        keep = ~shapely.is_empty(cut) & np.isin(shapely.get_type_id(cut), (3, 6))
        feats = feats[keep]
        streams = polygon_streams(PolygonArrays.from_shapely(cut[keep]), EXTENT * f, corner)
        drawn = streams.end > streams.start
        start = streams.start[drawn]
        return feats[drawn], (streams.data, start, streams.end[drawn] - start)


@dataclass(frozen=True, eq=False)
class _TileJob:
    """One tile to encode: its zoom level, position and the features that meet it."""

    level: _Zoom
    z: int
    x: int
    y: int
    feats: NDArray[np.int64]
    inside: NDArray[np.bool_]

    def encode(self, values: ValueColumns, layer: str) -> tuple[int, bytes] | None:
        """Tile id and gzipped MVT, or None when nothing in it has area at this zoom."""
        from pmtiles.tile import zxy_to_tileid

        data = self.level._tile_bytes((self.x, self.y), self.feats, self.inside, values, layer)
        if not data:
            return None
        return zxy_to_tileid(self.z, self.x, self.y), _gzip(data)


def _gzip(data: bytes) -> bytes:
    """A gzip member of ``data`` (no timestamp): ISA-L, or zlib when it is missing."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
        return gzip.compress(data, 1, mtime=0)
    return bytes(igzip.compress(data, TILE_GZIP_LEVEL, mtime=0))


def _encode_tiles(levels: VectorLevels) -> list[tuple[int, bytes]]:
    """Every tile of every zoom, encoded in one pool, biggest first.

    One pool over all zooms keeps every core busy: a coarse zoom's few big tiles (the
    planet's zoom 0 is one tile holding every feature) are encoded while finer zooms' many
    small ones fill the other cores.
    """
    zooms = range(levels.zoom[0], levels.zoom[1] + 1)
    for z in zooms:  # projected here, in order: zooms below the last may share its numbers
        levels.level(z)
    with ThreadPoolExecutor(worker_count()) as pool:  # numpy, shapely and zlib release the GIL
        made = pool.map(lambda z: levels.level(z).jobs(z, _tile_range(levels.bounds, z)), zooms)
        jobs = sorted((j for js in made for j in js), key=lambda j: -len(j.feats))
        encoded = pool.map(lambda job: job.encode(levels.values, levels.layer), jobs)
        return [t for t in encoded if t is not None]


def _simplified(
    polygons: PolygonArrays, boxes: NDArray[np.int64], tolerance: float
) -> PolygonArrays:
    """``polygons`` simplified to ``tolerance``; rectangles (no corner to lose) as they are."""
    other = np.setdiff1d(np.arange(len(polygons)), boxes)
    if len(other) == 0:
        return polygons
    geoms = shapely.simplify(polygons.take(other).to_shapely(), tolerance, preserve_topology=True)
    order = np.argsort(np.r_[boxes, other], kind="stable")
    joined = PolygonArrays.concat([polygons.take(boxes), PolygonArrays.from_shapely(geoms)])
    return joined.take(order)


def _vector_metadata(
    metadata: dict[str, Any], layer: str, keys: list[str], zoom: tuple[int, int]
) -> dict[str, Any]:
    """The archive's metadata with its one vector layer: fields (all numbers) and zooms."""
    zmin, zmax = zoom
    return {
        **metadata,
        "vector_layers": [
            {
                "id": layer,
                "fields": dict.fromkeys(keys, "Number"),
                "minzoom": zmin,
                "maxzoom": zmax,
            }
        ],
    }
