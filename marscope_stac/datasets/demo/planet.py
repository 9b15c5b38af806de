"""A planet-sized synthetic catalog: one small COG per tile of a global lon/lat tiling.

It has the shape of a global mosaic's catalog (the CTX mosaic is ~3,700 tiles; the default
4-degree tiling gives 90 x 44 = 3,960 items between 88 degrees south and north) with small
rasters, for what scales with the number of items: searching a STAC API page by page,
reading every raster's header, planning cells. Each item has a datetime (spread over ten
Mars years of acquisitions) and an ``eo:cloud_cover``-like ``marscope:dust`` property in
0..100, so datetime and CQL2 filters have something to select.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from tqdm import tqdm

from marscope_stac.core.bodies import MARS
from marscope_stac.core.errors import ConfigError
from marscope_stac.core.fs import staged_directory
from marscope_stac.products.cog import write_cog
from marscope_stac.stac.build import (
    COG_MEDIA_TYPE,
    PROJ_V2,
    SSYS_V1,
    file_asset,
    proj_fields,
    ssys_fields,
    stac_catalog,
    stac_collection,
    stac_item,
)
from marscope_stac.stac.catalog import write_static_catalog

__all__ = ["PLANET_COLLECTION", "build_planet_catalog", "planet_tiles"]

PLANET_COLLECTION = "planet-mosaic"
_LAT_LIMIT = 88.0


_GLOBAL = (-180.0, -_LAT_LIMIT, 180.0, _LAT_LIMIT)


def planet_tiles(
    tile_deg: float, extent: tuple[float, float, float, float] = _GLOBAL
) -> list[tuple[float, float]]:
    """The (west, south) corners of ``extent`` tiled in ``tile_deg`` squares.

    Raises:
        ConfigError: when the squares do not tile the extent.
    """
    w, s, e, n = extent
    cols, rows = (e - w) / tile_deg, (n - s) / tile_deg
    if tile_deg <= 0 or cols % 1 or rows % 1 or not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(
            f"tile_deg {tile_deg} does not tile {list(extent)}; give a size that divides its "
            "width and height (4 for the planet: 3,960 tiles)"
        )
    return [
        (w + c * tile_deg, s + r * tile_deg) for r in range(int(rows)) for c in range(int(cols))
    ]


def _tile_item(
    stage: Path, west: float, south: float, tile_deg: float, px: int, k: int
) -> dict[str, Any]:
    rng = np.random.default_rng(k)
    ew, ns = "e" if west >= 0 else "w", "n" if south >= 0 else "s"
    item_id = f"planet-{ew}{abs(west):05.1f}-{ns}{abs(south):04.1f}".replace(".", "p")
    folder = stage / PLANET_COLLECTION / item_id
    res = tile_deg / px
    transform = Affine(res, 0.0, west, 0.0, -res, south + tile_deg)
    image = rng.integers(1, 255, (px, px), dtype=np.uint8)
    tif = write_cog(folder / f"{item_id}.tif", image, MARS.crs, transform, nodata=0)
    when = dt.datetime(2006, 11, 1, tzinfo=dt.UTC) + dt.timedelta(days=int(k * 37 % 6870))
    props = {
        **ssys_fields(MARS),
        **proj_fields(MARS.crs, transform, (px, px)),
        "datetime": when,
        "marscope:dust": int(rng.integers(0, 101)),
    }
    bbox = [west, south, west + tile_deg, south + tile_deg]
    asset = file_asset(tif, folder, COG_MEDIA_TYPE, ["data"], "Mosaic tile (DN, nodata 0)")
    return stac_item(item_id, props, [SSYS_V1, PROJ_V2], bbox, {"image": asset})


def build_planet_catalog(
    out: str | Path,
    *,
    tile_deg: float = 4.0,
    extent: tuple[float, float, float, float] = _GLOBAL,
    tile_px: int = 16,
    progress: bool = True,
) -> Path:
    """Write the planet-sized catalog to ``out`` (replaced when it is one this project wrote).

    Args:
        out: Catalog folder.
        tile_deg: Tile size in degrees (4: 3,960 items for the planet).
        extent: The (west, south, east, north) tiled, the planet to 88 degrees by default.
        tile_px: Pixels per tile side.
        progress: Show a progress bar.

    Returns:
        The path of ``catalog.json``.

    Raises:
        ConfigError: for a tile size that does not tile the planet.
    """
    tiles = planet_tiles(tile_deg, extent)
    with staged_directory(out, overwrite=True, owned=True) as stage:
        items = [
            _tile_item(stage, w, s, tile_deg, tile_px, k)
            for k, (w, s) in enumerate(tqdm(tiles, desc="planet tiles", disable=not progress))
        ]
        times = sorted(i["properties"]["datetime"] for i in items)
        coll = stac_collection(
            PLANET_COLLECTION,
            "Synthetic global mosaic",
            f"{len(items)} tiles of {tile_deg} degrees over {list(extent)} of Mars",
            (list(extent), [times[0], times[-1]]),
            {"ssys:targets": [MARS.name]},
            [SSYS_V1],
        )
        cat = stac_catalog("planet", "Synthetic planet", "A planet-sized catalog for scaling tests")
        write_static_catalog(stage, cat, [(coll, items)])
    return Path(out) / "catalog.json"
