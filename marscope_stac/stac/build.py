"""Writing STAC with the project's conventions (DESIGN §3): the one STAC builder.

Every product item and collection is built here as a plain dict (:func:`stac_item`,
:func:`stac_collection`, :func:`link`, :func:`file_asset`), with helpers that turn files and
coordinate systems into the fields of the Solar System, projection v2, file, raster v2 and
processing extensions, so every writer in the project produces the same, valid metadata:

- STAC 1.1.0, except objects of the proposed embeddings extension (v0.0.1), whose schema
  requires core 1.0.0;
- an item always has a ``datetime``; one made from imagery of a time range also has
  ``start_datetime`` / ``end_datetime`` and its ``datetime`` is the range's end (the newest
  acquisition);
- links between STAC files are relative (the catalog can be moved or served as it is) and
  carry a type and a title; collections carry ``summaries``;
- hrefs never hold a local absolute path: a local file is named relative to the JSON file
  that refers to it, a remote one by its URL.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from pyproj.enums import WktVersion

from marscope_stac.core.bodies import Body
from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.software import software
from marscope_stac.stac.remote import is_remote

__all__ = [
    "CLASSIFICATION_V2",
    "COG_MEDIA_TYPE",
    "EMBEDDINGS_V0",
    "FILE_V2",
    "JSON_MEDIA_TYPE",
    "LABEL_V1",
    "MLM_V1",
    "PARQUET_MEDIA_TYPE",
    "PMTILES_MEDIA_TYPE",
    "PROCESSING_V1",
    "PROJ_V2",
    "RASTER_V2",
    "SSYS_V1",
    "STAC_ITEM_MEDIA_TYPE",
    "VIEW_V1",
    "bbox_polygon",
    "cog_band_fields",
    "crs_code",
    "file_asset",
    "file_fields",
    "lineage_href",
    "link",
    "now_utc",
    "processing_fields",
    "proj_fields",
    "published_url",
    "relative_href",
    "resolution_m",
    "rfc3339",
    "ssys_fields",
    "stac_catalog",
    "stac_collection",
    "stac_item",
]

SSYS_V1 = "https://stac-extensions.github.io/ssys/v1.1.0/schema.json"
PROJ_V2 = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE_V2 = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
RASTER_V2 = "https://stac-extensions.github.io/raster/v2.0.0/schema.json"
PROCESSING_V1 = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
LABEL_V1 = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
VIEW_V1 = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
CLASSIFICATION_V2 = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
MLM_V1 = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
EMBEDDINGS_V0 = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
JSON_MEDIA_TYPE = "application/json"
STAC_ITEM_MEDIA_TYPE = "application/geo+json"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
PMTILES_MEDIA_TYPE = "application/vnd.pmtiles"


def ssys_fields(body: Body) -> dict[str, Any]:
    """Return the Solar System extension fields naming ``body``."""
    return {"ssys:targets": [body.name], "ssys:target_class": body.target_class}


def crs_code(crs: CRS) -> str | None:
    """Return ``AUTHORITY:CODE`` of ``crs`` (e.g. ``IAU_2015:49910``), or None if it has none."""
    auth = crs.to_authority(min_confidence=90)
    return f"{auth[0]}:{auth[1]}" if auth else None


def proj_fields(
    crs: CRS,
    transform: Affine | Sequence[float],
    shape: tuple[int, int],
) -> dict[str, Any]:
    """Return projection v2 fields for a raster grid.

    Args:
        crs: Native CRS of the raster (an IAU CRS for planetary data).
        transform: Affine pixel-to-CRS transform.
        shape: ``(rows, cols)``.
    """
    t = transform if isinstance(transform, Affine) else Affine(*transform[:6])
    rows, cols = shape
    xs = [t.c, t.c + t.a * cols]
    ys = [t.f, t.f + t.e * rows]
    return {
        "proj:code": crs_code(crs),
        "proj:wkt2": crs.to_wkt(WktVersion.WKT2_2019),
        "proj:projjson": crs.to_json_dict(),
        "proj:shape": [int(rows), int(cols)],
        "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "proj:bbox": [min(xs), min(ys), max(xs), max(ys)],
    }


def file_fields(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return ``file:size`` and ``file:checksum`` (sha2-256 multihash) of a file."""
    p = Path(path)
    return {"file:size": p.stat().st_size, "file:checksum": file_multihash(p)}


