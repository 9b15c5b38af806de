"""The raster assets of STAC items.

Picking the data asset, reading its header (CRS, transform, bands, nodata, scale) and
checking a local file before any pixel is read.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.warp import transform_bounds
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry

from marscope_stac.core.bodies import Body, body_of_crs, normalize_lon
from marscope_stac.core.errors import CatalogError, DataError
from marscope_stac.core.quiet import quiet_warnings
from marscope_stac.stac.cloud import (
    BROKEN_READ_SIGNS,
    forget_cached_bytes,
    gdal_messages,
    gdal_path,
)
from marscope_stac.stac.remote import is_remote

__all__ = [
    "LUMA_WEIGHTS",
    "SourceAsset",
    "crs_from_stac",
    "image_bands",
    "one_band",
    "open_raster",
    "pick_asset",
]

log = logging.getLogger(__name__)


_TIFF_TYPES = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff", "application=geotiff")


_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual", "browse"}


def _is_tiff(asset: pystac.Asset) -> bool:
    media = (asset.media_type or "").lower()
    href = asset.href.lower().split("?", 1)[0]
    return any(t in media for t in _TIFF_TYPES) or href.endswith((".tif", ".tiff"))


def pick_asset(item: pystac.Item, asset: str | None = None) -> str:
    """Return the key of the item's data raster.

    With ``asset`` given, that key must exist. Otherwise GeoTIFF assets whose roles are not
    thumbnail/overview/metadata are ranked: role ``data`` first, then cloud-optimized, then key.

    Raises:
        CatalogError: if no suitable asset exists (message names the item and its asset keys).
    """
    if asset is not None:
        if asset not in item.assets:
            raise CatalogError(
                f"item {item.id} has no asset {asset!r} (it has: {', '.join(item.assets)}); "
                "fix --asset"
            )
        return asset
    ranked = []
    for key, a in item.assets.items():
        roles = set(a.roles or [])
        if not _is_tiff(a) or (roles & _NOT_DATA_ROLES and "data" not in roles):
            continue
        cog = "cloud-optimized" in (a.media_type or "").lower()
        ranked.append(("data" not in roles, not cog, key))
    if not ranked:
        raise CatalogError(
            f"item {item.id} has no GeoTIFF data asset "
            f"(assets: {', '.join(item.assets) or 'none'}); pass --asset KEY"
        )
    return sorted(ranked)[0][2]


def _split_antimeridian(west: float, south: float, east: float, north: float) -> BaseGeometry:
    """Footprint box for lon bounds that may be in 0..360 or cross the antimeridian."""
    if east - west >= 360.0 - 1e-9:
        return box(-180.0, south, 180.0, north)
    w = float(normalize_lon(west))
    e = w + (east - west)
    if e <= 180.0 + 1e-9:
        return box(w, south, min(e, 180.0), north)
    return MultiPolygon([box(w, south, 180.0, north), box(-180.0, south, e - 360.0, north)])


def _band_number(item: pystac.Item, key: str, band: dict[str, Any], *names: str) -> float | None:
    """A number of an asset's first band (the first of ``names`` present), or None.

    Raises:
        CatalogError: if it is there but not a number, naming the item, asset and field.
    """
    for name in names:
        value = band.get(name)
        if value is None:
            continue
        if name == "nodata" and value in ("nan", "inf", "-inf"):  # STAC 1.1 allows these
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CatalogError(
                f"item {item.id} ({item.get_self_href()}): asset {key!r} band field {name} is "
                f"{value!r:.40}, not a number; fix the item"
            )
        return float(value)
    return None


def _first_band(item: pystac.Item, key: str, a: pystac.Asset) -> dict[str, Any]:
    """The asset's first band (STAC 1.1 ``bands`` or raster 1.x ``raster:bands``), or {}.

    Raises:
        CatalogError: if the field is there but not a list of objects.
    """
    for name in ("bands", "raster:bands"):
        bands = a.extra_fields.get(name)
        if bands is None:
            continue
        if not isinstance(bands, list) or not all(isinstance(b, dict) for b in bands):
            raise CatalogError(
                f"item {item.id} ({item.get_self_href()}): asset {key!r} field {name} is "
                f"{bands!r:.40}, not a list of band objects; fix the item"
            )
        if bands:
            return dict(bands[0])
    return {}


def _check_local_raster(item: pystac.Item, key: str, href: str) -> None:
    """Refuse a local asset that is not a regular file (a FIFO would block the reader)."""
    if "://" in href and not href.startswith("file://"):
        return
    path = Path(href.removeprefix("file://"))
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing: the raster reader says so
    if not stat.S_ISREG(mode):
        raise DataError(
            f"asset {key!r} of item {item.id} is not a regular file ({href}); give a GeoTIFF"
        )


def _asset_crs(
    item: pystac.Item, key: str, a: pystac.Asset, crs_wkt: str | None, body: Body
) -> CRS:
    """Return the asset's CRS (header, else STAC fields), checked to be of ``body``.

    Raises:
        CatalogError: if there is no CRS, or it is not of a known planetary body or of ``body``.
    """
    stac_fields = {**item.properties, **a.extra_fields}
    if crs_wkt is not None:
        crs = CRS.from_wkt(crs_wkt)
    else:
        found = crs_from_stac(stac_fields)
        if found is None:
            raise CatalogError(f"asset {key!r} of item {item.id} has no CRS in its header or STAC")
        crs = found
    crs_body = body_of_crs(crs)
    if crs_body is None:
        raise CatalogError(
            f"item {item.id}: CRS {crs.name!r} is not a known planetary CRS (Earth or unknown "
            f"body) while the item is of {body.name}; fix its CRS"
        )
    if crs_body is not body:
        raise CatalogError(
            f"item {item.id} says {body.name} but its raster CRS is of {crs_body.name}"
        )
    return crs


def _footprint(crs: CRS, body: Body, bounds: tuple[float, float, float, float]) -> BaseGeometry:
    """Return the footprint of native ``bounds`` in the body's lon/lat (antimeridian split)."""
    west, south, east, north = transform_bounds(
        rasterio.crs.CRS.from_wkt(crs.to_wkt()),
        rasterio.crs.CRS.from_wkt(body.crs.to_wkt()),
        *bounds,
        densify_pts=21,
    )
    if crs.is_geographic:
        west, east = bounds[0], bounds[2]
    return _split_antimeridian(west, south, east, north)


