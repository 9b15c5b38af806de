"""Query products: probability COG, PNG preview, raster and vector PMTiles, detections, STAC.

:func:`query_products` scores an embedding set for a :class:`~marscope_stac.query.QuerySpec`
and publishes, under ``<out>/queries/<query id>/``:

- ``probability.tif``: COG of calibrated probabilities on the grid (uint8, probability =
  value x 0.004, nodata 255 where there is no imagery), in the body's lon/lat CRS;
- ``preview.png``: the probability map in colour;
- ``probability.pmtiles``: PNG raster tiles (Web-Mercator z/x/y on the body's sphere);
- ``detections.parquet`` / ``detections.pmtiles``: cells at or above the threshold merged
  into polygons with probability attributes (GeoParquet in the body's CRS; vector tiles);
- a STAC Item with those assets, the query and its parameters, ``processing:*`` fields and
  ``derived_from`` links to the embedding item, the model item and the source rasters.

The query id is derived from the query and the embedding set, so re-running the same query
replaces its products atomically (a staging folder swapped into place) instead of adding a
duplicate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from marscope_stac import __version__
from marscope_stac.cog import write_cog
from marscope_stac.embed import EmbeddingSet
from marscope_stac.errors import ConfigError
from marscope_stac.fsutil import staged_directory
from marscope_stac.grid import Grid, parse_grid
from marscope_stac.models import ClipModel
from marscope_stac.publish import OutputCatalog, _asset, _rel
from marscope_stac.query import QuerySpec, ScoredQuery, run_query
from marscope_stac.render import (
    _zoom_range,
    cells_to_raster,
    detections,
    save_png,
    write_raster_pmtiles,
    write_vector_pmtiles,
)
from marscope_stac.stac_out import (
    COG_MEDIA_TYPE,
    FILE_V2,
    PARQUET_MEDIA_TYPE,
    PROCESSING_V1,
    PROJ_V2,
    RASTER_V2,
    SSYS_V1,
    cog_band_fields,
    proj_fields,
    ssys_fields,
)

__all__ = [
    "PMTILES_MEDIA_TYPE",
    "ClassProduct",
    "QueryProduct",
    "classify_products",
    "composite_query",
    "find_embedding_set",
    "query_products",
    "read_scores",
    "run_queries",
    "write_scores",
]

PMTILES_MEDIA_TYPE = "application/vnd.pmtiles"


@dataclass
class QueryProduct:
    """What :func:`query_products` wrote."""

    query_id: str
    folder: Path
    item_path: Path
    scored: ScoredQuery
    n_detections: int
    threshold: float
    assets: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """Lines for people."""
        lines = [
            f"query {self.query_id}: {self.n_detections} detections at p >= "
            f"{self.threshold:g} over {len(self.scored.cells)} cells"
        ]
        lines += [f"  {k}: {v}" for k, v in self.assets.items()]
        lines.append(f"  STAC item: {self.item_path}")
        return "\n".join(lines)


def _queries_collection(
    path: Path, grid: Grid, bbox: list[float], start: str, end: str
) -> dict[str, Any]:
    """The ``queries`` collection, its extent grown to include ``bbox`` and the time range."""
    if path.is_file():
        coll = dict(json.loads(path.read_text()))
        ob = coll["extent"]["spatial"]["bbox"][0]
        coll["extent"]["spatial"]["bbox"] = [
            [min(ob[0], bbox[0]), min(ob[1], bbox[1]), max(ob[2], bbox[2]), max(ob[3], bbox[3])]
        ]
        ((t0, t1),) = coll["extent"]["temporal"]["interval"]
        coll["extent"]["temporal"]["interval"] = [[min(t0 or start, start), max(t1 or end, end)]]
        return coll
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "stac_extensions": [SSYS_V1],
        "id": "queries",
        "title": "Query products",
        "description": "Probability maps, detections and class maps of landform queries.",
        "license": "other",
        **ssys_fields(grid.body),
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [[start, end]]}},
        "links": [],
    }


def find_embedding_set(
    out: str | Path, model: ClipModel | None = None, embeddings: str | Path | None = None
) -> EmbeddingSet:
    """The embedding set to query: the one given, or the only (matching) one under ``out``.

    Raises:
        ConfigError: if none or several sets match, or the set was made by another model.
    """
    if embeddings is not None:
        es = EmbeddingSet(Path(embeddings))
        if not es.parquet.is_file():
            raise ConfigError(
                f"{embeddings} is not a complete embedding set (no "
                "embeddings.parquet); run 'marscope embed' first"
            )
    else:
        root = Path(out) / "embeddings"
        sets = [EmbeddingSet(p.parent) for p in sorted(root.glob("*/embeddings.parquet"))]
        if model is not None:
            same = [s for s in sets if s.manifest().get("model", {}).get("name") == model.name]
            sets = same or sets
        if not sets:
            raise ConfigError(f"no embedding set under {root}; run 'marscope embed' first")
        if len(sets) > 1:
            names = ", ".join(s.root.name for s in sets)
            raise ConfigError(
                f"several embedding sets under {root} ({names}); pick one with --embeddings"
            )
        es = sets[0]
    if model is not None:
        made_by = es.manifest().get("model", {})
        if made_by.get("name") != model.name or made_by.get("embed_dim") != model.embed_dim:
            raise ConfigError(
                f"embedding set {es.root.name} was made with model {made_by.get('name')!r}, "
                f"not {model.name!r}; query it with that model or embed again"
            )
    return es


def _query_id(spec: QuerySpec, es: EmbeddingSet) -> str:
    words = "-".join(spec.text) if spec.text else "examples"
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-")[:40] or "query"
    digest = hashlib.sha256(
        json.dumps([spec.describe(), es.root.name], sort_keys=True).encode()
    ).hexdigest()[:10]
    return f"{slug}-{digest}"


def query_products(
    model: ClipModel,
    spec: QuerySpec,
    out: str | Path = "products",
    embeddings: str | Path | None = None,
    threshold: float = 0.5,
    scored: ScoredQuery | None = None,
    name: str | None = None,
) -> QueryProduct:
    """Run ``spec`` on an embedding set and publish its products (see the module docstring).

    Args:
        model: The model that made the embedding set.
        spec: The query.
        out: Output catalog folder.
        embeddings: Embedding set folder (default: the only one under ``out/embeddings``).
        threshold: Detection threshold on the calibrated probability, in [0, 1].
        scored: Precomputed scores (e.g. a composite); ``spec`` then only describes them.
        name: Query id to use instead of the derived one.

    Raises:
        ConfigError: for a bad threshold or query, or a set made by another model.
        OutputError: if ``out`` is not a products catalog.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold {threshold} must be in [0, 1]")
    catalog = OutputCatalog(out)  # checks that out is a catalog (or empty)
    es = find_embedding_set(out, model, embeddings)
    manifest = es.manifest()
    grid = parse_grid(manifest["grid"])
    table = es.table()
    result = scored or run_query(model, table, grid, spec)
    qid = name or _query_id(spec, es)
    folder = Path(out) / "queries" / qid
    values, transform = cells_to_raster(grid, result.cells, result.probability)
    stored = np.where(np.isnan(values), 255, np.round(np.clip(values, 0, 1) * 250)).astype(np.uint8)
    feats = detections(grid, result.cells, result.probability, threshold)
    assets: dict[str, Path] = {}
    with staged_directory(folder, overwrite=True) as stage:
        tif = write_cog(
            stage / "probability.tif",
            stored,
            grid.body.crs,
            transform,
            nodata=255,
            band_names=["probability"],
            scale=0.004,
            offset=0.0,
            overview_resampling="average",
        )
        assets["probability"] = folder / tif.name
        save_png(stage / "preview.png", values)
        assets["preview"] = folder / "preview.png"
        meta = {
            "name": qid,
            "description": f"probability of {', '.join(spec.text) or 'examples'}",
            "body": grid.body.name,
            "crs": grid.body.geographic_code,
            "tile_matrix_set": f"{grid.body.name}WebMercatorSphere",
            "attribution": "MarScope-STAC",
        }
        zmin, zmax = _zoom_range(float(transform.a))
        write_raster_pmtiles(stage / "probability.pmtiles", values, transform, meta, (zmin, zmax))
        assets["tiles"] = folder / "probability.pmtiles"
        gdf = (
            gpd.GeoDataFrame(
                [p for _, p in feats], geometry=[g for g, _ in feats], crs=grid.body.geographic_code
            )
            if feats
            else gpd.GeoDataFrame(
                {"max_probability": [], "mean_probability": [], "cells": []},
                geometry=[],
                crs=grid.body.geographic_code,
            )
        )
        gdf.to_parquet(stage / "detections.parquet", index=False)
        write_scores(stage / "scores.parquet", grid, result)
        assets["scores"] = folder / "scores.parquet"
        assets["detections"] = folder / "detections.parquet"
        if feats:
            write_vector_pmtiles(
                stage / "detections.pmtiles", feats, meta, (max(0, zmax - 5), max(0, zmax - 1))
            )
            assets["detection-tiles"] = folder / "detections.pmtiles"
    item_path = _publish(
        catalog,
        folder,
        qid,
        spec,
        es,
        grid,
        result,
        threshold,
        transform,
        values.shape,
        len(feats),
        model,
    )
    return QueryProduct(qid, folder, item_path, result, len(feats), threshold, assets)


