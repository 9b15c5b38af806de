"""``marscope serve``: ask the planet in a web map, over the query engine, offline.

:class:`MapServer` runs the Starlette application of :mod:`marscope_stac.web.app` under
uvicorn, bound to 127.0.0.1 by default. It serves:

- the map page (``/``: MapLibre GL JS with the PMTiles protocol, from the installed vendor
  files, see :mod:`marscope_stac.web.assets`);
- the products catalog's files under ``/products/`` with HTTP range requests, ``ETag`` and
  ``Last-Modified`` (304 for ``If-None-Match`` and ``If-Modified-Since``), and the media
  types PMTiles, COG and GeoParquet readers expect; paths are confined to the products folder;
- a JSON API described by OpenAPI (``/api/openapi.json``): ``GET /api/config`` (body,
  radius, extent, basemap), ``GET /api/queries`` (the published query products, newest
  first), ``POST /api/query`` (a :class:`~marscope_stac.engine.request.QueryRequest` as
  JSON: ``texts``, ``classify``, ``points``, ``negative_points``, ``threshold``,
  ``image_weight``, ``and_not`` / ``near`` + ``within_km`` (composites), optionally
  ``products``; answered by the engine kept warm, one query at a time, publishing exactly
  what ``marscope query`` with the same options publishes) returning the products' items.

Connections: a backlog of 2,048 and one event loop, so many simultaneous requests all get
answers (queries wait their turn in threads); a client that does not finish its request's
head within ``client_timeout`` seconds is disconnected (uvicorn has no such deadline: the
small protocol class below adds it), a body that does not arrive in time gets 408.

:func:`~marscope_stac.web.static.write_static_site` writes the same page for a static host
(browsing published products, no querying).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from marscope_stac.core.errors import ConfigError
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.web.api import MAX_REQUEST_BYTES, ServerState, source_items
from marscope_stac.web.app import create_app
from marscope_stac.web.assets import missing

__all__ = ["MAX_REQUEST_BYTES", "MapServer", "serve"]

BACKLOG = 2048
"""Connections the listening socket holds before they are accepted."""


class _HeadDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's head.

    uvicorn times out idle keep-alive connections only; a client that sends part of a
    request and stops would hold its connection forever. Here, whenever the connection
    waits for a request, a timer runs; the request's head arriving stops it, and the timer
    firing closes the connection.
    """

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the deadline for the first request."""
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.head_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        """Stop the deadline once a request's head is in; start it between requests."""
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting:
            self._arm()
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete and self._deadline:
            self._deadline.cancel()
            self._deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the deadline with the connection."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)


class MapServer:
    """The web map's HTTP server over a products catalog (see the module docstring).

    Args:
        products: The products catalog folder.
        engine: The query engine kept warm (None: browse published products only).
        host: Address to bind (127.0.0.1 unless told otherwise).
        port: Port (0: any free port).
        client_timeout: Seconds a client has to send a request's head, and its body.

    Raises:
        ConfigError: if the web map files are not installed or the port is in use.
    """

    def __init__(
        self,
        products: str | Path,
        engine: QueryEngine | None,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        client_timeout: float = 10.0,
    ) -> None:
        gone = missing()
        if gone:
            raise ConfigError(
                f"the web map files are not installed ({gone[0]}); run "
                "'python -m marscope_stac.web' (it downloads them from the npm registry)"
            )
        if not host.strip():  # "" would listen on every interface of the machine
            raise ConfigError("--host is empty; give the address to listen on, e.g. 127.0.0.1")
        self.socket = _listen(host, port)
        self.host, self.port = host, int(self.socket.getsockname()[1])
        folder = Path(products).absolute()  # paths it derives compare with the engine's
        self.state = ServerState(
            folder,
            engine,
            sources=source_items(folder, engine),
            hosts={host.lower()},
            port=self.port,
            client_timeout=client_timeout,
        )
        protocol = type("HeadDeadline", (_HeadDeadline,), {"head_timeout": client_timeout})
        config = uvicorn.Config(
            create_app(self.state),
            http=protocol,
            lifespan="off",
            log_level=logging.WARNING,
            access_log=False,
            backlog=BACKLOG,
            timeout_keep_alive=5,
            server_header=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{name}:{self.port}/"

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown` (or Ctrl-C)."""
        self.server.run(sockets=[self.socket])

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks); returns it once it answers."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self._thread

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()
        self.state.live.close()  # answers asked before the stop get their files


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one).

    Raises:
        ConfigError: if the port is in use or the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use; pass --port N") from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    except OverflowError as exc:
        sock.close()
        raise ConfigError(f"port {port} is not a port (0..65535); pass --port N") from exc
    return sock


def serve(
    products: str | Path = "products",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    model: str = "bundled",
    embeddings: str | Path | None = None,
    scheduler_address: str | None = None,
) -> MapServer:
    """What ``marscope serve`` does: open the engine (kept warm) and make the server.

    With ``scheduler_address``, the engine scans the set on that Dask cluster.

    Raises:
        ConfigError: for a missing or unreadable embedding set, missing web files, a port
            in use, or a scheduler that cannot be reached.
    """
    engine = QueryEngine.open(
        products, embeddings, model=model, scheduler_address=scheduler_address
    )
    return MapServer(products, engine, host, port)
