"""The web map as a labelling workbench, in Debian's Chromium (driven by Playwright).

Marking detections right or wrong from their popups, box selection, examples exported and
imported as GeoJSON, the view and the query kept in the URL, the products list (metadata,
filter, delete), every product of a multi-text query, the layer switcher, the probability
cut-off, progress and cancel, Ctrl+Enter, downloads, and a phone-width layout.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _browser import demo_map_server, launch, needs_chromium, screenshot, watch

from marscope_stac.web.server import MapServer

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.allow_hosts(["127.0.0.1"]),
    needs_chromium,
]


@pytest.fixture(scope="module")
def server(demo_small, tmp_path_factory) -> Iterator[MapServer]:  # type: ignore[no-untyped-def]
    srv = demo_map_server(demo_small.root, tmp_path_factory.mktemp("workbench"))
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: MapServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 760}, accept_downloads=True)
    pg = context.new_page()
    problems = watch(pg)
    pg.goto(server.url)
    pg.wait_for_selector("body[data-ready='1']", timeout=60_000)
    yield pg
    context.close()
    assert not [p for p in problems if "favicon" not in p], problems


def _ask(page: Any, texts: str, threshold: str = "0.3") -> str:
    before = page.get_attribute("body", "data-rendered")
    page.fill("#texts", texts)
    page.fill("#threshold-query", threshold)
    page.dispatch_event("#threshold-query", "input")
    page.click("#run")
    page.wait_for_function(
        f"document.body.dataset.rendered && document.body.dataset.rendered !== '{before}'",
        timeout=120_000,
    )
    return str(page.get_attribute("body", "data-rendered"))


def _detection_point(page: Any, skip: int = 0) -> tuple[float, float]:
    hit = page.evaluate(
        "(skip) => { const m = window.marscopeMap;"
        " const f = m.queryRenderedFeatures({layers: ['detections-fill']});"
        " if (f.length <= skip) return null;"
        " const ring = f[skip].geometry.coordinates[0];"
        " const lon = ring.reduce((a, c) => a + c[0], 0) / ring.length;"
        " const lat = ring.reduce((a, c) => a + c[1], 0) / ring.length;"
        " const p = m.project([lon, lat]); const r = m.getContainer().getBoundingClientRect();"
        " if (!m.queryRenderedFeatures(p, {layers: ['detections-fill']}).length) return null;"
        " return [p.x + r.left, p.y + r.top]; }",
        skip,
    )
    assert hit is not None, "no detection to click"
    return float(hit[0]), float(hit[1])


def _examples(page: Any) -> list[str]:
    return list(page.eval_on_selector_all("#examples li", "els => els.map(e => e.className)"))


def test_label_detections_boxes_and_geojson(page: Any, server: MapServer, tmp_path: Path) -> None:
    _ask(page, "impact craters", "0.2")
    page.fill("#filter", "0")
    page.dispatch_event("#filter", "input")
    page.wait_for_timeout(300)
    x, y = _detection_point(page)
    page.mouse.click(x, y)
    page.click(".maplibregl-popup .mark-right")
    assert _examples(page) == ["pos"]
    assert (page.get_attribute("#examples li img", "src") or "").startswith("api/cells/image?")
    page.wait_for_function(  # the tile the model saw there, from the engine
        "() => { const i = document.querySelector('#examples li img');"
        " return i && i.complete && i.naturalWidth === 96; }"
    )
    page.mouse.click(x, y)
    page.click(".maplibregl-popup .mark-wrong")
    assert _examples(page) == ["pos", "neg"]
    # a box: every embedded cell inside it
    page.check("#box-mode")
    left, top = (
        float(v)
        for v in page.evaluate(
            "() => { const r = window.marscopeMap.getContainer().getBoundingClientRect();"
            " return [r.left, r.top]; }"
        )
    )
    cx, cy = x, y  # around the detection: inside the embedded area
    page.mouse.move(cx - 60, cy - 60)
    page.mouse.down()
    page.mouse.move(cx + 60, cy + 60, steps=4)
    page.mouse.up()
    page.wait_for_function("document.querySelectorAll('#examples li').length > 2", timeout=10_000)
    added = len(_examples(page)) - 2
    corners = page.evaluate(
        f"() => [[{cx - left - 60}, {cy - top - 60}], [{cx - left + 60}, {cy - top + 60}]]"
        ".map(p => window.marscopeMap.unproject(p))"
    )
    lons, lats = [c["lng"] for c in corners], [c["lat"] for c in corners]
    bbox = ",".join(map(str, [min(lons), min(lats), max(lons), max(lats)]))
    with urllib.request.urlopen(server.url + "api/cells?bbox=" + bbox) as r:
        assert added == len(json.loads(r.read())["centres"]) > 0
    page.uncheck("#box-mode")
    # export, clear, import: the same examples come back
    with page.expect_download() as info:
        page.click("#export-examples")
    exported = tmp_path / "examples.geojson"
    info.value.save_as(exported)
    doc = json.loads(exported.read_text())
    assert doc["crs"]["properties"]["name"] == "IAU_2015:49900"
    labels = [f["properties"]["label"] for f in doc["features"]]
    assert labels[:2] == ["positive", "negative"] and len(labels) == 2 + added
    page.click("#clear-examples")
    assert _examples(page) == []
    page.set_input_files("#import-examples", str(exported))
    page.wait_for_function(f"document.querySelectorAll('#examples li').length === {len(labels)}")
    assert _examples(page)[:2] == ["pos", "neg"]
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": []}')
    page.set_input_files("#import-examples", str(bad))
    page.wait_for_selector("#status.error")
    assert "no Point features" in page.inner_text("#status")


def test_the_url_holds_the_view_query_and_product(page: Any, browser: Any) -> None:
    shown = _ask(page, "dune fields", "0.35")
    page.mouse.click(500, 300)  # a positive example
    page.check("#negative-mode")
    page.mouse.click(560, 340)
    page.uncheck("#negative-mode")
    page.evaluate("() => window.marscopeMap.jumpTo({zoom: window.marscopeMap.getZoom() + 0.5})")
    page.wait_for_timeout(300)
    url = page.url
    assert "product=" in url and "points=" in url and "negatives=" in url
    zoom = page.evaluate("() => window.marscopeMap.getZoom()")
    other = browser.new_page(viewport={"width": 1200, "height": 760})
    other.goto(url)
    other.wait_for_selector("body[data-ready='1']", timeout=60_000)
    assert other.get_attribute("body", "data-product") == shown
    assert other.input_value("#texts") == "dune fields"
    assert other.input_value("#threshold-query") == "0.35"
    assert [
        c for c in other.eval_on_selector_all("#examples li", "e => e.map(x => x.className)")
    ] == [
        "pos",
        "neg",
    ]
    assert abs(other.evaluate("() => window.marscopeMap.getZoom()") - zoom) < 0.05
    other.close()


def test_products_list_filter_delete_and_multi_text(page: Any, server: MapServer) -> None:
    _ask(page, "yardangs\nchannels\npitted cones", "0.4")
    answer = page.eval_on_selector_all("#queries li.answer", "e => e.map(x => x.dataset.id)")
    assert len(answer) == 3
    meta = page.inner_text(f"#queries li[data-id='{answer[1]}'] small")
    assert "threshold 0.40" in meta and "0 examples" in meta
    page.click(f"#queries li[data-id='{answer[1]}'] button.show")
    assert page.get_attribute("body", "data-product") == answer[1]
    # showing a product brings back its texts
    assert page.input_value("#texts") == "channels"
    page.fill("#product-filter", "pitted")
    page.dispatch_event("#product-filter", "input")
    names = page.eval_on_selector_all("#queries li .name", "e => e.map(x => x.textContent)")
    assert names and all("pitted" in n for n in names)
    page.fill("#product-filter", "")
    page.dispatch_event("#product-filter", "input")
    # delete, after a confirmation
    page.once("dialog", lambda d: d.accept())
    page.click(f"#queries li[data-id='{answer[2]}'] button.delete")
    page.wait_for_function(f"!document.querySelector(\"#queries li[data-id='{answer[2]}']\")")
    with urllib.request.urlopen(server.url + "api/queries") as r:
        assert answer[2] not in {p["id"] for p in json.loads(r.read())}
    page.once("dialog", lambda d: d.dismiss())  # cancelled: kept
    page.click(f"#queries li[data-id='{answer[0]}'] button.delete")
    page.wait_for_timeout(300)
    assert page.query_selector(f"#queries li[data-id='{answer[0]}']") is not None


def test_layers_cutoff_downloads_keys_and_cancel(page: Any, server: MapServer) -> None:
    page.fill("#texts", "pitted cones")
    page.press("#texts", "Control+Enter")  # Ctrl+Enter asks
    page.wait_for_selector("body[data-rendered]", timeout=120_000)
    page.wait_for_timeout(500)
    visible = lambda layer: page.evaluate(  # noqa: E731
        f"() => window.marscopeMap.getLayoutProperty('{layer}', 'visibility')"
    )
    page.uncheck("#layer-imagery")
    assert visible("imagery") == "none"
    page.uncheck("#layer-detections")
    assert visible("detections-fill") == "none"
    page.check("#layer-imagery")
    assert visible("imagery") == "visible"

    # the cut-off: near-zero probability leaves the imagery visible
    def painted(cut: str) -> float:
        page.fill("#cutoff", cut)
        page.dispatch_event("#cutoff", "change")
        page.wait_for_function(
            "() => window.marscopeMap.isSourceLoaded('probability')"
            " && window.marscopeMap.areTilesLoaded()"
        )
        page.wait_for_timeout(400)
        img = screenshot(page)
        return float((np.abs(img[..., 0] - img[..., 2]) >= 12).mean())

    assert painted("0") > painted("0.9") + 0.01
    # downloads of the product shown: GeoJSON, CSV and what is visible
    links = page.eval_on_selector_all("#downloads a", "e => e.map(a => [a.textContent, a.href])")
    hrefs = dict(links)
    assert {"detections GeoJSON", "detections CSV", "visible detections (GeoJSON)"} <= set(hrefs)
    assert "bbox=" in hrefs["visible detections (CSV)"]
    with urllib.request.urlopen(hrefs["detections GeoJSON"]) as r:
        assert json.loads(r.read())["type"] == "FeatureCollection"
    # progress and cancel: the request is held, the page cancels it
    held: list[Any] = []
    page.route("**/api/query", lambda route: held.append(route))
    page.click("#run")
    page.wait_for_selector("#cancel:not([hidden])")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('asking')")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('cancelled')")
    assert page.is_enabled("#run")
    for route in held:
        route.abort()


def test_a_phone_width_layout(browser: Any, server: MapServer) -> None:
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(server.url)
    phone.wait_for_selector("body[data-ready='1']", timeout=60_000)
    width = phone.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390
    box = phone.evaluate(
        "() => { const r = window.marscopeMap.getContainer().getBoundingClientRect();"
        " return [r.width, r.height]; }"
    )
    assert box[0] >= 380 and box[1] >= 300
    phone.locator("#run").scroll_into_view_if_needed()
    assert phone.is_visible("#run") and phone.is_visible("#texts")
    phone.close()


def test_zooming_out_keeps_the_imagery(page: Any, server: MapServer) -> None:
    from pmtiles.reader import MmapSource, Reader

    (archive,) = (server.state.products / "basemaps").glob("*/imagery.pmtiles")
    with archive.open("rb") as fh:
        # tiles from zoom 0 on; where the demo's extent is below a pixel there are none
        assert Reader(MmapSource(fh)).header()["min_zoom"] <= 3
    page.uncheck("#layer-probability")
    page.evaluate("() => window.marscopeMap.jumpTo({zoom: 6})")
    page.wait_for_function("() => window.marscopeMap.areTilesLoaded()")
    page.wait_for_timeout(500)
    img = screenshot(page)
    left, top, width, height = (
        int(v)
        for v in page.evaluate(
            "() => { const r = window.marscopeMap.getContainer().getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; }"
        )
    )
    area = img[top : top + height, left : left + width]
    background = np.abs(area - np.array([27, 20, 16])).sum(axis=2) < 10
    grey = (np.abs(area[..., 0] - area[..., 2]) < 12) & (area.sum(axis=2) > 150)
    assert (grey & ~background).sum() > 20  # the demo's imagery, seen from afar


def test_showing_a_product_brings_back_its_examples(page: Any) -> None:
    page.mouse.click(520, 320)
    page.check("#negative-mode")
    page.mouse.click(580, 360)
    page.uncheck("#negative-mode")
    page.select_option("#learner", "classifier")
    first = _ask(page, "glacier-like forms", "0.45")
    page.click("#clear-examples")
    page.select_option("#learner", "prototype")
    _ask(page, "landslides", "0.45")
    assert _examples(page) == []
    page.click(f"#queries li[data-id='{first}'] button.show")
    assert page.input_value("#texts") == "glacier-like forms"
    assert _examples(page) == ["pos", "neg"]
    assert page.input_value("#learner") == "classifier"  # learnt by a classifier
    meta = page.inner_text(f"#queries li[data-id='{first}'] small")
    assert "2 examples" in meta


def test_a_broken_address_still_opens_the_map(browser: Any, server: MapServer) -> None:
    other = browser.new_page(viewport={"width": 1200, "height": 760})
    problems = watch(other)
    other.goto(server.url + "#points=1,x;nan,2;10,95&threshold=0.03&view=a/b/c&product=nope")
    other.wait_for_selector("body[data-ready='1']", timeout=60_000)
    assert other.eval_on_selector_all("#examples li", "e => e.length") == 0
    assert other.inner_text("#threshold-query-value") == "0.05"  # what the slider holds
    other.close()
    assert not problems, problems
