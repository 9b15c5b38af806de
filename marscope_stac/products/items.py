"""The STAC items of query products: properties, assets, words and links to their inputs.

:class:`ScoredSet` is the embedding set a product was scored on, as the items need it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marscope_stac.core.software import software
from marscope_stac.grid.grids import Grid
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.products.render import (
    RasterLayout,
)
from marscope_stac.query.scoring import QuerySpec, ScoredQuery
from marscope_stac.stac.build import (
    COG_MEDIA_TYPE,
    FILE_V2,
    PARQUET_MEDIA_TYPE,
    PMTILES_MEDIA_TYPE,
    PROCESSING_V1,
    PROJ_V2,
    RASTER_V2,
    SSYS_V1,
    cog_band_fields,
    file_asset,
    lineage_href,
    now_utc,
    proj_fields,
    relative_href,
    ssys_fields,
    stac_item,
)
from marscope_stac.stac.remote import is_remote, join_url

if TYPE_CHECKING:
    from marscope_stac.products.write import CellColumns

__all__ = ["ASSET_FILES", "ScoredSet"]


ASSET_FILES = {
    "probability": "probability.tif",
    "tiles": "probability.pmtiles",
    "preview": "preview.png",
    "detections": "detections.parquet",
    "detection-tiles": "detections.pmtiles",
    "scores": "scores.parquet",
    "examples": "examples.geojson",
}
"""Asset key -> file name in a query's folder."""

_QUERY_ASSETS: dict[str, tuple[str, list[str], str]] = {
    "probability": (COG_MEDIA_TYPE, ["data"], "Calibrated probability (COG)"),
    "tiles": (PMTILES_MEDIA_TYPE, ["visual", "tiles"], "Probability raster tiles (PMTiles, PNG)"),
    "preview": ("image/png", ["thumbnail", "overview", "visual"], "Probability map preview"),
    "detections": (PARQUET_MEDIA_TYPE, ["data", "detections"], "Detections (GeoParquet)"),
    "detection-tiles": (PMTILES_MEDIA_TYPE, ["visual", "tiles"], "Detections (PMTiles, vector)"),
    "scores": (
        PARQUET_MEDIA_TYPE,
        ["data", "scores"],
        "Per-cell score and probability (GeoParquet)",
    ),
    "examples": (
        "application/geo+json",
        ["labels"],
        "The examples the query was given (GeoJSON points, label positive or negative)",
    ),
}
"""Media type, roles and title of each asset a query product may have."""


def _raster_bbox(layout: RasterLayout) -> list[float]:
    t = layout.transform
    rows, cols = layout.shape
    return [t.c, t.f + t.e * rows, t.c + t.a * cols, t.f]


def _calibration_fields(spec: QuerySpec, where: ScoredSet) -> dict[str, Any]:
    """How the product's probability was calibrated (method, and the fitted parameters)."""
    if spec.learner == "classifier":
        return {"marscope:calibration": "logistic-regression-on-examples"}
    background = where.es.manifest().get("scoring", {}).get("background", {})
    fit = background.get("calibration")
    if not fit:
        return {"marscope:calibration": "softmax-vs-background-prompts"}
    return {
        "marscope:calibration": "softmax-vs-background-prompts+platt",
        "marscope:calibration_parameters": {
            "temperature": background.get("temperature"),
            **{k: fit[k] for k in ("scale", "bias", "cell_deg", "fitted_on") if k in fit},
        },
    }


def _query_properties(
    spec: QuerySpec, where: ScoredSet, result: ScoredQuery, threshold: float, n_det: int | None
) -> dict[str, Any]:
    """The properties of a query product's item."""
    start, end = _embedding_times(where.es)
    return {
        **ssys_fields(where.grid.body),
        "start_datetime": start,
        "end_datetime": end,
        "processing:lineage": (
            "Cells of the embedding set scored by cosine similarity to the query vector; "
            "probabilities = softmax at the model's temperature of the query against "
            "background prompts (Platt-calibrated when marscope:calibration says +platt); "
            "detections = cells with probability >= threshold, merged."
        ),
        "processing:software": software(),
        "processing:datetime": now_utc(),
        "marscope:query": spec.describe(),
        "marscope:threshold": threshold,
        **_calibration_fields(spec, where),
        "marscope:scoring": result.scoring,
        "marscope:grid": where.grid.spec,
        "marscope:detections": n_det,  # null when the detections were not made
        "marscope:model": where.model_name,
    }


