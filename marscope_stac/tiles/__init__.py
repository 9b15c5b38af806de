"""Cut source rasters into grid-cell tiles, lazily, in tasks that read their own windows.

The steps, one module each:

- ``plan``: :func:`~marscope_stac.tiles.plan.plan_tiles` decides which grid cells a
  :class:`~marscope_stac.stac.read.SourceSet` covers and which rasters each cell needs;
- ``sample``: one cell's source window (from a COG overview when the tile is coarser than the
  source) read, every tile pixel mapped back into the raster (the grid's lon/lat, then the
  raster's own CRS, on a control lattice interpolated to every pixel) and sampled, cells that
  span several rasters mosaicked, pixels normalised to 0..1;
- ``batch``: a grid row of cells read and rendered together (separable for lon/lat cells over
  equirectangular rasters);
- ``workers``: Dask tasks (:func:`~marscope_stac.tiles.workers.tile_batches`) and local
  reading processes;
- ``preview``: contact sheets of what the model will see.

Native planetary CRSs are kept end to end; PROJ is never asked to cross bodies.
"""

from __future__ import annotations

from marscope_stac.tiles.plan import TileBatch, TilePlan, plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches

__all__ = [
    "TileBatch",
    "TilePlan",
    "iter_tile_batches",
    "plan_tiles",
]
