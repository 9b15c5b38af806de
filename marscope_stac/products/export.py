"""Detections in the formats people open: GeoJSON and CSV, whole or inside a box.

Both come from a product's ``detections.parquet`` (GeoParquet). GeoJSON keeps the body's
coordinates: planetocentric lon/lat with a ``crs`` member naming the body's CRS (e.g.
``IAU_2015:49900``), the arrangement RFC 7946 section 4 allows, so GDAL and QGIS do not take
it for Earth. CSV has a row per detection: a point inside it (lon, lat), its bounds, its
probabilities and cell count, and the outline as WKT.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from marscope_stac.core.errors import ConfigError

__all__ = ["EXPORT_FORMATS", "detections_csv", "detections_geojson", "read_detections"]

EXPORT_FORMATS = ("geojson", "csv")
"""The formats detections are downloaded in."""

_COLUMNS = ("max_probability", "mean_probability", "cells")


def read_detections(
    path: str | Path, bbox: tuple[float, float, float, float] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray, str | None]:
    """Columns, shapely polygons and CRS code of a detections GeoParquet (inside ``bbox``).

    Args:
        path: ``detections.parquet`` of a product.
        bbox: ``(west, south, east, north)`` in the body's degrees: only detections that
            intersect it.

    Raises:
        ConfigError: if the file is missing or not a detections table, or the box is empty.
    """
    try:
        table = pq.read_table(path)
        geo = json.loads((table.schema.metadata or {})[b"geo"])
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is not a detections GeoParquet ({exc})") from exc
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    columns = {
        name: table.column(name).to_numpy() for name in _COLUMNS if name in table.schema.names
    }
    if bbox is not None:
        west, south, east, north = bbox
        if not (west < east and south < north):
            raise ConfigError("bbox must be west,south,east,north with west < east, south < north")
        keep = shapely.intersects(geoms, shapely.box(west, south, east, north))
        geoms = geoms[keep]
        columns = {k: v[keep] for k, v in columns.items()}
    crs = geo["columns"]["geometry"].get("crs")
    code = None
    if crs is not None:
        authority = CRS.from_json_dict(crs).to_authority()
        code = ":".join(authority) if authority else None
    return columns, geoms, code


def _value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def detections_geojson(
    path: str | Path, bbox: tuple[float, float, float, float] | None = None
) -> str:
    """The detections of ``path`` as GeoJSON text (see the module docstring)."""
    columns, geoms, code = read_detections(path, bbox)
    geometry = json.loads(shapely.to_geojson(shapely.GeometryCollection(list(geoms))))
    features = [
        {
            "type": "Feature",
            "id": i,
            "properties": {k: _value(v[i]) for k, v in columns.items()},
            "geometry": g,
        }
        for i, g in enumerate(geometry["geometries"])
    ]
    doc: dict[str, Any] = {"type": "FeatureCollection", "name": "detections"}
    if code is not None:
        doc["crs"] = {"type": "name", "properties": {"name": code}}
    doc["features"] = features
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def detections_csv(path: str | Path, bbox: tuple[float, float, float, float] | None = None) -> str:
    """The detections of ``path`` as CSV text (see the module docstring)."""
    columns, geoms, code = read_detections(path, bbox)
    points = shapely.point_on_surface(geoms)
    bounds = shapely.bounds(geoms)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names = list(columns)
    writer.writerow(["id", "lon", "lat", "west", "south", "east", "north", *names, "crs", "wkt"])
    wkt = shapely.to_wkt(geoms, rounding_precision=7)
    for i in range(len(geoms)):
        x, y = shapely.get_x(points[i]), shapely.get_y(points[i])
        row = [i, f"{x:.7f}", f"{y:.7f}", *(f"{b:.7f}" for b in bounds[i])]
        row += [_value(columns[n][i]) for n in names] + [code or "", wkt[i]]
        writer.writerow(row)
    return out.getvalue()