def processing_fields(lineage: str, when: str | None = None) -> dict[str, Any]:
    """Return processing extension fields naming this software, and when given, the time.

    Args:
        lineage: What was done, in one or two sentences.
        when: RFC 3339 time of processing; omitted when None (deterministic outputs).
    """
    out: dict[str, Any] = {
        "processing:lineage": lineage,
        "processing:software": software(),
    }
    if when is not None:
        out["processing:datetime"] = when
    return out


def cog_band_fields(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a raster and return STAC 1.1 ``bands`` with raster v2 fields and statistics.

    The values come from the file itself (data type, nodata, scale/offset, resolution), and
    statistics are computed over valid pixels.
    """
    bands: list[dict[str, Any]] = []
    with rasterio.open(path) as src:
        res = resolution_m(src.crs, float(abs(src.transform.a)))
        for i in range(1, src.count + 1):
            arr = src.read(i, masked=True)
            valid = arr.compressed()
            if valid.dtype.kind == "f":
                valid = valid[np.isfinite(valid)]  # NaN without a nodata value is no value
            band: dict[str, Any] = {
                "name": src.descriptions[i - 1] or f"b{i}",
                "data_type": src.dtypes[i - 1],
                "raster:spatial_resolution": res,
            }
            if src.nodata is not None:
                band["nodata"] = (
                    float(src.nodata) if not float(src.nodata).is_integer() else int(src.nodata)
                )
            scale, offset = src.scales[i - 1], src.offsets[i - 1]
            if scale != 1.0:
                band["raster:scale"] = scale
            if offset != 0.0:
                band["raster:offset"] = offset
            if valid.size:
                band["statistics"] = {
                    "minimum": float(valid.min()),
                    "maximum": float(valid.max()),
                    "mean": round(float(valid.mean()), 6),
                    "stddev": round(float(valid.std()), 6),
                    "valid_percent": round(100.0 * valid.size / max(arr.size, 1), 4),
                }
            bands.append(band)
    return bands


def resolution_m(crs: Any, step: float) -> float:
    """A pixel step in the CRS's units, in metres (``raster:spatial_resolution``, ``gsd``).

    Degrees of a geographic CRS are converted on the body's sphere at the equator (its
    semi-major axis: never Earth's unless the CRS is Earth's); projected units by their
    factor to metres.
    """
    if crs is None:
        return step
    c = CRS.from_user_input(crs)
    if c.is_geographic:
        radius = c.ellipsoid.semi_major_metre if c.ellipsoid is not None else None
        return float(step * math.pi / 180.0 * radius) if radius else step
    factor = c.axis_info[0].unit_conversion_factor if c.axis_info else 1.0
    return float(step * factor)


# ----------------------------------------------------------------------------- builder


def now_utc() -> str:
    """The current time, RFC 3339 in UTC (``...Z``)."""
    return rfc3339(dt.datetime.now(dt.UTC))


def rfc3339(when: dt.datetime) -> str:
    """An aware datetime in RFC 3339, UTC (``...Z``)."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def relative_href(target: str | os.PathLike[str], start: Path) -> str:
    """The href of ``target`` from the folder ``start``: relative (``./`` or ``../``), or a URL."""
    s = str(target)
    if is_remote(s):
        return s
    href = os.path.relpath(Path(s).resolve(), start.resolve())
    return href if href.startswith(".") else f"./{href}"


