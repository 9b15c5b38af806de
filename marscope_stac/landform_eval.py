"""Per-landform retrieval figures of a model on a labelled catalog (e.g. the demo world).

Embeds every grid cell of one split's imagery, queries each landform class by text (the
class name, and optionally a paraphrase) with MarScope's prompt ensemble, and scores the
ranking against the split's ground-truth points with the protocol of
:mod:`marscope_stac.evaluate`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
from numpy.typing import NDArray

from marscope_stac.demo.captions import CLASS_NAMES
from marscope_stac.errors import CatalogError, ConfigError
from marscope_stac.evaluate import (
    PARAPHRASES,
    RetrievalScore,
    retrieval_curve,
    score_retrieval,
)
from marscope_stac.grid import parse_grid
from marscope_stac.models import MARSCOPE_TEMPLATES, ClipModel
from marscope_stac.stac_in import load_sources
from marscope_stac.store import EmbeddingTable
from marscope_stac.tiles import iter_tile_batches, plan_tiles

__all__ = [
    "LandformReport",
    "ProductEvaluation",
    "embed_split",
    "evaluate_landforms",
    "evaluate_product",
    "score_landforms",
    "split_cells",
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


def _split_items(catalog: str | Path, split: str) -> tuple[list[pystac.Item], list[pystac.Item]]:
    path = Path(catalog)
    root = path / "catalog.json" if path.is_dir() else path
    cat = pystac.Catalog.from_file(str(root))
    images: list[pystac.Item] = []
    labels: list[pystac.Item] = []
    for item in cat.get_items(recursive=True):
        if split != "all" and item.properties.get("marscope:split") != split:
            continue
        (labels if "label:type" in item.properties else images).append(item)
    if not images or not labels:
        raise CatalogError(f"{catalog} has no image and label items with split {split!r}")
    return images, labels


def embed_split(
    model: ClipModel,
    catalog: str | Path,
    split: str = "test",
    grid: str = "lonlat:0.02",
    tile_px: int | None = None,
    batch_size: int = 128,
) -> tuple[NDArray[np.float32], NDArray[np.float64]]:
    """Embeddings and lon/lat centres of every cell of a split's imagery (in memory)."""
    images, _ = _split_items(catalog, split)
    sources = load_sources(images)
    g = parse_grid(grid, sources.body)
    plan = plan_tiles(sources, g, tile_px or model.image_size)
    embs, cells = [], []
    for batch in iter_tile_batches(plan, batch_size=batch_size):
        keep = batch.valid > 0.5
        embs.append(model.encode_images(batch.pixels[keep]))
        cells.append(batch.cells[keep])
    idx = np.concatenate(cells)
    return np.concatenate(embs), g.centers(idx)


