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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from marscope_stac.core.checksums import file_multihash, text_vector_checksum
from marscope_stac.core.errors import CatalogError, DataError
from marscope_stac.core.fs import read_regular, safe_resolve
from marscope_stac.core.text import counted
from marscope_stac.stac.remote import is_remote, join_url, read_bytes, url_size
from marscope_stac.stac.schemas import _no_constant, validate_dict

__all__ = [
    "STRUCTURE_RELS",
    "InvalidCatalogError",
    "ValidationReport",
    "is_stac_file",
    "validate_catalog",
]


@dataclass
class ValidationReport:
    """What :func:`validate_catalog` checked, and every problem it found."""

    root: Path | str
    objects: int = 0
    schemas: set[str] = field(default_factory=set)
    links: int = 0
    assets: int = 0
    remote: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        if self.problems:
            found = counted(len(self.problems), "problem")
            return f"{self.root}: {found} in {counted(self.objects, 'STAC object')}"
        remote = f" ({counted(self.remote, 'remote href')} not fetched)" if self.remote else ""
        return (
            f"{self.root}: {counted(self.objects, 'STAC object')} valid against "
            f"{counted(len(self.schemas), 'schema')}; {counted(self.links, 'link')} and "
            f"{counted(self.assets, 'asset')} resolve, sizes and checksums match (offline){remote}"
        )


class InvalidCatalogError(CatalogError):
    """A catalog has problems; :attr:`problems` lists them, one line each."""

    def __init__(self, report: ValidationReport) -> None:
        n = len(report.problems)
        first = report.problems[0] if report.problems else ""
        more = f" (and {n - 1} more; run 'marscope validate' to see all)" if n > 1 else ""
        super().__init__(f"{first}{more}")
        self.problems = list(report.problems)
        self.report = report


STRUCTURE_RELS = frozenset({"root", "parent", "child", "item", "collection"})
"""Links that make the catalog's tree: their targets must be inside the catalog's folder."""


def _iter_json(root: Path) -> Iterable[Path]:
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        yield path


def _is_remote(href: str) -> bool:
    return href.startswith(("http://", "https://", "s3://", "gs://"))


