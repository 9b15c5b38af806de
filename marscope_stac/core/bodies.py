"""Solid bodies of the Solar System, their IAU coordinate reference systems and longitudes.

Everything geographic in MarScope-STAC goes through a :class:`Body`. Coordinates are
planetocentric, east-positive longitude/latitude in degrees on the body's reference sphere
(``IAU_2015:<naif>00``), longitudes normalised to -180..180. Projected systems come from the
same IAU 2015 family (``+10`` equirectangular, ``+30``/``+35`` polar stereographic north/south,
``+90`` Mercator), so PROJ never has to cross from one body to another.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import CRS

from marscope_stac.core.errors import ConfigError

__all__ = [
    "BODIES",
    "MARS",
    "MOON",
    "Body",
    "body_of_crs",
    "chord_length",
    "get_body",
    "normalize_lon",
    "unit_vectors",
]


@dataclass(frozen=True)
class Body:
    """A solid body with an IAU 2015 coordinate reference system family.

    Attributes:
        name: Name as used in ``ssys:targets`` (e.g. ``"Mars"``).
        naif_id: NAIF integer id of the body (Mars 499, Moon 301).
        target_class: ``ssys:target_class`` value (``"planet"``, ``"satellite"``, ...).
    """

    name: str
    naif_id: int
    target_class: str

    def iau_code(self, offset: int = 0) -> str:
        """Return the IAU 2015 CRS code ``IAU_2015:<naif*100 + offset>``.

        Offsets of the IAU 2015 family: 0 geographic, 10 equirectangular, 30 / 35 north /
        south polar stereographic, 90 Mercator.
        """
        return f"IAU_2015:{self.naif_id * 100 + offset}"

    @property
    def geographic_code(self) -> str:
        """Planetocentric lon/lat CRS on the reference sphere (e.g. ``IAU_2015:49900``)."""
        return self.iau_code(0)

    @property
    def equirectangular_code(self) -> str:
        """Equirectangular projection on the sphere, centred on lon 0 (``+10``)."""
        return self.iau_code(10)

    @property
    def crs(self) -> CRS:
        """The geographic (lon/lat) CRS of the body as a :class:`pyproj.CRS`."""
        return _crs(self.geographic_code)

    @property
    def radius_m(self) -> float:
        """Mean radius of the reference sphere in metres, read from PROJ."""
        return float(self.crs.ellipsoid.semi_major_metre)  # type: ignore[union-attr]

    @property
    def metres_per_degree(self) -> float:
        """Length of one degree of a great circle on the reference sphere, in metres."""
        return self.radius_m * math.pi / 180.0

    def projected_crs(self, offset: int) -> CRS:
        """Return the IAU 2015 CRS ``naif*100 + offset`` as a :class:`pyproj.CRS`."""
        return _crs(self.iau_code(offset))


@functools.lru_cache(maxsize=64)
def _crs(code: str) -> CRS:
    return CRS.from_user_input(code)


MARS = Body("Mars", 499, "planet")
MOON = Body("Moon", 301, "satellite")
MERCURY = Body("Mercury", 199, "planet")
VENUS = Body("Venus", 299, "planet")

BODIES: dict[str, Body] = {b.name.lower(): b for b in (MARS, MOON, MERCURY, VENUS)}


def get_body(name: str) -> Body:
    """Return the :class:`Body` called ``name`` (case-insensitive).

    Raises:
        ConfigError: if the body is unknown.
    """
    body = BODIES.get(name.strip().lower())
    if body is None:
        known = ", ".join(b.name for b in BODIES.values())
        raise ConfigError(f"unknown body {name!r}: use one of {known}")
    return body


def normalize_lon(lon: ArrayLike) -> NDArray[np.float64]:
    """Map longitudes in degrees (0..360 or any other range) to -180 <= lon < 180."""
    arr = np.asarray(lon, dtype=np.float64)
    return np.asarray((arr + 180.0) % 360.0 - 180.0, dtype=np.float64)


def body_of_crs(crs: CRS) -> Body | None:
    """Guess the body of a CRS from its datum/ellipsoid name and radius; None for Earth/unknown."""
    geod = crs.geodetic_crs
    names = " ".join(
        str(x) for x in (crs.name, geod.name if geod else "", crs.datum.name if crs.datum else "")
    ).lower()
    for body in BODIES.values():
        if body.name.lower() in names:
            return body
    ell = crs.ellipsoid
    if ell is not None:
        for body in BODIES.values():
            if abs(ell.semi_major_metre - body.radius_m) / body.radius_m < 0.002:
                return body
    return None


def unit_vectors(lonlat: ArrayLike) -> NDArray[np.float64]:
    """Unit vectors (n, 3) on the sphere of lon/lat positions in degrees (n, 2)."""
    ll = np.asarray(lonlat, dtype=np.float64).reshape(-1, 2)
    lon, lat = np.radians(ll[:, 0]), np.radians(ll[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def chord_length(angle_rad: float) -> float:
    """Straight-line distance between two unit vectors ``angle_rad`` apart on the sphere."""
    return float(2.0 * math.sin(angle_rad / 2.0))