def _publish(
    catalog: OutputCatalog,
    folder: Path,
    qid: str,
    spec: QuerySpec,
    es: EmbeddingSet,
    grid: Grid,
    result: ScoredQuery,
    threshold: float,
    transform: Any,
    shape: tuple[int, ...],
    n_det: int,
    model: ClipModel,
) -> Path:
    emb_item = es.root / f"{es.root.name}.json"
    emb = (
        json.loads(emb_item.read_text()) if emb_item.is_file() else {"links": [], "properties": {}}
    )
    rows, cols = int(shape[0]), int(shape[1])
    west, north = transform.c, transform.f
    east, south = west + transform.a * cols, north + transform.e * rows
    bbox = [west, south, east, north]
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    eprops = emb.get("properties", {})
    props: dict[str, Any] = {
        **ssys_fields(grid.body),
        "datetime": None,
        "start_datetime": eprops.get("start_datetime", now),
        "end_datetime": eprops.get("end_datetime", now),
        **proj_fields(grid.body.crs, transform, (rows, cols)),
        "processing:lineage": (
            "Cells of the embedding set scored by cosine similarity to the query vector; "
            "probabilities = softmax at the model's temperature of the query against "
            "background prompts; detections = cells with probability >= threshold, merged."
        ),
        "processing:software": {"marscope-stac": __version__},
        "processing:datetime": now,
        "marscope:query": spec.describe(),
        "marscope:threshold": threshold,
        "marscope:calibration": "softmax-vs-background-prompts",
        "marscope:grid": grid.spec,
        "marscope:detections": n_det,
        "marscope:model": model.name,
    }
    links: list[dict[str, Any]] = []
    if emb_item.is_file():
        links.append(
            {
                "rel": "derived_from",
                "href": _rel(emb_item, folder),
                "type": "application/geo+json",
                "title": "embedding set",
            }
        )
    for lk in emb.get("links", []):
        if lk.get("rel") in ("derived_from", "emb:model"):
            target = (
                (emb_item.parent / lk["href"]) if not lk["href"].startswith("http") else lk["href"]
            )
            links.append(
                {
                    "rel": "derived_from",
                    "href": _rel(target, folder),
                    "type": lk.get("type", "application/json"),
                    "title": lk.get("title", "model" if lk["rel"] == "emb:model" else "source"),
                }
            )
    tif = folder / "probability.tif"
    assets = {
        "probability": _asset(
            tif,
            folder,
            COG_MEDIA_TYPE,
            ["data"],
            "Calibrated probability (COG)",
            bands=cog_band_fields(tif),
        ),
        "preview": _asset(
            folder / "preview.png",
            folder,
            "image/png",
            ["overview", "visual"],
            "Probability map preview",
        ),
        "tiles": _asset(
            folder / "probability.pmtiles",
            folder,
            PMTILES_MEDIA_TYPE,
            ["visual", "tiles"],
            "Probability raster tiles (PMTiles, PNG)",
        ),
        "detections": _asset(
            folder / "detections.parquet",
            folder,
            PARQUET_MEDIA_TYPE,
            ["data", "detections"],
            "Detections (GeoParquet)",
        ),
    }
    assets["scores"] = _asset(
        folder / "scores.parquet",
        folder,
        PARQUET_MEDIA_TYPE,
        ["data", "scores"],
        "Per-cell score and probability (GeoParquet)",
    )
    if (folder / "detections.pmtiles").is_file():
        assets["detection-tiles"] = _asset(
            folder / "detections.pmtiles",
            folder,
            PMTILES_MEDIA_TYPE,
            ["visual", "tiles"],
            "Detections (PMTiles, vector)",
        )
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2, PROCESSING_V1],
        "id": qid,
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[west, south], [east, south], [east, north], [west, north], [west, south]]
            ],
        },
        "bbox": bbox,
        "properties": props,
        "links": links,
        "assets": assets,
    }
    coll_path = folder.parent / "collection.json"
    coll = _queries_collection(
        coll_path, grid, bbox, props["start_datetime"], props["end_datetime"]
    )
    return catalog.add(coll_path, coll, folder / f"{qid}.json", item)


