"""A static web map: the products and the map page as plain files any web server can serve."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from marscope_stac.core.errors import ConfigError, SkippedInputWarning
from marscope_stac.web.api import ServerState, list_products, page_config, source_items, web_dir
from marscope_stac.web.assets import missing, vendor_dir

__all__ = [
    "write_static_site",
]


def write_static_site(products: str | Path, out: str | Path) -> Path:
    """A static copy of the map for any static host: browse published products, no querying.

    ``out`` gets the page, the vendor files, ``config.json`` / ``queries.json``, the source
    items the popups link to, a copy of the products catalog and of the input catalogs beside
    it that the products' lineage links name (reflinks where possible), so ``marscope
    validate`` passes on the copy. Serve it with range requests (PMTiles needs them).

    Raises:
        ConfigError: if the web map files are not installed.
        OutputError: if ``out`` exists, is not empty and is not a site this program wrote
            (an earlier site is replaced).
    """
    from marscope_stac.core.fs import check_apart, staged_directory

    gone = missing()
    if gone:
        raise ConfigError(
            f"the web map files are not installed ({gone[0]}); run "
            "'python -m marscope_stac.web' (it downloads them from the npm registry)"
        )
    src = Path(products)
    if not (src / "catalog.json").is_file():
        raise ConfigError(
            f"{products} is not a products catalog (no catalog.json); give the folder that "
            "'marscope query' wrote (e.g. products)"
        )
    check_apart(out, {f"the products folder {products}": src}, "--static")
    with staged_directory(out, overwrite=True, kind="site") as stage:  # an earlier site only
        web = web_dir()
        for name in ("index.html", "app.js", "app.css"):
            shutil.copy2(web / name, stage / name)
        shutil.copytree(vendor_dir(), stage / "vendor")
        shutil.copytree(
            src, stage / "products", copy_function=_link_or_copy, ignore=_outside_or_hidden(src)
        )
        state = ServerState(src, None, static=True, sources=source_items(src, None))
        (stage / "sources").mkdir()
        for sid, (path, _) in state.sources.items():
            shutil.copy2(path, stage / "sources" / f"{sid}.json")
        _copy_lineage(src, stage)
        index = (stage / "index.html").read_text(encoding="utf-8")
        index = index.replace('<html lang="en">', '<html lang="en" data-static="1">')
        (stage / "index.html").write_text(index, encoding="utf-8")
        records = list_products(src)
        (stage / "queries.json").write_text(json.dumps(records), encoding="utf-8")
        config = page_config(state)
        (stage / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return Path(out)


def _copy_lineage(products: Path, stage: Path) -> None:
    """Copy the input catalogs the products link to (``emb:source-data``) beside them.

    A catalog that sits beside the products folder (``catalogs/demo`` next to ``products``)
    is copied to the same place relative to the site's ``products``, so the lineage links
    of the copy resolve as they do in the work folder; others are left out.
    """
    work = products.resolve().parent
    for coll in sorted((products / "embeddings").glob("*/collection.json")):
        for link in json.loads(coll.read_text(encoding="utf-8")).get("links", []):
            href = str(link.get("href", ""))
            if link.get("rel") != "emb:source-data" or "://" in href:
                continue
            catalog = (coll.parent / href).resolve().parent
            if work not in catalog.parents or products.resolve() in catalog.parents:
                continue
            if not catalog.is_dir():
                warnings.warn(
                    f"the input catalog {catalog} that the products' lineage links name is not "
                    "beside them; the static site is written without it (its lineage links "
                    "will not resolve: put the catalog back, or publish it and its URLs)",
                    SkippedInputWarning,
                    stacklevel=2,
                )
                continue
            target = stage / catalog.relative_to(work)
            if not target.exists():
                shutil.copytree(catalog, target, copy_function=_link_or_copy, ignore=_hidden)


def _hidden(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".")]


def _outside_or_hidden(src: Path) -> Any:
    """A copytree filter: hidden names, and links that lead out of ``src``, are left out."""
    base = src.resolve()

    def ignore(folder: str, names: list[str]) -> list[str]:
        out = []
        for name in names:
            target = (Path(folder) / name).resolve()
            if name.startswith(".") or (target != base and base not in target.parents):
                out.append(name)
        return out

    return ignore


def _link_or_copy(src: str, dst: str) -> None:
    """Copy a file into the site: a reflink where possible, never a hard link (see clone_file)."""
    from marscope_stac.core.fs import clone_file

    clone_file(src, dst)
    shutil.copystat(src, dst)
