"""The products catalog: a static STAC catalog that products are added to, safely.

:class:`OutputCatalog` keeps ``<out>/catalog.json`` and its child collections consistent when
products are added: every JSON file is written atomically, and read-modify-write cycles on the
catalog run under a file lock, so concurrent runs do not corrupt it and an interrupted run
leaves the previous, valid catalog. Every object is validated offline before it is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marscope_stac.errors import OutputError
from marscope_stac.fsutil import atomic_write_text, file_multihash
from marscope_stac.validation import validate_dict

__all__ = ["CATALOG_ID", "OutputCatalog", "file_asset", "relative_href"]

CATALOG_ID = "marscope-products"


def relative_href(target: str | Path, start: Path) -> str:
    """The href of ``target`` from the folder ``start``: relative, or the URL as it is."""
    s = str(target)
    if s.startswith(("http://", "https://")):
        return s
    return os.path.relpath(Path(s).resolve(), start.resolve())


class OutputCatalog:
    """A static STAC catalog of products at ``root`` (created when missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        cat = self.root / "catalog.json"
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"{self.root} is a file, not a catalog folder; choose another --out")
        if not cat.is_file():
            entries = (
                [p for p in self.root.iterdir() if not p.name.startswith(".")]
                if self.root.is_dir()
                else []
            )
            allowed = {"README.md", "embeddings", "queries", "models"}
            if any(p.name not in allowed for p in entries):
                raise OutputError(
                    f"{self.root} is not a STAC catalog (no catalog.json) and is not empty; "
                    "choose an empty folder or an existing products catalog"
                )
        else:
            try:
                d = json.loads(cat.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise OutputError(f"{cat} is not valid JSON; fix or remove it") from exc
            if d.get("type") != "Catalog":
                raise OutputError(f"{cat} is not a STAC catalog (type {d.get('type')!r})")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on the catalog for a read-modify-write cycle."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".marscope.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, path: Path) -> dict[str, Any]:
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def _write(self, path: Path, d: dict[str, Any], validated: bool = False) -> None:
        if not validated:
            validate_dict(d, href=str(path))
        atomic_write_text(path, json.dumps(d, indent=1))

    def _catalog(self) -> dict[str, Any]:
        path = self.root / "catalog.json"
        if path.is_file():
            return self._read(path)
        return {
            "type": "Catalog",
            "stac_version": "1.1.0",
            "id": CATALOG_ID,
            "title": "MarScope-STAC products",
            "description": "Products made by marscope-stac: embedding sets, models, queries.",
            "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}],
        }

    def add(
        self,
        collection_path: Path,
        collection: dict[str, Any],
        item_path: Path,
        item: dict[str, Any],
    ) -> Path:
        """Write (or replace) an item and its collection, and link the collection from the root.

        Paths are absolute; links between root, collection and item are made relative.
        """
        with self.locked():
            cat = self._catalog()
            cat_path = self.root / "catalog.json"
            child = _link("child", collection_path, self.root)
            child["title"] = collection.get("title", collection["id"])
            if not any(
                lk.get("rel") == "child" and lk["href"] == child["href"] for lk in cat["links"]
            ):
                cat["links"].append(child)
            cdir, idir = collection_path.parent, item_path.parent
            items = []
            if collection_path.is_file():
                old = self._read(collection_path)
                items = [lk for lk in old.get("links", []) if lk.get("rel") == "item"]
            new_item = _link("item", item_path, cdir, "application/geo+json")
            if not any(lk["href"] == new_item["href"] for lk in items):
                items.append(new_item)
            _relink(collection, [_link("root", cat_path, cdir), _link("parent", cat_path, cdir)])
            _relink(collection, items, "item")
            _relink(
                item,
                [
                    _link("root", cat_path, idir),
                    _link("parent", collection_path, idir),
                    _link("collection", collection_path, idir),
                ],
            )
            item["collection"] = collection["id"]
            # validate everything first, then write item, collection, catalog
            for path, d in ((item_path, item), (collection_path, collection), (cat_path, cat)):
                validate_dict(d, href=str(path))
            item_path.parent.mkdir(parents=True, exist_ok=True)
            self._write(item_path, item, validated=True)
            self._write(collection_path, collection, validated=True)
            self._write(cat_path, cat, validated=True)
        return item_path


def _link(rel: str, target: Path, base: Path, media: str = "application/json") -> dict[str, Any]:
    """A relative link from a file in ``base`` to ``target``."""
    href = relative_href(target, base)
    return {"rel": rel, "href": href if href.startswith(".") else f"./{href}", "type": media}


def _relink(obj: dict[str, Any], links: list[dict[str, Any]], *rels: str) -> None:
    """Replace the links of ``obj`` of the given rels (default: those of ``links``)."""
    drop = set(rels) or {lk["rel"] for lk in links}
    obj["links"] = [lk for lk in obj.get("links", []) if lk.get("rel") not in drop] + links


def file_asset(
    path: Path, base: Path, media: str, roles: list[str], title: str, **extra: Any
) -> dict[str, Any]:
    """A STAC asset of a local file (href relative to ``base``, ``file:size``/``checksum``)."""
    return {
        "href": relative_href(path, base) if not str(path).startswith("http") else str(path),
        "type": media,
        "roles": roles,
        "title": title,
        "file:size": path.stat().st_size,
        "file:checksum": file_multihash(path),
        **extra,
    }
