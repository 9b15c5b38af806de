"""How far the real Mars imagery itself goes: a supervised crater detector, trained west only.

Run:  .venv/bin/python bench/real_mars_probe.py [--context 0 1] [--seeds 0 1] [--epochs 30]

The held-out figure of ``bench/real_mars.py`` (impact craters >= 100 km, r = 2 degrees, the
8,100 cells of ``lonlat:2`` east of 0 degrees) asks a vision-language model to find craters
in 6-pixel cells of a 0.35 degree/px shaded-relief mosaic. This script bounds what such
imagery supports: it renders the same cells with the project's tile renderer
(:func:`~marscope_stac.tiles.plan.plan_tiles`, with and without context), trains a small CNN on
the **western** hemisphere's cells (label: within 2 degrees of a >= 100 km crater, the
evaluation's own truth) and scores its ranking of the **eastern** cells with the same
protocol (:func:`~marscope_stac.eval.evaluate.score_retrieval`). No eastern pixel or label is
trained on. A text-queried model that learns craters among every other landform, from
captions, should not be expected to beat this detector.
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
from marscope_stac.datasets.real import build_real_data
from marscope_stac.eval.evaluate import score_retrieval, split_items
from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches


def _cells(catalog: Path, split: str, context: float, px: int) -> tuple[NDArray, NDArray, Any]:
    """Tiles, cell centres and the crater points of a catalog's Mars image of ``split``."""
    images, labels = split_items(catalog, split)
    mars = [i for i in images if "mars" in i.id]
    sources = load_sources(mars)
    grid = parse_grid("lonlat:2", sources.body)
    plan = plan_tiles(sources, grid, px, context=context)
    tiles, cells = [], []
    for batch in iter_tile_batches(plan, batch_size=512):
        keep = batch.valid > 0.5
        tiles.append(batch.pixels[keep])
        cells.append(batch.cells[keep])
    points = pd.concat(
        [gpd.read_parquet(i.assets["points"].get_absolute_href()) for i in labels if "mars" in i.id]
    )
    sel = points[(points.landform == "impact_crater") & (points.diameter_km >= 100)]
    return np.concatenate(tiles), grid.centers(np.concatenate(cells)), sel


def _near(centres: NDArray, pts: Any, radius: float = 2.0) -> NDArray[np.bool_]:
    from scipy.spatial import cKDTree

    tree = cKDTree(unit_vectors(np.column_stack([pts.geometry.x, pts.geometry.y])))
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
    catalogs: tuple[Path, Path], context: float, seed: int, epochs: int, px: int = 24
) -> tuple[float, float]:
    """Best F1 over K and AUPRC on the east of a CNN trained on the west's cells."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xw, cw, pw = _cells(catalogs[0], "train", context, px)
    xe, ce, pe = _cells(catalogs[1], "test", context, px)
    yw = torch.tensor(_near(cw, pw), dtype=torch.float32)
    xw_t = torch.tensor((xw - xw.mean()) / xw.std())[:, None]
    xe_t = torch.tensor((xe - xw.mean()) / xw.std())[:, None]
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    pos_weight = (1 - yw.mean()) / yw.mean()
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
    res = score_retrieval(scores, ce, np.column_stack([pe.geometry.x, pe.geometry.y]), 2.0)
    return res.best_f1, res.auprc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--context", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train", default="catalogs/real", help="Real data, train part.")
    ap.add_argument("--eval", default="catalogs/real-eval", help="Real data, eval part.")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cats = (Path(args.train), Path(args.eval))
    for root, part in zip(cats, ("train", "eval"), strict=True):
        if not (root / "catalog.json").is_file():
            build_real_data(root, part)
    print("supervised CNN, trained on western Mars cells of lonlat:2, scored on the east")
    print("(impact craters >= 100 km, r = 2 degrees; random ranking: 0.098)")
    for context in args.context:
        for seed in args.seeds:
            t0 = time.perf_counter()
            f1, auprc = probe(cats, context, seed, args.epochs)
            took = time.perf_counter() - t0
            print(
                f"context {context:g}, seed {seed}: best F1 {f1:.3f}, AUPRC {auprc:.3f} "
                f"({took:.0f} s)"
            )


if __name__ == "__main__":
    main()
