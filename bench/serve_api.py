"""The web map's API at planet scale: ``POST /api/query`` against ``marscope serve``.

Run:  .venv/bin/python bench/serve_api.py [--set lonlat:0.2@80:256] [--repeats 5]
      .venv/bin/python bench/serve_api.py --set lonlat:0.2@80:768:det=50000   (a big answer)

Writes the synthetic planet embedding set of ``bench/query_planet.py`` (1.44 M cells on
MarScope's grid by default; its query text is cached as a model would have cached it), starts
:class:`~marscope_stac.web.server.MapServer` on 127.0.0.1 with the engine the command opens (kept
warm), and times what the page does for a query: the HTTP request that answers it (every
product written and published, as ``marscope query`` does) and the reads the map then makes
(the product's item and the first bytes of its PMTiles). Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set", default="lonlat:0.2@80:256", help="GRID:DIM[:noparquet][:det=N] (as query_planet)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from query_planet import QUERY, build_set

    from marscope_stac.web.server import serve

    root = Path(tempfile.mkdtemp(prefix="marscope-serve-"))
    try:
        spec, _, det = args.set.partition(":det=")
        grid_spec, dim = spec.removesuffix(":noparquet").rsplit(":", 1)
        parquet = not spec.endswith(":noparquet")
        info = build_set(root, grid_spec, int(dim), parquet, int(det) if det else None)
        t0 = time.perf_counter()
        server = serve(root / "products", port=0, model=info["model"])
        opened = time.perf_counter() - t0
        server.start()
        answers, reads, page = [], [], []
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
