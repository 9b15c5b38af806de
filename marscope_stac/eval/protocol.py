"""Per-landform retrieval figures of a model on a labelled catalog (e.g. the demo world).

Embeds every grid cell of one split's imagery, queries each landform class by text (the
class name, and optionally a paraphrase) with MarScope's prompt ensemble, and scores the
ranking against the split's ground-truth points with the protocol of
:mod:`marscope_stac.eval.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from marscope_stac.core.errors import CatalogError
from marscope_stac.core.vocabulary import CLASS_NAMES
from marscope_stac.eval.evaluate import (
    PARAPHRASES,
    RetrievalScore,
    score_retrieval,
    split_items,
)
from marscope_stac.grid.grids import cell_side_deg, parse_grid
from marscope_stac.models.clip import MARSCOPE_TEMPLATES, ClipModel
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches

__all__ = [
    "REAL_QUERIES",
    "LandformReport",
    "cell_degrees",
    "embed_split",
    "evaluate_landforms",
    "evaluate_real",
    "real_items",
    "real_regions",
    "render_split",
    "score_landforms",
    "score_real_queries",
    "truth_points",
]


@dataclass
class LandformReport:
    """Per-class retrieval figures."""

    table: pd.DataFrame
    grid: str
    radius_deg: float
    n_cells: int
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A table for people."""
        cols = [c for c in self.table.columns if c.endswith(("best_f1", "auprc"))]
        return (
            f"{self.n_cells} cells of {self.grid}, r = {self.radius_deg:g} degree\n"
            + self.table[cols].round(3).to_string()
        )


_BATCH = 128
"""Tiles the model encodes at a time."""


def _cell_batches(
    images: list[Any], grid: str, tile_px: int, context: float
) -> Iterator[tuple[NDArray[np.float32], NDArray[np.float64]]]:
    """Tiles and lon/lat centres of every cell with data of some image items, by batch."""
    sources = load_sources(images)
    g = parse_grid(grid, sources.body)
    plan = plan_tiles(sources, g, tile_px, context=context)
    for batch in iter_tile_batches(plan, batch_size=_BATCH):
        keep = batch.valid > 0.5
        yield batch.pixels[keep], g.centers(batch.cells[keep])


