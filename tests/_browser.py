"""Debian's Chromium driven by Playwright (no browser downloaded), shared by the page tests."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") is None,
    reason="needs Debian's chromium (.ci/run installs it; in CI a missing browser fails)",
)
"""Skip only outside CI; in CI the test runs and fails on a missing browser."""


def launch(pw: Any) -> Any:
    """A headless Chromium with software WebGL (MapLibre needs WebGL)."""
    assert CHROMIUM is not None, "chromium is not installed (apt-get install chromium)"
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--use-gl=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
    )


def watch(page: Any) -> list[str]:
    """Collect the page's errors and console errors (the list fills as the page runs)."""
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    return problems


def screenshot(page: Any) -> np.ndarray:
    """The page as an RGB array of ints."""
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)


def map_box(page: Any) -> tuple[int, int, int, int]:
    """The map's ``left, top, width, height`` in the page."""
    box = page.evaluate(
        "() => { const r = window.marscopeMap.getContainer().getBoundingClientRect();"
        " return [r.left, r.top, r.width, r.height]; }"
    )
    left, top, width, height = (int(v) for v in box)
    return left, top, width, height


def tinted(page: Any, blank: np.ndarray | None = None) -> float:
    """Share of the map painted in colour (the probability layer's magma over grey imagery).

    With ``blank`` (a screenshot before the layer), only pixels that changed count.
    """
    left, top, width, height = map_box(page)
    img = screenshot(page)[top : top + height, left : left + width]
    colour = np.abs(img[..., 0] - img[..., 2]) >= 12  # imagery is grey; magma is not
    if blank is not None:
        changed = np.abs(img - blank[top : top + height, left : left + width]).sum(axis=2) > 60
        colour &= changed
    return float(colour.mean())


def demo_map_server(demo_root: Path, work: Path) -> Any:
    """A started map server over a copy of a demo world: the bundled model (so the map shows
    a real answer), every cell embedded, the imagery basemap. Call ``shutdown()`` after."""
    from marscope_stac.embed.run import embed_catalog
    from marscope_stac.engine.engine import QueryEngine
    from marscope_stac.models.loading import load_model
    from marscope_stac.products.basemap import build_basemap
    from marscope_stac.web.server import MapServer

    cat = work / "catalogs" / "demo"
    shutil.copytree(demo_root, cat)
    out = work / "products"
    embed_catalog(cat, out, model="bundled", progress=False)
    build_basemap(cat, out)
    engine = QueryEngine.open(out, clip_model=load_model("bundled", device="cpu"))
    server = MapServer(out, engine, "127.0.0.1", 0)
    server.start()
    return server
