"""The demo world: synthetic CTX-like Mars imagery with landform ground truth and captions."""

from __future__ import annotations

from marscope_stac.datasets.demo.pipeline import DemoRun, run_demo
from marscope_stac.datasets.demo.world import SIZES, DemoCatalog, build_demo_catalog

__all__ = ["SIZES", "DemoCatalog", "DemoRun", "build_demo_catalog", "run_demo"]
