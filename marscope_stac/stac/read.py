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
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
from pystac.stac_io import DefaultStacIO
from shapely.geometry.base import BaseGeometry

from marscope_stac.core.bodies import BODIES, MARS, Body, get_body
from marscope_stac.core.errors import CatalogError, ConfigError, DataError, SkippedInputWarning
from marscope_stac.core.fs import read_regular, safe_resolve
from marscope_stac.stac.cloud import configure_cloud_reading
from marscope_stac.stac.raster import SourceAsset, _read_header, _split_antimeridian, pick_asset
from marscope_stac.stac.remote import api_page_size, is_remote, open_api, read_text

__all__ = [
    "SourceSet",
    "load_sources",
    "read_local_catalog",
]

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------------
# sources


def _is_api(source: str) -> bool:
    """Whether a source names a STAC API (an http(s) URL that is not a JSON document)."""
    return source.startswith(("http://", "https://")) and not source.endswith(".json")


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
    obj = _read_stac_file(path)
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


def _read_stac_file(path: Path) -> Any:
    """The STAC object of a local JSON file (CatalogError for anything else)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        raise CatalogError(
            f"{path} is a GeoTIFF, not a STAC document; catalog its folder first "
            f"('marscope catalog build {path.parent}') and give that folder"
        )
    try:
        d = json.loads(read_regular(path))
    except RecursionError:
        raise CatalogError(f"{path} is not readable JSON: nested too deeply") from None
    except (OSError, UnicodeDecodeError, ValueError, DataError) as exc:
        raise CatalogError(f"{path} is not readable JSON: {str(exc)[:120]}") from exc
    try:
        return pystac.read_dict(d, href=str(safe_resolve(path)), stac_io=SafeStacIO())
    except Exception as exc:  # pystac raises many kinds on malformed STAC
        raise CatalogError(f"{path} is not valid STAC: {str(exc).splitlines()[0][:160]}") from exc


def read_local_catalog(catalog: str | Path) -> tuple[pystac.Catalog, list[pystac.Item]]:
    """A local STAC catalog (its folder or ``catalog.json``) and all its items.

    Read with the checks of :func:`load_sources`: a file that is not JSON, not STAC or not
    a catalog, and a child or item that cannot be read, are one-line errors.

    Raises:
        CatalogError: naming the file and what is wrong with it.
    """
    src = Path(catalog)
    path = src / "catalog.json" if src.is_dir() else src
    if not path.is_file():
        raise CatalogError(f"{catalog} is not a STAC catalog (no catalog.json)")
    obj = _read_stac_file(path)
    if not isinstance(obj, pystac.Catalog):
        raise CatalogError(
            f"{path} is a STAC {obj.STAC_OBJECT_TYPE.value}, not a catalog; give a catalog"
        )
    try:
        return obj, list(obj.get_items(recursive=True))
    except Exception as exc:  # a broken link, an item of bad JSON
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
        if is_remote(href):  # retried with backoff, with timeouts (stac.remote)
            return read_text(href)
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
    cql2: str | dict[str, Any] | None = None,
) -> Iterator[pystac.Item]:
    from pystac_client.exceptions import APIError

    try:
        client = open_api(url)
        methods = {
            str(link.extra_fields.get("method", "GET")).upper()
            for link in client.get_links("search")
        }
        # CQL2 text travels in a GET query (a POST body takes CQL2-JSON)
        post = "POST" in methods and not (isinstance(cql2, str) and "GET" in methods)
        search = client.search(
            method="POST" if post else "GET",
            collections=list(collections) if collections else None,
            bbox=list(bbox) if bbox else None,
            datetime=datetime,
            max_items=max_items,
            limit=api_page_size(),
            filter=cql2,
            filter_lang=None if cql2 is None else _filter_lang(cql2),
        )
        yield from search.items()
    except CatalogError:
        raise
    except (APIError, OSError) as exc:
        raise CatalogError(
            f"cannot query the STAC API at {url}: {str(exc).splitlines()[0][:160]}"
        ) from exc
    except Exception as exc:
        raise CatalogError(
            f"STAC API at {url} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        ) from exc


def _filter_lang(cql2: str | dict[str, Any]) -> str:
    return "cql2-json" if isinstance(cql2, dict) else "cql2-text"


def _remote_walk(url: str, root: pystac.Catalog) -> Iterator[pystac.Item]:
    """The items of a catalog at a URL; a document that cannot be read is one CatalogError."""
    try:
        yield from _walk(root)
    except CatalogError:
        raise
    except Exception as exc:  # pystac raises many kinds on malformed or missing children
        raise CatalogError(
            f"cannot read the items of {url}: {str(exc).splitlines()[0][:160]}"
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
    imagery = sorted(c for c in other_collections if not c.endswith(_LABELS))
    labels = [c for c in collections or [] if f"{c}{_LABELS}" in other_collections]
    if seen == 0 and labels:
        return CatalogError(
            f"collection {labels[0]} of {label} holds labels (ground truth), not imagery; "
            f"embed its imagery: {', '.join(imagery) or 'another catalog'}"
        )
    if seen == 0 and collections and imagery:
        return CatalogError(
            f"{label} has no collection {', '.join(collections)}; its collections: "
            f"{', '.join(imagery)}"
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
    cql2: str | dict[str, Any] | None = None,
) -> tuple[str, Iterable[pystac.Item]]:
    """A label for messages and the items of a source (API search, remote or local STAC).

    Raises:
        CatalogError: if a remote source cannot be read or is not STAC, or a CQL2 filter is
            given for a source that is not a STAC API.
    """
    if not isinstance(source, str | Path):
        return "items", source
    if not str(source).strip():  # Path("") is the current folder
        raise CatalogError("the STAC source is empty; give a catalog, collection, item or URL")
    if isinstance(source, str) and _is_api(source):
        return source, _items_from_api(source, collections, bbox, datetime, max_items, cql2)
    if cql2 is not None:
        raise CatalogError(
            f"a CQL2 filter needs a STAC API, and {source} is a static catalog; drop the "
            "filter or search an API"
        )
    if isinstance(source, str) and is_remote(source):
        try:
            obj = pystac.read_file(source, stac_io=SafeStacIO())
        except CatalogError:
            raise
        except Exception as exc:
            raise CatalogError(f"cannot read {source}: {str(exc).splitlines()[0][:160]}") from exc
        if isinstance(obj, pystac.Item):
            return source, [obj]
        if isinstance(obj, pystac.Catalog):
            return source, _remote_walk(source, obj)
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


def _selected(
    item: pystac.Item,
    collections: Sequence[str] | None,
    interval: Interval | None,
    other_collections: set[str],
) -> bool:
    """Whether an item passes the collection and time filters and is not a label item."""
    if collections and item.collection_id not in collections:
        other_collections.add(str(item.collection_id))
        return False
    if not _in_interval(item, interval):
        return False
    if "label:type" in item.properties:  # ground truth, not imagery
        log.debug("ignoring label item %s", item.id)
        other_collections.add(f"{item.collection_id}{_LABELS}")
        return False
    return True


_LABELS = " (labels)"
"""Marks, among the collections a request passed over, those of label items."""


def _note_body(bodies: dict[str, str], item_body: Body, item_id: str) -> None:
    """Record the first item of each body; raise CatalogError once a second body shows up."""
    bodies.setdefault(item_body.name, item_id)
    if len(bodies) > 1:
        pairs = ", ".join(f"{b} ({i})" for b, i in bodies.items())
        raise CatalogError(f"the request mixes bodies: {pairs}; query one body at a time")


def _read_item(item: pystac.Item, asset: str | None, item_body: Body) -> SourceAsset | str:
    """Return the item's data raster, or the reason to skip the item."""
    try:
        key = pick_asset(item, asset)
        return _read_header(item, key, item_body)
    except (CatalogError, DataError) as exc:
        return str(exc)
    except (TypeError, AttributeError, ValueError, KeyError) as exc:  # wrong field types
        where = item.get_self_href() or item.id
        return f"{where} is malformed ({type(exc).__name__}: {exc})"


