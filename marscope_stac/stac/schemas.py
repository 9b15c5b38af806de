"""STAC JSON schemas, offline.

The core and extension schemas shipped with the package are served to the validators from a
local cache (no network); the view extension gets rules its schema leaves out (ranges of
angles). Schema errors are reduced to one short line each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import pystac
import pystac.validation
from pystac.errors import STACValidationError
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.stac_validator import GetSchemaError, JsonSchemaSTACValidator

from marscope_stac.core.errors import CatalogError
from marscope_stac.stac.build import VIEW_V1

__all__ = [
    "RULE_CHECKED_EXTENSIONS",
    "VIEW_RANGES",
    "OfflineSTACValidator",
    "install_offline_validator",
    "offline_schema_cache",
    "schema_problem",
    "validate_dict",
    "view_rules_schema",
    "write_offline_schemas",
]


VIEW_RANGES = {
    "view:off_nadir": (0.0, 90.0),
    "view:incidence_angle": (0.0, 90.0),
    "view:azimuth": (0.0, 360.0),
    "view:sun_azimuth": (0.0, 360.0),
    "view:sun_elevation": (-90.0, 90.0),
}
"""The view v1.0.0 fields and the value ranges its specification gives."""


def view_rules_schema() -> dict[str, Any]:
    """A JSON Schema of :data:`VIEW_RANGES`, for tools that need a schema file offline.

    This is the project's own statement of the rules it checks (the official view schema is
    not available offline), not a copy of the published file.
    """
    fields = {
        key: {"type": "number", "minimum": lo, "maximum": hi}
        for key, (lo, hi) in VIEW_RANGES.items()
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": VIEW_V1,
        "$comment": "Written by marscope-stac from the field ranges of the view v1.0.0 "
        "specification, for offline validation; not the published schema file.",
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": fields},
            "assets": {"type": "object", "additionalProperties": {"properties": fields}},
        },
    }


def _check_view(obj: Mapping[str, Any]) -> list[str]:
    """Check view extension fields against the ranges in the view v1.0.0 specification."""
    ranges = VIEW_RANGES
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


def write_offline_schemas(folder: str | Path) -> dict[str, str]:
    """Write every schema :func:`validate_catalog` uses offline into ``folder``.

    Returns the URL -> file map, e.g. for stac-validator's ``--schema-map URL PATH``. The view
    extension's entry is :func:`view_rules_schema`.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    schemas = {**offline_schema_cache(), VIEW_V1: view_rules_schema()}
    found: dict[str, str] = {}
    for i, (url, schema) in enumerate(sorted(schemas.items())):
        path = out / f"{i:03d}-{url.rstrip('/').rsplit('/', 1)[-1]}"
        path.write_text(json.dumps(schema), encoding="utf-8")
        found[url] = str(path)
    return found


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


def _offline_schema(schema_uri: str) -> dict[str, Any]:
    """The offline schema at ``schema_uri`` (a fragment is ignored)."""
    key = schema_uri.split("#", 1)[0]
    found = offline_schema_cache().get(key)
    if found is None:
        raise GetSchemaError(schema_uri, LookupError(f"schema {key} is not available offline"))
    return found


@cache
def _offline_registry() -> Any:
    """A ``referencing`` registry of every offline schema (made once per process)."""
    from referencing import Registry, Resource

    def retrieve(uri: str) -> Any:
        return Resource.from_contents(_offline_schema(uri))

    resources = [(k, Resource.from_contents(v)) for k, v in offline_schema_cache().items()]
    return Registry(retrieve=retrieve).with_resources(resources)  # type: ignore[call-arg]


@cache
def _schema_validator(schema_uri: str) -> Any:
    """The jsonschema validator of one offline schema, its schema checked once per process."""
    import jsonschema

    schema = _offline_schema(schema_uri)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=_offline_registry())