def evaluate_landforms(
    model: ClipModel,
    catalog: str | Path,
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
    emb, centres = embed_split(model, catalog, split, grid, tile_px)
    return score_landforms(
        model, emb, centres, catalog, split, grid, radius_cells, paraphrases, classes
    )


def split_cells(
    table: EmbeddingTable, catalog: str | Path, split: str = "test"
) -> NDArray[np.bool_]:
    """Rows of an embedding table read only from the split's image items."""
    images, _ = _split_items(catalog, split)
    ids = {i.id for i in images}
    return np.array([bool(s) and set(s) <= ids for s in table.source_items], bool)


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
    cell_deg = float(np.median(np.diff(g.bounds(g.cells_in_bbox(0, 0, 1, 1)[:1])[0, ::2])))
    radius = radius_cells * cell_deg
    _, labels = _split_items(catalog, split)
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


@dataclass
class ProductEvaluation:
    """Figures of one query product against ground truth."""

    query_id: str
    truth: str
    landform: str | None
    split: str | None
    threshold: float
    points: RetrievalScore | None
    outlines: RetrievalScore | None
    cell_precision: float
    cell_recall: float
    cell_f1: float
    n_cells: int
    report_path: Path | None = None
    curve_path: Path | None = None

    def summary(self) -> str:
        """Lines for people."""
        lines = [
            f"{self.query_id} vs {self.truth}"
            + (f" [{self.landform}]" if self.landform else "")
            + (f" ({self.split} split)" if self.split else "")
            + f": {self.n_cells} cells"
        ]
        if self.points is not None:
            p = self.points
            lines.append(
                f"  points (r = {p.radius_deg:g} deg): best F1 {p.best_f1:.3f} at "
                f"K = {p.best_k}, AUPRC {p.auprc:.3f}"
            )
        if self.outlines is not None:
            o = self.outlines
            lines.append(
                f"  outlines: best F1 {o.best_f1:.3f} at K = {o.best_k}, AUPRC {o.auprc:.3f}"
            )
        lines.append(
            f"  cells at p >= {self.threshold:g}: precision {self.cell_precision:.3f}, "
            f"recall {self.cell_recall:.3f}, F1 {self.cell_f1:.3f}"
        )
        if self.report_path is not None:
            lines.append(f"  table: {self.report_path}\n  PR curve: {self.curve_path}")
        return "\n".join(lines)


def _load_truth(
    truth: str | Path, landform: str | None, split: str | None
) -> tuple[NDArray[np.float64] | None, list[Any] | None, Any]:
    """(points, outlines, area) from a labelled catalog, GeoParquet/GeoJSON or CSV."""
    import shapely

    path = Path(truth)
    if path.is_dir() or path.name in ("catalog.json", "collection.json"):
        images, labels = _split_items(path if path.is_dir() else path.parent, split or "all")
        pts = pd.concat([gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels])
        outl = pd.concat(
            [gpd.read_parquet(i.assets["labels-parquet"].get_absolute_href()) for i in labels]
        )
        if landform:
            pts, outl = pts[pts.landform == landform], outl[outl.landform == landform]
        area = shapely.union_all([shapely.geometry.shape(i.geometry) for i in images])
        xy = np.column_stack([pts.geometry.x, pts.geometry.y])
        return xy, list(outl.geometry), area
    if not path.is_file():
        raise CatalogError(f"ground truth {truth} does not exist")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path)
        cols = {c.lower(): c for c in df.columns}
        if "lon" not in cols or "lat" not in cols:
            raise CatalogError(f"{path} needs 'lon' and 'lat' columns")
        if landform and "landform" in cols:
            df = df[df[cols["landform"]] == landform]
        return df[[cols["lon"], cols["lat"]]].to_numpy(np.float64), None, None
    gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    if landform and "landform" in gdf:
        gdf = gdf[gdf.landform == landform]
    if (gdf.geom_type == "Point").all():
        return np.column_stack([gdf.geometry.x, gdf.geometry.y]), None, None
    cent = gdf.geometry.representative_point()
    return np.column_stack([cent.x, cent.y]), list(gdf.geometry), None


