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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from marscope_stac.core.errors import CatalogError, ConfigError, DataError, OutputError
from marscope_stac.core.fs import (
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    read_regular,
    sweep_stale,
)
from marscope_stac.core.owned import begun_elsewhere, sets_only
from marscope_stac.stac.build import (
    JSON_MEDIA_TYPE,
    STAC_ITEM_MEDIA_TYPE,
    file_asset,
    link,
    now_utc,
    relative_href,
    stac_collection,
)
from marscope_stac.stac.schemas import validate_dict
from marscope_stac.stac.validation import is_stac_file

__all__ = [
    "CATALOG_ID",
    "ROOT_VERSION",
    "OutputCatalog",
    "check_base_url",
    "file_asset",
    "item_folder",
    "relative_href",
    "set_self_links",
    "write_static_catalog",
]

CATALOG_ID = "marscope-products"

ROOT_VERSION = "1.0.0"
"""STAC version of the products root.

The root is a STAC 1.0.0 Collection: the embedding sets' objects must be STAC 1.0.0 (the
proposed embeddings extension v0.0.1 requires it), and stac-validator's recursive mode checks
every object with its root's version, so a 1.1.0 root would fail them. Every other object is
1.1.0. A 1.0.0 Collection is used because the 1.0.0 catalog schema is not available offline.
"""

ROOT_TITLE = "MarScope-STAC products"

TERMS_FILE = "LICENSE.md"
"""The products' terms, at the catalog's root: written once, never replaced (edit it)."""

TERMS_TEXT = """# Terms of these products

These products (probability maps, detections, embeddings, model copies and their STAC
metadata) were made with marscope-stac from the inputs that each STAC Item names in its
`derived_from` links: source imagery, an embedding set and a model. The terms of those
inputs apply to the products made from them.

Whoever publishes this catalog may state their own terms here: marscope-stac writes this
file only when it is missing and never replaces it. Every collection links it as its
`license` (`"license": "other"` in STAC).
"""

PROVIDERS = [
    {
        "name": "marscope-stac",
        "description": "Open-source software that made these products: vision-language "
        "search of planetary imagery, published as STAC.",
        "roles": ["processor"],
    }
]
"""The ``providers`` of every products collection."""

LOCK_NAME = ".marscope.lock"
"""The hidden lock file of a products catalog; it also marks a folder this project began."""

_OUR_TOP_ENTRIES = {"README.md", TERMS_FILE, "embeddings", "queries", "models", "basemaps"}
"""What a products catalog holds at its top besides ``catalog.json``."""

SUMMARY_FIELDS = ("marscope:model", "marscope:grid", "marscope:scoring", "gsd", "mlm:framework")
"""Item properties whose values a products collection summarises (the set of values seen)."""


