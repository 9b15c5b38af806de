"""Publishing products into a static STAC output catalog, safely.

:class:`OutputCatalog` keeps ``<out>/catalog.json`` and its child collections consistent when
products are added: every JSON file is written atomically, and read-modify-write cycles on the
catalog run under a file lock, so concurrent runs do not corrupt it and an interrupted run
leaves the previous, valid catalog. Every object is validated offline before it is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marscope_stac import __version__
from marscope_stac.errors import OutputError
from marscope_stac.fsutil import atomic_write_text, file_multihash
from marscope_stac.stac_out import (
    EMBEDDINGS_V0,
    FILE_V2,
    PARQUET_MEDIA_TYPE,
    PROCESSING_V1,
    SSYS_V1,
    ssys_fields,
)
from marscope_stac.validation import validate_dict

__all__ = [
    "FAISS_MEDIA_TYPE",
    "NPY_MEDIA_TYPE",
    "OutputCatalog",
    "file_asset",
    "publish_embedding_set",
    "publish_model",
    "refresh_embedding_item",
    "relative_href",
    "scoring_assets",
]

FAISS_MEDIA_TYPE = "application/octet-stream; application=faiss-index"
"""Media type used for FAISS index assets (none is registered); roles ``["index"]``."""

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
            child = relative_href(collection_path, self.root)
            child = child if child.startswith(".") else f"./{child}"
            if not any(lk.get("rel") == "child" and lk.get("href") == child for lk in cat["links"]):
                cat["links"].append(
                    {
                        "rel": "child",
                        "href": child,
                        "type": "application/json",
                        "title": collection.get("title", collection["id"]),
                    }
                )
            cdir = collection_path.parent
            if collection_path.is_file():
                old = self._read(collection_path)
                items = [lk for lk in old.get("links", []) if lk.get("rel") == "item"]
            else:
                items = []
            href = relative_href(item_path, cdir)
            href = href if href.startswith(".") else f"./{href}"
            if not any(lk["href"] == href for lk in items):
                items.append({"rel": "item", "href": href, "type": "application/geo+json"})
            collection["links"] = [
                lk
                for lk in collection.get("links", [])
                if lk.get("rel") not in ("item", "root", "parent")
            ]
            collection["links"] += [
                {"rel": "root", "href": relative_href(cat_path, cdir), "type": "application/json"},
                {
                    "rel": "parent",
                    "href": relative_href(cat_path, cdir),
                    "type": "application/json",
                },
                *items,
            ]
            idir = item_path.parent
            item["links"] = [
                lk
                for lk in item.get("links", [])
                if lk.get("rel") not in ("root", "parent", "collection")
            ]
            item["links"] += [
                {"rel": "root", "href": relative_href(cat_path, idir), "type": "application/json"},
                {
                    "rel": "parent",
                    "href": relative_href(collection_path, idir),
                    "type": "application/json",
                },
                {
                    "rel": "collection",
                    "href": relative_href(collection_path, idir),
                    "type": "application/json",
                },
            ]
            item["collection"] = collection["id"]
            # validate everything first, then write item, collection, catalog
            for path, d in ((item_path, item), (collection_path, collection), (cat_path, cat)):
                validate_dict(d, href=str(path))
            item_path.parent.mkdir(parents=True, exist_ok=True)
            self._write(item_path, item, validated=True)
            self._write(collection_path, collection, validated=True)
            self._write(cat_path, cat, validated=True)
        return item_path


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


NPY_MEDIA_TYPE = "application/x-npy"
"""Media type used for NumPy ``.npy`` arrays (none is registered)."""

SCORING_ASSETS = {
    "cells": ("cells.npy", "Cell index of each row (int64)"),
    "vectors": ("vectors.npy", "Embeddings, float16, rows in the GeoParquet's order"),
    "vectors-int8": ("vectors-int8.npy", "Embeddings as int8 (row ~ scale x int8)"),
    "vectors-scale": ("vectors-scale.npy", "Scale of each int8 row (float32)"),
    "background": ("background.npy", "Per-cell background term of the probability (float32)"),
}
"""Embedding-item assets of the scoring arrays: key -> (file, title)."""


def scoring_assets(es: Any) -> dict[str, dict[str, Any]]:
    """STAC assets of a set's scoring arrays (those on disk), role ``data`` + ``scoring``."""
    return {
        key: file_asset(es.root / name, es.root, NPY_MEDIA_TYPE, ["data", "scoring"], title)
        for key, (name, title) in SCORING_ASSETS.items()
        if (es.root / name).is_file()
    }


