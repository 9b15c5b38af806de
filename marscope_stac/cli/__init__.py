"""The ``marscope`` command line: thin commands over the library's public functions.

``main`` holds the command group, its error handling and warnings; the commands live by family
in ``data`` (demo, catalogs, validation, tiles), ``ask`` (embed, query, upgrade, evaluate,
basemap, serve) and ``training`` (train, average-models), with the options they share in
``options``.
"""

from __future__ import annotations

from marscope_stac.cli import ask, data, training
from marscope_stac.cli.main import cli, main

__all__ = ["ask", "cli", "data", "main", "training"]
