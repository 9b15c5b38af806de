"""Detections of a big answer: tracing, their GeoParquet and their vector PMTiles, step by step.

Run:  .venv/bin/python bench/detections.py [--detections 50000 500000] [--repeats 3]

A probability raster on MarScope's grid (0.2 degree cells, 800 x 1800, latitudes within 80
degrees) with about N cells above the 0.5 threshold on one colour of a checkerboard (so none
share an edge: N single-cell detections, as a planet's craters would be), plus blobs of
several cells with holes (one in 500 cells grown twice, 80 % kept) and 1 % no-data cells.
Times, medians of ``--repeats``, each in the products' own functions as ``marscope query``
calls them: ``raster_detections``, the detections GeoParquet, ``write_vector_pmtiles``
(zooms 0-2 with the grid's cell-size hint, as for this grid), and the same tiles without
the hint (every zoom below the last simplified). Nothing is kept.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage


def probability_raster(n: int, seed: int = 0) -> np.ndarray:
    """The benchmark's 800 x 1800 probability raster with about ``n`` single-cell detections."""
    rng = np.random.default_rng(seed)
    values = (rng.random((800, 1800)) * 0.4).astype(np.float32)
    rows, cols = np.indices(values.shape)
    board = (rows + cols) % 2 == 0
    hit = board & (rng.random(values.shape) < n / board.sum())
    values[hit] = 0.5 + 0.5 * rng.random(int(hit.sum())).astype(np.float32)
    blobs = ndimage.binary_dilation(rng.random(values.shape) < 0.002, iterations=2)
    values[blobs & (rng.random(values.shape) < 0.8)] = 0.7
    values[rng.random(values.shape) < 0.01] = np.nan
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detections", type=int, nargs="+", default=[50_000, 500_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from marscope_stac.grid.grids import parse_grid
    from marscope_stac.products.detections import raster_detections
    from marscope_stac.products.vector import write_vector_pmtiles
    from marscope_stac.products.write import write_detections

    grid = parse_grid("lonlat:0.2@80")
    transform = Affine(0.2, 0.0, -180.0, 0.0, -0.2, 80.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for n in args.detections:
            values = probability_raster(n)
            steps: dict[str, list[float]] = {}

            def timed(name: str, fn, *a, steps=steps, **k):  # type: ignore[no-untyped-def]
                t = time.perf_counter()
                result = fn(*a, **k)
                steps.setdefault(name, []).append(time.perf_counter() - t)
                return result

            for _ in range(args.repeats):
                found = timed("detections", raster_detections, values, transform, 0.5)
                timed("GeoParquet", write_detections, out / "d.parquet", grid, found)
                timed(
                    "vector PMTiles",
                    write_vector_pmtiles,
                    out / "d.pmtiles",
                    found,
                    {"name": "bench"},
                    (0, 2),
                    cell_deg=0.2,
                )
                timed(
                    "vector PMTiles, no hint",
                    write_vector_pmtiles,
                    out / "s.pmtiles",
                    found,
                    {"name": "bench"},
                    (0, 2),
                )
            size = (out / "d.pmtiles").stat().st_size / 1e6
            print(f"{len(found):,} detections ({n:,} asked), vector PMTiles {size:.1f} MB:")
            for name, times in steps.items():
                print(f"  {name:24s} {statistics.median(times) * 1000:8.0f} ms")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
