"""An imagery basemap for the web map: the catalog's COGs as one PMTiles pyramid.

:func:`build_basemap` reads every usable raster of a STAC source, warps it onto the body's
planetocentric lon/lat grid (``IAU_2015:<naif>00``) at about the imagery's own resolution
(capped by ``max_pixels``), and writes 8-bit grey PNG tiles on the z/x/y scheme of the
body's sphere (:func:`~marscope_stac.products.render.write_raster_pmtiles`), published as a
STAC item of the ``basemaps`` collection of the products catalog. No data is transparent.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS as RioCRS
from rasterio.errors import RasterioError
from rasterio.warp import Resampling, reproject

from marscope_stac.core.errors import ConfigError, DataError, OutputError, check_range
from marscope_stac.core.fs import check_apart, source_folder, staged_directory
from marscope_stac.core.owned import carry_over
from marscope_stac.core.text import join_lines
from marscope_stac.products.render import raster_zoom_range, tile_metadata, write_raster_pmtiles
from marscope_stac.stac.build import (
    FILE_V2,
    PMTILES_MEDIA_TYPE,
    PROCESSING_V1,
    SSYS_V1,
    file_asset,
    now_utc,
    processing_fields,
    ssys_fields,
    stac_collection,
    stac_item,
)
from marscope_stac.stac.catalog import OutputCatalog
from marscope_stac.stac.read import SourceSet, load_sources

__all__ = ["Basemap", "build_basemap"]


@dataclass
class Basemap:
    """What :func:`build_basemap` wrote."""

    path: Path
    item_path: Path
    shape: tuple[int, int]
    zoom: tuple[int, int]
    tiles: int

    def summary(self) -> str:
        """Lines for people."""
        return join_lines(
            f"basemap {self.path}: {self.shape[1]} x {self.shape[0]} px mosaic, "
            f"zoom {self.zoom[0]}-{self.zoom[1]}, {self.tiles} tiles",
            f"  STAC item: {self.item_path}",
        )


def _mosaic(sources: Any, max_pixels: int) -> tuple[np.ndarray, Affine]:
    """The sources warped onto one lon/lat raster (uint8, 0 = no data) and its transform."""
    body = sources.body
    w = min(a.lonlat_bounds[0] for a in sources.assets)
    s = min(a.lonlat_bounds[1] for a in sources.assets)
    e = max(a.lonlat_bounds[2] for a in sources.assets)
    n = max(a.lonlat_bounds[3] for a in sources.assets)
    # the finest source resolution, in degrees of the body's sphere
    m_per_deg = body.radius_m * math.pi / 180.0
    res = min((a.res[0] if a.crs.is_geographic else a.res[0] / m_per_deg) for a in sources.assets)
    res = max(res, math.sqrt((e - w) * (n - s) / max_pixels))
    cols, rows = max(1, math.ceil((e - w) / res)), max(1, math.ceil((n - s) / res))
    transform = Affine(res, 0.0, w, 0.0, -res, n)
    dst_crs = RioCRS.from_wkt(body.crs.to_wkt())
    out = np.zeros((rows, cols), np.float32)
    for a in sources.assets:
        try:
            with rasterio.open(a.href) as src:
                band = np.zeros((rows, cols), np.float32)
                reproject(
                    rasterio.band(src, 1),
                    band,
                    dst_transform=transform,
                    dst_crs=dst_crs,
                    dst_nodata=np.nan,
                    src_nodata=a.nodata,
                    resampling=Resampling.average,
                )
        except RasterioError as exc:
            raise DataError(f"cannot read {a.href}: {str(exc)[:160]}") from exc
        valid = np.isfinite(band) & (band != (a.nodata if a.nodata is not None else np.nan))
        out[valid & (out == 0)] = band[valid & (out == 0)]
    lo, hi = np.percentile(out[out > 0], [0.5, 99.5]) if (out > 0).any() else (0.0, 1.0)
    scaled = np.clip((out - lo) / max(hi - lo, 1e-6) * 254 + 1, 1, 255)
    return np.where(out > 0, scaled, 0).astype(np.uint8), transform


def build_basemap(
    source: str | Path,
    out: str | Path = "products",
    *,
    name: str | None = None,
    max_pixels: int = 64_000_000,
) -> Basemap:
    """Write an imagery PMTiles basemap of a STAC source into ``out/basemaps/<name>/``.

    Args:
        source: A STAC catalog, collection, item or API (see
            :func:`~marscope_stac.stac.read.load_sources`).
        out: Products catalog folder.
        name: The basemap's id (default: from the source's folder name).
        max_pixels: Largest mosaic; coarser than the imagery when it would be larger.

    Raises:
        CatalogError: if the source has no usable raster.
        OutputError: if ``out`` is not a products catalog.
    """
    check_range("max_pixels", max_pixels, 1024, 2**31, integer=True)
    src_folder = source_folder(source)
    if src_folder is not None:
        check_apart(out, {f"the input catalog {source}": src_folder})
    catalog = OutputCatalog(out)
    sources = load_sources(source)
    if name is not None and not name.strip():  # "" would silently mean the default
        raise ConfigError("--name is empty; give a basemap id or leave --name out")
    label = name or Path(str(source).rstrip("/")).resolve().name or "imagery"
    bid = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.")
    if name is not None and not bid:
        raise ConfigError(f"--name {name!r} has no letter or digit to name a basemap by")
    bid = bid or "imagery"
    folder = Path(out) / "basemaps" / bid
    shown = _source_of(source, folder)
    _check_same_source(folder / f"{bid}.json", shown, name)
    image, transform = _mosaic(sources, max_pixels)
    # from zoom 0: a map zoomed out to the whole planet still shows the imagery (its tiles
    # below the mosaic's own zooms are few: the extent covers one or two tiles there)
    zoom = (0, raster_zoom_range(transform, image.shape)[1])
    catalog.claim()
    with staged_directory(folder, overwrite=True, owned=True) as stage:
        meta = tile_metadata(bid, f"Imagery of {label}", sources.body, "baselayer")
        tiles = write_raster_pmtiles(
            stage / "imagery.pmtiles", image, transform, meta, zoom, "gray", 254, 0
        )
        carry_over(folder, stage, ["imagery.pmtiles"])  # a user's files stay
    rows, cols = image.shape
    bbox = [
        transform.c,
        transform.f + transform.e * rows,
        transform.c + transform.a * cols,
        transform.f,
    ]
    item_path = _publish(catalog, folder, label, sources, transform, zoom, bbox, shown)
    return Basemap(folder / "imagery.pmtiles", item_path, (rows, cols), zoom, tiles)


def _publish(
    catalog: OutputCatalog,
    folder: Path,
    label: str,
    sources: SourceSet,
    transform: Affine,
    zoom: tuple[int, int],
    bbox: list[float],
    shown: str,
) -> Path:
    """Add the basemap's STAC item (and the ``basemaps`` collection) to the catalog."""
    bid = folder.name
    times = sorted(a.datetime for a in sources.assets if a.datetime is not None)
    props: dict[str, Any] = {
        **ssys_fields(sources.body),
        "start_datetime": times[0] if times else now_utc(),
        "end_datetime": times[-1] if times else now_utc(),
        **processing_fields(
            f"{len(sources.assets)} source rasters warped to the body's lon/lat at "
            f"{transform.a:.6g} degrees per pixel, stretched to 8 bits, tiled as PNG."
        ),
        "marscope:zoom": list(zoom),
        "marscope:source": shown,
    }
    asset = file_asset(
        folder / "imagery.pmtiles",
        folder,
        PMTILES_MEDIA_TYPE,
        ["visual", "tiles"],
        "Imagery tiles (PMTiles, grey PNG)",
    )
    item = stac_item(
        bid,
        props,
        [SSYS_V1, FILE_V2, PROCESSING_V1],
        bbox,
        {"tiles": asset},
        title=f"Imagery basemap {bid}",
        description=f"Imagery of {label} as web-map tiles (PMTiles) for marscope serve.",
    )
    coll = stac_collection(
        "basemaps",
        "Basemaps",
        "Imagery tiles for the web map.",
        (bbox, [props["start_datetime"], props["end_datetime"]]),
        {"ssys:targets": [sources.body.name]},
        [SSYS_V1],
        ssys_fields(sources.body),
    )
    return catalog.add(folder.parent / "collection.json", coll, folder / f"{bid}.json", item)


def _source_of(source: str | Path, folder: Path) -> str:
    """What a basemap shows, as its item records it: a URL, or the path from ``folder``."""
    text = str(source)
    return text if "://" in text else os.path.relpath(Path(text).resolve(), folder.resolve())


def _check_same_source(item_path: Path, shown: str, name: str | None) -> None:
    """Refuse to replace a basemap of another source that has the same name.

    Raises:
        OutputError: naming both sources and the fix.
    """
    try:
        before = json.loads(item_path.read_text(encoding="utf-8"))["properties"]["marscope:source"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # none yet, or one written before sources were recorded (replaced)
    if before != shown:
        how = "another --name" if name is not None else "--name"
        raise OutputError(
            f"basemap {item_path.parent.name} already shows {before}; give {how} to keep both "
            f"(it would replace it with {shown})"
        )