class _Checker:
    """Checks the links and assets of the STAC objects of one catalog folder."""

    def __init__(self, report: ValidationReport, boundary: Path, checksums: bool) -> None:
        self.report, self.boundary, self.checksums = report, safe_resolve(boundary), checksums
        self.tree: dict[Path, list[Path]] = {}  # child / item edges, for cycles
        self.digests: dict[Path, str] = {}
        self.objects: dict[Path, Mapping[str, Any]] = {}  # every STAC object read
        self.owners: dict[Path, list[Path]] = {}  # object -> objects linking it (child/item)
        self.up: dict[Path, dict[str, Path]] = {}  # object -> its parent / collection targets
        self.selves: dict[Path, str] = {}  # object -> its absolute self href

    def problem(self, where: Path, text: str) -> None:
        self.report.problems.append(f"{where}: {text}")

    def _target(self, where: Path, href: str, what: str) -> Path | None:
        """The local file an href names, or None (remote, or reported as a problem)."""
        if _is_remote(href):
            self.report.remote += 1
            return None
        if href.startswith("file://"):
            href = href[len("file://") :]
        if Path(href).is_absolute():
            self.problem(where, f"{what} has an absolute local path {href}; make it relative")
            return None
        return safe_resolve(where.parent / href.split("#", 1)[0])

    def _inside(self, path: Path) -> bool:
        return path == self.boundary or self.boundary in path.parents

    def links(self, where: Path, d: Mapping[str, Any]) -> None:
        links = d.get("links")
        if not isinstance(links, list):
            self.problem(where, "links is not a list")
            return
        for lk in links:
            if not isinstance(lk, Mapping):
                self.problem(where, f"a link is not an object: {lk!r:.60}")
                continue
            rel, href = str(lk.get("rel", "")), str(lk.get("href", ""))
            if rel == "self" and _is_remote(href):
                self.selves[safe_resolve(where)] = href
            if rel == "self" or not href:
                continue
            target = self._target(where, href, f"link {rel!r}")
            if target is None:
                continue
            self.report.links += 1
            if rel in STRUCTURE_RELS and not self._inside(target):
                self.problem(where, f"link {rel!r} leaves the catalog's folder: {href}")
            elif not target.is_file():
                self.problem(where, f"link {rel!r} points at a missing file: {href}")
            elif not self._inside(target) and not is_stac_file(target):
                self.problem(where, f"link {rel!r} leaves the catalog for a non-STAC file: {href}")
            elif rel in ("child", "item"):
                self.tree.setdefault(safe_resolve(where), []).append(target)
                self.owners.setdefault(target, []).append(safe_resolve(where))
            elif rel in ("parent", "collection"):
                self.up.setdefault(safe_resolve(where), {})[rel] = target

    def assets(self, where: Path, d: Mapping[str, Any]) -> None:
        assets = d.get("assets") or {}
        if not isinstance(assets, Mapping):
            self.problem(where, "assets is not an object")
            return
        for key, asset in assets.items():
            if not isinstance(asset, Mapping):
                self.problem(where, f"asset {key!r} is not an object")
                continue
            href = str(asset.get("href", ""))
            target = self._target(where, href, f"asset {key!r}")
            if target is None:
                continue
            self.report.assets += 1
            if not self._inside(target):
                self.problem(where, f"asset {key!r} leaves the catalog's folder: {href}")
            elif not target.is_file():
                what = "is not a regular file" if target.exists() else "is missing"
                self.problem(where, f"asset {key!r} {what}: {href}")
            else:
                self._check_file(where, key, target, asset)

    def _check_file(self, where: Path, key: str, target: Path, asset: Mapping[str, Any]) -> None:
        size = asset.get("file:size")
        if size is not None and target.stat().st_size != size:
            self.problem(
                where, f"asset {key!r} is {target.stat().st_size} bytes, file:size says {size}"
            )
            return
        checksum = asset.get("file:checksum")
        if checksum and self.checksums:
            if target not in self.digests:
                self.digests[target] = file_multihash(target)
            if self.digests[target] != checksum:
                self.problem(where, f"asset {key!r} does not match its file:checksum")

    def cycles(self) -> None:
        """Report each child/item link that leads back to an object above it."""
        state: dict[Path, int] = {}  # 1 on the path being walked, 2 done
        for start in sorted(self.tree):
            if state.get(start):
                continue
            stack: list[tuple[Path, Iterator[Path]]] = [(start, iter(self.tree[start]))]
            state[start] = 1
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    state[node] = 2
                    stack.pop()
                elif state.get(child) == 1:
                    self.problem(node, f"link cycle: a child/item link leads back to {child}")
                elif not state.get(child):
                    state[child] = 1
                    stack.append((child, iter(self.tree.get(child, []))))

    def structure(self, root: Path, whole_tree: bool) -> None:
        """Checks across objects: ids, collections, parents, orphans and self links."""
        by_collection: dict[tuple[Path, str], list[Path]] = {}
        for path, d in self.objects.items():
            ups = self.up.get(path, {})
            owners = self.owners.get(path, [])
            for owner in owners:
                by_collection.setdefault((owner, str(d.get("id"))), []).append(path)
            if d.get("type") == "Feature":
                self._collection_field(path, d, ups, owners)
            parent = ups.get("parent")
            if parent is not None and owners and parent not in owners and parent in self.objects:
                self.problem(
                    path,
                    f"parent link names {parent.name} ({self.objects[parent].get('id')!r}), but "
                    f"{owners[0].name} ({self.objects[owners[0]].get('id')!r}) is what links it",
                )
        for (owner, oid), paths in sorted(by_collection.items()):
            if len(set(paths)) > 1:
                names = ", ".join(str(p) for p in sorted(set(paths)))
                self.problem(owner, f"links two or more objects with the id {oid!r}: {names}")
        if whole_tree:
            self._orphans(root)
            self._unpublished()
        self._self_links()

    def _collection_field(
        self, path: Path, d: Mapping[str, Any], ups: dict[str, Path], owners: list[Path]
    ) -> None:
        field_id = d.get("collection")
        linked = [ups[k] for k in ("collection",) if k in ups] + owners
        for target in linked:
            other = self.objects.get(target)
            if other is None or other.get("type") != "Collection":
                continue
            if field_id != other.get("id"):
                self.problem(
                    path,
                    f"its collection field says {field_id!r}, but it belongs to the collection "
                    f"{other.get('id')!r} ({target.name}); make them agree",
                )
                return

    def _orphans(self, root: Path) -> None:
        tops = {safe_resolve(p) for p in (root / "catalog.json", root / "collection.json")}
        for path, d in sorted(self.objects.items()):
            if path in tops or self.owners.get(path):
                continue
            if d.get("type") in ("Feature", "Collection"):
                self.problem(path, "no catalog or collection links this object (an orphan)")

    def _unpublished(self) -> None:
        """In a published catalog (absolute self links), every object has its self link."""
        if not self.selves:
            return
        for path in sorted(self.objects):
            if path not in self.selves:
                self.problem(
                    path,
                    "no self link, while the catalog is published (others have absolute self "
                    "links); run marscope catalog publish again",
                )

    def _self_links(self) -> None:
        """Every absolute self link names its own file under one published base URL."""
        bases: dict[str, list[Path]] = {}
        for path, href in self.selves.items():
            try:
                rel = path.relative_to(self.boundary).as_posix()
            except ValueError:
                continue
            if not href.endswith("/" + rel):
                self.problem(path, f"self link {href} does not name this file ({rel})")
                continue
            bases.setdefault(href[: -len(rel)], []).append(path)
        if len(bases) > 1:
            main = max(bases, key=lambda b: len(bases[b]))
            for base, paths in sorted(bases.items()):
                if base != main:
                    for path in paths:
                        self.problem(
                            path, f"self link is under {base}, the rest of the catalog under {main}"
                        )

    def text_vectors(self, root: Path) -> None:
        """Verify the checksums of the text-vector caches of the embedding sets under root."""
        for folder in sorted(root.rglob("text-vectors")):
            manifest = folder.parent / "manifest.json"
            try:
                model = json.loads(manifest.read_text(encoding="utf-8"))["model"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            key = json.dumps(model, sort_keys=True)
            for entry in sorted(folder.glob("*.json")):
                self._text_vector(entry, key)

    def _text_vector(self, entry: Path, key: str) -> None:
        import numpy as np

        try:
            d = json.loads(entry.read_text(encoding="utf-8"))
            if "checksum" not in d:
                return  # an entry of an earlier version: recomputed when used
            data = np.asarray(d["vector"], "<f4").tobytes()
            ok = d["checksum"] == text_vector_checksum(key, d["text"], d["templates"], data)
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            ok = False
        if not ok:
            self.problem(entry, "cached text vector is damaged or altered (checksum mismatch)")


def is_stac_file(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a JSON object with ``stac_version``."""
    try:
        d = json.loads(read_regular(path))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, DataError):
        return False
    return isinstance(d, dict) and "stac_version" in d


def _boundary(root: Path) -> Path:
    """The folder a catalog's files must stay in: the folder given, or a file's catalog root.

    A ``stac`` folder that ``catalog build`` wrote beside the GeoTIFFs it describes (in
    place, so marked) has their folder as its boundary.
    """
    if root.is_dir():
        return _in_place(root)
    try:
        d = json.loads(read_regular(root))
        href = next(lk["href"] for lk in d.get("links", []) if lk.get("rel") == "root")
    except (OSError, ValueError, RecursionError, DataError, StopIteration, KeyError, TypeError):
        return root.parent
    except AttributeError:  # not an object, or links that are not
        return root.parent
    target = safe_resolve(root.parent / str(href))
    inside = target.parent in safe_resolve(root).parents
    if _is_remote(str(href)) or not target.is_file() or not inside:
        return root.parent  # the root must be a catalog above the file
    try:
        kind = json.loads(read_regular(target)).get("type")
    except (OSError, ValueError, RecursionError, DataError, AttributeError):
        return root.parent
    return _in_place(target.parent) if kind in ("Catalog", "Collection") else root.parent


def _in_place(folder: Path) -> Path:
    """``folder``, or its parent when it is ``catalog build``'s ``FOLDER/stac`` (marked so)."""
    from marscope_stac.core.owned import read_mark

    mark = read_mark(folder)
    if mark is not None and mark["kind"] == "catalog" and mark.get("describes") == "..":
        return folder.parent
    return folder


REMOTE_LIMIT = 20_000
"""Most STAC objects :func:`validate_catalog` fetches from a URL."""


class _Mirror:
    """A local copy of a catalog published at a URL, laid out as on its host.

    The catalog's JSON files are fetched through their structure links (and lineage links
    to STAC files on the same host); each asset is fetched to check its checksum, or only
    its size (``HEAD``) without checksums, kept as a sparse file of that size.
    """

    def __init__(self, url: str, folder: Path, checksums: bool) -> None:
        self.url = url if url.endswith(".json") else url.rstrip("/") + "/catalog.json"
        parts = urlsplit(self.url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.folder, self.checksums = folder, checksums
        self.root = self.local(self.url)

    def local(self, url: str) -> Path:
        return self.folder / unquote(urlsplit(url).path).lstrip("/")

    def fetch_tree(self) -> None:
        queue, seen = [self.url], {self.url}
        while queue:
            if len(seen) > REMOTE_LIMIT:
                raise CatalogError(f"{self.url} has more than {REMOTE_LIMIT} STAC objects")
            url = queue.pop()
            try:
                data = read_bytes(url)
            except CatalogError:
                if url == self.url:
                    raise
                continue  # reported as a link to a missing file
            target = self.local(url)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            try:
                d = json.loads(data)
            except (ValueError, RecursionError):
                continue
            if not isinstance(d, dict):
                continue
            for lk in d.get("links") or []:
                href = lk.get("href") if isinstance(lk, dict) else None
                if not isinstance(href, str) or lk.get("rel") == "self" or _is_remote(href):
                    continue
                full = join_url(url, href).split("#", 1)[0]
                if not full.startswith(self.origin) or full in seen:
                    continue
                if full.endswith(".json"):
                    seen.add(full)
                    queue.append(full)
                else:  # a linked file that is not STAC (a licence, a README)
                    self._asset(full)
            for asset in (d.get("assets") or {}).values():
                href = asset.get("href") if isinstance(asset, dict) else None
                if isinstance(href, str) and not _is_remote(href):
                    self._asset(join_url(url, href))

    def _asset(self, url: str) -> None:
        if not url.startswith(self.origin):
            return
        target = self.local(url)
        if target.exists():
            return
        try:
            data = read_bytes(url) if self.checksums else url_size(url)
        except CatalogError:
            return  # reported as a missing asset
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            with target.open("wb") as fh:
                fh.truncate(data)

    def name(self, line: str) -> str:
        """A problem line with the local copy's paths named by their URLs."""
        return line.replace(str(self.folder), self.origin)


def _validate_url(url: str, checksums: bool) -> ValidationReport:
    """:func:`validate_catalog` of a catalog at an http(s) URL (see :class:`_Mirror`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="marscope-validate-") as tmp:
        mirror = _Mirror(url, Path(tmp), checksums)
        mirror.fetch_tree()
        try:
            report = validate_catalog(mirror.root.parent, checksums=checksums)
        except InvalidCatalogError as exc:
            exc.report.problems = [mirror.name(p) for p in exc.report.problems]
            exc.report.root = url
            raise InvalidCatalogError(exc.report) from None
        except CatalogError as exc:
            raise CatalogError(mirror.name(str(exc))) from None
        report.root = url
        return report


def _check_root(root: Path) -> None:
    """Refuse a local path that does not exist, is not a file or folder, or is not JSON."""
    if not root.exists():
        raise CatalogError(
            f"{root} does not exist; give the path of a STAC catalog folder or JSON file"
        )
    if root.exists() and not root.is_dir() and not root.is_file():
        read_regular(root)  # raises, naming what it is (a FIFO, a device, a socket)
    if root.is_file() and root.suffix != ".json":
        raise CatalogError(f"{root} is not a JSON file; give a catalog folder or a STAC JSON file")


def _read_json(json_path: Path, report: ValidationReport) -> Any:
    """Return the parsed JSON file, or None after reporting why it cannot be read."""
    try:
        return json.loads(read_regular(json_path), parse_constant=_no_constant)
    except RecursionError:
        report.problems.append(f"{json_path}: not valid JSON: nested too deeply")
    except DataError as exc:
        report.problems.append(str(exc))
    except OSError as exc:
        report.problems.append(f"{json_path}: cannot be read: {exc.strerror or exc}")
    except (UnicodeDecodeError, ValueError) as exc:
        report.problems.append(f"{json_path}: not valid JSON: {str(exc)[:160]}")
    return None


def _check_schemas(json_path: Path, d: dict[str, Any], report: ValidationReport) -> None:
    """Validate one STAC object against its schemas, reporting what fails."""
    try:
        report.schemas.update(validate_dict(d, href=str(json_path)))
    except CatalogError as exc:
        report.problems.append(str(exc))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a malformed object
        report.problems.append(
            f"{json_path}: not a well-formed STAC object ({type(exc).__name__}: {str(exc)[:120]})"
        )


def validate_catalog(
    path: str | Path, *, checksums: bool = True, within: str | Path | None = None
) -> ValidationReport:
    """Check every STAC object of a catalog folder (or one STAC JSON file), offline.

    Each object is validated against the core and extension schemas; its links and assets
    must resolve, the tree's links (root, parent, child, item, collection) and every asset
    must stay inside the catalog's folder, no href may be an absolute local path, assets must
    match their ``file:size`` and ``file:checksum``, and child/item links must not form a
    cycle. Links to other STAC objects outside the folder (lineage: ``derived_from``) must
    resolve to STAC files. Remote hrefs are not fetched.

    Args:
        path: A folder holding a STAC catalog, a ``catalog.json`` / ``collection.json``, an
            item JSON file, or the http(s) or s3 URL of a published catalog (its ``catalog.json``
            or its folder): the tree is fetched (with retries) into a temporary folder and
            checked the same way; problems name the URLs.
        checksums: Verify ``file:checksum`` (reads every asset; sizes are always checked).
        within: The folder every file must stay in, when it is not the catalog's folder
            (e.g. a catalog in ``DIR/stac`` describing the GeoTIFFs of ``DIR`` in place).

    Raises:
        CatalogError: if the path does not exist or holds no STAC object.
        InvalidCatalogError: with every problem found (one line each), if there is any.
    """
    if str(path) == "":
        raise CatalogError("the path to validate is empty; give a catalog, item or folder")
    if is_remote(str(path)):
        return _validate_url(str(path), checksums)
    root = Path(path)
    _check_root(root)
    report = ValidationReport(root=root)
    if within is not None and not Path(within).is_dir():
        raise CatalogError(f"--within {within} is not a folder; give the folder files stay in")
    boundary = Path(within) if within is not None else _boundary(root)
    checker = _Checker(report, boundary, checksums)
    for json_path in _iter_json(root):
        d = _read_json(json_path, report)  # None when unreadable (a problem is reported)
        if not isinstance(d, dict) or "stac_version" not in d:
            continue
        report.objects += 1
        checker.objects[safe_resolve(json_path)] = d
        _check_schemas(json_path, d, report)
        checker.links(json_path, d)
        checker.assets(json_path, d)
    checker.cycles()
    # a folder of standalone items (a model folder) has no tree to be orphans of; with a
    # root or a collection, every item and collection must be reached from the root
    tree = any((root / n).is_file() for n in ("catalog.json", "collection.json")) or any(
        d.get("type") == "Collection" for d in checker.objects.values()
    )
    checker.structure(root, whole_tree=root.is_dir() and tree)
    if root.is_dir():
        checker.text_vectors(root)
    if report.objects == 0 and not report.problems:
        raise CatalogError(f"no STAC object found in {root}; is it a STAC catalog?")
    if report.problems:
        raise InvalidCatalogError(report)
    return report
