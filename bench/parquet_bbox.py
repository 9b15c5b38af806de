"""How much of a planet's scores table a bbox read touches (GeoParquet row-group filtering).

Run:  .venv/bin/python bench/parquet_bbox.py [--grid lonlat:0.2@80] [--boxes 200] [--size 0.4]

Writes the scores table of one query over every cell of ``--grid`` (1.44 M cells at
``lonlat:0.2@80``, MarScope's planet grid) with the library's own writer
(``marscope_stac.products.write.write_scores``, what ``marscope query`` writes), then for
``--boxes`` random boxes of ``--size`` degrees reports the share of the file's row groups (and
of its compressed bytes) whose ``bbox`` covering statistics intersect the box: what a reader
that filters on them (geopandas ``read_parquet(bbox=...)``, GDAL, DuckDB) reads. Also times
``geopandas.read_parquet(bbox=...)`` against a full read. Nothing is kept.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def _group_boxes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per row group: [xmin, ymin, xmax, ymax] from the covering's statistics, and bytes."""
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    cols = [names.index(f"bbox.{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
    boxes, sizes = [], []
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        st = [rg.column(c).statistics for c in cols]
        boxes.append([st[0].min, st[1].min, st[2].max, st[3].max])
        sizes.append(sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)))
    return np.asarray(boxes), np.asarray(sizes, np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="lonlat:0.2@80")
    parser.add_argument("--boxes", type=int, default=200)
    parser.add_argument("--size", type=float, default=0.4, help="Box side in degrees.")
    args = parser.parse_args()

    import geopandas as gpd

    from marscope_stac.grid.grids import parse_grid
    from marscope_stac.products.write import write_scores
    from marscope_stac.query.scoring import ScoredQuery

    grid = parse_grid(args.grid)
    cells = np.arange(grid.n_cells, dtype=np.int64)
    rng = np.random.default_rng(0)
    scores = rng.random(len(cells), dtype=np.float32)
    result = ScoredQuery(cells, scores, scores, np.zeros(4, np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.parquet"
        t0 = time.perf_counter()
        write_scores(path, grid, result)
        t_write = time.perf_counter() - t0
        boxes, sizes = _group_boxes(path)
        total = path.stat().st_size
        lat = grid.max_abs_lat
        shares, byte_shares, picks = [], [], []
        for _ in range(args.boxes):
            w = rng.uniform(-180, 180 - args.size)
            s = rng.uniform(-lat, lat - args.size)
            e, n = w + args.size, s + args.size
            hit = (boxes[:, 0] <= e) & (boxes[:, 2] >= w) & (boxes[:, 1] <= n) & (boxes[:, 3] >= s)
            shares.append(hit.mean())
            byte_shares.append(sizes[hit].sum() / total)
            picks.append((w, s, e, n))
        t0 = time.perf_counter()
        full = gpd.read_parquet(path)
        t_full = time.perf_counter() - t0
        times, rows = [], []
        for box in picks[:20]:
            t0 = time.perf_counter()
            part = gpd.read_parquet(path, bbox=box)
            times.append(time.perf_counter() - t0)
            rows.append(len(part))
    print(
        f"scores table: {grid.n_cells:,} cells on {args.grid}, {total / 1e6:.1f} MB, "
        f"{len(boxes)} row groups, written in {t_write:.2f} s"
    )
    print(
        f"{args.boxes} random {args.size:g}-degree boxes: row groups touched "
        f"median {100 * statistics.median(shares):.2f} %, max {100 * max(shares):.2f} %; "
        f"bytes median {100 * statistics.median(byte_shares):.2f} %, "
        f"max {100 * max(byte_shares):.2f} %"
    )
    print(
        f"geopandas read_parquet(bbox=...) median {statistics.median(times) * 1e3:.0f} ms "
        f"({statistics.median(rows):.0f} rows) vs full read {t_full * 1e3:.0f} ms "
        f"({len(full):,} rows)"
    )


if __name__ == "__main__":
    main()
