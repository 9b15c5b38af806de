"""Image-text pairs from grid cells.

Every cell of a labelled catalog's grid is captioned with the features that fill it (a crater
that fills most of the cell, a canyon that crosses it), or paired with plains captions as
background, including the terrain around each landform.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import pystac
from numpy.typing import NDArray

from marscope_stac.core.errors import CatalogError
from marscope_stac.stac.read import read_local_catalog
from marscope_stac.train.pairs import PairSet

log = logging.getLogger(__name__)

__all__ = [
    "CELL_PX",
    "COMPACT_MIN_CELLS",
    "NEIGHBOUR_REACH",
    "CellFeatures",
    "load_cell_pairs",
]


_CELL_DEGREES = tuple(
    [0.5, 0.6, 0.75, 0.9, 1.0, 1.2, 1.5, 1.8, 2.0, 2.5, 3.0, 3.6, 4.5, 5.0, 6.0, 7.5, 9.0, 10.0]
)
"""Lon/lat cell sizes that divide 180 degrees (candidate grids for cell pairs)."""


COMPACT_MIN_CELLS = 0.8
"""Smallest compact feature (diameter, in cells) a cell pair is captioned with."""


NEIGHBOUR_REACH = 3.0
"""Cells within this many reaches of a feature they do not show are its neighbours."""


CELL_PX = (4.5, 5.0, 6.0, 7.0, 8.0, 11.0, 16.0, 23.0, 32.0)
"""Source pixels per cell of the grids cell pairs are rendered on (several ground scales;
the finest, where a cell is a few pixels of a global mosaic, in several alignments)."""


def _cell_sizes(res_deg: float, cell_px: Sequence[float]) -> list[float]:
    """The divisor of 180 nearest (in log) to each wanted cell size in pixels."""
    opts = np.array(_CELL_DEGREES)
    return sorted({float(opts[np.argmin(np.abs(np.log(opts / (p * res_deg))))]) for p in cell_px})


class CellFeatures(NamedTuple):
    """What each cell of a grid shows (see :func:`_assign_features`)."""

    main: NDArray[np.int64]
    """The feature the cell shows (-1: none)."""
    region: NDArray[np.int64]
    """The region it lies in (-1: none)."""
    minor: NDArray[np.bool_]
    """Near a feature too small to be what the cell shows: neither positive nor background."""
    neighbour: NDArray[np.int64]
    """For a cell showing nothing near a feature shown at this scale (the terrain that
    feature stands out from), the nearest such feature (relative to its reach); else -1."""


def _reach(shape: str, d_deg: float, size_deg: float) -> tuple[float, float, float]:
    """A feature's reach (degrees) and the sizes (in cells) at which a grid shows it."""
    if shape == "region":
        return 0.5 * d_deg, 0.0, np.inf
    if shape == "linear":
        return max(0.55 * size_deg, 0.25 * d_deg), 0.5, 8.0
    return max(0.55 * size_deg, 0.3 * d_deg), COMPACT_MIN_CELLS, 5.0


def _assign_features(
    centres: NDArray[np.float64], size_deg: float, feats: gpd.GeoDataFrame, km_per_deg: float
) -> CellFeatures:
    """Per cell: the feature it shows, its region, whether it is minor or a neighbour.

    A compact feature is shown by the cells within max(0.55 cell, 0.3 diameter) of its centre
    when its diameter is 0.8..5 cells (a crater that fills most of the cell is what the cell
    shows at that scale; finer grids show the smaller ones); a linear one (the size is a
    length) within max(0.55 cell, 0.25 length) when it is 0.5..8 cells long; the closest
    (relative to that reach) wins. Cells within 0.55 cell of a compact feature of 0.3..0.8
    cells are marked ``minor``: neither that landform at this scale nor clearly without it.
    Regions (plains, highlands) give context to the cells within their radius. Cells within
    ``NEIGHBOUR_REACH`` reaches of a shown feature that show nothing are its neighbours.
    """
    from scipy.spatial import cKDTree

    from marscope_stac.core.bodies import chord_length, unit_vectors

    tree = cKDTree(unit_vectors(centres))
    d_deg = feats["diameter_km"].to_numpy(float) / km_per_deg
    xy = np.column_stack([feats.geometry.x, feats.geometry.y])
    shape = feats["shape"].to_numpy()
    main = np.full(len(centres), -1, np.int64)
    best = np.full(len(centres), np.inf)
    region = np.full(len(centres), -1, np.int64)
    region_size = np.full(len(centres), np.inf)
    minor = np.zeros(len(centres), bool)
    neighbour = np.full(len(centres), -1, np.int64)
    nearest = np.full(len(centres), np.inf)
    for k in range(len(feats)):
        reach, lo, hi = _reach(shape[k], d_deg[k], size_deg)
        u = unit_vectors(xy[k : k + 1])[0]
        compact = shape[k] not in ("region", "linear")
        if compact and 0.3 * size_deg <= d_deg[k] < lo * size_deg:
            minor[tree.query_ball_point(u, chord_length(np.radians(0.55 * size_deg)))] = True
            continue
        if not lo * size_deg <= d_deg[k] <= hi * size_deg:
            continue
        if shape[k] == "region":
            near = np.asarray(tree.query_ball_point(u, chord_length(np.radians(reach))), np.int64)
            take = near[region_size[near] > d_deg[k]]
            region[take], region_size[take] = k, d_deg[k]
            continue
        # one query for the cells it shows (rel <= 1) and its neighbours (rel <= 3)
        around = tree.query_ball_point(u, chord_length(np.radians(NEIGHBOUR_REACH * reach)))
        around = np.asarray(around, np.int64)
        rel = np.linalg.norm(tree.data[around] - u, axis=1) / chord_length(np.radians(reach))
        near, near_rel = around[rel <= 1.0], rel[rel <= 1.0]
        if not near.size:
            continue  # shown by no cell here (it lies off the imagery): nobody's neighbour
        take = near_rel < best[near]
        main[near[take]], best[near[take]] = k, near_rel[take]
        take = rel < nearest[around]
        neighbour[around[take]], nearest[around[take]] = k, rel[take]
    minor &= main < 0
    neighbour[(main >= 0) | minor] = -1
    return CellFeatures(main, region, minor, neighbour)