def render_split(
    images: list[Any], grid: str, tile_px: int, context: float = 0.0
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Tiles (in memory) and lon/lat centres of every cell of some image items.

    ``tile_px`` and ``context`` as the model that will see them (its ``image_size`` and
    ``tile_context``).
    """
    parts = list(_cell_batches(images, grid, tile_px, context))
    if not parts:
        return np.zeros((0, tile_px, tile_px), np.float32), np.zeros((0, 2))
    return np.concatenate([p for p, _ in parts]), np.concatenate([c for _, c in parts])


def embed_split(
    model: ClipModel, images: list[Any], grid: str, tile_px: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Embeddings and lon/lat centres of every cell of some image items (in memory).

    ``images`` are STAC items (e.g. a split's, from
    :func:`~marscope_stac.eval.evaluate.split_items`).
    """
    embs, centres = [], []
    for pixels, c in _cell_batches(images, grid, tile_px or model.image_size, model.tile_context):
        embs.append(model.encode_images(pixels))
        centres.append(c)
    return np.concatenate(embs), np.concatenate(centres)


def evaluate_landforms(
    model: ClipModel,
    catalog: str | Path,
    *,
    split: str = "test",
    grid: str = "lonlat:0.02",
    tile_px: int | None = None,
    radius_cells: float = 2.5,
    paraphrases: dict[str, str] | None = PARAPHRASES,
    classes: list[str] | None = None,
) -> LandformReport:
    """Best F1 over K and AUPRC per landform class, for class-name and paraphrased queries.

    Besides the published point protocol (a cell is correct within ``radius_cells`` of a
    landform's reference point), an outline protocol is reported (``*_outline_best_f1``): a
    cell is correct when its centre lies within half a cell of a landform outline, i.e. it
    overlaps the landform, and a landform is found when one of its cells is retrieved. It
    does not penalise correct cells on large landforms far from their reference point.

    Args:
        model: The model.
        catalog: Labelled catalog (image items + label items with ``points`` assets).
        split: Which split to evaluate (``test`` is the held-out area of the demo world).
        grid: Grid of the cells to rank.
        tile_px: Tile size (the model's input size by default).
        radius_cells: Match radius in cells (MarScope: 0.5 degree / 0.2 degree = 2.5).
        paraphrases: A differently phrased query per class, or None.
        classes: Classes to evaluate (default: every class with points, except plains).
    """
    emb, centres = embed_split(model, split_items(catalog, split)[0], grid, tile_px)
    return score_landforms(
        model, emb, centres, catalog, split, grid, radius_cells, paraphrases, classes
    )


def cell_degrees(grid: str) -> float:
    """The side of a grid's cells near (0, 0), in degrees (match radii are counted in it)."""
    return cell_side_deg(grid)


def score_landforms(
    model: ClipModel,
    emb: NDArray[np.float32],
    centres: NDArray[np.float64],
    catalog: str | Path,
    split: str = "test",
    grid: str = "lonlat:0.02",
    radius_cells: float = 2.5,
    paraphrases: dict[str, str] | None = PARAPHRASES,
    classes: list[str] | None = None,
) -> LandformReport:
    """Per-class figures from precomputed cell embeddings (see :func:`evaluate_landforms`)."""
    g = parse_grid(grid)
    cell_deg = cell_degrees(grid)
    radius = radius_cells * cell_deg
    _, labels = split_items(catalog, split)
    pts = pd.concat([gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels])
    outlines = (
        pd.concat(
            [gpd.read_parquet(i.assets["labels-parquet"].get_absolute_href()) for i in labels]
        )
        if all("labels-parquet" in i.assets for i in labels)
        else None
    )
    names = classes or sorted(c for c in pts.landform.unique() if c != "plains")
    rows = {}
    for cls in names:
        p = pts[pts.landform == cls]
        xy = np.column_stack([p.geometry.x, p.geometry.y])
        row: dict[str, float] = {"points": len(p)}
        queries = {"name": CLASS_NAMES.get(cls, cls.replace("_", " "))}
        if paraphrases and cls in paraphrases:
            queries["paraphrase"] = paraphrases[cls]
        for kind, text in queries.items():
            q = model.encode_queries([text], MARSCOPE_TEMPLATES)[0]
            scores = emb @ q
            res: RetrievalScore = score_retrieval(scores, centres, xy, radius)
            row[f"{kind}_best_f1"] = res.best_f1
            row[f"{kind}_auprc"] = res.auprc
            row[f"{kind}_best_k"] = res.best_k
            if outlines is not None:
                shapes = list(outlines[outlines.landform == cls].geometry)
                poly = score_retrieval(scores, centres, None, 0.5 * cell_deg, shapes=shapes)
                row[f"{kind}_outline_best_f1"] = poly.best_f1
        rows[cls] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    return LandformReport(table, g.spec, radius, len(emb))


REAL_QUERIES: dict[str, tuple[str, float]] = {
    "impact crater": ("impact_crater", 100.0),
    "volcano": ("volcano", 50.0),
    "mons": ("volcano", 50.0),
    "canyon": ("canyon", 0.0),
    "chasma": ("canyon", 0.0),
    "valley": ("valley", 100.0),
    "vallis": ("valley", 100.0),
}
"""Query text -> (nomenclature class, smallest size in km) of the real-data evaluation."""


def _random_best_f1(
    centres: NDArray[np.float64], xy: NDArray[np.float64], radius: float, draws: int
) -> tuple[float, float, float]:
    """Mean best F1 and AUPRC of random rankings (a fixed seed), and their best F1's p99.

    The 99th percentile is what a ranking must beat to be clearly better than chance.
    """
    rng = np.random.default_rng(0)
    res = [score_retrieval(rng.random(len(centres)), centres, xy, radius) for _ in range(draws)]
    f1 = [r.best_f1 for r in res]
    return float(np.mean(f1)), float(np.mean([r.auprc for r in res])), float(np.percentile(f1, 99))


def truth_points(points: gpd.GeoDataFrame, landform: str, min_km: float) -> NDArray[np.float64]:
    """Lon/lat of the nomenclature points of one class at least ``min_km`` across."""
    sel = points[(points.landform == landform) & (points.diameter_km >= min_km)]
    return np.column_stack([sel.geometry.x, sel.geometry.y]).astype(np.float64)


def score_real_queries(
    scores_of: dict[str, Any],
    centres: NDArray[np.float64],
    points: gpd.GeoDataFrame,
    radius_deg: float = 2.0,
    queries: dict[str, tuple[str, float]] = REAL_QUERIES,
    random_draws: int = 100,
) -> pd.DataFrame:
    """Best F1 over K and AUPRC of each query's cell scores against nomenclature points.

    ``scores_of`` maps a column name (e.g. a model) to a function of the query text giving
    one score per cell. Besides those columns the table has ``random_*`` (mean of
    ``random_draws`` random rankings; ``random_p99_best_f1``: their 99th percentile, the bar
    for "clearly above random") and ``catalogue_*`` (cells ranked by their distance to the
    nearest truth point: what a perfect map scores under the protocol).
    """
    rows = {}
    for text, (landform, min_km) in queries.items():
        xy = truth_points(points, landform, min_km)
        row: dict[str, float] = {"points": len(xy), "min_km": min_km}
        if not len(xy):
            rows[text] = row
            continue
        for name, fn in scores_of.items():
            res = score_retrieval(fn(text), centres, xy, radius_deg)
            row[f"{name}_best_f1"], row[f"{name}_auprc"] = res.best_f1, res.auprc
        row["random_best_f1"], row["random_auprc"], row["random_p99_best_f1"] = _random_best_f1(
            centres, xy, radius_deg, random_draws
        )
        from scipy.spatial import cKDTree

        from marscope_stac.core.bodies import unit_vectors

        dist, _ = cKDTree(unit_vectors(xy)).query(unit_vectors(centres))
        res = score_retrieval(-dist, centres, xy, radius_deg)
        row["catalogue_best_f1"], row["catalogue_auprc"] = res.best_f1, res.auprc
        rows[text] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def real_regions(catalog: str | Path, split: str) -> list[tuple[str, str]]:
    """The (body, kind of picture) pairs of a real-data catalog's images of one split.

    E.g. ``[("Mars", "colour"), ("Mars", "relief"), ("Moon", "relief")]``; items without
    ``marscope:kind`` are relief, without ``ssys:targets`` Mars.

    Raises:
        CatalogError: if the catalog has no image and label items of that split.
    """
    images, _ = split_items(catalog, split)
    return sorted(
        {
            (body, i.properties.get("marscope:kind", "relief"))
            for i in images
            for body in i.properties.get("ssys:targets", ["Mars"])
        }
    )


def real_items(
    catalog: str | Path, split: str, kind: str = "relief", body: str = "Mars"
) -> tuple[list[Any], list[Any]]:
    """Image and label items of one split, kind of picture and body of a real-data catalog.

    Items without ``marscope:kind`` are relief; without ``ssys:targets``, of any body.

    Raises:
        CatalogError: if the catalog has no images of that split, kind and body with labels.
    """

    def wanted(item: Any) -> bool:
        props = item.properties
        return props.get("marscope:kind", "relief") == kind and body in props.get(
            "ssys:targets", [body]
        )

    images, labels = split_items(catalog, split)
    images, labels = [i for i in images if wanted(i)], [i for i in labels if wanted(i)]
    if not images or not labels:
        raise CatalogError(
            f"{catalog} has no {split} images of {body} of kind {kind!r} with labels"
        )
    return images, labels


def evaluate_real(
    models: dict[str, ClipModel],
    catalog: str | Path,
    grid: str = "lonlat:2",
    radius_deg: float = 2.0,
    queries: dict[str, tuple[str, float]] = REAL_QUERIES,
    kind: str = "relief",
    split: str = "test",
    body: str = "Mars",
) -> LandformReport:
    """Real-data retrieval figures of several models on a held-out nomenclature catalog.

    Every cell of the catalog's ``test`` imagery (e.g. Mars east of 0 degrees, from
    ``marscope real-data --part eval``) is embedded by each model on ``grid`` and ranked by
    each query of ``queries`` (MarScope's prompt ensemble); truth is the nomenclature points
    of the query's class at least its size, matched within ``radius_deg``. Only the images
    of one ``kind`` of picture (``relief``, ``colour``) and their labels are used: the kinds
    of one region are figures apart (items without ``marscope:kind`` are relief). ``split``
    picks the items (``validation`` for ``marscope real-data --part validation``), ``body``
    the items of one body (``ssys:targets``; a validation catalog holds the Moon too).

    Raises:
        CatalogError: if the catalog has no images of that split, kind and body with labels.
    """
    images, labels = real_items(catalog, split, kind, body)
    points = pd.concat([gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels])
    scores_of = {}
    centres: NDArray[np.float64] | None = None
    for name, model in models.items():
        emb, centres = embed_split(model, images, grid)

        def fn(text: str, emb: NDArray[np.float32] = emb, model: ClipModel = model) -> Any:
            return emb @ model.encode_queries([text], MARSCOPE_TEMPLATES)[0]

        scores_of[name] = fn
    assert centres is not None
    table = score_real_queries(scores_of, centres, points, radius_deg, queries)
    return LandformReport(table, grid, radius_deg, len(centres))
