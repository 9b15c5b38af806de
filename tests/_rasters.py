"""Small synthetic rasters and hand-written STAC fixtures for the ingestion tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS

from marscope_stac.products.cog import write_cog


def pattern(rows: int, cols: int, seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    """A textured test image with values 1..250 (0 stays free for nodata)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 120 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + rng.normal(0, 10, (rows, cols))
    arr = np.clip(base, 1, 250)
    if dtype == "uint16":
        return (arr * 100).astype(np.uint16)
    return arr.astype(dtype)


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str | CRS,
    transform: Affine,
    nodata: float | None = None,
    cog: bool = True,
    scale: float | None = None,
    offset: float | None = None,
) -> Path:
    """Write a COG (or a plain striped GeoTIFF) with optional scale/offset in the header."""
    crs_obj = CRS.from_user_input(crs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cog:
        write_cog(path, data, crs_obj, transform, nodata=nodata, scale=scale, offset=offset)
        return path
    profile = {
        "driver": "GTiff",
        "dtype": data.dtype.name,
        "count": 1,
        "height": data.shape[0],
        "width": data.shape[1],
        "crs": rasterio.crs.CRS.from_wkt(crs_obj.to_wkt()),
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
    return path


def usgs_style_catalog(root: Path) -> Path:
    """A catalog written the way USGS Astrogeology's are, pointing at a 16-bit COG.

    Quirks: ``proj:epsg`` null, a quoted WKT1 string in ``proj:wkt2``, longitudes 0..360 in
    bbox/geometry/``proj:bbox``, an asset key with spaces, raster:bands (STAC 1.0 style) with
    scale/offset and nodata 0, a wrong ``proj:shape`` (the COG header must win), and a
    thumbnail that must not be picked.
    """
    crs = CRS.from_user_input("IAU_2015:49915")  # equirectangular, clon = 180
    m_per_deg = 3396190.0 * np.pi / 180.0
    res = m_per_deg / 1000  # 1/1000 degree per pixel
    # lon 210E (= -150) .. 210.2E, lat 10 .. 10.1; x is measured from lon 180
    transform = Affine(res, 0.0, 30.0 * m_per_deg, 0.0, -res, 10.1 * m_per_deg)
    data = pattern(100, 200, seed=3, dtype="uint16")
    data[:10, :10] = 0  # a nodata corner
    tif = write_geotiff(
        root / "data" / "ctx_quirky.tif", data, crs, transform, nodata=0, scale=0.01, offset=-5.0
    )
    wkt1 = crs.to_wkt("WKT1_GDAL")
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/projection/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
        "id": "P01_001234_1900_XI_10N150W",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[210.0, 10.0], [210.2, 10.0], [210.2, 10.1], [210.0, 10.1], [210.0, 10.0]]
            ],
        },
        "bbox": [210.0, 10.0, 210.2, 10.1],
        "properties": {
            "datetime": "2006-11-08T12:00:00Z",
            "proj:epsg": None,
            "proj:wkt2": json.dumps(wkt1),
            "proj:bbox": [210.0, 10.0, 210.2, 10.1],
            "proj:shape": [999, 999],
            "ssys:targets": ["Mars"],
        },
        "links": [],
        "assets": {
            "Image 16-bit COG": {
                "href": "../data/ctx_quirky.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "raster:bands": [
                    {"nodata": 0, "scale": 0.01, "offset": -5.0, "data_type": "uint16"}
                ],
            },
            "Browse Image": {
                "href": "../data/ctx_quirky.tif",
                "type": "image/tiff",
                "roles": ["thumbnail"],
            },
        },
    }
    (root / "items").mkdir(parents=True, exist_ok=True)
    (root / "items" / "item.json").write_text(json.dumps(item))
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "mro_ctx_quirky",
        "description": "USGS-style test collection",
        "license": "PDDL-1.0",
        "extent": {
            "spatial": {"bbox": [[210.0, 10.0, 210.2, 10.1]]},
            "temporal": {"interval": [["2006-01-01T00:00:00Z", None]]},
        },
        "links": [{"rel": "item", "href": "./items/item.json", "type": "application/json"}],
        "summaries": {"ssys:targets": ["Mars"]},
    }
    (root / "collection.json").write_text(json.dumps(collection))
    _ = tif
    return root / "collection.json"


def stac_item(
    root: Path,
    item_id: str,
    assets: dict[str, Any],
    props: dict[str, Any] | None = None,
    bbox: list[float] | None = None,
) -> Path:
    """Write a minimal STAC item JSON with the given assets; returns its path."""
    b = bbox or [150.0, -5.0, 150.2, -4.8]
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": item_id,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]],
        },
        "bbox": b,
        "properties": {"datetime": "2010-01-01T00:00:00Z", **(props or {})},
        "links": [],
        "assets": assets,
    }
    path = root / f"{item_id}.json"
    path.write_text(json.dumps(item))
    return path


def catalog_of(root: Path, item_paths: list[Path]) -> Path:
    """A catalog.json linking the given item files."""
    cat = {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": "test",
        "description": "test",
        "links": [
            {
                "rel": "item",
                "href": f"./{p.relative_to(root).as_posix()}",
                "type": "application/json",
            }
            for p in item_paths
        ],
    }
    path = root / "catalog.json"
    path.write_text(json.dumps(cat))
    return path