def _cell_captions(
    main: NDArray[np.int64],
    region: NDArray[np.int64],
    feats: gpd.GeoDataFrame,
    rng: np.random.Generator,
) -> tuple[list[str], list[str]]:
    """One caption and class per cell: its feature (with its region as context), or region."""
    caps_col = list(feats["captions"])
    land = feats["landform"].to_numpy()
    captions, labels = [], []
    for m, r in zip(main.tolist(), region.tolist(), strict=True):
        ctx = str(rng.choice(caps_col[r])) if r >= 0 else ""
        if m >= 0:
            cap = str(rng.choice(caps_col[m]))
            if ctx and rng.uniform() < 0.4:
                cap = f"{cap} in {ctx}"
            captions.append(cap)
            labels.append(str(land[m]))
        else:
            captions.append(ctx or "terrain with no named landform")
            labels.append(str(land[r]) if r >= 0 else "terrain")
    return captions, labels


def load_cell_pairs(
    catalog: str | Path,
    split: str = "train",
    tile_px: int = 64,
    cell_px: Sequence[float] = CELL_PX,
    max_per_grid: int = 4000,
    seed: int = 0,
    context: float = 0.0,
) -> PairSet:
    """Pairs of grid-cell tiles and captions from catalogs with point labels of known size.

    For label items marked ``marscope:pairs = grid-cells`` (e.g. the nomenclature labels of
    :func:`~marscope_stac.datasets.real.build_real_data`), every image is cut on several lon/lat
    grids (cells of ``cell_px`` source pixels: craters of a few to hundreds of km are seen
    at the scale of the cells), tiles are rendered exactly as embedding renders them, and
    each cell is captioned from the labelled feature it shows (see
    :func:`_assign_features`). Cells that show none are paired with their region's caption:
    for each cell with a feature, one from around a feature of its landform, and as many
    again from anywhere (see :func:`_background`). With ``context`` the tiles show a
    margin around their cell (:class:`~marscope_stac.tiles.plan.TilePlan`); captions still say
    what the cell shows.

    Raises:
        CatalogError: if the catalog has no such label item of ``split``.
    """
    rng = np.random.default_rng(seed)
    cat, items = read_local_catalog(catalog)
    images, captions, labels, owner, fixed = [], [], [], [], []
    share: dict[str, float] = {}
    found = False
    for item in items:
        props = item.properties
        if props.get("marscope:pairs") != "grid-cells":
            continue
        if split != "all" and props.get("marscope:split") != split:
            continue
        found = True
        share[item.id] = float(props.get("marscope:pair_weight", 1.0))
        got = _item_pairs(cat, item, (tile_px, context), cell_px, max_per_grid, rng)
        images += got[0]
        captions += got[1]
        labels += got[2]
        owner += [item.id] * len(got[0])
        fixed += [props.get("marscope:kind", "relief") == "relief"] * len(got[0])
    if not found:
        raise CatalogError(f"no label item with grid-cell pairs and split {split!r} in {catalog}")
    return PairSet(
        crop_px=tile_px,
        images=np.stack(images),
        captions=captions,
        labels=labels,
        weights=_balance(owner, labels, share),
        context=context,
        fixed_light=np.array(fixed, bool),
    )