def refresh_embedding_item(es: Any, out: str | Path) -> None:
    """Bring an embedding item's assets up to date with its set's files (after an upgrade).

    Sizes and checksums of the manifest and the scoring arrays are recomputed; nothing
    happens when the set has not been published in ``out``.
    """
    item_path = es.root / f"{es.root.name}.json"
    if not item_path.is_file():
        return
    catalog = OutputCatalog(out)
    with catalog.locked():
        item = catalog._read(item_path)
        assets = item.setdefault("assets", {})
        if "manifest" in assets:
            assets["manifest"] = {
                **assets["manifest"],
                "file:size": es.manifest_path.stat().st_size,
                "file:checksum": file_multihash(es.manifest_path),
            }
        assets.update(scoring_assets(es))
        catalog._write(item_path, item)


def _remote_model_item(cm: Any, mid: str) -> dict[str, Any]:
    """MLM item of a model whose weights are not a folder here (hub, architecture + file)."""
    from marscope_stac.mlm import mlm_properties
    from marscope_stac.stac_out import MLM_V1

    props = mlm_properties(cm, mid, str(cm.pretrained or cm.name))
    d: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_V1],
        "id": mid,
        "geometry": None,
        "properties": {
            "datetime": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
            **props,
        },
        "links": [],
        "assets": {},
    }
    if cm.name.startswith("hf-hub:"):
        repo = cm.name.split(":", 1)[1]
        d["assets"]["weights"] = {
            "href": f"https://huggingface.co/{repo}/resolve/main/open_clip_model.safetensors",
            "type": "application/octet-stream; application=safetensors",
            "roles": ["mlm:model", "mlm:weights"],
            "mlm:artifact_type": "safetensors.torch.save_file",
        }
    return d


def publish_model(cm: Any, out: str | Path) -> Path:
    """Publish the model's MLM item in ``out/models/<id>/`` (hrefs point at the weights)."""
    from marscope_stac.mlm import build_model_item, mlm_properties

    folder = None
    if cm.pretrained and Path(str(cm.pretrained)).is_dir():
        folder = Path(str(cm.pretrained))
    mid = cm.slug
    target = Path(out) / "models" / mid
    target.mkdir(parents=True, exist_ok=True)
    if folder is not None and (folder / "model.json").is_file():
        d = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        for a in d["assets"].values():
            a["href"] = relative_href(folder / a["href"], target)
    elif folder is not None:  # described here; nothing is written into the input folder
        d = build_model_item(folder, mlm_properties(cm, mid, str(cm.pretrained)))
        for a in d["assets"].values():
            a["href"] = relative_href(folder / a["href"], target)
    else:  # architecture + checkpoint file, or a hub model: described, weights by URL
        d = _remote_model_item(cm, mid)
    item_path = target / f"{mid}.json"
    coll_path = Path(out) / "models" / "collection.json"
    coll = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": "models",
        "title": "Models",
        "description": "Vision-language models used for the products.",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [[None, None]]},
        },
        "links": [],
    }
    if coll_path.is_file():
        coll = {
            **json.loads(coll_path.read_text()),
            "links": json.loads(coll_path.read_text()).get("links", []),
        }
    return OutputCatalog(out).add(coll_path, coll, item_path, d)


def _set_extent(es: Any, grid: Any) -> tuple[list[float], int, float]:
    """Bounding box, number of cells and mean valid fraction of an embedding set."""
    import numpy as np
    import pyarrow.parquet as pq

    cells = np.asarray(es.scoring_arrays().cells)
    valid = pq.read_table(es.parquet, columns=["valid_fraction"]).column(0).to_numpy()
    if not len(cells):
        return [0.0, 0.0, 0.0, 0.0], 0, 0.0
    bounds = grid.bounds(cells)
    bbox = [
        float(bounds[:, 0].min()),
        float(bounds[:, 1].min()),
        float(bounds[:, 2].max()),
        float(bounds[:, 3].max()),
    ]
    return bbox, len(cells), float(np.mean(valid))


