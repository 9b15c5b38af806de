"""The web map: a local server answering queries and serving products, and its static assets."""

from __future__ import annotations

from marscope_stac.web.server import MapServer, serve

__all__ = [
    "MapServer",
    "serve",
]
