"""Planet queries on a Dask cluster of real processes against one process.

Run:  .venv/bin/python bench/cluster.py [--set lonlat:0.2@80:256] [--workers 2] [--repeats 3]

Writes the synthetic planet set of ``bench/query_planet.py`` (1.44 M cells x 256-d by
default), starts ``dask scheduler`` and ``--workers`` ``dask worker`` processes (one thread,
``--memory-limit`` each) on 127.0.0.1, and times, warm (the engine open, medians of
``--repeats``): the scores of a text query in one process (exact and int8 scoring) and on the
cluster (exact, each task scanning a range of rows), and the web map's request (tiles,
preview, detections) both ways. Reports the peak resident memory of this process and of
each worker, and the top-20,000 agreement of each ranking with exact float32 scores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
TOP = 20_000


def _median(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _agreement(scores: np.ndarray, exact: np.ndarray) -> float:
    top = min(TOP, len(exact) // 10)
    a = np.argpartition(-scores, top)[:top]
    b = np.argpartition(-exact, top)[:top]
    return len(np.intersect1d(a, b)) / top


def _rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024 / 1024


def _peak_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024 / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="lonlat:0.2@80:256", help="GRID:DIM (as query_planet)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from _services import DaskCluster
    from query_planet import QUERY, build_set

    from marscope_stac.engine.engine import QueryEngine
    from marscope_stac.query.scoring import QuerySpec

    root = Path(tempfile.mkdtemp(prefix="marscope-cluster-"))
    cluster = None
    try:
        grid_spec, dim = args.set.rsplit(":", 1)
        info = build_set(root, grid_spec, int(dim), parquet=False)
        exact = info["exact"]
        spec = QuerySpec(text=[QUERY])
        page = ["tiles", "preview", "detections"]
        rows = []
        # the cluster first: this process then holds only what the client keeps
        cluster = DaskCluster(workers=args.workers, memory_limit=args.memory_limit)
        engine = QueryEngine.open(
            root / "products", model=info["model"], scheduler_address=cluster.address
        )
        engine.score(spec)  # warm: each worker has mapped its ranges once
        t = _median(lambda: engine.score(spec, threshold=0.5), args.repeats)
        agree = _agreement(engine.score(spec).scores, exact)
        q = _median(lambda: engine.query(spec, threshold=0.5, products=page), args.repeats)
        rows.append((f"{args.workers} workers, exact", t, q, agree))
        assert engine.cluster is not None
        peaks = engine.cluster.client.run(_peak_gb)
        client_rss = _rss_gb()
        tasks = len(engine.cluster.ranges)
        engine.cluster.close()
        for scoring in ("exact", "int8"):
            one = QueryEngine.open(root / "products", model=info["model"], scoring=scoring)
            one.score(spec)  # warm
            t = _median(lambda e=one: e.score(spec, threshold=0.5), args.repeats)
            agree = _agreement(one.score(spec).scores, exact)
            q = _median(lambda e=one: e.query(spec, threshold=0.5, products=page), args.repeats)
            rows.append((f"one process, {scoring}", t, q, agree))
        one_rss = _rss_gb()
        n = len(exact)
        print(f"\n{grid_spec}, {n:,} cells x {dim}-d, warm, medians of {args.repeats}:")
        print(f"{'':24} {'scores':>9} {'page request':>13} {'top-20k agreement':>18}")
        for name, t, q, agree in rows:
            print(f"{name:24} {1000 * t:7.0f} ms {1000 * q:10.0f} ms {agree:18.4f}")
        print(
            f"resident memory of this process: {client_rss:.2f} GB with the cluster, "
            f"{one_rss:.2f} GB after scanning in one process (both after writing the set); "
            "worker peaks "
            + ", ".join(f"{v:.2f} GB" for v in peaks.values())
            + f" (memory limit {args.memory_limit} each); {tasks} tasks a scan"
        )
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
