"""Rendering per-cell values as rasters, PNG previews, raster and vector PMTiles.

Takes arrays and a grid, never a model. Tiles use the Web-Mercator z/x/y scheme on the body's
sphere (planetcantile's ``MarsWebMercatorSphere`` for Mars); PMTiles v3 archives are written
in tile-id order (clustered). Vector tiles are Mapbox Vector Tiles encoded here directly
(GDAL's writer silently produces empty archives for Mars CRSs).
"""

from __future__ import annotations

import gzip
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from marscope_stac.fsutil import atomic_write_bytes
from marscope_stac.grid import Grid, LonLatGrid

__all__ = [
    "cells_to_raster",
    "colorize",
    "detections",
    "write_raster_pmtiles",
    "write_vector_pmtiles",
]

MAX_LAT = 85.0511287798066


def cells_to_raster(
    grid: Grid,
    cells: NDArray[np.int64],
    values: NDArray[np.float32],
) -> tuple[NDArray[np.float32], Affine]:
    """A lon/lat raster (NaN where no cell) over the cells' extent, one row per grid row.

    For ``lonlat`` grids a pixel is a cell. For equal-area grids the pixel is the row height
    square (in degrees) and each pixel takes the value of the cell containing its centre.
    """
    b = grid.bounds(cells)
    west, south, east, north = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    res = float(np.min(b[:, 3] - b[:, 1]))
    rows = max(1, round((north - south) / res))
    cols = max(1, round((east - west) / res))
    transform = Affine(res, 0.0, west, 0.0, -res, north)
    out = np.full((rows, cols), np.nan, np.float32)
    if isinstance(grid, LonLatGrid):
        r = np.round((north - (b[:, 3] + b[:, 1]) / 2) / res - 0.5).astype(int)
        c = np.round(((b[:, 0] + b[:, 2]) / 2 - west) / res - 0.5).astype(int)
        out[r, c] = values
        return out, transform
    yy, xx = np.mgrid[0:rows, 0:cols]
    lon = west + (xx + 0.5) * res
    lat = north - (yy + 0.5) * res
    idx = grid.locate(lon.ravel(), lat.ravel())
    order = np.argsort(cells)
    pos = np.searchsorted(cells[order], idx)
    pos = np.clip(pos, 0, len(cells) - 1)
    found = cells[order][pos] == idx
    flat = np.full(idx.shape, np.nan, np.float32)
    flat[found] = values[order][pos[found]]
    return flat.reshape(rows, cols), transform


def colorize(values: NDArray[np.float32], cmap: str = "magma") -> NDArray[np.uint8]:
    """RGBA image of values in 0..1; NaN is transparent."""
    import matplotlib

    lut = (matplotlib.colormaps[cmap](np.linspace(0, 1, 256)) * 255).astype(np.uint8)
    idx = np.clip(np.nan_to_num(values, nan=0.0) * 255, 0, 255).astype(np.uint8)
    rgba = lut[idx]
    rgba[..., 3] = np.where(np.isnan(values), 0, 255)
    return rgba