_HEADER_TRIES = 5  # a header cut short by every answer of a busy server: up to 7.5 s of waits
_FINAL_ANSWERS = re.compile(r"\b40[34]\b|No such file|not recognized|not exist")
"""Answers no new try changes: not found, forbidden, not a raster."""


def _is_final(exc: Exception, href: str) -> bool:
    """Whether an open's failure is an answer (not a fault); the URL itself is not read.

    A port or path holding "403" or "404" (``http://host:40387/...``) is no HTTP answer.
    """
    text = str(exc)
    for name in sorted({href, gdal_path(href), href.rsplit("/", 1)[-1]}, key=len, reverse=True):
        text = text.replace(name, "")
    return _FINAL_ANSWERS.search(text) is not None


LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights: how a colour image becomes the one band the models see."""


def image_bands(ds: Any) -> list[int]:
    """The bands an image is read from: red, green and blue of a colour one, else the first.

    A raster is colour when its first three bands' colour interpretations are red, green and
    blue (a JPEG-compressed or RGB GeoTIFF); any other raster is read from band 1.
    """
    from rasterio.enums import ColorInterp

    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    return [1, 2, 3] if ds.count >= 3 and tuple(ds.colorinterp[:3]) == rgb else [1]


def one_band(data: Any, nodata: float | None = None) -> Any:
    """Bands (b, rows, cols) read from :func:`image_bands` as one float32 band.

    Colour becomes its luma (:data:`LUMA_WEIGHTS`); a pixel is no data (NaN) where every band
    holds ``nodata``. A masked array's masked pixels (every band) are no data too.
    """
    import numpy as np

    values = np.ma.getdata(data)
    missing = np.ma.getmaskarray(data).all(axis=0)
    if nodata is not None:
        missing |= (values == nodata).all(axis=0)
    if len(values) == 1:
        out = values[0].astype(np.float32)
    else:
        weights = np.asarray(LUMA_WEIGHTS, np.float32)
        out = np.tensordot(weights, values[:3].astype(np.float32), axes=1).astype(np.float32)
    out[missing] = np.nan
    return out


def open_raster(href: str) -> Any:
    """Open a raster, trying a remote one again when it fails or its header came damaged.

    Before each new try GDAL's cached bytes of it are dropped. GDAL retries each request
    itself; this covers an answer cut short, which it caches (and, of a TIFF header, opens
    with wrong georeferencing, saying so only in warnings).

    Raises:
        RasterioError: when it cannot be opened (after the retries, for a remote raster).
    """
    for attempt in range(1, _HEADER_TRIES + 1):
        try:
            with quiet_warnings(NotGeoreferencedWarning), gdal_messages() as said:
                ds = rasterio.open(href)
            broken = [m for m in said if any(w in m for w in BROKEN_READ_SIGNS)]
            if broken and is_remote(href):
                ds.close()
                raise RasterioIOError(f"the header of {href} came damaged: {broken[0]}")
            return ds
        except RasterioError as exc:
            final = _is_final(exc, href)
            log.debug("open %s, try %d of %d: %s", href, attempt, _HEADER_TRIES, exc)
            if final or not is_remote(href) or attempt == _HEADER_TRIES:
                raise
            forget_cached_bytes(href)
            time.sleep(0.25 * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_header(item: pystac.Item, key: str, body: Body) -> SourceAsset:
    a = item.assets[key]
    href = a.get_absolute_href() or a.href
    _check_local_raster(item, key, href)
    try:
        src = open_raster(href)
        with src:
            if src.transform.is_identity and not src.gcps[0]:
                raise DataError(f"asset {key!r} of item {item.id} is not georeferenced ({href})")
            crs_wkt = src.crs.to_wkt() if src.crs else None
            bounds = tuple(src.bounds)
            res = (abs(src.transform.a), abs(src.transform.e))
            shape = (src.height, src.width)
            dtype = src.dtypes[0]
            nodata = src.nodata
            scale, offset = float(src.scales[0]), float(src.offsets[0])
            if src.transform.b or src.transform.d:
                raise DataError(f"asset {key!r} of item {item.id} is rotated; warp it first")
    except RasterioError as exc:
        reason = str(exc).splitlines()[0][:160]
        raise DataError(
            f"asset {key!r} of item {item.id} is not a readable raster ({href}): {reason}"
        ) from exc
    crs = _asset_crs(item, key, a, crs_wkt, body)
    # scale/offset: header first, then STAC bands (1.1) or raster:bands (1.0)
    band = _first_band(item, key, a)
    if scale == 1.0 and offset == 0.0:
        scale = _band_number(item, key, band, "raster:scale", "scale") or 1.0
        offset = _band_number(item, key, band, "raster:offset", "offset") or 0.0
    if nodata is None:
        nodata = _band_number(item, key, band, "nodata")
    footprint = _footprint(crs, body, bounds)
    return SourceAsset(
        item_id=item.id,
        asset_key=key,
        href=href,
        body=body,
        crs=crs,
        bounds=bounds,
        res=res,
        shape=shape,
        dtype=dtype,
        nodata=nodata,
        scale=scale,
        offset=offset,
        footprint=footprint,
        datetime=item.datetime,
        item_href=item.get_self_href(),
    )


@dataclass(frozen=True)
class SourceAsset:
    """One readable raster of a source item, normalised.

    Attributes:
        item_id: STAC Item id.
        asset_key: Key of the asset in the item.
        href: Absolute href of the raster.
        body: Body the raster shows.
        crs: Native CRS, from the raster header (STAC metadata only where the header has none).
        bounds: Native bounds (left, bottom, right, top) in ``crs`` units.
        res: Native pixel size (x, y) in ``crs`` units.
        shape: (rows, cols).
        dtype: Pixel data type.
        nodata: Nodata value or None.
        scale: Multiplier to physical values.
        offset: Offset to physical values.
        footprint: Footprint in the body's lon/lat, lon in -180..180 (split at the antimeridian).
        datetime: Acquisition time, if known.
        item_href: Where the source STAC Item is (absolute path or URL), if known.
    """

    item_id: str
    asset_key: str
    href: str
    body: Body
    crs: CRS
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    shape: tuple[int, int]
    dtype: str
    nodata: float | None
    scale: float
    offset: float
    footprint: BaseGeometry
    datetime: dt.datetime | None = None
    item_href: str | None = None

    @property
    def lonlat_bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the footprint."""
        w, s, e, n = self.footprint.bounds
        return float(w), float(s), float(e), float(n)


def crs_from_stac(props: dict[str, Any]) -> CRS | None:
    """Read a CRS from projection-extension fields, tolerating real-world quirks.

    Accepts ``proj:code`` and ``proj:epsg`` (v1), ``proj:wkt2`` holding WKT2 or WKT1, possibly
    wrapped in an extra pair of quotes, and ``proj:projjson``. Returns None when no field is
    set; raises :class:`CatalogError` when a field is set but cannot be parsed.
    """
    tried: list[str] = []
    for key in ("proj:projjson", "proj:wkt2", "proj:code", "proj:epsg"):
        value = props.get(key)
        if value in (None, "", {}):
            continue
        if key == "proj:wkt2" and isinstance(value, str):
            value = value.strip()
            while len(value) > 1 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1].strip()
            value = value.replace('\\"', '"')
        if key == "proj:epsg":
            value = f"EPSG:{int(value)}"
        try:
            return CRS.from_user_input(value)
        except (CRSError, TypeError, ValueError) as exc:
            tried.append(f"{key}: {str(exc).splitlines()[0][:80]}")
    if tried:
        raise CatalogError(f"cannot parse the CRS ({'; '.join(tried)})")
    return None