def _item_pairs(
    cat: pystac.Catalog,
    item: pystac.Item,
    tiles: tuple[int, float],
    cell_px: Sequence[float],
    max_per_grid: int,
    rng: np.random.Generator,
) -> tuple[list[NDArray[np.float16]], list[str], list[str]]:
    """Tiles, captions and classes of one label item, on every grid of its cell sizes.

    Raises:
        CatalogError: if the item has no ``source`` link to its imagery.
    """
    from marscope_stac.grid.grids import LonLatGrid
    from marscope_stac.stac.read import load_sources

    link = item.get_single_link("source")
    if link is None:
        raise CatalogError(f"label item {item.id} has no 'source' link to its imagery")
    source = link.resolve_stac_object(cat).target
    assert isinstance(source, pystac.Item)
    sources = load_sources([source])
    feats = gpd.read_parquet(item.assets["points"].get_absolute_href())
    res = abs(float(source.properties["proj:transform"][0]))
    km_per_deg = sources.body.metres_per_degree / 1000.0
    images: list[NDArray[np.float16]] = []
    captions: list[str] = []
    labels: list[str] = []
    for size in _cell_sizes(res, cell_px):
        grid = LonLatGrid(size, sources.body)  # polar rows too, as embedding sees them
        got = _grid_pairs(sources, grid, tiles, feats, km_per_deg, max_per_grid, rng)
        images += got[0]
        captions += got[1]
        labels += got[2]
    return images, captions, labels


def _grid_pairs(
    sources: Any,
    grid: Any,
    tiles: tuple[int, float],
    feats: gpd.GeoDataFrame,
    km_per_deg: float,
    max_per_grid: int,
    rng: np.random.Generator,
) -> tuple[list[NDArray[np.float16]], list[str], list[str]]:
    """Tiles (of ``tiles``: side in px, context), captions and classes of one grid.

    Cells with a feature, and without: see :func:`_background`.
    """
    from marscope_stac.tiles.plan import plan_tiles
    from marscope_stac.tiles.workers import iter_tile_batches

    plan = plan_tiles(sources, grid, tiles[0], context=tiles[1])
    cf = _assign_features(grid.centers(plan.cells), grid.size, feats, km_per_deg)
    with_f = np.flatnonzero(cf.main >= 0)
    if len(with_f) > max_per_grid:
        with_f = rng.choice(with_f, max_per_grid, replace=False)
    land = feats["landform"].to_numpy()
    pick = np.sort(np.concatenate([with_f, _background(cf, land[cf.main[with_f]], land, rng)]))
    sub = plan.take(pick)
    caps, labs = _cell_captions(cf.main[pick], cf.region[pick], feats, rng)
    images: list[NDArray[np.float16]] = []
    captions: list[str] = []
    labels: list[str] = []
    k = 0
    for batch in iter_tile_batches(sub, batch_size=256):
        for j in range(len(batch.cells)):
            if batch.valid[j] > 0.98:  # the cell's own pixels; a margin may reach past
                images.append(batch.pixels[j].astype(np.float16))
                captions.append(caps[k + j])
                labels.append(labs[k + j])
        k += len(batch.cells)
    log.info("%s: %d cells with a feature", grid.spec, len(with_f))
    return images, captions, labels


def _background(
    cf: CellFeatures,
    shown: NDArray[Any],
    landform: NDArray[Any],
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Background cells of a grid (indices into its plan), for cells showing ``shown``.

    For every cell showing a landform, one neighbour of a feature of that landform (where
    there are enough): the plateau a canyon cuts, the plains around a volcano, what the
    landform must be told apart from. Then as many cells as show a landform (at least 50)
    from anywhere else.

    Args:
        cf: What the grid's cells show.
        shown: The landform of each cell picked for its feature.
        landform: The landform of each feature.
        rng: Random generator.
    """
    near_land = np.full(len(cf.main), None, object)  # neighbours only show nothing
    near_land[cf.neighbour >= 0] = landform[cf.neighbour[cf.neighbour >= 0]]
    first: list[NDArray[np.int64]] = [np.zeros(0, np.int64)]
    for land, n in Counter(shown.tolist()).items():
        near = np.flatnonzero(near_land == land)
        first.append(rng.choice(near, min(n, len(near)), replace=False))
    taken = np.concatenate(first)
    rest = np.setdiff1d(np.flatnonzero((cf.main < 0) & ~cf.minor), taken)
    n_rest = min(len(rest), max(len(shown), 50))
    return np.concatenate([taken, rng.choice(rest, n_rest, replace=False)])


def _balance(owner: list[str], labels: list[str], share: dict[str, float]) -> NDArray[np.float64]:
    """Sampling weights: each image its share, its classes weighted by count ** -0.3.

    ``share`` is each label item's ``marscope:pair_weight`` (Mars twice the Moon). Craters
    outnumber every other named landform; the damping keeps them the most common while the
    rare classes (volcanoes, canyons) are seen far more than their share.
    """
    keys = list(zip(owner, labels, strict=True))
    count = Counter(keys)
    raw = np.array([count[k] ** -0.3 for k in keys])
    per_owner: dict[str, float] = {}
    for (o, _), r in zip(keys, raw, strict=True):
        per_owner[o] = per_owner.get(o, 0.0) + r
    w = np.array([r * share[o] / per_owner[o] for (o, _), r in zip(keys, raw, strict=True)])
    return w / w.sum()
