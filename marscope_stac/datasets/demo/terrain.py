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
from shapely.geometry.base import BaseGeometry

__all__ = [
    "LANDFORM_CLASSES",
    "Landform",
    "Scene",
]

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


# --------------------------------------------------------------------------------------------
# scene
