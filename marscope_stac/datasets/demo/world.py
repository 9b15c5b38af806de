"""The demo world: a deterministic synthetic Mars STAC catalog with ground truth.

:func:`build_demo_catalog` renders a block of adjacent CTX-like scenes (see
:mod:`marscope_stac.datasets.demo.terrain`) at a real Mars location, writes them as COGs in
``IAU_2015:49910`` and publishes a static STAC catalog with two collections:

``demo-ctx``
    One Item per scene: the COG (``image``), a thumbnail, ssys / proj v2 / raster v2 / file /
    view / processing fields and ``marscope:split`` (``train`` or ``test``).
``demo-labels``
    One label Item per scene (label extension, ``source`` link to the scene): the landform
    outlines as GeoParquet and GeoJSON (Mars lon/lat, ``IAU_2015:49900``) with a ``landform``
    class and captions for every instance, their reference points as GeoParquet (for the
    point-based evaluation protocol), and a PNG preview with the outlines drawn over the image.

The eastern column(s) of scenes form the held-out ``test`` area. The same seed and size give
byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from PIL import Image, ImageDraw
from pyproj import CRS, Transformer
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from marscope_stac.core.bodies import MARS
from marscope_stac.core.errors import CatalogError, ConfigError, release_held_warnings
from marscope_stac.core.fs import staged_directory
from marscope_stac.core.text import count_list, join_lines
from marscope_stac.datasets.demo.captions import CLASS_NAMES, captions_for
from marscope_stac.datasets.demo.previews import _preview
from marscope_stac.datasets.demo.scene import render_scene, to_multipolygon
from marscope_stac.datasets.demo.terrain import LANDFORM_CLASSES, Landform
from marscope_stac.products.cog import write_cog
from marscope_stac.stac.build import (
    COG_MEDIA_TYPE,
    FILE_V2,
    LABEL_V1,
    PARQUET_MEDIA_TYPE,
    PROCESSING_V1,
    PROJ_V2,
    RASTER_V2,
    SSYS_V1,
    STAC_ITEM_MEDIA_TYPE,
    VIEW_V1,
    cog_band_fields,
    file_asset,
    link,
    processing_fields,
    proj_fields,
    ssys_fields,
    stac_catalog,
    stac_collection,
    stac_item,
)
from marscope_stac.stac.catalog import write_static_catalog
from marscope_stac.stac.validation import validate_catalog

__all__ = [
    "DEMO_PIXELS_PER_DEGREE",
    "SIZES",
    "DemoCatalog",
    "WorldSize",
    "build_demo_catalog",
    "ensure_demo_catalog",
]

DEMO_PIXELS_PER_DEGREE = 3000
"""Demo imagery resolution: 1/3000 degree per pixel, ~19.76 m/px on the Mars sphere."""

DEMO_ORIGIN = (150.0, -5.0)
"""Lower-left (lon, lat) of the demo world: the Aeolis region, south of Aeolis Mons' plains."""


@dataclass(frozen=True)
class WorldSize:
    """Layout of a demo world: a ``cols`` x ``rows`` block of square scenes."""

    cols: int
    rows: int
    item_deg: float
    per_class: int
    test_cols: int

    @property
    def item_px(self) -> int:
        """Scene side in pixels."""
        return round(self.item_deg * DEMO_PIXELS_PER_DEGREE)


SIZES: dict[str, WorldSize] = {
    "small": WorldSize(cols=2, rows=1, item_deg=0.2, per_class=1, test_cols=1),
    "default": WorldSize(cols=4, rows=2, item_deg=0.4, per_class=3, test_cols=1),
    "large": WorldSize(cols=6, rows=4, item_deg=0.5, per_class=4, test_cols=2),
}

GENERATOR_VERSION = 1
IMAGE_COLLECTION = "demo-ctx"
LABEL_COLLECTION = "demo-labels"
LICENSE = "CC0-1.0"
PNG = "image/png"


@dataclass
class DemoCatalog:
    """What :func:`build_demo_catalog` wrote."""

    root: Path
    seed: int
    size: str
    image_items: list[str] = field(default_factory=list)
    label_items: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    previews: list[Path] = field(default_factory=list)
    reused: bool = False

    @property
    def catalog_path(self) -> Path:
        """Path of the root ``catalog.json``."""
        return self.root / "catalog.json"

    def summary(self) -> str:
        """A few lines for people."""
        verb = "reused" if self.reused else "wrote"
        return join_lines(
            f"{verb} demo catalog {self.catalog_path} (seed {self.seed}, size {self.size}): "
            f"{len(self.image_items)} image items, {len(self.label_items)} label items",
            f"  landforms: {count_list(self.counts, CLASS_NAMES)}",
            f"  overview: {self.root / LABEL_COLLECTION / 'overview.png'}",
        )


