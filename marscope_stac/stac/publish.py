"""STAC items of what made the products: the models (MLM) and the embedding sets.

Both are added to the products catalog (:class:`~marscope_stac.stac.catalog.OutputCatalog`);
query products are written by :mod:`marscope_stac.products.write`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marscope_stac.core.bodies import MARS
from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.fs import copy_file
from marscope_stac.core.software import software
from marscope_stac.stac.build import (
    EMBEDDINGS_V0,
    FILE_V2,
    JSON_MEDIA_TYPE,
    MLM_V1,
    PARQUET_MEDIA_TYPE,
    PROCESSING_V1,
    SSYS_V1,
    STAC_ITEM_MEDIA_TYPE,
    bbox_polygon,
    file_asset,
    lineage_href,
    link,
    now_utc,
    relative_href,
    ssys_fields,
    stac_collection,
    stac_item,
)
from marscope_stac.stac.catalog import OutputCatalog

if TYPE_CHECKING:
    from marscope_stac.core.bodies import Body
    from marscope_stac.grid.grids import Grid
    from marscope_stac.index.store import EmbeddingSet
    from marscope_stac.models.clip import ClipModel
    from marscope_stac.stac.raster import SourceAsset
    from marscope_stac.stac.read import SourceSet

__all__ = [
    "FAISS_MEDIA_TYPE",
    "NPY_MEDIA_TYPE",
    "publish_embedding_set",
    "publish_model",
    "refresh_embedding_item",
    "scoring_assets",
    "source_link",
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


def scoring_assets(es: EmbeddingSet) -> dict[str, dict[str, Any]]:
    """STAC assets of a set's scoring arrays (those on disk), role ``data`` + ``scoring``."""
    return {
        key: file_asset(es.root / name, es.root, NPY_MEDIA_TYPE, ["data", "scoring"], title)
        for key, (name, title) in SCORING_ASSETS.items()
        if (es.root / name).is_file()
    }


def refresh_embedding_item(es: EmbeddingSet, out: str | Path) -> None:
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


def _remote_model_item(cm: ClipModel, mid: str, body: Body) -> dict[str, Any]:
    """MLM item of a model whose weights are not a file here: they are named by their URL."""
    from marscope_stac.stac.mlm import PLANET_BBOX, mlm_properties

    source = cm.pretrained or cm.name
    if getattr(cm, "weights_file", None) is not None:
        source = Path(str(cm.weights_file)).name  # never a local path
    props = {**ssys_fields(body), **mlm_properties(cm, mid, str(source))}
    assets: dict[str, Any] = {}
    url = getattr(cm, "weights_url", None)
    if url:
        assets["weights"] = {
            "href": url,
            "type": "text/html" if "huggingface.co" in url else "application/octet-stream",
            "roles": ["mlm:model", "mlm:weights"],
            "title": "Published weights",
            "mlm:artifact_type": "torch.save",
        }
    return stac_item(mid, props, [MLM_V1, SSYS_V1], PLANET_BBOX, assets, title=f"Model {mid}")


MODEL_FILES = ("open_clip_model.safetensors", "open_clip_config.json")
"""The files of a model folder (hub layout) that are published with its item."""


def _cut_local_refs(text: str) -> str:
    """A description with its ``local-dir:PATH`` model references cut to the folder name."""
    from marscope_stac.stac.mlm import without_local_paths

    return " ".join(
        without_local_paths(w.rstrip(",")) + ("," if w.endswith(",") else "")
        if w.startswith("local-dir:")
        else w
        for w in text.split(" ")
    )


def _local_model_item(
    cm: ClipModel, mid: str, weights: Path, target: Path, body: Body
) -> dict[str, Any]:
    """MLM item of a model with local weights, copied into ``target`` beside the item.

    A model folder's own ``model.json`` (written by ``marscope train``) is kept; an
    architecture with a checkpoint file gets a weights asset of that file.
    """
    from marscope_stac.models.loading import read_model_item  # here: stac stays torch-free
    from marscope_stac.stac.mlm import PLANET_BBOX, build_model_item, mlm_properties

    folder = weights.parent
    item = read_model_item(folder)  # checked before anything is copied
    if weights.name != MODEL_FILES[0]:  # a checkpoint file
        copy_file(weights, target / weights.name)
        d = _remote_model_item(cm, mid, body)
        d["stac_extensions"].append(FILE_V2)
        d["assets"]["weights"] = file_asset(
            target / weights.name,
            target,
            "application/octet-stream",
            ["mlm:model", "mlm:weights", "data"],
            "Checkpoint",
            **{"mlm:artifact_type": "torch.save"},
        )
        return d
    for name in MODEL_FILES:
        copy_file(folder / name, target / name)
    if item is None:  # described here; nothing is written into it
        return build_model_item(target, mlm_properties(cm, mid, folder.name), body=body)
    from marscope_stac.stac.mlm import without_local_paths

    d = dict(item)
    props = d.setdefault("properties", {})
    for key in ("mlm:hyperparameters", "mlm:pretrained_source"):
        if key in props:  # items written before local paths were cut
            props[key] = without_local_paths(props[key])
    props.setdefault("title", f"Model {mid}")
    props.setdefault("description", f"Model {mid}")
    fresh = mlm_properties(cm, mid, None)
    for key in ("mlm:input", "mlm:output"):  # what this version says of its inputs and outputs
        props[key] = fresh[key]
    if isinstance(props.get("description"), str):
        props["description"] = _cut_local_refs(props["description"])
    if d.get("geometry") is None:  # items of earlier versions: the model covers the planet
        d["geometry"], d["bbox"] = bbox_polygon(PLANET_BBOX), list(PLANET_BBOX)
        d["properties"] = {**ssys_fields(body), **d["properties"]}
        d["stac_extensions"] = [*d["stac_extensions"], SSYS_V1]
    return d


