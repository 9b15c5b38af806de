"""Searching a real STAC API (stac-fastapi-pgstac on PostgreSQL + pgstac) for imagery."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pystac
import pytest
from _faultproxy import FaultProxy
from _services import StacApi
from click.testing import CliRunner

from marscope_stac.cli import cli
from marscope_stac.core.errors import CatalogError
from marscope_stac.datasets.demo.planet import PLANET_COLLECTION
from marscope_stac.embed import CellSelection
from marscope_stac.embed.run import embed_catalog
from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.plan import plan_tiles

pytestmark = pytest.mark.enable_socket


def _planet_items(planet_small: Path) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(planet_small / "catalog.json"))
    return list(cat.get_items(recursive=True))


def test_search_pages_through_the_whole_result(stac_api: StacApi, planet_small: Path) -> None:
    port = int(stac_api.url.rsplit(":", 1)[1])
    with_proxy = FaultProxy(("127.0.0.1", port))
    try:
        sources = load_sources(with_proxy.url, collections=[PLANET_COLLECTION])
    finally:
        with_proxy.stop()
    expected = {i.id for i in _planet_items(planet_small)}
    assert {a.item_id for a in sources.assets} == expected and len(expected) == 200
    pages = with_proxy.paths["/search"]
    assert (
        pages >= len(expected) // int(os.environ["MARSCOPE_STAC_PAGE_SIZE"]) >= 5
    )  # every page was fetched, through next links
    # every raster's header came over HTTP from nginx: the footprints are the tiles
    tile = next(a for a in sources.assets if a.item_id == "planet-e000p0-n00p0")
    assert tile.href.startswith("http://") and np.allclose(tile.lonlat_bounds, (0, 0, 4, 4))
    plan = plan_tiles(sources, parse_grid("lonlat:2"), 16)
    assert len(plan) == 40 * 20  # 80 x 40 degrees in 2-degree cells


def test_bbox_datetime_collection_and_cql2_filters(stac_api: StacApi, planet_small: Path) -> None:
    items = _planet_items(planet_small)
    in_box = load_sources(stac_api.url, collections=[PLANET_COLLECTION], bbox=[0.5, 0.5, 7.5, 3])
    assert sorted(a.item_id for a in in_box.assets) == [
        "planet-e000p0-n00p0",
        "planet-e004p0-n00p0",
    ]

    start, end = dt.datetime(2010, 1, 1, tzinfo=dt.UTC), dt.datetime(2012, 1, 1, tzinfo=dt.UTC)
    when = f"{start.isoformat().replace('+00:00', 'Z')}/{end.isoformat().replace('+00:00', 'Z')}"
    in_time = load_sources(stac_api.url, collections=[PLANET_COLLECTION], datetime=when)
    expected = {i.id for i in items if i.datetime is not None and start <= i.datetime <= end}
    assert expected and {a.item_id for a in in_time.assets} == expected

    dusty = load_sources(stac_api.url, cql2='"marscope:dust" < 10')
    expected = {i.id for i in items if i.properties["marscope:dust"] < 10}
    assert expected and {a.item_id for a in dusty.assets} == expected

    demo = load_sources(stac_api.url, collections=["demo-ctx"])
    assert {a.item_id for a in demo.assets} == {"ctx-demo-r0c0", "ctx-demo-r0c1"}
    with pytest.raises(CatalogError, match=r"no collection nowhere|no STAC item"):
        load_sources(stac_api.url, collections=["nowhere"])


def test_a_cql2_filter_needs_an_api(planet_small: Path) -> None:
    with pytest.raises(CatalogError, match="CQL2 filter needs a STAC API"):
        load_sources(planet_small, cql2='"marscope:dust" < 10')


def test_embedding_from_the_api_equals_embedding_local_files(
    stac_api: StacApi, demo_small: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = f"local-dir:{tiny_model_dir}"
    local = embed_catalog(demo_small.root, tmp_path / "a", model=model, progress=False)  # type: ignore[attr-defined]
    demo_only = CellSelection(collections=["demo-ctx"])
    remote = embed_catalog(
        stac_api.url, tmp_path / "b", model=model, select=demo_only, progress=False
    )
    a, b = local.embedding_set.table(), remote.embedding_set.table()
    assert remote.cells == local.cells == 200 and not remote.failed_cells
    np.testing.assert_array_equal(a.cell_index, b.cell_index)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    # the set's item names its sources by their URLs, so it can be published on its own
    item = json.loads((remote.item_path or Path()).read_text())
    hrefs = [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"]
    assert hrefs and all(h.startswith("http://127.0.0.1") for h in hrefs), hrefs


def test_embed_command_takes_an_api_with_filters(
    stac_api: StacApi, tiny_model_dir: Path, tmp_path: Path
) -> None:
    args = ["embed", stac_api.url, "--out", str(tmp_path / "p"), "--model"]
    args += [f"local-dir:{tiny_model_dir}", "--collection", PLANET_COLLECTION, "--grid", "lonlat:2"]
    args += ["--datetime", "2010-01-01T00:00:00Z/..", "--filter", '"marscope:dust" < 30']
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "cells" in r.output
