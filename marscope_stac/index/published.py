"""Embedding sets published at a URL: fetched once into a local cache, then queried locally.

An embedding set is published as a STAC item (see :mod:`marscope_stac.stac.publish`) whose
assets are its GeoParquet, FAISS index, manifest and scoring arrays. A query needs only the
manifest and the scoring arrays, so :func:`open_published_set` fetches just those (and the
item itself, for the products' lineage) from an http(s) or s3 URL into the cache folder
(:func:`cache_folder`), in ranges of :data:`RANGE_BYTES` with :data:`READS_IN_FLIGHT`
reads in flight, each retried with backoff (see :mod:`marscope_stac.stac.remote`). A fetch
that is interrupted resumes where it stopped; every file is checked against its asset's
``file:size`` and ``file:checksum`` before it is used. The cached set is an ordinary
:class:`~marscope_stac.index.store.EmbeddingSet` that remembers its URL
(:meth:`~marscope_stac.index.store.EmbeddingSet.published_item`), so products made from it
link to the published item, model and sources by their URLs.

Each later open reads the item again (one small request) and fetches only what changed; when
the URL cannot be reached, a complete cached copy is used as it is, with a warning in the log.

Cache layout: ``<cache>/sets/<digest of the item URL>/<item id>/`` holding ``manifest.json``,
the ``.npy`` arrays, the item as ``<item id>.json`` and ``published.json`` (the URL and the
checksums of the files fetched).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import CatalogError, ConfigError, DataError
from marscope_stac.core.fs import atomic_write_bytes, atomic_write_json, folder_lock
from marscope_stac.index.store import PUBLISHED_FILE, EmbeddingSet
from marscope_stac.stac.remote import RetryPolicy, join_url, read_range, read_text

__all__ = [
    "RANGE_BYTES",
    "READS_IN_FLIGHT",
    "SET_ASSETS",
    "cache_folder",
    "open_published_set",
]

log = logging.getLogger(__name__)

SET_ASSETS = {
    "manifest": "manifest.json",
    "cells": "cells.npy",
    "vectors": "vectors.npy",
    "vectors-int8": "vectors-int8.npy",
    "vectors-scale": "vectors-scale.npy",
    "background": "background.npy",
}
"""Asset key of a published set -> its file in the cached set (what a query reads)."""

_REQUIRED = ("manifest", "cells", "vectors", "vectors-int8", "vectors-scale")

RANGE_BYTES = 16 << 20
"""Bytes per range request when a file is fetched."""

READS_IN_FLIGHT = 8
"""Range requests in flight at once (hides the round trip; a server's fair share)."""

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def cache_folder() -> Path:
    """Where published sets are cached.

    ``MARSCOPE_CACHE`` when set, else ``$XDG_CACHE_HOME/marscope-stac`` (by default
    ``~/.cache/marscope-stac``).
    """
    own = os.environ.get("MARSCOPE_CACHE")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "marscope-stac"


def _read_json(url: str) -> dict[str, Any]:
    text = read_text(url)
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CatalogError(f"{url} is not a JSON document ({exc})") from None
    if not isinstance(d, dict):
        raise CatalogError(f"{url} is not a STAC object")
    return d


def _is_set_item(d: dict[str, Any]) -> bool:
    assets = d.get("assets")
    return d.get("type") == "Feature" and isinstance(assets, dict) and "manifest" in assets


def _embedding_item(url: str) -> tuple[str, dict[str, Any]]:
    """The URL and JSON of the set's item, given the item or the collection holding it."""
    d = _read_json(url)
    if d.get("type") in ("Collection", "Catalog"):
        links = [lk for lk in d.get("links") or [] if isinstance(lk, dict)]
        items = [lk["href"] for lk in links if lk.get("rel") == "item" and "href" in lk]
        if len(items) != 1:
            raise ConfigError(
                f"{url} holds {len(items)} items, not one embedding set; give the URL of the "
                "set's STAC item (.../embeddings/SET/SET.json)"
            )
        url = join_url(url, str(items[0]))
        d = _read_json(url)
    if not _is_set_item(d):
        raise ConfigError(
            f"{url} is not the STAC item of an embedding set (it has no manifest asset); give "
            "the item that 'marscope embed' published (.../embeddings/SET/SET.json)"
        )
    missing = [k for k in _REQUIRED if k not in d["assets"]]
    if missing:
        raise ConfigError(
            f"the embedding set at {url} has no {', '.join(missing)} asset (written by an "
            "earlier version); its publisher can add them with 'marscope upgrade'"
        )
    return url, d


def _set_folder(item_url: str, item: dict[str, Any]) -> Path:
    digest = hashlib.sha256(item_url.encode()).hexdigest()[:16]
    name = str(item.get("id", ""))
    if not _SAFE_ID.fullmatch(name):
        name = "set"
    return cache_folder() / "sets" / digest / name


class _Fetch:
    """One file fetched in ranges into ``.<name>.part``, resumable, checked, then renamed."""

    def __init__(self, url: str, target: Path, size: int, checksum: str | None) -> None:
        self.url, self.target, self.size, self.checksum = url, target, size, checksum
        self.part = target.with_name(f".{target.name}.part")
        self.done_file = target.with_name(f".{target.name}.part.done")

    def _done(self) -> set[int]:
        """Ranges already in the part file (when it was started for the same checksum)."""
        try:
            lines = self.done_file.read_text().split("\n")
        except OSError:
            return set()
        if not self.part.is_file() or lines[0] != f"{self.checksum}:{self.size}":
            return set()
        return {int(x) for x in lines[1:-1] if x.isdigit()}  # the last one may be cut short

    def run(self, bar: Callable[[int], Any]) -> None:
        spans = [(a, min(a + RANGE_BYTES, self.size)) for a in range(0, self.size, RANGE_BYTES)]
        done = self._done()
        if not done:
            self.done_file.write_text(f"{self.checksum}:{self.size}\n")
        bar(sum(b - a for k, (a, b) in enumerate(spans) if k in done))
        policy = RetryPolicy()
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, self.size)
            lock = threading.Lock()
            with self.done_file.open("a") as log_done, ThreadPoolExecutor(READS_IN_FLIGHT) as ex:

                def one(k: int) -> int:
                    a, b = spans[k]
                    os.pwrite(fd, read_range(self.url, a, b, policy), a)
                    with lock:
                        log_done.write(f"{k}\n")
                        log_done.flush()
                    return b - a

                todo = [ex.submit(one, k) for k in range(len(spans)) if k not in done]
                try:
                    for f in as_completed(todo):
                        bar(f.result())
                except BaseException:
                    for f in todo:
                        f.cancel()
                    raise
        finally:
            os.close(fd)
        self._finish()

    def _finish(self) -> None:
        if self.checksum is not None and file_multihash(self.part) != self.checksum:
            self.part.unlink()
            self.done_file.unlink(missing_ok=True)
            raise DataError(
                f"{self.url} does not match its file:checksum (changed while it was read, or "
                "damaged on the way); run the query again to fetch it anew"
            )
        self.part.replace(self.target)
        self.done_file.unlink(missing_ok=True)


