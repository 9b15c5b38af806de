"""Planet queries on a Dask cluster of real processes against one process.

Run:  .venv/bin/python bench/cluster.py [--set lonlat:0.2@80:256 ...] [--workers 2] [--repeats 3]
      .venv/bin/python bench/cluster.py --set lonlat:0.2@80:256 --set lonlat:0.0625@80:256 \\
          --set lonlat:0.04@80:256 --keep /data/bench-sets          (1.44 M, 14.7 M, 36 M cells)

For every ``--set`` (``GRID:DIM``: 1.44 M cells x 256-d by default) writes the synthetic
planet set of ``bench/query_planet.py`` with the library's streaming writer (under ``--keep``
it is kept and reused by later runs), then measures a text query two ways, each in a fresh
process: on a cluster of ``dask scheduler`` + ``--workers`` ``dask worker`` processes (one
thread, ``--memory-limit`` each) on 127.0.0.1, and in one process. Cold: the operating
system's page cache dropped first (when this user may: root), the engine opened and the
first query scored. Warm (medians of ``--repeats``): the scores, and the web map's request
(tiles, preview, detections). Reports each process's peak resident memory (VmHWM: it counts
the pages of mapped set files it touched) and the top-20,000 agreement of each ranking with
exact float32 scores of the unrounded vectors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
TOP = 20_000
PAGE = ["tiles", "preview", "detections"]


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


def _peak_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024 / 1024


def _drop_caches() -> bool:
    """Empty the page cache (root only): the next reads come from the disk."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(root: Path, address: str | None, scoring: str, repeats: int) -> dict[str, Any]:
    """One engine (on the cluster at ``address``, or in this process): times, peaks, agreement."""
    from query_planet import QUERY

    from marscope_stac.engine.engine import QueryEngine
    from marscope_stac.query.scoring import QuerySpec

    manifest_path = next((root / "products" / "embeddings").glob("*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    spec = QuerySpec(text=[QUERY])
    t0 = time.perf_counter()
    engine = QueryEngine.open(
        root / "products", model=manifest["model"]["name"], scoring=scoring,
        scheduler_address=address,
    )  # fmt: skip
    first = engine.score(spec)
    cold = time.perf_counter() - t0
    warm = _median(lambda: engine.score(spec), repeats)
    page = _median(lambda: engine.query(spec, threshold=0.5, products=PAGE), repeats)
    result: dict[str, Any] = {
        "cold": cold, "warm": warm, "page": page, "peak": _peak_gb(),
        "scoring": first.scoring, "exact_rows": first.exact_rows, "workers": [], "tasks": 1,
    }  # fmt: skip
    if engine.cluster is not None:
        result["workers"] = sorted(engine.cluster.client.run(_peak_gb).values())
        result["tasks"] = len(engine.cluster.ranges)
        engine.cluster.close()
    result["agreement"] = _agreement(first.scores, np.load(root / "exact.npy", mmap_mode="r"))
    return result


def _child(root: Path, address: str | None, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", str(root), "--scoring", args.scoring]
    cmd += ["--repeats", str(args.repeats)] + (["--address", address] if address else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"measuring {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _set_root(spec: str, keep: Path | None, made: list[Path]) -> Path:
    """The set's folder: under ``keep`` (written once, then reused) or a new temporary one."""
    from query_planet import build_set

    grid_spec, dim = spec.rsplit(":", 1)
    if keep is None:
        root = Path(tempfile.mkdtemp(prefix="marscope-cluster-"))
        made.append(root)
    else:
        root = keep / spec.replace(":", "_").replace("@", "_")
        if (root / "exact.npy").is_file():
            return root
        shutil.rmtree(root, ignore_errors=True)  # a write that did not finish
        root.mkdir(parents=True)
    build_set(root, grid_spec, int(dim), parquet=False)
    return root


def _report(spec: str, n: int, rows: list[tuple[str, dict[str, Any]]], args: Any) -> None:
    print(f"\n{spec}, {n:,} cells; warm = medians of {args.repeats}; peaks = VmHWM:")
    print(
        f"{'':22} {'cold':>8} {'warm scores':>12} {'page request':>13} {'peak GB':>8} "
        f"{'worker peaks GB':>16} {'top-20k agreement':>18}"
    )
    for name, r in rows:
        workers = "/".join(f"{v:.2f}" for v in r["workers"]) or "-"
        print(
            f"{name:22} {r['cold']:6.2f} s {1000 * r['warm']:9.0f} ms {1000 * r['page']:10.0f} ms "
            f"{r['peak']:8.2f} {workers:>16} {r['agreement']:18.4f}"
        )
    r = rows[0][1]
    print(
        f"scoring {r['scoring']}, {r['exact_rows']:,} rows re-scored exactly; {r['tasks']} tasks "
        f"a scan; workers' memory limit {args.memory_limit} each"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", help="GRID:DIM (as query_planet); repeatable")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="6GiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scoring", default="auto", choices=["auto", "exact", "int8"])
    ap.add_argument("--keep", type=Path, help="folder keeping the written sets for later runs")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.address, args.scoring, args.repeats)))
        return
    from _services import DaskCluster

    made: list[Path] = []
    try:
        for spec in args.set or ["lonlat:0.2@80:256"]:
            root = _set_root(spec, args.keep, made)
            n = len(np.load(root / "exact.npy", mmap_mode="r"))
            dropped = _drop_caches()
            cluster = DaskCluster(workers=args.workers, memory_limit=args.memory_limit)
            try:
                on_cluster = _child(root, cluster.address, args)
            finally:
                cluster.stop()
            _drop_caches()
            alone = _child(root, None, args)
            rows = [(f"{args.workers} workers", on_cluster), ("one process", alone)]
            _report(spec, n, rows, args)
            if not dropped:
                print("(the page cache could not be dropped: 'cold' read the set from memory)")
    finally:
        for root in made:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
