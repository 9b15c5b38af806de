"""Detections the straightforward way: GDAL's traced polygons, one shapely object each."""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape


def traced_components(values: np.ndarray, transform: Affine, threshold: float) -> list[tuple]:
    """``(polygon, max, mean, cells)`` per component, best first (ties: raster order).

    A component GDAL traces in several polygons is their union.
    """
    mask = np.nan_to_num(values, nan=-1.0) >= threshold
    labels, _ = ndimage.label(mask)
    parts: dict[int, list] = {}
    for geom, lab in shapes(
        labels.astype(np.int32), mask=mask, connectivity=4, transform=transform
    ):
        parts.setdefault(int(lab), []).append(shape(geom))
    out = []
    for lab, geoms in parts.items():
        v = values[labels == lab].astype(np.float64)
        g = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
        out.append((g, float(v.max()), float(v.sum() / len(v)), len(v), lab))
    out.sort(key=lambda t: (-t[1], t[4]))  # ties: the component met first in raster order
    return [t[:4] for t in out]
