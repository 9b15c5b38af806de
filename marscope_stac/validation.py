"""Offline validation of STAC objects against the core and extension JSON Schemas.

pystac fetches extension schemas from the web, which fails with no network. This module
serves every schema from local files instead: the STAC core schemas shipped with pystac, and
the extension schemas vendored in ``marscope_stac/data/stac-schemas`` (exact copies of the
published files, licences beside them). A schema that is neither here nor in pystac is never
fetched: validation fails with a message naming it, unless the extension is one of
:data:`RULE_CHECKED_EXTENSIONS`, whose few fields are checked against the ranges their
specification gives.

Use :func:`install_offline_validator` to make ``pystac``'s own ``validate()`` calls offline,
or :func:`validate_dict` / :func:`validate_catalog` directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import pystac
import pystac.validation
from pystac.errors import STACValidationError
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

from marscope_stac.errors import CatalogError

__all__ = [
    "RULE_CHECKED_EXTENSIONS",
    "ValidationReport",
    "install_offline_validator",
    "offline_schema_cache",
    "validate_catalog",
    "validate_dict",
]

VIEW_V1 = "https://stac-extensions.github.io/view/v1.0.0/schema.json"


def _check_view(obj: Mapping[str, Any]) -> list[str]:
    """Check view extension fields against the ranges in the view v1.0.0 specification."""
    ranges = {
        "view:off_nadir": (0.0, 90.0),
        "view:incidence_angle": (0.0, 90.0),
        "view:azimuth": (0.0, 360.0),
        "view:sun_azimuth": (0.0, 360.0),
        "view:sun_elevation": (-90.0, 90.0),
    }
    problems: list[str] = []
    places: list[Mapping[str, Any]] = [obj.get("properties", {})]
    places += [a for a in obj.get("assets", {}).values() if isinstance(a, Mapping)]
    found = False
    for place in places:
        for key, value in place.items():
            if not key.startswith("view:"):
                continue
            found = True
            if key not in ranges:
                problems.append(f"{key} is not a field of the view extension v1.0.0")
                continue
            lo, hi = ranges[key]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not (lo <= float(value) <= hi) or not math.isfinite(float(value)):
                problems.append(f"{key}={value!r} is not a number in [{lo}, {hi}]")
    if not found:
        problems.append("the view extension is declared but no view:* field is present")
    return problems


RULE_CHECKED_EXTENSIONS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    VIEW_V1: _check_view,
}
"""Extensions with no offline schema copy, checked field by field against their spec."""


def _schema_root() -> Path:
    return Path(str(files("marscope_stac") / "data" / "stac-schemas"))


def _url_for(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    if rel.startswith("external/"):
        return "https://" + rel[len("external/") :]
    return "https://stac-extensions.github.io/" + rel


@cache
def offline_schema_cache() -> dict[str, dict[str, Any]]:
    """Return every schema available offline, keyed by its URL (pystac core + vendored)."""
    cache_: dict[str, dict[str, Any]] = dict(get_local_schema_cache())
    root = _schema_root()
    for path in sorted(root.rglob("*.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        url = _url_for(path, root)
        cache_[url] = schema
        sid = str(schema.get("$id", "")).rstrip("#")
        if sid and sid != url:
            cache_[sid] = schema
    return cache_


class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac validator that reads every schema from local files and never uses the network."""

    def __init__(self) -> None:
        super().__init__()
        self.schema_cache = dict(offline_schema_cache())

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        key = schema_uri.split("#", 1)[0]
        if key in self.schema_cache:
            return self.schema_cache[key]
        raise GetSchemaError(
            schema_uri,
            LookupError(f"schema {key} is not available offline"),
        )

    def validate_extension(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: pystac.STACObjectType,
        stac_version: str,
        extension_id: str,
        href: str | None = None,
    ) -> str | None:
        """Validate one extension; rule-checked extensions are checked without a schema."""
        rule = RULE_CHECKED_EXTENSIONS.get(extension_id)
        if rule is not None and extension_id not in self.schema_cache:
            problems = rule(stac_dict)
            if problems:
                raise STACValidationError(
                    f"{stac_dict.get('id')}: {extension_id}: " + "; ".join(problems)
                )
            return extension_id
        return super().validate_extension(
            stac_dict, stac_object_type, stac_version, extension_id, href
        )