def _check_args(size: str, seed: int) -> WorldSize:
    if size not in SIZES:
        raise ConfigError(f"unknown demo size {size!r}: use one of {', '.join(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed {seed!r} is out of range: use an integer from 0 to {2**32 - 1}")
    return SIZES[size]


def existing_demo(out: str | Path) -> dict[str, Any] | None:
    """Return the ``marscope:demo`` record of a demo catalog at ``out``, or None."""
    path = Path(out) / "catalog.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("marscope:demo")
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def build_demo_catalog(
    out: str | Path = "catalogs/demo",
    *,
    seed: int = 0,
    size: str = "default",
    overwrite: bool = False,
    progress: bool = False,
) -> DemoCatalog:
    """Render the demo world and publish it as a static STAC catalog at ``out``.

    The catalog is built in a staging folder beside ``out``, validated offline (core and
    extension schemas), and only then moved into place, so ``out`` is never half-written.

    Args:
        out: Folder of the catalog to write.
        seed: Random seed, 0 <= seed < 2**32; the same seed gives byte-identical files.
        size: ``small`` (tests), ``default`` (the demo) or ``large`` (benchmarks).
        overwrite: Replace an existing non-empty ``out``.
        progress: Show a progress bar.

    Raises:
        ConfigError: for an unknown size or an out-of-range seed.
        OutputError: if ``out`` exists and is not empty (without ``overwrite``) or cannot be
            written.
    """
    world = _check_args(size, seed)
    result = DemoCatalog(root=Path(out), seed=seed, size=size)
    with staged_directory(out, overwrite=overwrite, kind="catalog") as stage:
        catalog = stac_catalog(
            "marscope-demo",
            "MarScope-STAC demo world",
            "Synthetic CTX-like Mars imagery with landform ground truth and captions, "
            f"generated by marscope-stac (seed {seed}, size {size}). Not real data.",
            {"marscope:demo": {"seed": seed, "size": size, "generator_version": GENERATOR_VERSION}},
        )
        images = _collection(IMAGE_COLLECTION, "Synthetic CTX-like scenes (demo world)", world)
        labels = _collection(LABEL_COLLECTION, "Landform ground truth of the demo world", world)
        image_items: list[dict[str, Any]] = []
        label_items: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        cells = [(r, c) for r in range(world.rows) for c in range(world.cols)]
        release_held_warnings()
        bar = tqdm(cells, desc="demo scenes", unit="scene", disable=not progress)
        overview: list[tuple[int, int, Image.Image]] = []
        for r, c in bar:
            image_item, label_item, preview = _build_scene(stage, world, seed, r, c)
            image_items.append(image_item)
            label_items.append(label_item)
            counts.update(label_item["properties"]["marscope:class_counts"])
            overview.append((r, c, preview))
            result.image_items.append(image_item["id"])
            result.label_items.append(label_item["id"])
        _finish_collections(images, labels, image_items, stage, world, overview)
        write_static_catalog(stage, catalog, [(images, image_items), (labels, label_items)])
        _validate_tree(stage)
        result.counts = {k: counts.get(k, 0) for k in LANDFORM_CLASSES}
    result.previews = sorted((result.root / LABEL_COLLECTION).glob("*/preview.png"))
    return result


def _collection(cid: str, description: str, world: WorldSize) -> dict[str, Any]:
    lon0, lat0 = DEMO_ORIGIN
    bbox = [lon0, lat0, lon0 + world.cols * world.item_deg, lat0 + world.rows * world.item_deg]
    times = [dt.datetime(2008, 1, 1, tzinfo=dt.UTC), dt.datetime(2012, 12, 31, tzinfo=dt.UTC)]
    return stac_collection(
        cid,
        description,
        description,
        (bbox, times),
        {"marscope:split": ["train", "test"]},
        [SSYS_V1],
        ssys_fields(MARS),
        license=LICENSE,
    )


def _px_to_lonlat(transform: Affine) -> Transformer:
    return Transformer.from_crs(MARS.equirectangular_code, MARS.geographic_code, always_xy=True)