def publish_model(cm: ClipModel, out: str | Path, body: Body = MARS) -> Path:
    """Publish the model's MLM item in ``out/models/<id>/``, with the weights inside ``out``.

    Local weights (a model folder, a checkpoint) are copied beside the item (a reflink where
    the file system allows), so the products folder can be moved or served as it is; weights
    on a hub are referenced by their URL.
    """
    mid = cm.slug
    target = Path(out) / "models" / mid
    OutputCatalog(out).claim()
    target.mkdir(parents=True, exist_ok=True)
    weights = cm.weights_file
    if weights is not None:
        d = _local_model_item(cm, mid, weights, target, body)
    else:
        d = _remote_model_item(cm, mid, body)
    d["id"] = mid  # the item's file is <id>.json
    item_path = target / f"{mid}.json"
    coll_path = Path(out) / "models" / "collection.json"
    old = json.loads(coll_path.read_text()) if coll_path.is_file() else {}
    names = sorted({*old.get("summaries", {}).get("mlm:architecture", []), str(cm.arch or mid)})
    coll = stac_collection(
        "models",
        "Models",
        "Vision-language models used for the products.",
        (PLANET_BBOX_LIST, [d["properties"]["datetime"], d["properties"]["datetime"]]),
        {"mlm:architecture": names, "ssys:targets": [body.name]},
        [SSYS_V1],
        ssys_fields(body),
    )  # the catalog keeps the collection's item links and merges its extent
    return OutputCatalog(out).add(coll_path, coll, item_path, d)


PLANET_BBOX_LIST = [-180.0, -90.0, 180.0, 90.0]


def _set_extent(es: EmbeddingSet, grid: Grid) -> tuple[list[float], int, float]:
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
    es: EmbeddingSet, cm: ClipModel, sources: SourceSet, grid: Grid, tile_px: int, model_path: Path
) -> dict[str, Any]:
    """The embedding set's item: extent, time range, quantisation, lineage, assets, links."""
    root = es.root
    bbox, n_cells, mean_valid = _set_extent(es, grid)
    times = sorted(a.datetime for a in sources.assets if a.datetime is not None)
    now = now_utc()
    props: dict[str, Any] = {
        **ssys_fields(sources.body),
        "start_datetime": (times[0].isoformat() if times else now).replace("+00:00", "Z"),
        "end_datetime": (times[-1].isoformat() if times else now).replace("+00:00", "Z"),
        "emb:quantization": {
            "method": "cast",
            "original_dtype": "float32",
            "quantized_dtype": "float16",
        },
        "emb:spatial_coverage": f"{n_cells} cells of grid {grid.spec}",
        "processing:lineage": (
            f"Tiles of grid {grid.spec} rendered at {tile_px} px"
            + (f" with a margin of {cm.tile_context:g} cell sides" if cm.tile_context else "")
            + f" from {len(sources.assets)} source rasters, embedded with {cm.name}; "
            "L2-normalised."
        ),
        "processing:software": software(),
        "processing:datetime": now,
        "marscope:grid": grid.spec,
        "marscope:tile_px": tile_px,
        "marscope:tile_context": float(cm.tile_context),
        "marscope:cells": n_cells,
        "marscope:mean_valid_fraction": mean_valid,
    }
    links = [link("emb:model", model_path, root, STAC_ITEM_MEDIA_TYPE, f"Model {cm.slug}")]
    links += _source_links(sources, root, es.manifest().get("source_items") or {})
    extensions = [EMBEDDINGS_V0, SSYS_V1, FILE_V2, PROCESSING_V1]
    return stac_item(
        root.name,
        props,
        extensions,
        bbox,
        _embedding_assets(es),
        links,
        EMBEDDINGS_VERSION,
        title=f"Embeddings of {n_cells} cells ({cm.slug}, {grid.spec})",
        description=(
            f"Chip embeddings ({int(cm.embed_dim)}-d) of every cell of grid {grid.spec} with "
            f"imagery, by model {cm.slug}: GeoParquet, FAISS index and scoring arrays."
        ),
    )


