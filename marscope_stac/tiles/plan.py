"""Plan tiles: which grid cells the sources cover and which rasters each cell needs.

:func:`plan_tiles` returns a :class:`TilePlan` (cells, their bounds and sources); a cell can
be planned with context (``context`` cell sides of margin around it, as a model trained with
context sees it). Cells across the antimeridian and near the poles are found on the body's
own lon/lat, never through an Earth CRS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from numpy.typing import NDArray

from marscope_stac.core.errors import ConfigError
from marscope_stac.grid.grids import Grid
from marscope_stac.stac.cloud import NetworkSample
from marscope_stac.stac.raster import SourceAsset
from marscope_stac.stac.read import SourceSet

__all__ = [
    "TileBatch",
    "TilePlan",
    "check_context",
    "grown_bounds",
    "plan_tiles",
]


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
        network: GDAL's network counters of the reading process around the batch's reads
            (see :class:`~marscope_stac.stac.cloud.NetworkTally`); None for local files.
    """

    cells: NDArray[np.int64]
    pixels: NDArray[np.float32]
    valid: NDArray[np.float32]
    sources: list[list[str]]
    errors: list[tuple[int, str]] = field(default_factory=list)
    network: NetworkSample | None = None


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


# ----------------------------------------------------------------------------- batch rendering
