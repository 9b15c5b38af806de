"""Property-based tests of the coordinate and grid maths (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from marscope_stac.core.bodies import normalize_lon
from marscope_stac.grid.grids import EqualAreaGrid, LonLatGrid

LON = st.floats(-179.999, 179.999, allow_nan=False)
LAT = st.floats(-89.999, 89.999, allow_nan=False)
GRIDS = [LonLatGrid(0.2), LonLatGrid(1.5), EqualAreaGrid(10_000.0), EqualAreaGrid(250_000.0)]


@given(st.floats(-1e4, 1e4, allow_nan=False))
def test_normalize_lon_range_and_periodicity(lon: float) -> None:
    n = float(normalize_lon(lon))
    assert -180.0 <= n < 180.0
    assert abs(((lon - n) / 360.0) - round((lon - n) / 360.0)) < 1e-6


@settings(max_examples=200, deadline=None)
@given(LON, LAT, st.integers(0, len(GRIDS) - 1))
def test_every_point_lies_in_the_cell_that_locates_it(lon: float, lat: float, k: int) -> None:
    grid = GRIDS[k]
    idx = int(grid.locate([lon], [lat])[0])
    assert 0 <= idx < grid.n_cells
    w, s, e, n = grid.bounds([idx])[0]
    assert w - 1e-9 <= lon <= e + 1e-9 and s - 1e-9 <= lat <= n + 1e-9
    assert grid.parse_cell_id(grid.cell_ids([idx])[0]) == idx
    # the cell is found by a bbox query around the point
    found = grid.cells_in_bbox(lon - 1e-6, lat - 1e-6, lon + 1e-6, lat + 1e-6)
    assert idx in set(found.tolist())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, len(GRIDS) - 1), st.integers(0, 10**9))
def test_index_row_col_round_trip(k: int, raw: int) -> None:
    grid = GRIDS[k]
    idx = raw % grid.n_cells
    row, col = grid.row_col([idx])
    assert int(grid.index(row, col)[0]) == idx
    centre = grid.centers([idx])[0]
    assert int(grid.locate([centre[0]], [centre[1]])[0]) == idx
    assert np.all(grid.row_n_cols(row) > col)


def test_equal_area_tile_positions_match_proj_aeqd() -> None:
    """The grid's own inverse azimuthal equidistant agrees with PROJ's on the Mars sphere."""
    from pyproj import CRS, Transformer
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_operation import AzimuthalEquidistantConversion

    from marscope_stac.grid.grids import parse_grid

    grid = parse_grid("equal-area:20km")
    points = np.array([0.0, 3.5, 16.0, 31.99])
    for lon, lat in [(0.0, 0.0), (137.4, -4.6), (-60.0, 62.0), (10.0, 89.5), (179.9, -85.0)]:
        cell = int(grid.locate([lon], [lat])[0])
        lon0, lat0 = grid.centers([cell])[0]
        aeqd = ProjectedCRS(
            conversion=AzimuthalEquidistantConversion(
                latitude_natural_origin=float(lat0), longitude_natural_origin=float(lon0)
            ),
            geodetic_crs=CRS("IAU_2015:49900"),
        )
        to_lonlat = Transformer.from_crs(aeqd, CRS("IAU_2015:49900"), always_xy=True)
        glon, glat = grid.tile_lonlat(cell, 32, points)
        half = grid.cell_m / 2
        coords = -half + grid.cell_m * points / 32
        x, y = np.meshgrid(coords, -coords)
        plon, plat = to_lonlat.transform(x, y)
        dlon = (glon - plon + 180.0) % 360.0 - 180.0
        assert np.abs(dlon * np.cos(np.radians(plat))).max() < 1e-7
        assert np.abs(glat - plat).max() < 1e-7
