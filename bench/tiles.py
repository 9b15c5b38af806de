"""Tile-reading throughput on the demo catalog vs GDAL's own reads of the same tiles.

Run:  .venv/bin/python bench/tiles.py [--size default] [--tile-px 64 224 512] [--cells 1200]

For the first ``--cells`` planned cells, two baselines read every cell with rasterio, datasets
opened once: the plain window under the cell (native pixels) and GDAL's resampled read of that
window to tile_px x tile_px (bilinear). The pipeline is the library's tile reader exactly as
embedding calls it (``iter_tile_batches``: window reads, inverse-mapped resampling, mosaics,
normalisation), with one thread, and with one and two worker processes. All run in this
process, one after the other, so the ratios are comparable on a noisy machine.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from pathlib import Path

import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import TilePlan, plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches, process_pool


def raw_reads(plan: TilePlan, resample_to_tile: bool = False) -> float:
    """Seconds for one windowed read per cell of the pixels under it (first source only).

    With ``resample_to_tile`` the read asks GDAL for a tile_px x tile_px bilinear result
    (what a naive tiler without reprojection would do).
    """
    grid = plan.grid
    datasets = {i: rasterio.open(s.href) for i, s in enumerate(plan.sources)}
    bounds = grid.bounds(plan.cells)
    windows = []
    for k in range(len(plan)):
        si = plan.cell_sources[k][0]
        ds = datasets[si]
        from pyproj import Transformer

        tr = Transformer.from_crs(grid.body.crs, plan.sources[si].crs, always_xy=True)
        w, s, e, n = bounds[k]
        xs, ys = tr.transform([w, e], [s, n])
        c0, r0 = ~ds.transform * (min(xs), max(ys))
        c1, r1 = ~ds.transform * (max(xs), min(ys))
        windows.append(
            (si, Window(math.floor(c0), math.floor(r0), math.ceil(c1 - c0), math.ceil(r1 - r0)))
        )
    t0 = time.perf_counter()
    total = 0
    shape = (plan.tile_px, plan.tile_px)
    for si, win in windows:
        if resample_to_tile:
            arr = datasets[si].read(1, window=win, out_shape=shape, resampling=Resampling.bilinear)
        else:
            arr = datasets[si].read(1, window=win)
        total += int(arr.size)
    dt = time.perf_counter() - t0
    for ds in datasets.values():
        ds.close()
    assert total > 0
    return dt


def _pipeline(plan: TilePlan, workers: int, scheduler: str, repeats: int, batch: int) -> float:
    """Best seconds to read every tile of ``plan`` with the library's reader."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        got = sum(len(b.cells) for b in iter_tile_batches(plan, batch, workers, scheduler))
        best = min(best, time.perf_counter() - t0)
        assert got == len(plan)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="default")
    ap.add_argument("--grid", default="lonlat:0.02")
    ap.add_argument("--tile-px", type=int, nargs="+", default=[64, 224, 512])
    ap.add_argument("--cells", type=int, default=1200, help="Cells read per figure.")
    ap.add_argument("--batch", type=int, default=64, help="Cells per task.")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path("bench/out/demo-" + args.size)
    ensure_demo_catalog(root, size=args.size)
    sources = load_sources(root)
    grid = parse_grid(args.grid, sources.body)
    print(f"demo catalog {root} ({args.size}), grid {grid.spec}, {os.cpu_count()} CPUs")
    process_pool(1), process_pool(2)  # started once, as a long embedding run does
    for px in args.tile_px:
        plan = plan_tiles(sources, grid, px)
        plan = plan.subset(0, min(len(plan), args.cells))
        n = len(plan)
        raw = min(raw_reads(plan) for _ in range(args.repeats))
        gdal = min(raw_reads(plan, resample_to_tile=True) for _ in range(args.repeats))
        print(
            f"tile {px} px, {n} cells: raw window reads {n / raw:7.0f} tiles/s, "
            f"GDAL resampled to {px} px {n / gdal:7.0f} tiles/s"
        )
        one = None
        for label, workers, scheduler in (
            ("1 thread", 1, "threads"),
            ("1 process", 1, "processes"),
            ("2 processes", 2, "processes"),
        ):
            took = _pipeline(plan, workers, scheduler, args.repeats, args.batch)
            one = took if label == "1 process" else one
            speedup = f", {one / took:4.2f}x 1 process" if label == "2 processes" and one else ""
            print(
                f"  pipeline, {label:11s}: {n / took:7.0f} tiles/s   ratio to GDAL-resampled "
                f"{gdal / took:5.2f}{speedup}"
            )


if __name__ == "__main__":
    main()