def run_queries(
    model: ClipModel,
    texts: list[str],
    base: QuerySpec,
    out: str | Path = "products",
    embeddings: str | Path | None = None,
    threshold: float = 0.5,
) -> list[QueryProduct]:
    """One product per text (each combined with ``base``'s examples), or one for the examples.

    Raises:
        ConfigError: if there is neither text nor example.
    """
    from dataclasses import replace

    if not texts and not (base.points or base.cells or base.images):
        raise ConfigError("nothing to look for: give query text or --point/--cell/--image")
    specs = [replace(base, text=[t]) for t in texts] or [base]
    return [query_products(model, s, out, embeddings, threshold) for s in specs]


def composite_query(
    model: ClipModel,
    first: str,
    second: str,
    op: str,
    out: str | Path = "products",
    embeddings: str | Path | None = None,
    threshold: float = 0.5,
    within_km: float = 5.0,
    templates: Any = None,
) -> QueryProduct:
    """Products of ``first AND NOT second`` (``op='and-not'``) or ``first NEAR second``.

    Both are text queries; the composite is computed on their probability maps (see
    :func:`marscope_stac.query.and_not` and :func:`marscope_stac.query.near`).
    """
    from marscope_stac.models import MARSCOPE_TEMPLATES
    from marscope_stac.query import and_not, near

    tpl = templates or MARSCOPE_TEMPLATES
    es = find_embedding_set(out, model, embeddings)
    grid = parse_grid(es.manifest()["grid"])
    table = es.table()
    a = run_query(model, table, grid, QuerySpec(text=[first], templates=tpl))
    b = run_query(model, table, grid, QuerySpec(text=[second], templates=tpl))
    if op == "and-not":
        prob = and_not(a.probability, b.probability)
        label = f"{first} and not {second}"
    elif op == "near":
        prob = near(
            a.probability,
            b.probability,
            grid.centers(table.cell_index),
            within_km,
            grid.body.radius_m,
        )
        label = f"{first} near {second} within {within_km:g} km"
    else:
        raise ConfigError(f"unknown composite {op!r}; use and-not or near")
    scored = ScoredQuery(a.cells, (a.scores * prob).astype(np.float32), prob, a.vector)
    spec = QuerySpec(text=[label], templates=tpl)
    return query_products(model, spec, out, es.root, threshold, scored=scored)


