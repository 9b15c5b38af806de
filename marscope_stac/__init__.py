"""MarScope-STAC: ask a planet a question in plain language.

Vision-language search of planetary orbital imagery (COGs in STAC catalogs), published as
probability COGs, PMTiles and STAC Items. See the README for a tour.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from marscope_stac.errors import MarscopeError, MarscopeWarning

try:
    __version__ = version("marscope-stac")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["MarscopeError", "MarscopeWarning", "__version__"]
