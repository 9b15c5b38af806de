"""Global geo-localisation evaluation (the MarScope protocol) on arrays of cell scores.

Rank all cells by score and take the top K. Recall@K is the share of catalogue points with a
retrieved cell within radius r (great-circle, degrees); precision@K is the share of retrieved
cells within r of any point. The headline figures are the best F1 over K (F1@K*) and the area
under the precision-recall curve (AUPRC).

MarScope sweeps K in steps of 200 up to 20,000 over 1.44 million 0.2-degree cells with
r = 0.5 degree (2.5 cells). On small areas like the demo world this module sweeps every K
(1..n cells) and scales r with the grid: ``radius_cells`` cells (2.5 by default), i.e.
0.05 degree on the 0.02-degree demo grid.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import shapely
import shapely.affinity
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from shapely.geometry.base import BaseGeometry

from marscope_stac.core.bodies import chord_length, unit_vectors
from marscope_stac.core.errors import CatalogError, ConfigError, DataError, check_range
from marscope_stac.core.plots import figure, save_figure
from marscope_stac.grid.grids import parse_grid

__all__ = [
    "PARAPHRASES",
    "ProductEvaluation",
    "RetrievalScore",
    "curve_from_neighbours",
    "evaluate_product",
    "neighbours_of_shapes",
    "retrieval_curve",
    "score_retrieval",
    "split_items",
]

PARAPHRASES: dict[str, str] = {
    "alluvial_fan": "a triangular apron of sediment deposited where a canyon opens onto a plain",
    "glacier_like_form": "an ice-rich tongue of debris creeping down from an alcove",
    "landslide": "the collapsed debris of a failed slope spreading across the floor",
    "pitted_cone": "small mounds with a crater on each summit",
    "yardang": "streamlined ridges sculpted by wind erosion",
    "impact_crater": "a circular depression with a raised rim made by a meteorite",
    "dune_field": "dark wind-blown sand piled into ripples and crescents",
    "channel": "a winding trough carved by ancient water flow",
    "plains": "smooth flat ground with only tiny craters",
}
"""Queries phrased differently from the demo world's training captions, one per class."""


def _unit(lonlat: NDArray[np.float64]) -> NDArray[np.float64]:
    return unit_vectors(lonlat)


def _chord(radius_deg: float) -> float:
    return chord_length(float(np.radians(radius_deg)))


@dataclass
class RetrievalScore:
    """The protocol's figures for one query."""

    best_f1: float
    best_k: int
    precision: float
    recall: float
    auprc: float
    n_points: int
    n_cells: int
    radius_deg: float

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict (for tables and JSON)."""
        return dict(self.__dict__)


def retrieval_curve(
    scores: ArrayLike,
    cell_lonlat: ArrayLike,
    points_lonlat: ArrayLike,
    radius_deg: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Precision and recall at every K = 1..n cells (cells ranked by descending score)."""
    s = np.asarray(scores, dtype=np.float64)
    cells = np.asarray(cell_lonlat, dtype=np.float64).reshape(-1, 2)
    pts = np.asarray(points_lonlat, dtype=np.float64).reshape(-1, 2)
    if len(s) != len(cells):
        raise ConfigError(f"{len(s)} scores for {len(cells)} cells")
    if not len(pts):
        raise ConfigError("no ground-truth points to evaluate against")
    if radius_deg <= 0:
        raise ConfigError(f"radius {radius_deg} must be positive")
    tree = cKDTree(_unit(cells))
    near = tree.query_ball_point(_unit(pts), _chord(radius_deg))
    return curve_from_neighbours(s, list(near))


