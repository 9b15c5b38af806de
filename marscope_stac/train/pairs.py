"""Image-text pairs for contrastive training, from a labelled STAC catalog or a table.

From a catalog (the demo world, or any catalog whose label items have a ``landform`` class
and ``captions`` per feature, with ``source`` links to the imagery): every label feature of
the requested split gives crops sampled inside its outline, each paired with one of its
captions; background crops away from every feature are paired with the ``plains`` captions.
From a table (CSV or Parquet with ``image`` and ``caption`` columns): each row is a pair, as
users bring their own pairs (like MarScope's 200,000).

Crops are cut at the ground size of a grid cell, so the model learns the scale it will see.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import rasterio
import shapely
from numpy.typing import NDArray
from pyproj import Transformer

from marscope_stac.core.errors import CatalogError, ConfigError, DataError
from marscope_stac.tiles.sample import scale_pixels

log = logging.getLogger(__name__)

__all__ = [
    "PairMix",
    "PairSet",
    "Scene",
    "load_catalog_pairs",
    "load_cell_pairs",
    "load_pairs",
    "load_table_pairs",
]


@dataclass
class Scene:
    """One image held in memory with the labels on it (pixel coordinates)."""

    item_id: str
    image: NDArray[np.float32]  # 0..1, NaN where no data
    features: gpd.GeoDataFrame  # geometry in pixel coordinates, landform, captions
    background: list[str]


@dataclass
class PairSet:
    """Pairs to train or validate on.

    Either ``scenes`` (crops are sampled on the fly) or ``images`` (fixed images) is set.
    """

    crop_px: int
    scenes: list[Scene] = field(default_factory=list)
    images: NDArray[np.float32] | None = None
    captions: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    background_share: float = 0.15
    prompt_share: float = 0.0
    """Share of captions replaced by a prompt-template sentence naming the class (0: none)."""
    weights: NDArray[np.float64] | None = None
    """Sampling probability of each fixed image (None: uniform)."""
    context: float = 0.0
    """Margin that scene crops also show around their cell, in cell sides (as tiles do)."""

    @property
    def cut_px(self) -> int:
        """Side of a scene crop in source pixels: the cell (``crop_px``) and its margin."""
        return round(self.crop_px * (1.0 + 2.0 * self.context))

    @property
    def classes(self) -> list[str]:
        """Class names present."""
        if self.images is not None:
            return sorted(set(self.labels))
        names = {str(c) for s in self.scenes for c in s.features["landform"]}
        return sorted(names | {"plains"})

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return int(sum(len(s.features) for s in self.scenes))

    def sample(
        self, n: int, rng: np.random.Generator, augment: bool = True
    ) -> tuple[NDArray[np.float32], list[str], list[str]]:
        """Draw ``n`` (crop, caption, class) triples."""
        if self.images is not None:
            if self.weights is not None:
                idx = rng.choice(len(self.images), n, p=self.weights)
            else:
                idx = rng.integers(0, len(self.images), n)
            imgs = self.images[idx].astype(np.float32)
            if augment:
                imgs = np.stack([_augment(i, rng) for i in imgs])
            chosen = [self.captions[i] for i in idx]
            classes = [self.labels[i] for i in idx]
            if self.prompt_share:
                from marscope_stac.core.vocabulary import REAL_NOUNS

                chosen = [
                    _prompt_caption(lab, rng, real=True)
                    if lab in REAL_NOUNS and rng.uniform() < self.prompt_share
                    else cap
                    for cap, lab in zip(chosen, classes, strict=True)
                ]
            return imgs, chosen, classes
        crops: list[NDArray[np.float32]] = []
        caps: list[str] = []
        labs: list[str] = []
        weights = np.array([max(len(s.features), 1) for s in self.scenes], float)
        weights /= weights.sum()
        tries = 0
        while len(crops) < n:
            tries += 1
            if tries > 200 * n + 1000:
                raise DataError(
                    f"crops of {self.cut_px} px (cell and margin) do not fit in the scenes; "
                    "use a smaller --crop-px or --tile-context"
                )
            scene = self.scenes[int(rng.choice(len(self.scenes), p=weights))]
            if rng.uniform() < self.background_share or not len(scene.features):
                got = _background_crop(scene, self.crop_px, rng, self.cut_px)
                if got is None:
                    continue
                caption = scene.background[int(rng.integers(len(scene.background)))]
                crop, label = got, "plains"
            else:
                row = scene.features.iloc[int(rng.integers(len(scene.features)))]
                feat = _feature_crop(scene, row.geometry, self.crop_px, rng, augment, self.cut_px)
                if feat is None:
                    continue
                crop = feat
                caps_row = list(row["captions"])
                caption, label = caps_row[int(rng.integers(len(caps_row)))], str(row["landform"])
            if self.prompt_share and rng.uniform() < self.prompt_share:
                caption = _prompt_caption(label, rng)
            crops.append(_augment(crop, rng) if augment else crop)
            caps.append(caption)
            labs.append(label)
        return np.stack(crops), caps, labs

    def fixed(self, rng: np.random.Generator) -> tuple[NDArray[np.float32], list[str], list[str]]:
        """One deterministic crop per feature (at its reference point), for validation."""
        if self.images is not None:
            return self.images.astype(np.float32), list(self.captions), list(self.labels)
        crops, caps, labs = [], [], []
        for scene in self.scenes:
            for row in scene.features.itertuples():
                p = row.geometry.representative_point()
                crop = _cut(scene.image, p.x, p.y, self.cut_px)
                if crop is None:
                    continue
                crops.append(crop)
                caps.append(str(row.captions[0]))
                labs.append(str(row.landform))
        _ = rng
        return np.stack(crops), caps, labs


def _prompt_caption(label: str, rng: np.random.Generator, real: bool = False) -> str:
    """A MarScope-template sentence around one of the class's nouns (query-style text)."""
    from marscope_stac.core.vocabulary import NOUNS, REAL_NOUNS
    from marscope_stac.models.clip import MARSCOPE_TEMPLATES

    nouns = (REAL_NOUNS if real else NOUNS).get(label, [label.replace("_", " ")])
    template = MARSCOPE_TEMPLATES[int(rng.integers(len(MARSCOPE_TEMPLATES)))]
    return template.format(nouns[int(rng.integers(len(nouns)))])


