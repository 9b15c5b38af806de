"""What the web map's server knows, whatever serves it.

Products, sources, the page's config and the JSON API's request, checked; used by
:mod:`marscope_stac.web.app`.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import mimetypes
import threading
import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from marscope_stac.core.bodies import get_body
from marscope_stac.core.errors import ConfigError, DataError, SkippedInputWarning
from marscope_stac.core.fs import read_regular
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.engine.request import DEFAULT_WITHIN_KM, QueryRequest
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.query.scoring import QuerySpec
from marscope_stac.web.live import LiveAnswers

__all__ = [
    "API_FIELDS",
    "MAX_BOX_CELLS",
    "MAX_REQUEST_BYTES",
    "MAX_TEXTS",
    "ServerState",
    "cell_centres_in",
    "cell_image",
    "inside",
    "list_products",
    "media_type",
    "page_config",
    "parse_request",
    "product_record",
    "source_items",
    "web_dir",
]

MAX_REQUEST_BYTES = 64 * 1024
"""Largest request body the API accepts."""

API_FIELDS = frozenset(
    {
        "texts",
        "classify",
        "live",
        "points",
        "negative_points",
        "threshold",
        "image_weight",
        "and_not",
        "near",
        "within_km",
        "products",
        "learner",
    }
)
"""The fields ``POST /api/query`` takes."""

MAX_TEXTS = 16
"""Most texts one API request may ask for (each writes a product)."""

MEDIA_TYPES = {
    ".pmtiles": "application/vnd.pmtiles",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".parquet": "application/vnd.apache.parquet",
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".png": "image/png",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


def web_dir() -> Path:
    """The page's own files (index.html, app.js, app.css)."""
    return Path(str(files("marscope_stac") / "data" / "web"))


def media_type(path: Path) -> str:
    """The media type a file is served with (PMTiles, COG and GeoParquet readers' own)."""
    return MEDIA_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def inside(root: Path, rel: str) -> Path | None:
    """The file ``rel`` names under ``root``, or None when it leaves it or does not exist."""
    try:
        path = (root / rel.lstrip("/")).resolve()  # rel: the URL's path, decoded once
        base = root.resolve()
        if path != base and base not in path.parents:
            return None
        return path if path.is_file() else None
    except (OSError, ValueError):  # a NUL byte, a name too long
        return None


@dataclass
class ServerState:
    """What the web map's routes share: the products, the engine and who may ask."""

    products: Path
    engine: QueryEngine | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    static: bool = False
    sources: dict[str, tuple[Path, list[float]]] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)
    port: int = 0
    client_timeout: float = 10.0
    live: LiveAnswers = field(default_factory=LiveAnswers)

    def host_names(self) -> set[str]:
        """The ``Host`` values this server answers: the loopback names and ``--host``'s."""
        port = self.port
        names = {"127.0.0.1", "localhost", "[::1]"} | {_bracketed(h) for h in self.hosts}
        with_port = {f"{name}:{port}" for name in names}
        return with_port | (names if port == 80 else set())  # browsers leave out :80

    def allows_host(self, host: str) -> bool:
        """Whether a request's ``Host`` names this server.

        Bound to every interface (``0.0.0.0``, ``::``), any IP address with this server's
        port is allowed too: a DNS-rebinding page sends its own domain name, never an address.
        """
        host = host.strip().lower()
        if host in self.host_names():
            return True
        if not self.hosts & {"0.0.0.0", "::"}:
            return False
        name, _, port = host.rpartition(":")
        if port != str(self.port):
            return False
        try:
            ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            return False
        return True

    def allows_origin(self, origin: str) -> bool:
        """Whether an ``Origin`` is this server's own page."""
        scheme, _, host = origin.strip().lower().partition("://")
        return scheme == "http" and self.allows_host(host)


def _bracketed(host: str) -> str:
    """A host name as it appears in a ``Host`` header (IPv6 literals in brackets)."""
    host = host.lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def source_items(products: Path, engine: QueryEngine | None) -> dict[str, tuple[Path, list[float]]]:
    """The source STAC Items of the embedding sets that are on this machine: id -> (file, bbox).

    They come from the embedding items' ``derived_from`` links (the engine's set, or every
    set of the products catalog without an engine); remote ones are left out.
    """
    if engine is not None:
        roots = [engine.set.root]
    else:
        roots = [p.parent for p in sorted((products / "embeddings").glob("*/manifest.json"))]
    found: dict[str, tuple[Path, list[float]]] = {}
    for root in roots:
        try:
            found.update(_set_sources(EmbeddingSet(root)))
        except DataError as exc:  # a damaged set's sources are left off the map, said
            warnings.warn(f"{exc}; its imagery is left off the map", SkippedInputWarning, 2)
    return found


