"""Faults between the reader and real servers: retried, waited out, or counted; never lost."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _faultproxy import FAULTS, FaultProxy
from _services import Nginx, StacApi
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.datasets.demo import DemoCatalog
from marscope_stac.datasets.demo.planet import PLANET_COLLECTION
from marscope_stac.embed.run import embed_catalog
from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.raster import open_raster
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.batch import read_batch
from marscope_stac.tiles.plan import plan_tiles

pytestmark = pytest.mark.enable_socket


def _proxy(server: Nginx | StacApi, **kw: object) -> FaultProxy:
    return FaultProxy(("127.0.0.1", server.port), **kw)  # type: ignore[arg-type]


def test_a_503_on_a_collection_is_retried(nginx: Nginx) -> None:
    def collections(method: str, path: str) -> bool:
        return path.endswith("collection.json")

    proxy = _proxy(nginx, rate=1.0, kinds=("503",), budget=2, only=collections)
    try:
        sources = load_sources(f"{proxy.url}/demo/catalog.json")
    finally:
        proxy.stop()
    assert proxy.counts["503"] == 2 and len(sources.assets) == 2


def test_a_429_waits_as_retry_after_says(nginx: Nginx) -> None:
    proxy = _proxy(nginx, rate=1.0, kinds=("429",), budget=1, retry_after=1)
    try:
        t0 = time.monotonic()
        sources = load_sources(f"{proxy.url}/demo/catalog.json")
        waited = time.monotonic() - t0
    finally:
        proxy.stop()
    assert proxy.counts["429"] == 1 and len(sources.assets) == 2
    assert waited >= 1.0  # told to wait a second, and it did


def test_a_stalled_server_ends_in_one_line_not_a_hang(
    nginx: Nginx, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MARSCOPE_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("MARSCOPE_HTTP_RETRIES", "1")
    proxy = _proxy(nginx, rate=1.0, kinds=("stall",), stall=120)
    try:
        t0 = time.monotonic()
        r = CliRunner().invoke(cli, ["tiles", f"{proxy.url}/demo/catalog.json"])
        took = time.monotonic() - t0
    finally:
        proxy.stop()
    assert r.exit_code == 2, r.output
    assert (
        "marscope: error: cannot read http://127.0.0.1" in r.output and "Traceback" not in r.output
    )
    assert len(r.output.strip().splitlines()) == 1
    assert took < 30


def test_every_kind_of_fault_on_api_pages_loses_no_item(stac_api: StacApi) -> None:
    def pages(method: str, path: str) -> bool:
        return path.startswith("/search")

    proxy = _proxy(stac_api, rate=0.4, kinds=FAULTS, seed=3, only=pages, stall=30)
    try:
        sources = load_sources(proxy.url, collections=[PLANET_COLLECTION])
    finally:
        proxy.stop()
    assert len({a.item_id for a in sources.assets}) == len(sources.assets) == 200
    assert set(proxy.counts) == set(FAULTS), proxy.counts


def test_raster_faults_lose_no_cell_and_a_rerun_finishes_the_set(
    nginx: Nginx,
    demo_small: DemoCatalog,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # small uncached range requests, so a run makes more of them
    monkeypatch.setenv("CPL_VSIL_CURL_CHUNK_SIZE", "4096")
    monkeypatch.setenv("VSI_CACHE", "FALSE")
    monkeypatch.setenv("GDAL_INGESTED_BYTES_AT_OPEN", "16384")
    model = f"local-dir:{tiny_model_dir}"
    clean = embed_catalog(demo_small.root, tmp_path / "clean", model=model, progress=False)

    def rasters(method: str, path: str) -> bool:
        return path.endswith(".tif")

    proxy = _proxy(nginx, rate=0.6, kinds=FAULTS, seed=11, only=rasters, stall=30)
    out = tmp_path / "faulty"
    runs = []
    try:
        for _ in range(6):
            res = embed_catalog(f"{proxy.url}/demo/catalog.json", out, model=model, progress=False)
            runs.append(res)
            if not res.failed_cells:
                break
    finally:
        proxy.stop()
    assert not runs[-1].failed_cells, [len(r.failed_cells) for r in runs]
    assert set(proxy.counts) == set(FAULTS), proxy.counts  # every kind met, in turn
    # GDAL's own notes of each retry stay out of the log (marscope --debug shows them)
    assert "Retrying again" not in caplog.text
    a, b = clean.embedding_set.table(), runs[-1].embedding_set.table()
    assert len(np.unique(b.cell_index)) == len(b.cell_index)  # nothing twice
    oa, ob = np.argsort(a.cell_index), np.argsort(b.cell_index)
    np.testing.assert_array_equal(a.cell_index[oa], b.cell_index[ob])  # nothing lost
    np.testing.assert_array_equal(a.valid_fraction[oa], b.valid_fraction[ob])
    # the same tiles; a cell embedded in another batch may differ in float16's last place
    np.testing.assert_allclose(a.embedding[oa], b.embedding[ob], rtol=0, atol=1e-4)


def test_tiles_read_through_faults_are_the_local_pixels_or_marked_failed(
    nginx: Nginx, demo_small: DemoCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = parse_grid("lonlat:0.02")
    local = read_batch(plan_tiles(load_sources(demo_small.root), grid, 64))

    def rasters(method: str, path: str) -> bool:
        return path.endswith(".tif")

    faults: Counter[str] = Counter()
    for seed in range(4):  # a fresh address each round: nothing comes from GDAL's cache
        proxy = _proxy(nginx, rate=0.5, kinds=FAULTS, seed=seed, only=rasters, stall=30)
        try:
            url = f"{proxy.url}/demo/catalog.json"
            remote = read_batch(plan_tiles(load_sources(url), grid, 64))
        finally:
            proxy.stop()
        faults += proxy.counts
        failed = {c for c, _ in remote.errors}
        np.testing.assert_array_equal(local.cells, remote.cells)
        ok = np.array([c not in failed for c in remote.cells])
        # the same pixels (the cell-by-cell path a failed window falls back to rounds apart)
        np.testing.assert_allclose(local.pixels[ok], remote.pixels[ok], rtol=0, atol=1e-5)
        assert not remote.valid[~ok].any() and not remote.pixels[~ok].any()  # never partial
    assert set(faults) == set(FAULTS), faults


def test_a_header_cut_short_is_read_again_not_trusted(nginx: Nginx, planet_small: Path) -> None:
    # cut short three times in a row, a small TIFF's answer makes GDAL open it without its
    # CRS, saying so only in a warning: such an open is refused and the header read again
    tif = next(planet_small.rglob("*.tif"))
    proxy = _proxy(nginx, rate=1.0, kinds=("truncate",), budget=3)
    try:
        with open_raster(f"{proxy.url}/planet/{tif.relative_to(planet_small)}") as ds:
            crs, bounds = ds.crs, ds.bounds
    finally:
        proxy.stop()
    assert proxy.counts["truncate"] == 3
    with rasterio.open(tif) as ds:
        assert (crs, bounds) == (ds.crs, ds.bounds)
