"""Are the bundled model's probabilities calibrated? Reliability and ECE on the demo world.

Run:  .venv/bin/python bench/calibration.py [--model bundled] [--plot docs/img/reliability-demo.png]
                                            [--real catalogs/real-eval]

Embeds two demo worlds: seed 1, a validation world apart from the demo's training scenes and
from the held-out area (all its scenes), and seed 0's held-out (test) scenes, the area every
other figure uses. For every landform class (the class name with MarScope's prompt ensemble)
each cell's probability is compared with whether it shows the class (centre within half a
cell of an outline): reliability bins and expected calibration error (ECE, 10 bins), pooled
over classes, raw (softmax against the background prompts at the model's temperature) and
with the calibration stored in the model for cells of that size (Platt's fix, fitted on the
whole validation world by ``marscope calibrate local-dir:marscope_stac/data/models/marscope-small
--catalog catalogs/demo-val``; a model fitted at several cell sizes interpolates,
``marscope_stac.core.platt.calibration_at``). The held-out figures are read once per adopted
calibration.

With ``--real``, the same on real Mars east of 0 degrees (the real test: read once per adopted
model), for each kind of picture, on 2-degree cells and the classes and size cut-offs of
``bench/real_mars.py`` (craters >= 100 km, volcanoes >= 50 km, canyons, valleys >= 100 km):
a cell shows a landform when its centre lies within half a cell of the circle of a named
feature of that class and size (so a cell showing an unnamed or smaller one counts as not
showing it).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from marscope_stac.core.errors import CatalogError
from marscope_stac.core.platt import calibration_at
from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.eval.calibration import (
    Calibration,
    Reliability,
    labelled_logits,
    plot_reliability,
    pooled,
    reliability,
)
from marscope_stac.eval.evaluate import split_items
from marscope_stac.eval.protocol import REAL_QUERIES, embed_split
from marscope_stac.models.loading import load_model

CELL = 0.02
REAL_CELL = 2.0
"""Cells of the real-data figures (``bench/real_mars.py``'s grid)."""


def _sample(cm, root: Path, seed: int, split: str) -> dict:  # type: ignore[no-untyped-def]
    ensure_demo_catalog(root, seed=seed, size="default")
    t0 = time.perf_counter()
    emb, centres = embed_split(cm, split_items(root, split)[0], f"lonlat:{CELL}")
    took = time.perf_counter() - t0
    print(f"{root} (seed {seed}, {split} scenes): {len(emb)} cells embedded in {took:.0f} s")
    return labelled_logits(cm, emb, centres, root, split, CELL)


def _line(name: str, per_class: dict, cal: Calibration) -> tuple[Reliability, Reliability]:  # type: ignore[type-arg]
    z, y = pooled([v[0] for v in per_class.values()], [v[1] for v in per_class.values()])
    raw = reliability(Calibration().apply(z), y)
    fixed = reliability(cal.apply(z), y)
    worst = max((reliability(cal.apply(v[0]), v[1]).ece, c) for c, v in per_class.items())
    print(
        f"{name:30} cell x landform pairs {len(z):>7,}, showing it {int(y.sum()):>5,}: "
        f"ECE raw {raw.ece:.4f}, calibrated {fixed.ece:.4f} (worst landform calibrated: "
        f"{worst[1]} {worst[0]:.4f})"
    )
    return raw, fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--validation", default="catalogs/demo-val", help="seed-1 demo world")
    ap.add_argument("--held-out", default="catalogs/demo", help="seed-0 demo world")
    ap.add_argument("--plot", default="docs/img/reliability-demo.png")
    ap.add_argument("--real", help="real evaluation catalog (marscope real-data --part eval)")
    ap.add_argument("--real-plot", default="docs/img/reliability-real-east.png")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cm = load_model(args.model, device="auto")
    if cm.calibration is None:
        sys.exit(f"{args.model} has no calibration; fit one with 'marscope calibrate'")
    cal = Calibration(*calibration_at(cm.calibration, CELL))
    fitted_on = cm.calibration.get("fitted_on")
    print(f"{args.model}: scale {cal.scale:.4f}, bias {cal.bias:.4f} (fitted on {fitted_on})")
    _line("validation world (fitted on)", _sample(cm, Path(args.validation), 1, "all"), cal)
    test = _sample(cm, Path(args.held_out), 0, "test")
    raw, fixed = _line("demo held-out area", test, cal)
    path = plot_reliability(
        {"raw": raw, "calibrated (fitted on the validation world)": fixed},
        args.plot,
        f"{args.model}: demo held-out area, {len(test)} landforms pooled",
    )
    print(f"reliability diagram: {path}")
    np.set_printoptions(precision=3)
    print("held-out bins (mean probability, share showing it, cells):")
    for c, f, n in zip(fixed.confidence, fixed.frequency, fixed.counts, strict=True):
        print(f"  {c:6.3f} {f:6.3f} {n:6d}")
    if args.real:
        at = Calibration(*calibration_at(cm.calibration, REAL_CELL))
        print(f"at {REAL_CELL:g} degree cells: scale {at.scale:.4f}, bias {at.bias:.4f}")
        _real(cm, at, Path(args.real), args.real_plot)


def _real(cm, cal: Calibration, root: Path, plot: str) -> None:  # type: ignore[no-untyped-def]
    """Reliability on real Mars east of 0 degrees (the test: read once per adopted model)."""
    from marscope_stac.datasets.real import build_real_data
    from marscope_stac.eval.protocol import real_items

    if not (root / "catalog.json").is_file():
        build_real_data(root, "eval")
    curves = {}
    for kind in ("relief", "colour"):
        try:
            mine, labels = real_items(root, "test", kind, "Mars")
        except CatalogError:
            print(f"{root} has no {kind} images; rebuild it with marscope real-data --part eval")
            continue
        emb, centres = embed_split(cm, mine, f"lonlat:{REAL_CELL}")
        sizes = {cls: km for cls, km in REAL_QUERIES.values()}  # bench/real_mars.py's classes
        per_class = labelled_logits(cm, emb, centres, root, "test", REAL_CELL, sizes, labels)
        raw, fixed = _line(f"real Mars east, {kind}", per_class, cal)
        curves[f"{kind}, raw"], curves[f"{kind}, calibrated"] = raw, fixed
    if curves:
        title = f"{cm.name}: real Mars east of 0 degrees, {REAL_CELL:g} degree cells"
        print(f"reliability diagram: {plot_reliability(curves, plot, title)}")


if __name__ == "__main__":
    main()