def _set_sources(es: EmbeddingSet) -> dict[str, tuple[Path, list[float]]]:
    """The local source items an embedding set's item links to: id -> (file, bbox)."""
    emb = es.stac_item()
    found: dict[str, tuple[Path, list[float]]] = {}
    for link in emb["links"] if emb is not None else []:
        href = link["href"]
        if link.get("rel") != "derived_from" or "://" in href or not href.endswith(".json"):
            continue
        path = (es.root / href).resolve()
        try:
            item = json.loads(read_regular(path))
            if item.get("bbox"):
                found[str(item["id"])] = (path, [float(v) for v in item["bbox"]])
        except (OSError, ValueError, RecursionError, DataError, LookupError, TypeError):
            continue  # a source that cannot be shown on the map is left off it
    return found


def product_record(item_path: Path, products: Path) -> dict[str, Any]:
    """A query product for the page: its item, and the URLs of its files."""
    item = json.loads(item_path.read_text(encoding="utf-8"))
    base = "products/" + item_path.parent.absolute().relative_to(products.absolute()).as_posix()
    urls = {
        key: f"{base}/{asset['href'].removeprefix('./')}"
        for key, asset in item.get("assets", {}).items()
    }
    props = item.get("properties", {})
    query = props.get("marscope:query") or {}
    return {
        "id": item["id"],
        "item": f"{base}/{item_path.name}",
        "texts": query.get("text") or props.get("marscope:classes") or [],
        "threshold": props.get("marscope:threshold"),
        "classes": props.get("marscope:classes"),
        "detections": props.get("marscope:detections"),
        "bbox": item.get("bbox"),
        "created": props.get("processing:datetime") or props.get("datetime"),
        "assets": urls,
        "legend": [
            {"name": c.get("description") or c.get("name"), "colour": f"#{c.get('color_hint')}"}
            for c in item.get("assets", {}).get("classes", {}).get("classification:classes", [])
        ],
        "stac": item,
    }


def list_products(products: Path) -> list[dict[str, Any]]:
    """The query products of a products catalog, newest first."""
    records = []
    for path in sorted((products / "queries").glob("*/*.json")):
        if path.stem != path.parent.name:
            continue
        try:
            records.append(product_record(path, products))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # an unreadable item is left out, the others are listed
    return sorted(records, key=lambda r: str(r["created"] or ""), reverse=True)


def page_config(state: ServerState) -> dict[str, Any]:
    """What the page needs to know before the first query."""
    products = state.products
    basemap = None
    for item_path in sorted((products / "basemaps").glob("*/*.json")):
        if item_path.stem == item_path.parent.name:
            basemap = product_record(item_path, products)
            break
    body_name, bbox = "Mars", None
    if state.engine is not None:
        body_name = state.engine.grid.body.name
        bbox = state.engine.bounds()
    elif basemap is not None:
        bbox = basemap["bbox"]
    body = get_body(body_name)
    return {
        "body": body.name,
        "crs": body.geographic_code,
        "radius_m": body.radius_m,
        "bbox": bbox,
        "basemap": basemap["assets"].get("tiles") if basemap else None,
        "static": state.static,
        "sources": [
            {"id": sid, "bbox": bbox, "url": f"sources/{sid}.json"}
            for sid, (_, bbox) in sorted(state.sources.items())
        ],
        "queries": "api/queries" if not state.static else "queries.json",
    }


def parse_request(payload: dict[str, Any]) -> QueryRequest:
    """A :class:`QueryRequest` from the page's JSON.

    Raises:
        ConfigError: for fields of the wrong type.
    """
    pairs = functools.partial(_pairs, payload)
    number = functools.partial(_number, payload)
    unknown = sorted(set(payload) - API_FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown field {unknown[0]!r}; the query takes {', '.join(sorted(API_FIELDS))}"
        )
    texts = payload.get("texts") or []
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must be a list of strings")
    if len(texts) > MAX_TEXTS:
        raise ConfigError(f"at most {MAX_TEXTS} texts per query")
    threshold, weight = number("threshold", 0.5), number("image_weight", 0.3)
    learner = payload.get("learner", "prototype")
    if not isinstance(learner, str):
        raise ConfigError("learner must be prototype or classifier")
    examples = QuerySpec(
        points=pairs("points"),
        negatives_points=pairs("negative_points"),
        image_weight=weight,
        learner=learner,
    )
    composite = {k: payload.get(k) for k in ("and_not", "near")}
    if any(v is not None and not isinstance(v, str) for v in composite.values()):
        raise ConfigError("and_not and near must be texts")
    within = number("within_km", DEFAULT_WITHIN_KM)
    for flag in ("classify", "live"):
        if not isinstance(payload.get(flag, False), bool):
            raise ConfigError(f"{flag} must be true or false")
    request = QueryRequest(
        texts=texts,
        examples=examples,
        threshold=threshold,
        classify=bool(payload.get("classify")),
        and_not=composite["and_not"],
        near=composite["near"],
        within_km=within,
    )
    if "products" in payload:  # as `marscope query --products a,b`; every file when absent
        wanted = payload["products"]
        if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
            raise ConfigError("products must be a list of names")
        request.products = tuple(wanted)
    return request