def write_scores(path: Path, grid: Grid, result: ScoredQuery) -> Path:
    """Per-cell scores and probabilities as GeoParquet (cell centre points, body CRS)."""
    centres = grid.centers(result.cells)
    gdf = gpd.GeoDataFrame(
        {
            "cell_id": grid.cell_ids(result.cells),
            "cell_index": result.cells,
            "score": result.scores,
            "probability": result.probability,
        },
        geometry=gpd.points_from_xy(centres[:, 0], centres[:, 1]),
        crs=grid.body.geographic_code,
    )
    gdf.to_parquet(path, index=False)
    return path


def read_scores(path: str | Path) -> gpd.GeoDataFrame:
    """Read a product's per-cell scores (see :func:`write_scores`)."""
    return gpd.read_parquet(path)


CLASS_COLOURS = (
    "808080",
    "e6194b",
    "3cb44b",
    "ffe119",
    "4363d8",
    "f58231",
    "911eb4",
    "46f0f0",
    "f032e6",
    "bcf60c",
    "fabebe",
    "008080",
    "e6beff",
    "9a6324",
)


@dataclass
class ClassProduct:
    """What :func:`classify_products` wrote."""

    query_id: str
    folder: Path
    item_path: Path
    classes: list[str]
    counts: dict[str, int]

    def summary(self) -> str:
        """Lines for people."""
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return (
            f"classification {self.query_id}: {counts}\n"
            f"  class map: {self.folder / 'classes.tif'}\n"
            f"  probabilities: {self.folder / 'probabilities.tif'}\n"
            f"  STAC item: {self.item_path}"
        )


