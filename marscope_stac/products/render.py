"""Rendering per-cell values as rasters, PNG previews, raster and vector PMTiles.

Takes arrays and a grid, never a model. Tiles use the Web-Mercator z/x/y scheme on the body's
sphere (planetcantile's ``MarsWebMercatorSphere`` for Mars); PMTiles v3 archives are written
in tile-id order (clustered). Vector tiles are Mapbox Vector Tiles encoded here directly
(GDAL's writer silently produces empty archives for Mars CRSs).
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from PIL import Image

from marscope_stac.core.bodies import Body
from marscope_stac.core.fs import atomic_write_bytes
from marscope_stac.core.threads import worker_count
from marscope_stac.grid.grids import Grid, LonLatGrid

__all__ = [
    "PROBABILITY_NODATA",
    "PROBABILITY_SCALE",
    "PROBABILITY_STEPS",
    "RASTER_DEEPER",
    "RASTER_TILE_BUDGET",
    "RasterLayout",
    "cells_to_raster",
    "colorize",
    "padded_bytes",
    "quantize",
    "raster_palette",
    "raster_tile",
    "raster_zoom_range",
    "tile_metadata",
    "write_raster_pmtiles",
    "zoom_range",
]

MAX_LAT = 85.0511287798066


def tile_metadata(name: str, description: str, body: Body, kind: str = "overlay") -> dict[str, Any]:
    """PMTiles metadata every archive the project writes carries: what it shows, and where.

    The body, its geographic CRS and the tile matrix set (the Web Mercator maths on the
    body's sphere) say how to read the z/x/y tiles, which no PMTiles header can.
    """
    return {
        "name": name,
        "description": description,
        "type": kind,
        "body": body.name,
        "crs": body.geographic_code,
        "tile_matrix_set": f"{body.name}WebMercatorSphere",
        "attribution": "MarScope-STAC",
    }


@dataclass(frozen=True)
class RasterLayout:
    """Where each cell of a set falls in a lon/lat raster over the set's extent.

    For ``lonlat`` grids a pixel is a cell. For equal-area grids the pixel is the row height
    square (in degrees) and each pixel takes the value of the cell containing its centre.
    The layout depends only on the cells, so it is computed once per embedding set.

    Attributes:
        transform: Pixel-to-lon/lat transform.
        shape: (rows, cols).
        pixel_of_cell: Flat pixel of each cell (lonlat grids), else None.
        cell_of_pixel: Cell row of each flat pixel, -1 where none (equal-area grids), else None.
    """

    transform: Affine
    shape: tuple[int, int]
    pixel_of_cell: NDArray[np.int64] | None
    cell_of_pixel: NDArray[np.int64] | None

    @classmethod
    def of(cls, grid: Grid, cells: NDArray[np.int64]) -> RasterLayout:
        """The layout of ``cells`` (any order) on ``grid``."""
        cells = np.asarray(cells, np.int64)
        if isinstance(grid, LonLatGrid):
            row, col = grid.row_col(cells)
            r0, r1, c0, c1 = int(row.min()), int(row.max()), int(col.min()), int(col.max())
            # the same floating-point values as the cells' own bounds
            south, north = grid.row_lat_bounds(np.arange(r0, r1 + 1))
            res = float(np.min(north - south))
            west = -180.0 + c0 * (360.0 / grid.n_cols)
            transform = Affine(res, 0.0, west, 0.0, -res, float(north[-1]))
            shape = (r1 - r0 + 1, c1 - c0 + 1)
            return cls(transform, shape, (r1 - row) * shape[1] + (col - c0), None)
        b = grid.bounds(cells)
        west, south, east, north = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
        res = float(np.min(b[:, 3] - b[:, 1]))
        rows = max(1, round((north - south) / res))
        cols = max(1, round((east - west) / res))
        yy, xx = np.mgrid[0:rows, 0:cols]
        idx = grid.locate((west + (xx + 0.5) * res).ravel(), (north - (yy + 0.5) * res).ravel())
        order = np.argsort(cells)
        pos = np.clip(np.searchsorted(cells[order], idx), 0, len(cells) - 1)
        found = cells[order][pos] == idx
        cell_of_pixel = np.where(found, order[pos], -1).astype(np.int64)
        return cls(Affine(res, 0.0, west, 0.0, -res, north), (rows, cols), None, cell_of_pixel)

    def raster(self, values: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """The raster of per-cell ``values`` (NaN where there is no cell)."""
        if self.pixel_of_cell is not None:
            out = np.full(self.shape[0] * self.shape[1], np.nan, np.float32)
            out[self.pixel_of_cell] = values
            return out.reshape(self.shape)
        assert self.cell_of_pixel is not None
        v = np.asarray(values, np.float32)
        out = np.where(self.cell_of_pixel >= 0, v[np.maximum(self.cell_of_pixel, 0)], np.nan)
        return out.astype(np.float32).reshape(self.shape)


def cells_to_raster(
    grid: Grid,
    cells: NDArray[np.int64],
    values: NDArray[np.float32],
) -> tuple[NDArray[np.float32], Affine]:
    """A lon/lat raster (NaN where no cell) over the cells' extent (see :class:`RasterLayout`)."""
    layout = RasterLayout.of(grid, cells)
    return layout.raster(values), layout.transform


STORED_COLOURMAPS = ("magma",)
"""Colour maps kept as tables in the package (``data/colormaps/<name>.rgba``: 256 RGBA
bytes, matplotlib's own, checked by the tests), so a query need not import matplotlib."""


@cache
def _lut(cmap: str) -> NDArray[np.uint8]:
    """256 RGBA colours of a matplotlib colour map (stored, or from matplotlib when drawing)."""
    if cmap in STORED_COLOURMAPS:
        stored = files("marscope_stac") / "data" / "colormaps" / f"{cmap}.rgba"
        return np.frombuffer(stored.read_bytes(), np.uint8).reshape(256, 4).copy()
    from marscope_stac.core.plots import matplotlib

    return (matplotlib().colormaps[cmap](np.linspace(0, 1, 256)) * 255).astype(np.uint8)


def colorize(values: NDArray[np.float32], cmap: str = "magma") -> NDArray[np.uint8]:
    """RGBA image of values in 0..1; NaN is transparent."""
    idx = np.fmin(np.fmax(values, 0.0) * 255, 255).astype(np.uint8)  # fmax: NaN -> 0
    rgba = _lut(cmap)[idx]
    rgba[..., 3] = np.where(np.isnan(values), 0, 255)
    return rgba


PROBABILITY_STEPS = 250
"""Probabilities are stored as ``round(p * 250)`` in uint8 (scale 0.004); 255 is no data."""
PROBABILITY_SCALE = 1.0 / PROBABILITY_STEPS
PROBABILITY_NODATA = 255


def quantize(
    values: NDArray[np.float32], steps: int = PROBABILITY_STEPS, nodata: int = PROBABILITY_NODATA
) -> NDArray[np.uint8]:
    """Values in 0..1 as uint8 ``round(v * steps)`` (NaN -> ``nodata``): the products' encoding."""
    # fmax/fmin: NaN -> 0 (then no data), infinities clipped, without nan_to_num's copies
    out = np.rint(np.fmin(np.fmax(values, 0.0), 1.0) * steps).astype(np.uint8)
    out[np.isnan(values)] = nodata
    return out


def _lat_to_y(lat: NDArray[np.float64] | float, n: int) -> NDArray[np.float64]:
    la = np.radians(np.clip(lat, -MAX_LAT, MAX_LAT))
    return np.asarray((1.0 - np.log(np.tan(la) + 1.0 / np.cos(la)) / math.pi) / 2.0 * n)


def _y_to_lat(y: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    return np.degrees(np.arctan(np.sinh(math.pi * (1.0 - 2.0 * y / n))))


def zoom_range(res_deg: float, levels: int = 4, deeper: int = 0) -> tuple[int, int]:
    """Zoom levels fitted to a raster of ``res_deg`` degree pixels.

    At zoom ``z`` a tile pixel at the equator is ``360 / (256 * 2^z)`` degrees. The base zoom
    is the first whose pixels are no coarser than the raster's; ``levels`` coarser zooms lie
    below it and ``deeper`` finer ones above it (raster tiles go two deeper, so cell edges
    fall within a quarter cell of their true place, as the vector outlines do).
    """
    base = min(max(0, math.ceil(math.log2(360.0 / (256.0 * res_deg)))), 18)
    return max(0, base - levels), min(base + deeper, 20)


RASTER_DEEPER = 2
"""Zoom levels that raster tiles go beyond the raster's own resolution (at most)."""

RASTER_TILE_BUDGET = 8192
"""Most tiles at the deepest raster zoom: beyond it the raster goes one level deeper only."""


def raster_zoom_range(transform: Affine, shape: tuple[int, int]) -> tuple[int, int]:
    """Zooms of a raster's tiles: from 4 below its resolution to 2 beyond it.

    At two levels beyond, a tile pixel is at most a quarter of a cell, so cell edges fall
    within an eighth of a cell of the vector outlines. When that deepest level would need
    more than :data:`RASTER_TILE_BUDGET` tiles (a whole planet on a fine grid), the tiles
    go one level beyond only (edges within a quarter of a cell), bounding the cost.
    """
    rows, cols = shape
    bounds = (
        transform.c,
        transform.f + transform.e * rows,
        transform.c + transform.a * cols,
        transform.f,
    )
    zmin, base = zoom_range(float(transform.a))
    for deeper in range(RASTER_DEEPER, 0, -1):
        x0, x1, y0, y1 = _tile_range(bounds, base + deeper)
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= RASTER_TILE_BUDGET:
            return zmin, base + deeper
    return zmin, base + 1


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


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def _palette_chunks(cmap: str, steps: int, nodata: int) -> bytes:
    """PLTE and tRNS chunks: index ``v`` is the colour of ``v / steps``; ``nodata`` is clear."""
    idx = np.clip(np.rint(np.arange(256) / steps * 255), 0, 255).astype(int)
    rgb = _lut(cmap)[idx, :3].copy()
    alpha = np.full(256, 255, np.uint8)
    alpha[nodata] = 0
    rgb[nodata] = 0
    return _png_chunk(b"PLTE", rgb.tobytes()) + _png_chunk(b"tRNS", alpha.tobytes())


def _categorical_chunks(colours: Sequence[str], nodata: int) -> bytes:
    """PLTE and tRNS chunks of a categorical palette (hex RGB per value); ``nodata`` clear."""
    rgb = np.zeros((256, 3), np.uint8)
    for k, colour in enumerate(colours[:256]):
        rgb[k] = [int(colour[i : i + 2], 16) for i in (0, 2, 4)]
    alpha = np.full(256, 255, np.uint8)
    alpha[nodata] = 0
    rgb[nodata] = 0
    return _png_chunk(b"PLTE", rgb.tobytes()) + _png_chunk(b"tRNS", alpha.tobytes())


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_256 = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 256, 256, 8, 3, 0, 0, 0))


