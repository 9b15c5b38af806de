"""The web map in a real browser: Debian's Chromium, driven by Playwright (nothing downloaded).

The server runs on the small demo world (bundled model, imagery basemap); the test types a query,
waits for the probability layer, checks the screenshot's pixels over the demo area, opens a
detection's popup, adds a negative example and sees the map change, and checks the console
has no errors. A missing browser fails the test (``.ci/run`` installs ``chromium``).
Set ``MARSCOPE_SCREENSHOT=path.png`` to keep the screenshot (the README's picture).
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _browser import demo_map_server, launch, map_box, needs_chromium, watch
from PIL import Image

from marscope_stac.web.server import MapServer
from marscope_stac.web.static import write_static_site

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]
"""The server and the browser talk over the loopback interface only."""


@pytest.fixture(scope="module")
def server(demo_small, tmp_path_factory):  # type: ignore[no-untyped-def]
    srv = demo_map_server(demo_small.root, tmp_path_factory.mktemp("web"))
    yield srv
    srv.shutdown()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (names in any case, as HTTP has them) and body of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_files_are_served_with_ranges_etags_and_media_types(server: MapServer) -> None:
    config = json.loads(_get(server.url + "api/config")[2])
    assert config["body"] == "Mars" and config["basemap"].endswith(".pmtiles")
    url = server.url + config["basemap"]
    status, headers, body = _get(url, {"Range": "bytes=0-126"})
    assert status == 206 and len(body) == 127 and body[:7] == b"PMTiles"
    assert (
        headers["Content-Type"] == "application/vnd.pmtiles" and headers["Accept-Ranges"] == "bytes"
    )
    assert headers["Content-Range"].startswith("bytes 0-126/")
    status, _, _ = _get(url, {"If-None-Match": headers["ETag"]})
    assert status == 304
    assert _get(url, {"Range": "bytes=999999999-"})[0] == 416
    status, headers, _ = _get(url, {"Range": "bytes=0-1,5-9"})  # multi-range: multipart
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges")
    for sneaky in (
        "products/../../etc/passwd",
        "products/%2e%2e/%2e%2e/etc/passwd",
        "vendor/../app.js",
        "products/%00x",
        "products/" + "a" * 300,
    ):
        assert _get(server.url + sneaky)[0] == 404
    source = config["sources"][0]
    status, headers, body = _get(server.url + source["url"])
    assert status == 200 and json.loads(body)["id"] == source["id"]


def test_the_api_answers_and_refuses_bad_requests(server: MapServer) -> None:
    def post(body: bytes) -> tuple[int, Any]:
        request = urllib.request.Request(
            server.url + "api/query", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    status, answer = post(json.dumps({"texts": ["dune fields"], "threshold": 0.3}).encode())
    assert status == 200
    (product,) = answer["products"]
    item = json.loads(_get(server.url + product["item"])[2])
    assert item["id"] == product["id"] and item["properties"]["marscope:threshold"] == 0.3
    # the same files and id as `marscope query "dune fields" --threshold 0.3` publishes
    from marscope_stac.products.ids import query_id
    from marscope_stac.query.scoring import QuerySpec

    engine = server.state.engine
    assert engine is not None
    spec = QuerySpec(text=["dune fields"])
    assert product["id"] == query_id(spec, engine.set, 0.3, engine.mode)
    # zero-shot classification: a class map with its tiles and a legend
    status, answer = post(json.dumps({"texts": ["yardangs", "craters"], "classify": True}).encode())
    assert status == 200
    (classes,) = answer["products"]
    assert classes["assets"]["tiles"].endswith("classes.pmtiles")
    assert [e["name"] for e in classes["legend"]] == ["background", "yardangs", "craters"]
    assert _get(server.url + classes["assets"]["tiles"], {"Range": "bytes=0-6"})[2] == b"PMTiles"
    # a composite
    status, answer = post(json.dumps({"texts": ["yardangs"], "and_not": "craters"}).encode())
    assert status == 200 and answer["products"][0]["id"].startswith("yardangs")
    assert post(json.dumps({"texts": ["x"], "near": 3}).encode())[0] == 400
    assert post(b"[1, 2]")[0] == 400
    assert post(json.dumps({"texts": [""]}).encode())[0] == 400
    assert post(json.dumps({"texts": ["x"], "threshold": 7}).encode())[0] == 400
    assert post(b"x" * 70_000)[0] == 413
    assert post(json.dumps({"texts": ["x"] * 17}).encode())[0] == 400
    status, body = post(json.dumps({"texts": ["x"], "bogus": 1}).encode())
    assert status == 400 and "unknown field 'bogus'" in body["error"]
    # not from the page: a cross-site form post (text/plain) or another host name
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/json", "Host": "evil.example:80"},
    ):
        request = urllib.request.Request(
            server.url + "api/query", data=b'{"texts": ["x"]}', headers=headers
        )
        try:
            urllib.request.urlopen(request, timeout=30)
            raise AssertionError("accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 403


@needs_chromium
def test_ask_look_and_refine_in_a_real_browser(server: MapServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        problems = watch(page)
        live: list[tuple[str, int]] = []  # the answer's tiles, asked before its files exist
        page.on(
            "response",
            lambda r: live.append((r.url, r.status)) if "/api/answers/" in r.url else None,
        )
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        blank = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB"))
        # ask
        page.fill("#texts", "yardangs")
        page.fill("#threshold-query", "0.05")
        page.dispatch_event("#threshold-query", "input")
        page.click("#run")
        page.wait_for_selector("body[data-rendered]", timeout=60_000)
        first = page.get_attribute("body", "data-rendered")
        shot = page.screenshot()
        if os.environ.get("MARSCOPE_SCREENSHOT"):
            Path(os.environ["MARSCOPE_SCREENSHOT"]).write_bytes(shot)
        img = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
        # over the demo area the probability layer tints the grey imagery (magma colours)
        left, top, width, height = map_box(page)
        x, y = left + width // 2, top + height // 2
        area = img[top : top + height, left : left + width]
        before = blank[top : top + height, left : left + width].astype(int)
        changed = np.abs(area - before).sum(axis=2) > 60
        grey = np.abs(area[..., 0] - area[..., 2]) < 12  # imagery is grey; magma is not
        assert changed.mean() > 0.01 and (~grey & changed).mean() > 0.005, changed.mean()
        assert any("/probability/" in url and status == 200 for url, status in live), live
        # the detection filter re-filters without a new query
        count = (
            "() => window.marscopeMap.queryRenderedFeatures({layers: ['detections-fill']}).length"
        )
        page.fill("#filter", "1")
        page.dispatch_event("#filter", "input")
        page.wait_for_timeout(300)
        none = page.evaluate(count)
        page.fill("#filter", "0")
        page.dispatch_event("#filter", "input")
        page.wait_for_function(f"({count})() > {none}", timeout=10_000)
        # a detection's popup
        hit = page.evaluate(
            "() => { const m = window.marscopeMap;"
            " const f = m.queryRenderedFeatures({layers: ['detections-fill']});"
            " if (!f.length) return null; const c = f[0].geometry.coordinates[0][0];"
            " const p = m.project(c); const r = m.getContainer().getBoundingClientRect();"
            " return [p.x + r.left + 2, p.y + r.top + 2]; }"
        )
        assert hit is not None, "no detection drawn"
        page.mouse.click(hit[0], hit[1])
        page.wait_for_selector(".maplibregl-popup", timeout=10_000)
        popup = page.inner_text(".maplibregl-popup")
        assert "max. probability" in popup and " cell" in popup and "ctx-demo-" in popup
        # refine: a negative example where the layer is strongest, then ask again
        page.click(".maplibregl-popup-close-button")
        page.check("#negative-mode")
        page.mouse.click(x - 80, y + 60)
        assert "−" in page.inner_text("#examples")
        page.click("#run")
        page.wait_for_function(f"document.body.dataset.rendered !== '{first}'", timeout=60_000)
        after = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
        assert np.abs(after - img).mean() > 0.5  # the map changed
        # scale bar on Mars' radius, not Earth's
        per_px = float(page.get_attribute(".scale-bar", "data-metres-per-pixel") or 0)
        zoom, lat = page.evaluate(
            "() => [window.marscopeMap.getZoom(), window.marscopeMap.getCenter().lat]"
        )
        mars = 2 * np.pi * 3_396_190 * np.cos(np.radians(lat)) / (512 * 2**zoom)
        assert abs(per_px / mars - 1) < 1e-6
        browser.close()
    assert not [p for p in problems if "favicon" not in p], problems


def test_a_static_site_browses_published_products(server: MapServer, tmp_path: Path) -> None:
    from marscope_stac.query.scoring import QuerySpec

    engine = server.state.engine
    assert engine is not None
    engine.query(QuerySpec(text=["craters"]))  # at least one published product
    site = write_static_site(server.state.products, tmp_path / "site")
    records = json.loads((site / "queries.json").read_text())
    assert records and all((site / r["assets"]["tiles"]).is_file() for r in records)
    config = json.loads((site / "config.json").read_text())
    assert config["static"] and (site / config["basemap"]).is_file()
    assert (site / "vendor" / "maplibre-gl.mjs").is_file()
    assert 'data-static="1"' in (site / "index.html").read_text()
    assert config["sources"] and all((site / s["url"]).is_file() for s in config["sources"])
    # the copy is a valid catalog: its lineage links reach the input catalog copied beside it
    from marscope_stac.stac.validation import validate_catalog

    assert not validate_catalog(site / "products").problems


def test_a_port_in_use_is_one_line(server: MapServer) -> None:
    from marscope_stac.core.errors import ConfigError

    port = server.port
    with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use; pass --port"):
        MapServer(server.state.products, None, "127.0.0.1", port)
