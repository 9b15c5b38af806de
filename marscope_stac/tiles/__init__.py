"""Tiles.

Planning grid cells over the sources, reading and resampling windows, batches for the model, the
reading processes and previews.
"""

from __future__ import annotations

from marscope_stac.tiles.sampling import TileBatch, TilePlan, iter_tile_batches, plan_tiles

__all__ = [
    "TileBatch",
    "TilePlan",
    "iter_tile_batches",
    "plan_tiles",
]