def install_offline_validator() -> OfflineSTACValidator:
    """Make pystac's ``validate()`` methods use :class:`OfflineSTACValidator`; return it."""
    validator = OfflineSTACValidator()
    pystac.validation.set_validator(validator)
    return validator


def _object_type(d: Mapping[str, Any]) -> pystac.STACObjectType:
    kind = d.get("type")
    if kind == "Feature":
        return pystac.STACObjectType.ITEM
    if kind == "Collection":
        return pystac.STACObjectType.COLLECTION
    if kind == "Catalog":
        return pystac.STACObjectType.CATALOG
    raise CatalogError(
        f"not a STAC object (type={kind!r}); expected Feature, Collection or Catalog"
    )


def validate_dict(d: dict[str, Any], href: str | None = None) -> list[str]:
    """Validate one STAC object (as a dict), core and every declared extension, offline.

    Returns:
        The schema URLs validated against.

    Raises:
        CatalogError: if the object is invalid or a schema is not available offline.
    """
    validator = OfflineSTACValidator()
    kind = _object_type(d)
    version = str(d.get("stac_version", ""))
    where = href or d.get("id", "?")
    for ext in d.get("stac_extensions", []):
        key = str(ext).split("#", 1)[0]
        if key not in validator.schema_cache and key not in RULE_CHECKED_EXTENSIONS:
            raise CatalogError(
                f"cannot validate {where}: schema {key} is not available offline; add the "
                "schema file to marscope_stac/data/stac-schemas"
            )
    try:
        used = validator.validate(d, kind, version, list(d.get("stac_extensions", [])), href)
    except STACValidationError as exc:
        first = str(exc).strip().splitlines()
        detail = " | ".join(line.strip() for line in first[:2] if line.strip())
        raise CatalogError(f"invalid STAC at {where}: {detail}") from exc
    except GetSchemaError as exc:  # a $ref to a schema that is not here
        raise CatalogError(
            f"cannot validate {where}: {exc}; add the schema file to "
            "marscope_stac/data/stac-schemas"
        ) from exc
    return [u for u in used if u]


@dataclass
class ValidationReport:
    """What :func:`validate_catalog` checked."""

    root: Path
    objects: int = 0
    schemas: set[str] = field(default_factory=set)

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{self.root}: {self.objects} STAC objects valid against "
            f"{len(self.schemas)} schemas (offline)"
        )


def _iter_json(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        yield path


def validate_catalog(path: str | Path) -> ValidationReport:
    """Validate every STAC object of a catalog folder (or one STAC JSON file), offline.

    Args:
        path: A folder holding a STAC catalog, a ``catalog.json`` / ``collection.json``, or an
            item JSON file.

    Raises:
        CatalogError: if the path does not exist, holds no STAC object, or any object is invalid.
    """
    root = Path(path)
    if not root.exists():
        raise CatalogError(
            f"{root} does not exist; give the path of a STAC catalog folder or JSON file"
        )
    if root.is_file() and root.suffix != ".json":
        raise CatalogError(f"{root} is not a JSON file; give a catalog folder or a STAC JSON file")
    report = ValidationReport(root=root)
    for json_path in _iter_json(root):
        try:
            d = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CatalogError(f"{json_path} is not readable JSON: {exc}") from exc
        if not isinstance(d, dict) or "stac_version" not in d:
            continue
        report.schemas.update(validate_dict(d, href=str(json_path)))
        report.objects += 1
    if report.objects == 0:
        raise CatalogError(f"no STAC object found in {root}; is it a STAC catalog?")
    return report
