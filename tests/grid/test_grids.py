"""Planetary grids: cell counts, sizes, ids and bad specifications."""

from __future__ import annotations

import math

import numpy as np
import pytest

from marscope_stac.core.bodies import MARS
from marscope_stac.core.errors import ConfigError
from marscope_stac.grid.grids import EqualAreaGrid, LonLatGrid, parse_grid

__all__ = [
    "test_bad_grid_specs",
    "test_cell_ids_round_trip_and_bbox_query",
    "test_equal_area_count_and_sizes",
    "test_lonlat_planet_count_matches_formula",
]


def test_lonlat_planet_count_matches_formula() -> None:
    g = parse_grid("lonlat:0.2@80")
    assert g.n_cells == (160 / 0.2) * (360 / 0.2) == 1_440_000  # MarScope's global grid
    assert parse_grid("lonlat:0.5").n_cells == 360 * 720
    w, s, e, _n = g.bounds([0])[0]
    assert (w, s) == (-180.0, -80.0) and e - w == pytest.approx(0.2)


@pytest.mark.parametrize("km", [10.0, 50.0, 200.0])
def test_equal_area_count_and_sizes(km: float) -> None:
    g = EqualAreaGrid(km * 1000, MARS)
    sphere = 4 * math.pi * MARS.radius_m**2
    assert g.n_cells == pytest.approx(sphere / (km * 1000) ** 2, rel=0.02)
    # every non-polar cell is close to km x km on the ground
    rows = np.arange(g.n_rows)
    s, n = g.row_lat_bounds(rows)
    lat_c = np.radians((s + n) / 2)
    widths = 2 * math.pi * MARS.radius_m * np.cos(lat_c) / g.row_n_cols(rows)
    inner = np.abs(np.degrees(lat_c)) < 80
    assert np.allclose(widths[inner], km * 1000, rtol=0.03)
    assert g.row_n_cols([0])[0] >= 1 and g.row_n_cols([g.n_rows - 1])[0] >= 1


def test_cell_ids_round_trip_and_bbox_query() -> None:
    for g in (LonLatGrid(0.05), EqualAreaGrid(3000.0)):
        idx = g.cells_in_bbox(150.0, -5.0, 150.3, -4.8)
        assert len(idx) > 0
        ids = g.cell_ids(idx)
        assert [g.parse_cell_id(i) for i in ids] == idx.tolist()
        b = g.bounds(idx)
        assert (b[:, 2] > 150.0).all() and (b[:, 0] < 150.3).all()
    with pytest.raises(ConfigError):
        LonLatGrid(0.05).parse_cell_id("lonlat:0.2:1:1")
    across = LonLatGrid(1.0).cells_in_bbox(179.5, 0, -179.5, 1)  # antimeridian
    assert len(across) == 2


@pytest.mark.parametrize(
    "spec", ["hex:3", "lonlat:0.7", "lonlat:x", "equal-area:-5km", "lonlat:0.2@95"]
)
def test_bad_grid_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_grid(spec)


def test_grids_of_absurd_sizes_are_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="lonlat cell size 180 degree is more than 90"):
        parse_grid("lonlat:180")
    with pytest.raises(ConfigError, match="does not divide 180"):
        parse_grid("lonlat:0.7")
    with pytest.raises(ConfigError, match="more than a quarter of Mars's meridian"):
        parse_grid("equal-area:1e9km")
    assert parse_grid("equal-area:5000km").n_rows == 2
