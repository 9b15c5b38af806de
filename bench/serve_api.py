"""The web map's API at planet scale: ``POST /api/query`` against ``marscope serve``.

Run:  .venv/bin/python bench/serve_api.py [--set lonlat:0.2@80:256] [--repeats 5]
      .venv/bin/python bench/serve_api.py --set lonlat:0.2@80:768:det=50000   (a big answer)

Writes the synthetic planet embedding set of ``bench/query_planet.py`` (1.44 M cells on
MarScope's grid by default; its query text is cached as a model would have cached it), starts
:class:`~marscope_stac.web.server.MapServer` on 127.0.0.1 with the engine the command opens (kept
warm), and times what the page does for a query:

- the page's request (``"live": true``, the products the page asks for): the answer with
  its tiles' URLs, then the first screen (a 1200 x 700 map showing the planet asks raster
  tiles at zoom 2 and vector tiles at zoom 1, six at a time as a browser does), then the
  product's files (``GET /api/answers/{id}``, written after the answer);
- the same request without ``live`` (files written before the answer), and with every
  product (the scores table too), as API clients ask;
- the reads the map then makes of a product's files (its item, the first bytes of its
  PMTiles);
- beside them, in the same run, FAISS's exact ``IndexFlatIP`` top-20,000 search over the
  same vectors as float32 (sets that fit in memory).

Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE_PRODUCTS = ["tiles", "preview", "detections"]
"""What the map page asks for unless its scores-table box is ticked."""


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return dict(json.loads(response.read()))


def get(url: str) -> int:
    """Status of a GET (the body read)."""
    try:
        with urllib.request.urlopen(url, timeout=600) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


FIRST_SCREEN = [("probability", 2, x, y) for x in range(4) for y in range(4)] + [
    ("detections", 1, x, y) for x in range(2) for y in range(2)
]
"""The tiles a 1200 x 700 map showing the whole planet asks for first."""


def live_page(url: str, pool: ThreadPoolExecutor, query: str) -> tuple[float, float, float, int]:
    """Seconds to the answer, to its first screen of tiles, and to its files; tiles served."""
    t = time.perf_counter()
    body = {"texts": [query], "threshold": 0.5, "products": PAGE_PRODUCTS, "live": True}
    (record,) = post(url + "api/query", body)["products"]  # type: ignore[misc]
    answered = time.perf_counter() - t
    tiles = record["tiles"]
    urls = [
        url + tiles[layer].format(z=z, x=x, y=y)
        for layer, z, x, y in FIRST_SCREEN
        if tiles[layer] and tiles[f"{layer}_zoom"][0] <= z <= tiles[f"{layer}_zoom"][1]
    ]
    statuses = list(pool.map(get, urls))
    screen = time.perf_counter() - t
    assert all(s in (200, 204) for s in statuses), statuses
    assert get(url + record["written"]) == 200
    return answered, screen, time.perf_counter() - t, statuses.count(200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set", default="lonlat:0.2@80:256", help="GRID:DIM[:noparquet][:det=N] (as query_planet)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from query_planet import QUERY, build_set, faiss_baseline

    from marscope_stac.web.server import serve

    root = Path(tempfile.mkdtemp(prefix="marscope-serve-"))
    try:
        spec, _, det = args.set.partition(":det=")
        grid_spec, dim = spec.removesuffix(":noparquet").rsplit(":", 1)
        parquet = not spec.endswith(":noparquet")
        info = build_set(root, grid_spec, int(dim), parquet, int(det) if det else None)
        faiss_s = None
        if info["f32"] is not None:
            faiss_s, _ = faiss_baseline(info["f32"], info["q"], 20_000, args.repeats)
        info["f32"] = None
        t0 = time.perf_counter()
        server = serve(root / "products", port=0, model=info["model"])
        opened = time.perf_counter() - t0
        server.start()
        answers, reads, page = [], [], []
        live: list[tuple[float, float, float, int]] = []
        with ThreadPoolExecutor(6) as pool:  # a browser's connections to one server
            live_page(server.url, pool, QUERY)  # the first answer lays the set out: not counted
            for _ in range(args.repeats):
                live.append(live_page(server.url, pool, QUERY))
        for _ in range(args.repeats):
            t = time.perf_counter()
            answer = post(server.url + "api/query", {"texts": [QUERY], "threshold": 0.5})
            answers.append(time.perf_counter() - t)
            t = time.perf_counter()
            what = {"texts": [QUERY], "threshold": 0.5, "products": PAGE_PRODUCTS}
            post(server.url + "api/query", what)
            page.append(time.perf_counter() - t)
            (product,) = answer["products"]  # type: ignore[misc]
            t = time.perf_counter()
            urllib.request.urlopen(server.url + product["item"]).read()
            head = urllib.request.Request(
                server.url + product["assets"]["tiles"], headers={"Range": "bytes=0-16383"}
            )
            urllib.request.urlopen(head).read()
            reads.append(time.perf_counter() - t)
        server.shutdown()
        med = [statistics.median(v[i] for v in live) * 1000 for i in range(3)]
        print(
            f"{args.set}: the page's request, live: answered in {med[0]:.0f} ms "
            f"(min {min(v[0] for v in live) * 1000:.0f}), its first screen of tiles "
            f"({live[0][3]} tiles with data) at {med[1]:.0f} ms, its files written at "
            f"{med[2]:.0f} ms"
            + (f"; FAISS IndexFlatIP top-20,000 alone: {faiss_s * 1000:.0f} ms" if faiss_s else "")
        )
        print(
            f"{args.set}: server up in {opened:.2f} s (engine opened, kept warm); "
            f"POST /api/query as the page asks (tiles, preview, detections): median "
            f"{statistics.median(page) * 1000:.0f} ms (min {min(page) * 1000:.0f}); "
            f"with every product (the scores table too): median "
            f"{statistics.median(answers) * 1000:.0f} ms (min {min(answers) * 1000:.0f}); "
            f"then the item + first PMTiles range: {statistics.median(reads) * 1000:.1f} ms"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
