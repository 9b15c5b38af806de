"""Sample one grid cell from its source rasters: window reads, resampling, normalisation.

Every tile pixel is mapped back into a raster (the grid's lon/lat, then the raster's own CRS,
on a control lattice interpolated to every pixel), read from the COG overview that matches
the tile's resolution and sampled; cells spanning several rasters are mosaicked and no-data
filled. Readers are cached per thread.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window
from scipy import ndimage

from marscope_stac.stac.cloud import configure_cloud_reading, forget_cached_bytes
from marscope_stac.stac.raster import SourceAsset, image_bands, one_band, open_raster
from marscope_stac.stac.remote import is_remote
from marscope_stac.tiles.plan import TilePlan

__all__ = [
    "Normalize",
    "cell_coverage",
    "scale_pixels",
]


Normalize = Literal["auto", "percentile", "none"]


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
        configure_cloud_reading()  # GDAL's http(s)/s3 options, inherited by workers
        self.ds = open_raster(meta.href)
        self.bands = image_bands(self.ds)  # colour imagery is read as its luma
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


READ_AHEAD = 8
"""Remote rasters a batch opens at once: each open costs a round trip, so they overlap."""


def _key(meta: SourceAsset) -> tuple[str, int, int]:
    """Cache key of a raster: local files also by size and modification time."""
    try:
        st = Path(meta.href).stat()
        return (meta.href, st.st_size, st.st_mtime_ns)
    except OSError:
        return (meta.href, -1, -1)


def _cache() -> OrderedDict[tuple[str, int, int], _SourceReader]:
    cache: OrderedDict[tuple[str, int, int], _SourceReader] = (
        getattr(_LOCAL, "readers", None) or OrderedDict()
    )
    _LOCAL.readers = cache
    return cache


def _keep(meta: SourceAsset, rd: _SourceReader, room: int = _MAX_OPEN) -> _SourceReader:
    """Put ``rd`` in this thread's cache, closing the least recently used beyond ``room``."""
    cache = _cache()
    cache[_key(meta)] = rd
    while len(cache) > room:
        _, old = cache.popitem(last=False)
        old.close()
    return rd


def _cached(meta: SourceAsset) -> _SourceReader | None:
    cache = _cache()
    key = _key(meta)
    rd = cache.get(key)
    if rd is not None and rd.meta == meta:
        cache.move_to_end(key)
        return rd
    return None


def _reader(meta: SourceAsset) -> _SourceReader:
    """A per-thread, reused open reader, so GDAL's block cache serves the following batches.

    Local files are keyed by path, size and modification time, so a file that changed is
    opened afresh.
    """
    return _cached(meta) or _keep(meta, _SourceReader(meta))


def open_readers(
    metas: Sequence[SourceAsset],
) -> tuple[dict[int, _SourceReader], dict[int, str]]:
    """This thread's readers of ``metas`` (by position), and why the others did not open.

    Readers are reused as :func:`_reader`'s; remote rasters not open yet are opened
    :data:`READ_AHEAD` at a time (an open is a round trip), and none of the batch's readers
    is closed to make room while the batch needs it.
    """
    readers: dict[int, _SourceReader] = {}
    bad: dict[int, str] = {}
    todo = []
    for si, meta in enumerate(metas):
        rd = _cached(meta)
        if rd is None:
            todo.append(si)
        else:
            readers[si] = rd
    remote = [si for si in todo if is_remote(metas[si].href)]
    ahead: dict[int, Future[_SourceReader]] = {}
    if len(remote) > 1:
        with ThreadPoolExecutor(min(READ_AHEAD, len(remote))) as pool:
            ahead = {si: pool.submit(_SourceReader, metas[si]) for si in remote}
    room = max(_MAX_OPEN, len(metas))
    for si in todo:
        try:
            rd = ahead[si].result() if si in ahead else _SourceReader(metas[si])
        except RasterioError as exc:
            bad[si] = f"cannot open {metas[si].href}: {str(exc).splitlines()[0][:120]}"
            continue
        readers[si] = _keep(metas[si], rd, room)
    return readers, bad


def forget_reader(meta: SourceAsset) -> None:
    """Close and forget this thread's open reader of ``meta``: its next use opens it afresh.

    After a failed read, a handle may hold a broken connection or a cut-short block.
    """
    cache = _cache()
    for key in [k for k, rd in cache.items() if rd.meta.href == meta.href]:
        cache.pop(key).close()
    forget_cached_bytes(meta.href)


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
        valid = ~np.isnan(blocks)
        total = np.where(valid, blocks, np.float32(0)).sum(axis=(1, 3))
        # np.nanmean's arithmetic, without its warning about blocks of no data (silencing it
        # with warnings.catch_warnings is not thread-safe: it swaps the process's filters)
        with np.errstate(invalid="ignore"):  # a block of no data: 0 / 0 = NaN
            arr = (total / valid.sum(axis=(1, 3))).astype(np.float32)
    return arr, (r1 - r0) / arr.shape[0], (c1 - c0) / arr.shape[1]


def _read_piece(
    rd: _SourceReader, r0: int, r1: int, c0: int, c1: int, factor: int
) -> NDArray[np.float32]:
    """Rows r0:r1, cols c0:c1 (inside the raster) decimated by ``factor``; NaN for nodata."""
    win = Window(c0, r0, c1 - c0, r1 - r0)
    if factor > 1:
        shape = (max(1, (r1 - r0) // factor), max(1, (c1 - c0) // factor))
        data = rd.ds.read(rd.bands, window=win, out_shape=shape, resampling=Resampling.average)
    else:
        data = rd.ds.read(rd.bands, window=win)
    return np.asarray(one_band(data, rd.meta.nodata), np.float32)


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
        tmp = _sample_source(rd, lon, lat, n, order, w_n)
        if tmp is None:
            continue
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


def _sample_source(
    rd: _SourceReader,
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    n: int,
    order: int,
    w_n: NDArray[np.float64] | None,
) -> NDArray[np.float32] | None:
    """A cell's tile sampled from one raster; None if nothing maps into it or no window."""
    ccol, crow = rd.pixel_coords(lon, lat)
    fin = np.isfinite(ccol) & np.isfinite(crow)
    if not fin.any():
        return None
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
        return None
    arr, fy, fx = _read_window(rd, r0, r1, c0, c1, factor)
    if separable:
        rows1, cols1 = crow[:, 0], ccol[0]
        if w_n is not None:
            rows1, cols1 = w_n @ rows1, w_n @ cols1
        return _sample_separable(
            arr, (rows1 + 0.5 - r0) / fy - 0.5, (cols1 + 0.5 - c0) / fx - 0.5, order
        )
    col, row = _densify(ccol, n), _densify(crow, n)
    return _sample_general(arr, (row + 0.5 - r0) / fy - 0.5, (col + 0.5 - c0) / fx - 0.5, order)


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


def cell_coverage(ok: NDArray[np.bool_], context: float) -> float:
    """Share of a tile's own cell (its middle, with ``context``) that has data.

    A cell at the imagery's edge is judged by its own pixels, not by its margin.
    """
    if context:
        n = ok.shape[-1]
        a = min(round(n * context / (1.0 + 2.0 * context)), (n - 1) // 2)
        ok = ok[a : n - a, a : n - a]
    return float(ok.mean())
