"""Products.

Probability and class COGs, raster and vector PMTiles, detections, their STAC items, and
basemaps.
"""

from __future__ import annotations

from marscope_stac.products.basemap import Basemap, build_basemap
from marscope_stac.products.detections import Detections, raster_detections
from marscope_stac.products.write import ClassProduct, QueryProduct

__all__ = [
    "Basemap",
    "ClassProduct",
    "Detections",
    "QueryProduct",
    "build_basemap",
    "raster_detections",
]
