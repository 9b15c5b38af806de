"""Planetary tile grids: stable cell ids, lon/lat footprints and the pixels each cell reads.

Two kinds of grid cover a whole body:

``lonlat:<degrees>``
    Fixed-degree cells aligned to lon -180 and lat -90 (MarScope's reference grid is
    ``lonlat:0.2`` with ``|lat| < 80``: 800 x 1800 = 1.44 million cells). A cell is rendered in
    the body's geographic CRS, so at high latitude it is stretched east-west, as in MarScope.
``equal-area:<size>`` (``10km``, ``500m``, or metres)
    Rows of constant latitude height; each row holds as many cells as fit its circumference at
    the row's central latitude (the Major TOM design, on the body's sphere). Cells keep nearly
    the same ground size at every latitude, the poles included; each is rendered as a square of
    that size in a local azimuthal equidistant projection centred on the cell.

Cells are numbered by an ``int64`` index (row-major from the south-west) and named by a
stable string id ``"<grid>:<row>:<col>"``. Everything is vectorised over cell indexes, so the
grid of a whole planet costs a few arrays.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import Polygon, box

from marscope_stac.core.bodies import MARS, Body, normalize_lon
from marscope_stac.core.errors import ConfigError

__all__ = [
    "EqualAreaGrid",
    "Grid",
    "LonLatGrid",
    "cell_side_deg",
    "parse_grid",
]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


MAX_ROWS = 2_000_000
"""Most rows a grid may have (cells of about 10 m on Mars, finer than any global mosaic)."""

MAX_BOX_CELLS = 400_000_000
"""Most cells :meth:`Grid.cells_in_bbox` lists at once (3.2 GB of indexes)."""


class Grid(ABC):
    """A tiling of a whole body into cells with stable ids."""

    body: Body

    @property
    @abstractmethod
    def spec(self) -> str:
        """Grid specification, e.g. ``lonlat:0.2`` (read back by :func:`parse_grid`)."""

    @property
    @abstractmethod
    def n_rows(self) -> int:
        """Number of cell rows from the south pole to the north pole."""

    @abstractmethod
    def row_n_cols(self, row: ArrayLike) -> IntArray:
        """Number of cells in each given row."""

    @abstractmethod
    def row_lat_bounds(self, row: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(south, north) latitude of each given row, degrees."""

    @abstractmethod
    def tile_lonlat(
        self, index: int, tile_px: int, points: NDArray[np.float64]
    ) -> tuple[FloatArray, FloatArray]:
        """Lon/lat of tile pixel positions.

        Args:
            index: Cell index.
            tile_px: Tile side in pixels.
            points: Pixel positions along one axis (0 = tile edge, 0.5 = first pixel centre);
                the result covers the square grid ``points x points``.

        Returns:
            (lon, lat) arrays of shape (len(points), len(points)), rows from north to south.
        """

    # -- derived, shared by both kinds -------------------------------------------------------

    @cached_property
    def _row_offsets(self) -> IntArray:
        counts = self.row_n_cols(np.arange(self.n_rows))
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def n_cells(self) -> int:
        """Number of cells covering the whole body."""
        return int(self._row_offsets[-1])

    def index(self, row: ArrayLike, col: ArrayLike) -> IntArray:
        """Cell index of (row, col)."""
        r = np.asarray(row, dtype=np.int64)
        return self._row_offsets[r] + np.asarray(col, dtype=np.int64)

    def row_col(self, index: ArrayLike) -> tuple[IntArray, IntArray]:
        """(row, col) of each cell index."""
        idx = np.asarray(index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_cells):
            raise ConfigError(
                f"cell index out of range for grid {self.spec} (0..{self.n_cells - 1})"
            )
        row = np.searchsorted(self._row_offsets, idx, side="right") - 1
        return row.astype(np.int64), (idx - self._row_offsets[row]).astype(np.int64)

    def bounds(self, index: ArrayLike) -> FloatArray:
        """Lon/lat bounds ``(west, south, east, north)`` of each cell, shape (n, 4)."""
        row, col = self.row_col(index)
        south, north = self.row_lat_bounds(row)
        width = 360.0 / self.row_n_cols(row)
        west = -180.0 + col * width
        return np.column_stack([west, south, west + width, north])

    def centers(self, index: ArrayLike) -> FloatArray:
        """Lon/lat centre of each cell, shape (n, 2) (the middle of :meth:`bounds`)."""
        row, col = self.row_col(index)
        south, north = self.row_lat_bounds(row)
        width = 360.0 / self.row_n_cols(row)
        west = -180.0 + col * width
        out = np.empty((len(west), 2), np.float64)
        np.add(west, west + width, out=out[:, 0])
        np.add(south, north, out=out[:, 1])
        out /= 2
        return out

    def cell_ids(self, index: ArrayLike) -> list[str]:
        """Stable string id ``"<grid>:<row>:<col>"`` of each cell."""
        row, col = self.row_col(index)
        return [f"{self.spec}:{r}:{c}" for r, c in zip(row.tolist(), col.tolist(), strict=True)]

    def parse_cell_id(self, cell_id: str) -> int:
        """Return the index of a cell id written by :meth:`cell_ids`."""
        spec, _, rest = cell_id.rpartition(":")
        spec, _, row_s = spec.rpartition(":")
        if spec != self.spec or not row_s.isdigit() or not rest.isdigit():
            raise ConfigError(f"{cell_id!r} is not a cell id of grid {self.spec}")
        row, col = int(row_s), int(rest)
        if row >= self.n_rows or col >= int(self.row_n_cols(row)):
            raise ConfigError(f"cell {cell_id!r} does not exist in grid {self.spec}")
        return int(self.index(row, col))

    def locate(self, lon: ArrayLike, lat: ArrayLike) -> IntArray:
        """Index of the cell containing each lon/lat position (-1 outside the grid)."""
        lo = (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0
        la = np.asarray(lat, dtype=np.float64)
        south0, _ = self.row_lat_bounds(0)
        height = float(self.row_lat_bounds(1)[0] - south0) if self.n_rows > 1 else 180.0
        row = np.floor((la - float(south0)) / height).astype(np.int64)
        ok = (row >= 0) & (row < self.n_rows)
        rows = np.where(ok, row, 0)
        ncols = self.row_n_cols(rows)
        col = np.minimum(np.floor(lo / (360.0 / ncols)).astype(np.int64), ncols - 1)
        return np.where(ok, self._row_offsets[rows] + col, -1).astype(np.int64)

    def footprint(self, index: int) -> Polygon:
        """Footprint polygon of one cell in the body's lon/lat CRS."""
        w, s, e, n = self.bounds([index])[0]
        return box(w, s, e, n)

    def cells_in_bbox(self, west: float, south: float, east: float, north: float) -> IntArray:
        """Indexes of every cell whose footprint intersects the lon/lat box (lon in -180..180).

        A box with ``west > east`` crosses the antimeridian.
        """
        if west > east:
            return np.concatenate(
                [
                    self.cells_in_bbox(west, south, 180.0, north),
                    self.cells_in_bbox(-180.0, south, east, north),
                ]
            )
        rows = np.arange(self.n_rows)
        s, n = self.row_lat_bounds(rows)
        rows = rows[(n > south) & (s < north)]
        share = max(east - west, 0.0) / 360.0
        estimate = (
            float(np.sum(self.row_n_cols(rows), dtype=np.float64)) * share if len(rows) else 0
        )
        if estimate > MAX_BOX_CELLS:
            raise ConfigError(
                f"the box {west:g},{south:g},{east:g},{north:g} holds about {estimate:,.0f} cells "
                f"of grid {self.spec}, more than {MAX_BOX_CELLS:,}; choose a coarser grid or a "
                "smaller box"
            )
        out = []
        for r in rows.tolist():
            ncols = int(self.row_n_cols(r))
            width = 360.0 / ncols
            c0 = max(0, math.floor((west + 180.0) / width + 1e-9))
            c1 = min(ncols, math.ceil((east + 180.0) / width - 1e-9))
            if c1 > c0:
                out.append(self._row_offsets[r] + np.arange(c0, c1))
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


class LonLatGrid(Grid):
    """Fixed-degree lon/lat cells; ``max_abs_lat`` drops polar rows (MarScope: 80)."""

    def __init__(self, size_deg: float, body: Body = MARS, max_abs_lat: float = 90.0) -> None:
        if math.isfinite(size_deg) and size_deg > 0 and 180.0 / size_deg > MAX_ROWS:
            raise ConfigError(
                f"lonlat cell size {size_deg:g} degree is too small for {body.name} (more than "
                f"{MAX_ROWS:,} rows); the finest grid is lonlat:{180.0 / MAX_ROWS:g}"
            )
        if size_deg > 90:
            raise ConfigError(
                f"lonlat cell size {size_deg:g} degree is more than 90 (the grid needs two rows "
                "at least); use e.g. 0.2, 0.05"
            )
        if not (0 < size_deg <= 90) or abs(180.0 / size_deg - round(180.0 / size_deg)) > 1e-6:
            raise ConfigError(
                f"lonlat cell size {size_deg} degree does not divide 180; use e.g. 0.2, 0.05"
            )
        self.size = float(size_deg)
        self.body = body
        self.max_abs_lat = float(max_abs_lat)
        skip = math.floor((90.0 - self.max_abs_lat) / self.size + 1e-9)
        self._lat0 = -90.0 + skip * self.size
        self._rows = round(180.0 / self.size) - 2 * skip
        self._cols = round(360.0 / self.size)

    @property
    def spec(self) -> str:
        """Grid specification string."""
        base = f"lonlat:{self.size:g}"
        return base if self.max_abs_lat >= 90 else f"{base}@{self.max_abs_lat:g}"

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return self._rows

    @property
    def n_cols(self) -> int:
        """Number of cells in every row."""
        return self._cols

    def row_n_cols(self, row: ArrayLike) -> IntArray:
        """Number of cells in each given row (the same for all rows)."""
        return np.full(np.shape(row), self._cols, dtype=np.int64)

    def row_lat_bounds(self, row: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(south, north) latitude of each given row."""
        south = self._lat0 + np.asarray(row, dtype=np.float64) * self.size
        return south, south + self.size

    def row_col(self, index: ArrayLike) -> tuple[IntArray, IntArray]:
        """(row, col) of each cell index (every row has the same number of cells)."""
        idx = np.asarray(index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_cells):
            raise ConfigError(
                f"cell index out of range for grid {self.spec} (0..{self.n_cells - 1})"
            )
        return idx // self._cols, idx % self._cols

    def tile_lonlat(
        self, index: int, tile_px: int, points: NDArray[np.float64]
    ) -> tuple[FloatArray, FloatArray]:
        """Lon/lat of tile pixel positions (a regular lon/lat lattice)."""
        w, s, e, n = self.bounds([index])[0]
        lon = w + (e - w) * points / tile_px
        lat = n - (n - s) * points / tile_px
        lon2, lat2 = np.meshgrid(lon, lat)
        return lon2, lat2


class EqualAreaGrid(Grid):
    """Rows of equal latitude height, cells of (nearly) constant ground size, poles included."""

    def __init__(self, cell_m: float, body: Body = MARS) -> None:
        if cell_m <= 0 or not math.isfinite(cell_m):
            raise ConfigError(f"equal-area cell size {cell_m} m must be a positive number")
        self.body = body
        self.cell_m = float(cell_m)
        deg = self.cell_m / body.metres_per_degree
        if deg > 90:
            raise ConfigError(
                f"equal-area cell size {cell_m:g} m is more than a quarter of {body.name}'s "
                f"meridian ({90 * body.metres_per_degree / 1000:,.0f} km); use e.g. "
                "equal-area:10km"
            )
        self._rows = max(1, round(180.0 / deg))
        if self._rows > MAX_ROWS:
            raise ConfigError(f"equal-area cell size {cell_m} m is too small for {body.name}")
        self.dlat = 180.0 / self._rows

    @property
    def spec(self) -> str:
        """Grid specification string."""
        return f"equal-area:{self.cell_m:g}m"

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return self._rows

    def row_lat_bounds(self, row: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """(south, north) latitude of each given row."""
        south = -90.0 + np.asarray(row, dtype=np.float64) * self.dlat
        return south, south + self.dlat

    def row_n_cols(self, row: ArrayLike) -> IntArray:
        """Cells per row: the row's central-latitude circumference over the cell size."""
        south, north = self.row_lat_bounds(row)
        lat_c = np.radians((south + north) / 2.0)
        return np.maximum(1, np.round(360.0 * np.cos(lat_c) / self.dlat)).astype(np.int64)

    def tile_lonlat(
        self, index: int, tile_px: int, points: NDArray[np.float64]
    ) -> tuple[FloatArray, FloatArray]:
        """Lon/lat of tile pixel positions: the inverse azimuthal equidistant on the sphere."""
        lon0, lat0 = (math.radians(v) for v in self.centers([index])[0])
        half = self.cell_m / 2.0
        coords = -half + self.cell_m * points / tile_px
        x, y = np.meshgrid(coords, -coords)
        radius = self.body.radius_m
        rho = np.hypot(x, y)
        c = rho / radius
        with np.errstate(invalid="ignore", divide="ignore"):
            sin_lat = np.cos(c) * math.sin(lat0) + np.where(
                rho > 0, y * np.sin(c) * math.cos(lat0) / rho, 0.0
            )
            lat = np.arcsin(np.clip(sin_lat, -1.0, 1.0))
            lon = lon0 + np.arctan2(
                x * np.sin(c), rho * math.cos(lat0) * np.cos(c) - y * math.sin(lat0) * np.sin(c)
            )
        lon = np.where(rho > 0, lon, lon0)
        lon_deg = normalize_lon(np.degrees(lon))
        return lon_deg, np.degrees(lat)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e-?\d+)?)\s*(km|m)?\s*$", re.IGNORECASE)


