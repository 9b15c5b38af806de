"""``marscope serve``: ask the planet in a web map, over the query engine, offline.

:class:`MapServer` is a small threaded HTTP server (standard library only) bound to
127.0.0.1 by default. It serves:

- the map page (``/``: MapLibre GL JS with the PMTiles protocol, from the installed vendor
  files, see :mod:`marscope_stac.web.assets`);
- the products catalog's files under ``/products/`` with HTTP range requests, ``ETag`` and
  ``Last-Modified``, and the media types PMTiles, COG and GeoParquet readers expect; paths
  are confined to the products folder;
- a JSON API: ``GET /api/config`` (body, radius, extent, basemap), ``GET /api/queries``
  (the published query products, newest first), ``POST /api/query`` (a
  :class:`~marscope_stac.engine.request.QueryRequest` as JSON: ``texts``, ``classify``, ``points``,
  ``negative_points``, ``threshold``, ``image_weight``, ``and_not`` / ``near`` +
  ``within_km`` (composites), optionally ``products`` as
  ``--products``; answered by the engine kept warm, publishing exactly what ``marscope
  query`` with the same options publishes) returning the products' STAC items.

:func:`~marscope_stac.web.static.write_static_site` writes the same page for a static host
(browsing published products, no querying).
"""

from __future__ import annotations

import email.utils
import errno
import json
import mimetypes
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from marscope_stac.core.bodies import get_body
from marscope_stac.core.errors import ConfigError, MarscopeError
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.engine.request import QueryRequest
from marscope_stac.query.scoring import QuerySpec
from marscope_stac.web.assets import missing, vendor_dir

__all__ = [
    "MAX_REQUEST_BYTES",
    "MapServer",
    "serve",
]

MAX_REQUEST_BYTES = 64 * 1024
"""Largest request body the API accepts."""

