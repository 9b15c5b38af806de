"""Compose a demo scene.

Landforms are placed without overlaps and stamped into the elevation model; plains, small
craters and dust are added, and the scene is illuminated under its sun.

Coordinates are pixels (``col`` east, ``row`` south); nothing here knows STAC or CRSs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from marscope_stac.datasets.demo.landforms import (
    _crater,
    stamp_alluvial_fan,
    stamp_channel,
    stamp_dune_field,
    stamp_glacier_like_form,
    stamp_impact_crater,
    stamp_landslide,
    stamp_pitted_cones,
    stamp_yardangs,
)
from marscope_stac.datasets.demo.terrain import (
    LANDFORM_CLASSES,
    Array,
    Landform,
    Scene,
    _Canvas,
    fractal_noise,
    smoothstep,
)

__all__ = [
    "SIZES_M",
    "illuminate",
    "render_scene",
    "to_multipolygon",
]


SIZES_M: dict[str, tuple[float, float, float, float]] = {
    # class: footprint radius drawn in [lo, hi); captions call a landform "small" below the
    # third size and "large" above the fourth (its footprint diameter, metres)
    "impact_crater": (300.0, 900.0, 600.0, 1100.0),
    "alluvial_fan": (700.0, 1500.0, 900.0, 1300.0),
    "glacier_like_form": (700.0, 1300.0, 900.0, 1300.0),
    "landslide": (900.0, 1600.0, 1100.0, 1500.0),
    "pitted_cone": (450.0, 800.0, 900.0, 1300.0),
    "yardang": (800.0, 1400.0, 1700.0, 2300.0),
    "dune_field": (600.0, 1200.0, 1300.0, 1900.0),
    "channel": (1500.0, 2600.0, 3000.0, 3800.0),
    "plains": (0.0, 0.0, 0.0, 1e9),
}
"""Landform sizes of the demo world, for drawing and for captions (metres)."""


@dataclass(frozen=True)
class _Slot:
    cls: str
    radius_m: float  # footprint radius used for spacing


def _footprint(cls: str, rng: np.random.Generator) -> float:
    lo, hi, _, _ = SIZES_M[cls]
    return float(rng.uniform(lo, hi))


def render_scene(
    size: int,
    res_m: float,
    rng: np.random.Generator,
    per_class: int,
    sun_azimuth: float,
    sun_elevation: float,
) -> Scene:
    """Render one square CTX-like scene of ``size`` x ``size`` pixels at ``res_m`` m/px.

    Args:
        size: Scene side in pixels.
        res_m: Ground sample distance in metres.
        rng: Random generator (the only source of randomness).
        per_class: How many instances of each landform class to place.
        sun_azimuth: Degrees clockwise from north, direction the light comes from.
        sun_elevation: Degrees above the horizon (CTX-like: 20-50).
    """
    cv = _Canvas(size, res_m, rng)
    extent = size * res_m
    # background: fractal relief at two scales, albedo mottling
    cv.dem += fractal_noise((size, size), rng, 3.2) * 25.0
    cv.dem += fractal_noise((size, size), rng, 2.2) * 1.5
    cv.albedo *= 1.0 + 0.12 * fractal_noise((size, size), rng, 3.0)
    placer = _Placer(extent, rng)
    landforms, big_craters = _landforms(cv, rng, per_class, placer)
    _natural_overlaps(cv, rng, landforms, big_craters)
    landforms += _plains(placer, per_class, res_m)
    _small_craters(cv, rng, size, extent)
    _dust_mantle(cv, rng, size)
    image = illuminate(cv.dem, cv.albedo, res_m, sun_azimuth, sun_elevation, rng)
    return Scene(image, cv.dem, landforms, sun_azimuth, sun_elevation)


class _Placer:
    """Positions for landforms that keep clear of each other (metres from the top-left)."""

    def __init__(self, extent: float, rng: np.random.Generator) -> None:
        self.extent = extent
        self.rng = rng
        self.occupied: list[tuple[float, float, float]] = []

    def place(self, radius_m: float, margin: float = 150.0) -> tuple[float, float] | None:
        """A free position for a landform of ``radius_m``, or None after 400 tries."""
        for _ in range(400):
            x = self.rng.uniform(radius_m * 0.6, self.extent - radius_m * 0.6)
            y = self.rng.uniform(radius_m * 0.6, self.extent - radius_m * 0.6)
            if all(
                math.hypot(x - ox, y - oy) > radius_m + orad + margin
                for ox, oy, orad in self.occupied
            ):
                self.occupied.append((x, y, radius_m))
                return x, y
        return None


def _landforms(
    cv: _Canvas, rng: np.random.Generator, per_class: int, placer: _Placer
) -> tuple[list[Landform], list[tuple[float, float, float]]]:
    """``per_class`` instances of every landform class, largest first; and the big craters."""
    order = [c for c in LANDFORM_CLASSES if c not in ("plains",)]
    slots = [_Slot(c, _footprint(c, rng)) for _ in range(per_class) for c in order]
    slots.sort(key=lambda s: -s.radius_m)
    landforms: list[Landform] = []
    big_craters: list[tuple[float, float, float]] = []
    for slot in slots:
        pos = placer.place(slot.radius_m)
        if pos is None:
            continue
        cx, cy = pos[0] / cv.res, pos[1] / cv.res
        az = float(rng.uniform(0, 360))
        fresh = bool(rng.uniform() < 0.6)
        if slot.cls == "impact_crater" and slot.radius_m / 1.5 > 420:
            big_craters.append((cx, cy, slot.radius_m / 1.5))
        landforms.append(_stamp(cv, rng, slot, cx, cy, az, fresh))
    return landforms, big_craters


def _stamp(
    cv: _Canvas,
    rng: np.random.Generator,
    slot: _Slot,
    cx: float,
    cy: float,
    az: float,
    fresh: bool,
) -> Landform:
    """Draw one landform of ``slot``'s class centred at pixel (cx, cy), facing ``az``."""
    r = slot.radius_m
    res_m = cv.res
    back = math.radians(az)
    if slot.cls == "impact_crater":
        return stamp_impact_crater(cv, cx, cy, 2 * r / 1.5, fresh)
    if slot.cls in ("alluvial_fan", "glacier_like_form", "landslide"):
        # the apex sits on the mountain front / alcove / scarp, the body spreads towards `az`
        shift = 0.45 if slot.cls == "alluvial_fan" else 0.5
        ax = cx - math.sin(back) * r * shift / res_m
        ay = cy + math.cos(back) * r * shift / res_m
        if slot.cls == "alluvial_fan":
            return stamp_alluvial_fan(cv, ax, ay, r * 0.95, az, fresh)
        if slot.cls == "glacier_like_form":
            return stamp_glacier_like_form(cv, ax, ay, r * 1.1, az, fresh)
        return stamp_landslide(cv, ax, ay, r * 1.0, az, fresh)
    if slot.cls == "pitted_cone":
        return stamp_pitted_cones(cv, cx, cy, r * 0.8)
    if slot.cls == "yardang":
        return stamp_yardangs(cv, cx, cy, r * 0.9, az)
    if slot.cls == "dune_field":
        return stamp_dune_field(cv, cx, cy, r * 0.85, az, barchan=bool(rng.uniform() < 0.5))
    return stamp_channel(cv, cx, cy, r * 1.6, az, network=bool(rng.uniform() < 0.5))


