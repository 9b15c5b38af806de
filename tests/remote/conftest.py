"""Real servers holding the test catalogs: nginx (HTTP), moto (S3), stac-fastapi-pgstac.

Started once per test session on free ports of 127.0.0.1 (``make services`` installs them; a
missing one fails the tests that need it, never skips them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _services import MotoS3, Nginx, Postgres, StacApi, api_documents, load_pgstac

from marscope_stac.datasets.demo import DemoCatalog
from marscope_stac.datasets.demo.planet import build_planet_catalog

PLANET_EXTENT = (-40.0, -20.0, 40.0, 20.0)  # 4-degree tiles: 20 x 10 = 200 items
API_PAGE = 25  # items per page of a search: the planet slice takes 8 pages


@pytest.fixture(autouse=True)
def _quick_network_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short timeouts and backoff so fault tests take seconds (the policy stays the same)."""
    monkeypatch.setenv("MARSCOPE_HTTP_TIMEOUT", "3")
    monkeypatch.setenv("MARSCOPE_HTTP_BACKOFF", "0.05")
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "3")
    monkeypatch.setenv("GDAL_HTTP_LOW_SPEED_TIME", "2")
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")
    monkeypatch.setenv("MARSCOPE_STAC_PAGE_SIZE", str(API_PAGE))


@pytest.fixture(scope="session")
def planet_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-item slice of the planet-sized catalog (4-degree tiles over 80 x 40 degrees)."""
    out = tmp_path_factory.mktemp("planet") / "catalog"
    return build_planet_catalog(out, extent=PLANET_EXTENT, tile_px=16, progress=False).parent


@pytest.fixture(scope="session")
def web_root(
    tmp_path_factory: pytest.TempPathFactory, demo_small: DemoCatalog, planet_small: Path
) -> Path:
    """One folder served over HTTP: ``demo/`` and ``planet/``."""
    root = tmp_path_factory.mktemp("www")
    (root / "demo").symlink_to(demo_small.root)
    (root / "planet").symlink_to(planet_small)
    return root


@pytest.fixture(scope="session")
def nginx(web_root: Path) -> Iterator[Nginx]:
    server = Nginx(web_root)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_demo(moto: MotoS3, demo_small: DemoCatalog) -> str:
    """The demo catalog in a bucket: its ``catalog.json`` URL (s3://)."""
    return moto.upload_folder(demo_small.root, "mars-demo", "world/") + "catalog.json"


@pytest.fixture(scope="session")
def stac_api(nginx: Nginx, demo_small: DemoCatalog, planet_small: Path) -> Iterator[StacApi]:
    """stac-fastapi-pgstac over PostgreSQL + pgstac, holding the demo world and the planet
    slice; every asset is a COG served by ``nginx``."""
    pg = Postgres()
    try:
        colls, items = [], []
        for folder, name in ((demo_small.root, "demo"), (planet_small, "planet")):
            c, i = api_documents(folder, nginx.url, name)
            colls += c
            items += i
        load_pgstac(pg, colls, items)
        api = StacApi(pg)
        yield api
        api.stop()
    finally:
        pg.stop()