def _geom_to_lonlat(geom: BaseGeometry, transform: Affine, tr: Transformer) -> BaseGeometry:
    def f(xy: np.ndarray) -> np.ndarray:
        x = transform.c + xy[:, 0] * transform.a
        y = transform.f + xy[:, 1] * transform.e
        lon, lat = tr.transform(x, y)
        return np.column_stack([np.round(lon, 8), np.round(lat, 8)])

    return shapely.orient_polygons(shapely.transform(geom, f))  # RFC 7946: exterior CCW


def _scene_id(r: int, c: int) -> str:
    return f"ctx-demo-r{r}c{c}"


def _build_scene(
    stage: Path, world: WorldSize, seed: int, r: int, c: int
) -> tuple[dict[str, Any], dict[str, Any], Image.Image]:
    rng = np.random.default_rng([seed, r, c, GENERATOR_VERSION])
    sun_az = round(float(rng.uniform(0.0, 360.0)), 2)
    sun_el = round(float(rng.uniform(20.0, 50.0)), 2)
    scene = render_scene(world.item_px, _res_m(), rng, world.per_class, sun_az, sun_el)

    lon0, lat0 = DEMO_ORIGIN
    west = lon0 + c * world.item_deg
    north = lat0 + (world.rows - r) * world.item_deg
    m_per_deg = MARS.metres_per_degree
    transform = Affine(_res_m(), 0.0, west * m_per_deg, 0.0, -_res_m(), north * m_per_deg)
    crs = MARS.projected_crs(10)
    split = "test" if c >= world.cols - world.test_cols else "train"
    item_id = _scene_id(r, c)
    when = dt.datetime(2008, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        days=int(rng.integers(0, 1800)), seconds=int(rng.integers(0, 86400))
    )

    item_dir = stage / IMAGE_COLLECTION / item_id
    tif = write_cog(
        item_dir / f"{item_id}.tif", scene.image, crs, transform, nodata=0, band_names=["ctx_like"]
    )
    thumb = item_dir / f"{item_id}_thumbnail.png"
    Image.fromarray(scene.image).resize((256, 256), Image.Resampling.BILINEAR).save(thumb)

    tr = _px_to_lonlat(transform)
    foot = _geom_to_lonlat(box(0, 0, world.item_px, world.item_px), transform, tr)
    geometry = mapping(foot)
    bbox = list(foot.bounds)
    props = _scene_properties(world, crs, transform, sun_az, sun_el, split, seed)
    props["datetime"] = when
    image_item = stac_item(
        item_id,
        props,
        [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2, VIEW_V1, PROCESSING_V1],
        bbox,
        {
            "image": file_asset(
                tif,
                item_dir,
                COG_MEDIA_TYPE,
                ["data"],
                "CTX-like panchromatic image (DN, nodata 0)",
                bands=cog_band_fields(tif),
            ),
            "thumbnail": file_asset(thumb, item_dir, PNG, ["thumbnail"], "Thumbnail"),
        },
        geometry=geometry,
    )

    label_item, preview = _label_item(
        stage, scene.landforms, scene.image, image_item, transform, tr, split, rng
    )
    return image_item, label_item, preview


def _scene_properties(
    world: WorldSize,
    crs: CRS,
    transform: Affine,
    sun_az: float,
    sun_el: float,
    split: str,
    seed: int,
) -> dict[str, Any]:
    """Return a scene Item's properties (everything but ``datetime``)."""
    return {
        **ssys_fields(MARS),
        **proj_fields(crs, transform, (world.item_px, world.item_px)),
        "view:sun_azimuth": sun_az,
        "view:sun_elevation": sun_el,
        "gsd": round(_res_m(), 4),
        "instruments": ["ctx-like-synthetic"],
        "marscope:split": split,
        **processing_fields(
            f"Synthetic CTX-like scene rendered by marscope-stac demo-data (seed {seed}): "
            "procedural elevation model, landforms, small craters, dust, Lambertian hillshade "
            "at the recorded sun angles, sensor noise, 8-bit."
        ),
    }


def _res_m() -> float:
    return MARS.metres_per_degree / DEMO_PIXELS_PER_DEGREE


