"""The web map's routes as a Starlette application (served by uvicorn, see :mod:`.server`).

Files come from Starlette's :class:`~starlette.responses.FileResponse` (byte ranges, ``ETag``,
``Last-Modified``) and its conditional-request rules (``If-None-Match``, weak tags included,
and ``If-Modified-Since``: 304); the media types are the project's (:func:`.api.media_type`).
What the library has no rule for is one small layer here:

- every request's ``Host`` must name this server (the loopback names and ``--host``), and a
  ``POST`` must be JSON and, when it has an ``Origin``, come from this server's own page:
  anything else is 403, so a page of another site (or one that rebinds its name to
  127.0.0.1) can neither read the products nor ask;
- request bodies are limited in size (413) and in time (408);
- every error is JSON (``{"error": "..."}``), ``OPTIONS`` is answered with the allowed
  methods as JSON, other methods with 405;
- the API is described by OpenAPI at ``/api/openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from marscope_stac.core.errors import ConfigError, MarscopeError
from marscope_stac.products.export import EXPORT_FORMATS, detections_csv, detections_geojson
from marscope_stac.products.live import LiveAnswer
from marscope_stac.products.manage import delete_product, find_product
from marscope_stac.web.api import (
    MAX_REQUEST_BYTES,
    ServerState,
    cell_centres_in,
    cell_image,
    inside,
    list_products,
    media_type,
    page_config,
    parse_request,
    product_record,
    web_dir,
)
from marscope_stac.web.assets import vendor_dir
from marscope_stac.web.live import live_record
from marscope_stac.web.openapi import OPENAPI

__all__ = ["OPENAPI", "create_app"]

METHODS = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")
"""The methods the server answers."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status, headers={"Cache-Control": "no-store"} | (headers or {})
    )


class _Guard:
    """ASGI middleware: ``Host`` on every request, ``Origin`` and JSON on every POST."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = None
        if not self.state.allows_host(headers.get("host", "")):
            refusal = "this server answers requests to its own address only (Host)"
        elif scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            origin = headers.get("origin")
            if scope["method"] == "POST" and kind != "application/json":
                refusal = "queries are JSON (Content-Type: application/json)"
            elif origin is not None and not self.state.allows_origin(origin):
                refusal = "changes are taken from the map page only (Origin)"
        if refusal is not None:
            await _error(403, refusal)(scope, receive, send)
            return
        await self.app(scope, receive, send)


_CONDITIONS = StaticFiles(directory=str(web_dir()), check_dir=False)
"""Starlette's rules for conditional requests (``is_not_modified``), applied to every file."""


def _file(request: Request, path: Path) -> Response:
    """A file with ranges and validators; 304 when the client's copy is current."""
    try:
        stat = path.stat()
    except OSError:  # replaced or removed since it was found
        return _error(404, f"{request.url.path} not found")
    response = FileResponse(
        path, media_type=media_type(path), headers={"Cache-Control": "no-cache"}, stat_result=stat
    )
    if _CONDITIONS.is_not_modified(response.headers, request.headers):
        return Response(status_code=304, headers={"ETag": response.headers["etag"]})
    return response


def _route_file(state: ServerState, route: str) -> Path | None:
    """The file a GET of ``route`` serves, or None."""
    web = web_dir()
    if route in ("/", "/index.html"):
        return web / "index.html"
    if route.startswith("/vendor/"):
        return inside(vendor_dir(), route[len("/vendor/") :])
    if route.startswith("/products/"):
        return inside(state.products, route[len("/products/") :])
    if route.startswith("/sources/") and route.endswith(".json"):
        found = state.sources.get(route[len("/sources/") : -len(".json")])
        return found[0] if found else None
    if route.count("/") == 1 and route.endswith((".js", ".css")):
        return inside(web, route[1:])
    return None