def _choose(
    items: Iterable[pystac.Item],
    filters: tuple[Sequence[str] | None, Interval | None, int | None],
    wanted: Body | None,
    bodies: dict[str, str],
    other_collections: set[str],
) -> list[tuple[pystac.Item, Body]]:
    """The items that pass the filters (collections, interval, count), with their body."""
    collections, interval, max_items = filters
    chosen: list[tuple[pystac.Item, Body]] = []
    for item in items:
        if not _selected(item, collections, interval, other_collections):
            continue
        if max_items is not None and len(chosen) >= max_items:
            break
        item_body = _item_body(item, wanted)
        _note_body(bodies, item_body, item.id)
        chosen.append((item, item_body))
    return chosen


HEADER_READS = 16
"""Raster headers read at once: over a network each costs a round trip, so they overlap."""


def _read_items(
    chosen: list[tuple[pystac.Item, Body]], asset: str | None
) -> list[SourceAsset | str]:
    """:func:`_read_item` of each (item, body), in order, ``HEADER_READS`` at a time."""
    if len(chosen) < 4:
        return [_read_item(item, asset, body) for item, body in chosen]
    with ThreadPoolExecutor(HEADER_READS, thread_name_prefix="marscope-header") as pool:
        return list(pool.map(lambda ib: _read_item(ib[0], asset, ib[1]), chosen))