def _natural_overlaps(
    cv: _Canvas,
    rng: np.random.Generator,
    landforms: list[Landform],
    big_craters: list[tuple[float, float, float]],
) -> None:
    """Dunes on big crater floors, fresh craters on fans and landslides (added in place)."""
    for ccx, ccy, crad in big_craters:
        if rng.uniform() < 0.5:
            lf = stamp_dune_field(
                cv,
                ccx,
                ccy,
                crad * 0.45,
                float(rng.uniform(0, 360)),
                barchan=bool(rng.uniform() < 0.5),
                on_crater_floor=True,
            )
            landforms.append(lf)
            host = next(x for x in landforms if x.cls == "impact_crater" and x.center == (ccx, ccy))
            host.attrs["dunes_on_floor"] = True
    for host in [x for x in landforms if x.cls in ("alluvial_fan", "landslide")]:
        if rng.uniform() < 0.35:
            d = float(rng.uniform(350, 600))
            pt = host.geometry.representative_point()
            lf = stamp_impact_crater(cv, pt.x, pt.y, d, fresh=True)
            lf.attrs["superposed_on"] = host.cls
            host.attrs["superposed_crater"] = True
            landforms.append(lf)


def _plains(placer: _Placer, n: int, res_m: float) -> list[Landform]:
    """Background plains patches away from every landform."""
    out = []
    for _ in range(n):
        pos = placer.place(500.0, margin=400.0)
        if pos is None:
            break
        px, py = pos[0] / res_m, pos[1] / res_m
        half = 450.0 / res_m
        geom = Polygon(
            [
                (px - half, py - half),
                (px + half, py - half),
                (px + half, py + half),
                (px - half, py + half),
            ]
        )
        out.append(Landform("plains", geom, (px, py), 900.0, {"variant": "plain"}))
    return out


