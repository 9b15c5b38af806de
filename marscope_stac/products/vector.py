"""Vector products: detections and their vector PMTiles.

Detections are connected cells above the threshold, as polygons; the PMTiles hold them as
Mapbox Vector Tiles on the z/x/y scheme of the body's sphere.
"""

from __future__ import annotations

import copy
import gzip
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from marscope_stac.core.threads import worker_count
from marscope_stac.grid.grids import Grid
from marscope_stac.products.render import (
    _header,
    _lat_to_y,
    _tile_range,
    _write_archive,
    cells_to_raster,
)

__all__ = [
    "detections",
    "raster_detections",
    "write_vector_pmtiles",
]


def detections(
    grid: Grid, cells: NDArray[np.int64], probability: NDArray[np.float32], threshold: float
) -> list[tuple[BaseGeometry, dict[str, float]]]:
    """Merge edge-adjacent cells at or above ``threshold`` into polygons with attributes.

    See :func:`raster_detections`, which does the work on the probability raster.
    """
    if not (np.asarray(probability) >= threshold).any():
        return []
    values, transform = cells_to_raster(grid, cells, probability)
    return raster_detections(values, transform, threshold)


def raster_detections(
    values: NDArray[np.float32], transform: Affine, threshold: float
) -> list[tuple[BaseGeometry, dict[str, float]]]:
    """Polygons of edge-connected pixels at or above ``threshold`` (NaN is no data).

    Connected components are labelled and traced to polygons in C
    (``rasterio.features.shapes``) and the polygons built all at once from their coordinates
    (shapely's array functions), so planet-scale maps with many detections stay fast.
    Attributes: max and mean probability, number of cells; sorted by max probability.
    """
    from scipy import ndimage

    mask = np.nan_to_num(values, nan=-1.0) >= threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    # per-component figures from the labelled pixels alone (ndimage's would sort the image)
    lab, val = labels[mask], values[mask].astype(np.float64)
    count = np.bincount(lab, minlength=n + 1)[1:]
    vmean = np.bincount(lab, weights=val, minlength=n + 1)[1:] / np.maximum(count, 1)
    vmax = np.full(n + 1, -np.inf)
    np.maximum.at(vmax, lab, val)
    vmax = vmax[1:]
    polys, poly_lab = _traced_polygons(labels, mask, transform)
    # one geometry per component, in order of first appearance (a component traced in
    # several polygons, which 4-connected labels make rare, is their union)
    labs, first, n_polys = np.unique(poly_lab, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    labs, first, n_polys = labs[order], first[order], n_polys[order]
    geoms = polys[first]
    for j in np.flatnonzero(n_polys > 1):
        geoms[j] = shapely.union_all(polys[poly_lab == labs[j]])
    at = labs - 1
    ranked = np.argsort(-vmax[at], kind="stable")
    return [
        (g, {"max_probability": a, "mean_probability": b, "cells": c})
        for g, a, b, c in zip(
            geoms[ranked].tolist(),
            vmax[at][ranked].tolist(),
            vmean[at][ranked].tolist(),
            count[at][ranked].tolist(),
            strict=True,
        )
    ]


def _traced_polygons(
    labels: NDArray[np.int32], mask: NDArray[np.bool_], transform: Affine
) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """The polygons GDAL traces around each labelled region, and the label of each."""
    from rasterio.features import shapes

    xy: list[tuple[float, float]] = []
    ring_len: list[int] = []
    ring_poly: list[int] = []
    poly_lab: list[int] = []
    for geom, lab in shapes(
        labels.astype(np.int32), mask=mask, connectivity=4, transform=transform
    ):
        for ring in geom["coordinates"]:
            xy.extend(ring)
            ring_len.append(len(ring))
            ring_poly.append(len(poly_lab))
        poly_lab.append(int(lab))
    ring_of_point = np.repeat(np.arange(len(ring_len)), ring_len)
    rings = shapely.linearrings(np.asarray(xy, np.float64), indices=ring_of_point)
    polys = shapely.polygons(rings, indices=np.asarray(ring_poly))
    return polys, np.asarray(poly_lab, np.int64)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint((num << 3) | wire)
    if wire == 0:
        return key + _varint(int(payload))
    if wire == 1:
        return key + payload  # type: ignore[operator]
    data = payload if isinstance(payload, bytes) else b""
    return key + _varint(len(data)) + data


def _varints(values: NDArray[np.uint64]) -> tuple[bytes, NDArray[np.int64]]:
    """Protobuf varints of many values at once; returns the bytes and each value's end offset."""
    v = values.astype(np.uint64)
    nbytes = np.ones(len(v), np.int64)
    for k in (7, 14, 21, 28, 35, 42, 49, 56, 63):
        nbytes += v >= (np.uint64(1) << np.uint64(k))
    ends = np.cumsum(nbytes)
    out = np.zeros(int(ends[-1]) if len(ends) else 0, np.uint8)
    starts = ends - nbytes
    for j in range(int(nbytes.max()) if len(v) else 0):
        sel = nbytes > j
        byte = (v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (nbytes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (byte | more).astype(np.uint8)
    return out.tobytes(), ends


def _ring_area2(
    pts: NDArray[np.int64], pt_ring: NDArray[np.int64], n_rings: int
) -> NDArray[np.int64]:
    """Twice the signed area of each ring of integer points (rings given point by point)."""
    if len(pts) == 0:
        return np.zeros(n_rings, np.int64)
    start = np.r_[True, pt_ring[1:] != pt_ring[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(pts)), 0))
    last_of_ring = np.r_[pt_ring[1:] != pt_ring[:-1], True]
    nxt = np.where(last_of_ring, first, np.arange(len(pts)) + 1)
    cross = pts[:, 0] * pts[nxt, 1] - pts[nxt, 0] * pts[:, 1]
    return np.bincount(pt_ring, weights=cross, minlength=n_rings).astype(np.int64)


def _polygon_geometries(geoms: NDArray[Any]) -> list[bytes | None]:
    """MVT geometry command streams of polygonal features, one ``bytes`` each (None: empty).

    See :func:`_polygon_streams`, which returns them as one buffer and offsets.
    """
    data, start, end = _polygon_streams(geoms)
    raw = data.tobytes()
    return [raw[a:b] if b > a else None for a, b in zip(start.tolist(), end.tolist(), strict=True)]


def _ragged_rings(
    geoms: NDArray[Any],
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Coordinates of (multi)polygons, the ring of each point and the feature of each ring.

    One call to shapely's ragged-array export: no Python object per part or ring.
    """
    kind, coords, offsets = shapely.to_ragged_array(geoms)
    ring_starts = offsets[0]
    ring_counts = np.diff(offsets[1])  # rings of each polygon
    if kind == shapely.GeometryType.MULTIPOLYGON:  # rings of each feature: of its polygons
        polys_of_feat = np.diff(offsets[2])
        feat_of_poly = np.repeat(np.arange(len(polys_of_feat)), polys_of_feat)
        ring_counts = np.bincount(feat_of_poly, weights=ring_counts, minlength=len(geoms))
    feat_of_ring = np.repeat(np.arange(len(geoms)), ring_counts.astype(np.int64))
    pt_ring = np.repeat(np.arange(len(ring_starts) - 1), np.diff(ring_starts))
    return coords, pt_ring, feat_of_ring


def _polygon_streams(
    geoms: NDArray[Any],
    origin: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    oriented: bool = False,
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]:
    """MVT geometry command streams (packed varints) of polygonal features, all at once.

    Rings are oriented as MVT wants (exterior positive area in tile coordinates, holes
    negative; ``oriented``: they already are), rounded to the integer grid with repeated
    points dropped; rings left with fewer than three points or no area (simplified to a line
    at low zooms) are skipped, and a feature with no ring left gets an empty stream.
    Coordinates are taken as ``(xy - origin) * scale``. Returns one buffer with every stream
    and each feature's start and end in it.
    """
    none = np.zeros(len(geoms), np.int64)
    if len(geoms) == 0:
        return np.zeros(0, np.uint8), none, none
    if not oriented:
        geoms = shapely.orient_polygons(geoms, exterior_cw=False)
    coords, pt_ring, feat_of_ring = _ragged_rings(geoms)
    n_rings = len(feat_of_ring)
    pts = np.round((coords - np.asarray(origin)) * scale).astype(np.int64)
    last = np.r_[pt_ring[1:] != pt_ring[:-1], True]  # closing point of each ring
    first = np.r_[True, pt_ring[1:] != pt_ring[:-1]]
    keep = ~last & (first | np.r_[True, np.any(pts[1:] != pts[:-1], axis=1)])
    pts, pt_ring = pts[keep], pt_ring[keep]
    counts = np.bincount(pt_ring, minlength=n_rings)
    ok_ring = (counts >= 3) & (_ring_area2(pts, pt_ring, n_rings) != 0)
    sel = ok_ring[pt_ring]
    pts, pt_ring = pts[sel], pt_ring[sel]
    ring_ids = np.flatnonzero(ok_ring)
    m = counts[ring_ids]
    ring_feat = feat_of_ring[ring_ids]
    pt_feat = ring_feat[np.repeat(np.arange(len(ring_ids)), m)]
    if len(pts) == 0:
        return np.zeros(0, np.uint8), none, none
    # deltas from the cursor, which starts at (0, 0) for every feature
    prev = np.vstack([[0, 0], pts[:-1]])
    prev[np.r_[True, pt_feat[1:] != pt_feat[:-1]]] = 0
    d = pts - prev
    zz = ((d << 1) ^ (d >> 63)).astype(np.uint64)
    ring_len = 2 * m + 3
    ring_start = np.concatenate([[0], np.cumsum(ring_len)[:-1]])
    stream = np.zeros(int(ring_len.sum()), np.uint64)
    stream[ring_start] = 9  # MoveTo, count 1
    stream[ring_start + 3] = (2 | ((m - 1) << 3)).astype(np.uint64)  # LineTo, count m - 1
    stream[ring_start + ring_len - 1] = 15  # ClosePath
    k = np.arange(len(pts)) - np.repeat(np.cumsum(m) - m, m)
    posx = np.repeat(ring_start, m) + 1 + 2 * k + (k >= 1)
    stream[posx] = zz[:, 0]
    stream[posx + 1] = zz[:, 1]
    data, ends = _varints(stream)
    start, end = _feature_spans(ring_feat, ring_start, ring_len, ends, len(geoms))
    return np.frombuffer(data, np.uint8), start, end


def _feature_spans(
    ring_feat: NDArray[np.int64],
    ring_start: NDArray[np.int64],
    ring_len: NDArray[np.int64],
    ends: NDArray[np.int64],
    n: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Each feature's start and end in the packed streams (its rings are contiguous)."""
    ring_end_val = np.cumsum(ring_len)
    feat_ids, first_ring = np.unique(ring_feat, return_index=True)
    last_ring = np.r_[first_ring[1:], len(ring_feat)] - 1
    start_val = ring_start[first_ring]
    end_val = ring_end_val[last_ring]
    start, end = np.zeros(n, np.int64), np.zeros(n, np.int64)
    start[feat_ids] = np.where(start_val > 0, ends[np.maximum(start_val - 1, 0)], 0)
    end[feat_ids] = ends[end_val - 1]
    return start, end


def _interleave(
    parts: Sequence[tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]],
) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Concatenate byte ranges into records, all records at once.

    Record ``r`` is ``buf[start[r]:start[r] + length[r]]`` of each part in turn. Returns all
    records in one buffer and each record's length.
    """
    lengths = np.column_stack([ln for _, _, ln in parts])
    rec_len = lengths.sum(axis=1)
    ends = np.cumsum(rec_len)
    out = np.empty(int(ends[-1]) if len(ends) else 0, np.uint8)
    offsets = (ends - rec_len)[:, None] + np.cumsum(lengths, axis=1) - lengths
    for j, (buf, start, ln) in enumerate(parts):
        total = int(ln.sum())
        if total:
            within = np.arange(total) - np.repeat(np.cumsum(ln) - ln, ln)
            out[np.repeat(offsets[:, j], ln) + within] = buf[np.repeat(start, ln) + within]
    return out, rec_len


def _const(data: bytes, n: int) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]:
    return np.frombuffer(data, np.uint8), np.zeros(n, np.int64), np.full(n, len(data), np.int64)


def _varint_part(
    values: NDArray[np.int64],
) -> tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]:
    data, ends = _varints(values.astype(np.uint64))
    lengths = np.diff(np.r_[0, ends])
    return np.frombuffer(data, np.uint8), ends - lengths, lengths


def _double_values(values: NDArray[np.float64]) -> bytes:
    """The layer's value messages (field 4) of doubles, all at once: 11 bytes each."""
    out = np.empty((len(values), 11), np.uint8)
    out[:, 0] = 0x22  # field 4, length-delimited
    out[:, 1] = 9  # its length
    out[:, 2] = 0x19  # double_value (field 3, 64-bit)
    out[:, 3:] = np.ascontiguousarray(values, "<f8").view(np.uint8).reshape(-1, 8)
    return out.tobytes()


def _tags(
    vals: NDArray[np.float64],
) -> tuple[NDArray[np.float64], tuple[NDArray[np.uint8], NDArray[np.int64], NDArray[np.int64]]]:
    """The layer's value table (in order of first appearance) and each feature's packed tags.

    ``vals`` holds one row per feature, one column per key.
    """
    n, k = vals.shape
    uniq, first, inverse = np.unique(vals.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    tags = np.empty((n, 2 * k), np.int64)
    tags[:, 0::2] = np.arange(k)
    tags[:, 1::2] = rank[inverse].reshape(n, k)
    tag_bytes, tag_ends = _varints(tags.ravel().astype(np.uint64))
    tag_end = tag_ends[2 * k - 1 :: 2 * k]
    tag_len = np.diff(np.r_[0, tag_end])
    return uniq[order], (np.frombuffer(tag_bytes, np.uint8), tag_end - tag_len, tag_len)


def _mvt_tile(
    layer: str,
    geoms: NDArray[Any],
    ids: NDArray[np.int64],
    keys: Sequence[str],
    props: NDArray[np.float64],
    extent: int = 4096,
    origin: tuple[float, float] = (0.0, 0.0),
    oriented: bool = False,
    scale: float | None = None,
) -> bytes:
    """One Mapbox Vector Tile layer of polygons, assembled with numpy.

    Geometries are in units of tiles with the tile's corner at ``origin`` (``scale``: tile
    pixels per unit, ``extent`` by default; ``oriented``: their rings already turn as MVT
    wants). ``ids`` are the feature ids; ``props`` holds one row of attribute values per
    feature, one column per key (stored as doubles). Features without geometry are left out.
    """
    data, g_start, g_end = _polygon_streams(
        geoms, origin, extent if scale is None else scale, oriented
    )
    keep = g_end > g_start
    if not keep.any():
        return b""
    g_start, g_len, ids, vals = g_start[keep], (g_end - g_start)[keep], ids[keep], props[keep]
    n = len(vals)
    values, tag_part = _tags(vals)
    tag_len = tag_part[2]
    body, body_len = _interleave(
        [
            _const(b"\x08", n),  # id (field 1, varint)
            _varint_part(ids),
            _const(b"\x12", n),  # tags (field 2, packed)
            _varint_part(tag_len),
            tag_part,
            _const(b"\x18\x03\x22", n),  # type POLYGON (field 3), geometry (field 4)
            _varint_part(g_len),
            (data, g_start, g_len),
        ]
    )
    features, _ = _interleave(
        [
            _const(b"\x12", n),  # feature (layer field 2)
            _varint_part(body_len),
            (body, np.cumsum(body_len) - body_len, body_len),
        ]
    )
    layer_bytes = _field(15, 0, 2) + _field(1, 2, layer.encode()) + features.tobytes()
    layer_bytes += b"".join(_field(3, 2, key.encode()) for key in keys)
    layer_bytes += _double_values(values)
    layer_bytes += _field(5, 0, extent)
    return _field(3, 2, layer_bytes)


def write_vector_pmtiles(
    path: str | os.PathLike[str],
    features: list[tuple[BaseGeometry, dict[str, float]]],
    metadata: dict[str, Any],
    zoom: tuple[int, int],
    layer: str = "detections",
    cell_deg: float | None = None,
) -> int:
    """Write gzip-compressed Mapbox Vector Tiles of lon/lat polygons as PMTiles.

    Below the last zoom, polygons are simplified to half a tile pixel. ``cell_deg`` says
    their corners lie on a grid of cells that many degrees wide (detections traced on a
    raster): zooms where a cell spans at least two tile pixels are then not simplified,
    since nothing would be removed there. Returns the number of tiles written.

    Raises:
        ValueError: if there are no features.
    """
    from pmtiles.tile import Compression, TileType

    if not features:
        raise ValueError("no features to write")
    geoms = [g for g, _ in features]
    west, south, east, north = (float(v) for v in shapely.total_bounds(geoms))
    zmin, zmax = zoom
    tiles: list[tuple[int, bytes]] = []
    extent = 4096
    geom_array = np.asarray(geoms, dtype=object)
    keys = list(features[0][1])
    props = np.array([[float(p[key]) for key in keys] for _, p in features], np.float64)
    buffer = 64 / extent
    unsimplified: list[_ZoomFeatures] = []  # at zmax, shared by every zoom left as it is
    for z in range(zmin, zmax + 1):
        x0, x1, y0, y1 = _tile_range((west, south, east, north), z)
        coarse = cell_deg is None or cell_deg / 360.0 * 2**z * extent < 2.0
        if z < zmax and coarse:
            zoom_set = _ZoomFeatures(_project_to_zoom(geom_array, z, True, extent))
        else:  # zmax's tile space scaled by a power of two: the same numbers, exactly
            if not unsimplified:
                unsimplified.append(
                    _ZoomFeatures(_project_to_zoom(geom_array, zmax, False, extent))
                )
            zoom_set = unsimplified[0].at(2.0 ** (z - zmax))

        def encode(
            xy: tuple[int, int], z: int = z, zoom_set: _ZoomFeatures = zoom_set
        ) -> tuple[int, bytes] | None:
            return _vector_tile(xy, z, zoom_set, buffer, layer, keys, props, extent)

        xys = [(tx, ty) for ty in range(y0, y1 + 1) for tx in range(x0, x1 + 1)]
        with ThreadPoolExecutor(worker_count()) as pool:  # shapely and zlib release the GIL
            tiles += [t for t in pool.map(encode, xys) if t is not None]
    header = _header((west, south, east, north), zmin, zmax, TileType.MVT, Compression.GZIP)
    return _write_archive(path, tiles, header, _vector_metadata(metadata, layer, keys, zoom))


def _project_to_zoom(geom_array: NDArray[Any], z: int, simplify: bool, extent: int) -> NDArray[Any]:
    """Lon/lat geometries in zoom ``z``'s tile space (x right, y down; 1 unit = 1 tile)."""
    n = 2**z

    # all features at once into this zoom's tile space
    def fwd(xy: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.column_stack([(xy[:, 0] + 180.0) / 360.0 * n, _lat_to_y(xy[:, 1], n)])

    projected = shapely.transform(geom_array, fwd)
    if simplify:  # below the last zoom, detail under half a tile pixel is invisible
        projected = shapely.simplify(projected, 0.5 / extent, preserve_topology=True)
    return projected


class _ZoomFeatures:
    """One zoom's features: rings turned as MVT wants, bounds, a tree.

    Their coordinates are in a zoom's tile space; ``factor`` (a power of two) turns them
    into this zoom's (see :meth:`at`).
    """

    def __init__(self, projected: NDArray[Any]) -> None:
        self.geoms = shapely.orient_polygons(projected, exterior_cw=False)
        self.bounds = shapely.bounds(self.geoms)
        self.tree = shapely.STRtree(self.geoms)
        self.factor = 1.0

    def at(self, factor: float) -> _ZoomFeatures:
        """The same features for a zoom whose tile space is ``factor`` times theirs."""
        other = copy.copy(self)
        other.factor = factor
        return other

    def in_tile(self, rect: tuple[float, float, float, float]) -> tuple[NDArray[Any], Any]:
        """Indexes of the features meeting ``rect``, and their parts inside it.

        ``rect`` is in this zoom's units; the parts are in the features' own.
        """
        rect = (
            rect[0] / self.factor,
            rect[1] / self.factor,
            rect[2] / self.factor,
            rect[3] / self.factor,
        )
        idx = np.sort(self.tree.query(box(*rect), predicate="intersects"))
        b = self.bounds[idx]
        inside = (b[:, 0] >= rect[0]) & (b[:, 1] >= rect[1]) & (b[:, 2] <= rect[2])
        inside &= b[:, 3] <= rect[3]
        geoms = self.geoms[idx]  # whole when inside; the others cut at the tile's edge
        cut = shapely.clip_by_rect(geoms[~inside], *rect)
        geoms[~inside] = shapely.orient_polygons(cut, exterior_cw=False)
        return idx, geoms


def _vector_tile(
    xy: tuple[int, int],
    z: int,
    features: _ZoomFeatures,
    buffer: float,
    layer: str,
    keys: list[str],
    props: NDArray[np.float64],
    extent: int,
) -> tuple[int, bytes] | None:
    """Tile id and gzipped MVT of tile ``xy`` of zoom ``z``, or None when it would be empty."""
    from pmtiles.tile import zxy_to_tileid

    tx, ty = xy
    rect = (tx - buffer, ty - buffer, tx + 1 + buffer, ty + 1 + buffer)
    idx, clipped = features.in_tile(rect)
    if len(idx) == 0:
        return None
    keep = ~shapely.is_empty(clipped) & np.isin(shapely.get_type_id(clipped), (3, 6))
    sel = idx[keep]
    f = features.factor  # a power of two: origin and scale stay exact
    origin, scale = (tx / f, ty / f), extent * f
    data = _mvt_tile(layer, clipped[keep], sel + 1, keys, props[sel], extent, origin, True, scale)
    if not data:
        return None
    return zxy_to_tileid(z, tx, ty), gzip.compress(data, compresslevel=6, mtime=0)


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
