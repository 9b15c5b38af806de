"""Cut source rasters into grid-cell tiles, lazily, in Dask tasks that read their own windows.

:func:`plan_tiles` decides which grid cells a :class:`~marscope_stac.stac_in.SourceSet` covers
and which rasters each cell needs. :func:`tile_batches` turns the plan into Dask tasks, each
reading a batch of cells: for every cell it reads only the source window under the cell (from a
COG overview when the tile is coarser than the source), maps every tile pixel back into the
raster (:meth:`~marscope_stac.grid.Grid.tile_lonlat`, then the raster's own CRS, on a control
lattice interpolated to every pixel; separable for lon/lat cells over equirectangular rasters)
and samples it, mosaics cells that span several rasters, and normalises the pixels to 0..1.
Native planetary CRSs are kept end to end; PROJ is never asked to cross bodies.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import rasterio
import shapely
from dask.delayed import Delayed
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window
from scipy import ndimage

from marscope_stac.errors import ConfigError, OutputError, SkippedInputWarning, check_range
from marscope_stac.fsutil import atomic_output
from marscope_stac.grid import Grid
from marscope_stac.stac_in import SourceAsset, SourceSet, load_sources
from marscope_stac.text import join_lines

__all__ = [
    "TileBatch",
    "TilePlan",
    "contact_sheet",
    "iter_tile_batches",
    "plan_tiles",
    "preview_tiles",
    "read_batch",
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
    """

    grid: Grid
    tile_px: int
    cells: NDArray[np.int64]
    sources: list[SourceAsset]
    cell_sources: list[list[int]] = field(default_factory=list)

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
        )


