"""Render a batch of cells at once.

A grid row of cells shares one window read and one vertical pass, and every tile is one matrix
product (the fast path for lon/lat cells over equirectangular rasters; other cells fall back
to :mod:`~marscope_stac.tiles.sample`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from marscope_stac.stac.cloud import network_counters, network_sample, network_watched
from marscope_stac.stac.remote import is_remote
from marscope_stac.tiles.plan import TileBatch, TilePlan, grown_bounds
from marscope_stac.tiles.sample import (
    Normalize,
    _decimation,
    _finite_range,
    _normalise,
    _outside,
    _read_window,
    _reader,
    _render_cell,
    _separable_source,
    _SourceReader,
    _window,
    cell_coverage,
    forget_reader,
    open_readers,
)

__all__ = [
    "read_batch",
]


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
    vert = _vertical(data, rtaps, gain)
    for k, (lo, wk) in enumerate(weights):
        np.matmul(vert[:, lo : lo + len(wk)], wk, out=out[k])
    holes = np.zeros(m, bool)
    dens = _strip_densities(valid, gaps, rtaps, ctaps, weights)
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
    _blank_outside(out, holes, rows, cols, (h, w))
    return holes


def _vertical(
    img: NDArray[np.float32],
    rtaps: list[tuple[NDArray[np.intp], NDArray[np.float32]]],
    scale: float,
) -> NDArray[np.float32]:
    """The vertical pass: each tile row interpolated from the window's rows, times ``scale``."""
    vert = img[rtaps[0][0]] * (rtaps[0][1] * np.float32(scale))[:, None]
    for i, wt in rtaps[1:]:
        vert += img[i] * (wt * np.float32(scale))[:, None]
    return vert


def _strip_densities(
    valid: NDArray[np.bool_],
    gaps: bool,
    rtaps: list[tuple[NDArray[np.intp], NDArray[np.float32]]],
    ctaps: list[tuple[NDArray[np.intp], NDArray[np.float32]]],
    weights: list[tuple[int, NDArray[np.float32]]],
) -> list[NDArray[np.float32] | None]:
    """Each tile's sum of the weights of its valid taps; None where it is 1 everywhere."""
    row_sum = np.sum([wt for _, wt in rtaps], axis=0)
    if gaps:
        vmask = _vertical(valid.astype(np.float32), rtaps, 1.0)
        return [vmask[:, lo : lo + len(wk)] @ wk for lo, wk in weights]
    col_sum = np.sum([wt for _, wt in ctaps], axis=0)
    edge = row_sum.min() * col_sum.min(axis=1) <= 0.9999
    return [row_sum[:, None] * col_sum[k][None, :] if edge[k] else None for k in range(len(edge))]