def _deflate(data: NDArray[np.uint8]) -> bytes:
    """A zlib stream of PNG scanlines: ISA-L (several times faster) or zlib's RLE strategy."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
        c = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
        return c.compress(data.data) + c.flush()
    return bytes(isal_zlib.compress(data.data, 0))


def _palette_png(filtered: NDArray[np.uint8], palette: bytes) -> bytes:
    """An 8-bit palette PNG of a 256 x 256 tile from its filtered scanlines (257 bytes each)."""
    return (
        _PNG_SIGNATURE
        + _IHDR_256
        + palette
        + _png_chunk(b"IDAT", _deflate(filtered))
        + _png_chunk(b"IEND", b"")
    )


def _sub_filtered(img: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """PNG 'Sub' filter (type 1) of scanlines of a row of 256-pixel-wide tiles.

    Each pixel minus its left neighbour within its tile (uint8 wrap-around), so runs of a
    cell's value become zeros and tiles deflate to almost nothing.
    """
    sub = np.empty_like(img)
    sub[:, 0] = img[:, 0]
    np.subtract(img[:, 1:], img[:, :-1], out=sub[:, 1:])
    sub[:, ::256] = img[:, ::256]  # each tile's first pixel has no left neighbour
    return sub


def _scanlines(sub: NDArray[np.uint8], new_line: NDArray[np.bool_], k: int) -> NDArray[np.uint8]:
    """The 256 filtered scanlines (filter byte + 256 bytes) of tile ``k`` of a tile row.

    Lines that sample a new source row use 'Sub' (their data is ``sub``, one line per new
    row); lines that repeat the line above use 'Up' (type 2), whose data is all zeros.
    """
    buf = np.zeros((256, 257), np.uint8)
    buf[:, 0] = np.where(new_line, 1, 2)
    buf[new_line, 1:] = sub[:, k * 256 : (k + 1) * 256]
    return buf


# one row of raster tiles: zoom, first tile column, tile row, source rows, source columns
_TileRowJob = tuple[int, int, int, NDArray[np.int64], NDArray[np.int64]]


def write_raster_pmtiles(
    path: str | os.PathLike[str],
    values: NDArray[np.float32] | NDArray[np.uint8],
    transform: Affine,
    metadata: dict[str, Any],
    zoom: tuple[int, int] | None = None,
    cmap: str = "magma",
    steps: int = PROBABILITY_STEPS,
    nodata: int = PROBABILITY_NODATA,
    colours: Sequence[str] | None = None,
) -> int:
    """Write a PNG raster PMTiles archive of a lon/lat raster (no data transparent).

    ``values`` are floats in 0..1 (NaN: no data) or already quantised bytes (``v * steps``,
    ``nodata``). ``colours`` (hex RGB, one per byte value) replace the colour map, for
    categorical rasters such as class maps. Tiles are 8-bit palette PNGs sampled at pixel
    centres on the Web-Mercator z/x/y scheme of the body's sphere; tiles with no data are left
    out. Returns the number of tiles written.

    Raises:
        ValueError: if the raster holds no data at all.
    """
    from pmtiles.tile import Compression, TileType

    padded = padded_bytes(values, steps, nodata)
    rows, cols = padded.shape[0] - 1, padded.shape[1] - 1
    bounds = _raster_bounds(transform, (rows, cols))
    zmin, zmax = zoom or raster_zoom_range(transform, (rows, cols))
    palette = raster_palette(cmap, steps, nodata, colours)
    jobs = _tile_row_jobs(bounds, zmin, zmax, ~transform, (rows, cols))

    def encode(job: _TileRowJob) -> list[tuple[int, bytes]]:
        return _encode_tile_row(job, padded, nodata, palette)

    with ThreadPoolExecutor(worker_count()) as pool:
        tiles = [t for row_tiles in pool.map(encode, jobs) for t in row_tiles]
    header = _header(bounds, zmin, zmax, TileType.PNG, Compression.NONE)
    return _write_archive(path, tiles, header, {**metadata, "format": "png"})


def raster_tile(
    padded: NDArray[np.uint8],
    transform: Affine,
    zxy: tuple[int, int, int],
    zoom: tuple[int, int],
    palette: bytes,
    nodata: int = PROBABILITY_NODATA,
) -> bytes | None:
    """One tile of :func:`write_raster_pmtiles`'s archive, the same bytes; None when it has none.

    ``padded`` is :func:`padded_bytes` of the raster. Tiles outside ``zoom``, outside the
    raster, or holding no data are None (the archive leaves them out).
    """
    z, x, y = zxy
    rows, cols = padded.shape[0] - 1, padded.shape[1] - 1
    if not zoom[0] <= z <= zoom[1]:
        return None
    x0, x1, y0, y1 = _tile_range(_raster_bounds(transform, (rows, cols)), z)
    if not (x0 <= x <= x1 and y0 <= y <= y1):
        return None
    job = _tile_row_jobs_at(z, (x, x, y, y), ~transform, (rows, cols))
    found = _encode_tile_row(job[0], padded, nodata, palette) if job else []
    return found[0][1] if found else None


def raster_palette(
    cmap: str = "magma",
    steps: int = PROBABILITY_STEPS,
    nodata: int = PROBABILITY_NODATA,
    colours: Sequence[str] | None = None,
) -> bytes:
    """The PLTE and tRNS chunks :func:`write_raster_pmtiles` gives its tiles."""
    return _categorical_chunks(colours, nodata) if colours else _palette_chunks(cmap, steps, nodata)


def _raster_bounds(transform: Affine, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """West, south, east, north of a north-up raster."""
    rows, cols = shape
    res = transform.a
    return (transform.c, transform.f + transform.e * rows, transform.c + res * cols, transform.f)


def padded_bytes(
    values: NDArray[np.float32] | NDArray[np.uint8], steps: int, nodata: int
) -> NDArray[np.uint8]:
    """The raster as bytes, plus a row and a column of no data; raises if it has no data."""
    u8 = (
        np.asarray(values, np.uint8)
        if values.dtype == np.uint8
        else quantize(np.asarray(values, np.float32), steps, nodata)
    )
    if (u8 == nodata).all():
        raise ValueError("nothing to render: the raster has no data")
    rows, cols = u8.shape
    # one extra row and column of no data, where samples outside the raster point
    padded = np.full((rows + 1, cols + 1), nodata, np.uint8)
    padded[:rows, :cols] = u8
    return padded


def _tile_row_jobs(
    bounds: Sequence[float], zmin: int, zmax: int, inv: Affine, shape: tuple[int, int]
) -> list[_TileRowJob]:
    """The rows of tiles holding data, with the source row and column of every pixel."""
    # one job per row of tiles: its pixels are sampled in one gather, filtered at once,
    # and each tile is compressed (zlib releases the GIL, so rows run in parallel)
    return [
        job
        for z in range(zmin, zmax + 1)
        for job in _tile_row_jobs_at(z, _tile_range(bounds, z), inv, shape)
    ]


def _tile_row_jobs_at(
    z: int, tile_range: tuple[int, int, int, int], inv: Affine, shape: tuple[int, int]
) -> list[_TileRowJob]:
    """:func:`_tile_row_jobs` of zoom ``z`` within ``tile_range`` (x0, x1, y0, y1)."""
    rows, cols = shape
    # samples outside the raster point at the padding row or column (``rows``, ``cols``)
    n = 2**z
    x0, x1, y0, y1 = tile_range
    px = np.arange(x0 * 256, (x1 + 1) * 256, dtype=np.float64) + 0.5
    col = np.floor(inv.a * (px / (256 * n) * 360.0 - 180.0) + inv.c).astype(np.int64)
    col = np.where((col >= 0) & (col < cols), col, cols)
    py = np.arange(y0 * 256, (y1 + 1) * 256, dtype=np.float64) + 0.5
    row = np.floor(inv.e * _y_to_lat(py / 256, n) + inv.f).astype(np.int64)
    row = np.where((row >= 0) & (row < rows), row, rows).reshape(-1, 256)
    return [
        (z, x0, ty, row[ty - y0], col)
        for ty in range(y0, y1 + 1)
        if not (row[ty - y0] == rows).all()
    ]


def _encode_tile_row(
    job: _TileRowJob, padded: NDArray[np.uint8], nodata: int, palette: bytes
) -> list[tuple[int, bytes]]:
    """The tile ids and palette PNGs of one row of tiles, tiles with no data left out."""
    from pmtiles.tile import zxy_to_tileid

    z, x0, ty, r, col = job
    # a tile line repeats the one above when it samples the same source row: only the
    # distinct rows are sampled and filtered
    new_line = np.r_[True, r[1:] != r[:-1]]
    img = padded[r[new_line]][:, col]
    empty = (img == nodata).reshape(len(img), -1, 256).all(axis=(0, 2))
    if empty.all():
        return []
    sub = _sub_filtered(img)
    return [
        (zxy_to_tileid(z, x0 + k, ty), _palette_png(_scanlines(sub, new_line, k), palette))
        for k in np.flatnonzero(~empty).tolist()
    ]


# ----------------------------------------------------------------------------- MVT encoding


def save_png(
    path: str | Path, values: NDArray[np.float32], cmap: str = "magma", max_side: int = 1024
) -> Path:
    """A PNG preview of a raster (NaN transparent) about ``max_side`` pixels across.

    Small rasters are upscaled with nearest neighbours (up to 16x); large ones are sampled
    at every n-th pixel before colouring, so a planet's preview costs little.
    """
    step = max(1, math.ceil(max(values.shape) / max_side))
    small = values[::step, ::step]
    img = Image.fromarray(colorize(small, cmap), "RGBA")
    scale = max(1, min(max_side // max(small.shape), 16))
    img = img.resize((small.shape[1] * scale, small.shape[0] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
