"""Planet-scale queries on the path a user runs: ``marscope query`` cold, the engine warm.

Run:  .venv/bin/python bench/query_planet.py [--set lonlat:0.2@80:256] [--set ...] [--repeats 3]
      .venv/bin/python bench/query_planet.py --set lonlat:0.0625@80:768:noparquet   (10x)
      .venv/bin/python bench/query_planet.py --set lonlat:0.2@80:256:det=50000     (big answers)

For each ``--set GRID:DIM[:noparquet]`` a synthetic embedding set is written with the
library's own writer (``EmbeddingSetWriter``: GeoParquet + scoring arrays, exactly what
``marscope embed`` writes; ``noparquet`` skips the GeoParquet, which queries never read) in a
products catalog in a temporary folder. Vectors are clustered (256 "terrain types" in
patches of 4 x 4 cells, around a direction all tiles share, as CLIP embeddings of one planet
do, plus noise; unit length) and the query names one type; the query vector and the
background prompts' vectors are put in the set's text cache under the names "impact
craters" and the background prompts, as a model would have put them there. Then, in one
run, side by side:

- cold: ``marscope query "impact craters" --out PRODUCTS`` as a fresh process (after one
  untimed run that warms the page cache), wall time and peak resident memory; with 256-d sets
  also a text that is not cached yet, so the bundled model is loaded to encode it;
- warm: ``QueryEngine.open(...)`` once, then ``engine.query(...)`` per repeat, in a child
  process that reports its own peak memory; time per step (scores, raster, COG, raster
  PMTiles, preview, detections, GeoParquets, vector PMTiles, STAC), medians; and the web
  map's request with its files written first, and answered live (``engine.answer_live``:
  scores, raster and detection count, as ``POST /api/query`` with ``"live": true``);
- the published pipeline's baseline on float32 (sets that fit in memory): an exact FAISS
  ``IndexFlatIP`` top-20,000 search, and the top-20,000 agreement of the engine with exact
  float32 scores (computed while the set was generated).

Figures go to stdout; nothing is kept unless ``--keep``.
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

import numpy as np

HERE = Path(__file__).resolve().parent
QUERY = "impact craters"
NEW_QUERY = "a sinuous channel with streamlined islands"
PAGE_PRODUCTS = ("tiles", "preview", "detections")
"""What the web map asks for unless its scores-table box is ticked."""


def _chunks(n: int, size: int = 1 << 17) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def build_set(
    root: Path, grid_spec: str, dim: int, parquet: bool, detections: int | None = None
) -> dict:
    """Write a synthetic set under ``root/products``; returns exact top-K data for checks.

    With ``detections``, the query's terrain type is left out of the patches and put on
    that many cells, on average, of one colour of a checkerboard (none of them share an
    edge): an answer of about that many detections, like a planet's craters.
    """
    from marscope_stac.core.prompts import BACKGROUND_PROMPTS, MARSCOPE_TEMPLATES
    from marscope_stac.grid.grids import parse_grid
    from marscope_stac.index.background import background_logsumexp, write_background
    from marscope_stac.index.store import EmbeddingSet
    from marscope_stac.index.table import EmbeddingTable
    from marscope_stac.index.texts import TextVectorCache
    from marscope_stac.index.writer import EmbeddingSetWriter

    grid = parse_grid(grid_spec)
    n = grid.n_cells
    rng = np.random.default_rng(0)
    # like CLIP embeddings of one planet: a strong direction all tiles share, 256 terrain types
    # in patches of 4 x 4 cells (a quarter of the cells another type), plus noise
    common = rng.standard_normal(dim).astype(np.float32)
    common *= np.sqrt(dim) / np.linalg.norm(common)
    centres = rng.standard_normal((256, dim)).astype(np.float32) + common
    types = rng.integers(0, 256, (grid.n_rows // 4 + 1, 8192))

    def unit(v: np.ndarray) -> np.ndarray:
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)

    # the query names one type; the background prompts look like any terrain
    q = unit(centres[3] - common + 0.6 * unit(common) * np.sqrt(dim))
    bg = unit(common[None] + 0.5 * rng.standard_normal((4, dim)).astype(np.float32))
    model = "bundled" if dim == 256 else "ViT-L-14-quickgelu"
    es = EmbeddingSet(root / "products" / "embeddings" / f"bench-{dim}d")
    es.root.mkdir(parents=True)
    es.write_manifest(
        {
            "model": {"name": model, "architecture": model, "embed_dim": dim, "image_size": 64},
            "grid": grid.spec,
            "tile_px": 64,
            "complete": True,
        }
    )
    exact = np.empty(n, np.float32)
    keep_f32 = n * dim * 4 <= 6e9  # float32 copy for the FAISS baseline when it fits
    f32 = np.empty((n, dim), np.float32) if keep_f32 else None
    t0 = time.perf_counter()
    cells = np.arange(n, dtype=np.int64)
    with EmbeddingSetWriter(es, grid, cells, dim, parquet=parquet) as writer:
        for a, b in _chunks(n):
            r = np.random.default_rng([7, a])
            row, col = grid.row_col(cells[a:b])
            t = types[row // 4, (col // 4) % 8192]
            t = np.where(r.random(b - a) < 0.25, r.integers(0, 256, b - a), t)
            if detections is not None:
                t = np.where(t == 3, 4, t)
                black = (row + col) % 2 == 0
                t = np.where(black & (r.random(b - a) < 2 * detections / n), 3, t)
            e = unit(centres[t] + 0.7 * r.standard_normal((b - a, dim), np.float32))
            exact[a:b] = e @ q
            if f32 is not None:
                f32[a:b] = e
            src = [["synthetic"]] * (b - a) if parquet else [[] for _ in range(b - a)]
            writer.append(EmbeddingTable(cells[a:b], e, np.ones(b - a, np.float32), src))
    cache = TextVectorCache(es, es.manifest()["model"])
    cache.put(QUERY, MARSCOPE_TEMPLATES, q)
    for prompt, v in zip(BACKGROUND_PROMPTS, bg, strict=True):
        cache.put(prompt, MARSCOPE_TEMPLATES, v)
    lse = background_logsumexp(es.scoring_arrays(), bg, 100.0)
    write_background(
        es,
        lse,
        {
            "prompts": list(BACKGROUND_PROMPTS),
            "templates": list(MARSCOPE_TEMPLATES),
            "logit_scale": 100.0,
        },
    )
    size = sum(p.stat().st_size for p in es.root.iterdir() if p.is_file()) / 1e9
    print(
        f"{grid.spec}, {n:,} cells x {dim}-d ({model}): set written in "
        f"{time.perf_counter() - t0:.0f} s, {size:.1f} GB on disk"
        + ("" if parquet else " (no GeoParquet)")
    )
    np.save(root / "exact.npy", exact)
    return {"model": model, "q": q, "f32": f32, "exact": exact}


def cold_stats(root: Path, model: str, text: str, threshold: float, repeats: int) -> str:
    runs = [_timed_child(root, model, text, threshold) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    peak = max(r for _, r in runs)
    return f"median {statistics.median(walls):.2f} s (min {min(walls):.2f}), peak {peak:.2f} GB"


_COLD = (
    "import atexit, sys\n"
    "def hwm():\n"
    "    status = open('/proc/self/status').read()\n"
    "    kb = int(status.split('VmHWM:')[1].split()[0])\n"
    "    sys.stderr.write(f'\\nVmHWM {kb}\\n')\n"
    "atexit.register(hwm)\n"
    "from marscope_stac.cli.main import main\n"
    "main(sys.argv[1:])\n"
)
"""A ``marscope`` process (the console script's ``main``) that reports its peak memory."""


def peak_gb() -> float:
    """This process's peak resident memory (VmHWM: its own, not inherited at fork)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024 / 1024


def _timed_child(root: Path, model: str, text: str, threshold: float) -> tuple[float, float]:
    """Wall time and peak resident memory (GB) of one ``marscope query`` process."""
    cmd = [sys.executable, "-c", _COLD, "query", text, "--out", str(root / "products")]
    cmd += ["--model", model, "--threshold", str(threshold)]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"marscope query failed ({run.returncode}): {run.stderr}")
    kb = int(run.stderr.rsplit("VmHWM", 1)[1].split()[0])
    return wall, kb / 1024 / 1024


def warm_child(args: argparse.Namespace) -> None:
    """Child process: open the engine once, query ``repeats`` times, print JSON figures."""
    from marscope_stac.engine.engine import QueryEngine
    from marscope_stac.engine.request import QueryRequest
    from marscope_stac.query.scoring import QuerySpec

    root = Path(args.warm)
    t0 = time.perf_counter()
    engine = QueryEngine.open(root / "products", model=args.model)
    opened = time.perf_counter() - t0
    steps: dict[str, list[float]] = {}
    totals, cores, pages, lives = [], [], [], []
    product = None
    for _ in range(args.repeats):
        # every product, as `marscope query` writes them
        t = time.perf_counter()
        product = engine.query(QuerySpec(text=[QUERY]), threshold=args.threshold)
        totals.append(time.perf_counter() - t)
        for k, v in product.timings.items():
            steps.setdefault(k, []).append(v)
        # the probability COG, raster PMTiles and STAC item alone (`--products tiles`)
        t = time.perf_counter()
        engine.query(QuerySpec(text=[QUERY]), threshold=args.threshold, products=("tiles",))
        cores.append(time.perf_counter() - t)
        # what the web map asks for (its scores-table box unticked), files written first
        t = time.perf_counter()
        engine.query(QuerySpec(text=[QUERY]), threshold=args.threshold, products=PAGE_PRODUCTS)
        pages.append(time.perf_counter() - t)
        # the same, answered live as the page asks (tiles made from memory, files after)
        request = QueryRequest(texts=[QUERY], threshold=args.threshold, products=PAGE_PRODUCTS)
        t = time.perf_counter()
        (answer,) = engine.answer_live(request)
        _ = answer.tiles.n_detections  # the page's answer holds the count
        lives.append(time.perf_counter() - t)
        answer.write()
    assert product is not None
    exact = np.load(root / "exact.npy")
    k = args.top
    true_top = np.argpartition(-exact, k)[:k]
    agree = len(np.intersect1d(product.scored.top(k), true_top)) / k
    print(
        json.dumps(
            {
                "open": opened,
                "total": statistics.median(totals),
                "core": statistics.median(cores),
                "page": statistics.median(pages),
                "live": statistics.median(lives),
                "steps": {s: statistics.median(v) for s, v in steps.items()},
                "agreement": agree,
                "scoring": product.scored.scoring,
                "exact_rows": product.scored.exact_rows,
                "detections": product.n_detections,
                "peak_gb": peak_gb(),
            }
        )
    )


def faiss_baseline(f32: np.ndarray, q: np.ndarray, top: int, repeats: int) -> tuple[float, float]:
    """Median seconds of an exact FAISS IndexFlatIP top-K search; its top-K agreement is 1."""
    import faiss

    index = faiss.IndexFlatIP(f32.shape[1])
    index.add(f32)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        index.search(q[None], top)
        times.append(time.perf_counter() - t)
    return statistics.median(times), float(faiss.omp_get_max_threads())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--set", dest="sets", action="append", help="GRID:DIM[:noparquet][:det=N]")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=20000)
    ap.add_argument("--threshold", type=float, default=0.5, help="detection threshold")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--warm", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warm:
        warm_child(args)
        return
    for spec in args.sets or ["lonlat:0.2@80:256", "lonlat:0.2@80:768"]:
        det = None
        if ":det=" in spec:
            spec, det_s = spec.rsplit(":det=", 1)
            det = int(det_s)
        noparquet = spec.endswith(":noparquet")
        grid_spec, dim_s = spec.removesuffix(":noparquet").rsplit(":", 1)
        dim = int(dim_s)
        root = Path(tempfile.mkdtemp(prefix="bench-planet-"))
        try:
            bench_one(root, grid_spec, dim, not noparquet, args, det)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)


def bench_one(
    root: Path,
    grid_spec: str,
    dim: int,
    parquet: bool,
    args: argparse.Namespace,
    detections: int | None = None,
) -> None:
    built = build_set(root, grid_spec, dim, parquet, detections)
    model = built["model"]
    _timed_child(root, model, QUERY, args.threshold)  # warms the page cache; not counted
    print(
        f'  cold `marscope query "{QUERY}"` (text cached): '
        f"{cold_stats(root, model, QUERY, args.threshold, args.repeats)}"
    )
    if model == "bundled":
        # a text the cache has not seen: the bundled model is loaded to encode it (then cached,
        # so only the first run of each text pays; each repeat uses a new text)
        walls, peak = [], 0.0
        for k in range(args.repeats):
            w, rss = _timed_child(root, model, f"{NEW_QUERY} {k}", args.threshold)
            walls.append(w)
            peak = max(peak, rss)
        print(
            f"  cold, a new text (loads the bundled model): median "
            f"{statistics.median(walls):.2f} s, peak {peak:.2f} GB"
        )
    cmd = [sys.executable, __file__, "--warm", str(root), "--model", model]
    cmd += [
        "--repeats",
        str(args.repeats),
        "--top",
        str(args.top),
        "--threshold",
        str(args.threshold),
    ]
    warm = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    steps = warm["steps"]
    print(
        f"  warm engine (opened in {warm['open']:.2f} s; scoring {warm['scoring']}, "
        f"{warm['exact_rows']:,} rows scored exactly; {warm['detections']:,} detections); "
        "steps of one query with every product (the COG and scores tables are written in "
        "threads beside the others):"
    )
    for name, sec in steps.items():
        print(f"    {name:24s} {sec * 1000:8.1f} ms")
    print(
        f"    text -> COG + raster PMTiles + STAC item (engine.query(..., products=('tiles',))):"
        f" {warm['core'] * 1000:.0f} ms"
    )
    print(
        "    text -> what the web map asks for (COG, raster PMTiles, preview, detections, "
        f"their GeoParquet and vector PMTiles, STAC item), files first (the API without "
        f"live): {warm['page'] * 1000:.0f} ms"
    )
    print(
        "    text -> the same answered live, as the page asks (scores, raster, detection "
        f"count; tiles made on request, files after): {warm['live'] * 1000:.0f} ms"
    )
    print(
        f"    text -> every product (engine.query): {warm['total'] * 1000:.0f} ms; "
        f"peak memory {warm['peak_gb']:.2f} GB"
    )
    print(f"  top {args.top:,} agreement with exact float32 scores: {warm['agreement']:.4f}")
    if built["f32"] is not None:
        base, _ = faiss_baseline(built["f32"], built["q"], args.top, args.repeats)
        print(
            f"  baseline: FAISS IndexFlatIP float32 top {args.top:,} search alone: "
            f"{base * 1000:.0f} ms"
        )
    else:
        print(
            f"  baseline: FAISS IndexFlatIP float32 would hold "
            f"{built['exact'].size * dim * 4 / 1e9:.0f} GB; not run"
        )


if __name__ == "__main__":
    main()
