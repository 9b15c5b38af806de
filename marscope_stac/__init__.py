"""MarScope-STAC: ask a planet a question in plain language.

Vision-language search of planetary orbital imagery (COGs in STAC catalogs), published as
probability COGs, PMTiles and STAC Items.

The names a user needs are here; each loads its sub-package on first use, so that
``import marscope_stac`` stays light (no torch until a model is needed)::

    import marscope_stac as ms

    demo = ms.build_demo_catalog("catalogs/demo", size="small")
    ms.embed_catalog(demo.root, "products")
    engine = ms.QueryEngine.open("products")
    product = engine.query(ms.QuerySpec(text=["impact craters"]))
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marscope_stac.core.errors import ConfigError, MarscopeError, MarscopeWarning

if TYPE_CHECKING:
    from marscope_stac.core.bodies import get_body
    from marscope_stac.datasets.demo import build_demo_catalog, run_demo
    from marscope_stac.embed import CellSelection, ComputeOptions, embed_catalog
    from marscope_stac.engine import QueryEngine, QueryRequest, run_query, upgrade_embedding_set
    from marscope_stac.eval import evaluate_product
    from marscope_stac.grid import parse_grid
    from marscope_stac.models import load_model
    from marscope_stac.products import ClassProduct, QueryProduct, build_basemap
    from marscope_stac.query import QuerySpec
    from marscope_stac.stac import load_sources, validate_catalog
    from marscope_stac.train import TrainConfig, train_from_source

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

_LAZY: dict[str, str] = {
    "get_body": "core.bodies",
    "parse_grid": "grid",
    "load_sources": "stac",
    "validate_catalog": "stac",
    "load_model": "models",
    "embed_catalog": "embed",
    "CellSelection": "embed",
    "ComputeOptions": "embed",
    "QuerySpec": "query",
    "QueryEngine": "engine",
    "QueryRequest": "engine",
    "run_query": "engine",
    "upgrade_embedding_set": "engine",
    "QueryProduct": "products",
    "ClassProduct": "products",
    "build_basemap": "products",
    "evaluate_product": "eval",
    "TrainConfig": "train",
    "train_from_source": "train",
    "build_demo_catalog": "datasets.demo",
    "run_demo": "datasets.demo",
}
"""Public name -> the sub-package it is loaded from on first use."""

__all__ = [
    "CellSelection",
    "ClassProduct",
    "ComputeOptions",
    "ConfigError",
    "MarscopeError",
    "MarscopeWarning",
    "QueryEngine",
    "QueryProduct",
    "QueryRequest",
    "QuerySpec",
    "TrainConfig",
    "__version__",
    "build_basemap",
    "build_demo_catalog",
    "embed_catalog",
    "evaluate_product",
    "get_body",
    "load_model",
    "load_sources",
    "parse_grid",
    "run_demo",
    "run_query",
    "train_from_source",
    "upgrade_embedding_set",
    "validate_catalog",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its sub-package on first use (PEP 562)."""
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'marscope_stac' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"marscope_stac.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
