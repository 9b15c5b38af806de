"""Class products: a zero-shot classification of every cell into named classes.

A class map and per-class probabilities as COGs, a preview, and a STAC item with the
classification extension.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.fs import staged_directory
from marscope_stac.core.owned import carry_over
from marscope_stac.core.software import software
from marscope_stac.grid.grids import Grid
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.products.cog import write_cog
from marscope_stac.products.ids import class_id
from marscope_stac.products.items import (
    _embedding_times,
    _raster_bbox,
    _source_links,
)
from marscope_stac.products.render import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    RasterLayout,
    quantize,
    raster_zoom_range,
    tile_metadata,
    write_raster_pmtiles,
)
from marscope_stac.products.write import CLASS_COLOURS, ClassProduct, _add_to_queries
from marscope_stac.stac.build import (
    COG_MEDIA_TYPE,
    FILE_V2,
    PMTILES_MEDIA_TYPE,
    PROCESSING_V1,
    PROJ_V2,
    RASTER_V2,
    SSYS_V1,
    cog_band_fields,
    file_asset,
    now_utc,
    proj_fields,
    ssys_fields,
    stac_item,
)
from marscope_stac.stac.catalog import OutputCatalog

__all__ = [
    "write_class_product",
]


_CLASS_FILES = ("classes.tif", "probabilities.tif", "preview.png", "classes.pmtiles")
"""The files of a classification product (written afresh when it is asked again)."""


def write_class_product(
    out: str | Path,
    es: EmbeddingSet,
    grid: Grid,
    layout: RasterLayout,
    names: list[str],
    templates: Sequence[str],
    prob: NDArray[np.float32],
    model_name: str,
) -> ClassProduct:
    """Write a zero-shot classification: class map and per-class probability COGs, STAC item.

    ``prob`` holds one column per class, background first, rows in the set's order.
    """
    catalog, qid = OutputCatalog(out), class_id(es, names, templates)
    folder = Path(out) / "queries" / qid
    catalog.existing_collection(folder.parent / "collection.json", claim=True)  # before work
    es.stac_item()  # a damaged set item too
    class_map = layout.raster((label := prob.argmax(axis=1)).astype(np.float32))
    stack = np.stack([quantize(layout.raster(prob[:, k])) for k in range(prob.shape[1])])
    cmap_u8 = np.where(np.isnan(class_map), PROBABILITY_NODATA, class_map).astype(np.uint8)
    all_names = ["background", *names]
    with staged_directory(folder, overwrite=True, owned=True) as stage:
        write_cog(
            stage / "classes.tif",
            cmap_u8,
            grid.body.crs,
            layout.transform,
            nodata=PROBABILITY_NODATA,
            band_names=["class"],
            overview_resampling="nearest",
        )
        write_cog(
            stage / "probabilities.tif",
            stack,
            grid.body.crs,
            layout.transform,
            nodata=PROBABILITY_NODATA,
            band_names=all_names,
            scale=PROBABILITY_SCALE,
            offset=0.0,
        )
        _class_preview(stage / "preview.png", cmap_u8, len(all_names))
        meta = tile_metadata(qid, "Zero-shot class map", grid.body)
        write_raster_pmtiles(
            stage / "classes.pmtiles",
            cmap_u8,
            layout.transform,
            meta,
            raster_zoom_range(layout.transform, cmap_u8.shape),
            nodata=PROBABILITY_NODATA,
            colours=list(CLASS_COLOURS[: len(all_names)]),
        )
        carry_over(folder, stage, _CLASS_FILES)  # a user's files stay
    item = _class_item(folder, qid, es, grid, layout, names, all_names, model_name)
    item_path = _add_to_queries(catalog, folder / f"{qid}.json", item, grid)
    counts = {n: int((label == k).sum()) for k, n in enumerate(all_names)}
    return ClassProduct(
        query_id=qid, folder=folder, item_path=item_path, classes=names, counts=counts
    )


def _class_preview(path: Path, cmap_u8: NDArray[np.uint8], n_classes: int) -> None:
    from PIL import Image

    rgb = np.zeros((*cmap_u8.shape, 4), np.uint8)
    for k, colour in enumerate(CLASS_COLOURS[:n_classes]):
        rgb[cmap_u8 == k] = [int(colour[i : i + 2], 16) for i in (0, 2, 4)] + [255]
    step = max(1, -(-max(cmap_u8.shape) // 1024))  # large maps: every n-th pixel
    rgb, cmap_u8 = rgb[::step, ::step], cmap_u8[::step, ::step]
    img = Image.fromarray(rgb, "RGBA")
    scale = max(1, min(1024 // max(cmap_u8.shape), 16))
    img.resize((cmap_u8.shape[1] * scale, cmap_u8.shape[0] * scale), Image.Resampling.NEAREST).save(
        path
    )


def _class_item(
    folder: Path,
    qid: str,
    es: EmbeddingSet,
    grid: Grid,
    layout: RasterLayout,
    names: list[str],
    all_names: list[str],
    model_name: str,
) -> dict[str, Any]:
    from marscope_stac.stac.build import CLASSIFICATION_V2

    classes_field = _classes_field(all_names)
    bbox = _raster_bbox(layout)
    grid_fields = proj_fields(grid.body.crs, layout.transform, layout.shape)
    props = _class_props(es, grid, names, model_name)
    assets = _class_assets(folder, grid_fields, classes_field)
    extensions = [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2, PROCESSING_V1, CLASSIFICATION_V2]
    return stac_item(
        qid,
        props,
        extensions,
        bbox,
        assets,
        _source_links(es, folder),
        title=f"Classes: {', '.join(names)}"[:120],
        description=(
            f"Zero-shot classification of every cell of grid {grid.spec} into "
            f"{', '.join(names)} or background, over embedding set {es.root.name} made with "
            f"model {model_name}."
        ),
    )


def _classes_field(all_names: list[str]) -> list[dict[str, Any]]:
    """The classification extension's classes: value, slug name, description and colour."""
    slug = [
        re.sub(r"[^0-9A-Za-z_-]+", "-", n).strip("-") or f"class{k}"
        for k, n in enumerate(all_names)
    ]
    return [
        {"value": k, "name": slug[k], "description": all_names[k], "color_hint": CLASS_COLOURS[k]}
        for k in range(len(all_names))
    ]