def _query_item(
    folder: Path,
    qid: str,
    spec: QuerySpec,
    where: ScoredSet,
    result: ScoredQuery,
    threshold: float,
    n_det: int | None,
) -> dict[str, Any]:
    """The STAC item of a query product whose files are in ``folder``."""
    props = _query_properties(spec, where, result, threshold, n_det)
    grid, layout = where.grid, where.layout
    assets = {}
    for key, (media, roles, title) in _QUERY_ASSETS.items():
        name = ASSET_FILES[key]
        if (folder / name).is_file():
            extra: dict[str, Any] = {}
            if key == "probability":  # the raster's grid: projection fields on its asset
                extra = {
                    **proj_fields(grid.body.crs, layout.transform, layout.shape),
                    "bands": cog_band_fields(folder / name),
                }
            assets[key] = file_asset(folder / name, folder, media, roles, title, **extra)
    extensions = [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2, PROCESSING_V1]
    title, description = _query_words(spec, grid, where.es, where.model_name, n_det, threshold)
    links = _source_links(where.es, folder)
    bbox = _raster_bbox(layout)
    return stac_item(
        qid, props, extensions, bbox, assets, links, title=title, description=description
    )


def _query_words(
    spec: QuerySpec,
    grid: Grid,
    es: EmbeddingSet,
    model_name: str,
    n_det: int | None,
    threshold: float,
) -> tuple[str, str]:
    """Title and description of a query product's item."""
    what = " + ".join(spec.text) if spec.text else "the given examples"
    found = "" if n_det is None else f"; {n_det} detections at p >= {threshold:g}"
    return f"Where: {what}"[:120], (
        f"Calibrated probability that each cell of grid {grid.spec} shows {what}, scored "
        f"over embedding set {es.root.name} made with model {model_name}{found}."
    )


@dataclass(frozen=True)
class ScoredSet:
    """An embedding set as its products need it (opened once by the query engine).

    Attributes:
        es: The embedding set.
        grid: Its grid.
        layout: Where each of its rows falls in the products' raster.
        columns: Gives its cell columns for ``scores.parquet`` (made on first call, once).
        model_name: Name of the model that made it.
    """

    es: EmbeddingSet
    grid: Grid
    layout: RasterLayout
    columns: Callable[[], CellColumns]
    model_name: str


def _source_links(es: EmbeddingSet, folder: Path) -> list[dict[str, Any]]:
    """``derived_from`` links to the embedding item and, through it, the model and sources.

    A local copy of a published set (see :mod:`marscope_stac.index.published`) is named by
    its URL, and so are the model and sources its item links to.
    """
    emb_item = es.root / f"{es.root.name}.json"
    emb = es.stac_item()
    if emb is None:
        return []
    url = es.published_item()
    links = [
        {
            "rel": "derived_from",
            "href": url or relative_href(emb_item, folder),
            "type": "application/geo+json",
            "title": "embedding set",
        }
    ]
    for lk in emb["links"]:
        if lk.get("rel") in ("derived_from", "emb:model"):
            href = str(lk["href"])
            if url is not None:
                target: str | Path = join_url(url, href)
            else:
                target = href if is_remote(href) else emb_item.parent / href
            links.append(
                {
                    "rel": "derived_from",
                    "href": lineage_href(target, folder),
                    "type": lk.get("type", "application/json"),
                    "title": lk.get("title", "model" if lk["rel"] == "emb:model" else "source"),
                }
            )
    return links


def _embedding_times(es: EmbeddingSet) -> tuple[str, str]:
    d = es.stac_item()
    props = d["properties"] if d is not None else {}
    now = now_utc()
    start, end = props.get("start_datetime", now), props.get("end_datetime", now)
    return (start if isinstance(start, str) else now), (end if isinstance(end, str) else now)
