"""Tolerant reading of planetary STAC: local catalogs, STAC APIs, and what real catalogs hold.

Real planetary catalogs are messy (``proj:epsg: null``, a quoted WKT1 string in ``proj:wkt2``,
lon/lat in ``proj:bbox``, asset keys with spaces, 16-bit COGs with scale/offset and nodata 0,
longitudes in 0..360). This module picks the data asset by role and media type, reads the
raster header and trusts it over the STAC metadata, and normalises everything into
:class:`SourceAsset` records: one readable raster each, with its body, native CRS, footprint in
the body's lon/lat (-180..180), nodata and scale/offset.

An item that cannot be used is skipped with a
:class:`~marscope_stac.core.errors.SkippedInputWarning` and counted in
:attr:`SourceSet.skipped`, never dropped silently.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import rasterio
from pyproj import CRS
from pyproj.exceptions import CRSError
from pystac.stac_io import DefaultStacIO
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform_bounds
from shapely.geometry import MultiPolygon, box
from shapely.geometry.base import BaseGeometry

from marscope_stac.core.bodies import BODIES, MARS, Body, body_of_crs, get_body, normalize_lon
from marscope_stac.core.errors import CatalogError, ConfigError, DataError, SkippedInputWarning
from marscope_stac.core.fs import read_regular, safe_resolve

__all__ = ["SourceAsset", "SourceSet", "crs_from_stac", "load_sources", "pick_asset"]

log = logging.getLogger(__name__)

_TIFF_TYPES = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff", "application=geotiff")
_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata", "visual", "browse"}


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


@dataclass
class SourceSet:
    """The usable rasters of a request, the body they show, and what was skipped."""

    body: Body
    assets: list[SourceAsset] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        s = f"{len(self.assets)} rasters of {self.body.name}"
        if self.skipped:
            s += f", {len(self.skipped)} skipped"
        return s


# --------------------------------------------------------------------------------------------
# CRS and body


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


def _targets(obj: pystac.Item) -> list[str]:
    targets = obj.properties.get("ssys:targets")
    if not targets and obj.collection_id:
        coll = obj.get_collection() if obj.get_single_link("collection") else None
        if coll is not None:
            targets = coll.extra_fields.get("ssys:targets")
            if not targets and coll.summaries is not None:
                targets = coll.summaries.get_list("ssys:targets")
    if isinstance(targets, str):
        targets = [targets]
    if targets is not None and not (
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
    ):
        raise CatalogError(
            f"item {obj.id} ({obj.get_self_href()}): ssys:targets is {targets!r:.60}, not a "
            'list of body names; fix the item (e.g. ["Mars"])'
        )
    return list(targets or [])


# --------------------------------------------------------------------------------------------
# assets


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


def _read_header(item: pystac.Item, key: str, body: Body) -> SourceAsset:
    a = item.assets[key]
    href = a.get_absolute_href() or a.href
    _check_local_raster(item, key, href)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(href)
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
    # scale/offset: header first, then STAC bands (1.1) or raster:bands (1.0)
    band = _first_band(item, key, a)
    if scale == 1.0 and offset == 0.0:
        scale = _band_number(item, key, band, "raster:scale", "scale") or 1.0
        offset = _band_number(item, key, band, "raster:offset", "offset") or 0.0
    if nodata is None:
        nodata = _band_number(item, key, band, "nodata")
    west, south, east, north = transform_bounds(
        rasterio.crs.CRS.from_wkt(crs.to_wkt()),
        rasterio.crs.CRS.from_wkt(body.crs.to_wkt()),
        *bounds,
        densify_pts=21,
    )
    if crs.is_geographic:
        west, east = bounds[0], bounds[2]
    footprint = _split_antimeridian(west, south, east, north)
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


# --------------------------------------------------------------------------------------------
# sources


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _items_from_local(path: Path) -> Iterator[pystac.Item]:
    if path.is_dir():
        for name in ("catalog.json", "collection.json", "stac/catalog.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            tifs = list(path.glob("*.tif")) + list(path.glob("*.tiff"))
            hint = f"; run 'marscope catalog build {path}' first" if tifs else ""
            raise CatalogError(f"{path} holds no catalog.json or collection.json{hint}")
    if not path.exists():
        raise CatalogError(f"{path} does not exist; give a STAC catalog, collection or item")
    try:
        d = json.loads(read_regular(path))
    except RecursionError:
        raise CatalogError(f"{path} is not readable JSON: nested too deeply") from None
    except (OSError, UnicodeDecodeError, ValueError, DataError) as exc:
        raise CatalogError(f"{path} is not readable JSON: {str(exc)[:120]}") from exc
    try:
        obj = pystac.read_dict(d, href=str(safe_resolve(path)), stac_io=SafeStacIO())
    except Exception as exc:  # pystac raises many kinds on malformed STAC
        raise CatalogError(f"{path} is not valid STAC: {str(exc).splitlines()[0][:160]}") from exc
    if isinstance(obj, pystac.Item):
        yield obj
        return
    if isinstance(obj, pystac.ItemCollection):  # pragma: no cover - read_dict returns objects
        yield from obj
        return
    assert isinstance(obj, pystac.Catalog)
    try:
        yield from _walk(obj)
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError(
            f"cannot read the items of {path}: {str(exc).splitlines()[0][:160]}"
        ) from exc


class SafeStacIO(DefaultStacIO):
    """pystac's reader, refusing local files that would hang or flood it.

    A FIFO, socket, device or folder named by a link is refused before it is opened, and so
    is a file over :data:`~marscope_stac.core.fs.MAX_DOCUMENT_BYTES`; JSON nested too deeply
    is an error, not a crash.
    """

    def read_text_from_href(self, href: str) -> str:
        if "://" not in href or href.startswith("file://"):
            return read_regular(href.removeprefix("file://")).decode("utf-8")
        return str(super().read_text_from_href(href))

    def json_loads(self, txt: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return dict(json.loads(txt))
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _walk(root: pystac.Catalog) -> Iterator[pystac.Item]:
    """The items under a catalog, depth first, without recursion; a link cycle is an error."""
    stack: list[tuple[pystac.Catalog, tuple[str, ...]]] = [(root, ())]
    while stack:
        cat, above = stack.pop()
        here = cat.get_self_href() or cat.id
        if here in above:
            raise CatalogError(
                f"link cycle: {above[-1]} has a child link back to {here}; fix the catalog"
            )
        yield from cat.get_items()
        children = list(cat.get_children())
        stack.extend((child, (*above, here)) for child in reversed(children))


def _items_from_api(
    url: str,
    collections: Sequence[str] | None,
    bbox: Sequence[float] | None,
    datetime: str | None,
    max_items: int | None,
) -> Iterator[pystac.Item]:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    try:
        client = Client.open(url)
        methods = {
            str(link.extra_fields.get("method", "GET")).upper()
            for link in client.get_links("search")
        }
        search = client.search(
            method="POST" if "POST" in methods else "GET",
            collections=list(collections) if collections else None,
            bbox=list(bbox) if bbox else None,
            datetime=datetime,
            max_items=max_items,
        )
        yield from search.items()
    except (APIError, OSError) as exc:
        raise CatalogError(
            f"cannot query the STAC API at {url}: {str(exc).splitlines()[0][:160]}"
        ) from exc
    except Exception as exc:
        raise CatalogError(
            f"STAC API at {url} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        ) from exc


Interval = tuple[dt.datetime | None, dt.datetime | None]


def _nothing_found(
    label: str,
    seen: int,
    skipped: list[tuple[str, str]],
    collections: Sequence[str] | None,
    other_collections: set[str],
    datetime: str | None,
    bbox: Sequence[float] | None,
) -> CatalogError:
    """The error that says why a request found no usable raster."""
    if seen == 0 and collections and other_collections:
        return CatalogError(
            f"{label} has no collection {', '.join(collections)}; its collections: "
            f"{', '.join(sorted(other_collections))}"
        )
    if seen == 0 and datetime is not None:
        return CatalogError(f"no item of {label} in the time interval {datetime}; widen it")
    if seen == 0:
        return CatalogError(f"no STAC item found in {label}")
    if skipped:
        return CatalogError(
            f"none of the {seen} items of {label} has a readable raster; first problem: "
            f"{skipped[0][1]}"
        )
    return CatalogError(
        f"no item of {label} intersects bbox {list(bbox or [])}; widen or move the bbox"
    )


def parse_interval(text: str | None) -> Interval | None:
    """An RFC 3339 datetime or interval (``a/b``, ``a/..``, ``../b``) as (start, end).

    Raises:
        ConfigError: for text that is not one, naming the expected form.
    """
    if text is None:
        return None
    hint = "use an RFC 3339 time or interval, e.g. 2008-01-01T00:00:00Z/2012-12-31T00:00:00Z"
    parts = text.strip().split("/")
    if len(parts) > 2 or not text.strip():
        raise ConfigError(f"--datetime {text!r} is not a time or interval; {hint}")
    ends: list[dt.datetime | None] = []
    for part in parts:
        if part in ("", "..") and len(parts) == 2:
            ends.append(None)
            continue
        try:
            when = dt.datetime.fromisoformat(part.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--datetime {text!r}: {part!r} is not a time; {hint}") from None
        ends.append(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    start, end = (ends[0], ends[-1])
    if start is not None and end is not None and start > end:
        raise ConfigError(f"--datetime {text!r} ends before it starts; {hint}")
    return start, end


def _in_interval(item: pystac.Item, interval: Interval | None) -> bool:
    """Whether an item's time (or time range) meets the interval."""
    if interval is None:
        return True
    props = item.properties
    first = _when(props.get("start_datetime")) or item.datetime
    last = _when(props.get("end_datetime")) or item.datetime
    if first is None or last is None:
        return True  # no time: not excluded
    start, end = interval
    return (end is None or first <= end) and (start is None or last >= start)