def _small_craters(cv: _Canvas, rng: np.random.Generator, size: int, extent: float) -> None:
    """Small superposed craters everywhere: cumulative N(>D) ~ D^-2."""
    area_km2 = (extent / 1000.0) ** 2
    d_min, d_max = 40.0, 450.0
    n_small = int(area_km2 * 2.2)
    u = rng.uniform(0, 1, n_small)
    diam = d_min / np.sqrt(1 - u * (1 - (d_min / d_max) ** 2))
    xs = rng.uniform(0, size, n_small)
    ys = rng.uniform(0, size, n_small)
    freshness = rng.beta(1.2, 1.5, n_small)
    for d, x, y, f in zip(diam, xs, ys, freshness, strict=True):
        _crater(cv, float(x), float(y), float(d), float(f), ejecta=d > 250)


def _dust_mantle(cv: _Canvas, rng: np.random.Generator, size: int) -> None:
    """Dust mantling: low-frequency patches smooth the relief and brighten the surface."""
    dust = smoothstep((fractal_noise((size, size), rng, 3.5) - 0.3) / 1.2) * 0.8
    dust *= 1.0 - np.clip(cv.protect, 0, 1) * 0.8
    smooth = ndimage.gaussian_filter(cv.dem, 1.6)
    cv.dem = (cv.dem * (1 - dust) + smooth * dust).astype(np.float32)
    cv.albedo *= (1.0 + 0.2 * dust).astype(np.float32)


def illuminate(
    dem: Array,
    albedo: Array,
    res_m: float,
    sun_azimuth: float,
    sun_elevation: float,
    rng: np.random.Generator,
) -> NDArray[np.uint8]:
    """Lambertian shading of ``dem`` lit from ``sun_azimuth``/``sun_elevation``, as 8-bit DN.

    The result is ``albedo * shading`` with a little sky light, sensor noise and column
    striping, scaled so flat ground of unit albedo sits near DN 110; DN 0 is never produced
    (it is the nodata value).
    """
    gy, gx = np.gradient(dem.astype(np.float32), res_m)  # gy: d/drow (south), gx: d/dcol (east)
    dz_de, dz_dn = gx, -gy
    az, el = math.radians(sun_azimuth), math.radians(sun_elevation)
    sun = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])
    norm = np.sqrt(dz_de**2 + dz_dn**2 + 1.0)
    shade = (-dz_de * sun[0] - dz_dn * sun[1] + sun[2]) / norm
    shade = np.clip(shade, 0.0, None) / math.sin(el)
    radiance = albedo * (0.08 + 0.92 * shade)
    dn = 110.0 * radiance
    dn += rng.normal(0.0, 1.0, dn.shape) * np.sqrt(np.clip(dn, 1, None)) * 0.25
    dn += rng.normal(0.0, 0.6, (1, dn.shape[1]))  # column striping
    return np.clip(np.rint(dn), 1, 255).astype(np.uint8)


def to_multipolygon(geom: BaseGeometry) -> Polygon | MultiPolygon:
    """Return ``geom`` as a valid (Multi)Polygon (drop slivers, fix self-intersections)."""
    g = geom.buffer(0)
    if isinstance(g, Polygon | MultiPolygon):
        return g
    polys = [p for p in getattr(g, "geoms", []) if isinstance(p, Polygon)]
    return MultiPolygon(polys)
