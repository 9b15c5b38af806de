"""MarScope-STAC: ask a planet a question in plain language.

Vision-language search of planetary orbital imagery (COGs in STAC catalogs), published as
probability COGs, PMTiles and STAC Items. See the README for a tour.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from marscope_stac.core.errors import MarscopeError, MarscopeWarning

# torch's compiler makes a cache folder at import (``$TMPDIR/torchinductor_<user>``), left
# behind empty in the shared temporary folder by every run; unless the user chose one, it
# goes to this project's own cache folder instead
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "marscope-stac"
        / "torchinductor"
    ),
)

try:
    __version__ = version("marscope-stac")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["MarscopeError", "MarscopeWarning", "__version__"]