def neighbours_of_shapes(
    cell_lonlat: ArrayLike, shapes: Sequence[BaseGeometry], radius_deg: float
) -> list[NDArray[np.int64]]:
    """For each ground-truth outline, the cells whose centre lies within ``radius_deg`` of it.

    Distances are planar in lon/lat degrees, with the east-west scale corrected by cos(lat)
    of the cell: good for the small radii used here, away from the poles.
    """
    cells = np.asarray(cell_lonlat, dtype=np.float64).reshape(-1, 2)
    out = []
    for shape in shapes:
        lat0 = float(shape.centroid.y)
        k = max(np.cos(np.radians(lat0)), 1e-6)
        minx, miny, maxx, maxy = shape.bounds
        pad_x, pad_y = radius_deg / k, radius_deg
        cand = np.flatnonzero(
            (cells[:, 0] >= minx - pad_x)
            & (cells[:, 0] <= maxx + pad_x)
            & (cells[:, 1] >= miny - pad_y)
            & (cells[:, 1] <= maxy + pad_y)
        )
        scaled = shapely.affinity.scale(shape, xfact=k, yfact=1.0, origin=(0, 0))
        pts = shapely.points(cells[cand, 0] * k, cells[cand, 1])
        hit = shapely.dwithin(pts, scaled, radius_deg)
        out.append(cand[hit].astype(np.int64))
    return out


def curve_from_neighbours(
    scores: ArrayLike, near: Sequence[ArrayLike]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Precision and recall at every K given, per ground-truth object, its nearby cells."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(near):
        raise ConfigError("no ground-truth objects to evaluate against")
    order = np.argsort(-s, kind="stable")
    rank = np.empty(len(s), np.int64)
    rank[order] = np.arange(len(s))
    # recall: an object is found once its best-ranked nearby cell is retrieved
    idx = [np.asarray(n, np.int64) for n in near]
    first = np.array([rank[n].min() if n.size else len(s) for n in idx])
    found_at = np.bincount(first[first < len(s)], minlength=len(s))
    recall = np.cumsum(found_at) / len(near)
    # precision: retrieved cells near any object
    hit = np.zeros(len(s), bool)
    for n in idx:
        hit[n] = True
    precision = np.cumsum(hit[order]) / np.arange(1, len(s) + 1)
    return precision, recall


def score_retrieval(
    scores: ArrayLike,
    cell_lonlat: ArrayLike,
    points_lonlat: ArrayLike | None,
    radius_deg: float,
    max_k: int | None = None,
    shapes: Sequence[BaseGeometry] | None = None,
) -> RetrievalScore:
    """Best F1 over K, its K, precision and recall there, and AUPRC (see the module docstring).

    Ground truth is points (the published protocol) or, with ``shapes``, outlines: then a
    cell counts as correct within ``radius_deg`` of any outline, and an outline is found when
    one such cell is retrieved.
    """
    if shapes is not None:
        if radius_deg < 0:
            raise ConfigError(f"radius {radius_deg} must not be negative")
        near = neighbours_of_shapes(cell_lonlat, shapes, radius_deg)
        precision, recall = curve_from_neighbours(scores, near)
        n_obj = len(shapes)
    else:
        if points_lonlat is None:
            raise ConfigError("give ground-truth points or shapes")
        precision, recall = retrieval_curve(scores, cell_lonlat, points_lonlat, radius_deg)
        n_obj = int(np.asarray(points_lonlat).size // 2)
    if max_k is not None:
        precision, recall = precision[:max_k], recall[:max_k]
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall + 1e-12), 0.0
    )
    k = int(np.argmax(f1))
    # AUPRC: step integration of precision over recall increments
    d_recall = np.diff(np.concatenate([[0.0], recall]))
    auprc = float(np.sum(precision * d_recall))
    return RetrievalScore(
        best_f1=float(f1[k]),
        best_k=k + 1,
        precision=float(precision[k]),
        recall=float(recall[k]),
        auprc=auprc,
        n_points=n_obj,
        n_cells=len(precision),
        radius_deg=float(radius_deg),
    )


# ----------------------------------------------------------------------------- products


