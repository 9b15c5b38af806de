"""Tile-reading throughput on the demo catalog vs raw rasterio reads of the same pixels.

Run:  .venv/bin/python bench/tiles.py [--size default] [--tile-px 64 224] [--grid lonlat:0.02]

For every planned cell, the baseline does one plain rasterio windowed read of the source
window under the cell (native pixels, no warping, no normalisation) with datasets opened once;
the pipeline runs MarScope-STAC's Dask tile reader (window read + inverse-mapped resampling +
mosaic + normalisation) with 1 and 2 workers. Both run in the same process, one after the
other, so their ratio is the pipeline overhead on this machine.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path

import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from marscope_stac.demo.world import ensure_demo_catalog
from marscope_stac.grid import parse_grid
from marscope_stac.stac_in import load_sources
from marscope_stac.tiles import TilePlan, iter_tile_batches, plan_tiles


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="default")
    ap.add_argument("--grid", default="lonlat:0.02")
    ap.add_argument("--tile-px", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path("bench/out/demo-" + args.size)
    ensure_demo_catalog(root, size=args.size)
    sources = load_sources(root)
    grid = parse_grid(args.grid, sources.body)
    print(f"demo catalog {root} ({args.size}), grid {grid.spec}")
    for px in args.tile_px:
        plan = plan_tiles(sources, grid, px)
        n = len(plan)
        raw = min(raw_reads(plan) for _ in range(args.repeats))
        raw_rs = min(raw_reads(plan, resample_to_tile=True) for _ in range(args.repeats))
        print(
            f"tile {px} px, {n} cells: raw rasterio window reads {n / raw:8.0f} tiles/s, "
            f"resampled to {px} px by GDAL {n / raw_rs:8.0f} tiles/s"
        )
        for workers in (1, 2):
            best = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                got = sum(len(b.cells) for b in iter_tile_batches(plan, 64, workers=workers))
                best = min(best, time.perf_counter() - t0)
                assert got == n
            print(
                f"  pipeline, {workers} worker thread(s): {n / best:8.0f} tiles/s   "
                f"ratio to raw {raw / best:5.2f}, to GDAL-resampled {raw_rs / best:5.2f}"
            )


if __name__ == "__main__":
    main()
