"""How far the real Mars imagery itself goes: a supervised detector per class, trained west only.

Run:  .venv/bin/python bench/real_mars_probe.py [--context 0 1] [--seeds 0 1] [--epochs 30]
          [--part eval | validation] [--kind relief | colour] [--classes crater volcano ...]

The figures of ``bench/real_mars.py`` (impact craters >= 100 km, volcanoes >= 50 km,
canyons, valleys >= 100 km; r = 2 degrees; cells of ``lonlat:2``) ask a vision-language model
to find landforms in 6-pixel cells of a 0.35 degree/px shaded-relief mosaic (or a 0.18
degree/px colour one). This script bounds what such imagery supports: it renders the cells
with the project's tile renderer (:func:`~marscope_stac.tiles.plan.plan_tiles`, with and
without context), trains a small CNN per class on labelled western cells (label: within 2
degrees of a feature of the class, the evaluation's own truth) and scores its ranking with the
same protocol (:func:`~marscope_stac.eval.evaluate.score_retrieval`), next to the 99th
percentile of random rankings.

- ``--part eval`` (the default): trained on ``marscope real-data --part train`` (Mars west of 0
  degrees), scored on the east. No eastern pixel or label is trained on, but the figure is a
  reading of the test region: use it as the bound it is, never to choose a model's settings.
- ``--part validation``: trained on ``--part fit`` (west without 60W-30W), scored on the
  validation band 60W-30W, the region recipes are chosen on: for questions such as "does more
  context help?" before a model is trained on them.

A text-queried model that learns every landform at once, from captions, should not be expected
to beat these detectors.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from torch import nn

from marscope_stac.core.bodies import chord_length, unit_vectors
from marscope_stac.datasets.real import SPLITS, build_real_data
from marscope_stac.eval.evaluate import score_retrieval, split_items
from marscope_stac.eval.protocol import truth_points
from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches

CLASSES = {
    "crater": ("impact_crater", 100.0),
    "volcano": ("volcano", 50.0),
    "canyon": ("canyon", 0.0),
    "valley": ("valley", 100.0),
}
"""Probe class -> (nomenclature class, smallest size in km), as ``bench/real_mars.py`` asks."""

PARTS = {"eval": ("train", "eval"), "validation": ("fit", "validation")}
"""Where each reading trains and scores (``marscope real-data`` parts)."""


class Cells:
    """Rendered Mars cells of one part and kind: tiles, cell centres, nomenclature points."""

    def __init__(self, catalog: Path, part: str, kind: str, context: float, px: int) -> None:
        images, labels = split_items(catalog, SPLITS[part])

        def mine(i: Any) -> bool:
            return i.id.startswith("mars") and i.properties.get("marscope:kind") == kind

        tiles, centres = [], []
        for item in filter(mine, images):  # one item at a time: fit's two pieces of the west
            sources = load_sources([item])
            grid = parse_grid("lonlat:2", sources.body)
            for batch in iter_tile_batches(plan_tiles(sources, grid, px, context=context), 512):
                keep = batch.valid > 0.5
                tiles.append(batch.pixels[keep])
                centres.append(grid.centers(batch.cells[keep]))
        if not tiles:
            raise SystemExit(f"{catalog} has no Mars images of kind {kind!r}")
        self.tiles = np.concatenate(tiles)
        self.centres = np.concatenate(centres)
        self.points = pd.concat(
            [gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in filter(mine, labels)]
        )

    def truth(self, cls: str) -> NDArray[np.float64]:
        """Lon/lat of the features of a probe class."""
        return truth_points(self.points, *CLASSES[cls])


def _near(centres: NDArray, xy: NDArray, radius: float = 2.0) -> NDArray[np.bool_]:
    from scipy.spatial import cKDTree

    tree = cKDTree(unit_vectors(xy))
    d, _ = tree.query(unit_vectors(centres), distance_upper_bound=chord_length(np.radians(radius)))
    return np.isfinite(d)


def _net() -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
        *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64, 1),
    )  # fmt: skip


def _shifted(x: torch.Tensor, rng: np.random.Generator, most: int) -> torch.Tensor:
    """Every tile moved by up to ``most`` pixels (edge rows repeated): position jitter."""
    out = torch.empty_like(x)
    pad = nn.functional.pad(x, (most, most, most, most), mode="replicate")
    n = x.shape[-1]
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * most + 1, (len(x), 2))):
        out[i] = pad[i, :, dy : dy + n, dx : dx + n]
    return out


def probe(
    train: Cells, test: Cells, cls: str, context: float, seed: int, epochs: int
) -> tuple[float, float]:
    """Best F1 over K and AUPRC on ``test`` of a CNN trained on ``train``'s cells of a class."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    yw = torch.tensor(_near(train.centres, train.truth(cls)), dtype=torch.float32)
    mean, sd = train.tiles.mean(), train.tiles.std()
    xw_t = torch.tensor((train.tiles - mean) / sd)[:, None]
    xe_t = torch.tensor((test.tiles - mean) / sd)[:, None]
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    pos_weight = (1 - yw.mean()) / yw.mean()
    px = train.tiles.shape[-1]
    most = max(1, round(px / (1 + 2 * context) / 4))  # a quarter of a cell
    for _ in range(epochs):
        net.train()
        x = _shifted(xw_t, rng, most)
        for b in torch.randperm(len(x)).split(256):
            logit = net(x[b]).squeeze(1)
            loss = nn.functional.binary_cross_entropy_with_logits(
                logit, yw[b], pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        scores = net(xe_t).squeeze(1).numpy()
    res = score_retrieval(scores, test.centres, test.truth(cls), 2.0)
    return res.best_f1, res.auprc


def _random_p99(test: Cells, cls: str) -> float:
    rng = np.random.default_rng(0)
    xy = test.truth(cls)
    f1 = [score_retrieval(rng.random(len(test.centres)), test.centres, xy, 2.0).best_f1
          for _ in range(100)]  # fmt: skip
    return float(np.percentile(f1, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--context", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--part", choices=sorted(PARTS), default="eval")
    ap.add_argument("--kind", choices=["relief", "colour"], default="relief")
    ap.add_argument("--classes", nargs="+", choices=sorted(CLASSES), default=["crater"])
    ap.add_argument("--px", type=int, default=24, help="Tile size of the detector, pixels.")
    ap.add_argument("--data", default="catalogs", help="Folder of the real-data catalogs.")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    parts = PARTS[args.part]
    cats = [Path(args.data) / ("real" if p == "train" else f"real-{p}") for p in parts]
    for root, part in zip(cats, parts, strict=True):
        if not (root / "catalog.json").is_file():
            build_real_data(root, part)
    where = "the east" if args.part == "eval" else "the validation band 60W-30W"
    print(f"supervised CNN per class, trained on {parts[0]!r} Mars cells of lonlat:2 "
          f"({args.kind}), scored on {where}; r = 2 degrees")  # fmt: skip
    for context in args.context:
        t0 = time.perf_counter()
        train, test = (
            Cells(c, p, args.kind, context, args.px) for c, p in zip(cats, parts, strict=True)
        )
        for cls in args.classes:
            res = [probe(train, test, cls, context, s, args.epochs) for s in args.seeds]
            f1 = ", ".join(f"{f:.3f}" for f, _ in res)
            print(
                f"context {context:g}, {cls} ({len(train.truth(cls))} / {len(test.truth(cls))} "
                f"features): best F1 {f1} (seeds {args.seeds}), mean "
                f"{np.mean([f for f, _ in res]):.3f}, AUPRC mean "
                f"{np.mean([a for _, a in res]):.3f}; random p99 {_random_p99(test, cls):.3f}"
            )
        print(f"  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
