"""The demo world: synthetic CTX-like Mars imagery with landform ground truth and captions."""

from __future__ import annotations

from marscope_stac.datasets.demo.world import SIZES, DemoCatalog, build_demo_catalog

__all__ = ["SIZES", "DemoCatalog", "build_demo_catalog"]
