"""The ``marscope`` command line: thin commands over the library's public functions."""

from __future__ import annotations

from marscope_stac.cli.main import cli, main

__all__ = ["cli", "main"]