def split_items(catalog: str | Path, split: str) -> tuple[list[pystac.Item], list[pystac.Item]]:
    """Image and label items of a labelled catalog (``split``: a ``marscope:split`` or all).

    Raises:
        CatalogError: if the catalog has no image or no label items of that split.
    """
    path = Path(catalog)
    root = path / "catalog.json" if path.is_dir() else path
    try:
        cat = pystac.read_file(str(root))
    except (OSError, ValueError, pystac.STACError, pystac.STACTypeError) as exc:
        raise CatalogError(
            f"{catalog} is not a labelled STAC catalog ({type(exc).__name__}: {exc}); give "
            "the folder (or catalog.json) of a STAC catalog with label items"
        ) from None
    if not isinstance(cat, pystac.Catalog):  # an item: no tree of labels to read
        raise CatalogError(f"{catalog} is a STAC item, not a labelled catalog")
    images: list[pystac.Item] = []
    labels: list[pystac.Item] = []
    for item in cat.get_items(recursive=True):
        if split != "all" and item.properties.get("marscope:split") != split:
            continue
        (labels if "label:type" in item.properties else images).append(item)
    if not images or not labels:
        raise CatalogError(f"{catalog} has no image and label items with split {split!r}")
    return images, labels


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


def _portable(path: str, folder: Path) -> str:
    """A URL as it is; a local path relative to ``folder`` (no machine's absolute path)."""
    if "://" in path:
        return path
    return os.path.relpath(Path(path).resolve(), folder.resolve())


def _load_truth(
    truth: str | Path, landform: str | None, split: str | None
) -> tuple[NDArray[np.float64] | None, list[Any] | None, Any]:
    """(points, outlines, area) from a labelled catalog, GeoParquet/GeoJSON or CSV."""
    import shapely

    path = Path(truth)
    if path.is_dir() or path.name in ("catalog.json", "collection.json"):
        images, labels = split_items(path if path.is_dir() else path.parent, split or "all")
        pts = pd.concat([gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels])
        outl = pd.concat(
            [gpd.read_parquet(i.assets["labels-parquet"].get_absolute_href()) for i in labels]
        )
        _check_landform([*pts.get("landform", []), *outl.get("landform", [])], landform, truth)
        if landform:
            pts, outl = pts[pts.landform == landform], outl[outl.landform == landform]
        area = shapely.union_all([shapely.geometry.shape(i.geometry) for i in images])
        xy = np.column_stack([pts.geometry.x, pts.geometry.y])
        return xy, list(outl.geometry), area
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise CatalogError(f"ground truth {truth} {what}; give a catalog or a table file")
    if path.suffix.lower() == ".csv":
        return _csv_truth(path, landform), None, None
    gdf = _read_table(path)
    _check_landform(gdf.get("landform", []), landform, truth, pooled=True)
    if landform and "landform" in gdf:
        gdf = gdf[gdf.landform == landform]
    if (gdf.geom_type == "Point").all():
        return np.column_stack([gdf.geometry.x, gdf.geometry.y]), None, None
    cent = gdf.geometry.representative_point()
    return np.column_stack([cent.x, cent.y]), list(gdf.geometry), None


def _check_landform(
    classes: Iterable[Any], landform: str | None, truth: str | Path, pooled: bool = False
) -> None:
    """Refuse pooled classes and names the truth does not hold: a query asks for one class.

    Ranked against every landform of a labelled catalog (its background plains too) any
    map scores well, whatever it shows. ``pooled``: a table of the user's may pool its
    classes on purpose (sub-types of one landform), so only unknown names are refused.

    Raises:
        ConfigError: if the truth holds several landforms and ``landform`` is None.
        CatalogError: if it holds none called ``landform``.
    """
    names = sorted({str(c) for c in classes if c is not None and c == c})  # NaN: none
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if landform is None and len(names) > 1 and not pooled:
        raise ConfigError(
            f"ground truth {truth} holds {len(names)} landforms ({shown}); give --landform "
            "with the one the query asks for",
            fields=("landform",),
        )
    if landform is not None and names and landform not in names:
        raise CatalogError(f"no ground truth of {landform!r} in {truth}; its landforms: {shown}")


_TRUTH_HINT = "give a STAC catalog, or a GeoParquet / GeoJSON / CSV (lon, lat) table"


