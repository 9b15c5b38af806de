"""Two models on the real validation regions: best F1 per query, and whether the gap is noise.

Run:  .venv/bin/python bench/real_compare.py local-dir:A local-dir:B
                                              [--catalog catalogs/real-validation] [--draws 500]

For each body and kind of picture of the validation part (``marscope real-data --part
validation``: Mars 60W-30W in relief and colour, the Moon 135E-180 in relief and albedo),
both models rank every cell of ``lonlat:2`` for each query of the real-data protocol (impact
crater >= 100 km, volcano >= 50 km, canyon, valley >= 100 km; MarScope's prompt ensemble) and
are scored by best F1 over K (r = 2 degrees), as ``bench/real_mars.py`` does. The validation
regions hold few features (11 craters, 7 volcanoes, 5 canyons, 27 valleys on Mars), so one
run's gap may be luck: the truth features are drawn again with replacement ``--draws``
times, both models scored on each draw, and the gap B - A is given with its 5th and 95th
percentiles (a paired bootstrap over features). Per region the mean gap over the queries is
given the same way. Choose runs on these figures, never on the east (the test).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from marscope_stac.core.prompts import MARSCOPE_TEMPLATES
from marscope_stac.eval.evaluate import score_retrieval
from marscope_stac.eval.protocol import embed_split, real_items, real_regions
from marscope_stac.models.loading import load_model

QUERIES = {
    "impact crater": ("impact_crater", 100.0),
    "volcano": ("volcano", 50.0),
    "canyon": ("canyon", 0.0),
    "valley": ("valley", 100.0),
}
"""The real-data protocol's queries (class, smallest size in km), as in the issue's targets."""


def _best_f1(scores: np.ndarray, centres: np.ndarray, xy: np.ndarray, radius: float) -> float:
    return score_retrieval(scores, centres, xy, radius).best_f1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="model A (e.g. local-dir:build/fit-m1b/model)")
    ap.add_argument("b", help="model B")
    ap.add_argument("--catalog", default="catalogs/real-validation")
    ap.add_argument("--grid", default="lonlat:2")
    ap.add_argument("--radius", type=float, default=2.0)
    ap.add_argument("--draws", type=int, default=500)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if not (Path(args.catalog) / "catalog.json").is_file():
        raise SystemExit(f"no {args.catalog}: marscope real-data --part validation --out it")
    models = {"A": load_model(args.a, device="auto"), "B": load_model(args.b, device="auto")}
    rng = np.random.default_rng(0)
    rows = []
    for body, kind in real_regions(args.catalog, "validation"):
        images, labels = real_items(args.catalog, "validation", kind, body)
        points = pd.concat(
            [gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels]
        )
        emb = {n: embed_split(m, images, args.grid) for n, m in models.items()}
        centres = emb["A"][1]
        gaps = []
        for text, (cls, km) in QUERIES.items():
            sel = points[(points.landform == cls) & (points.diameter_km >= km)]
            xy = np.column_stack([sel.geometry.x, sel.geometry.y])
            if not len(xy):
                continue
            s = {
                n: emb[n][0] @ m.encode_queries([text], MARSCOPE_TEMPLATES)[0]
                for n, m in models.items()
            }
            f1 = {n: _best_f1(s[n], centres, xy, args.radius) for n in s}
            draws = rng.integers(0, len(xy), (args.draws, len(xy)))
            gap = np.array(
                [
                    _best_f1(s["B"], centres, xy[d], args.radius)
                    - _best_f1(s["A"], centres, xy[d], args.radius)
                    for d in draws
                ]
            )
            gaps.append(gap)
            lo, hi = np.percentile(gap, [5, 95])
            rows.append(
                (f"{body} {kind}", text, len(xy), f1["A"], f1["B"], f1["B"] - f1["A"], lo, hi)
            )
        if gaps:
            mean = np.mean(gaps, axis=0)
            lo, hi = np.percentile(mean, [5, 95])
            a = np.mean([r[3] for r in rows[-len(gaps) :]])
            b = np.mean([r[4] for r in rows[-len(gaps) :]])
            rows.append((f"{body} {kind}", "mean of queries", 0, a, b, b - a, lo, hi))
    table = pd.DataFrame(
        rows, columns=["region", "query", "features", "A", "B", "B - A", "p5", "p95"]
    )
    pd.set_option("display.width", 200)
    print(f"A = {args.a}\nB = {args.b}")
    print(f"best F1; p5, p95: percentiles of the gap over {args.draws} draws of the features")
    print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