def _when(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _bbox_hits(geom: BaseGeometry, bbox: Sequence[float] | None) -> bool:
    if bbox is None:
        return True
    w, s, e, n = bbox
    area = _split_antimeridian(w, s, e if e >= w else e + 360.0, n)
    return bool(geom.intersection(area).area > 0)


def _open_items(
    source: str | Path | Iterable[pystac.Item],
    collections: Sequence[str] | None,
    bbox: Sequence[float] | None,
    datetime: str | None,
    max_items: int | None,
) -> tuple[str, Iterable[pystac.Item]]:
    """A label for messages and the items of a source (API search, remote or local STAC).

    Raises:
        CatalogError: if a remote source cannot be read or is not STAC.
    """
    if not isinstance(source, str | Path):
        return "items", source
    if isinstance(source, str) and _is_url(source) and not source.endswith(".json"):
        return source, _items_from_api(source, collections, bbox, datetime, max_items)
    if isinstance(source, str) and _is_url(source):
        try:
            obj = pystac.read_file(source, stac_io=SafeStacIO())
        except Exception as exc:
            raise CatalogError(f"cannot read {source}: {str(exc).splitlines()[0][:160]}") from exc
        if isinstance(obj, pystac.Item):
            return source, [obj]
        if isinstance(obj, pystac.Catalog):
            return source, _walk(obj)
        raise CatalogError(f"{source} is not a STAC catalog, collection or item")
    return str(source), _items_from_local(Path(source))


def _item_body(item: pystac.Item, wanted: Body | None) -> Body:
    """The body an item shows (``ssys:targets``; the wanted body or Mars when absent).

    Raises:
        CatalogError: for several or unknown targets, or another body than the wanted one.
    """
    targets = _targets(item)
    if len(targets) > 1:
        raise CatalogError(f"item {item.id} names several bodies {targets}; split the request")
    try:
        item_body = get_body(targets[0]) if targets else (wanted or MARS)
    except ConfigError:
        raise CatalogError(
            f"item {item.id} targets unknown body {targets[0]!r}; "
            f"known: {', '.join(b.name for b in BODIES.values())}"
        ) from None
    if wanted is not None and item_body is not wanted:
        raise CatalogError(
            f"item {item.id} is of {item_body.name}, not {wanted.name}; "
            "filter the catalog or change --body"
        )
    return item_body


def load_sources(
    source: str | Path | Iterable[pystac.Item],
    *,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    asset: str | None = None,
    body: str | None = None,
    max_items: int | None = None,
) -> SourceSet:
    """Read the usable rasters of a STAC source.

    Args:
        source: A local catalog/collection/item JSON or folder, a STAC API URL, or items.
        collections: Only items of these collections.
        bbox: Only items intersecting this lon/lat box (west, south, east, north).
        datetime: Only items in this RFC 3339 interval (STAC API syntax).
        asset: Asset key of the data raster; picked by role and media type when None.
        body: Expected body; taken from ``ssys:targets`` when None (Mars when absent).
        max_items: Stop after this many items.

    Raises:
        CatalogError: if the source cannot be read, mixes bodies, has no usable raster, or
            nothing intersects ``bbox``.
    """
    interval = parse_interval(datetime)
    label, items = _open_items(source, collections, bbox, datetime, max_items)
    wanted = get_body(body) if body else None
    out: list[SourceAsset] = []
    skipped: list[tuple[str, str]] = []
    bodies: dict[str, str] = {}
    seen = 0
    in_bbox = 0
    other_collections: set[str] = set()
    for item in items:
        if collections and item.collection_id not in collections:
            other_collections.add(str(item.collection_id))
            continue
        if not _in_interval(item, interval):
            continue
        if "label:type" in item.properties:  # ground truth, not imagery
            log.debug("ignoring label item %s", item.id)
            continue
        seen += 1
        if max_items is not None and seen > max_items:
            break
        item_body = _item_body(item, wanted)
        bodies.setdefault(item_body.name, item.id)
        if len(bodies) > 1:
            pairs = ", ".join(f"{b} ({i})" for b, i in bodies.items())
            raise CatalogError(f"the request mixes bodies: {pairs}; query one body at a time")
        try:
            key = pick_asset(item, asset)
            src = _read_header(item, key, item_body)
        except (CatalogError, DataError) as exc:
            skipped.append((item.id, str(exc)))
            continue
        except (TypeError, AttributeError, ValueError, KeyError) as exc:  # wrong field types
            where = item.get_self_href() or item.id
            skipped.append((item.id, f"{where} is malformed ({type(exc).__name__}: {exc})"))
            continue
        if not _bbox_hits(src.footprint, bbox):
            continue
        in_bbox += 1
        out.append(src)
    resolved_body = get_body(next(iter(bodies))) if bodies else (wanted or MARS)
    if not out:
        raise _nothing_found(label, seen, skipped, collections, other_collections, datetime, bbox)
    if skipped:  # one warning for all of them (a planet's catalog may skip thousands)
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        warnings.warn(
            f"skipped {len(skipped)} of {seen} items; {skipped[0][0]}: {skipped[0][1]}{more}",
            SkippedInputWarning,
            stacklevel=2,
        )
    log.info("%s: %d rasters, %d skipped", label, len(out), len(skipped))
    return SourceSet(body=resolved_body, assets=out, skipped=skipped)
