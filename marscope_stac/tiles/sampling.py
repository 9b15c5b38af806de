"""Cut source rasters into grid-cell tiles, lazily, in Dask tasks that read their own windows.

:func:`plan_tiles` decides which grid cells a :class:`~marscope_stac.stac.read.SourceSet` covers
and which rasters each cell needs. :func:`tile_batches` turns the plan into Dask tasks, each
reading a batch of cells: for every cell it reads only the source window under the cell (from a
COG overview when the tile is coarser than the source), maps every tile pixel back into the
raster (:meth:`~marscope_stac.grid.grids.Grid.tile_lonlat`, then the raster's own CRS, on a control
lattice interpolated to every pixel; separable for lon/lat cells over equirectangular rasters)
and samples it, mosaics cells that span several rasters, and normalises the pixels to 0..1.
Native planetary CRSs are kept end to end; PROJ is never asked to cross bodies.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import rasterio
import shapely
import shapely.affinity
from dask.delayed import Delayed
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window
from scipy import ndimage

from marscope_stac.core.errors import ConfigError, OutputError, SkippedInputWarning, check_range
from marscope_stac.core.fs import atomic_output, check_output_file
from marscope_stac.core.text import join_lines
from marscope_stac.grid.grids import Grid
from marscope_stac.stac.read import SourceAsset, SourceSet, load_sources

__all__ = [
    "TileBatch",
    "TilePlan",
    "cell_coverage",
    "check_context",
    "contact_sheet",
    "grown_bounds",
    "iter_tile_batches",
    "plan_tiles",
    "preview_tiles",
    "process_pool",
    "read_batch",
    "read_batch_shared",
    "read_in_processes",
    "receive_batch",
    "scale_pixels",
    "tile_batches",
]

Normalize = Literal["auto", "percentile", "none"]


@dataclass
class TilePlan:
    """Which cells to render and from which rasters.

    Attributes:
        grid: The grid.
        tile_px: Tile side in pixels.
        cells: Cell indexes, sorted.
        sources: The rasters.
        cell_sources: For each cell, indexes into ``sources`` (first wins in mosaics).
        context: Margin around each cell that its tile also shows, in cell sides on every
            side: 0 renders the cell alone, 1 the cell and the ring of its neighbours (a tile
            three cells wide, the cell in the middle third).
    """

    grid: Grid
    tile_px: int
    cells: NDArray[np.int64]
    sources: list[SourceAsset]
    cell_sources: list[list[int]] = field(default_factory=list)
    context: float = 0.0

    def __len__(self) -> int:
        return len(self.cells)

    def subset(self, start: int, stop: int) -> TilePlan:
        """The plan of cells ``start:stop``, with only the rasters they need."""
        used = sorted({s for ss in self.cell_sources[start:stop] for s in ss})
        remap = {old: new for new, old in enumerate(used)}
        return TilePlan(
            grid=self.grid,
            tile_px=self.tile_px,
            cells=self.cells[start:stop],
            sources=[self.sources[i] for i in used],
            cell_sources=[[remap[s] for s in ss] for ss in self.cell_sources[start:stop]],
            context=self.context,
        )

    def take(self, positions: Sequence[int] | NDArray[np.intp]) -> TilePlan:
        """The plan of the cells at ``positions`` (in that order), with every raster kept."""
        return TilePlan(
            self.grid,
            self.tile_px,
            self.cells[np.asarray(positions, dtype=np.intp)],
            self.sources,
            [self.cell_sources[k] for k in positions],
            self.context,
        )


@dataclass
class TileBatch:
    """Rendered tiles of a batch of cells.

    Attributes:
        cells: Cell indexes.
        pixels: ``float32`` array (n, tile_px, tile_px) in 0..1; pixels with no data hold the
            tile's mean so they do not read as structure.
        valid: Fraction of each cell covered by data, 0..1 (of the tile's middle when the
            tile shows context: a cell at the imagery's edge is judged by its own pixels).
        sources: For each cell, the ids of the items it was read from.
        errors: ``(cell index, reason)`` for cells that could not be read (their valid is 0).
    """

    cells: NDArray[np.int64]
    pixels: NDArray[np.float32]
    valid: NDArray[np.float32]
    sources: list[list[str]]
    errors: list[tuple[int, str]] = field(default_factory=list)


def plan_tiles(
    sources: SourceSet,
    grid: Grid,
    tile_px: int,
    bbox: Sequence[float] | None = None,
    limit: int | None = None,
    context: float = 0.0,
) -> TilePlan:
    """Plan the tiles of every grid cell that intersects a source footprint (and ``bbox``).

    With ``context`` (see :class:`TilePlan`) a cell also lists the rasters under its margin.

    Raises:
        ConfigError: for a bad tile size or context, a grid of another body, or an empty plan.
    """
    if not 8 <= tile_px <= 4096:
        raise ConfigError(f"tile size {tile_px} px is out of range; use 8..4096 (e.g. 224)")
    check_context(context)
    if grid.body is not sources.body:
        raise ConfigError(
            f"the grid is for {grid.body.name} but the imagery is of {sources.body.name}"
        )
    by_cell: dict[int, list[int]] = {}
    area = shapely.box(*bbox) if bbox is not None and bbox[0] <= bbox[2] else None
    near: dict[int, list[int]] = {}  # rasters under a cell's margin only
    for si, src in enumerate(sources.assets):
        for part in getattr(src.footprint, "geoms", [src.footprint]):
            idx = _cells_near(grid, part.bounds, context)
            if not len(idx):
                continue
            b = grid.bounds(idx)
            own = _overlaps(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), part)
            if area is not None:
                own &= _overlaps(shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3]), area)
            for cell in idx[own].tolist():
                by_cell.setdefault(cell, []).append(si)
            if context > 0:
                g = grown_bounds(b, context)
                seen = _overlaps(shapely.box(g[:, 0], g[:, 1], g[:, 2], g[:, 3]), part) & ~own
                for cell in [*idx[seen].tolist(), *_across_seam(grid, part, context)]:
                    near.setdefault(cell, []).append(si)
    if not by_cell:
        raise ConfigError(f"no cell of grid {grid.spec} intersects the imagery (and bbox)")
    cells = np.array(sorted(by_cell), dtype=np.int64)
    if limit is not None:
        cells = cells[:limit]

    def finest(ids: list[int]) -> list[int]:  # mosaics prefer the sharpest data
        return sorted(dict.fromkeys(ids), key=lambda i: sources.assets[i].res[0])

    cell_sources = [
        finest(by_cell[c]) + [i for i in finest(near.get(c, [])) if i not in by_cell[c]]
        for c in cells.tolist()
    ]
    return TilePlan(grid, tile_px, cells, list(sources.assets), cell_sources, context)


def check_context(context: float) -> None:
    """Raise :class:`ConfigError` unless ``context`` is a margin of 0..4 cell sides."""
    if not (math.isfinite(context) and 0.0 <= context <= 4.0):
        raise ConfigError(f"tile context {context} is out of range; use 0..4 cell sides (e.g. 1)")


def grown_bounds(b: NDArray[np.float64], context: float) -> NDArray[np.float64]:
    """Cell bounds (m, 4: west, south, east, north) grown by ``context`` cell sides each way."""
    if context == 0:
        return b
    dx = (b[:, 2] - b[:, 0]) * context
    dy = (b[:, 3] - b[:, 1]) * context
    return np.stack([b[:, 0] - dx, b[:, 1] - dy, b[:, 2] + dx, b[:, 3] + dy], axis=1)


def _cells_near(grid: Grid, bounds: Sequence[float], context: float) -> NDArray[np.int64]:
    """Cells that intersect ``bounds`` or, with ``context``, whose margin may reach it."""
    w, s, e, n = bounds
    idx = grid.cells_in_bbox(w, s, e, n)
    if context == 0 or not len(idx):
        return idx
    b = grid.bounds(idx)
    mx = float(np.max(b[:, 2] - b[:, 0])) * context
    my = float(np.max(b[:, 3] - b[:, 1])) * context
    return grid.cells_in_bbox(
        max(w - mx, -180.0), max(s - my, -90.0), min(e + mx, 180.0), min(n + my, 90.0)
    )


def _across_seam(grid: Grid, part: Any, context: float) -> list[int]:
    """Cells on the other side of the antimeridian whose margin reaches ``part``.

    The cells along longitude -180 (and 180) are grown by their margin and compared with the
    footprint part moved by one turn, so a raster that ends at or near the antimeridian is
    listed under the margins of the cells across it.
    """
    w, s, e, n = part.bounds
    cells: list[int] = []
    eps = 1e-6  # degrees: the strip of cells along the antimeridian
    for shift, edge in ((-360.0, -180.0), (360.0, 180.0 - eps)):
        idx = _cells_near(grid, (edge, s, edge + eps, n), context)
        if not len(idx):
            continue
        g = grown_bounds(grid.bounds(idx), context)
        if e + shift <= g[:, 0].min() or w + shift >= g[:, 2].max():
            continue  # out of reach of every margin (the usual case)
        moved = shapely.affinity.translate(part, xoff=shift)
        cells += idx[_overlaps(shapely.box(g[:, 0], g[:, 1], g[:, 2], g[:, 3]), moved)].tolist()
    return cells


def _overlaps(boxes: NDArray[Any], geom: Any, min_share: float = 1e-6) -> NDArray[np.bool_]:
    """Cells sharing more than ``min_share`` of their area with ``geom`` (no float touching)."""
    share = shapely.area(shapely.intersection(boxes, geom)) / shapely.area(boxes)
    return np.asarray(share > min_share)


def scale_pixels(
    values: NDArray[np.float32],
    valid: NDArray[np.bool_],
    dtype: str,
    scale: float,
    mode: Normalize = "auto",
) -> NDArray[np.float32]:
    """Pixel values scaled to 0..1 (invalid pixels keep whatever they had).

    ``auto``: 8-bit images without a scale are divided by 255, anything else is stretched
    between its 1st and 99th percentiles of valid pixels and clipped; ``percentile`` always
    stretches; ``none`` leaves values as they are.
    """
    if mode == "none" or not valid.any():
        return values
    if mode == "auto" and dtype == "uint8" and scale == 1.0:
        out = values / 255.0
    else:
        lo, hi = np.percentile(values[valid], [1.0, 99.0])
        out = (values - lo) / max(hi - lo, 1e-12)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _normalise(
    tile: NDArray[np.float32], valid: NDArray[np.bool_], dtype: str, scale: float, mode: Normalize
) -> NDArray[np.float32]:
    if not valid.any():
        return np.zeros_like(tile)
    out = scale_pixels(tile, valid, dtype, scale, mode)
    fill = float(out[valid].mean())
    return np.where(valid, out, fill).astype(np.float32)


class _SourceReader:
    """An open raster with a cached lon/lat -> raster CRS transformer."""

    def __init__(self, meta: SourceAsset) -> None:
        self.meta = meta
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
            self.ds = rasterio.open(meta.href)
        self.inv = ~self.ds.transform
        self.geographic = meta.crs.is_geographic
        self.to_src = Transformer.from_crs(meta.body.crs, meta.crs, always_xy=True)
        self.separable: bool | None = None
        # columns per turn of longitude (separable projected rasters), measured before
        # pixel_coords unwraps with it; wrap: the width of a raster that covers every longitude
        self.period: float | None = None
        self.period = self._turn_columns()
        self.wrap = (
            self.ds.width if self.period and abs(self.period - self.ds.width) < 0.5 else None
        )

    def close(self) -> None:
        self.ds.close()

    def _turn_columns(self) -> float | None:
        """Columns per 360 degrees of longitude, for a raster whose columns follow longitude.

        A raster that covers every longitude (a global mosaic) continues across its left and
        right edges, and a tile that crosses the antimeridian reads on past the edge; a
        projected one (PROJ returns longitudes past 180 on the other side) is unwrapped with
        it. None for rasters whose columns do not follow longitude alone.
        """
        if self.ds.width < 2 or not _separable_source(self):
            return None
        col = self.pixel_coords(np.array([-90.0, 90.0]), np.zeros(2))[0]
        per = 2.0 * abs(float(col[1] - col[0]))
        return per if per > 0 else None

    def pixel_coords(
        self, lon: NDArray[np.float64], lat: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(col, row) positions in this raster of lon/lat points.

        Each tile (the last axis) is kept continuous around its middle longitude, and that
        middle is put within half a turn of the raster's centre: sources in 0..360 work, and
        a tile that crosses the antimeridian or the raster's seam is not torn apart. Points
        past a pole (tiles with context reach there) are not finite for projected rasters and
        outside geographic ones: no data.
        """
        if self.geographic:
            left, _, right, _ = self.meta.bounds
            centre = 0.5 * (left + right)
            lon = np.asarray(lon, dtype=np.float64)
            mid = np.take(lon, [lon.shape[-1] // 2], axis=-1) if lon.ndim else lon
            mid = centre + np.mod(mid - centre + 180.0, 360.0) - 180.0
            x, y = mid + np.mod(lon - mid + 180.0, 360.0) - 180.0, lat
        else:
            x, y = self.to_src.transform(lon, lat)
        a = self.inv
        with np.errstate(invalid="ignore"):  # inf (no position) times a zero term
            col = np.asarray(a.a * x + a.b * y + a.c)
            row = a.d * x + a.e * y + a.f
        if self.period and not self.geographic and col.ndim:
            p, centre = self.period, 0.5 * self.ds.width
            m = np.take(col, [col.shape[-1] // 2], axis=-1)
            mid = centre + np.mod(m - centre + 0.5 * p, p) - 0.5 * p
            col = mid + np.mod(col - m + 0.5 * p, p) - 0.5 * p
        return col, np.asarray(row)


_LOCAL = threading.local()
_MAX_OPEN = 32


def _reader(meta: SourceAsset) -> _SourceReader:
    """A per-thread, reused open reader, so GDAL's block cache serves the following batches.

    Local files are keyed by path, size and modification time, so a file that changed is
    opened afresh.
    """
    cache: OrderedDict[tuple[str, int, int], _SourceReader] = (
        getattr(_LOCAL, "readers", None) or OrderedDict()
    )
    _LOCAL.readers = cache
    try:
        st = Path(meta.href).stat()
        key = (meta.href, st.st_size, st.st_mtime_ns)
    except OSError:
        key = (meta.href, -1, -1)
    rd = cache.get(key)
    if rd is not None and rd.meta == meta:
        cache.move_to_end(key)
        return rd
    rd = _SourceReader(meta)
    cache[key] = rd
    while len(cache) > _MAX_OPEN:
        _, old = cache.popitem(last=False)
        old.close()
    return rd


def _control_points(tile_px: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pixel-centre positions, and a coarser lattice through them where projections are smooth."""
    centres = np.arange(tile_px, dtype=np.float64) + 0.5
    if tile_px <= 33:
        return centres, centres
    return centres, np.linspace(0.5, tile_px - 0.5, 33)


@functools.lru_cache(maxsize=16)
def _interp_matrix(n_out: int, n_ctrl: int) -> NDArray[np.float64]:
    """Linear weights from the control lattice to the pixel centres, shape (n_out, n_ctrl)."""
    centres, ctrl = _control_points(n_out)
    pos = np.interp(centres, ctrl, np.arange(n_ctrl, dtype=np.float64))
    lo = np.minimum(np.floor(pos).astype(int), n_ctrl - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_ctrl))
    w[np.arange(n_out), lo] = 1.0 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _densify(coarse: NDArray[np.float64], n_out: int) -> NDArray[np.float64]:
    """Bilinear interpolation of a control lattice to every pixel centre (separable)."""
    if coarse.shape[0] == n_out:
        return coarse
    w = _interp_matrix(n_out, coarse.shape[0])
    return np.asarray(w @ coarse @ w.T)


def _axis_weights(pos: NDArray[np.float64], length: int, order: int) -> NDArray[np.float32]:
    """Interpolation weights (len(pos), length) along one axis; rows of missing taps sum < 1."""
    w = np.zeros((len(pos), length), np.float32)
    rows = np.arange(len(pos))
    if order == 0:
        idx = np.floor(pos + 0.5).astype(int)
        ok = (idx >= 0) & (idx < length)
        w[rows[ok], idx[ok]] = 1.0
        return w
    lo = np.floor(pos).astype(int)
    frac = pos - lo
    for tap, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = (tap >= 0) & (tap < length)
        w[rows[ok], tap[ok]] += weight[ok]
    return w


def _sample_separable(
    arr: NDArray[np.float32], rows: NDArray[np.float64], cols: NDArray[np.float64], order: int
) -> NDArray[np.float32]:
    """Sample ``arr`` (NaN = no data) on the lattice ``rows x cols`` (array positions).

    Two small matrix products per pass. Pixels whose interpolation taps touch no-data or the
    raster edge, but lie within half a pixel of valid data, take the nearest value; pixels
    outside the raster are NaN.
    """
    valid = np.isfinite(arr)
    data = np.where(valid, arr, np.float32(0.0))
    mask = valid.astype(np.float32)
    wr = _axis_weights(rows, arr.shape[0], order)
    wc = _axis_weights(cols, arr.shape[1], order).T
    num, den = wr @ data @ wc, wr @ mask @ wc
    out = np.where(den > 0.9999, num / np.maximum(den, 1e-12), np.float32(np.nan))
    if order and np.isnan(out).any():
        nr = _axis_weights(np.clip(rows, 0, arr.shape[0] - 1), arr.shape[0], 0)
        nc = _axis_weights(np.clip(cols, 0, arr.shape[1] - 1), arr.shape[1], 0).T
        near = np.where(nr @ mask @ nc > 0.5, nr @ data @ nc, np.float32(np.nan))
        out = np.where(np.isnan(out), near, out)
    r_in = (rows >= -0.5) & (rows <= arr.shape[0] - 0.5)
    c_in = (cols >= -0.5) & (cols <= arr.shape[1] - 0.5)
    out[~r_in, :] = np.nan
    out[:, ~c_in] = np.nan
    return out.astype(np.float32, copy=False)


def _sample_general(
    arr: NDArray[np.float32], rr: NDArray[np.float64], cc: NDArray[np.float64], order: int
) -> NDArray[np.float32]:
    """Sample ``arr`` at arbitrary array positions (rr, cc), same rules as the separable case."""
    inside = (rr >= -0.5) & (rr <= arr.shape[0] - 0.5) & (cc >= -0.5) & (cc <= arr.shape[1] - 0.5)
    tmp = ndimage.map_coordinates(
        arr, [rr, cc], order=order, mode="constant", cval=np.nan, prefilter=False
    ).astype(np.float32)
    if order:
        gap = np.isnan(tmp) & inside
        if gap.any():
            tmp[gap] = ndimage.map_coordinates(arr, [rr[gap], cc[gap]], order=0, mode="nearest")
    tmp[~inside] = np.nan
    return tmp


def _read_window(
    rd: _SourceReader, r0: int, r1: int, c0: int, c1: int, factor: int
) -> tuple[NDArray[np.float32], float, float]:
    """Read rows r0:r1, cols c0:c1 decimated by ``factor`` (COG overviews); NaN for nodata.

    Columns past the edges of a global raster (``rd.wrap``) are read from its other side, at
    full resolution, and averaged here in blocks of ``factor`` counted from ``c0`` (the
    raster's width need not be a multiple of it).
    """
    if not (rd.wrap and (c0 < 0 or c1 > rd.wrap)):
        arr = _read_piece(rd, r0, r1, c0, c1, factor)
        return arr, (r1 - r0) / arr.shape[0], (c1 - c0) / arr.shape[1]
    pieces = []
    c = c0
    while c < c1:  # one piece per turn around the planet
        base = math.floor(c / rd.wrap) * rd.wrap
        stop = min(c1, base + rd.wrap)
        pieces.append(_read_piece(rd, r0, r1, c - base, stop - base, 1))
        c = stop
    arr = np.concatenate(pieces, axis=1)
    if factor > 1:
        h, w = arr.shape[0] // factor, arr.shape[1] // factor
        blocks = arr[: h * factor, : w * factor].reshape(h, factor, w, factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # blocks of no data: NaN
            arr = np.nanmean(blocks, axis=(1, 3)).astype(np.float32)
    return arr, (r1 - r0) / arr.shape[0], (c1 - c0) / arr.shape[1]


def _read_piece(
    rd: _SourceReader, r0: int, r1: int, c0: int, c1: int, factor: int
) -> NDArray[np.float32]:
    """Rows r0:r1, cols c0:c1 (inside the raster) decimated by ``factor``; NaN for nodata."""
    win = Window(c0, r0, c1 - c0, r1 - r0)
    if factor > 1:
        shape = (max(1, (r1 - r0) // factor), max(1, (c1 - c0) // factor))
        data = rd.ds.read(1, window=win, out_shape=shape, resampling=Resampling.average)
    else:
        data = rd.ds.read(1, window=win)
    arr = data.astype(np.float32)
    if rd.meta.nodata is not None:
        arr[data == rd.meta.nodata] = np.nan
    return arr


def _finite_range(pos: NDArray[np.float64]) -> tuple[float, float]:
    return float(pos.min()), float(pos.max())


_FAR = -1e9
"""A raster position far outside every raster: what points with no position sample (no data)."""


def _outside(pos: NDArray[np.float64], fin: NDArray[np.bool_]) -> NDArray[np.float64]:
    """``pos`` with its non-finite entries (points past a pole) moved far outside the raster."""
    return pos if fin.all() else np.where(fin, pos, _FAR)


def _decimation(step: float) -> int:
    return 2 ** math.floor(math.log2(step)) if step >= 2 else 1


def _window(lo: float, hi: float, factor: int, size: int, wrap: bool = False) -> tuple[int, int]:
    """The pixels ``start:stop`` to read for array positions ``lo..hi`` along one axis.

    One read pixel (``factor`` source pixels) of margin on each side for the interpolation
    taps, in whole blocks of ``factor`` inside ``size``: decimated reads then average the
    same blocks (the COG overview's) whatever window a cell is read with, so a batch read of
    many cells gives each the pixels of its own read. With ``wrap`` (the columns of a global
    raster) the window may reach past either edge, up to one turn.
    """
    start = (math.floor(lo) - factor) // factor * factor
    stop = math.ceil(hi) + 1 + factor
    if wrap:
        start, stop = max(start, -size), min(-(-stop // factor) * factor, 2 * size)
        return start, stop
    start, stop = max(0, start), min(size, stop)
    if factor > 1:
        stop = min(-(-stop // factor) * factor, start + (size - start) // factor * factor)
    return start, stop


def _render_cell(
    plan: TilePlan,
    k: int,
    readers: dict[int, _SourceReader],
    resampling: Resampling,
    normalize: Normalize,
) -> tuple[NDArray[np.float32], float, list[str]]:
    """Render one cell: inverse-map every tile pixel into each raster and sample it.

    Positions are computed on a control lattice and interpolated to every pixel. When the
    mapping is separable (lon/lat cells over equirectangular or geographic rasters) only the
    tile's row and column vectors are used.
    """
    n = plan.tile_px
    cell = int(plan.cells[k])
    _, ctrl = _control_points(n)
    c = plan.context
    lon, lat = plan.grid.tile_lonlat(cell, n, ctrl * (1.0 + 2.0 * c) - c * n)
    out = np.full((n, n), np.nan, np.float32)
    used: list[str] = []
    dtype, scale = "float32", 1.0
    order = 0 if resampling == Resampling.nearest else 1
    w_n = _interp_matrix(n, len(ctrl)) if len(ctrl) != n else None
    for si in plan.cell_sources[k]:
        rd = readers[si]
        meta = rd.meta
        ccol, crow = rd.pixel_coords(lon, lat)
        fin = np.isfinite(ccol) & np.isfinite(crow)
        if not fin.any():
            continue
        # pixel-centre convention: array position = raster coordinate - 0.5
        ccol, crow = ccol - 0.5, crow - 0.5
        (c_lo, c_hi), (r_lo, r_hi) = _finite_range(ccol[fin]), _finite_range(crow[fin])
        ccol, crow = _outside(ccol, fin), _outside(crow, fin)
        separable = np.ptp(ccol, axis=0).max() < 1e-6 and np.ptp(crow, axis=1).max() < 1e-6
        span = max(c_hi - c_lo, r_hi - r_lo)
        factor = _decimation(span / max(n - 1, 1))
        r0, r1 = _window(r_lo, r_hi, factor, rd.ds.height)
        c0, c1 = _window(c_lo, c_hi, factor, rd.ds.width, bool(rd.wrap))
        if c1 <= c0 or r1 <= r0:
            continue
        arr, fy, fx = _read_window(rd, r0, r1, c0, c1, factor)
        if separable:
            rows1, cols1 = crow[:, 0], ccol[0]
            if w_n is not None:
                rows1, cols1 = w_n @ rows1, w_n @ cols1
            tmp = _sample_separable(
                arr, (rows1 + 0.5 - r0) / fy - 0.5, (cols1 + 0.5 - c0) / fx - 0.5, order
            )
        else:
            col, row = _densify(ccol, n), _densify(crow, n)
            tmp = _sample_general(
                arr, (row + 0.5 - r0) / fy - 0.5, (col + 0.5 - c0) / fx - 0.5, order
            )
        fill = np.isnan(out) & ~np.isnan(tmp)
        if fill.any():
            out[fill] = tmp[fill] * meta.scale + meta.offset
            used.append(meta.item_id)
            dtype, scale = meta.dtype, meta.scale
        if not np.isnan(out).any():
            break
    valid = ~np.isnan(out)
    frac = cell_coverage(valid, plan.context)
    pix = _normalise(np.nan_to_num(out), valid, dtype, scale, normalize)
    return pix, frac, used


# ----------------------------------------------------------------------------- batch rendering


def _separable_source(rd: _SourceReader) -> bool:
    """Whether a raster's columns follow longitude only and its rows latitude only.

    True for geographic and equirectangular rasters without rotation: lon/lat cells then
    map to it with one column vector per cell and one row vector per grid row.
    """
    if rd.separable is not None:
        return rd.separable
    if rd.geographic:
        ok = abs(rd.inv.b) < 1e-12 and abs(rd.inv.d) < 1e-12
    else:
        w, s, e, n = rd.meta.footprint.bounds
        # inner points: at a global raster's edges +-180 degrees may land on either side
        lon, lat = np.meshgrid(np.linspace(w, e, 5)[1:-1], np.linspace(s, n, 5)[1:-1])
        col, row = rd.pixel_coords(lon, lat)
        ok = bool(
            np.isfinite(col).all()
            and np.isfinite(row).all()
            and np.ptp(col, axis=0).max() < 1e-6
            and np.ptp(row, axis=1).max() < 1e-6
        )
    rd.separable = ok
    return ok


def _taps(
    pos: NDArray[np.float64], length: int, order: int
) -> list[tuple[NDArray[np.intp], NDArray[np.float32]]]:
    """Interpolation taps along one axis: (clipped index, weight; 0 where off the array)."""
    if order == 0:
        idx = np.floor(pos + 0.5).astype(np.intp)
        ok = (idx >= 0) & (idx < length)
        return [(np.clip(idx, 0, length - 1), ok.astype(np.float32))]
    lo = np.floor(pos).astype(np.intp)
    frac = (pos - lo).astype(np.float32)
    out = []
    for tap, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = (tap >= 0) & (tap < length)
        out.append((np.clip(tap, 0, length - 1), np.where(ok, weight, np.float32(0.0))))
    return out


def _tile_weights(
    taps: list[tuple[NDArray[np.intp], NDArray[np.float32]]], k: int, n: int
) -> tuple[int, NDArray[np.float32]]:
    """Tile ``k``'s column weights as a dense (window columns, n) matrix and its first column."""
    lo = min(int(i[k].min()) for i, _ in taps)
    hi = max(int(i[k].max()) for i, _ in taps) + 1
    w = np.zeros((hi - lo, n), np.float32)
    j = np.arange(n)
    for i, wt in taps:
        w[i[k] - lo, j] += wt[k]
    return lo, w


def _sample_strip(
    arr: NDArray[np.float32],
    rows: NDArray[np.float64],
    cols: NDArray[np.float64],
    order: int,
    out: Sequence[NDArray[np.float32]],
    gain: float = 1.0,
) -> NDArray[np.bool_]:
    """Sample tiles that share their row positions from one window, into ``out``.

    ``rows`` (n,) are the array rows of every tile's pixel rows, ``cols`` (m, n) each tile's
    columns, ``out`` m arrays (n, n). One vertical pass serves every tile; each tile is then
    one small matrix product. The rules are those of :func:`_sample_separable`, tile by tile,
    with values times ``gain``. Returns which tiles may hold NaN (no data).
    """
    h, w = arr.shape
    m, n = cols.shape
    valid = np.isfinite(arr)
    gaps = not bool(valid.all())
    data = np.where(valid, arr, np.float32(0.0)) if gaps else arr
    rtaps = _taps(rows, h, order)
    ctaps = [(i.reshape(m, n), wt.reshape(m, n)) for i, wt in _taps(cols.ravel(), w, order)]
    weights = [_tile_weights(ctaps, k, n) for k in range(m)]

    def vertical(img: NDArray[np.float32], scale: float) -> NDArray[np.float32]:
        vert = img[rtaps[0][0]] * (rtaps[0][1] * np.float32(scale))[:, None]
        for i, wt in rtaps[1:]:
            vert += img[i] * (wt * np.float32(scale))[:, None]
        return vert

    vert = vertical(data, gain)
    for k, (lo, wk) in enumerate(weights):
        np.matmul(vert[:, lo : lo + len(wk)], wk, out=out[k])
    row_sum = np.sum([wt for _, wt in rtaps], axis=0)
    holes = np.zeros(m, bool)
    dens: list[NDArray[np.float32] | None]
    if gaps:
        vmask = vertical(valid.astype(np.float32), 1.0)
        dens = [vmask[:, lo : lo + len(wk)] @ wk for lo, wk in weights]
    else:
        col_sum = np.sum([wt for _, wt in ctaps], axis=0)
        edge = row_sum.min() * col_sum.min(axis=1) <= 0.9999
        dens = [row_sum[:, None] * col_sum[k][None, :] if edge[k] else None for k in range(m)]
    nr: NDArray[np.intp] | None = None
    nc: NDArray[np.intp] | None = None
    for k, den in enumerate(dens):
        if den is None:
            continue  # every pixel has all its taps: the weights sum to 1
        bad = den <= 0.9999
        np.divide(out[k], np.maximum(den, 1e-12), out=out[k])
        if bad.any():
            holes[k] = True
            out[k][bad] = np.nan
            if order:
                if nr is None or nc is None:
                    nr = _taps(np.clip(rows, 0, h - 1), h, 0)[0][0]
                    nc = _taps(np.clip(cols.ravel(), 0, w - 1), w, 0)[0][0].reshape(m, n)
                ok = valid[nr][:, nc[k]]
                near = np.where(ok, data[nr][:, nc[k]] * np.float32(gain), np.float32(np.nan))
                out[k][bad] = near[bad]
    r_out = ~((rows >= -0.5) & (rows <= h - 0.5))
    c_out = ~((cols >= -0.5) & (cols <= w - 0.5))
    for k in range(m):
        if r_out.any() or c_out[k].any():
            holes[k] = True
            out[k][r_out, :] = np.nan
            out[k][:, c_out[k]] = np.nan
    return holes


def _cell_axes(
    plan: TilePlan, ks: NDArray[np.intp]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Longitudes (m, n) of the pixel columns and latitudes (m, n) of the pixel rows."""
    b = grown_bounds(plan.grid.bounds(plan.cells[ks]), plan.context)
    t = (np.arange(plan.tile_px, dtype=np.float64) + 0.5) / plan.tile_px
    lon = b[:, :1] + (b[:, 2:3] - b[:, :1]) * t
    lat = b[:, 3:4] - (b[:, 3:4] - b[:, 1:2]) * t
    return lon, lat


@dataclass
class _Run:
    """Cells of one grid row read from one window of one raster."""

    cells: list[int]
    rows: NDArray[np.float64]
    cols: list[NDArray[np.float64]]
    window: list[int]  # r0, r1, c0, c1
    factor: int


def _plan_runs(
    plan: TilePlan, ks: NDArray[np.intp], rd: _SourceReader, max_px: int = 1 << 14
) -> list[_Run]:
    """Group cells (plan positions ``ks``) into runs that share a window of ``rd``."""
    n = plan.tile_px
    lon, lat = _cell_axes(plan, ks)
    mid_lat = np.broadcast_to(lat.mean(axis=1, keepdims=True), lon.shape)
    mid_lon = np.broadcast_to(lon.mean(axis=1, keepdims=True), lat.shape)
    cc = rd.pixel_coords(lon, mid_lat)[0] - 0.5
    rr = rd.pixel_coords(mid_lon, lat)[1] - 0.5
    height, width = rd.ds.height, rd.ds.width
    grid_rows = plan.grid.row_col(plan.cells[ks])[0]
    groups: dict[tuple[int, ...], list[tuple[int, int, int, int]]] = {}
    for j, k in enumerate(ks.tolist()):
        fin = np.isfinite(rr[j])  # rows past a pole: no data
        if not (np.isfinite(cc[j]).all() and fin.any()):
            continue
        r_lo, r_hi = _finite_range(rr[j][fin])
        rr[j] = _outside(rr[j], fin)
        span = max(np.ptp(cc[j]), r_hi - r_lo)
        factor = _decimation(span / max(n - 1, 1))
        r0, r1 = _window(r_lo, r_hi, factor, height)
        c0, c1 = _window(cc[j].min(), cc[j].max(), factor, width, bool(rd.wrap))
        if c1 <= c0 or r1 <= r0:
            continue
        # a window across a global raster's edge is read apart (see _read_window)
        alone = j if rd.wrap and (c0 < 0 or c1 > width) else -1
        key = (int(grid_rows[j]), r0, r1, factor, alone)
        groups.setdefault(key, []).append((c0, c1, j, k))
    runs: list[_Run] = []
    for (_, r0, r1, factor, _), members in groups.items():
        members.sort()
        run: _Run | None = None
        for c0, c1, j, k in members:
            if run is None or c0 > run.window[3] + factor or c1 - run.window[2] > max_px:
                run = _Run([], rr[j], [], [r0, r1, c0, c1], factor)
                runs.append(run)
            run.cells.append(k)
            run.cols.append(cc[j])
            run.window[3] = max(run.window[3], c1)
    return runs


@dataclass
class _BatchState:
    """Per cell of a batch: the rasters that filled it and whether it still has no data."""

    used: list[list[int]]
    holes: NDArray[np.bool_]
    tried: NDArray[np.bool_]
    linear: bool

    @property
    def gain(self) -> float:
        """The factor folded into the sampling weights for linear (8-bit) data."""
        return 1.0 / 255.0


def _render_runs(
    plan: TilePlan,
    ks: NDArray[np.intp],
    si: int,
    rd: _SourceReader,
    out: NDArray[np.float32],
    state: _BatchState,
    order: int,
) -> None:
    """Fill the cells ``ks`` from raster ``si``, a window read per run of cells.

    Cells with nothing yet are rendered straight into ``out``; the others (mosaics) take
    this raster's pixels only where they still have no data.
    """
    meta = rd.meta
    gain = state.gain if state.linear else meta.scale
    for run in _plan_runs(plan, ks, rd):
        r0, r1, c0, c1 = run.window
        arr, fy, fx = _read_window(rd, r0, r1, c0, c1, run.factor)
        cols = (np.stack(run.cols) + 0.5 - c0) / fx - 0.5
        rows = (run.rows + 0.5 - r0) / fy - 0.5
        fresh = [not state.used[k] and not state.tried[k] for k in run.cells]
        dests = [
            out[k] if new else np.empty_like(out[k])
            for k, new in zip(run.cells, fresh, strict=True)
        ]
        holes = _sample_strip(arr, rows, cols, order, dests, gain)
        for k, tile, new, hole in zip(run.cells, dests, fresh, holes, strict=True):
            if not state.linear and meta.offset:
                tile += np.float32(meta.offset)
            if new:
                state.tried[k] = True
                state.holes[k] = bool(hole) and bool(np.isnan(tile).any())
                if not (state.holes[k] and np.isnan(tile).all()):
                    state.used[k].append(si)
                continue
            fill = np.isnan(out[k]) & ~np.isnan(tile)
            if fill.any():
                out[k][fill] = tile[fill]
                state.used[k].append(si)
                state.holes[k] = bool(np.isnan(out[k]).any())


def _render_batch(
    plan: TilePlan,
    ks: NDArray[np.intp],
    readers: dict[int, _SourceReader],
    order: int,
    out: NDArray[np.float32],
    state: _BatchState,
) -> None:
    """Render cells ``ks`` into ``out`` (NaN: no data), recording the rasters used.

    Passes: every cell's first raster, then the next raster for the cells that still have
    no-data pixels (mosaics: the first raster wins, as in :func:`_render_cell`).
    """
    todo = ks
    depth = 0
    while len(todo):
        by_source: dict[int, list[int]] = {}
        for k in todo.tolist():
            srcs = plan.cell_sources[k]
            if depth < len(srcs):
                by_source.setdefault(srcs[depth], []).append(k)
        for si, members in by_source.items():
            _render_runs(plan, np.array(members, np.intp), si, readers[si], out, state, order)
        depth += 1
        todo = np.array(
            [k for k in todo.tolist() if depth < len(plan.cell_sources[k]) and state.holes[k]],
            np.intp,
        )


def _fill_holes(tile: NDArray[np.float32], context: float) -> float:
    """Replace a tile's NaN by the mean of its other pixels (in place); the cell's coverage."""
    nan = np.isnan(tile)
    ok = ~nan
    tile[nan] = tile[ok].mean() if ok.any() else np.float32(0.0)
    return cell_coverage(ok, context)


def cell_coverage(ok: NDArray[np.bool_], context: float) -> float:
    """Share of a tile's own cell (its middle, with ``context``) that has data.

    A cell at the imagery's edge is judged by its own pixels, not by its margin.
    """
    if context:
        n = ok.shape[-1]
        a = min(round(n * context / (1.0 + 2.0 * context)), (n - 1) // 2)
        ok = ok[a : n - a, a : n - a]
    return float(ok.mean())


def _fast_cells(
    plan: TilePlan, readers: dict[int, _SourceReader], bad: dict[int, str]
) -> NDArray[np.bool_]:
    """Cells the batch renderer takes: lon/lat cells whose rasters are all separable."""
    from marscope_stac.grid.grids import LonLatGrid

    if not isinstance(plan.grid, LonLatGrid):
        return np.zeros(len(plan), bool)
    sep = {si: si not in bad and _separable_source(rd) for si, rd in readers.items()}
    return np.array([all(sep.get(s, False) for s in ss) for ss in plan.cell_sources], bool)


def _fill_fast(
    plan: TilePlan,
    ks: NDArray[np.intp],
    readers: dict[int, _SourceReader],
    rs: Resampling,
    normalize: Normalize,
    pixels: NDArray[np.float32],
    valid: NDArray[np.float32],
    used: list[list[str]],
) -> None:
    """Render cells ``ks`` with the batch renderer into ``pixels``, ``valid`` and ``used``.

    8-bit rasters under ``auto`` scale linearly (/255): that is folded into the sampling
    weights, so tiles are finished where they are written. Other data are stretched tile by
    tile afterwards, as the cell by cell path does.
    """
    srcs = {s for k in ks.tolist() for s in plan.cell_sources[k]}
    linear = normalize == "auto" and all(
        plan.sources[s].dtype == "uint8"
        and plan.sources[s].scale == 1.0
        and plan.sources[s].offset == 0.0
        for s in srcs
    )
    n = len(plan)
    state = _BatchState([[] for _ in range(n)], np.zeros(n, bool), np.zeros(n, bool), linear)
    _render_batch(plan, ks, readers, 0 if rs == Resampling.nearest else 1, pixels, state)
    for k in ks.tolist():
        used[k] = [plan.sources[i].item_id for i in state.used[k]]
        if not state.tried[k]:  # no raster reaches it after all
            pixels[k], valid[k] = 0.0, 0.0
            continue
        if linear:
            valid[k] = _fill_holes(pixels[k], plan.context) if state.holes[k] else 1.0
            continue
        last = plan.sources[state.used[k][-1]] if state.used[k] else None
        nan = np.isnan(pixels[k])
        valid[k] = cell_coverage(~nan, plan.context)
        dtype, scale = (last.dtype, last.scale) if last is not None else ("float32", 1.0)
        pixels[k] = _normalise(np.nan_to_num(pixels[k]), ~nan, dtype, scale, normalize)


def read_batch(
    plan: TilePlan,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
    vectorised: bool = True,
    out: NDArray[np.float32] | None = None,
) -> TileBatch:
    """Render every cell of ``plan`` (one Dask task's work): open each raster once, read windows.

    Lon/lat cells over geographic or equirectangular rasters are rendered together: the
    cells of one grid row that fall on one raster share one window read and are sampled in
    a few array passes (``vectorised``; the pixels are those of the cell by cell path, which
    renders every other cell). A raster that fails to open or read marks its cells as errors
    (valid 0) and the batch carries on. Open rasters are kept per thread and reused.
    ``out`` is an array (n cells, tile_px, tile_px) to render into (e.g. shared memory).
    """
    n = plan.tile_px
    rs = Resampling[resampling]
    # every cell is written below: rendered, or zeros when it fails
    pixels = np.zeros((len(plan), n, n), np.float32) if out is None else out
    valid = np.zeros(len(plan), np.float32)
    used: list[list[str]] = [[] for _ in range(len(plan))]
    errors: list[tuple[int, str]] = []
    readers: dict[int, _SourceReader] = {}
    bad: dict[int, str] = {}
    for si, src in enumerate(plan.sources):
        try:
            readers[si] = _reader(src)
        except RasterioError as exc:
            bad[si] = f"cannot open {src.href}: {str(exc).splitlines()[0][:120]}"
    fast = _fast_cells(plan, readers, bad) if vectorised else np.zeros(len(plan), bool)
    if fast.any():
        try:
            _fill_fast(plan, np.flatnonzero(fast), readers, rs, normalize, pixels, valid, used)
        except RasterioError:
            fast[:] = False  # the cell by cell path names the cells that fail
    for k in range(len(plan)):
        if fast[k]:
            continue
        broken = [bad[s] for s in plan.cell_sources[k] if s in bad]
        if broken:
            errors.append((int(plan.cells[k]), broken[0]))
            pixels[k] = 0.0
            continue
        try:
            pixels[k], valid[k], used[k] = _render_cell(plan, k, readers, rs, normalize)
        except RasterioError as exc:
            names = ", ".join(Path(plan.sources[i].href).name for i in plan.cell_sources[k])
            reason = str(exc).splitlines()[0][:120]
            errors.append((int(plan.cells[k]), f"reading {names} failed ({reason}); is it whole?"))
            pixels[k] = 0.0
    return TileBatch(plan.cells.copy(), pixels, valid, used, errors)


def tile_batches(
    plan: TilePlan,
    batch_size: int = 64,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
    shared: bool = False,
) -> list[Delayed]:
    """Split ``plan`` into Dask delayed tasks of ``batch_size`` cells (nothing is read yet).

    ``shared``: the tasks leave their pixels in shared memory (for worker processes on this
    machine; pass each result through :func:`receive_batch`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    fn = read_batch_shared if shared else read_batch
    return [
        dask.delayed(fn, pure=True)(plan.subset(i, i + batch_size), resampling, normalize)
        for i in range(0, len(plan), batch_size)
    ]


_POOLS: dict[int, Any] = {}
_SHARED_PREFIX = "marscope-tiles-"


def _shared_folder() -> Path:
    """Where worker processes leave rendered pixels for the parent: memory when possible."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    import tempfile

    return Path(tempfile.gettempdir())


def process_pool(workers: int) -> Any:
    """A lasting pool of ``workers`` tile-reading processes (started once, reused).

    Processes start from a fork server, never by forking this process (which may hold
    threads, GDAL handles or a GPU context). Pixel files a killed run left are removed.
    """
    pool = _POOLS.get(workers)
    if pool is None:
        import atexit
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from marscope_stac.core.fs import sweep_stale

        sweep_stale(_shared_folder(), prefix=f".{_SHARED_PREFIX}")
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_one_thread_each,
        )
        _POOLS[workers] = pool
        atexit.register(pool.shutdown, cancel_futures=True)
    return pool


def _one_thread_each() -> None:
    """In a reading process: one BLAS/OpenMP thread (the processes are the parallelism)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


@dataclass(frozen=True)
class _SharedPixels:
    """Where a worker process left a batch's pixels (an ``.npy`` file in shared memory)."""

    path: str


def read_batch_shared(
    plan: TilePlan, resampling: str = "bilinear", normalize: Normalize = "auto"
) -> TileBatch:
    """:func:`read_batch` in a worker process: pixels rendered into a shared-memory file.

    Only the file's name goes back through the pipe; :func:`receive_batch` maps it in the
    parent without copying.
    """
    from marscope_stac.core.fs import temp_file

    path = temp_file(_shared_folder() / f"{_SHARED_PREFIX}{len(plan)}.npy", suffix=".npy")
    n = plan.tile_px
    buf = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(plan), n, n))
    try:
        batch = read_batch(plan, resampling, normalize, out=buf)
        buf.flush()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    del buf
    batch.pixels = _SharedPixels(str(path))  # type: ignore[assignment]
    return batch


def receive_batch(batch: TileBatch) -> TileBatch:
    """Map the pixels a worker process left in shared memory (and remove the file)."""
    ref = batch.pixels
    if isinstance(ref, _SharedPixels):
        batch.pixels = np.load(ref.path, mmap_mode="c")  # stays mapped after the unlink
        Path(ref.path).unlink()
    return batch


def iter_tile_batches(
    plan: TilePlan,
    batch_size: int = 64,
    workers: int | None = None,
    scheduler: str = "threads",
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
) -> Iterator[TileBatch]:
    """Read the plan with Dask and yield batches in plan order, ``workers`` at a time.

    With a ``distributed.Client`` active, its cluster runs the tasks; otherwise the local
    ``scheduler``: ``threads`` (default: GDAL releases the GIL while it reads), or
    ``processes``: the worker processes of a lasting pool (:func:`process_pool`), for when
    sampling is the bottleneck (large tiles) since it holds the GIL; their pixels come back
    through shared memory.
    """
    n_workers = workers or os.cpu_count() or 1
    if scheduler == "processes":
        if batch_size < 1:
            raise ConfigError(f"batch size {batch_size} must be at least 1")
        subs = (plan.subset(i, i + batch_size) for i in range(0, len(plan), batch_size))
        yield from read_in_processes(subs, n_workers, resampling, normalize)
        return
    tasks = tile_batches(plan, batch_size, resampling, normalize)
    window = max(1, 2 * n_workers)
    for i in range(0, len(tasks), window):
        chunk = tasks[i : i + window]
        results: tuple[Any, ...] = dask.compute(*chunk, scheduler=scheduler, num_workers=n_workers)
        yield from results


def read_in_processes(
    plans: Iterable[TilePlan],
    workers: int,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
) -> Iterator[TileBatch]:
    """Read each plan (a batch) in the worker processes; batches in order, pixels shared.

    Twice as many batches as workers are in flight, so a consumer (e.g. a GPU) never waits
    while the readers keep up.
    """
    from collections import deque

    pool = process_pool(workers)
    todo = iter(plans)
    pending: deque[Any] = deque()

    def submit() -> None:
        sub = next(todo, None)
        if sub is not None:
            pending.append(pool.submit(read_batch_shared, sub, resampling, normalize))

    for _ in range(2 * workers):
        submit()
    try:
        while pending:
            batch = pending.popleft().result()
            submit()
            yield receive_batch(batch)
    finally:
        for fut in pending:  # a consumer that stops early: drop the shared files
            if fut.cancel():
                continue
            with contextlib.suppress(Exception):
                receive_batch(fut.result())


def contact_sheet(
    batches: Sequence[TileBatch],
    grid: Grid,
    out: str | os.PathLike[str],
    columns: int = 8,
    max_tiles: int = 64,
) -> Path:
    """Write a PNG contact sheet of tiles with their cell ids and valid fractions."""
    from PIL import Image, ImageDraw

    tiles = [
        (int(c), p, float(v))
        for b in batches
        for c, p, v in zip(b.cells, b.pixels, b.valid, strict=True)
    ]
    if len(tiles) > max_tiles:
        pick = np.linspace(0, len(tiles) - 1, max_tiles).round().astype(int)
        tiles = [tiles[i] for i in pick]
    if not tiles:
        raise ConfigError("no tiles to show")
    n = tiles[0][1].shape[0]
    size = max(n, 96)
    label_h = 14
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("L", (columns * size, rows * (size + label_h)), 0)
    draw = ImageDraw.Draw(sheet)
    ids = grid.cell_ids([t[0] for t in tiles])
    for i, ((_, pix, v), cid) in enumerate(zip(tiles, ids, strict=True)):
        img = Image.fromarray((np.clip(pix, 0, 1) * 255).astype(np.uint8)).resize((size, size))
        x, y = (i % columns) * size, (i // columns) * (size + label_h)
        sheet.paste(img, (x, y))
        short = cid.split(":", 2)[-1]
        draw.text((x + 2, y + size + 1), f"{short} {v:.0%}", fill=255)
    path = Path(out)
    with atomic_output(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path


@dataclass
class TilePreview:
    """What :func:`preview_tiles` found and drew."""

    plan: TilePlan
    sources: SourceSet
    shown: int
    sheet: Path | None

    def summary(self) -> str:
        """Lines for people."""
        sheet = None if self.sheet is None else f"contact sheet of {self.shown} tiles: {self.sheet}"
        return join_lines(
            f"{self.sources.summary()}; grid {self.plan.grid.spec}: {len(self.plan)} cells "
            f"of {self.plan.tile_px} px",
            sheet,
        )


def preview_tiles(
    source: str | Path,
    grid: str = "lonlat:0.2",
    tile_px: int = 224,
    preview: str | Path | None = None,
    bbox: Sequence[float] | None = None,
    asset: str | None = None,
    collections: Sequence[str] | None = None,
    datetime: str | None = None,
    max_tiles: int = 48,
    context: float = 0.0,
) -> TilePreview:
    """Plan the tiles of a STAC source and draw a sample of them as a contact sheet.

    Only the sampled tiles are read; ``context`` draws them as a model trained with that
    margin sees them (see :class:`TilePlan`). See :func:`~marscope_stac.stac.read.load_sources`
    for the source arguments and :func:`~marscope_stac.grid.grids.parse_grid` for ``grid``.
    """
    from marscope_stac.grid.grids import parse_grid

    check_range("--tile-px", tile_px, 8, 4096, integer=True)
    check_range("--max-tiles", max_tiles, 1, 10_000, integer=True)
    if preview is not None and Path(preview).is_dir():
        raise OutputError(f"--preview {preview} is a folder; give a PNG file name")
    if preview is not None:
        check_output_file(preview)  # a device, FIFO or socket is refused before any work
    sources = load_sources(
        source, collections=collections, bbox=bbox, datetime=datetime, asset=asset
    )
    g = parse_grid(grid, sources.body)
    plan = plan_tiles(sources, g, tile_px, bbox=bbox, context=context)
    sheet = None
    shown = 0
    if preview is not None:
        pick = np.unique(np.linspace(0, len(plan) - 1, min(max_tiles, len(plan))).round())
        sample = plan.take(pick.astype(np.intp))
        batches = list(iter_tile_batches(sample, batch_size=16))
        shown = len(sample)
        errors = [e for b in batches for e in b.errors]
        if errors:
            warnings.warn(
                f"{len(errors)} of {shown} tiles could not be read and are drawn empty; "
                f"first: {errors[0][1]}",
                SkippedInputWarning,
                stacklevel=2,
            )
        empty = sum(int((b.valid <= 0).sum()) for b in batches)
        if empty and not errors:
            warnings.warn(
                f"{empty} of {shown} tiles hold no valid pixel (all nodata or NaN) and are "
                "drawn empty",
                SkippedInputWarning,
                stacklevel=2,
            )
        sheet = contact_sheet(batches, g, preview, max_tiles=max_tiles)
    return TilePreview(plan, sources, shown, sheet)