def _skipped_message(skipped: list[tuple[str, str]], seen: int) -> str:
    """Return the one warning for all skipped items (the first one's reason, and a count)."""
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return f"skipped {len(skipped)} of {seen} items; {skipped[0][0]}: {skipped[0][1]}{more}"


def load_sources(
    source: str | Path | Iterable[pystac.Item],
    *,
    collections: Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    datetime: str | None = None,
    asset: str | None = None,
    body: str | None = None,
    max_items: int | None = None,
    cql2: str | dict[str, Any] | None = None,
) -> SourceSet:
    """Read the usable rasters of a STAC source.

    Args:
        source: A local catalog/collection/item JSON or folder, a STAC API URL, a static
            catalog's http(s) or s3 URL, or items (assets: files or URLs, see ``remote``).
        collections: Only items of these collections.
        bbox: Only items intersecting this lon/lat box (west, south, east, north).
        datetime: Only items in this RFC 3339 interval (STAC API syntax).
        asset: Asset key of the data raster; picked by role and media type when None.
        body: Expected body; taken from ``ssys:targets`` when None (Mars when absent).
        max_items: Stop after this many items.
        cql2: A CQL2 filter (text, or a CQL2-JSON dict) sent to a STAC API's search.

    Raises:
        CatalogError: if the source cannot be read, mixes bodies, has no usable raster, or
            nothing intersects ``bbox``.
    """
    interval = parse_interval(datetime)
    configure_cloud_reading()
    label, items = _open_items(source, collections, bbox, datetime, max_items, cql2)
    wanted = get_body(body) if body else None
    out: list[SourceAsset] = []
    skipped: list[tuple[str, str]] = []
    bodies: dict[str, str] = {}
    other_collections: set[str] = set()
    chosen = _choose(items, (collections, interval, max_items), wanted, bodies, other_collections)
    seen = len(chosen)
    for (item, _), src in zip(chosen, _read_items(chosen, asset), strict=True):
        if isinstance(src, str):  # why it was skipped
            skipped.append((item.id, src))
            continue
        if not _bbox_hits(src.footprint, bbox):
            continue
        out.append(src)
    if not out:
        raise _nothing_found(label, seen, skipped, collections, other_collections, datetime, bbox)
    if skipped:  # one warning for all of them (a planet's catalog may skip thousands)
        warnings.warn(_skipped_message(skipped, seen), SkippedInputWarning, stacklevel=2)
    log.info("%s: %d rasters, %d skipped", label, len(out), len(skipped))
    resolved_body = get_body(next(iter(bodies))) if bodies else (wanted or MARS)
    return SourceSet(body=resolved_body, assets=out, skipped=skipped)