@dataclass
class TileBatch:
    """Rendered tiles of a batch of cells.

    Attributes:
        cells: Cell indexes.
        pixels: ``float32`` array (n, tile_px, tile_px) in 0..1; pixels with no data hold the
            tile's mean so they do not read as structure.
        valid: Fraction of each tile covered by data, 0..1.
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
) -> TilePlan:
    """Plan the tiles of every grid cell that intersects a source footprint (and ``bbox``).

    Raises:
        ConfigError: for a bad tile size, a grid of another body, or an empty plan.
    """
    if not 8 <= tile_px <= 4096:
        raise ConfigError(f"tile size {tile_px} px is out of range; use 8..4096 (e.g. 224)")
    if grid.body is not sources.body:
        raise ConfigError(
            f"the grid is for {grid.body.name} but the imagery is of {sources.body.name}"
        )
    by_cell: dict[int, list[int]] = {}
    area = shapely.box(*bbox) if bbox is not None and bbox[0] <= bbox[2] else None
    for si, src in enumerate(sources.assets):
        for part in getattr(src.footprint, "geoms", [src.footprint]):
            w, s, e, n = part.bounds
            idx = grid.cells_in_bbox(w, s, e, n)
            if not len(idx):
                continue
            b = grid.bounds(idx)
            boxes = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
            hit = _overlaps(boxes, part)
            if area is not None:
                hit &= _overlaps(boxes, area)
            for cell in idx[hit].tolist():
                by_cell.setdefault(cell, []).append(si)
    if not by_cell:
        raise ConfigError(f"no cell of grid {grid.spec} intersects the imagery (and bbox)")
    cells = np.array(sorted(by_cell), dtype=np.int64)
    if limit is not None:
        cells = cells[:limit]
    # finest source first, so mosaics prefer the sharpest data
    cell_sources = [sorted(by_cell[c], key=lambda i: sources.assets[i].res[0]) for c in cells]
    return TilePlan(grid, tile_px, cells, list(sources.assets), cell_sources)


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

    def close(self) -> None:
        self.ds.close()

    def pixel_coords(
        self, lon: NDArray[np.float64], lat: NDArray[np.float64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(col, row) positions in this raster of lon/lat points."""
        if self.geographic:
            x, y = lon.copy(), lat
            left, _, right, _ = self.meta.bounds
            # sources in 0..360 longitudes: shift only where that lands inside the raster
            x = np.where((x < left) & (x + 360.0 <= right), x + 360.0, x)
            x = np.where((x > right) & (x - 360.0 >= left), x - 360.0, x)
        else:
            x, y = self.to_src.transform(lon, lat)
        a = self.inv
        col = a.a * x + a.b * y + a.c
        row = a.d * x + a.e * y + a.f
        return np.asarray(col), np.asarray(row)


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
    """Read rows r0:r1, cols c0:c1 decimated by ``factor`` (COG overviews); NaN for nodata."""
    win = Window(c0, r0, c1 - c0, r1 - r0)
    if factor > 1:
        shape = (max(1, (r1 - r0) // factor), max(1, (c1 - c0) // factor))
        data = rd.ds.read(1, window=win, out_shape=shape, resampling=Resampling.average)
    else:
        data = rd.ds.read(1, window=win)
    arr = data.astype(np.float32)
    if rd.meta.nodata is not None:
        arr[data == rd.meta.nodata] = np.nan
    return arr, (r1 - r0) / arr.shape[0], (c1 - c0) / arr.shape[1]


def _decimation(step: float) -> int:
    return 2 ** math.floor(math.log2(step)) if step >= 2 else 1


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
    lon, lat = plan.grid.tile_lonlat(cell, n, ctrl)
    out = np.full((n, n), np.nan, np.float32)
    used: list[str] = []
    dtype, scale = "float32", 1.0
    order = 0 if resampling == Resampling.nearest else 1
    w_n = _interp_matrix(n, len(ctrl)) if len(ctrl) != n else None
    for si in plan.cell_sources[k]:
        rd = readers[si]
        meta = rd.meta
        ccol, crow = rd.pixel_coords(lon, lat)
        if not (np.isfinite(ccol).all() and np.isfinite(crow).all()):
            continue
        # pixel-centre convention: array position = raster coordinate - 0.5
        ccol, crow = ccol - 0.5, crow - 0.5
        separable = np.ptp(ccol, axis=0).max() < 1e-6 and np.ptp(crow, axis=1).max() < 1e-6
        c0 = max(0, math.floor(ccol.min()) - 1)
        r0 = max(0, math.floor(crow.min()) - 1)
        c1 = min(rd.ds.width, math.ceil(ccol.max()) + 2)
        r1 = min(rd.ds.height, math.ceil(crow.max()) + 2)
        if c1 <= c0 or r1 <= r0:
            continue
        span = max(ccol.max() - ccol.min(), crow.max() - crow.min())
        factor = _decimation(span / max(n - 1, 1))
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
    frac = float(valid.mean())
    pix = _normalise(np.nan_to_num(out), valid, dtype, scale, normalize)
    return pix, frac, used


def read_batch(
    plan: TilePlan,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
) -> TileBatch:
    """Render every cell of ``plan`` (one Dask task's work): open each raster once, read windows.

    A raster that fails to open or read marks its cells as errors (valid 0) and the batch
    carries on. Open rasters are kept per thread and reused by the next batches.
    """
    n = plan.tile_px
    rs = Resampling[resampling]
    pixels = np.zeros((len(plan), n, n), np.float32)
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
    for k in range(len(plan)):
        broken = [bad[s] for s in plan.cell_sources[k] if s in bad]
        if broken:
            errors.append((int(plan.cells[k]), broken[0]))
            continue
        try:
            pixels[k], valid[k], used[k] = _render_cell(plan, k, readers, rs, normalize)
        except RasterioError as exc:
            names = ", ".join(Path(plan.sources[i].href).name for i in plan.cell_sources[k])
            reason = str(exc).splitlines()[0][:120]
            errors.append((int(plan.cells[k]), f"reading {names} failed ({reason}); is it whole?"))
    return TileBatch(plan.cells.copy(), pixels, valid, used, errors)


def tile_batches(
    plan: TilePlan,
    batch_size: int = 64,
    resampling: str = "bilinear",
    normalize: Normalize = "auto",
) -> list[Delayed]:
    """Split ``plan`` into Dask delayed tasks of ``batch_size`` cells (nothing is read yet)."""
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be at least 1")
    return [
        dask.delayed(read_batch, pure=True)(plan.subset(i, i + batch_size), resampling, normalize)
        for i in range(0, len(plan), batch_size)
    ]


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
    ``scheduler`` (threads by default: GDAL releases the GIL while it reads and warps).
    """
    tasks = tile_batches(plan, batch_size, resampling, normalize)
    n_workers = workers or os.cpu_count() or 1
    window = max(1, 2 * n_workers)
    for i in range(0, len(tasks), window):
        chunk = tasks[i : i + window]
        results: tuple[Any, ...] = dask.compute(*chunk, scheduler=scheduler, num_workers=n_workers)
        yield from results


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
) -> TilePreview:
    """Plan the tiles of a STAC source and draw a sample of them as a contact sheet.

    Only the sampled tiles are read. See :func:`~marscope_stac.stac_in.load_sources` for the
    source arguments and :func:`~marscope_stac.grid.parse_grid` for ``grid``.
    """
    from marscope_stac.grid import parse_grid

    check_range("--tile-px", tile_px, 8, 4096, integer=True)
    check_range("--max-tiles", max_tiles, 1, 10_000, integer=True)
    if preview is not None and Path(preview).is_dir():
        raise OutputError(f"--preview {preview} is a folder; give a PNG file name")
    sources = load_sources(
        source, collections=collections, bbox=bbox, datetime=datetime, asset=asset
    )
    g = parse_grid(grid, sources.body)
    plan = plan_tiles(sources, g, tile_px, bbox=bbox)
    sheet = None
    shown = 0
    if preview is not None:
        pick = np.unique(np.linspace(0, len(plan) - 1, min(max_tiles, len(plan))).round())
        sample = TilePlan(
            g,
            tile_px,
            plan.cells[pick.astype(int)],
            plan.sources,
            [plan.cell_sources[int(i)] for i in pick],
        )
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
        sheet = contact_sheet(batches, g, preview, max_tiles=max_tiles)
    return TilePreview(plan, sources, shown, sheet)