def _embedding_item(
    es: Any, cm: Any, sources: Any, grid: Any, tile_px: int, model_path: Path
) -> dict[str, Any]:
    """The embedding set's item: extent, time range, quantisation, lineage, assets, links."""
    root = es.root
    bbox, n_cells, mean_valid = _set_extent(es, grid)
    w, so, e, n = bbox
    geometry = {"type": "Polygon", "coordinates": [[[w, so], [e, so], [e, n], [w, n], [w, so]]]}
    times = sorted(a.datetime for a in sources.assets if a.datetime is not None)
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    props: dict[str, Any] = {
        **ssys_fields(sources.body),
        "datetime": None,
        "start_datetime": (times[0].isoformat() if times else now).replace("+00:00", "Z"),
        "end_datetime": (times[-1].isoformat() if times else now).replace("+00:00", "Z"),
        "emb:quantization": {
            "method": "cast",
            "original_dtype": "float32",
            "quantized_dtype": "float16",
        },
        "emb:spatial_coverage": f"{n_cells} cells of grid {grid.spec}",
        "processing:lineage": (
            f"Tiles of grid {grid.spec} rendered at {tile_px} px from {len(sources.assets)} "
            f"source rasters, embedded with {cm.name}; L2-normalised."
        ),
        "processing:software": {"marscope-stac": __version__},
        "processing:datetime": now,
        "marscope:grid": grid.spec,
        "marscope:tile_px": tile_px,
        "marscope:cells": n_cells,
        "marscope:mean_valid_fraction": mean_valid,
    }
    links: list[dict[str, Any]] = [
        {
            "rel": "emb:model",
            "href": relative_href(model_path, root),
            "type": "application/geo+json",
        },
    ]
    links += [
        {
            "rel": "derived_from",
            "href": relative_href(a.href, root),
            "type": "image/tiff; application=geotiff",
            "title": a.item_id,
        }
        for a in sources.assets
    ]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [EMBEDDINGS_V0, SSYS_V1, FILE_V2, PROCESSING_V1],
        "id": root.name,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": links,
        "assets": _embedding_assets(es),
    }


def _embedding_assets(es: Any) -> dict[str, Any]:
    """Assets of an embedding item: GeoParquet, FAISS index, manifest, scoring arrays."""
    root = es.root
    return {
        "embeddings": file_asset(
            es.parquet,
            root,
            PARQUET_MEDIA_TYPE,
            ["data"],
            "Cell embeddings (GeoParquet, IAU lon/lat)",
        ),
        "index": file_asset(
            es.index,
            root,
            FAISS_MEDIA_TYPE,
            ["index"],
            "FAISS IndexFlatIP, rows in the GeoParquet's order",
        ),
        "manifest": file_asset(
            es.manifest_path,
            root,
            "application/json",
            ["metadata"],
            "Embedding manifest (model, grid, shards, failures)",
        ),
        **scoring_assets(es),
    }


def _embedding_collection(
    es: Any,
    cm: Any,
    sources: Any,
    grid: Any,
    tile_px: int,
    model_path: Path,
    item: dict[str, Any],
    source_href: str | None,
) -> dict[str, Any]:
    """The embedding set's collection (embeddings extension fields, links to model and data)."""
    root = es.root
    bbox, props = item["bbox"], item["properties"]
    first_source = source_href or (sources.assets[0].href if sources.assets else ".")
    coll = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [EMBEDDINGS_V0, SSYS_V1],
        "id": root.name,
        "title": f"Embeddings {root.name}",
        "description": f"Chip embeddings of {cm.name} on grid {grid.spec} ({tile_px} px).",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[props["start_datetime"], props["end_datetime"]]]},
        },
        **ssys_fields(sources.body),
        "emb:type": "chip",
        "emb:dimensions": int(cm.embed_dim),
        "data_type": "float16",
        "emb:chip_layout": {
            "layout_type": "named_grid",
            "chip_size": [tile_px, tile_px],
            "grid_id": grid.spec,
        },
        "links": [
            {
                "rel": "emb:model",
                "href": relative_href(model_path, root),
                "type": "application/geo+json",
            },
            {
                "rel": "emb:source-data",
                "href": relative_href(first_source, root),
                "type": "image/tiff; application=geotiff",
            },
        ],
    }
    return coll


def publish_embedding_set(
    es: Any,
    cm: Any,
    sources: Any,
    grid: Any,
    tile_px: int,
    out: str | Path,
    source_href: str | None = None,
) -> Path:
    """Publish an embedding set as a collection + item (embeddings extension) in ``out``.

    The proposed embeddings extension (v0.0.1) validates against STAC core 1.0.0, so this
    collection and item are written as STAC 1.0.0 (all their fields exist in 1.0.0).
    """
    model_path = publish_model(cm, out)
    root = es.root
    item = _embedding_item(es, cm, sources, grid, tile_px, model_path)
    coll = _embedding_collection(es, cm, sources, grid, tile_px, model_path, item, source_href)
    return OutputCatalog(out).add(root / "collection.json", coll, root / f"{root.name}.json", item)
