"""End-to-end embedding throughput on the demo catalog vs the model's raw forward speed.

Run:  .venv/bin/python bench/embed.py [--model bundled] [--size default]

In one process: (1) the model's forward throughput on pre-made tensors of the tile size,
(2) ``embed_catalog`` from the demo catalog (plan, read windows, warp, normalise, embed,
write GeoParquet shards, FAISS index) with 1 and 2 local workers into fresh folders. Their
ratio is the pipeline overhead. Peak resident memory of the process is reported too.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.embed import ComputeOptions
from marscope_stac.embed.run import embed_catalog
from marscope_stac.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--size", default="default")
    ap.add_argument("--grid", default="lonlat:0.02")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path("bench/out/demo-" + args.size)
    ensure_demo_catalog(root, size=args.size)
    cm = load_model(args.model)
    n = 1024
    x = np.random.default_rng(0).uniform(0, 1, (n, cm.image_size, cm.image_size))
    x = x.astype(np.float32)
    cm.encode_images(x[: args.batch_size], batch_size=args.batch_size)
    t0 = time.perf_counter()
    cm.encode_images(x, batch_size=args.batch_size)
    raw = n / (time.perf_counter() - t0)
    print(
        f"model {cm.name} ({cm.arch}, {cm.image_size} px): raw forward {raw:7.0f} tiles/s "
        f"(batch {args.batch_size})"
    )
    for workers in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="bench-embed-"))
        try:
            t0 = time.perf_counter()
            res = embed_catalog(
                root,
                out,
                model=args.model,
                grid=args.grid,
                progress=False,
                compute=ComputeOptions(batch_size=args.batch_size, workers=workers),
            )
            dt = time.perf_counter() - t0
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rate = res.cells / dt
        print(
            f"  embed_catalog, {workers} worker(s): {res.cells} cells in {dt:5.1f} s = "
            f"{rate:6.0f} cells/s, ratio to raw forward {rate / raw:4.2f}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
