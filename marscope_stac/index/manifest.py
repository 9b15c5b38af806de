"""The fields of an embedding set's ``manifest.json`` and their types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marscope_stac.core.errors import DataError

__all__ = ["MANIFEST_FIELDS", "check_manifest_fields", "read_manifest"]

MANIFEST_FIELDS: dict[str, type] = {
    "model": dict,
    "grid": str,
    "tile_px": int,
    "preprocessing": dict,
    "shard_cells": int,
    "shards": dict,
    "plans": dict,
    "failed_cells": dict,
    "sources": list,
    "source_items": dict,
    "source_fingerprints": dict,
    "complete": bool,
    "embeddings": dict,
    "index": dict,
    "scoring": dict,
}
"""The type of each field of a set's ``manifest.json``."""
_JSON_NAMES = {dict: "object", str: "string", int: "integer", list: "array", bool: "boolean"}


def check_manifest_fields(d: dict[str, Any], path: Path) -> None:
    """Refuse a manifest whose known fields are of another type (a damaged set).

    Raises:
        DataError: naming the field, what it holds and the fix.
    """
    for key, kind in MANIFEST_FIELDS.items():
        value = d.get(key)
        boolean = kind is int and isinstance(value, bool)  # JSON true is no count
        if key in d and (not isinstance(value, kind) or boolean):
            raise DataError(
                f"{path}: {key!r} is {json.dumps(value)[:40]}, not a JSON "
                f"{_JSON_NAMES[kind]}; the set is damaged: delete its folder and embed again"
            )


def read_manifest(path: Path) -> dict[str, Any]:
    """A manifest-shaped JSON object (empty when the file is missing).

    Raises:
        DataError: if it is not a JSON object with fields of the manifest's types.
    """
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON; delete the set folder and embed again") from exc
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a manifest; delete the set folder and embed again")
    check_manifest_fields(d, path)
    return d
