"""Landform stamps of the demo world.

Each writes one landform into a scene's elevation and albedo and returns its outline.

Impact craters, alluvial fans, glacier-like forms, landslides, pitted cones, yardangs, dune
fields and channels, each with variants. Coordinates are pixels (``col`` east, ``row`` south).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from shapely.geometry import LineString, Point, Polygon
from shapely.ops import unary_union

from marscope_stac.datasets.demo.terrain import (
    Array,
    Landform,
    _angular_noise,
    _Canvas,
    _eval_angular,
    _local_to_px,
    _rotate,
    fractal_noise,
    smoothstep,
)

__all__ = [
    "stamp_alluvial_fan",
    "stamp_channel",
    "stamp_dune_field",
    "stamp_glacier_like_form",
    "stamp_impact_crater",
    "stamp_landslide",
    "stamp_pitted_cones",
    "stamp_yardangs",
]


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


def _tributaries(
    rng: np.random.Generator,
    main: NDArray[np.float64],
    azimuth: float,
    length_m: float,
    step_m: float,
    width: float,
) -> list[tuple[NDArray[np.float64], float]]:
    """Return 2-4 tributary centre lines (with widths) branching off the ``main`` channel."""
    tributaries = []
    for _ in range(int(rng.integers(2, 5))):
        j = int(rng.integers(len(main) // 5, len(main) * 4 // 5))
        side = rng.choice([-1.0, 1.0])
        az = azimuth + 180 + side * rng.uniform(30, 60)
        trib = _meander(rng, tuple(main[j]), az, length_m * rng.uniform(0.25, 0.45), step_m, 0.3)
        tributaries.append((trib, width * 0.6))
    return tributaries


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
        lines.extend(_tributaries(rng, main, azimuth, length_m, cv.res * 2, width))
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