async def _read_body(request: Request, timeout: float) -> bytes:
    """The request body, at most :data:`MAX_REQUEST_BYTES`, within ``timeout`` seconds.

    Raises:
        HTTPException: 413 when it is too large (or empty), 408 when it is too slow.
    """
    try:
        size = int(request.headers.get("content-length") or 0)
    except ValueError:
        size = -1
    if not 0 < size <= MAX_REQUEST_BYTES:
        raise HTTPException(413, "the request body is empty or too large")

    async def read() -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_REQUEST_BYTES:
                raise HTTPException(413, "the request body is empty or too large")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except ClientDisconnect as exc:
        raise HTTPException(400, "the client went away before sending its request") from exc
    except TimeoutError as exc:
        raise HTTPException(408, f"the request body did not arrive within {timeout:g} s") from exc


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """``west,south,east,north`` from a query parameter.

    Raises:
        ConfigError: if it is not four numbers.
    """
    if not text:
        return None
    try:
        west, south, east, north = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError("bbox must be four numbers: west,south,east,north") from exc
    return west, south, east, north


class _Routes:
    """The handlers of :func:`create_app`, over one server state."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._turn: asyncio.Lock | None = None

    @property
    def turn(self) -> asyncio.Lock:
        """Where queries and deletions take turns: in the event loop, not in pool threads.

        A thread waiting for its turn would hold one of the pool's, which also serves files.
        """
        if self._turn is None:
            self._turn = asyncio.Lock()
        return self._turn

    async def files(self, request: Request) -> Response:
        path = _route_file(self.state, request.url.path)
        if path is None:
            return _error(404, f"{request.url.path} not found")
        return _file(request, path)

    async def config(self, request: Request) -> Response:
        return JSONResponse(page_config(self.state), headers={"Cache-Control": "no-store"})

    async def queries(self, request: Request) -> Response:
        records = await run_in_threadpool(list_products, self.state.products)
        return JSONResponse(records, headers={"Cache-Control": "no-store"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def query(self, request: Request) -> Response:
        body = await _read_body(request, self.state.client_timeout)
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: nested beyond Python's stack
            return _error(400, "the request body is not a JSON object")
        async with self.turn:
            return await run_in_threadpool(_answer, self.state, payload)

    async def detections(self, request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt not in EXPORT_FORMATS:
            return _error(404, f"detections come as {' or '.join(EXPORT_FORMATS)}")
        try:
            bbox = _bbox(request.query_params.get("bbox"))
            item = find_product(self.state.products, request.path_params["product"])
            if not (item.parent / "detections.parquet").is_file():
                return _error(404, f"{item.stem} has no detections (made without them)")
            text = await run_in_threadpool(
                detections_csv if fmt == "csv" else detections_geojson,
                item.parent / "detections.parquet",
                bbox,
            )
        except ConfigError as exc:
            return _error(404 if "no product" in str(exc) else 400, str(exc))
        name = f"{item.stem}-detections{'-visible' if bbox else ''}.{fmt}"
        return Response(
            text,
            media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/geo+json",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    async def cells(self, request: Request) -> Response:
        engine = self.state.engine
        if engine is None:
            return _error(503, "this server has no embedding set")
        try:
            bbox = _bbox(request.query_params.get("bbox"))
            if bbox is None:
                raise ConfigError("give bbox=west,south,east,north")
            centres = await run_in_threadpool(cell_centres_in, engine, bbox)
        except ConfigError as exc:
            return _error(400, str(exc))
        return JSONResponse({"centres": centres})

    async def cell_image(self, request: Request) -> Response:
        try:
            lon, lat = (float(request.query_params[k]) for k in ("lon", "lat"))
        except (KeyError, ValueError):
            return _error(400, "give lon and lat as numbers")
        try:
            png = await run_in_threadpool(cell_image, self.state, lon, lat)
        except ConfigError as exc:
            return _error(404, str(exc))
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def written(self, request: Request) -> Response:
        """The record of an answer's product once its files are written."""
        qid = request.path_params["answer"]
        future = self.state.live.written(qid)
        try:
            if future is not None:  # shielded: a client that goes away cancels no write
                product = await asyncio.shield(asyncio.wrap_future(future))
                item = product.item_path
            else:
                item = await run_in_threadpool(find_product, self.state.products, qid)
        except MarscopeError as exc:
            status = 404 if "no product" in str(exc) else 400 if future is None else 500
            return _error(status, str(exc))
        except (OSError, CancelledError) as exc:
            return _error(500, f"the files of {qid} could not be written: {exc}")
        record = await run_in_threadpool(product_record, item, self.state.products)
        return JSONResponse(record, headers={"Cache-Control": "no-store"})

    async def tile(self, request: Request) -> Response:
        """A tile of an answer held in memory (204 where its archive has none)."""
        p = request.path_params
        tiles = self.state.live.tiles(p["answer"])
        if tiles is None:
            return _error(404, f"no answer {p['answer']} is held; open its product's files")
        raster = request.url.path.endswith(".png")
        make = tiles.raster if raster else tiles.vector
        data = await run_in_threadpool(make, p["z"], p["x"], p["y"])
        headers = {"Cache-Control": "no-cache"}
        if data is None:
            return Response(status_code=204, headers=headers)
        if raster:
            return Response(data, media_type="image/png", headers=headers)
        headers["Content-Encoding"] = "gzip"
        return Response(data, media_type="application/vnd.mapbox-vector-tile", headers=headers)

    async def delete(self, request: Request) -> Response:
        product = request.path_params["product"]
        try:
            async with self.turn:  # not while a query publishes
                deleted = await run_in_threadpool(_delete, self.state, product)
        except ConfigError as exc:
            text = str(exc)
            status = 404 if "no product" in text else 409 if "derived from" in text else 400
            return _error(status, text)
        return JSONResponse({"deleted": product, "files": [p.name for p in deleted]})

    async def options(self, request: Request) -> Response:
        allow = ", ".join(METHODS)
        return JSONResponse({"allow": list(METHODS)}, headers={"Allow": allow})

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = {"Allow": ", ".join(METHODS)} if exc.status_code == 405 else None
        return _error(exc.status_code, str(exc.detail), headers)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return _error(500, f"{type(exc).__name__}: {exc}")


