"""Reading remote data: local files vs HTTP vs S3 at added round trips, faults, a planet's API.

    .venv/bin/python bench/remote.py                  # every figure (about 10 minutes here)
    .venv/bin/python bench/remote.py --delays 0,20    # fewer latencies
    .venv/bin/python bench/remote.py --skip-planet --skip-faults

Real servers, started here as the tests start them (``make services`` installs them): nginx
(HTTP range requests), moto (S3), stac-fastapi-pgstac on PostgreSQL + pgstac; a proxy in front
of each adds the round trip (per request) and injects faults (``tests/_faultproxy.py``).

1. **Embedding throughput**, same demo world (``--size``), bundled model, 0.02-degree cells:
   local files, then HTTP and S3 at each ``--delays`` (ms): cells/s end to end (wall clock of
   the whole run: catalog, headers, planning, reading, embedding, writing), its ratio to
   local, raster requests per cell, bytes fetched per byte of the COG files.
2. **The planet through a STAC API**: ``--planet-deg`` tiles over the planet (4: 3,960
   items, 16 px COGs on nginx) in pgstac; search (pages of 100) + every header read over
   HTTP, then planning 0.2-degree cells.
3. **Faults**: the planet's COGs behind a proxy at 20 ms that faults ``--fault-rate`` of the
   raster requests (503, 429 with Retry-After, reset, stall, body cut short, in turn),
   embedded at 2-degree cells and run again until complete: faults injected, runs, and
   whether the finished set equals a clean local run's (cells, no duplicates, embeddings).
4. **A published set queried by URL**: a synthetic ``--published-grid`` set (0.2 degrees to
   80 degrees of latitude: 1.44 M cells x 256-d, written by the library's own writer and
   published as STAC with the bundled model, as ``bench/query_planet.py`` builds it; kept in
   ``bench/out`` for later runs) on nginx. ``marscope query --embeddings URL`` as a fresh
   process with an empty cache (first answer: fetch + checksums + model + query), then again
   (cached), against the same command on the local folder; and the fetch alone through a
   proxy adding ``--published-delay`` ms per request.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _faultproxy import FAULTS, FaultProxy
from _services import (
    MotoS3,
    Nginx,
    Postgres,
    StacApi,
    api_documents,
    environment,
    load_pgstac,
)

from marscope_stac.datasets.demo.planet import PLANET_COLLECTION, build_planet_catalog
from marscope_stac.datasets.demo.world import ensure_demo_catalog
from marscope_stac.embed.run import EmbedResult, embed_catalog
from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import plan_tiles

OUT = Path("bench/out")


def _tifs(proxy: FaultProxy) -> int:
    return sum(n for p, n in proxy.paths.items() if p.endswith(".tif"))


def _embed(
    source: str, out: Path, model: str, workers: int, grid: str = "lonlat:0.02"
) -> tuple[EmbedResult, float]:
    """A fresh embedding run; its result and wall-clock seconds (catalog, headers, planning,
    reading, embedding and writing: all of it)."""
    from marscope_stac.embed import ComputeOptions

    shutil.rmtree(out, ignore_errors=True)
    compute = ComputeOptions(workers=workers)
    t0 = time.perf_counter()
    res = embed_catalog(
        source, out, model=model, grid=grid, compute=compute, progress=False, publish=False
    )
    return res, time.perf_counter() - t0


def throughput(args: argparse.Namespace, demo: Path, nginx: Nginx, moto: MotoS3) -> Any:
    """Section 1: one table row per source and added round trip."""
    cog_bytes = sum(p.stat().st_size for p in demo.rglob("*.tif"))
    s3_url = moto.upload_folder(demo, "bench", f"{demo.name}/") + "catalog.json"
    _embed(str(demo), OUT / "remote-warm", args.model, args.workers)  # model and caches warm
    local, wall = _embed(str(demo), OUT / "remote-local", args.model, args.workers)
    base = local.embedded_now / wall
    head = f"{'source':<8}{'RTT ms':>7}{'cells/s':>10}{'x local':>9}{'req/cell':>10}"
    print(head + f"{'fetched/COG':>13}")
    print(f"{'local':<8}{'-':>7}{base:10.1f}{1.0:9.2f}{'-':>10}{'-':>13}")
    rows = {}
    for delay in args.delays:
        for name, port, url in (("http", nginx.port, None), ("s3", moto.port, s3_url)):
            proxy = FaultProxy(("127.0.0.1", port), delay=delay / 1000.0)
            try:
                if name == "http":
                    src = f"{proxy.url}/{demo.name}/catalog.json"
                    res, wall = _embed(src, OUT / "remote-run", args.model, args.workers)
                else:
                    s3env = {**moto.env, "AWS_ENDPOINT_URL_S3": proxy.url}
                    with environment(**s3env):
                        res, wall = _embed(str(url), OUT / "remote-run", args.model, args.workers)
            finally:
                proxy.stop()
            rate = res.embedded_now / wall
            req = _tifs(proxy) / max(1, res.embedded_now)
            fetched = proxy.bytes_out / cog_bytes
            rows[(name, delay)] = rate / base
            print(f"{name:<8}{delay:7d}{rate:10.1f}{rate / base:9.2f}{req:10.2f}{fetched:13.2f}")
    return local, rows


def faults(args: argparse.Namespace, nginx: Nginx, root: Path) -> None:
    """Section 2: the planet's COGs behind a faulty HTTP server, rerun until complete."""

    def rasters(method: str, path: str) -> bool:
        return path.endswith(".tif")

    grid = "lonlat:2"
    clean, _ = _embed(str(root), OUT / "remote-planet-clean", args.model, args.workers, grid)
    env = {"GDAL_HTTP_TIMEOUT": "2", "GDAL_HTTP_LOW_SPEED_TIME": "1",
           "GDAL_HTTP_RETRY_DELAY": "0.05"}  # fmt: skip
    out = OUT / "remote-faults"
    shutil.rmtree(out, ignore_errors=True)
    proxy = FaultProxy(
        ("127.0.0.1", nginx.port), delay=0.02, rate=args.fault_rate, kinds=FAULTS, seed=1,
        only=rasters, stall=30, retry_after=0,
    )  # fmt: skip
    runs: list[EmbedResult] = []
    t0 = time.perf_counter()
    try:
        with environment(**env):
            while len(runs) < 10 and (not runs or runs[-1].failed_cells):
                src = f"{proxy.url}/{root.name}/catalog.json"
                runs.append(
                    embed_catalog(
                        src, out, model=args.model, grid=grid, progress=False, publish=False
                    )
                )
    finally:
        proxy.stop()
    res = runs[-1]
    a, b = clean.embedding_set.table(), res.embedding_set.table()
    oa, ob = np.argsort(a.cell_index), np.argsort(b.cell_index)
    same_cells = np.array_equal(a.cell_index[oa], b.cell_index[ob])
    unique = len(np.unique(b.cell_index)) == len(b.cell_index)
    diff = float(np.abs(a.embedding[oa].astype(np.float32) - b.embedding[ob]).max())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(proxy.counts.items()))
    print(
        f"faults: {sum(proxy.counts.values())} injected into {proxy.requests} requests ({kinds}), "
        f"{len(runs)} runs (failed cells {[len(r.failed_cells) for r in runs]}, skipped items "
        f"{[r.skipped_sources for r in runs]}) in {time.perf_counter() - t0:.0f} s; "
        f"{res.cells} cells (clean run {clean.cells}): same cells {same_cells}, no duplicates "
        f"{unique}, largest embedding difference {diff:.1e}"
    )