EMBEDDINGS_VERSION = "1.0.0"
"""STAC version of embedding sets' objects: the embeddings extension v0.0.1 requires 1.0.0."""


def source_link(asset: SourceAsset, root: Path) -> dict[str, str]:
    """A ``derived_from`` link to a source's STAC Item (URL or relative path), or its raster."""
    if asset.item_href:  # the item: a URL (its own, or its published one), or a relative link
        return {"href": lineage_href(asset.item_href, root), "type": "application/geo+json"}
    # an item without a location (built in memory): its raster
    return {"href": relative_href(asset.href, root), "type": "image/tiff; application=geotiff"}


def _source_links(sources: SourceSet, root: Path, earlier: dict[str, Any]) -> list[dict[str, Any]]:
    """``derived_from`` links to the source STAC Items: this run's, then earlier runs'.

    ``earlier`` (the manifest's ``source_items``) holds each earlier source's link, by item
    id, relative to the set's folder as the item's links are.
    """
    links: dict[str, dict[str, Any]] = {}
    found = {a.item_id: source_link(a, root) for a in sources.assets}
    for item_id, ref in earlier.items():
        if item_id not in found and isinstance(ref, dict) and isinstance(ref.get("href"), str):
            found[item_id] = {"href": ref["href"], "type": str(ref.get("type", ""))}
    for item_id, ref in found.items():
        links.setdefault(ref["href"], {"rel": "derived_from", **ref, "title": item_id})
    return list(links.values())


def _embedding_assets(es: EmbeddingSet) -> dict[str, Any]:
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
    es: EmbeddingSet,
    cm: ClipModel,
    sources: SourceSet,
    grid: Grid,
    tile_px: int,
    model_path: Path,
    item: dict[str, Any],
    source_href: str | None,
) -> dict[str, Any]:
    """The embedding set's collection (embeddings extension fields, links to model and data)."""
    root = es.root
    bbox, props = item["bbox"], item["properties"]
    first_source = source_href or (sources.assets[0].href if sources.assets else ".")
    fields = {
        **ssys_fields(sources.body),
        "emb:type": "chip",
        "emb:dimensions": int(cm.embed_dim),
        "data_type": "float16",
        "emb:chip_layout": {
            "layout_type": "named_grid",
            "chip_size": [tile_px, tile_px],
            "grid_id": grid.spec,
        },
    }
    links = [
        link("emb:model", model_path, root, STAC_ITEM_MEDIA_TYPE, f"Model {cm.slug}"),
        {
            "rel": "emb:source-data",
            "href": lineage_href(first_source, root),
            "type": JSON_MEDIA_TYPE,
            "title": "Source imagery",
        },
    ]
    return stac_collection(
        root.name,
        f"Embeddings {root.name}",
        f"Chip embeddings of {cm.name} on grid {grid.spec} ({tile_px} px).",
        (bbox, [props["start_datetime"], props["end_datetime"]]),
        {
            "ssys:targets": [sources.body.name],
            "marscope:grid": [grid.spec],
            "marscope:model": [cm.slug],
            "emb:dimensions": [int(cm.embed_dim)],
        },
        [EMBEDDINGS_V0, SSYS_V1],
        fields,
        links,
        EMBEDDINGS_VERSION,
    )


def publish_embedding_set(
    es: EmbeddingSet,
    cm: ClipModel,
    sources: SourceSet,
    grid: Grid,
    tile_px: int,
    out: str | Path,
    source_href: str | None = None,
    network: dict[str, Any] | None = None,
) -> Path:
    """Publish an embedding set as a collection + item (embeddings extension) in ``out``.

    The proposed embeddings extension (v0.0.1) validates against STAC core 1.0.0, so this
    collection and item are written as STAC 1.0.0 (all their fields exist in 1.0.0).
    ``network`` (requests and bytes the run read over the network, per tile too) goes into
    the item's processing information as ``marscope:network``.
    """
    model_path = publish_model(cm, out, sources.body)
    root = es.root
    item = _embedding_item(es, cm, sources, grid, tile_px, model_path)
    if network is not None:
        item["properties"]["marscope:network"] = network
    coll = _embedding_collection(es, cm, sources, grid, tile_px, model_path, item, source_href)
    return OutputCatalog(out).add(root / "collection.json", coll, root / f"{root.name}.json", item)
