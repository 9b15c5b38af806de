"""The web map's server as clients meet it over real sockets: many at once, slow ones, other
sites' pages, every method, conditional requests, OpenAPI (uvicorn serving the Starlette app)."""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from marscope_stac.core.errors import ConfigError
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.models.loading import load_model
from marscope_stac.web.api import API_FIELDS
from marscope_stac.web.server import MapServer

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


@pytest.fixture(scope="module")
def server(demo_small, tiny_model_dir, tmp_path_factory) -> Iterator[MapServer]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("api")
    cat = root / "catalogs" / "demo"
    shutil.copytree(demo_small.root, cat)
    out = root / "products"
    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(cat, out, model=model, progress=False)
    engine = QueryEngine.open(out, clip_model=load_model(model, device="cpu"))
    srv = MapServer(out, engine, "127.0.0.1", 0, client_timeout=1.0)
    srv.start()
    yield srv
    srv.shutdown()


def _call(
    server: MapServer,
    path: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(
        server.url + path.lstrip("/"), data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _json(status_headers_body: tuple[int, Message, bytes]) -> tuple[int, Any]:
    status, headers, body = status_headers_body
    assert headers.get_content_type() == "application/json", (status, headers, body[:200])
    return status, json.loads(body)


JSON = {"Content-Type": "application/json"}


def test_fifty_simultaneous_queries_all_get_answers(server: MapServer) -> None:
    body = json.dumps({"texts": ["dune fields"], "threshold": 0.4}).encode()

    def ask(_: int) -> int:
        return _call(server, "api/query", method="POST", body=body, headers=JSON)[0]

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(ask, range(50)))
    assert statuses == [200] * 50


def test_other_sites_pages_are_refused(server: MapServer) -> None:
    query = json.dumps({"texts": ["craters"]}).encode()
    for origin in ("http://evil.example", "null", f"http://localhost:{server.port + 1}"):
        status, body = _json(
            _call(server, "api/query", method="POST", body=query, headers=JSON | {"Origin": origin})
        )
        assert status == 403 and "Origin" in body["error"], origin
    own = f"http://127.0.0.1:{server.port}"
    status, _ = _json(
        _call(server, "api/query", method="POST", body=query, headers=JSON | {"Origin": own})
    )
    assert status == 200
    # a DNS-rebinding page keeps its own Host: refused for reading too
    for path in ("api/config", "api/queries", "", "products/catalog.json"):
        status, body = _json(_call(server, path, headers={"Host": f"evil.example:{server.port}"}))
        assert status == 403 and "Host" in body["error"], path
    status, _ = _json(_call(server, "api/config", headers={"Host": f"localhost:{server.port}"}))
    assert status == 200


def test_every_error_and_method_is_answered_in_json(server: MapServer) -> None:
    status, body = _json(_call(server, "api/config", method="OPTIONS"))
    assert status == 200 and set(body["allow"]) == {"GET", "HEAD", "POST", "DELETE", "OPTIONS"}
    for method in ("PUT", "DELETE", "PATCH"):
        status, headers, raw = _call(server, "api/query", method=method, body=b"{}", headers=JSON)
        assert status == 405 and "error" in json.loads(raw) and "POST" in headers["Allow"]
    assert _json(_call(server, "nothing/here"))[0] == 404

    def post(body: bytes) -> tuple[int, Any]:
        return _json(_call(server, "api/query", method="POST", body=body, headers=JSON))

    assert post(b"x" * 70_000)[0] == 413
    assert post(b"[" * 60_000)[0] == 400  # nested past Python's stack: still the client's fault
    for wrong in (
        b'{"texts": ["x"], "threshold": "0.5"}',
        b'{"texts": ["x"], "threshold": true}',
        b'{"texts": ["x"], "classify": "yes"}',
        b'{"points": [[10.0, 0.05, 3]]}',
        b'{"points": [[true, 0.05]]}',
    ):
        assert post(wrong)[0] == 400, wrong  # typed as the API says, not coerced
    status, body = post(b'{"texts": ["x"], "bogus": 1}')
    assert status == 400 and "unknown field 'bogus'" in body["error"]
    status, body = post(b'{"texts": ["x"], "threshold": 7}')
    assert status == 400 and "--" not in body["error"], body  # API words, not the CLI's flags


def test_conditional_requests_weak_tags_and_dates(server: MapServer) -> None:
    status, headers, _ = _call(server, "products/catalog.json")
    assert status == 200 and headers["ETag"] and headers["Last-Modified"]
    etag, modified = headers["ETag"], headers["Last-Modified"]
    assert _call(server, "products/catalog.json", headers={"If-None-Match": etag})[0] == 304
    assert _call(server, "products/catalog.json", headers={"If-None-Match": f"W/{etag}"})[0] == 304
    assert _call(server, "products/catalog.json", headers={"If-Modified-Since": modified})[0] == 304
    assert _call(server, "products/catalog.json", headers={"If-None-Match": '"other"'})[0] == 200


def test_slow_clients_are_timed_out(server: MapServer) -> None:
    # a request's head that never ends: the connection is closed after client_timeout (1 s)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode())
        t0 = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - t0 < 5
    # a body that never arrives: 408
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/query HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    # the server still answers others
    assert _call(server, "api/config")[0] == 200


def test_the_api_is_described_by_openapi(server: MapServer) -> None:
    status, doc = _json(_call(server, "api/openapi.json"))
    assert status == 200 and doc["openapi"].startswith("3.")
    from marscope_stac.web.app import create_app

    routes = {r.path for r in create_app(server.state).app.routes}  # type: ignore[attr-defined]
    api = {
        r.replace(":int}", "}")
        for r in routes
        if r.startswith("/api/") and r != "/api/openapi.json"
    }
    assert set(doc["paths"]) == api and len(api) == 10
    query = doc["components"]["schemas"]["Query"]
    assert set(query["properties"]) == API_FIELDS and query["additionalProperties"] is False
    assert {"400", "403", "408", "413"} <= set(doc["paths"]["/api/query"]["post"]["responses"])


def test_stopping_frees_the_port(demo_small: Any, tmp_path: Path) -> None:
    srv = MapServer(tmp_path, None, "127.0.0.1", 0)
    srv.start()
    port = srv.port
    assert _call(srv, "api/config")[0] == 200
    srv.shutdown()
    again = MapServer(tmp_path, None, "127.0.0.1", port)  # the port is free again
    again.socket.close()
    with pytest.raises(ConfigError, match="--host is empty"):  # not every interface
        MapServer(tmp_path, None, " ", 0)


def test_a_server_of_a_relative_folder_deletes_products(
    server: MapServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(server.state.products, tmp_path / "products")
    monkeypatch.chdir(tmp_path)
    engine = QueryEngine.open("products", clip_model=server.state.engine.model)  # type: ignore[union-attr]
    srv = MapServer("products", engine, "127.0.0.1", 0)
    srv.start()
    try:
        product = _ask(srv, texts=["dunes"])
        status, body = _json(_call(srv, f"api/products/{product['id']}", method="DELETE"))
        assert status == 200, body
    finally:
        srv.shutdown()


def _ask(server: MapServer, **query: Any) -> dict[str, Any]:
    status, answer = _json(
        _call(server, "api/query", method="POST", body=json.dumps(query).encode(), headers=JSON)
    )
    assert status == 200, answer
    return dict(answer["products"][0])


def test_detections_download_as_geojson_and_csv(server: MapServer) -> None:
    for threshold in (0.5, 0.6, 0.4, 0.7, 0.3, 0.8, 0.9):  # a random model: find several
        product = _ask(server, texts=["impact craters"], threshold=threshold)
        n = product["detections"]
        if n >= 3:
            break
    assert n >= 3
    base = f"api/products/{product['id']}/detections"
    status, headers, body = _call(server, base + ".geojson")
    assert status == 200 and headers.get_content_type() == "application/geo+json"
    assert "attachment" in headers["Content-Disposition"]
    doc = json.loads(body)
    assert doc["crs"]["properties"]["name"] == "IAU_2015:49900" and len(doc["features"]) == n
    assert {"max_probability", "mean_probability", "cells"} <= set(doc["features"][0]["properties"])
    status, headers, body = _call(server, base + ".csv")
    rows = body.decode().splitlines()
    assert status == 200 and headers.get_content_type() == "text/csv" and len(rows) == n + 1
    assert rows[0].startswith("id,lon,lat,west,south,east,north,max_probability")
    # what is visible: a box around the first detection only takes those it meets
    west, south, east, north = (float(v) for v in rows[1].split(",")[3:7])
    box = f"{west},{south},{(west + east) / 2},{(south + north) / 2}"
    visible = json.loads(_call(server, base + f".geojson?bbox={box}")[2])
    assert 1 <= len(visible["features"]) < n
    assert _json(_call(server, base + ".geojson?bbox=1,2,3"))[0] == 400
    assert _json(_call(server, base + ".shp"))[0] == 404
    assert _json(_call(server, "api/products/no-such-product/detections.csv"))[0] == 404


def test_a_product_is_deleted_and_the_catalog_stays_valid(server: MapServer) -> None:
    from marscope_stac.stac.validation import validate_catalog

    product = _ask(server, texts=["landslides"], threshold=0.35)
    folder = server.state.products / "queries" / product["id"]
    assert folder.is_dir()
    # a product another one is derived from is kept (its link would dangle)
    user = server.state.products / "queries" / "derived-x" / "derived-x.json"
    user.parent.mkdir()
    link = {"rel": "derived_from", "href": f"../{product['id']}/{product['id']}.json"}
    user.write_text(json.dumps({"type": "Feature", "id": "derived-x", "links": [link]}))
    status, body = _json(_call(server, f"api/products/{product['id']}", method="DELETE"))
    assert status == 409 and "derived-x is derived from it" in body["error"]
    assert folder.is_dir()
    user.unlink()
    user.parent.rmdir()
    foreign = {"Origin": "http://evil.example"}
    assert (
        _json(_call(server, f"api/products/{product['id']}", method="DELETE", headers=foreign))[0]
        == 403
    )
    status, body = _json(_call(server, f"api/products/{product['id']}", method="DELETE"))
    assert status == 200 and f"{product['id']}.json" in body["files"]
    assert not folder.exists()
    listed = json.loads(_call(server, "api/queries")[2])
    assert product["id"] not in {p["id"] for p in listed}
    assert not validate_catalog(server.state.products).problems
    assert _json(_call(server, f"api/products/{product['id']}", method="DELETE"))[0] == 404
    for sneaky in ("..%2Fcatalog", "catalog", "embeddings"):
        status, _ = _json(_call(server, f"api/products/{sneaky}", method="DELETE"))
        assert status in (400, 404, 405), sneaky
    assert (server.state.products / "catalog.json").is_file()


def test_the_examples_are_saved_with_the_product(server: MapServer) -> None:
    from marscope_stac.stac.validation import validate_catalog

    engine = server.state.engine
    assert engine is not None
    (lon0, lat0), (lon1, lat1) = (
        (float(v) for v in engine.bounds()[:2]),
        (float(v) for v in engine.bounds()[2:]),
    )
    inside = [[lon0 + (lon1 - lon0) * f, lat0 + (lat1 - lat0) * f] for f in (0.3, 0.6)]
    product = _ask(
        server, texts=["yardangs"], points=[inside[0]], negative_points=[inside[1]], threshold=0.5
    )
    folder = server.state.products / "queries" / product["id"]
    item = json.loads((folder / f"{product['id']}.json").read_text())
    asset = item["assets"]["examples"]
    assert asset["roles"] == ["labels"] and asset["type"] == "application/geo+json"
    doc = json.loads((folder / asset["href"]).read_text())
    assert doc["crs"]["properties"]["name"] == "IAU_2015:49900"
    assert [f["properties"]["label"] for f in doc["features"]] == ["positive", "negative"]
    assert doc["features"][0]["geometry"]["coordinates"] == pytest.approx(inside[0])
    assert not validate_catalog(server.state.products).problems
    # a query without examples has no such asset
    plain = _ask(server, texts=["yardangs"], threshold=0.45)
    plain_item = json.loads(
        (server.state.products / "queries" / plain["id"] / f"{plain['id']}.json").read_text()
    )
    assert "examples" not in plain_item["assets"]


def test_a_classifier_learns_from_the_examples(server: MapServer) -> None:
    engine = server.state.engine
    assert engine is not None
    w, s, e, n = (float(v) for v in engine.bounds())
    points = [[w + (e - w) * f, s + (n - s) * f] for f in (0.2, 0.3, 0.4)]
    negatives = [[w + (e - w) * 0.8, s + (n - s) * 0.7]]
    body = {"texts": ["yardangs"], "points": points, "negative_points": negatives}
    prototype = _ask(server, **body)
    classifier = _ask(server, **body, learner="classifier")
    assert classifier["id"] != prototype["id"]
    props = classifier["stac"]["properties"]
    assert props["marscope:query"]["learner"] == "classifier"
    assert props["marscope:calibration"] == "logistic-regression-on-examples"
    assert props["marscope:scoring"] == "exact+classifier"
    assert "learner" not in prototype["stac"]["properties"]["marscope:query"]
    for wrong, message in (
        ({"texts": ["yardangs"], "learner": "classifier"}, "learns from examples"),
        ({"texts": ["yardangs"], "points": points, "learner": "svm"}, "unknown learner 'svm'"),
    ):
        status, answer = _json(
            _call(server, "api/query", method="POST", body=json.dumps(wrong).encode(), headers=JSON)
        )
        assert status == 400 and message in answer["error"]


def test_host_names_for_every_kind_of_bind(tmp_path: Path) -> None:
    from marscope_stac.web.api import ServerState

    wildcard = ServerState(tmp_path, None, hosts={"0.0.0.0"}, port=8765)
    assert wildcard.allows_host("192.168.1.5:8765") and wildcard.allows_host("[fe80::1]:8765")
    assert not wildcard.allows_host("evil.example:8765")  # a rebinding page's own name
    assert not wildcard.allows_host("192.168.1.5:80")
    assert wildcard.allows_origin("http://192.168.1.5:8765")
    assert not wildcard.allows_origin("https://192.168.1.5:8765")
    v6 = ServerState(tmp_path, None, hosts={"2001:db8::5"}, port=8765)
    assert v6.allows_host("[2001:db8::5]:8765") and not v6.allows_host("[2001:db8::6]:8765")
    assert not v6.allows_host("192.168.1.5:8765")
    on_80 = ServerState(tmp_path, None, hosts={"127.0.0.1"}, port=80)
    assert on_80.allows_host("localhost") and on_80.allows_host("127.0.0.1:80")


def test_deletions_and_queries_at_once_all_finish(server: MapServer) -> None:
    victim = _ask(server, texts=["channels"], threshold=0.55)
    query = json.dumps({"texts": ["pitted cones"], "threshold": 0.45}).encode()
    calls = [("api/query", "POST", query)] * 4 + [
        (f"api/products/{victim['id']}", "DELETE", None),
        ("api/products/no-such-product", "DELETE", None),
        ("api/config", "GET", None),
        ("products/catalog.json", "GET", None),
    ]

    def call(c: tuple[str, str, bytes | None]) -> int:
        path, method, body = c
        return _call(server, path, method=method, body=body, headers=JSON if body else None)[0]

    with ThreadPoolExecutor(len(calls)) as pool:
        statuses = list(pool.map(call, calls))
    assert statuses == [200] * 4 + [200, 404, 200, 200]
    # a product made without detections has none to download
    made = _ask(server, texts=["pitted cones"], threshold=0.6, products=["tiles"])
    status, body = _json(_call(server, f"api/products/{made['id']}/detections.geojson"))
    assert status == 404 and "has no detections" in body["error"]


def test_the_tile_of_an_example_cell(server: MapServer) -> None:
    import io

    from PIL import Image

    engine = server.state.engine
    assert engine is not None
    w, s, e, n = (float(v) for v in engine.bounds())
    status, headers, body = _call(server, f"api/cells/image?lon={(w + e) / 2}&lat={(s + n) / 2}")
    assert status == 200 and headers.get_content_type() == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.size == (96, 96)
    assert np.asarray(image).std() > 1  # imagery, not a blank tile
    assert _json(_call(server, f"api/cells/image?lon={e + 5}&lat={n}"))[0] == 404
    assert _json(_call(server, "api/cells/image?lon=x&lat=1"))[0] == 400


def test_a_live_answer_serves_its_tiles_then_its_files(server: MapServer) -> None:
    import gzip

    from pmtiles.reader import MmapSource, Reader, all_tiles

    query = {"texts": ["impact craters"], "threshold": 0.3, "live": True}
    status, answer = _json(
        _call(server, "api/query", method="POST", body=json.dumps(query).encode(), headers=JSON)
    )
    assert status == 200, answer
    (record,) = answer["products"]
    assert record["live"] and record["assets"] == {} and record["detections"] is not None
    tiles = record["tiles"]
    zmin, zmax = tiles["probability_zoom"]
    served = {}
    for z in range(zmin, min(zmax, 4) + 1):
        for x in range(2**z):
            for y in range(2**z):
                path = tiles["probability"].format(z=z, x=x, y=y)
                status, headers, body = _call(server, path)
                assert status in (200, 204), (path, status)
                if status == 200:
                    assert headers["Content-Type"] == "image/png"
                    served[(z, x, y)] = body
    assert served
    # then the product, published: its archive holds the very tiles the answer served
    status, product = _json(_call(server, record["written"]))
    assert status == 200 and product["id"] == record["id"] and product["assets"]["tiles"]
    archive = server.state.products / product["assets"]["tiles"].removeprefix("products/")
    with archive.open("rb") as fh:
        stored = {k: v for k, v in all_tiles(Reader(MmapSource(fh)).get_bytes) if k[0] <= 4}
    assert served == stored
    if record["detections"]:
        vz = tiles["detections_zoom"][1]
        vector = server.state.products / product["assets"]["detection-tiles"].removeprefix(
            "products/"
        )
        with vector.open("rb") as fh:
            (z, x, y), data = next(
                t for t in all_tiles(Reader(MmapSource(fh)).get_bytes) if t[0][0] == vz
            )
        request = urllib.request.Request(server.url + tiles["detections"].format(z=z, x=x, y=y))
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(response.read()) == gzip.decompress(data)
    # a product without archives: its answer offers no tiles it will not have
    bare = {"texts": ["impact craters"], "threshold": 0.3, "live": True, "products": []}
    status, answer = _json(
        _call(server, "api/query", method="POST", body=json.dumps(bare).encode(), headers=JSON)
    )
    (record,) = answer["products"]
    assert record["tiles"]["probability"] is None and record["tiles"]["detections"] is None
    status, product = _json(_call(server, record["written"]))
    assert status == 200 and "tiles" not in product["assets"]
    # an answer no longer held, and one never asked
    assert _call(server, "api/answers/nothing-here")[0] == 404
    assert _call(server, "api/answers/nothing-here/probability/0/0/0.png")[0] == 404
    status, body = _json(
        _call(server, "api/query", method="POST", body=b'{"texts": ["x"], "live": 1}', headers=JSON)
    )
    assert status == 400 and "live must be true or false" in body["error"]