def create_app(state: ServerState) -> ASGIApp:
    """The web map's application over ``state`` (routes in the module docstring)."""
    r = _Routes(state)
    routes = [
        Route("/api/config", r.config, methods=["GET", "HEAD"]),
        Route("/api/queries", r.queries, methods=["GET", "HEAD"]),
        Route("/api/openapi.json", r.openapi, methods=["GET", "HEAD"]),
        Route("/api/query", r.query, methods=["POST"]),
        Route("/api/products/{product}/detections.{fmt}", r.detections, methods=["GET", "HEAD"]),
        Route("/api/products/{product}", r.delete, methods=["DELETE"]),
        Route("/api/answers/{answer}", r.written, methods=["GET"]),
        Route("/api/answers/{answer}/probability/{z:int}/{x:int}/{y:int}.png", r.tile),
        Route("/api/answers/{answer}/detections/{z:int}/{x:int}/{y:int}.mvt", r.tile),
        Route("/api/cells", r.cells, methods=["GET"]),
        Route("/api/cells/image", r.cell_image, methods=["GET"]),
        Route("/{path:path}", r.options, methods=["OPTIONS"]),
        Route("/{path:path}", r.files, methods=["GET", "HEAD"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: r.http_error, Exception: r.server_error},
    )
    return _Guard(app, state)


def _delete(state: ServerState, product: str) -> list[Path]:
    """Delete a product, holding the engine's lock (a query in another thread waits)."""
    state.live.settle(product)  # its files are written first, if they are being written
    with state.lock:
        return delete_product(state.products, product)


def _answer(state: ServerState, payload: dict[str, Any]) -> Response:
    """Answer a query with the engine kept warm, one query at a time.

    With ``"live": true`` (the page asks so), text, example and composite queries are
    answered from memory (:mod:`.live`): the URLs of their tiles now, their files after
    the answer. Without it, the files are written first and the records name them.
    """
    engine = state.engine
    if engine is None:
        return _error(503, "this server has no embedding set")
    t0 = time.perf_counter()
    try:
        request = parse_request(payload)
        live = payload.get("live") is True
        with state.lock:  # one query at a time on the shared engine
            answers = engine.answer_live(request) if live else engine.answer(request)
            records = []
            for a in answers:
                if isinstance(a, LiveAnswer):
                    state.live.add(a)
                    records.append(live_record(a))
                else:
                    records.append(product_record(a.item_path, state.products))
    except MarscopeError as exc:
        return _error(400, str(exc))
    return JSONResponse(
        {"products": records, "seconds": time.perf_counter() - t0},
        headers={"Cache-Control": "no-store"},
    )
