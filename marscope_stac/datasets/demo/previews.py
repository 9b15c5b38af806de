"""Preview images of the demo world: a scene with its landform outlines and a legend."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry.base import BaseGeometry

from marscope_stac.datasets.demo.captions import CLASS_NAMES
from marscope_stac.datasets.demo.terrain import LANDFORM_CLASSES, Landform

__all__ = [
    "CLASS_COLOURS",
]


CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "alluvial_fan": (230, 60, 50),
    "glacier_like_form": (60, 210, 230),
    "landslide": (250, 150, 30),
    "pitted_cone": (220, 60, 220),
    "yardang": (240, 230, 60),
    "impact_crater": (80, 230, 80),
    "dune_field": (70, 110, 250),
    "channel": (255, 255, 255),
    "plains": (150, 150, 150),
}


def _draw_geometry(
    draw: ImageDraw.ImageDraw,
    geom: BaseGeometry,
    scale: float,
    colour: tuple[int, int, int],
    width: int,
) -> None:
    polys: Iterable[Any] = getattr(geom, "geoms", [geom])
    for poly in polys:
        rings = [poly.exterior, *poly.interiors] if hasattr(poly, "exterior") else []
        for ring in rings:
            pts = [(x * scale, y * scale) for x, y in ring.coords]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=width)


def _preview(
    out_dir: Path, image: np.ndarray, landforms: list[Landform]
) -> tuple[Path, Image.Image]:
    side = image.shape[0]
    target = min(side, 800)
    scale = target / side
    base = Image.fromarray(image).resize((target, target), Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(base)
    for lf in landforms:
        _draw_geometry(draw, lf.geometry, scale, CLASS_COLOURS[lf.cls], 2)
    # legend
    pad, line = 6, 13
    present = [c for c in LANDFORM_CLASSES if any(lf.cls == c for lf in landforms)]
    draw.rectangle([0, 0, 150, pad * 2 + line * len(present)], fill=(0, 0, 0))
    for i, cls in enumerate(present):
        y = pad + i * line
        draw.rectangle([pad, y + 2, pad + 9, y + 11], fill=CLASS_COLOURS[cls])
        draw.text((pad + 14, y), CLASS_NAMES[cls], fill=(255, 255, 255))
    path = out_dir / "preview.png"
    base.save(path, optimize=False)
    return path, base