class OfflineSTACValidator(JsonSchemaSTACValidator):
    """pystac validator that reads every schema from local files and never uses the network.

    Each schema's validator is made once per process (pystac's own checks the schema and
    builds a registry of every schema on each object: most of the time of writing an item).
    """

    def __init__(self) -> None:
        super().__init__()
        self.schema_cache = dict(offline_schema_cache())

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        return _offline_schema(schema_uri)

    def _validate_from_uri(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: pystac.STACObjectType,
        schema_uri: str,
        href: str | None = None,
    ) -> None:
        """Validate ``stac_dict`` against one schema; errors as pystac raises them."""
        import jsonschema

        errors = list(_schema_validator(schema_uri).iter_errors(stac_dict))
        if not errors:
            return
        at = f"at {href} " if href is not None else ""
        name = f"with ID {stac_dict['id']} " if stac_dict.get("id") is not None else ""
        msg = f"Validation failed for {stac_object_type} {at}{name}against schema at {schema_uri}"
        best = jsonschema.exceptions.best_match(errors)
        if best:
            msg += "\n" + str(best)
        raise STACValidationError(msg, source=errors) from best

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


_ONLINE_HINT = "validate it with an online validator (e.g. stac-validator) instead"


def validate_dict(d: dict[str, Any], href: str | None = None) -> list[str]:
    """Validate one STAC object (as a dict), core and every declared extension, offline.

    Returns:
        The schema URLs validated against.

    Raises:
        CatalogError: if the object is invalid or a schema is not available offline.
    """
    validator = OfflineSTACValidator()
    where = href or d.get("id", "?")
    extensions = d.get("stac_extensions", [])
    if not isinstance(extensions, list) or not all(isinstance(e, str) for e in extensions):
        raise CatalogError(
            f"invalid STAC at {where}: field stac_extensions: {extensions!r:.60} is not a list "
            "of schema URLs"
        )
    kind = _object_type(d)
    version = str(d.get("stac_version", ""))
    for ext in extensions:
        key = str(ext).split("#", 1)[0]
        if key not in validator.schema_cache and key not in RULE_CHECKED_EXTENSIONS:
            raise CatalogError(
                f"cannot validate {where}: schema {key} is not one this program carries "
                f"offline; {_ONLINE_HINT}"
            )
    try:
        used = validator.validate(d, kind, version, list(d.get("stac_extensions", [])), href)
    except STACValidationError as exc:
        raise CatalogError(f"invalid STAC at {where}: {schema_problem(exc)}") from exc
    except GetSchemaError as exc:  # a $ref to a schema that is not here
        raise CatalogError(f"cannot validate {where}: {exc}; {_ONLINE_HINT}") from exc
    return [u for u in used if u]


def schema_problem(exc: Exception) -> str:
    """One short line for a schema failure: the field path, what is wrong, the rule broken.

    The deepest, most relevant error is chosen (jsonschema's best match, followed into
    ``anyOf``/``oneOf`` branches); values in the message are cut short.
    """
    import jsonschema

    errors = getattr(exc, "source", None)
    errors = errors if isinstance(errors, list) else [errors] if errors is not None else []
    errors = [e for e in errors if isinstance(e, jsonschema.ValidationError)]
    best = jsonschema.exceptions.best_match(errors) if errors else None
    if best is None:
        return " ".join(str(exc).split())[:200]
    while best.context:
        deeper = jsonschema.exceptions.best_match(_branch(best.context))
        if deeper is None:
            break
        best = deeper
    field_path = "/".join(str(p) for p in best.absolute_path) or "(the object itself)"
    message = " ".join(best.message.split())
    if len(message) > 160:
        message = message[:157] + "..."
    return f"field {field_path}: {message} (schema rule '{best.validator}')"


def _branch(errors: Iterable[Any]) -> list[Any]:
    """The errors of the ``anyOf``/``oneOf`` branch meant for the object.

    Branches that fail on the object's own ``type`` (an Item checked against the Collection
    branch) are not the object's; of the rest, the one with the fewest errors.
    """
    branches: dict[Any, list[Any]] = {}
    for e in errors:
        branches.setdefault(e.schema_path[0] if e.schema_path else None, []).append(e)
    mine = [
        b for b in branches.values() if not any(list(e.absolute_path) == ["type"] for e in b)
    ] or list(branches.values())
    return min(mine, key=len)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")
