"""Products.

Probability and class COGs, raster and vector PMTiles, detections, their STAC items, and
basemaps.
"""

from __future__ import annotations

from marscope_stac.products.basemap import Basemap, build_basemap
from marscope_stac.products.write import ClassProduct, QueryProduct

__all__ = [
    "Basemap",
    "ClassProduct",
    "QueryProduct",
    "build_basemap",
]