def _wanted(item_url: str, item: dict[str, Any]) -> list[tuple[str, str, int, str | None]]:
    """(file, URL, size, checksum) of each asset a query needs."""
    out = []
    for key, name in SET_ASSETS.items():
        asset = item["assets"].get(key)
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
            continue
        size = asset.get("file:size")
        if not isinstance(size, int) or size < 0:
            raise ConfigError(
                f"asset {key!r} of {item_url} has no file:size; its publisher can add it with "
                "'marscope catalog publish'"
            )
        checksum = asset.get("file:checksum")
        out.append((name, join_url(item_url, asset["href"]), size, checksum))
    return out


def _current(folder: Path, have: dict[str, Any], name: str, size: int, checksum: Any) -> bool:
    """Whether the cached ``name`` is the published file (as fetched and recorded)."""
    path = folder / name
    return have.get(name) == [size, checksum] and path.is_file() and path.stat().st_size == size


def _fetched(folder: Path) -> dict[str, Any]:
    """The files recorded as fetched in ``folder`` (empty when none or unreadable)."""
    try:
        state = json.loads((folder / PUBLISHED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    files = state.get("files") if isinstance(state, dict) else None
    return files if isinstance(files, dict) else {}


def _fresh(folder: Path, wanted: list[tuple[str, str, int, str | None]]) -> bool:
    """Whether the cached set holds every wanted file as published."""
    have = _fetched(folder)
    return bool(have) and all(_current(folder, have, n, z, c) for n, _, z, c in wanted)


def _fetch_set(
    item_url: str, item: dict[str, Any], folder: Path, progress: bool
) -> dict[str, list[Any]]:
    wanted = _wanted(item_url, item)
    have = _fetched(folder)
    # until every file is fetched the folder is no set: never used as the offline fallback
    (folder / PUBLISHED_FILE).unlink(missing_ok=True)
    todo = [w for w in wanted if not _current(folder, have, w[0], w[2], w[3])]
    total = sum(size for _, _, size, _ in todo)
    desc = f"fetching {item.get('id', 'the set')}"
    with tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, disable=not progress or not todo
    ) as bar:
        for name, url, size, checksum in todo:
            (folder / name).unlink(missing_ok=True)  # a stale copy never passes for a new one
            _Fetch(url, folder / name, size, checksum).run(bar.update)
    return {name: [size, checksum] for name, _, size, checksum in wanted}


def open_published_set(url: str, *, progress: bool = False) -> EmbeddingSet:
    """The embedding set published at ``url``, fetched into the cache (see the module docstring).

    Args:
        url: The http(s) or s3 URL of the set's STAC item, or of a collection holding it.
        progress: Show a progress bar (bytes, rate) while files are fetched.

    Raises:
        CatalogError: if the URL cannot be read (after retries) and nothing is cached.
        ConfigError: if the URL is not an embedding set's item.
        DataError: if a fetched file does not match its ``file:checksum``.
    """
    try:
        item_url, item = _embedding_item(url)
    except CatalogError as exc:
        cached = _cached(url)
        if cached is None:
            raise
        log.warning("%s; using the copy of the set cached in %s", exc, cached.root)
        return cached
    folder = _set_folder(item_url, item)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        if not _fresh(folder, _wanted(item_url, item)):
            files = _fetch_set(item_url, item, folder, progress)
            atomic_write_bytes(folder / f"{folder.name}.json", json.dumps(item).encode())
            atomic_write_json(
                folder / PUBLISHED_FILE, {"url": url, "item": item_url, "files": files}
            )
    return EmbeddingSet(folder)


def _cached(url: str) -> EmbeddingSet | None:
    """The complete cached copy of the set published at ``url``, if one was fetched before."""
    root = cache_folder() / "sets"
    for state_file in sorted(root.glob(f"*/*/{PUBLISHED_FILE}")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and url in (state.get("url"), state.get("item")):
            return EmbeddingSet(state_file.parent)
    return None