def parse_grid(spec: str, body: Body = MARS) -> Grid:
    """Parse a grid specification: ``lonlat:0.2``, ``lonlat:0.2@80``, ``equal-area:10km``.

    Raises:
        ConfigError: if the specification is malformed.
    """
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()
    hint = "use lonlat:<degrees>[@<max |lat|>] or equal-area:<size>[km|m], e.g. lonlat:0.2"
    if kind == "lonlat":
        size_s, _, lat_s = arg.partition("@")
        try:
            size = float(size_s)
            max_lat = float(lat_s) if lat_s else 90.0
        except ValueError:
            raise ConfigError(f"cannot read grid {spec!r}: {hint}") from None
        if not 0 < max_lat <= 90:
            raise ConfigError(f"grid {spec!r}: max |lat| must be in (0, 90]")
        return LonLatGrid(size, body, max_lat)
    if kind in ("equal-area", "equalarea", "ea"):
        m = _SIZE.match(arg)
        if not m:
            raise ConfigError(f"cannot read grid {spec!r}: {hint}")
        value = float(m.group(1)) * (1000.0 if (m.group(2) or "").lower() == "km" else 1.0)
        return EqualAreaGrid(value, body)
    raise ConfigError(f"unknown grid kind {kind!r} in {spec!r}: {hint}")


def cell_side_deg(grid: Grid | str) -> float:
    """The east-west side of a grid's cells at the equator near longitude 0, in degrees.

    The nominal size of a grid's cells (``lonlat:2``: 2.0), whatever kind of grid.
    """
    g = parse_grid(grid) if isinstance(grid, str) else grid
    return float(np.median(np.diff(g.bounds(g.cells_in_bbox(0, 0, 1, 1)[:1])[0, ::2])))
