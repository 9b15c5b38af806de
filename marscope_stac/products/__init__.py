"""Products.

Probability and class COGs, raster and vector PMTiles, detections, their STAC items, and
basemaps.
"""
