"""The IAU/USGS planetary nomenclature as labels.

Feature kinds (crater, mons, vallis, ...) with the landform class and captions each stands
for, read from the packaged nomenclature tables, and feature circles on the body's sphere.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.affinity import translate

from marscope_stac.core.bodies import MARS, MOON, Body, normalize_lon
from marscope_stac.core.errors import DataError

__all__ = [
    "FEATURE_KINDS",
    "MOON_KINDS",
    "POLAR_KINDS",
    "POLAR_LAT",
    "FeatureKind",
    "circles",
    "feature_captions",
    "feature_kind",
    "read_nomenclature",
]


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