def _label_item(
    stage: Path,
    landforms: list[Landform],
    image: np.ndarray,
    image_item: dict[str, Any],
    transform: Affine,
    tr: Transformer,
    split: str,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], Image.Image]:
    lid = f"{image_item['id']}-labels"
    out_dir = stage / LABEL_COLLECTION / lid
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, geoms, points = _label_rows(
        lid, landforms, image, image_item["id"], transform, tr, split, rng
    )
    crs = MARS.geographic_code
    gdf = gpd.GeoDataFrame(rows, geometry=geoms, crs=crs)
    pts = gpd.GeoDataFrame(rows, geometry=points, crs=crs).drop(columns=["captions"])
    parquet = out_dir / "labels.parquet"
    gdf.to_parquet(parquet, index=False, compression="zstd")
    pts_path = out_dir / "points.parquet"
    pts.to_parquet(pts_path, index=False, compression="zstd")
    geojson = out_dir / "labels.geojson"
    geojson.write_text(_geojson(gdf), encoding="utf-8")
    preview, preview_img = _preview(out_dir, image, landforms)
    image_json = stage / IMAGE_COLLECTION / image_item["id"] / f"{image_item['id']}.json"
    source = link("source", image_json, out_dir, STAC_ITEM_MEDIA_TYPE, image_item["id"])
    source["label:assets"] = ["image"]
    props = _label_properties(Counter(r["landform"] for r in rows), split)
    props["datetime"] = image_item["properties"]["datetime"]
    item = stac_item(
        lid,
        props,
        [SSYS_V1, LABEL_V1, FILE_V2],
        image_item["bbox"],
        _label_assets(out_dir, geojson, parquet, pts_path, preview),
        [source],
        geometry=image_item["geometry"],
    )
    return item, preview_img


def _label_assets(
    folder: Path, geojson: Path, parquet: Path, points: Path, preview: Path
) -> dict[str, Any]:
    """The label item's files: GeoJSON and GeoParquet outlines, points, preview."""
    files = (
        (
            "labels",
            geojson,
            "application/geo+json",
            ["labels", "labels-vector"],
            "Landform outlines (GeoJSON, Mars lon/lat IAU_2015:49900)",
        ),
        (
            "labels-parquet",
            parquet,
            PARQUET_MEDIA_TYPE,
            ["labels", "labels-vector"],
            "Landform outlines with captions (GeoParquet, IAU_2015:49900)",
        ),
        (
            "points",
            points,
            PARQUET_MEDIA_TYPE,
            ["labels", "labels-points"],
            "Landform reference points (GeoParquet, IAU_2015:49900)",
        ),
        ("preview", preview, PNG, ["overview", "visual"], "Image with landform outlines"),
    )
    return {
        key: file_asset(path, folder, media, roles, title)
        for key, path, media, roles, title in files
    }


def _label_rows(
    lid: str,
    landforms: list[Landform],
    image: np.ndarray,
    image_id: str,
    transform: Affine,
    tr: Transformer,
    split: str,
    rng: np.random.Generator,
) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """Label rows (class, variant, size, captions...), outlines and centres in lon/lat."""
    rows: list[dict[str, Any]] = []
    points = []
    geoms = []
    for k, lf in enumerate(landforms):
        geom = to_multipolygon(lf.geometry.intersection(box(0, 0, *image.shape[::-1])))
        if geom.is_empty:
            continue
        attrs = dict(lf.attrs.items())
        rows.append(
            {
                "id": f"{lid}-{k:03d}",
                "landform": lf.cls,
                "variant": str(attrs.get("variant", "")),
                "size_m": round(float(lf.size_m), 1),
                "azimuth": round(float(attrs["azimuth"]), 1) if "azimuth" in attrs else None,
                "item_id": image_id,
                "split": split,
                "captions": captions_for(lf.cls, lf.size_m, attrs, rng),
            }
        )
        geoms.append(_geom_to_lonlat(geom, transform, tr))
        cx, cy = lf.center
        points.append(_geom_to_lonlat(shapely.Point(cx, cy), transform, tr))
    return rows, geoms, points


def _label_properties(counts: Counter[str], split: str) -> dict[str, Any]:
    """Label extension properties of a scene's label item."""
    return {
        **ssys_fields(MARS),
        "label:properties": ["landform"],
        "label:classes": [{"name": "landform", "classes": list(LANDFORM_CLASSES)}],
        "label:description": (
            "Outlines of the landforms rendered into the scene, with a landform class and "
            "several English captions per instance; 'plains' marks background patches."
        ),
        "label:type": "vector",
        "label:tasks": ["classification", "detection", "segmentation"],
        "label:methods": ["automated"],
        "label:overviews": [
            {
                "property_key": "landform",
                "counts": [{"name": k, "count": counts.get(k, 0)} for k in LANDFORM_CLASSES],
            }
        ],
        "marscope:split": split,
        "marscope:class_counts": {k: counts.get(k, 0) for k in LANDFORM_CLASSES},
    }