def planet_catalog(args: argparse.Namespace, www: Path) -> Path:
    """The planet-sized catalog (built once), served by nginx under ``www``."""
    root = OUT / f"planet-{args.planet_deg:g}deg"
    if not (root / "catalog.json").is_file():
        build_planet_catalog(root, tile_deg=args.planet_deg)
    if not (www / root.name).exists():
        (www / root.name).symlink_to(root.resolve())
    return root


def planet(args: argparse.Namespace, nginx: Nginx, root: Path) -> None:
    """Section 3: the planet-sized catalog in pgstac, searched, headers read, planned."""
    pg = Postgres()
    api = None
    try:
        colls, items = api_documents(root, nginx.url, root.name)
        t0 = time.perf_counter()
        load_pgstac(pg, colls, items)
        loaded = time.perf_counter() - t0
        api = StacApi(pg)
        proxy = FaultProxy(("127.0.0.1", api.port))
        try:
            t0 = time.perf_counter()
            sources = load_sources(proxy.url, collections=[PLANET_COLLECTION])
            t1 = time.perf_counter()
            plan = plan_tiles(sources, parse_grid("lonlat:0.2"), 64)
            t2 = time.perf_counter()
        finally:
            proxy.stop()
        print(
            f"planet: {len(items)} items of {args.planet_deg:g} degrees loaded into pgstac in "
            f"{loaded:.1f} s; search + {len(sources.assets)} COG headers over HTTP "
            f"{t1 - t0:.1f} s ({proxy.paths['/search']} pages); {len(plan)} cells of 0.2 "
            f"degrees planned in {t2 - t1:.1f} s; total {t2 - t0:.1f} s"
        )
    finally:
        if api is not None:
            api.stop()
        pg.stop()


def _query_seconds(embeddings: str | Path, out: Path, cache: Path) -> float:
    """Wall time of one ``marscope query`` process (the user's command)."""
    import subprocess

    cmd = [sys.executable, "-m", "marscope_stac.cli", "query", "impact craters"]
    cmd += ["--embeddings", str(embeddings), "--out", str(out)]
    env = {**os.environ, "MARSCOPE_CACHE": str(cache)}
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if run.returncode != 0:
        raise SystemExit(f"marscope query failed: {run.stderr.decode()[-2000:]}")
    return time.perf_counter() - t0


