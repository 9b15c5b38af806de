"""Per-landform retrieval on the held-out area of the demo world (MarScope's protocol).

Run:  .venv/bin/python bench/landforms.py [--model bundled] [--catalog catalogs/demo]

For each landform class: rank every 0.02-degree cell of the held-out (test) scenes by the
text query, with the class name and with a paraphrase unlike the training captions
(MarScope's three-template ensemble in both cases), and report best F1 over K and AUPRC with
r = 2.5 cells (0.05 degree). Also prints image<->text R@1/R@10 on held-out pairs.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.eval.protocol import evaluate_landforms
from marscope_stac.models.loading import load_model
from marscope_stac.train.objective import evaluate_pairs
from marscope_stac.train.pairs import load_catalog_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--catalog", default="catalogs/demo")
    ap.add_argument("--grid", default="lonlat:0.02")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path(args.catalog)
    ensure_demo_catalog(root, size="default")
    cm = load_model(args.model, pretrained=args.pretrained, device="auto")
    report = evaluate_landforms(cm, root, split="test", grid=args.grid)
    print(report.summary())
    t = report.table
    print(
        f"mean best F1: class names {t['name_best_f1'].mean():.3f}, "
        f"paraphrases {t['paraphrase_best_f1'].mean():.3f}"
    )
    val = load_catalog_pairs(root, "test", 60)
    val.context = cm.tile_context  # crops show the margin the model was trained with
    metrics = evaluate_pairs(cm, *val.fixed(np.random.default_rng(0)), classes=val.classes)
    print("held-out pairs: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