def _png(rgba: NDArray[np.uint8]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _lat_to_y(lat: NDArray[np.float64] | float, n: int) -> NDArray[np.float64]:
    la = np.radians(np.clip(lat, -MAX_LAT, MAX_LAT))
    return np.asarray((1.0 - np.log(np.tan(la) + 1.0 / np.cos(la)) / math.pi) / 2.0 * n)


def _y_to_lat(y: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    return np.degrees(np.arctan(np.sinh(math.pi * (1.0 - 2.0 * y / n))))


def _zoom_range(res_deg: float, levels: int = 4) -> tuple[int, int]:
    """Zoom levels fitted to the data.

    At the top zoom a tile pixel is no coarser than a raster pixel at the equator; ``levels``
    coarser zooms lie below it.
    """
    zmax = max(0, math.ceil(math.log2(360.0 / (256.0 * res_deg))))
    zmax = min(zmax, 18)
    return max(0, zmax - levels), zmax


def _tile_range(bounds: Sequence[float], z: int) -> tuple[int, int, int, int]:
    west, south, east, north = bounds
    n = 2**z
    x0 = int(np.floor((west + 180.0) / 360.0 * n))
    x1 = int(np.floor((np.nextafter(east, -np.inf) + 180.0) / 360.0 * n))
    y0 = int(np.floor(_lat_to_y(min(north, MAX_LAT), n)))
    y1 = int(np.floor(_lat_to_y(max(south, -MAX_LAT), n) - 1e-9))
    return max(0, x0), min(n - 1, x1), max(0, y0), min(n - 1, y1)


def _header(
    bounds: Sequence[float], zmin: int, zmax: int, tile_type: Any, compression: Any
) -> dict[str, Any]:
    from pmtiles.tile import Compression

    west, south, east, north = bounds
    return {
        "tile_type": tile_type,
        "tile_compression": compression,
        "internal_compression": Compression.GZIP,
        "min_lon_e7": int(west * 1e7),
        "min_lat_e7": int(max(south, -MAX_LAT) * 1e7),
        "max_lon_e7": int(east * 1e7),
        "max_lat_e7": int(min(north, MAX_LAT) * 1e7),
        "center_zoom": (zmin + zmax) // 2,
        "center_lon_e7": int((west + east) / 2 * 1e7),
        "center_lat_e7": int((south + north) / 2 * 1e7),
    }


def _write_archive(
    path: str | os.PathLike[str],
    tiles: list[tuple[int, bytes]],
    header: dict[str, Any],
    metadata: dict[str, Any],
) -> int:
    from pmtiles.writer import Writer

    buf = io.BytesIO()
    writer = Writer(buf)
    for tid, data in sorted(tiles):
        writer.write_tile(tid, data)
    writer.finalize(header, metadata)
    atomic_write_bytes(path, buf.getvalue())
    return len(tiles)


def write_raster_pmtiles(
    path: str | os.PathLike[str],
    values: NDArray[np.float32],
    transform: Affine,
    metadata: dict[str, Any],
    zoom: tuple[int, int] | None = None,
    cmap: str = "magma",
) -> int:
    """Write a PNG raster PMTiles archive of a lon/lat raster (NaN transparent).

    Returns the number of tiles written (tiles with no data are left out).

    Raises:
        ValueError: if the raster holds no data at all.
    """
    from pmtiles.tile import Compression, TileType, zxy_to_tileid

    if np.isnan(values).all():
        raise ValueError("nothing to render: the raster has no data")
    rows, cols = values.shape
    res = transform.a
    bounds = (transform.c, transform.f + transform.e * rows, transform.c + res * cols, transform.f)
    zmin, zmax = zoom or _zoom_range(res)
    tiles: list[tuple[int, bytes]] = []
    inv = ~transform
    for z in range(zmin, zmax + 1):
        n = 2**z
        x0, x1, y0, y1 = _tile_range(bounds, z)
        for ty in range(y0, y1 + 1):
            py = ty + (np.arange(256, dtype=np.float64) + 0.5) / 256.0
            lat = _y_to_lat(py, n)
            for tx in range(x0, x1 + 1):
                lon = (tx + (np.arange(256) + 0.5) / 256.0) / n * 360.0 - 180.0
                col = np.floor(inv.a * lon + inv.c).astype(int)
                row = np.floor(inv.e * lat + inv.f).astype(int)
                ok_c = (col >= 0) & (col < cols)
                ok_r = (row >= 0) & (row < rows)
                if not ok_c.any() or not ok_r.any():
                    continue
                tile = np.full((256, 256), np.nan, np.float32)
                sub = values[np.clip(row, 0, rows - 1)][:, np.clip(col, 0, cols - 1)]
                mask = ok_r[:, None] & ok_c[None, :]
                tile[mask] = sub[mask]
                if np.isnan(tile).all():
                    continue
                tiles.append((zxy_to_tileid(z, tx, ty), _png(colorize(tile, cmap))))
    header = _header(bounds, zmin, zmax, TileType.PNG, Compression.NONE)
    return _write_archive(path, tiles, header, {**metadata, "format": "png"})


def detections(
    grid: Grid, cells: NDArray[np.int64], probability: NDArray[np.float32], threshold: float
) -> list[tuple[BaseGeometry, dict[str, float]]]:
    """Merge edge-adjacent cells at or above ``threshold`` into polygons with attributes.

    Works on the probability raster (:func:`cells_to_raster`): connected components are
    labelled and traced to polygons in C (``rasterio.features.shapes``), so planet-scale maps
    with many detections stay fast. Attributes: max and mean probability, number of cells.
    """
    from rasterio.features import shapes
    from scipy import ndimage
    from shapely.geometry import shape

    hit = probability >= threshold
    if not hit.any():
        return []
    values, transform = cells_to_raster(grid, cells, probability)
    mask = np.nan_to_num(values, nan=-1.0) >= threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    vmax = ndimage.maximum(values, labels, idx)
    vmean = ndimage.mean(values, labels, idx)
    count = ndimage.sum(mask, labels, idx)
    parts: dict[int, list[BaseGeometry]] = {}
    for geom, lab in shapes(
        labels.astype(np.int32), mask=mask, connectivity=4, transform=transform
    ):
        parts.setdefault(int(lab), []).append(shape(geom))
    out = []
    for lab, geoms in parts.items():
        g = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
        k = lab - 1
        out.append(
            (
                g,
                {
                    "max_probability": float(vmax[k]),
                    "mean_probability": float(vmean[k]),
                    "cells": int(count[k]),
                },
            )
        )
    out.sort(key=lambda t: -t[1]["max_probability"])
    return out


# ----------------------------------------------------------------------------- MVT encoding


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


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 31)


def _packed(values: Sequence[int]) -> bytes:
    return b"".join(_varint(v) for v in values)


def _polygon_commands(geom: BaseGeometry) -> list[int]:
    cmds: list[int] = []
    cx = cy = 0
    polys = list(getattr(geom, "geoms", [geom]))
    for poly in polys:
        poly = shapely.geometry.polygon.orient(poly, sign=1.0)  # positive area in tile coords
        for ring in [poly.exterior, *poly.interiors]:
            pts = np.round(np.asarray(ring.coords)[:-1]).astype(int)
            # drop repeated points after rounding
            keep = np.ones(len(pts), bool)
            keep[1:] = np.any(np.diff(pts, axis=0) != 0, axis=1)
            pts = pts[keep]
            if len(pts) < 3:
                continue
            x, y = int(pts[0, 0]), int(pts[0, 1])
            cmds += [(1 & 7) | (1 << 3), _zigzag(x - cx), _zigzag(y - cy)]
            cx, cy = x, y
            cmds.append((2 & 7) | ((len(pts) - 1) << 3))
            for px, py in pts[1:]:
                cmds += [_zigzag(int(px) - cx), _zigzag(int(py) - cy)]
                cx, cy = int(px), int(py)
            cmds.append((7 & 7) | (1 << 3))
    return cmds


def _mvt_tile(
    layer: str, features: list[tuple[BaseGeometry, dict[str, float]]], extent: int = 4096
) -> bytes:
    keys: list[str] = []
    values: list[float] = []
    feats = b""
    for fid, (geom, props) in enumerate(features, start=1):
        cmds = _polygon_commands(geom)
        if not cmds:
            continue
        tags = []
        for k, v in props.items():
            if k not in keys:
                keys.append(k)
            if float(v) not in values:
                values.append(float(v))
            tags += [keys.index(k), values.index(float(v))]
        body = (
            _field(1, 0, fid)
            + _field(2, 2, _packed(tags))
            + _field(3, 0, 3)
            + _field(4, 2, _packed(cmds))
        )
        feats += _field(2, 2, body)
    if not feats:
        return b""
    import struct

    layer_bytes = _field(15, 0, 2) + _field(1, 2, layer.encode()) + feats
    layer_bytes += b"".join(_field(3, 2, k.encode()) for k in keys)
    layer_bytes += b"".join(_field(4, 2, _field(3, 1, struct.pack("<d", v))) for v in values)
    layer_bytes += _field(5, 0, extent)
    return _field(3, 2, layer_bytes)


def write_vector_pmtiles(
    path: str | os.PathLike[str],
    features: list[tuple[BaseGeometry, dict[str, float]]],
    metadata: dict[str, Any],
    zoom: tuple[int, int],
    layer: str = "detections",
) -> int:
    """Write gzip-compressed Mapbox Vector Tiles of lon/lat polygons as PMTiles.

    Returns the number of tiles written.

    Raises:
        ValueError: if there are no features.
    """
    from pmtiles.tile import Compression, TileType, zxy_to_tileid

    if not features:
        raise ValueError("no features to write")
    geoms = [g for g, _ in features]
    west, south, east, north = shapely.union_all(geoms).bounds
    zmin, zmax = zoom
    tiles: list[tuple[int, bytes]] = []
    extent = 4096
    for z in range(zmin, zmax + 1):
        n = 2**z
        x0, x1, y0, y1 = _tile_range((west, south, east, north), z)
        # project to global pixel space of this zoom (x right, y down), tile coords later
        projected = []
        for g, props in features:

            def fwd(xy: NDArray[np.float64], n: int = n) -> NDArray[np.float64]:
                x = (xy[:, 0] + 180.0) / 360.0 * n
                y = _lat_to_y(xy[:, 1], n)
                return np.column_stack([x, y])

            projected.append((shapely.transform(g, fwd), props))
        tree = shapely.STRtree([g for g, _ in projected])
        for ty in range(y0, y1 + 1):
            for tx in range(x0, x1 + 1):
                buffer = 64 / extent
                tb = box(tx - buffer, ty - buffer, tx + 1 + buffer, ty + 1 + buffer)
                found = []
                for i in tree.query(tb, predicate="intersects"):
                    g, props = projected[int(i)]
                    clipped = g.intersection(tb)
                    if clipped.is_empty or not isinstance(clipped, Polygon | MultiPolygon):
                        continue
                    local = shapely.transform(
                        clipped,
                        lambda xy, tx=tx, ty=ty: np.column_stack(
                            [(xy[:, 0] - tx) * extent, (xy[:, 1] - ty) * extent]
                        ),
                    )
                    found.append((local, props))
                data = _mvt_tile(layer, found, extent)
                if data:
                    tiles.append((zxy_to_tileid(z, tx, ty), gzip.compress(data, mtime=0)))
    header = _header((west, south, east, north), zmin, zmax, TileType.MVT, Compression.GZIP)
    meta = {
        **metadata,
        "vector_layers": [
            {
                "id": layer,
                "fields": {k: "Number" for k in features[0][1]},
                "minzoom": zmin,
                "maxzoom": zmax,
            }
        ],
    }
    return _write_archive(path, tiles, header, meta)


def save_png(
    path: str | Path, values: NDArray[np.float32], cmap: str = "magma", max_side: int = 1024
) -> Path:
    """A PNG preview of a raster (NaN transparent), upscaled with nearest neighbours."""
    rgba = colorize(values, cmap)
    img = Image.fromarray(rgba, "RGBA")
    scale = max(1, min(max_side // max(values.shape), 16))
    img = img.resize((values.shape[1] * scale, values.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