def _published_set(args: argparse.Namespace, demo: Path) -> Path:
    """The synthetic set's products folder (built once, kept in bench/out)."""
    from query_planet import build_set

    from marscope_stac.index.faiss_index import build_faiss_index
    from marscope_stac.index.store import EmbeddingSet
    from marscope_stac.models.loading import load_model
    from marscope_stac.stac.publish import publish_embedding_set

    root = OUT / ("published-" + args.published_grid.replace(":", "-").replace("@", "-"))
    products = root / "products"
    if (products / "catalog.json").is_file():
        return products
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    build_set(root, args.published_grid, 256, parquet=True)
    (root / "exact.npy").unlink()
    es = EmbeddingSet(products / "embeddings" / "bench-256d")
    build_faiss_index(np.asarray(es.scoring_arrays().vectors, np.float32), es.index)
    grid = parse_grid(args.published_grid)
    publish_embedding_set(es, load_model("bundled"), load_sources(demo), grid, 64, products)
    return products


def published(args: argparse.Namespace, demo: Path, www: Path, nginx: Nginx) -> None:
    """A 1.44 M-cell set published over HTTP, queried by its URL (see the module docstring)."""
    from marscope_stac.index.published import SET_ASSETS, open_published_set
    from marscope_stac.index.store import EmbeddingSet

    t0 = time.perf_counter()
    products = _published_set(args, demo)
    es = EmbeddingSet(products / "embeddings" / "bench-256d")
    n = len(es.scoring_arrays())
    fetched = sum((es.root / f).stat().st_size for f in SET_ASSETS.values()) / 1e9
    total = sum(p.stat().st_size for p in es.root.iterdir() if p.is_file()) / 1e9
    print(
        f"published set: {n:,} cells x 256-d ({args.published_grid}), {total:.2f} GB of which "
        f"a query fetches {fetched:.2f} GB (ready in {time.perf_counter() - t0:.0f} s)"
    )
    link = www / "published"
    if not link.exists():
        link.symlink_to(products.parent.resolve())
    path = f"/published/products/embeddings/{es.root.name}/{es.root.name}.json"
    cache, out = OUT / "published-cache", OUT / "published-products"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    first = _query_seconds(nginx.url + path, out / "by-url", cache)
    _query_seconds(es.root, out / "local", cache)  # untimed: the local folder's page cache
    by_url = [_query_seconds(nginx.url + path, out / "by-url", cache) for _ in range(3)]
    local = [_query_seconds(es.root, out / "local", cache) for _ in range(3)]
    url_s, local_s = float(np.median(by_url)), float(np.median(local))
    print(
        f"  by URL, empty cache: first answer in {first:.1f} s (fetch {fetched:.2f} GB, "
        f"checksums, model, query); cached: {url_s:.2f} s per query vs local folder "
        f"{local_s:.2f} s ({url_s / local_s:.2f}x), medians of 3 `marscope query` processes"
    )
    proxy = FaultProxy(("127.0.0.1", nginx.port), delay=args.published_delay / 1000)
    try:
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["MARSCOPE_CACHE"] = str(cache)
        t = time.perf_counter()
        open_published_set(proxy.url + path)
        fetch_s = time.perf_counter() - t
    finally:
        proxy.stop()
        del os.environ["MARSCOPE_CACHE"]
    print(
        f"  fetch alone at {args.published_delay} ms per request: {fetch_s:.1f} s "
        f"({fetched * 1e3 / fetch_s:.0f} MB/s, {proxy.requests} requests)"
    )
    shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="default", help="Demo world size.")
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--workers", type=int, default=1, help="Embedding worker threads.")
    ap.add_argument("--delays", default="0,20,100", help="Added round trips, ms.")
    ap.add_argument("--fault-rate", type=float, default=0.08)
    ap.add_argument("--planet-deg", type=float, default=4.0)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-faults", action="store_true")
    ap.add_argument("--skip-planet", action="store_true")
    ap.add_argument("--skip-published", action="store_true")
    ap.add_argument("--published-grid", default="lonlat:0.2@80", help="Grid of the set.")
    ap.add_argument("--published-delay", type=int, default=20, help="ms, for the fetch.")
    args = ap.parse_args()
    args.delays = [int(d) for d in args.delays.split(",") if d.strip()]
    warnings.simplefilter("ignore")
    os.environ.setdefault("MARSCOPE_HTTP_BACKOFF", "0.05")
    demo = OUT / f"demo-{args.size}"
    ensure_demo_catalog(demo, size=args.size)
    www = OUT / "www"
    www.mkdir(parents=True, exist_ok=True)
    if not (www / demo.name).exists():
        (www / demo.name).symlink_to(demo.resolve())
    nginx, moto = Nginx(www), MotoS3()
    try:
        print(f"{os.cpu_count()} CPUs; demo world {args.size}; model {args.model}")
        if not args.skip_throughput:
            throughput(args, demo, nginx, moto)
        root = planet_catalog(args, www) if not (args.skip_planet and args.skip_faults) else www
        if not args.skip_planet:
            planet(args, nginx, root)
        if not args.skip_faults:
            faults(args, nginx, root)
        if not args.skip_published:
            published(args, demo, www, nginx)
    finally:
        nginx.stop()
        moto.stop()


if __name__ == "__main__":
    main()
