"""Procedural CTX-like Mars terrain: an elevation model, albedo, sun illumination, noise.

Each scene is rendered from a digital elevation model (metres) and an albedo field:
fractal background relief, landforms stamped into the model (:class:`Landform`), a power-law
population of small superposed craters, dust mantling that smooths and brightens, and a
Lambertian hillshade at a CTX-like sun elevation. The sensor adds shot/read noise, faint
column striping and 8-bit quantisation; DN 0 is reserved for nodata.

Coordinates inside this module are pixels: ``col`` to the east, ``row`` to the south.
Azimuths are degrees clockwise from north. Nothing here knows about STAC or CRSs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

__all__ = ["LANDFORM_CLASSES", "SIZES_M", "Landform", "Scene", "render_scene"]

Array = NDArray[np.float32]

LANDFORM_CLASSES: tuple[str, ...] = (
    "alluvial_fan",
    "glacier_like_form",
    "landslide",
    "pitted_cone",
    "yardang",
    "impact_crater",
    "dune_field",
    "channel",
    "plains",
)
"""Ground-truth classes of the demo world; ``plains`` marks background patches."""


@dataclass
class Landform:
    """One ground-truth landform instance in pixel coordinates.

    Attributes:
        cls: One of :data:`LANDFORM_CLASSES`.
        geometry: Outline in pixel coordinates (x = column, y = row).
        center: ``(col, row)`` of its reference point.
        size_m: Characteristic size (diameter or length) in metres.
        attrs: Variant, orientation and context used to write captions.
    """

    cls: str
    geometry: BaseGeometry
    center: tuple[float, float]
    size_m: float
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    """A rendered scene: 8-bit image, its elevation model and the landforms in it."""

    image: NDArray[np.uint8]
    dem: Array
    landforms: list[Landform]
    sun_azimuth: float
    sun_elevation: float


# --------------------------------------------------------------------------------------------
# fields


def fractal_noise(shape: tuple[int, int], rng: np.random.Generator, beta: float) -> Array:
    """Return zero-mean, unit-std noise with power spectrum ~ 1/f**beta (spectral synthesis)."""
    rows, cols = shape
    white = rng.standard_normal(shape).astype(np.float32)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(cols)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    spec *= f ** (-beta / 2.0)
    spec[0, 0] = 0.0
    out = np.fft.irfft2(spec, s=shape).astype(np.float32)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


def smoothstep(x: NDArray[Any]) -> NDArray[Any]:
    """Cubic Hermite step from 0 (x <= 0) to 1 (x >= 1)."""
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Canvas:
    """The fields a scene is painted on, with helpers to work in local windows."""

    def __init__(self, size: int, res_m: float, rng: np.random.Generator) -> None:
        self.size = size
        self.res = res_m
        self.rng = rng
        self.dem = np.zeros((size, size), np.float32)
        self.albedo = np.ones((size, size), np.float32)
        self.protect = np.zeros((size, size), np.float32)  # where dust must not mantle

    def window(
        self, cx: float, cy: float, radius_px: float
    ) -> tuple[tuple[slice, slice], Array, Array] | None:
        """Return the clipped window around (cx, cy) and its east/north offsets in metres."""
        r = math.ceil(radius_px) + 1
        c0, c1 = max(0, int(cx) - r), min(self.size, int(cx) + r + 1)
        r0, r1 = max(0, int(cy) - r), min(self.size, int(cy) + r + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        cols = np.arange(c0, c1, dtype=np.float32) + 0.5
        rows = np.arange(r0, r1, dtype=np.float32) + 0.5
        east = (cols[None, :] - cx) * self.res
        north = (cy - rows[:, None]) * self.res
        east, north = np.broadcast_arrays(east, north)
        return (slice(r0, r1), slice(c0, c1)), east.astype(np.float32), north.astype(np.float32)

    def stamp(
        self,
        sl: tuple[slice, slice],
        height: NDArray[np.floating[Any]],
        albedo_factor: NDArray[np.floating[Any]],
        mask: NDArray[np.floating[Any]],
    ) -> None:
        """Raise the window ``sl`` by ``height``, scale its albedo, protect it by ``mask``."""
        self.dem[sl] += height.astype(np.float32)
        self.albedo[sl] *= albedo_factor.astype(np.float32)
        self.protect[sl] = np.maximum(self.protect[sl], mask)

    def oriented(
        self, cx: float, cy: float, radius_px: float, azimuth: float
    ) -> tuple[tuple[slice, slice], Array, Array, Array, Array]:
        """The window around (cx, cy) with its offsets east/north and along/across ``azimuth``.

        The window must touch the canvas (see :meth:`window` and :func:`_rotate`).
        """
        win = self.window(cx, cy, radius_px)
        assert win is not None
        sl, east, north = win
        along, across = _rotate(east, north, azimuth)
        return sl, east, north, along, across


def _rotate(east: Array, north: Array, azimuth_deg: float) -> tuple[Array, Array]:
    """Return (along, across): along points to ``azimuth``, across to its right."""
    a = math.radians(azimuth_deg)
    s, c = math.sin(a), math.cos(a)
    along = east * s + north * c
    across = east * c - north * s
    return along.astype(np.float32), across.astype(np.float32)


def _local_to_px(
    cx: float, cy: float, res: float, azimuth: float, along: NDArray[Any], across: NDArray[Any]
) -> NDArray[np.float64]:
    a = math.radians(azimuth)
    s, c = math.sin(a), math.cos(a)
    east = along * s + across * c
    north = along * c - across * s
    return np.column_stack([cx + east / res, cy - north / res])


def _angular_noise(rng: np.random.Generator, n: int = 5) -> tuple[NDArray[Any], NDArray[Any]]:
    return rng.normal(0, 1, n) / np.arange(1, n + 1), rng.uniform(0, 2 * np.pi, n)


def _eval_angular(coef: tuple[NDArray[Any], NDArray[Any]], phi: NDArray[Any]) -> NDArray[Any]:
    amp, ph = coef
    out = np.zeros_like(phi, dtype=np.float32)
    for k in range(len(amp)):
        out += amp[k] * np.cos((k + 1) * phi + ph[k])
    return out


# --------------------------------------------------------------------------------------------
# landform stamps


def _crater(
    cv: _Canvas,
    cx: float,
    cy: float,
    diameter_m: float,
    fresh: float,
    ejecta: bool = True,
) -> None:
    """Stamp a simple crater: parabolic bowl, raised rim, ejecta decaying as r**-3.

    ``fresh`` in 0..1: 1 = sharp and deep (d/D 0.2), 0 = degraded (shallow, infilled).
    """
    radius = diameter_m / 2.0
    win = cv.window(cx, cy, 3.0 * radius / cv.res)
    if win is None:
        return
    sl, east, north = win
    rho = np.sqrt(east * east + north * north) / radius
    depth = diameter_m * (0.05 + 0.15 * fresh)
    rim = diameter_m * (0.012 + 0.03 * fresh)
    inside = depth * (rho * rho - 1.0) + rim
    floor = -depth * (0.55 + 0.45 * fresh) + rim
    inside = np.maximum(inside, floor)
    outside = rim * np.maximum(rho, 1.0) ** (-3.0)
    h = np.where(rho < 1.0, inside, outside)
    # taper to zero at the window edge so stamps do not leave steps
    h *= 1.0 - smoothstep((rho - 2.2) / 0.8)
    if ejecta and fresh > 0.5 and diameter_m > 150:
        rough = cv.rng.standard_normal(h.shape).astype(np.float32)
        rough = ndimage.gaussian_filter(rough, 1.0)
        band = (rho > 1.0) * np.maximum(rho, 1.0) ** (-2.5) * (rho < 2.6)
        h += rough * band * rim * 0.8
        phi = np.arctan2(north, east)
        rays = 0.5 + 0.5 * np.cos(phi * cv.rng.integers(7, 15) + cv.rng.uniform(0, 6.3))
        cv.albedo[sl] *= 1.0 + 0.12 * fresh * band * rays
    if fresh < 0.5:
        # degraded: soften the whole form
        h = ndimage.gaussian_filter(h, max(1.0, radius / cv.res * 0.08))
    cv.dem[sl] += h.astype(np.float32)


def stamp_impact_crater(
    cv: _Canvas, cx: float, cy: float, diameter_m: float, fresh: bool
) -> Landform:
    """A dominant impact crater; fresh ones have ejecta, degraded ones are shallow and smooth."""
    f = cv.rng.uniform(0.75, 1.0) if fresh else cv.rng.uniform(0.0, 0.3)
    _crater(cv, cx, cy, diameter_m, f)
    rp = diameter_m / 2.0 / cv.res
    geom = Point(cx, cy).buffer(rp * (1.05 if not fresh else 1.1), quad_segs=16)
    cv.protect[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2] = 1.0
    return Landform(
        "impact_crater",
        geom,
        (cx, cy),
        diameter_m,
        {"variant": "fresh" if fresh else "degraded", "has_ejecta": fresh},
    )


def _highland(
    cv: _Canvas,
    cx: float,
    cy: float,
    azimuth: float,
    width_m: float,
    depth_m: float,
    height_m: float,
) -> None:
    """Raise an eroded massif behind (cx, cy): its steep, ragged front faces ``azimuth``."""
    reach = max(width_m, depth_m * 2.0) * 0.9 / cv.res
    win = cv.window(cx, cy, reach)
    if win is None:
        return
    sl, east, north = win
    along, across = _rotate(east, north, azimuth)
    # ellipse centred behind the front, its edge made ragged by fractal noise
    rho = np.sqrt(
        ((along + depth_m * 0.75) / (depth_m * 0.95)) ** 2 + (across / (width_m * 0.5)) ** 2
    )
    tex = fractal_noise(east.shape, cv.rng, 3.6)
    core = 1.0 - rho + 0.25 * tex
    mass = smoothstep(core / 0.6) ** 0.8 * (1.0 - smoothstep((rho - 1.25) / 0.2))
    rough = ndimage.gaussian_filter(cv.rng.standard_normal(east.shape).astype(np.float32), 3.0)
    rough /= rough.std() + 1e-6
    cv.dem[sl] += (height_m * mass * (1.0 + 0.05 * rough)).astype(np.float32)


def stamp_alluvial_fan(
    cv: _Canvas, cx: float, cy: float, radius_m: float, azimuth: float, fresh: bool
) -> Landform:
    """An alluvial fan spreading from an apex at a mountain front, with distributary channels."""
    rng = cv.rng
    half = math.radians(rng.uniform(35, 65))
    _highland(cv, cx, cy, azimuth, radius_m * 2.2, radius_m * 0.9, radius_m * 0.12)
    sl, _east, _north, along, across = cv.oriented(cx, cy, radius_m * 1.4 / cv.res, azimuth)
    r = np.sqrt(along**2 + across**2)
    phi = np.arctan2(across, along)
    coef = _angular_noise(rng)
    redge = radius_m * (1.0 + 0.08 * _eval_angular(coef, phi))
    t = np.clip(r / redge, 0, 1.5)
    sector = 1.0 - smoothstep((np.abs(phi) - half) / 0.25)
    thick = radius_m * 0.08
    h = thick * np.clip(1.0 - t, 0, 1) ** 1.3 * sector
    lobe = np.exp(-(((t - 0.97) / 0.05) ** 2)) * sector
    h += lobe * thick * 0.15
    # feeder canyon into the highland
    canyon = (
        np.exp(-((across / (radius_m * 0.06)) ** 2))
        * (along < 0)
        * smoothstep(-along / (radius_m * 0.1))
        * (1.0 - smoothstep((-along - radius_m * 0.8) / (radius_m * 0.2)))
    )
    h -= canyon * radius_m * 0.09
    n_ch = rng.integers(5, 11)
    wig = _angular_noise(rng, 3)
    grooves = np.cos(n_ch * (phi + 0.05 * _eval_angular(wig, r / radius_m * 6.0))) ** 8
    h -= grooves * thick * 0.5 * np.sqrt(t) * (t < 1.0) * sector * (1.0 if fresh else 0.5)
    h *= 1.0 - smoothstep((r - radius_m * 1.2) / (radius_m * 0.2))
    if not fresh:
        h = ndimage.gaussian_filter(h, 1.5)
    cv.dem[sl] += h.astype(np.float32)
    cv.albedo[sl] *= (1.0 + 0.12 * sector * (t < 1.0) * (1.0 - 0.5 * t)).astype(np.float32)
    cv.protect[sl] = np.maximum(cv.protect[sl], (sector * (t < 1.0)).astype(np.float32) * 0.6)
    phis = np.linspace(-half, half, 48)
    radii = radius_m * (1.0 + 0.08 * _eval_angular(coef, phis))
    pts = _local_to_px(cx, cy, cv.res, azimuth, radii * np.cos(phis), radii * np.sin(phis))
    geom = Polygon([(cx, cy), *map(tuple, pts)]).buffer(0)
    return Landform(
        "alluvial_fan",
        geom,
        (geom.centroid.x, geom.centroid.y),
        radius_m,
        {
            "azimuth": azimuth,
            "variant": "fresh" if fresh else "eroded",
            "opening_deg": round(math.degrees(2 * half)),
        },
    )


def _lobe_halfwidth(s: NDArray[Any], w0: float, w1: float, spread: float) -> NDArray[Any]:
    return w0 + (w1 - w0) * np.clip(s, 0, 1) ** spread


def _lobe_landform(
    cls: str,
    cv: _Canvas,
    cx: float,
    cy: float,
    azimuth: float,
    ss: NDArray[Any],
    half_width: NDArray[Any],
    length_m: float,
    fresh: bool,
) -> Landform:
    """A lobe-shaped landform whose outline runs along ``ss`` (fractions of its length)."""
    left = _local_to_px(cx, cy, cv.res, azimuth, ss * length_m, -half_width)
    right = _local_to_px(cx, cy, cv.res, azimuth, ss * length_m, half_width)
    geom = Polygon([*map(tuple, left), *map(tuple, right[::-1])]).buffer(0)
    return Landform(
        cls,
        geom,
        (geom.centroid.x, geom.centroid.y),
        length_m,
        {"azimuth": azimuth, "variant": "fresh" if fresh else "degraded"},
    )


def stamp_glacier_like_form(
    cv: _Canvas, cx: float, cy: float, length_m: float, azimuth: float, fresh: bool
) -> Landform:
    """A glacier-like form: a convex tongue from an alcove, arcuate ridges and a moraine."""
    rng = cv.rng
    width = length_m * rng.uniform(0.3, 0.45)
    _highland(cv, cx, cy, azimuth, width * 2.6, length_m * 0.5, length_m * 0.15)
    sl, _east, _north, along, across = cv.oriented(cx, cy, length_m * 1.3 / cv.res, azimuth)
    s = along / length_m
    hw = width / 2 * (0.55 + 0.45 * np.sin(np.pi * np.clip(s, 0, 1) * 0.8 + 0.2))
    toe = 1.0 - smoothstep((s - 0.85) / 0.15)
    q = np.clip(1.0 - (across / hw) ** 2, 0, 1)
    inside = (s > -0.05) * q * np.sqrt(np.clip(1.0 - ((s - 0.5) / 0.55) ** 8, 0, 1))
    body = np.sqrt(q) * toe * (s > -0.1)
    thick = length_m * 0.03
    h = thick * body * smoothstep((s + 0.1) / 0.2)
    lam = length_m * rng.uniform(0.05, 0.08)
    phase = (along + (across**2) / (width * 0.9)) / lam
    ridges = np.sin(2 * np.pi * phase) * smoothstep((s - 0.3) / 0.3)
    h += ridges * thick * 0.25 * inside
    lines = np.sin(2 * np.pi * across / (width * 0.12)) * (1.0 - smoothstep((s - 0.15) / 0.35))
    h += lines * thick * 0.12 * inside
    # terminal / lateral moraine ridge on the outline
    outline = (
        np.exp(-(((np.sqrt((across / hw) ** 2 + 0.0) - 1.0) / 0.12) ** 2)) * (s > 0) * (s < 0.9)
    )
    front = np.exp(-(((s - 0.92) / 0.04) ** 2)) * (np.abs(across) < hw * 1.1)
    h += (outline + front) * thick * 0.35
    pits = ndimage.gaussian_filter(rng.standard_normal(h.shape).astype(np.float32), 0.8)
    h += pits * thick * 0.05 * inside
    if not fresh:
        h = ndimage.gaussian_filter(h, 1.2)
    cv.dem[sl] += h.astype(np.float32)
    cv.protect[sl] = np.maximum(cv.protect[sl], (inside > 0).astype(np.float32) * 0.5)
    ss = np.linspace(0, 0.95, 40)
    hw_s = width / 2 * (0.55 + 0.45 * np.sin(np.pi * ss * 0.8 + 0.2))
    return _lobe_landform("glacier_like_form", cv, cx, cy, azimuth, ss, hw_s, length_m, fresh)


def stamp_landslide(
    cv: _Canvas, cx: float, cy: float, length_m: float, azimuth: float, fresh: bool
) -> Landform:
    """A landslide: arcuate head scarp, a deposit fanning downslope with longitudinal grooves."""
    rng = cv.rng
    w0 = length_m * rng.uniform(0.15, 0.25)
    w1 = length_m * rng.uniform(0.45, 0.7)
    _highland(cv, cx, cy, azimuth, w1 * 3.0, length_m * 0.6, length_m * 0.2)
    sl, _east, _north, along, across = cv.oriented(cx, cy, length_m * 1.5 / cv.res, azimuth)
    # amphitheatre alcove cut into the scarp
    alc = np.sqrt((along / (length_m * 0.25)) ** 2 + (across / (w0 * 1.3)) ** 2)
    h = -length_m * 0.1 * (1.0 - smoothstep((alc - 0.7) / 0.3)) * (along < 0)
    s = along / length_m
    hw = _lobe_halfwidth(s, w0, w1, 0.6)
    coef = _angular_noise(rng, 4)
    front = 1.0 + 0.06 * _eval_angular(coef, across / w1 * 2.0)
    in_lobe = (1.0 - smoothstep((np.abs(across) / hw - 0.9) / 0.1)) * smoothstep(s / 0.05)
    in_lobe *= 1.0 - smoothstep((s - front * 0.95) / 0.05)
    thick = length_m * 0.02
    dep = thick * (1.0 - 0.5 * np.clip(s, 0, 1)) * in_lobe
    n_g = rng.integers(7, 13)
    grooves = np.cos(np.pi * n_g * across / hw) ** 2
    dep += grooves * thick * 0.5 * in_lobe * smoothstep((s - 0.15) / 0.2)
    hum = ndimage.gaussian_filter(rng.standard_normal(dep.shape).astype(np.float32), 2.5)
    dep += hum * thick * 0.8 * in_lobe * (1.0 - smoothstep((s - 0.1) / 0.3))
    lobe_front = np.exp(-(((s - front * 0.95) / 0.03) ** 2)) * (np.abs(across) < hw)
    dep += lobe_front * thick * 0.6
    if not fresh:
        dep = ndimage.gaussian_filter(dep, 1.3)
    h += dep
    cv.dem[sl] += h.astype(np.float32)
    cv.albedo[sl] *= (1.0 + (0.08 if fresh else 0.03) * in_lobe).astype(np.float32)
    ss = np.linspace(-0.15, 0.95, 40)
    hw_s = _lobe_halfwidth(np.clip(ss, 0, 1), w0, w1, 0.6)
    return _lobe_landform("landslide", cv, cx, cy, azimuth, ss, hw_s, length_m, fresh)


def stamp_pitted_cones(cv: _Canvas, cx: float, cy: float, field_radius_m: float) -> Landform:
    """A field of pitted cones: positive cones, each with a summit pit and a dark halo."""
    rng = cv.rng
    n = int(rng.integers(3, 9))
    circles = []
    placed: list[tuple[float, float, float]] = []
    tries = 0
    while len(placed) < n and tries < 200:
        tries += 1
        rc = rng.uniform(130, 300)
        ang = rng.uniform(0, 2 * np.pi)
        dist = field_radius_m * math.sqrt(rng.uniform(0, 1)) * 0.8
        ex, ny = dist * math.cos(ang), dist * math.sin(ang)
        if any(math.hypot(ex - px, ny - py) < (rc + pr) * 1.15 for px, py, pr in placed):
            continue
        placed.append((ex, ny, rc))
    for ex, ny, rc in placed:
        px, py = cx + ex / cv.res, cy - ny / cv.res
        win = cv.window(px, py, rc * 2.0 / cv.res)
        if win is None:
            continue
        sl, east, north = win
        rho = np.sqrt(east**2 + north**2) / rc
        height = rc * rng.uniform(0.25, 0.4)
        cone = height * np.clip(1.0 - rho, 0, 1) ** 1.2
        pit_r = rng.uniform(0.18, 0.3)
        pit = np.clip(1.0 - (rho / pit_r) ** 2, 0, 1)
        h = cone - pit * height * 0.55
        cv.dem[sl] += h.astype(np.float32)
        halo = np.exp(-((rho / 1.3) ** 4))
        cv.albedo[sl] *= (1.0 - 0.18 * halo).astype(np.float32)
        cv.protect[sl] = np.maximum(cv.protect[sl], (rho < 1.2).astype(np.float32))
        circles.append(Point(px, py).buffer(rc * 1.3 / cv.res, quad_segs=8))
    geom = unary_union(circles).convex_hull if circles else Point(cx, cy).buffer(3)
    return Landform(
        "pitted_cone",
        geom,
        (geom.centroid.x, geom.centroid.y),
        field_radius_m * 2,
        {"count": len(circles), "variant": "field" if len(circles) > 4 else "group"},
    )


def _field_outline(
    cv: _Canvas, cx: float, cy: float, a_m: float, b_m: float, azimuth: float
) -> tuple[Polygon, tuple[NDArray[Any], NDArray[Any]]]:
    coef = _angular_noise(cv.rng, 4)
    phis = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    k = 1.0 + 0.1 * _eval_angular(coef, phis)
    pts = _local_to_px(cx, cy, cv.res, azimuth, a_m * k * np.cos(phis), b_m * k * np.sin(phis))
    return Polygon(pts).buffer(0), coef


def _field_mask(
    east: Array,
    north: Array,
    a_m: float,
    b_m: float,
    azimuth: float,
    coef: tuple[NDArray[Any], NDArray[Any]],
    soft: float = 0.12,
) -> Array:
    along, across = _rotate(east, north, azimuth)
    phi = np.arctan2(across / b_m, along / a_m)
    k = 1.0 + 0.1 * _eval_angular(coef, phi)
    rho = np.sqrt((along / a_m) ** 2 + (across / b_m) ** 2) / k
    return (1.0 - smoothstep((rho - (1.0 - soft)) / soft)).astype(np.float32)


def stamp_yardangs(cv: _Canvas, cx: float, cy: float, a_m: float, azimuth: float) -> Landform:
    """A yardang field: streamlined ridges along the wind, cut into a bright friable layer."""
    rng = cv.rng
    b_m = a_m * rng.uniform(0.5, 0.8)
    geom, coef = _field_outline(cv, cx, cy, a_m, b_m, azimuth)
    sl, east, north, along, across = cv.oriented(cx, cy, a_m * 1.25 / cv.res, azimuth)
    mask = _field_mask(east, north, a_m, b_m, azimuth, coef)
    length = rng.uniform(250, 600)
    width = length * rng.uniform(0.12, 0.25)
    spacing = width * rng.uniform(1.8, 2.6)
    height = width * 0.4
    lane = np.round(across / spacing)
    lane_off = (np.sin(lane * 12.9898) * 43758.5453) % 1.0
    u = (along + lane_off * length * 1.7) / (length * 1.25)
    cell = u - np.floor(u) - 0.5  # -0.5..0.5 along each ridge cell
    v = (across - lane * spacing) / width
    taper = 1.0 - 0.5 * (cell + 0.5)  # blunt upwind end, narrow downwind tail
    prof = np.clip(1.0 - (cell / 0.42) ** 2 - (v / taper) ** 2, 0, 1)
    h = height * np.sqrt(prof) * mask + height * 0.2 * mask
    cv.stamp(sl, h, 1.0 + 0.22 * mask, mask)
    return Landform(
        "yardang",
        geom,
        (cx, cy),
        2 * a_m,
        {"azimuth": azimuth, "ridge_length_m": round(length)},
    )


def stamp_dune_field(
    cv: _Canvas,
    cx: float,
    cy: float,
    a_m: float,
    azimuth: float,
    barchan: bool,
    on_crater_floor: bool = False,
) -> Landform:
    """A dark dune field: transverse ridges or barchans with gentle stoss and steep lee slopes."""
    rng = cv.rng
    b_m = a_m * rng.uniform(0.55, 0.9)
    geom, coef = _field_outline(cv, cx, cy, a_m, b_m, azimuth)
    sl, east, north, along, across = cv.oriented(cx, cy, a_m * 1.25 / cv.res, azimuth)
    mask = _field_mask(east, north, a_m, b_m, azimuth, coef, soft=0.2)
    lam = rng.uniform(90, 200)
    height = lam * 0.08
    if barchan:
        h = np.zeros_like(east)
        n = int(a_m * b_m / (lam * lam) * 0.9) + 4
        for _ in range(n):
            pa, pc = rng.uniform(-a_m, a_m), rng.uniform(-b_m, b_m)
            r = lam * rng.uniform(0.4, 0.7)
            da, dc = (along - pa) / r, (across - pc) / r
            t = da - 0.9 * dc**2  # crescent: horns point downwind
            prof = np.where(t < 0, np.clip(t + 1.0, 0, 1), np.clip(1.0 - t / 0.12, 0, 1))
            h = np.maximum(h, height * 1.6 * prof * np.clip(1.0 - dc**2, 0, 1))
        sand = 0.5 * mask
    else:
        wob = 0.3 * lam * np.sin(2 * np.pi * across / (lam * rng.uniform(3, 6)) + rng.uniform(0, 6))
        p = ((along + wob) / lam) % 1.0
        prof = np.where(p < 0.75, p / 0.75, (1.0 - p) / 0.25)
        h = height * prof
        sand = mask
    h = h * mask
    dark = np.maximum(sand, (h > height * 0.05).astype(np.float32) * mask)
    cv.stamp(sl, h, 1.0 - 0.45 * dark, mask)
    return Landform(
        "dune_field",
        geom,
        (cx, cy),
        2 * a_m,
        {
            "azimuth": azimuth,
            "variant": "barchan" if barchan else "transverse",
            "on_crater_floor": on_crater_floor,
        },
    )


def _meander(
    rng: np.random.Generator,
    start: tuple[float, float],
    azimuth: float,
    length_m: float,
    step_m: float,
    sinuosity: float,
) -> NDArray[np.float64]:
    """Return a meandering centre line (east, north metres) starting at ``start``."""
    n = max(2, int(length_m / step_m))
    head = math.radians(azimuth)
    phase = rng.uniform(0, 2 * np.pi)
    wl = rng.uniform(0.15, 0.3) * length_m
    pts = [start]
    e, nn = start
    walk = 0.0
    for i in range(n):
        walk += rng.normal(0, 0.06)
        walk *= 0.97
        d = (
            head
            + sinuosity * math.sin(2 * math.pi * i * step_m / wl + phase)
            + 0.5 * sinuosity * math.sin(2 * math.pi * i * step_m / (wl * 0.37) + 2 * phase)
            + walk
        )
        e += step_m * math.sin(d)
        nn += step_m * math.cos(d)
        pts.append((e, nn))
    return np.asarray(pts)


def stamp_channel(
    cv: _Canvas, cx: float, cy: float, length_m: float, azimuth: float, network: bool
) -> Landform:
    """A sinuous channel, or a dendritic valley network with tributaries, carved into the DEM."""
    rng = cv.rng
    width = rng.uniform(90, 200) if not network else rng.uniform(60, 130)
    depth = width * rng.uniform(0.25, 0.4)
    main = _meander(
        rng,
        (
            -length_m / 2 * math.sin(math.radians(azimuth)),
            -length_m / 2 * math.cos(math.radians(azimuth)),
        ),
        azimuth,
        length_m,
        cv.res * 2,
        rng.uniform(0.3, 0.7),
    )
    lines = [(main, width)]
    if network:
        for _ in range(int(rng.integers(2, 5))):
            j = int(rng.integers(len(main) // 5, len(main) * 4 // 5))
            side = rng.choice([-1.0, 1.0])
            az = azimuth + 180 + side * rng.uniform(30, 60)
            trib = _meander(
                rng, tuple(main[j]), az, length_m * rng.uniform(0.25, 0.45), cv.res * 2, 0.3
            )
            lines.append((trib, width * 0.6))
    radius = length_m * 0.75 / cv.res
    win = cv.window(cx, cy, radius)
    assert win is not None
    sl, east, _north = win
    h = np.zeros_like(east)
    polys = []
    for pts, w in lines:
        px = np.column_stack([cx + pts[:, 0] / cv.res, cy - pts[:, 1] / cv.res])
        mask = np.ones(east.shape, bool)
        rr = np.round(px[:, 1] - sl[0].start).astype(int)
        cc = np.round(px[:, 0] - sl[1].start).astype(int)
        ok = (rr >= 0) & (rr < east.shape[0]) & (cc >= 0) & (cc < east.shape[1])
        mask[rr[ok], cc[ok]] = False
        if ok.sum() < 2:
            continue
        dist = ndimage.distance_transform_edt(mask) * cv.res
        hw = w / 2
        h = np.minimum(h, -depth * (w / width) * np.clip(1 - (dist / hw) ** 2, 0, 1) ** 0.7)
        h += (depth * 0.06 * np.exp(-(((dist - hw * 1.2) / (hw * 0.4)) ** 2))).astype(np.float32)
        line = LineString(px[ok])
        polys.append(line.buffer(max(hw * 1.6 / cv.res, 1.5), quad_segs=4))
    cv.dem[sl] += h.astype(np.float32)
    cv.protect[sl] = np.maximum(cv.protect[sl], (h < -depth * 0.2).astype(np.float32))
    geom = unary_union(polys) if polys else Point(cx, cy).buffer(2)
    return Landform(
        "channel",
        geom,
        (cx, cy),
        length_m,
        {
            "azimuth": azimuth,
            "variant": "valley network" if network else "sinuous channel",
            "width_m": round(width),
        },
    )


# --------------------------------------------------------------------------------------------
# scene


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