def _pairs(payload: dict[str, Any], key: str) -> list[tuple[float, float]]:
    """A field of [lon, lat] pairs of numbers (ConfigError otherwise)."""
    value = payload.get(key) or []
    ok = isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in value
    )
    if not ok:
        raise ConfigError(f"{key} must be a list of [lon, lat] pairs of numbers")
    return [(float(p[0]), float(p[1])) for p in value]


def _number(payload: dict[str, Any], key: str, default: float) -> float:
    """A number field (ConfigError for "0.5" or true: a page's bug, not a number)."""
    value = payload.get(key, default)
    if not _is_number(value):
        raise ConfigError(f"{key} must be a number, not {json.dumps(value)[:40]}")
    return float(value)


def _is_number(value: Any) -> bool:
    """A JSON number (true and false are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


MAX_BOX_CELLS = 1000
"""Most cells one box selection may add as examples."""


def cell_centres_in(
    engine: QueryEngine, bbox: tuple[float, float, float, float]
) -> list[tuple[float, float]]:
    """Centres (lon, lat) of the embedded cells whose centre lies in ``bbox``.

    Raises:
        ConfigError: if the box holds more than :data:`MAX_BOX_CELLS` cells.
    """
    import numpy as np

    west, south, east, north = bbox
    cells = np.asarray(engine.arrays.cells)
    centres = engine.grid.centers(cells)
    inside = (
        (centres[:, 0] >= west)
        & (centres[:, 0] <= east)
        & (centres[:, 1] >= south)
        & (centres[:, 1] <= north)
    )
    n = int(inside.sum())
    if n > MAX_BOX_CELLS:
        raise ConfigError(
            f"the box holds {n:,} cells; draw a smaller one (at most {MAX_BOX_CELLS:,})"
        )
    return [(round(float(x), 6), round(float(y), 6)) for x, y in centres[inside]]


def cell_image(state: ServerState, lon: float, lat: float, size: int = 96) -> bytes:
    """A PNG of the tile the model saw of the embedded cell at ``lon, lat``.

    The tile is rendered from the set's source rasters as embedding rendered it (its tile
    size and the model's margin), then scaled to ``size`` pixels.

    Raises:
        ConfigError: without an engine, outside the embedded cells, or when no source
            raster of the set is on this machine.
    """
    import io

    import numpy as np
    import pystac
    from PIL import Image

    from marscope_stac.stac.read import load_sources
    from marscope_stac.tiles.batch import read_batch
    from marscope_stac.tiles.plan import plan_tiles

    engine = state.engine
    if engine is None:
        raise ConfigError("this server has no embedding set")
    cell = int(engine.grid.locate(np.array([lon]), np.array([lat]))[0])
    if cell < 0 or int(engine.arrays.rows_of(np.array([cell]))[0]) < 0:
        raise ConfigError(f"({lon:g}, {lat:g}) is not an embedded cell")
    items = [pystac.Item.from_file(str(path)) for path, _ in state.sources.values()]
    if not items:
        raise ConfigError("the set's source rasters are not on this machine")
    manifest = engine.set.manifest()
    west, south, east, north = (float(v) for v in engine.grid.bounds([cell])[0])
    sources = load_sources(items, bbox=[west, south, east, north])
    context = float(manifest.get("model", {}).get("tile_context", 0.0))
    box = [west, south, east, north]
    plan = plan_tiles(sources, engine.grid, int(manifest["tile_px"]), bbox=box, context=context)
    where = np.flatnonzero(plan.cells == cell)
    if not len(where):
        raise ConfigError(f"({lon:g}, {lat:g}) has no imagery in the set's sources")
    batch = read_batch(plan.take(where[:1]))
    pixels = np.asarray(batch.pixels[0], np.float32)
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3):
        pixels = np.moveaxis(pixels, 0, -1).squeeze()
    image = Image.fromarray((np.clip(np.nan_to_num(pixels), 0, 1) * 255).astype(np.uint8))
    out = io.BytesIO()
    image.resize((size, size), Image.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()