def evaluate_product(
    product: str | Path,
    truth: str | Path,
    landform: str | None = None,
    split: str | None = None,
    radius_cells: float = 2.5,
    threshold: float | None = None,
    rank_by: str = "probability",
    write: bool = True,
) -> ProductEvaluation:
    """Score a query product against ground truth (MarScope's protocol and per-cell figures).

    Args:
        product: The query's folder or STAC item JSON.
        truth: A labelled STAC catalog (label items with ``points``/``labels-parquet``), or a
            GeoParquet / GeoJSON / CSV (``lon``, ``lat``) file.
        landform: Only ground truth of this class (``landform`` column).
        split: With a catalog: only its items of this split, and only cells inside them.
        radius_cells: Point-protocol radius in cells (2.5 as in MarScope).
        threshold: Per-cell decision threshold (default: the product's).
        rank_by: ``probability`` (the product) or ``score`` (raw similarity).
        write: Write the table (JSON) and a PR-curve PNG beside the product.
    """
    import shapely

    from marscope_stac.evaluate import curve_from_neighbours, neighbours_of_shapes
    from marscope_stac.products import read_scores

    folder = Path(product)
    folder = folder.parent if folder.suffix == ".json" else folder
    item_path = folder / f"{folder.name}.json"
    if not (folder / "scores.parquet").is_file() or not item_path.is_file():
        raise CatalogError(f"{product} is not a query product (no scores.parquet / item)")
    item = json.loads(item_path.read_text())
    grid = parse_grid(item["properties"]["marscope:grid"])
    thr = float(
        item["properties"].get("marscope:threshold", 0.5) if threshold is None else threshold
    )
    if not 0 <= thr <= 1:
        raise ConfigError(f"threshold {thr} must be in [0, 1]")
    if rank_by not in ("probability", "score"):
        raise ConfigError(f"rank by {rank_by!r}: use probability or score")
    scores = read_scores(folder / "scores.parquet")
    pts, outlines, area = _load_truth(truth, landform, split)
    centres = np.column_stack([scores.geometry.x, scores.geometry.y])
    if area is not None:
        inside = shapely.contains_xy(area, centres[:, 0], centres[:, 1])
        scores, centres = scores[inside], centres[inside]
    if pts is None or not len(pts):
        raise CatalogError(f"no ground truth{' of ' + landform if landform else ''} in {truth}")
    cell_deg = float(np.median(np.diff(grid.bounds(scores.cell_index.to_numpy()[:1])[0, ::2])))
    values = scores[rank_by].to_numpy()
    point_score = score_retrieval(values, centres, pts, radius_cells * cell_deg)
    outline_score = None
    if outlines:
        outline_score = score_retrieval(values, centres, None, 0.5 * cell_deg, shapes=outlines)
        near = neighbours_of_shapes(centres, outlines, 0.5 * cell_deg)
    else:
        from scipy.spatial import cKDTree

        from marscope_stac.evaluate import _chord, _unit

        tree = cKDTree(_unit(centres))
        near = [
            np.asarray(n)
            for n in tree.query_ball_point(_unit(pts), _chord(radius_cells * cell_deg))
        ]
    truth_cells = np.zeros(len(values), bool)
    for n in near:
        truth_cells[np.asarray(n, np.int64)] = True
    pred = scores["probability"].to_numpy() >= thr
    tp = float((pred & truth_cells).sum())
    cp = tp / max(pred.sum(), 1)
    cr = tp / max(truth_cells.sum(), 1)
    cf = 2 * cp * cr / (cp + cr) if cp + cr else 0.0
    ev = ProductEvaluation(
        folder.name,
        str(truth),
        landform,
        split,
        thr,
        point_score,
        outline_score,
        cp,
        cr,
        cf,
        len(values),
    )
    if write:
        tag = re.sub(r"[^a-z0-9]+", "-", f"{landform or Path(str(truth)).stem}-{split or 'all'}")
        ev.report_path = folder / f"evaluation-{tag}.json"
        ev.curve_path = folder / f"evaluation-{tag}.png"
        record = {
            "query": folder.name,
            "truth": str(truth),
            "landform": landform,
            "split": split,
            "rank_by": rank_by,
            "threshold": thr,
            "cells": len(values),
            "points": point_score.as_dict(),
            "outlines": outline_score.as_dict() if outline_score else None,
            "cell_precision": cp,
            "cell_recall": cr,
            "cell_f1": cf,
        }
        from marscope_stac.fsutil import atomic_write_text

        atomic_write_text(ev.report_path, json.dumps(record, indent=1))
        precision, recall = (
            curve_from_neighbours(values, near)
            if outlines
            else (retrieval_curve(values, centres, pts, radius_cells * cell_deg))
        )
        _plot_pr(precision, recall, ev.curve_path, f"{folder.name} vs {landform or truth}")
    return ev


def _plot_pr(
    precision: NDArray[np.float64], recall: NDArray[np.float64], path: Path, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.plot(recall, precision, "k-")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
