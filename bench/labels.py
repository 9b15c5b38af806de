"""Learning from labels on the demo world's held-out area: text alone, prototype, classifier.

Run:  .venv/bin/python bench/labels.py [--catalog catalogs/demo] [--draws 5]

For each landform of the held-out (test) scenes and K = 5, 10 and 20 labelled cells: K
positive cells (the cells holding K landform reference points drawn at random) and K
negative ones (cells drawn at random more than the match radius from every point of that
landform), as a person marking detections right and wrong would give. Every other cell of the
held-out scenes is ranked by
- text alone: the class name with MarScope's prompt ensemble;
- prototype: MarScope's hybrid (0.3 x the examples' mean + 0.7 x text), refined by the
  negatives (Rocchio, as the query engine does);
- classifier: logistic regression on the positives against the negatives and a background
  sample, pulled towards the text query (``marscope_stac.query.learn``),
and scored with best F1 over K (r = 2.5 cells, MarScope's protocol); the labelled cells are
left out of the ranking. Figures are means over landforms and draws (fixed seeds).

The classifier's settings were chosen on a validation world, apart from the demo's training
scenes and from the held-out area reported by default:
  .venv/bin/python bench/labels.py --catalog catalogs/demo-val --seed 1
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from marscope_stac.core.vocabulary import CLASS_NAMES
from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.eval.evaluate import score_retrieval, split_items
from marscope_stac.eval.protocol import embed_split
from marscope_stac.models.clip import MARSCOPE_TEMPLATES
from marscope_stac.models.loading import load_model
from marscope_stac.query.learn import background_rows, fit_classifier
from marscope_stac.query.scoring import QuerySpec, hybrid_vector

KS = (5, 10, 20)
CELL = 0.02
RADIUS = 2.5 * CELL


def _draw(
    rng: np.random.Generator, centres: np.ndarray, xy: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of k positive cells (nearest to k reference points) and k far negative cells."""
    picks = rng.choice(len(xy), size=min(k, len(xy)), replace=False)
    d2 = ((centres[None, :, :] - xy[picks][:, None, :]) ** 2).sum(axis=2)
    pos = np.unique(d2.argmin(axis=1))
    far = np.sqrt(((centres[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)).min(axis=1) > RADIUS
    neg = rng.choice(np.flatnonzero(far), size=k, replace=False)
    return pos, neg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--catalog", default="catalogs/demo")
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the demo world's seed (1: validation)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path(args.catalog)
    ensure_demo_catalog(root, seed=args.seed, size="default")
    cm = load_model(args.model, device="auto")
    temperature = float(cm.model.logit_scale.exp())
    t0 = time.perf_counter()
    emb, centres = embed_split(cm, split_items(root, "test")[0], f"lonlat:{CELL}")
    print(f"held-out cells: {len(emb)} embedded in {time.perf_counter() - t0:.1f} s")
    _, labels = split_items(root, "test")
    pts = pd.concat([gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels])
    rows = []
    seconds = {"prototype": 0.0, "classifier": 0.0}
    for cls in sorted(c for c in pts.landform.unique() if c != "plains"):
        p = pts[pts.landform == cls]
        xy = np.column_stack([p.geometry.x, p.geometry.y])
        text = cm.encode_queries([CLASS_NAMES.get(cls, cls)], MARSCOPE_TEMPLATES)[0]
        for k in KS:
            for draw in range(args.draws):
                rng = np.random.default_rng(1000 * k + draw)
                pos, neg = _draw(rng, centres, xy, k)
                keep = np.ones(len(emb), bool)
                keep[pos] = keep[neg] = False
                figures = {"text": emb[keep] @ text}
                t1 = time.perf_counter()
                q = hybrid_vector(text, list(emb[pos]), emb[neg], QuerySpec())
                figures["prototype"] = emb[keep] @ q
                t2 = time.perf_counter()
                bg = emb[background_rows(len(emb), np.concatenate([pos, neg]), seed=draw)]
                clf = fit_classifier(emb[pos], emb[neg], bg, prior=temperature * text)
                figures["classifier"] = emb[keep] @ clf.unit()
                t3 = time.perf_counter()
                seconds["prototype"] += t2 - t1
                seconds["classifier"] += t3 - t2
                for method, scores in figures.items():
                    res = score_retrieval(scores, centres[keep], xy, RADIUS)
                    rows.append((cls, k, draw, method, res.best_f1))
    table = pd.DataFrame(rows, columns=["landform", "k", "draw", "method", "best_f1"])
    means = table.groupby(["k", "method"]).best_f1.mean().unstack("method")
    print("\nbest F1 over K on the held-out area, mean over landforms and draws:")
    print(means[["text", "prototype", "classifier"]].round(3).to_string())
    per_class = table[table.k == 10].groupby(["landform", "method"]).best_f1.mean().unstack()
    print("\nat 10 labels, per landform:")
    print(per_class[["text", "prototype", "classifier"]].round(3).to_string())
    n = len(rows) // 3
    print(
        f"\nfit time per query: prototype {1000 * seconds['prototype'] / n:.2f} ms, "
        f"classifier {1000 * seconds['classifier'] / n:.1f} ms ({n} queries each)"
    )


if __name__ == "__main__":
    main()