def _geojson(gdf: gpd.GeoDataFrame) -> str:
    """RFC 7946 GeoJSON text (strict JSON: a missing value is null, never NaN).

    Coordinates are planetocentric lon/lat on the Mars sphere; a ``crs`` member names
    ``IAU_2015:49900`` (an arrangement RFC 7946 section 4 allows) so GDAL does not assume Earth.
    """
    features = []
    for row in gdf.itertuples(index=False):
        d = {k: _json_value(v) for k, v in row._asdict().items()}
        geom = d.pop("geometry")
        features.append({"type": "Feature", "properties": d, "geometry": mapping(geom)})
    doc = {
        "type": "FeatureCollection",
        "name": "landforms",
        "crs": {"type": "name", "properties": {"name": MARS.geographic_code}},
        "features": features,
    }
    return json.dumps(doc, separators=(",", ":"), default=_json_default, allow_nan=False)


def _json_value(v: Any) -> Any:
    """A table value for JSON: numpy scalars as Python ones, NaN as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def _finish_collections(
    images: dict[str, Any],
    labels: dict[str, Any],
    image_items: list[dict[str, Any]],
    stage: Path,
    world: WorldSize,
    overview: list[tuple[int, int, Image.Image]],
) -> None:
    splits = {"train": [], "test": []}  # type: dict[str, list[str]]
    for item in image_items:
        splits[item["properties"]["marscope:split"]].append(item["id"])
    for coll in (images, labels):
        coll["marscope:splits"] = splits
    images["summaries"]["gsd"] = [round(_res_m(), 4)]
    images["summaries"]["proj:code"] = [MARS.equirectangular_code]
    labels["summaries"]["label:classes"] = [{"name": "landform", "classes": list(LANDFORM_CLASSES)}]
    # a mosaic of all previews, test area outlined
    tile = 320
    mosaic = Image.new("RGB", (world.cols * tile, world.rows * tile))
    for r, c, img in overview:
        mosaic.paste(img.resize((tile, tile), Image.Resampling.BILINEAR), (c * tile, r * tile))
    draw = ImageDraw.Draw(mosaic)
    x0 = (world.cols - world.test_cols) * tile
    draw.rectangle(
        [x0, 0, world.cols * tile - 1, world.rows * tile - 1], outline=(255, 0, 0), width=4
    )
    draw.text((x0 + 8, world.rows * tile - 20), "held-out test area", fill=(255, 0, 0))
    path = stage / LABEL_COLLECTION / "overview.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    mosaic.save(path)
    title = "All scenes with landform outlines; the held-out area is outlined in red"
    labels["assets"] = {"overview": file_asset(path, path.parent, PNG, ["overview"], title)}


def _validate_tree(root: Path) -> None:
    report = validate_catalog(root)
    expected = len(list(root.rglob("*.json")))
    if report.objects != expected:  # pragma: no cover - would be a bug in the writer
        raise CatalogError(f"only {report.objects} of {expected} JSON files in {root} are STAC")


def ensure_demo_catalog(
    out: str | Path = "catalogs/demo",
    seed: int = 0,
    size: str = "default",
    progress: bool = False,
) -> DemoCatalog:
    """The demo catalog at ``out``, reused when built with this seed and size.

    Otherwise it is (re)built with :func:`build_demo_catalog`.
    """
    root = Path(out)
    record = existing_demo(root)
    if record != {"seed": seed, "size": size, "generator_version": GENERATOR_VERSION}:
        return build_demo_catalog(
            root, seed=seed, size=size, overwrite=record is not None, progress=progress
        )
    catalog = DemoCatalog(root=root, seed=seed, size=size, reused=True)
    labels = sorted(root.glob(f"{LABEL_COLLECTION}/*/*.json"))
    catalog.image_items = sorted(p.parent.name for p in root.glob(f"{IMAGE_COLLECTION}/*/*.json"))
    catalog.label_items = [p.parent.name for p in labels]
    catalog.previews = sorted(root.glob(f"{LABEL_COLLECTION}/*/preview.png"))
    counts: Counter[str] = Counter()
    for path in labels:
        props = json.loads(path.read_text(encoding="utf-8")).get("properties", {})
        counts.update({k: int(v) for k, v in props.get("marscope:class_counts", {}).items()})
    catalog.counts = {k: counts.get(k, 0) for k in LANDFORM_CLASSES}
    return catalog