def _cut(img: NDArray[np.float32], cx: float, cy: float, size: int) -> NDArray[np.float32] | None:
    half = size / 2.0
    c0, r0 = round(cx - half), round(cy - half)
    if c0 < 0 or r0 < 0 or c0 + size > img.shape[1] or r0 + size > img.shape[0]:
        return None
    crop = img[r0 : r0 + size, c0 : c0 + size]
    if np.isnan(crop).mean() > 0.05:
        return None
    return np.nan_to_num(crop, nan=float(np.nanmean(crop)))


def _feature_crop(
    scene: Scene,
    geom: Any,
    size: int,
    rng: np.random.Generator,
    augment: bool,
    cut: int | None = None,
) -> NDArray[np.float32] | None:
    """A crop centred on a random point of the feature (its reference point when small).

    ``size`` is the cell; the crop is ``cut`` pixels wide (the cell and its margin).
    """
    minx, miny, maxx, maxy = geom.bounds
    for _ in range(20):
        if max(maxx - minx, maxy - miny) < size * 0.6 or not augment:
            p = geom.representative_point()
            cx, cy = p.x, p.y
        else:
            cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            if not geom.contains(shapely.Point(cx, cy)):
                continue
        if augment:
            cx += rng.normal(0, size * 0.12)
            cy += rng.normal(0, size * 0.12)
        crop = _cut(scene.image, cx, cy, cut or size)
        if crop is not None:
            return crop
    return None


def _background_crop(
    scene: Scene, size: int, rng: np.random.Generator, cut: int | None = None
) -> NDArray[np.float32] | None:
    union = scene.features.geometry.union_all() if len(scene.features) else None
    for _ in range(30):
        cx = rng.uniform(size, scene.image.shape[1] - size)
        cy = rng.uniform(size, scene.image.shape[0] - size)
        if union is not None and union.distance(shapely.Point(cx, cy)) < size * 0.75:
            continue
        crop = _cut(scene.image, cx, cy, cut or size)
        if crop is not None:
            return crop
    return None


