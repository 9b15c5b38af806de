"""STAC items of what made the products: the models (MLM) and the embedding sets.

Both are added to the products catalog (:class:`~marscope_stac.catalog.OutputCatalog`);
query products are written by :mod:`marscope_stac.products`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from marscope_stac import __version__
from marscope_stac.catalog import OutputCatalog, file_asset, relative_href
from marscope_stac.fsutil import file_multihash
from marscope_stac.stac_out import (
    EMBEDDINGS_V0,
    FILE_V2,
    PARQUET_MEDIA_TYPE,
    PROCESSING_V1,
    SSYS_V1,
    ssys_fields,
)

__all__ = [
    "FAISS_MEDIA_TYPE",
    "NPY_MEDIA_TYPE",
    "publish_embedding_set",
    "publish_model",
    "refresh_embedding_item",
    "scoring_assets",
]

FAISS_MEDIA_TYPE = "application/octet-stream; application=faiss-index"
"""Media type used for FAISS index assets (none is registered); roles ``["index"]``."""

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