API_FIELDS = frozenset(
    {
        "texts",
        "classify",
        "points",
        "negative_points",
        "threshold",
        "image_weight",
        "and_not",
        "near",
        "within_km",
        "products",
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


def _web_dir() -> Path:
    return Path(str(files("marscope_stac") / "data" / "web"))


def _media(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def _inside(root: Path, rel: str) -> Path | None:
    """The file ``rel`` names under ``root``, or None when it leaves it or does not exist."""
    try:
        path = (root / unquote(rel).lstrip("/")).resolve()
        base = root.resolve()
        if path != base and base not in path.parents:
            return None
        return path if path.is_file() else None
    except (OSError, ValueError):  # a NUL byte, a name too long
        return None


@dataclass
class _State:
    """What the request handlers share."""

    products: Path
    engine: QueryEngine | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    static: bool = False
    sources: dict[str, tuple[Path, list[float]]] = field(default_factory=dict)
    hosts: set[str] = field(default_factory=set)
    port: int = 0


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
        found.update(_set_sources(root / f"{root.name}.json"))
    return found


def _set_sources(item_path: Path) -> dict[str, tuple[Path, list[float]]]:
    if not item_path.is_file():
        return {}
    found: dict[str, tuple[Path, list[float]]] = {}
    for link in json.loads(item_path.read_text(encoding="utf-8")).get("links", []):
        href = str(link.get("href", ""))
        if link.get("rel") != "derived_from" or "://" in href or not href.endswith(".json"):
            continue
        path = (item_path.parent / href).resolve()
        try:
            item = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if item.get("bbox"):
            found[str(item["id"])] = (path, [float(v) for v in item["bbox"]])
    return found


def _product_record(item_path: Path, products: Path) -> dict[str, Any]:
    """A query product for the page: its item, and the URLs of its files."""
    item = json.loads(item_path.read_text(encoding="utf-8"))
    base = "products/" + item_path.parent.relative_to(products).as_posix()
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
            records.append(_product_record(path, products))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # an unreadable item is left out, the others are listed
    return sorted(records, key=lambda r: str(r["created"] or ""), reverse=True)


def _config(state: _State) -> dict[str, Any]:
    """What the page needs to know before the first query."""
    products = state.products
    basemap = None
    for item_path in sorted((products / "basemaps").glob("*/*.json")):
        if item_path.stem == item_path.parent.name:
            basemap = _product_record(item_path, products)
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


def _request(payload: dict[str, Any]) -> QueryRequest:
    """A :class:`QueryRequest` from the page's JSON.

    Raises:
        ConfigError: for fields of the wrong type.
    """

    def pairs(key: str) -> list[tuple[float, float]]:
        value = payload.get(key) or []
        try:
            return [(float(p[0]), float(p[1])) for p in value]
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"{key} must be a list of [lon, lat] pairs") from exc

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
    try:
        threshold = float(payload.get("threshold", 0.5))
        weight = float(payload.get("image_weight", 0.3))
    except (TypeError, ValueError) as exc:
        raise ConfigError("threshold and image_weight must be numbers") from exc
    examples = QuerySpec(
        points=pairs("points"), negatives_points=pairs("negative_points"), image_weight=weight
    )
    composite = {k: payload.get(k) for k in ("and_not", "near")}
    if any(v is not None and not isinstance(v, str) for v in composite.values()):
        raise ConfigError("and_not and near must be texts")
    try:
        within = float(payload.get("within_km", 5.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError("within_km must be a number") from exc
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


class _Handler(BaseHTTPRequestHandler):
    """Routes of :class:`MapServer` (see the module docstring)."""

    server_version = "marscope"
    state: _State

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the command line prints its own lines

    # -- responses ------------------------------------------------------------------------

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _file(self, path: Path, head: bool = False) -> None:
        with path.open("rb") as fh:  # one open file: a replaced product is never mixed in
            self._send_file(fh, path, head)

    def _send_file(self, fh: Any, path: Path, head: bool) -> None:
        st = os.fstat(fh.fileno())
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        start, end, status = 0, st.st_size - 1, HTTPStatus.OK
        ranged = self.headers.get("Range")
        if ranged and self.headers.get("If-Range", etag) == etag and _single_range(ranged):
            span = _byte_range(ranged, st.st_size)
            if span is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{st.st_size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            (start, end), status = span, HTTPStatus.PARTIAL_CONTENT
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", _media(path))
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Cache-Control", "no-cache")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
        self.end_headers()
        if head or not length:
            return
        fh.seek(start)
        left = length
        while left > 0:
            chunk = fh.read(min(left, 1 << 20))
            if not chunk:
                break
            self.wfile.write(chunk)
            left -= len(chunk)

    # -- routes ---------------------------------------------------------------------------

    def _static(self, route: str, head: bool) -> None:
        web = _web_dir()
        if route in ("/", "/index.html"):
            path: Path | None = web / "index.html"
        elif route.startswith("/vendor/"):
            path = _inside(vendor_dir(), route[len("/vendor/") :])
        elif route.startswith("/products/"):
            path = _inside(self.state.products, route[len("/products/") :])
        elif route.startswith("/sources/") and route.endswith(".json"):
            found = self.state.sources.get(unquote(route[len("/sources/") : -len(".json")]))
            path = found[0] if found else None
        elif route.count("/") == 1 and route.endswith((".js", ".css")):
            path = _inside(web, route[1:])
        else:
            path = None
        if path is None:
            self._error(HTTPStatus.NOT_FOUND, f"{route} not found")
        else:
            self._file(path, head)

    def do_HEAD(self) -> None:
        self._static(urlparse(self.path).path, head=True)

    def do_GET(self) -> None:
        route = urlparse(self.path).path
        try:
            if route == "/api/config":
                self._json(HTTPStatus.OK, _config(self.state))
            elif route == "/api/queries":
                self._json(HTTPStatus.OK, list_products(self.state.products))
            else:
                self._static(route, head=False)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _trusted(self) -> bool:
        """A request from this server's own page: JSON, to the address it is bound to.

        Browsers send cross-site form posts as text/plain or form data (refused here), and a
        page of another site that rebinds its name to 127.0.0.1 keeps its own Host header.
        """
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        host = (self.headers.get("Host") or "").strip().lower()
        port = self.state.port
        names = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", *self.state.hosts}
        return kind == "application/json" and host in names

    def do_POST(self) -> None:
        route = urlparse(self.path).path
        if route != "/api/query":
            self._error(HTTPStatus.NOT_FOUND, f"{route} not found")
            return
        if not self._trusted():
            self._error(
                HTTPStatus.FORBIDDEN, "queries are taken from the map page only (JSON, same host)"
            )
            return
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if not 0 < size <= MAX_REQUEST_BYTES:
            self._error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request body is empty or too large"
            )
            return
        try:
            payload = json.loads(self.rfile.read(size))
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except ValueError:
            self._error(HTTPStatus.BAD_REQUEST, "the request body is not a JSON object")
            return
        self._answer(payload)

    def _answer(self, payload: dict[str, Any]) -> None:
        engine = self.state.engine
        if engine is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "this server has no embedding set")
            return
        t0 = time.perf_counter()
        try:
            request = _request(payload)
            with self.state.lock:  # one query at a time on the shared engine
                products = engine.answer(request)
        except MarscopeError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Exception as exc:  # a bug: the page gets a JSON answer, not a dropped socket
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            return
        records = [_product_record(p.item_path, self.state.products) for p in products]
        self._json(HTTPStatus.OK, {"products": records, "seconds": time.perf_counter() - t0})


def _single_range(header: str) -> bool:
    """Whether a Range header is one well-formed ``bytes=`` range (others are ignored: 200)."""
    return bool(re.fullmatch(r"\s*bytes\s*=\s*(\d+-\d*|-\d+)\s*", header))


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, or None when it is not satisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec or size == 0:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:  # the last N bytes
            n = int(last)
            return (max(0, size - n), size - 1) if n > 0 else None
        a = int(first)
        b = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    return (a, b) if 0 <= a <= b else None


class MapServer:
    """The web map's HTTP server over a products catalog (see the module docstring).

    Args:
        products: The products catalog folder.
        engine: The query engine kept warm (None: browse published products only).
        host: Address to bind (127.0.0.1 unless told otherwise).
        port: Port (0: any free port).

    Raises:
        ConfigError: if the web map files are not installed or the port is in use.
    """

    def __init__(
        self,
        products: str | Path,
        engine: QueryEngine | None,
        host: str = "127.0.0.1",
        port: int = 8765,
    ) -> None:
        gone = missing()
        if gone:
            raise ConfigError(
                f"the web map files are not installed ({gone[0]}); run "
                "'python -m marscope_stac.web' (it downloads them from the npm registry)"
            )
        state = _State(Path(products), engine, sources=source_items(Path(products), engine))
        handler = type("Handler", (_Handler,), {"state": state})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use; pass --port N") from exc
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.httpd.daemon_threads = True
        self.state = state
        state.port = int(self.httpd.server_address[1])
        state.hosts = {f"{host}:{state.port}".lower()}

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}/"

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown` (or Ctrl-C)."""
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks); returns it."""
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(
    products: str | Path = "products",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    model: str = "bundled",
    embeddings: str | Path | None = None,
) -> MapServer:
    """What ``marscope serve`` does: open the engine (kept warm) and make the server.

    Raises:
        ConfigError: for a missing or unreadable embedding set, missing web files, or a port
            in use.
    """
    engine = QueryEngine.open(products, embeddings, model=model)
    return MapServer(products, engine, host, port)