def _augment(crop: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """Flips and brightness/contrast jitter (no rotation: the sun direction is physical)."""
    out = crop
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    if rng.uniform() < 0.5:
        out = out[::-1, :]
    gain = rng.uniform(0.8, 1.25)
    bias = rng.uniform(-0.08, 0.08)
    m = float(out.mean())
    return np.clip((out - m) * gain + m + bias, 0.0, 1.0).astype(np.float32)


def load_catalog_pairs(
    catalog: str | Path,
    split: str = "train",
    crop_px: int = 60,
    label_asset: str = "labels-parquet",
    prompt_share: float = 0.0,
) -> PairSet:
    """Pairs from the label items of ``split`` in a STAC catalog (see the module docstring).

    Args:
        catalog: Path of the catalog.
        split: ``train`` or ``test`` (items' ``marscope:split``); ``all`` for every item.
        crop_px: Crop side in source pixels (a grid cell's ground size).
        label_asset: Key of the GeoParquet label asset with ``landform`` and ``captions``.
        prompt_share: Share of training captions replaced by a MarScope-template sentence
            naming one of the class's nouns, so query-style text is seen in training.

    Raises:
        CatalogError: if the catalog has no label item of that split, or labels lack captions.
    """
    path = Path(catalog)
    root = path / "catalog.json" if path.is_dir() else path
    if not root.is_file():
        raise CatalogError(f"{catalog} is not a STAC catalog (no catalog.json)")
    cat = pystac.Catalog.from_file(str(root))
    scenes: list[Scene] = []
    for item in cat.get_items(recursive=True):
        if "label:type" not in item.properties:
            continue
        if split != "all" and item.properties.get("marscope:split") != split:
            continue
        if label_asset not in item.assets:
            raise CatalogError(f"label item {item.id} has no asset {label_asset!r}")
        link = item.get_single_link("source")
        if link is None:
            raise CatalogError(f"label item {item.id} has no 'source' link to its imagery")
        source = link.resolve_stac_object(cat).target
        assert isinstance(source, pystac.Item)
        from marscope_stac.stac.read import pick_asset

        href = source.assets[pick_asset(source)].get_absolute_href()
        gdf = gpd.read_parquet(item.assets[label_asset].get_absolute_href())
        if "captions" not in gdf or "landform" not in gdf:
            raise CatalogError(f"labels of {item.id} have no 'landform' and 'captions' columns")
        with rasterio.open(href) as src:
            data = src.read(1, masked=True)
            image = data.astype(np.float32).filled(np.nan)
            transform = src.transform
            crs = src.crs
            scale = float(src.scales[0])
            dtype = src.dtypes[0]
        image = scale_pixels(image, ~np.isnan(image), dtype, scale)
        tr = Transformer.from_crs(gdf.crs, crs.to_wkt(), always_xy=True)
        inv = ~transform

        def to_px(xy: NDArray[np.float64], tr: Transformer = tr, inv: Any = inv) -> Any:
            x, y = tr.transform(xy[:, 0], xy[:, 1])
            col = inv.a * x + inv.b * y + inv.c
            row = inv.d * x + inv.e * y + inv.f
            return np.column_stack([col, row])

        px = gdf.copy()
        px["geometry"] = [shapely.transform(g, to_px) for g in gdf.geometry]
        background = [c for caps in px.loc[px.landform == "plains", "captions"] for c in caps]
        feats = px[px.landform != "plains"].reset_index(drop=True)
        scenes.append(Scene(item.id, image, feats, background or ["plains", "flat terrain"]))
    if not scenes:
        raise CatalogError(f"no label item with marscope:split={split!r} in {catalog}")
    return PairSet(crop_px=crop_px, scenes=scenes, prompt_share=prompt_share)


def load_table_pairs(table: str | Path, size: int = 64) -> PairSet:
    """Pairs from a CSV or Parquet table with ``image`` (path) and ``caption`` columns.

    Relative image paths are resolved against the table's folder. An optional ``label``
    column gives classes (used to avoid penalising same-class pairs in the loss).

    Raises:
        DataError: if the table is empty, lacks the columns, or an image cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(table)
    if not path.is_file():
        raise DataError(f"caption table {path} does not exist")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = {"image", "caption"} - set(df.columns)
    if missing:
        raise DataError(
            f"caption table {path} lacks column(s) {sorted(missing)}; "
            "it needs 'image' and 'caption'"
        )
    df = df.dropna(subset=["image", "caption"])
    df = df[df["caption"].astype(str).str.strip() != ""]
    if df.empty:
        raise DataError(f"caption table {path} has no rows with an image and a caption")
    images = []
    for ref in df["image"].astype(str):
        p = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        try:
            with Image.open(p) as im:
                g = im.convert("L").resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(g, np.float32) / 255.0)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {p} (row of {path}): {exc}") from exc
    labels = (
        df["label"].astype(str).tolist() if "label" in df else [f"pair{i}" for i in range(len(df))]
    )
    return PairSet(
        crop_px=size,
        images=np.stack(images),
        captions=df["caption"].astype(str).tolist(),
        labels=labels,
    )


# ----------------------------------------------------------------------------- grid cells

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
        if shape[k] == "region":
            reach, lo, hi = 0.5 * d_deg[k], 0.0, np.inf
        elif shape[k] == "linear":
            reach, lo, hi = max(0.55 * size_deg, 0.25 * d_deg[k]), 0.5, 8.0
        else:
            reach, lo, hi = max(0.55 * size_deg, 0.3 * d_deg[k]), COMPACT_MIN_CELLS, 5.0
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
    from marscope_stac.grid.grids import LonLatGrid
    from marscope_stac.stac.read import load_sources

    rng = np.random.default_rng(seed)
    root = Path(catalog)
    cat = pystac.Catalog.from_file(str(root / "catalog.json" if root.is_dir() else root))
    images, captions, labels, owner = [], [], [], []
    share: dict[str, float] = {}
    found = False
    for item in cat.get_items(recursive=True):
        props = item.properties
        if props.get("marscope:pairs") != "grid-cells":
            continue
        if split != "all" and props.get("marscope:split") != split:
            continue
        found = True
        share[item.id] = float(props.get("marscope:pair_weight", 1.0))
        link = item.get_single_link("source")
        if link is None:
            raise CatalogError(f"label item {item.id} has no 'source' link to its imagery")
        source = link.resolve_stac_object(cat).target
        assert isinstance(source, pystac.Item)
        sources = load_sources([source])
        feats = gpd.read_parquet(item.assets["points"].get_absolute_href())
        res = abs(float(source.properties["proj:transform"][0]))
        km_per_deg = sources.body.metres_per_degree / 1000.0
        for size in _cell_sizes(res, cell_px):
            grid = LonLatGrid(size, sources.body)  # polar rows too, as embedding sees them
            got = _grid_pairs(
                sources, grid, (tile_px, context), feats, km_per_deg, max_per_grid, rng
            )
            images += got[0]
            captions += got[1]
            labels += got[2]
            owner += [item.id] * len(got[0])
    if not found:
        raise CatalogError(f"no label item with grid-cell pairs and split {split!r} in {catalog}")
    return PairSet(
        crop_px=tile_px,
        images=np.stack(images),
        captions=captions,
        labels=labels,
        weights=_balance(owner, labels, share),
        context=context,
    )


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


# ----------------------------------------------------------------------------- mixtures


@dataclass
class PairMix:
    """Several pair sets drawn together, each batch split among them by ``weights``."""

    parts: list[PairSet]
    weights: list[float]
    images: None = None
    """Never fixed images (same-class pairs are told apart by their labels)."""

    @property
    def classes(self) -> list[str]:
        """Class names of every part."""
        return sorted({c for p in self.parts for c in p.classes})

    @property
    def context(self) -> float:
        """The tile context of the parts (the same for all).

        Raises:
            ConfigError: if the parts show different margins around their cells.
        """
        found = {p.context for p in self.parts}
        if len(found) != 1:
            raise ConfigError(
                f"the pair sets show tiles with different context ({sorted(found)}); "
                "load every source with the same context"
            )
        return found.pop()

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def sample(
        self, n: int, rng: np.random.Generator, augment: bool = True
    ) -> tuple[NDArray[np.float32], list[str], list[str]]:
        """Draw ``n`` triples, from each part in proportion to its weight."""
        w = np.asarray(self.weights, float)
        counts = rng.multinomial(n, w / w.sum())
        imgs, caps, labs = [], [], []
        for part, k in zip(self.parts, counts.tolist(), strict=True):
            if k:
                i, c, lab = part.sample(k, rng, augment)
                imgs.append(i)
                caps += c
                labs += lab
        side = max(i.shape[-1] for i in imgs)
        return np.concatenate([_resize(i, side) for i in imgs]), caps, labs


def _resize(imgs: NDArray[np.float32], side: int) -> NDArray[np.float32]:
    """Images (n, h, w) resized to (n, side, side) as the models' preprocessing resizes."""
    if imgs.shape[-2:] == (side, side):
        return imgs
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(imgs, dtype=torch.float32)[:, None]
    out = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy()


def has_cell_labels(catalog: str | Path) -> bool:
    """Whether a catalog's label items ask for grid-cell pairs (real nomenclature labels)."""
    root = Path(catalog)
    path = root / "catalog.json" if root.is_dir() else root
    cat = pystac.Catalog.from_file(str(path))
    return any(
        i.properties.get("marscope:pairs") == "grid-cells" for i in cat.get_items(recursive=True)
    )


def load_pairs(
    source: str | Path,
    split: str = "train",
    crop_px: int = 60,
    prompt_share: float = 0.0,
    tile_px: int = 64,
    context: float = 0.0,
) -> PairSet:
    """Pairs of one source: a caption table, a catalog of grid-cell labels, or scenes.

    ``context`` (in cell sides) is the margin every tile or crop shows around its cell.

    Raises:
        CatalogError: if a catalog has no label item of ``split``.
        DataError: for an unreadable table.
    """
    src = Path(source)
    if src.suffix.lower() in (".csv", ".parquet"):
        return load_table_pairs(src)
    root = src / "catalog.json" if src.is_dir() else src
    if not root.is_file():
        raise CatalogError(f"{source} is not a STAC catalog (no catalog.json)")
    if has_cell_labels(src):
        pairs = load_cell_pairs(src, split, tile_px, context=context)
        pairs.prompt_share = prompt_share
        return pairs
    pairs = load_catalog_pairs(src, split, crop_px, prompt_share=prompt_share)
    pairs.context = context
    return pairs