def _blank_outside(
    out: Sequence[NDArray[np.float32]],
    holes: NDArray[np.bool_],
    rows: NDArray[np.float64],
    cols: NDArray[np.float64],
    shape: tuple[int, int],
) -> None:
    """Set NaN where tile pixels fall outside the array, and mark those tiles in ``holes``."""
    h, w = shape
    r_out = ~((rows >= -0.5) & (rows <= h - 0.5))
    c_out = ~((cols >= -0.5) & (cols <= w - 0.5))
    for k in range(cols.shape[0]):
        if r_out.any() or c_out[k].any():
            holes[k] = True
            out[k][r_out, :] = np.nan
            out[k][:, c_out[k]] = np.nan


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
    When a raster is remote, the batch carries GDAL's network counters of its process from
    before to after the reads (:attr:`TileBatch.network`), unless a run counts that whole
    process (:class:`~marscope_stac.stac.cloud.NetworkWatch`).
    """
    remote = any(is_remote(src.href) for src in plan.sources)
    start = network_counters() if remote and not network_watched() else None
    batch = _read_batch(plan, resampling, normalize, vectorised, out)
    if start is not None:
        batch.network = network_sample(start)
    return batch


def _fill_fast_or_retry(
    plan: TilePlan,
    fast: NDArray[np.bool_],
    readers: dict[int, _SourceReader],
    rs: Resampling,
    normalize: Normalize,
    into: tuple[NDArray[np.float32], NDArray[np.float32], list[list[str]]],
) -> None:
    """The shared-window path; when a remote read fails, once more with the rasters reopened.

    A reset connection or a body cut short fails one window; reading the batch again costs
    a few requests, where the cell by cell path that would follow costs one per cell.
    """
    pixels, valid, used = into
    cells = np.flatnonzero(fast)
    try:
        _fill_fast(plan, cells, readers, rs, normalize, pixels, valid, used)
        return
    except RasterioError:
        remote = [si for si in readers if is_remote(plan.sources[si].href)]
        if not remote:
            raise
    time.sleep(_REOPEN_PAUSE_S)
    for si in remote:
        forget_reader(plan.sources[si])
    again, bad = open_readers([plan.sources[si] for si in remote])
    if bad:
        raise RasterioError(next(iter(bad.values())))
    readers.update({remote[i]: rd for i, rd in again.items()})
    _fill_fast(plan, cells, readers, rs, normalize, pixels, valid, used)


def _read_batch(
    plan: TilePlan,
    resampling: str,
    normalize: Normalize,
    vectorised: bool,
    out: NDArray[np.float32] | None,
) -> TileBatch:
    n = plan.tile_px
    rs = Resampling[resampling]
    # every cell is written below: rendered, or zeros when it fails
    pixels = np.zeros((len(plan), n, n), np.float32) if out is None else out
    valid = np.zeros(len(plan), np.float32)
    used: list[list[str]] = [[] for _ in range(len(plan))]
    errors: list[tuple[int, str]] = []
    reopened: set[int] = set()
    readers, bad = open_readers(plan.sources)
    fast = _fast_cells(plan, readers, bad) if vectorised else np.zeros(len(plan), bool)
    if fast.any():
        try:
            _fill_fast_or_retry(plan, fast, readers, rs, normalize, (pixels, valid, used))
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
        failure = _render_or_retry(plan, k, readers, rs, normalize, (pixels, valid, used, reopened))
        if failure is not None:
            errors.append((int(plan.cells[k]), failure))
            pixels[k] = 0.0
    return TileBatch(plan.cells.copy(), pixels, valid, used, errors)


_REOPEN_PAUSE_S = 0.05  # GDAL has already retried with backoff


def _render_or_retry(
    plan: TilePlan,
    k: int,
    readers: dict[int, _SourceReader],
    rs: Resampling,
    normalize: Normalize,
    into: tuple[NDArray[np.float32], NDArray[np.float32], list[list[str]], set[int]],
) -> str | None:
    """Render cell ``k`` into ``into``; why it failed, or None.

    After a failed read of a remote raster the cell is tried once more with its rasters
    reopened (a reset connection or a cut-short answer can leave a handle broken), once per
    raster and batch (``into[3]`` holds those already reopened).
    """
    pixels, valid, used, reopened = into
    try:
        pixels[k], valid[k], used[k] = _render_cell(plan, k, readers, rs, normalize)
        return None
    except RasterioError as exc:
        reason = str(exc).splitlines()[0][:120]
    srcs = plan.cell_sources[k]
    fresh = [si for si in srcs if si not in reopened and is_remote(plan.sources[si].href)]
    if fresh:
        reopened.update(fresh)
        time.sleep(_REOPEN_PAUSE_S)
        try:
            for si in srcs:
                forget_reader(plan.sources[si])
                readers[si] = _reader(plan.sources[si])
            pixels[k], valid[k], used[k] = _render_cell(plan, k, readers, rs, normalize)
            return None
        except RasterioError as exc:
            reason = str(exc).splitlines()[0][:120]
    names = ", ".join(Path(plan.sources[i].href).name for i in srcs)
    return f"reading {names} failed ({reason}); run again to retry (is the file whole?)"