def published_url(path: str | os.PathLike[str]) -> str | None:
    """The http(s) ``self`` link of a local STAC file, when its catalog has been published."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    return _self_url(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _self_url(path: str, mtime_ns: int, size: int) -> str | None:
    if size > 16 << 20:
        return None
    try:
        d = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    links = d.get("links") if isinstance(d, dict) else None
    for lk in links if isinstance(links, list) else []:
        if isinstance(lk, dict) and lk.get("rel") == "self":
            href = lk.get("href")
            if isinstance(href, str) and href.startswith(("http://", "https://")):
                return href
    return None


def lineage_href(target: str | os.PathLike[str], start: Path) -> str:
    """The href of an input (a lineage link's target) from the folder ``start``.

    A URL stays a URL; a local STAC file of a published catalog (one with an absolute
    ``self`` link, see ``marscope catalog publish``) is named by that URL, so products
    made from it can be published without the input catalog beside them; any other local
    file gets a relative href.
    """
    s = str(target)
    if not is_remote(s):
        url = published_url(s)
        if url is not None:
            return url
    return relative_href(target, start)


def link(
    rel: str,
    target: str | os.PathLike[str],
    base: Path,
    media: str = JSON_MEDIA_TYPE,
    title: str | None = None,
) -> dict[str, Any]:
    """A link from a JSON file in the folder ``base`` to ``target`` (file or URL)."""
    d: dict[str, Any] = {"rel": rel, "href": relative_href(target, base), "type": media}
    if title:
        d["title"] = title
    return d


def file_asset(
    path: Path, base: Path, media: str, roles: list[str], title: str, **extra: Any
) -> dict[str, Any]:
    """A STAC asset of a local file (href relative to ``base``, ``file:size``/``checksum``)."""
    return {
        "href": relative_href(path, base),
        "type": media,
        "roles": roles,
        "title": title,
        **file_fields(path),
        **extra,
    }


def bbox_polygon(bbox: Sequence[float]) -> dict[str, Any]:
    """The GeoJSON polygon of a (west, south, east, north) box."""
    w, s, e, n = (float(v) for v in bbox)
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def stac_item(
    item_id: str,
    properties: Mapping[str, Any],
    extensions: Sequence[str],
    bbox: Sequence[float] | None,
    assets: Mapping[str, Any] | None = None,
    links: Sequence[Mapping[str, Any]] = (),
    version: str = "1.1.0",
    geometry: Mapping[str, Any] | None = None,
    *,
    title: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """A STAC Item (see the module docstring for the conventions it applies).

    The geometry is ``geometry``, else the polygon of ``bbox`` (None: no footprint). A
    missing ``datetime`` is the end of the ``start_datetime`` / ``end_datetime`` range when
    there is one, else now; a :class:`datetime.datetime` is written in RFC 3339. Common
    metadata is filled in: ``title`` and ``description`` (default: the id, and the
    processing lineage), ``created`` / ``updated`` (the processing time, when there is one)
    and ``gsd`` (the finest ``raster:spatial_resolution`` of the assets' bands, metres).
    """
    props = dict(properties)
    props["title"] = title or props.get("title") or item_id
    lineage = props.get("processing:lineage")
    props["description"] = description or props.get("description") or lineage or item_id
    when = props.get("processing:datetime")
    if isinstance(when, str):
        props.setdefault("created", when)
        props.setdefault("updated", when)
    gsd = [
        b["raster:spatial_resolution"]
        for a in (assets or {}).values()
        if isinstance(a, Mapping)
        for b in a.get("bands") or []
        if isinstance(b, Mapping) and isinstance(b.get("raster:spatial_resolution"), int | float)
    ]
    if gsd and "gsd" not in props:
        props["gsd"] = float(min(gsd))
    if props.get("datetime") is None:
        props["datetime"] = props.get("end_datetime") or now_utc()
    for key in ("datetime", "start_datetime", "end_datetime"):
        if isinstance(props.get(key), dt.datetime):
            props[key] = rfc3339(props[key])
    if geometry is None and bbox is not None:
        geometry = bbox_polygon(bbox)
    return {
        "type": "Feature",
        "stac_version": version,
        "stac_extensions": list(extensions),
        "id": item_id,
        "geometry": dict(geometry) if geometry is not None else None,
        **({"bbox": [float(v) for v in bbox]} if bbox is not None else {}),
        "properties": props,
        "links": [dict(lk) for lk in links],
        "assets": dict(assets or {}),
    }


def stac_collection(
    collection_id: str,
    title: str,
    description: str,
    extent: tuple[Sequence[float], Sequence[str | dt.datetime | None]],
    summaries: Mapping[str, Any],
    extensions: Sequence[str] = (),
    fields: Mapping[str, Any] | None = None,
    links: Sequence[Mapping[str, Any]] = (),
    version: str = "1.1.0",
    license: str = "other",
) -> dict[str, Any]:
    """A STAC Collection: ``extent`` is (bbox, [start, end]); ``fields`` are top-level fields."""
    bbox, interval = extent
    times = [rfc3339(t) if isinstance(t, dt.datetime) else t for t in interval]
    return {
        "type": "Collection",
        "stac_version": version,
        "stac_extensions": list(extensions),
        "id": collection_id,
        "title": title,
        "description": description,
        "license": license,
        **dict(fields or {}),
        "extent": {
            "spatial": {"bbox": [[float(v) for v in bbox]]},
            "temporal": {"interval": [times]},
        },
        "summaries": dict(summaries),
        "links": [dict(lk) for lk in links],
    }


def stac_catalog(
    catalog_id: str, title: str, description: str, fields: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A STAC Catalog (its links are made by the writer)."""
    return {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": catalog_id,
        "title": title,
        "description": description,
        **dict(fields or {}),
        "links": [],
    }