def classify_products(
    model: ClipModel,
    classes: list[str],
    out: str | Path = "products",
    embeddings: str | Path | None = None,
    templates: Any = None,
) -> ClassProduct:
    """Zero-shot classification of every cell: per-class probability bands and a class map.

    Probabilities are the softmax, at the model's temperature, over the classes and a
    ``background`` class (the mean of the background prompts); the class map holds the most
    probable class (0 = background). Both are COGs published with the classification
    extension.
    """
    from marscope_stac.models import MARSCOPE_TEMPLATES
    from marscope_stac.query import BACKGROUND_PROMPTS
    from marscope_stac.stac_out import CLASSIFICATION_V2

    names = [c.strip() for c in classes if c.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError("give at least two different class names to classify")
    if len(names) > len(CLASS_COLOURS) - 1:
        raise ConfigError(f"at most {len(CLASS_COLOURS) - 1} classes at once")
    catalog = OutputCatalog(out)
    es = find_embedding_set(out, model, embeddings)
    grid = parse_grid(es.manifest()["grid"])
    table = es.table()
    tpl = templates or MARSCOPE_TEMPLATES
    q = model.encode_queries(names, tpl)
    bg = model.encode_queries(list(BACKGROUND_PROMPTS), tpl).mean(axis=0)
    bg /= np.linalg.norm(bg)
    logits = model.logit_scale * (table.embedding @ np.vstack([bg[None], q]).T)
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    label = prob.argmax(axis=1).astype(np.float32)
    digest = hashlib.sha256(json.dumps([names, list(tpl), es.root.name]).encode()).hexdigest()
    qid = f"classes-{digest[:10]}"
    folder = Path(out) / "queries" / qid
    class_map, transform = cells_to_raster(grid, table.cell_index, label)
    bands = [
        cells_to_raster(grid, table.cell_index, prob[:, k].astype(np.float32))[0]
        for k in range(prob.shape[1])
    ]
    stack = np.stack([np.where(np.isnan(b), 255, np.round(b * 250)) for b in bands]).astype(
        np.uint8
    )
    cmap_u8 = np.where(np.isnan(class_map), 255, class_map).astype(np.uint8)
    all_names = ["background", *names]
    with staged_directory(folder, overwrite=True) as stage:
        write_cog(
            stage / "classes.tif",
            cmap_u8,
            grid.body.crs,
            transform,
            nodata=255,
            band_names=["class"],
            overview_resampling="nearest",
        )
        write_cog(
            stage / "probabilities.tif",
            stack,
            grid.body.crs,
            transform,
            nodata=255,
            band_names=all_names,
            scale=0.004,
            offset=0.0,
        )
        rgb = np.zeros((*cmap_u8.shape, 4), np.uint8)
        for k, colour in enumerate(CLASS_COLOURS[: len(all_names)]):
            rgb[cmap_u8 == k] = [int(colour[i : i + 2], 16) for i in (0, 2, 4)] + [255]
        from PIL import Image

        img = Image.fromarray(rgb, "RGBA")
        scale = max(1, min(1024 // max(cmap_u8.shape), 16))
        img.resize(
            (cmap_u8.shape[1] * scale, cmap_u8.shape[0] * scale), Image.Resampling.NEAREST
        ).save(stage / "preview.png")
    slug = [
        re.sub(r"[^0-9A-Za-z_-]+", "-", n).strip("-") or f"class{k}"
        for k, n in enumerate(all_names)
    ]
    classes_field = [
        {"value": k, "name": slug[k], "description": all_names[k], "color_hint": CLASS_COLOURS[k]}
        for k in range(len(all_names))
    ]
    rows, cols = cmap_u8.shape
    west, north = transform.c, transform.f
    east, south = west + transform.a * cols, north + transform.e * rows
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2, PROCESSING_V1, CLASSIFICATION_V2],
        "id": qid,
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [[west, south], [east, south], [east, north], [west, north], [west, south]]
            ],
        },
        "bbox": [west, south, east, north],
        "properties": {
            **ssys_fields(grid.body),
            "datetime": now,
            **proj_fields(grid.body.crs, transform, (rows, cols)),
            "processing:lineage": "Zero-shot classification: softmax over class prompts and a "
            "background prompt at the model's temperature.",
            "processing:software": {"marscope-stac": __version__},
            "marscope:classes": names,
            "marscope:model": model.name,
        },
        "links": [
            {
                "rel": "derived_from",
                "href": _rel(es.root / f"{es.root.name}.json", folder),
                "type": "application/geo+json",
                "title": "embedding set",
            }
        ],
        "assets": {
            "classes": _asset(
                folder / "classes.tif",
                folder,
                COG_MEDIA_TYPE,
                ["data"],
                "Most probable class (COG)",
                bands=cog_band_fields(folder / "classes.tif"),
                **{"classification:classes": classes_field},
            ),
            "probabilities": _asset(
                folder / "probabilities.tif",
                folder,
                COG_MEDIA_TYPE,
                ["data"],
                "Per-class probabilities (COG, one band each)",
                bands=cog_band_fields(folder / "probabilities.tif"),
            ),
            "preview": _asset(
                folder / "preview.png",
                folder,
                "image/png",
                ["overview", "visual"],
                "Class map preview",
            ),
        },
    }
    coll_path = folder.parent / "collection.json"
    coll = _queries_collection(coll_path, grid, [west, south, east, north], now, now)
    item_path = catalog.add(coll_path, coll, folder / f"{qid}.json", item)
    counts = {n: int((label == k).sum()) for k, n in enumerate(all_names)}
    return ClassProduct(qid, folder, item_path, names, counts)
