"""Preview what the model will see: contact sheets of planned tiles."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marscope_stac.core.errors import ConfigError, OutputError, SkippedInputWarning, check_range
from marscope_stac.core.fs import atomic_output, check_apart, check_output_file
from marscope_stac.core.text import join_lines
from marscope_stac.grid.grids import Grid
from marscope_stac.stac.read import SourceSet, load_sources
from marscope_stac.tiles.plan import TileBatch, TilePlan, plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches

__all__ = [
    "TilePreview",
    "contact_sheet",
    "preview_tiles",
]


def contact_sheet(
    batches: Sequence[TileBatch],
    grid: Grid,
    out: str | os.PathLike[str],
    columns: int = 8,
    max_tiles: int = 64,
) -> Path:
    """Write a PNG contact sheet of tiles with their cell ids and valid fractions."""
    from PIL import Image, ImageDraw

    tiles = [
        (int(c), p, float(v))
        for b in batches
        for c, p, v in zip(b.cells, b.pixels, b.valid, strict=True)
    ]
    if len(tiles) > max_tiles:
        pick = np.linspace(0, len(tiles) - 1, max_tiles).round().astype(int)
        tiles = [tiles[i] for i in pick]
    if not tiles:
        raise ConfigError("no tiles to show")
    n = tiles[0][1].shape[0]
    size = max(n, 96)
    label_h = 14
    rows = math.ceil(len(tiles) / columns)
    sheet = Image.new("L", (columns * size, rows * (size + label_h)), 0)
    draw = ImageDraw.Draw(sheet)
    ids = grid.cell_ids([t[0] for t in tiles])
    for i, ((_, pix, v), cid) in enumerate(zip(tiles, ids, strict=True)):
        img = Image.fromarray((np.clip(pix, 0, 1) * 255).astype(np.uint8)).resize((size, size))
        x, y = (i % columns) * size, (i // columns) * (size + label_h)
        sheet.paste(img, (x, y))
        short = cid.split(":", 2)[-1]
        draw.text((x + 2, y + size + 1), f"{short} {v:.0%}", fill=255)
    path = Path(out)
    with atomic_output(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return path


@dataclass
class TilePreview:
    """What :func:`preview_tiles` found and drew."""

    plan: TilePlan
    sources: SourceSet
    shown: int
    sheet: Path | None

    def summary(self) -> str:
        """Lines for people."""
        sheet = None if self.sheet is None else f"contact sheet of {self.shown} tiles: {self.sheet}"
        return join_lines(
            f"{self.sources.summary()}; grid {self.plan.grid.spec}: {len(self.plan)} cells "
            f"of {self.plan.tile_px} px",
            sheet,
        )


def _check_preview(preview: str | Path, source: str | Path) -> None:
    """Refuse, before any work, a contact sheet path that is not a new or old PNG file.

    Raises:
        OutputError: for a folder, another suffix, a device, FIFO or socket, or a path in
            the input catalog.
    """
    if Path(preview).is_dir():
        raise OutputError(f"--preview {preview} is a folder; give a PNG file name")
    check_output_file(preview)  # a device, FIFO or socket is refused before any work
    if Path(preview).suffix.lower() != ".png":
        raise OutputError(f"--preview {preview} must end in .png; give a PNG file name")
    check_apart(preview, {f"the input catalog {source}": str(source)}, "--preview")


def preview_tiles(
    source: str | Path,
    *,
    grid: str = "lonlat:0.2",
    tile_px: int = 224,
    preview: str | Path | None = None,
    bbox: Sequence[float] | None = None,
    asset: str | None = None,
    collections: Sequence[str] | None = None,
    datetime: str | None = None,
    cql2: str | None = None,
    max_tiles: int = 48,
    context: float = 0.0,
) -> TilePreview:
    """Plan the tiles of a STAC source and draw a sample of them as a contact sheet.

    Only the sampled tiles are read; ``context`` draws them as a model trained with that
    margin sees them (see :class:`TilePlan`). See :func:`~marscope_stac.stac.read.load_sources`
    for the source arguments and :func:`~marscope_stac.grid.grids.parse_grid` for ``grid``.
    """
    from marscope_stac.grid.grids import parse_grid

    check_range("tile_px", tile_px, 8, 4096, integer=True)
    check_range("max_tiles", max_tiles, 1, 10_000, integer=True)
    if preview is not None:
        _check_preview(preview, source)
    sources = load_sources(
        source, collections=collections, bbox=bbox, datetime=datetime, asset=asset, cql2=cql2
    )
    g = parse_grid(grid, sources.body)
    plan = plan_tiles(sources, g, tile_px, bbox=bbox, context=context)
    sheet = None
    shown = 0
    if preview is not None:
        pick = np.unique(np.linspace(0, len(plan) - 1, min(max_tiles, len(plan))).round())
        sample = plan.take(pick.astype(np.intp))
        batches = list(iter_tile_batches(sample, batch_size=16))
        shown = len(sample)
        errors = [e for b in batches for e in b.errors]
        if errors:
            warnings.warn(
                f"{len(errors)} of {shown} tiles could not be read and are drawn empty; "
                f"first: {errors[0][1]}",
                SkippedInputWarning,
                stacklevel=2,
            )
        empty = sum(int((b.valid <= 0).sum()) for b in batches)
        if empty and not errors:
            warnings.warn(
                f"{empty} of {shown} tiles hold no valid pixel (all nodata or NaN) and are "
                "drawn empty",
                SkippedInputWarning,
                stacklevel=2,
            )
        sheet = contact_sheet(batches, g, preview, max_tiles=max_tiles)
    return TilePreview(plan, sources, shown, sheet)
