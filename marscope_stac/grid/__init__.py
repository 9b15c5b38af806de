"""Planetary grids: lon/lat and equal-area cells on a body's sphere, their ids and geometry."""

from __future__ import annotations

from marscope_stac.grid.grids import EqualAreaGrid, Grid, LonLatGrid, parse_grid

__all__ = [
    "EqualAreaGrid",
    "Grid",
    "LonLatGrid",
    "parse_grid",
]
