"""The demo world: synthetic CTX-like Mars imagery with landform ground truth and captions."""

from __future__ import annotations

from marscope_stac.datasets.demo.pipeline import DemoRun, run_demo
from marscope_stac.datasets.demo.planet import build_planet_catalog
from marscope_stac.datasets.demo.world import SIZES, DemoCatalog, build_demo_catalog

__all__ = [
    "SIZES",
    "DemoCatalog",
    "DemoRun",
    "build_demo_catalog",
    "build_planet_catalog",
    "run_demo",
]