def _class_props(es: EmbeddingSet, grid: Grid, names: list[str], model_name: str) -> dict[str, Any]:
    """Properties of a class product's STAC item: body, time span, processing, classes."""
    start, end = _embedding_times(es)
    return {
        **ssys_fields(grid.body),
        "start_datetime": start,
        "end_datetime": end,
        "processing:lineage": "Zero-shot classification: softmax over class prompts and a "
        "background prompt at the model's temperature.",
        "processing:software": software(),
        "processing:datetime": now_utc(),
        "marscope:classes": names,
        "marscope:model": model_name,
    }


def _class_assets(
    folder: Path, grid_fields: dict[str, Any], classes_field: list[dict[str, Any]]
) -> dict[str, Any]:
    """Assets of a class product's STAC item: class map, probabilities, preview, tiles."""
    asset: Callable[..., Any] = lambda name, *a, **kw: file_asset(folder / name, folder, *a, **kw)  # noqa: E731
    return {
        "classes": asset(
            "classes.tif",
            COG_MEDIA_TYPE,
            ["data"],
            "Most probable class (COG)",
            **grid_fields,
            bands=cog_band_fields(folder / "classes.tif"),
            **{"classification:classes": classes_field},
        ),
        "probabilities": asset(
            "probabilities.tif",
            COG_MEDIA_TYPE,
            ["data"],
            "Per-class probabilities (COG, one band each)",
            **grid_fields,
            bands=cog_band_fields(folder / "probabilities.tif"),
        ),
        "preview": asset(
            "preview.png", "image/png", ["thumbnail", "overview", "visual"], "Class map preview"
        ),
        "tiles": asset(
            "classes.pmtiles", PMTILES_MEDIA_TYPE, ["visual", "tiles"], "Class map tiles (PMTiles)"
        ),
    }