def _csv_truth(path: Path, landform: str | None) -> NDArray[np.float64]:
    """lon/lat of a CSV table of truth points."""
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path} is not a readable CSV table ({exc}); {_TRUTH_HINT}") from exc
    cols = {str(c).lower(): c for c in df.columns}
    if "lon" not in cols or "lat" not in cols:
        raise CatalogError(f"{path} needs 'lon' and 'lat' columns")
    _check_landform(df[cols["landform"]] if "landform" in cols else [], landform, path, True)
    if landform and "landform" in cols:
        df = df[df[cols["landform"]] == landform]
    xy = df[[cols["lon"], cols["lat"]]].to_numpy()
    try:
        xy = xy.astype(np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: lon/lat are not all numbers ({exc})") from exc
    bad = ~np.isfinite(xy).all(axis=1) | (np.abs(xy[:, 1]) > 90)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: {int(bad.sum())} rows have no valid position (the first: row {row + 2}, "
            f"lon {xy[row, 0]}, lat {xy[row, 1]}); give finite lon and lat in -90..90"
        )
    return xy


def _read_table(path: Path) -> Any:
    """A GeoParquet or any vector file GDAL reads, as a GeoDataFrame."""
    try:
        gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    except Exception as exc:  # pyogrio / pyarrow raise many kinds for a file that is not a table
        raise DataError(
            f"{path} is not a readable vector table ({type(exc).__name__}); {_TRUTH_HINT}"
        ) from exc
    if gdf.geometry is None or gdf.geometry.isna().all():
        raise DataError(f"{path} has no geometries; {_TRUTH_HINT}")
    return gdf


def evaluate_product(
    product: str | Path,
    truth: str | Path,
    *,
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
    from marscope_stac.products.write import read_scores

    check_range("radius_cells", radius_cells, 0.0, 1000.0, above=True)
    for name, value in (("landform", landform), ("split", split)):
        if value is not None and not value.strip():  # "" would silently mean every one
            raise ConfigError(f"{name} is empty; give a name or leave it out", fields=(name,))
    folder, grid, thr = _open_product(product, threshold, rank_by)
    scores = read_scores(folder / "scores.parquet")
    pts, outlines, area = _load_truth(truth, landform, split)
    scores, centres = _cells_inside(scores, area)
    if pts is None or not len(pts):
        raise CatalogError(f"no ground truth{' of ' + landform if landform else ''} in {truth}")
    cell_deg = float(np.median(np.diff(grid.bounds(scores.cell_index.to_numpy()[:1])[0, ::2])))
    values = scores[rank_by].to_numpy()
    radius_deg = radius_cells * cell_deg
    point_score = score_retrieval(values, centres, pts, radius_deg)
    outline_score, near = _truth_neighbours(values, centres, pts, outlines, cell_deg, radius_deg)
    cp, cr, cf = _cell_figures(scores["probability"].to_numpy() >= thr, near)
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
        curve = _pr_curve(values, centres, pts, near if outlines else None, radius_deg)
        _write_report(ev, folder, rank_by, curve)
    return ev


def _cells_inside(scores: Any, area: Any) -> tuple[Any, NDArray[np.float64]]:
    """The scored cells and their centres (lon, lat): only those inside ``area`` if not None."""
    centres = np.column_stack([scores.geometry.x, scores.geometry.y])
    if area is not None:
        inside = shapely.contains_xy(area, centres[:, 0], centres[:, 1])
        scores, centres = scores[inside], centres[inside]
    return scores, centres


def _truth_neighbours(
    values: NDArray[Any],
    centres: NDArray[np.float64],
    pts: NDArray[np.float64],
    outlines: list[Any] | None,
    cell_deg: float,
    radius_deg: float,
) -> tuple[RetrievalScore | None, list[NDArray[Any]]]:
    """The outline score (None without outlines) and each outline's or point's nearby cells."""
    if outlines:
        outline_score = score_retrieval(values, centres, None, 0.5 * cell_deg, shapes=outlines)
        return outline_score, neighbours_of_shapes(centres, outlines, 0.5 * cell_deg)
    tree = cKDTree(_unit(centres))
    near = [np.asarray(n) for n in tree.query_ball_point(_unit(pts), _chord(radius_deg))]
    return None, near


def _pr_curve(
    values: NDArray[Any],
    centres: NDArray[np.float64],
    pts: NDArray[np.float64],
    near: list[NDArray[Any]] | None,
    radius_deg: float,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The precision-recall curve: from outline neighbourhoods ``near``, else from points."""
    if near is not None:
        return curve_from_neighbours(values, near)
    return retrieval_curve(values, centres, pts, radius_deg)


def _open_product(
    product: str | Path, threshold: float | None, rank_by: str
) -> tuple[Path, Any, float]:
    """A query product's folder, grid and decision threshold (the product's by default).

    Raises:
        CatalogError: if ``product`` is not a query product.
        ConfigError: for a bad threshold or ranking.
    """
    folder = Path(product)
    folder = folder.parent if folder.suffix == ".json" else folder
    item_path = folder / f"{folder.name}.json"
    if item_path.is_file() and not (folder / "scores.parquet").is_file():
        raise CatalogError(
            f"{product} was made without its scores table; ask the query again with "
            "--products all (or a list with scores) to evaluate it"
        )
    if not (folder / "scores.parquet").is_file() or not item_path.is_file():
        raise CatalogError(f"{product} is not a query product (no scores.parquet / item)")
    props = json.loads(item_path.read_text())["properties"]
    thr = float(props.get("marscope:threshold", 0.5) if threshold is None else threshold)
    if not 0 <= thr <= 1:
        raise ConfigError(f"threshold {thr} must be in [0, 1]")
    if rank_by not in ("probability", "score"):
        raise ConfigError(f"rank by {rank_by!r}: use probability or score")
    return folder, parse_grid(props["marscope:grid"]), thr


def _cell_figures(pred: NDArray[np.bool_], near: Sequence[Any]) -> tuple[float, float, float]:
    """Per-cell precision, recall and F1 of a thresholded map against truth neighbourhoods."""
    truth_cells = np.zeros(len(pred), bool)
    for n in near:
        truth_cells[np.asarray(n, np.int64)] = True
    tp = float((pred & truth_cells).sum())
    cp = tp / max(pred.sum(), 1)
    cr = tp / max(truth_cells.sum(), 1)
    return cp, cr, 2 * cp * cr / (cp + cr) if cp + cr else 0.0


def _write_report(
    ev: ProductEvaluation,
    folder: Path,
    rank_by: str,
    curve: tuple[NDArray[np.float64], NDArray[np.float64]],
) -> None:
    """The evaluation's JSON table and PR-curve PNG beside the product."""
    from marscope_stac.core.fs import atomic_write_json

    tag = _report_tag(ev, rank_by)
    ev.report_path = folder / f"evaluation-{tag}.json"
    ev.curve_path = folder / f"evaluation-{tag}.png"
    record = {
        "query": folder.name,
        "truth": _portable(ev.truth, folder),
        "landform": ev.landform,
        "split": ev.split,
        "rank_by": rank_by,
        "threshold": ev.threshold,
        "cells": ev.n_cells,
        "points": ev.points.as_dict() if ev.points else None,
        "outlines": ev.outlines.as_dict() if ev.outlines else None,
        "cell_precision": ev.cell_precision,
        "cell_recall": ev.cell_recall,
        "cell_f1": ev.cell_f1,
    }
    atomic_write_json(ev.report_path, record)
    precision, recall = curve
    _plot_pr(precision, recall, ev.curve_path, f"{folder.name} vs {ev.landform or ev.truth}")


def _report_tag(ev: ProductEvaluation, rank_by: str) -> str:
    """A report's name: what it was measured against, and a digest of every setting.

    Two evaluations of one product against other truth files (of one name), landforms,
    splits, thresholds, radii or rankings never share a name; the same one asked again
    replaces its report.
    """
    import hashlib
    import json

    words = f"{ev.landform or Path(ev.truth).stem}-{ev.split or 'all'}".lower()
    slug = re.sub(r"[^a-z0-9]+", "-", words).strip("-")[:40] or "truth"
    truth = str(ev.truth) if "://" in str(ev.truth) else str(Path(ev.truth).resolve())
    radius = [getattr(r, "radius_deg", None) for r in (ev.points, ev.outlines) if r]
    key = [truth, ev.landform, ev.split, rank_by, ev.threshold, radius]
    digest = hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def _plot_pr(
    precision: NDArray[np.float64], recall: NDArray[np.float64], path: Path, title: str
) -> None:
    fig = figure(figsize=(4, 3.5))
    ax = fig.subplots()
    ax.plot(recall, precision, "k-")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