class OutputCatalog:
    """A static STAC catalog of products at ``root`` (created when missing)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        cat = self.root / "catalog.json"
        if self.root.exists() and not self.root.is_dir():
            raise OutputError(f"{self.root} is a file, not a catalog folder; choose another --out")
        if not cat.is_file():
            if foreign := begun_elsewhere(self.root, _OUR_TOP_ENTRIES, LOCK_NAME, sets_only):
                raise OutputError(
                    f"{self.root} is not a STAC catalog of products (no catalog.json) and holds "
                    f"{', '.join(foreign[:3])} but no {LOCK_NAME} of a run of this project, so "
                    "they cannot be told from files of yours; choose an empty folder or an "
                    "existing products catalog"
                )
            return
        try:
            d = json.loads(read_regular(cat).decode("utf-8"))  # as every later read takes it
        except (OSError, ValueError, RecursionError, DataError) as exc:
            why = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
            raise OutputError(f"{cat} is not readable JSON ({why}); fix or remove it") from None
        kind, cid = (
            (d.get("type"), d.get("id")) if isinstance(d, dict) else (type(d).__name__, None)
        )
        links = d.get("links") if isinstance(d, dict) else []
        if not isinstance(links, list) or not all(isinstance(lk, dict) for lk in links):
            kind = f"{kind} without a list of links"
        if kind not in ("Catalog", "Collection") or cid != CATALOG_ID:
            raise OutputError(
                f"{cat} is not a products catalog (type {kind!r}, id {cid!r}); choose an empty "
                "folder or an existing products catalog"
            )

    def claim(self) -> None:
        """Create the folder (when missing) and mark it as one this project began writing.

        Writers call it before their first file: a run stopped before ``catalog.json`` resumes.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / LOCK_NAME).touch(exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on the catalog for a read-modify-write cycle."""
        self.claim()
        with (self.root / LOCK_NAME).open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self, path: Path) -> dict[str, Any]:
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def existing_collection(self, path: Path, claim: bool = False) -> dict[str, Any] | None:
        """The collection at ``path`` as written before, or None when there is none yet.

        Checked before a product is written beside it: a damaged one is refused rather than
        rewritten (its links to the products already there would be lost); ``claim``: then
        :meth:`claim` the folder for the product.

        Raises:
            OutputError: if it is not a readable collection with a list of links.
        """
        if not path.is_file():
            if claim:
                self.claim()
            return None
        why = ""
        try:
            d = json.loads(read_regular(path))
        except (OSError, ValueError, RecursionError, DataError) as exc:
            d, why = None, f"not readable JSON ({str(exc).splitlines()[0][:80]})"
        links = d.get("links") if isinstance(d, dict) else None
        if not why and (not isinstance(d, dict) or d.get("type") != "Collection"):
            why = "not a STAC Collection"
        elif not why and not (
            isinstance(links, list) and all(isinstance(lk, dict) and "href" in lk for lk in links)
        ):
            why = "its links are not a list of links"
        if why:
            raise OutputError(
                f"{path} is damaged: {why}; restore it (its item links) or remove the products "
                "folder's queries to start again"
            )
        if claim:
            self.claim()
        return dict(d)

    def base_url(self) -> str | None:
        """Where the catalog is published, or None: recorded by ``marscope catalog publish``.

        It is the folder of the root's absolute ``self`` link; every object written later
        gets its own self link under it, so a published catalog stays published.
        """
        path = self.root / "catalog.json"
        try:
            links = self._read(path).get("links", [])
        except (OSError, ValueError):
            return None
        for lk in links if isinstance(links, list) else []:
            href = lk.get("href") if isinstance(lk, dict) and lk.get("rel") == "self" else None
            if isinstance(href, str) and href.startswith(("http://", "https://")):
                return href.rsplit("/", 1)[0] + "/"
        return None

    def _write(
        self,
        path: Path,
        d: dict[str, Any],
        validated: bool = False,
        base_url: str | None = None,
    ) -> None:
        base = base_url if base_url is not None else self.base_url()
        if base is not None:
            _self_link(d, path, self.root, base)
            validated = validated and not base  # a self link added is checked; none removed
        if not validated:
            validate_dict(d, href=str(path))
        atomic_write_json(path, d)

    def _catalog(self) -> dict[str, Any]:
        """The root Collection (a root Catalog of earlier versions is upgraded)."""
        path = self.root / "catalog.json"
        old = self._read(path) if path.is_file() else {}
        root = stac_collection(
            CATALOG_ID,
            ROOT_TITLE,
            "Products made by marscope-stac: models, embedding sets, query products.",
            (old.get("extent") and _extent_of(old)) or ([-180.0, -90.0, 180.0, 90.0], [None, None]),
            old.get("summaries", {}),
            version=ROOT_VERSION,
        )
        root["links"] = [lk for lk in old.get("links", []) if lk.get("rel") in ("child", "self")]
        _relink(root, [link("root", path, self.root, JSON_MEDIA_TYPE, ROOT_TITLE)])
        return root

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
            title = collection.get("title", collection["id"])
            child = link("child", collection_path, self.root, JSON_MEDIA_TYPE, title)
            if not any(
                lk.get("rel") == "child" and lk["href"] == child["href"] for lk in cat["links"]
            ):
                cat["links"].append(child)
            self._describe(collection, collection_path, item)
            self._describe(cat, cat_path, None)
            _grow(cat, collection)
            cdir, idir = collection_path.parent, item_path.parent
            items = []
            old = self.existing_collection(collection_path)
            if old is not None:
                items = [lk for lk in old.get("links", []) if lk.get("rel") == "item"]
                _union_extent(collection, old)  # read under the lock: concurrent adds grow it
                _merge_descriptions(collection, old)
            new_item = link("item", item_path, cdir, STAC_ITEM_MEDIA_TYPE, item["id"])
            items = [lk for lk in items if lk["href"] != new_item["href"]] + [new_item]
            up = [
                link("root", cat_path, cdir, JSON_MEDIA_TYPE, ROOT_TITLE),
                link("parent", cat_path, cdir, JSON_MEDIA_TYPE, ROOT_TITLE),
            ]
            _relink(collection, up)
            _relink(collection, items, "item")
            _relink(
                item,
                [
                    link("root", cat_path, idir, JSON_MEDIA_TYPE, ROOT_TITLE),
                    link("parent", collection_path, idir, JSON_MEDIA_TYPE, title),
                    link("collection", collection_path, idir, JSON_MEDIA_TYPE, title),
                ],
            )
            item["collection"] = collection["id"]
            props = item.setdefault("properties", {})
            now = now_utc()
            props.setdefault("created", props.get("processing:datetime") or now)
            props["updated"] = now
            # validate everything first, then write item, collection, catalog
            for path, d in ((item_path, item), (collection_path, collection), (cat_path, cat)):
                validate_dict(d, href=str(path))
            item_path.parent.mkdir(parents=True, exist_ok=True)
            base = self.base_url() or ""  # "" : not published, no self links
            self._write(item_path, item, validated=True, base_url=base)
            self._write(collection_path, collection, validated=True, base_url=base)
            self._write(cat_path, cat, validated=True, base_url=base)
        return item_path

    def remove(self, item_path: Path) -> list[Path]:
        """Take an item out of the catalog and delete its files; the files deleted.

        Only what the item names is deleted (its assets inside its folder, then the item,
        then the folder if nothing else is left in it). The collection loses the item's
        link (its extent is left as it was); the catalog stays valid.

        Raises:
            ConfigError: if the item is not in this catalog, or another item derives from it.
        """
        item_path = item_path.resolve()
        with self.locked():
            if not item_path.is_file() or self.root.resolve() not in item_path.parents:
                raise ConfigError(f"{item_path} is not an item of the catalog {self.root}")
            item = self._read(item_path)
            users = [p for p in _items_deriving_from(self.root, item_path) if p != item_path]
            if users:
                raise ConfigError(
                    f"{item['id']} cannot be removed: {users[0].stem} is derived from it "
                    "(remove that first)"
                )
            up = next((lk for lk in item.get("links", []) if lk.get("rel") == "collection"), None)
            if up is not None:
                coll_path = (item_path.parent / up["href"]).resolve()
                coll = self._read(coll_path)
                coll["links"] = [
                    lk
                    for lk in coll.get("links", [])
                    if lk.get("rel") != "item"
                    or (coll_path.parent / lk["href"]).resolve() != item_path
                ]
                self._write(coll_path, coll)
            return _delete_item_files(item_path, item)

    def _describe(self, coll: dict[str, Any], path: Path, item: dict[str, Any] | None) -> None:
        """Providers, the terms and their link; with an item: its assets and summaries."""
        terms = self.root / TERMS_FILE
        if not terms.exists():
            atomic_write_text(terms, TERMS_TEXT)
        coll.setdefault("providers", PROVIDERS)
        coll["license"] = coll.get("license") or "other"
        _relink(
            coll,
            [link("license", terms, path.parent, "text/markdown", "Terms of these products")],
        )
        if item is None:
            return
        if coll.get("stac_version") == "1.1.0":  # item_assets is core from STAC 1.1
            described = coll.setdefault("item_assets", {})
            for key, asset in item.get("assets", {}).items():
                described[key] = {k: asset[k] for k in ("type", "roles", "title") if k in asset}
        props = item.get("properties", {})
        summaries = coll.setdefault("summaries", {})
        for key in SUMMARY_FIELDS:
            value = props.get(key)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                seen = summaries.get(key)
                values = set(seen) if isinstance(seen, list) else set()
                summaries[key] = sorted(values | {value})


def _merge_descriptions(collection: dict[str, Any], old: dict[str, Any]) -> None:
    """Keep what an earlier write of the collection described: item assets and summaries."""
    described = old.get("item_assets")
    if isinstance(described, dict):
        collection["item_assets"] = {**described, **collection.get("item_assets", {})}
    summaries = collection.setdefault("summaries", {})
    for key, seen in (old.get("summaries") or {}).items():
        if key in SUMMARY_FIELDS and isinstance(seen, list):
            now = summaries.get(key)
            summaries[key] = sorted(set(seen) | set(now if isinstance(now, list) else []))


def _relink(obj: dict[str, Any], links: list[dict[str, Any]], *rels: str) -> None:
    """Replace the links of ``obj`` of the given rels (default: those of ``links``)."""
    drop = set(rels) or {lk["rel"] for lk in links}
    obj["links"] = [lk for lk in obj.get("links", []) if lk.get("rel") not in drop] + links


def _extent_of(d: dict[str, Any]) -> tuple[list[float], list[str | None]]:
    ext = d["extent"]
    return list(ext["spatial"]["bbox"][0]), list(ext["temporal"]["interval"][0])


def _union_extent(collection: dict[str, Any], old: dict[str, Any], known: bool = False) -> None:
    """Grow ``collection``'s extent to cover ``old``'s too (extents only ever grow).

    A null start or end is an open interval, so it stays null; with ``known`` (the root,
    which spans its children) it is a child that says nothing, and the known times count.
    """
    if "extent" not in collection or "extent" not in old:
        return
    (w, s, e, n), (t0, t1) = _extent_of(collection)
    (ow, os_, oe, on), (o0, o1) = _extent_of(old)
    starts = [t for t in (t0, o0) if t]
    ends = [t for t in (t1, o1) if t]
    collection["extent"] = {
        "spatial": {"bbox": [[min(w, ow), min(s, os_), max(e, oe), max(n, on)]]},
        "temporal": {
            "interval": [
                [
                    min(starts) if starts and (known or (t0 and o0)) else None,
                    max(ends) if ends and (known or (t1 and o1)) else None,
                ]
            ]
        },
    }


def _grow(root: dict[str, Any], collection: dict[str, Any]) -> None:
    """Grow the root's extent and summaries to cover a child collection."""
    if "extent" in collection:
        if root.get("summaries", {}).get("marscope:collections"):
            _union_extent(root, collection, known=True)
        else:  # the first child: the root's placeholder extent is replaced
            root["extent"] = json.loads(json.dumps(collection["extent"]))
    summaries = root.setdefault("summaries", {})
    ids = set(summaries.get("marscope:collections", [])) | {collection["id"]}
    summaries["marscope:collections"] = sorted(ids)
    targets = set(summaries.get("ssys:targets", [])) | set(collection.get("ssys:targets", []))
    if targets:
        summaries["ssys:targets"] = sorted(targets)


def item_folder(root: Path, collection_id: str, item_id: str) -> Path:
    """Where :func:`write_static_catalog` puts an item: ``<root>/<collection>/<item>/``."""
    return root / collection_id / item_id


def write_static_catalog(
    root: Path,
    catalog: dict[str, Any],
    collections: Sequence[tuple[dict[str, Any], Sequence[dict[str, Any]]]],
) -> None:
    """Write a self-contained static catalog (relative links with titles, no self links).

    Layout: ``<root>/catalog.json``, ``<root>/<collection>/collection.json`` and
    ``<root>/<collection>/<item>/<item>.json`` (see :func:`item_folder`); asset hrefs must
    already be relative to the item's folder. Links the objects already hold (e.g. a label
    item's ``source``) are kept.
    """
    cat_path = root / "catalog.json"
    title = str(catalog.get("title") or catalog["id"])
    cat_links = [link("root", cat_path, root, JSON_MEDIA_TYPE, title)]
    for coll, items in collections:
        cdir = root / coll["id"]
        coll_path = cdir / "collection.json"
        ctitle = str(coll.get("title") or coll["id"])
        cat_links.append(link("child", coll_path, root, JSON_MEDIA_TYPE, ctitle))
        coll_links = [
            link("root", cat_path, cdir, JSON_MEDIA_TYPE, title),
            link("parent", cat_path, cdir, JSON_MEDIA_TYPE, title),
        ]
        for item in items:
            idir = item_folder(root, coll["id"], item["id"])
            item_path = idir / f"{item['id']}.json"
            coll_links.append(link("item", item_path, cdir, STAC_ITEM_MEDIA_TYPE, item["id"]))
            item["collection"] = coll["id"]
            _relink(
                item,
                [
                    link("root", cat_path, idir, JSON_MEDIA_TYPE, title),
                    link("parent", coll_path, idir, JSON_MEDIA_TYPE, ctitle),
                    link("collection", coll_path, idir, JSON_MEDIA_TYPE, ctitle),
                ],
            )
            atomic_write_json(item_path, item)
        _relink(coll, coll_links)
        atomic_write_json(coll_path, coll)
    _relink(catalog, cat_links)
    atomic_write_json(cat_path, catalog)


def _self_link(d: dict[str, Any], path: Path, folder: Path, base_url: str | None) -> None:
    """Set (``base_url`` given) or remove (None or "") the absolute self link of one object."""
    links = [lk for lk in d.get("links", []) if lk.get("rel") != "self"]
    if base_url:
        href = base_url.rstrip("/") + "/" + path.relative_to(folder).as_posix()
        media = STAC_ITEM_MEDIA_TYPE if d.get("type") == "Feature" else JSON_MEDIA_TYPE
        links.append({"rel": "self", "href": href, "type": media})
    d["links"] = links


def _self_linked(path: Path, folder: Path, base_url: str | None) -> dict[str, Any] | None:
    """One STAC file with its self link set (or removed), or None when it stays as it is."""
    if any(part.startswith(".") for part in path.relative_to(folder).parts):
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # a damaged collection would be published silently
        raise CatalogError(
            f"{path} is not readable JSON ({str(exc).splitlines()[0][:80]}); fix it or move it "
            "out of the catalog, then publish again"
        ) from None
    if not isinstance(d, dict) or "stac_version" not in d:
        return None
    old = d.get("links")
    if not isinstance(old, list) or not all(isinstance(lk, dict) for lk in old):
        raise CatalogError(f"{path}: 'links' is not a list of link objects; fix the file")
    _self_link(d, path, folder, base_url)
    return None if d["links"] == old else d


def check_base_url(base_url: str) -> str:
    """Refuse a base URL that cannot be published under: not http(s), no host, white space.

    Raises:
        ConfigError: naming the problem and an example.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(base_url) if base_url.isprintable() else None
    ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
    ok = ok and not any(c.isspace() for c in base_url) and not (parts and parts.query)
    if not ok:
        raise ConfigError(
            f"--base-url {base_url!r} is not an http(s) URL of a host; give one like "
            "https://example.org/products/"
        )
    return base_url


def set_self_links(root: str | Path, base_url: str | None) -> int:
    """Give every STAC object under ``root`` an absolute ``self`` link under ``base_url``.

    For a catalog about to be published at a known address (STAC's "published" catalogs):
    ``base_url`` is where ``root`` will be served (e.g. ``https://example.org/products/``);
    other links stay relative, so the tree still works when copied. ``base_url=None``
    removes the self links again (a self-contained catalog). Files are rewritten atomically
    under the products catalog lock when there is one. Returns the objects changed.

    Raises:
        ConfigError: for a base URL that is not an http(s) URL of a host.
        CatalogError: if ``root`` is not a folder holding a STAC catalog (``catalog.json``
            or ``collection.json``), or a STAC file's links are malformed.
    """
    if base_url is not None:
        check_base_url(base_url)
    folder = Path(root)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise CatalogError(f"{folder} {what}; give the folder of a STAC catalog to publish")
    roots = [folder / n for n in ("catalog.json", "collection.json") if (folder / n).is_file()]
    if not roots or not any(is_stac_file(p) for p in roots):
        raise CatalogError(
            f"{folder} holds no readable STAC catalog.json or collection.json; give the "
            "folder of a STAC catalog to publish"
        )
    sweep_stale(folder, depth=8)  # what killed runs of this command left
    lock = folder / LOCK_NAME
    with contextlib.ExitStack() as stack:
        stack.enter_context(folder_lock(folder))  # two publishes of one catalog take turns
        if lock.is_file():  # a products catalog: wait for writers to finish
            fh = stack.enter_context(lock.open("a"))
            fcntl.flock(fh, fcntl.LOCK_EX)
        # every file read and checked first: a damaged one stops the publish before any write
        updates = [(p, _self_linked(p, folder, base_url)) for p in sorted(folder.rglob("*.json"))]
        changed = [(p, d) for p, d in updates if d is not None]
        for path, d in changed:
            atomic_write_json(path, d)
    return len(changed)


def _items_deriving_from(root: Path, item_path: Path) -> list[Path]:
    """The items under ``root`` with a ``derived_from`` link to ``item_path``."""
    found = []
    for path in sorted(root.resolve().glob("*/*/*.json")):
        if path.stem != path.parent.name:
            continue
        try:
            links = json.loads(path.read_text(encoding="utf-8")).get("links", [])
        except (OSError, ValueError):
            continue
        for lk in links if isinstance(links, list) else []:
            if not isinstance(lk, dict):
                continue
            href = lk.get("href")
            if not (lk.get("rel") == "derived_from" and isinstance(href, str)) or "://" in href:
                continue
            if (path.parent / href).resolve() == item_path:
                found.append(path)
                break
    return found


def _delete_item_files(item_path: Path, item: dict[str, Any]) -> list[Path]:
    """Delete an item's own files (assets inside its folder), the item, and its empty folder."""
    folder = item_path.parent
    deleted = []
    for asset in item.get("assets", {}).values():
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or "://" in href:
            continue
        path = (folder / href).resolve()
        if path.parent == folder and path.is_file():
            path.unlink()
            deleted.append(path)
    item_path.unlink()
    deleted.append(item_path)
    with contextlib.suppress(OSError):  # other files in it: the folder stays
        folder.rmdir()
    return deleted
