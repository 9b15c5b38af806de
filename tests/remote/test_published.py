"""A set someone else published, queried by URL: over HTTP (nginx) and S3 (moto), with faults."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _faultproxy import FAULTS, FaultProxy
from _services import MotoS3, Nginx, environment
from click.testing import CliRunner

from marscope_stac.cli import cli
from marscope_stac.core.errors import CatalogError, ConfigError, DataError
from marscope_stac.datasets.demo import DemoCatalog
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.index import published
from marscope_stac.index.published import open_published_set
from marscope_stac.products.write import QueryProduct
from marscope_stac.query.scoring import QuerySpec
from marscope_stac.stac.validation import validate_catalog

pytestmark = pytest.mark.enable_socket

QUERY = QuerySpec(text=["impact craters"])


@pytest.fixture(scope="module")
def products(
    demo_small: DemoCatalog, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A products catalog holding one embedding set (the tiny model over the demo world), in
    a folder beside the catalog it was made from, as a publisher would serve them."""
    base = tmp_path_factory.mktemp("published")
    shutil.copytree(demo_small.root, base / "demo")
    out = base / "products"
    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(base / "demo", out, model=model, progress=False)
    return out, model


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MARSCOPE_CACHE", str(cache))
    return cache


def _set_item(out: Path) -> str:
    """The set item's path inside the products folder."""
    (item,) = [p for p in (out / "embeddings").glob("*/*.json") if p.stem == p.parent.name]
    return item.relative_to(out.parent).as_posix()


def _served(web_root: Path, out: Path, name: str) -> None:
    """Put ``out``'s parent folder in the web root as ``name``."""
    link = web_root / name
    if not link.exists():
        link.symlink_to(out.parent)


def _probability(product: QueryProduct) -> np.ndarray:
    with rasterio.open(product.assets["probability"]) as src:
        return src.read(1)


def test_a_set_published_over_http_answers_as_the_local_set_does(
    nginx: Nginx, web_root: Path, products: tuple[Path, str], tmp_path: Path, _own_cache: Path
) -> None:
    out, model = products
    _served(web_root, out, "pub-http")
    proxy = FaultProxy(("127.0.0.1", nginx.port), delay=0.01)
    try:
        url = f"{proxy.url}/pub-http/{_set_item(out)}"
        remote = QueryEngine.open(tmp_path / "p", url, model=model)
        fetched = proxy.requests
        got = remote.query(QUERY)
        local = QueryEngine.open(
            tmp_path / "q", out / "embeddings" / remote.set.root.name, model=model
        )
        want = local.query(QUERY)
        assert got.query_id == want.query_id  # the same product, whichever way the set was reached
        np.testing.assert_array_equal(_probability(got), _probability(want))
        # fetched: the item, the manifest and the five scoring arrays; never the GeoParquet
        # or the FAISS index
        names = {p.rsplit("/", 1)[-1] for p in proxy.paths}
        assert "embeddings.parquet" not in names and "index.faiss" not in names
        assert {"manifest.json", "vectors.npy", "vectors-int8.npy", "cells.npy"} <= names
        # the next open reads the item again and nothing else
        proxy.reset_counts()
        again = QueryEngine.open(tmp_path / "p", url, model=model)
        assert proxy.requests == 1 and again.set.root == remote.set.root
        assert fetched > 1
    finally:
        proxy.stop()
    item = json.loads(Path(got.item_path).read_text())
    lineage = [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"]
    assert lineage[0] == url  # the published set, then its model and sources, all by URL
    assert len(lineage) > 2 and all(h.startswith(proxy.url) for h in lineage)
    validate_catalog(tmp_path / "p")  # a publishable catalog on its own


def test_a_collection_url_and_the_cli_reach_the_same_set(
    nginx: Nginx, web_root: Path, products: tuple[Path, str], tmp_path: Path
) -> None:
    out, model = products
    _served(web_root, out, "pub-cli")
    item = _set_item(out)
    collection = f"{nginx.url}/pub-cli/{item.rsplit('/', 1)[0]}/collection.json"
    args = ["query", "impact craters", "--embeddings", collection, "--model", model]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "query impact-craters-" in result.output


def test_faults_while_a_set_is_fetched_lose_nothing(
    nginx: Nginx, web_root: Path, products: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _model = products
    _served(web_root, out, "pub-faults")
    monkeypatch.setattr(published, "RANGE_BYTES", 1024)  # many ranges: many faults
    proxy = FaultProxy(
        ("127.0.0.1", nginx.port),
        rate=0.3,
        retry_after=0,
        stall=30,
        budget=25,
        seed=3,
        only=lambda method, path: path.endswith(".npy"),
    )
    try:
        es = open_published_set(f"{proxy.url}/pub-faults/{_set_item(out)}")
    finally:
        proxy.stop()
    assert proxy.counts == dict.fromkeys(FAULTS, 5)  # every kind, five times
    local = out / "embeddings" / es.root.name
    for name in published.SET_ASSETS.values():
        assert (es.root / name).read_bytes() == (local / name).read_bytes(), name
    assert not list(es.root.glob(".*.part*"))


def test_an_interrupted_fetch_resumes_where_it_stopped(
    nginx: Nginx, web_root: Path, products: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _model = products
    _served(web_root, out, "pub-resume")
    monkeypatch.setattr(published, "RANGE_BYTES", 1024)
    monkeypatch.setenv("MARSCOPE_HTTP_RETRIES", "0")
    proxy = FaultProxy(
        ("127.0.0.1", nginx.port),
        rate=0.05,
        kinds=("503",),
        seed=1,
        only=lambda method, path: path.endswith("/vectors.npy"),
    )
    url = f"{proxy.url}/pub-resume/{_set_item(out)}"
    try:
        with pytest.raises(CatalogError, match="503"):
            open_published_set(url)
        first = proxy.paths.copy()
        proxy.set(rate=0.0)
        proxy.reset_counts()
        es = open_published_set(url)
    finally:
        proxy.stop()
    size = (out / "embeddings" / es.root.name / "vectors.npy").stat().st_size
    ranges = -(-size // 1024)
    vectors = [p for p in proxy.paths if p.endswith("/vectors.npy")]
    assert first and vectors
    assert proxy.paths[vectors[0]] < ranges  # only what the first try did not finish
    np.testing.assert_array_equal(
        np.load(es.root / "vectors.npy"), np.load(out / "embeddings" / es.root.name / "vectors.npy")
    )


def test_a_damaged_file_is_refused_and_nothing_half_fetched_is_kept(
    nginx: Nginx, web_root: Path, products: tuple[Path, str], tmp_path: Path
) -> None:
    out, _model = products
    copy = tmp_path / "www" / "products"
    shutil.copytree(out, copy)
    item = _set_item(copy)
    vectors = (copy.parent / item).parent / "vectors-int8.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    vectors.write_bytes(bytes(data))
    _served(web_root, copy, "pub-damaged")
    with pytest.raises(DataError, match=r"vectors-int8\.npy does not match its file:checksum"):
        open_published_set(f"{nginx.url}/pub-damaged/{item}")
    (folder,) = (Path(published.cache_folder()) / "sets").glob("*/*")
    assert not (folder / "vectors-int8.npy").exists() and not list(folder.glob(".*part*"))
    assert not (folder / "published.json").exists()


def test_a_cached_set_answers_when_its_server_is_gone(
    nginx: Nginx,
    web_root: Path,
    products: tuple[Path, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out, model = products
    _served(web_root, out, "pub-offline")
    proxy = FaultProxy(("127.0.0.1", nginx.port))
    url = f"{proxy.url}/pub-offline/{_set_item(out)}"
    try:
        first = open_published_set(url)
    finally:
        proxy.stop()
    with caplog.at_level(logging.WARNING):
        engine = QueryEngine.open(tmp_path / "p", url, model=model)
    assert engine.set.root == first.root
    assert "using the copy of the set cached" in caplog.text
    assert engine.query(QUERY).scored is not None


def test_a_url_that_is_no_embedding_set_says_so(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not the STAC item of an embedding set"):
        open_published_set(f"{nginx.url}/demo/demo-ctx/ctx-demo-r0c0/ctx-demo-r0c0.json")
    with pytest.raises(ConfigError, match="holds 0 items"):
        open_published_set(f"{nginx.url}/demo/catalog.json")
    args = ["query", "x", "--embeddings", f"{nginx.url}/nothing.json", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "404" in lines[0], result.output


def test_a_set_in_a_bucket_is_queried_and_validated_by_its_s3_url(
    moto: MotoS3, products: tuple[Path, str], tmp_path: Path
) -> None:
    out, model = products
    base = moto.upload_folder(out.parent, "mars-sets")
    url = base + _set_item(out)
    with environment(**moto.env):
        got = QueryEngine.open(tmp_path / "p", url, model=model).query(QUERY)
        report = validate_catalog(base + "products/catalog.json")
        with pytest.raises(CatalogError, match=r"s3://mars-sets/nothing/catalog\.json"):
            validate_catalog(base + "nothing/")
    assert report.objects >= 3
    item = json.loads(Path(got.item_path).read_text())
    lineage = [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"]
    assert lineage[0] == url and all(h.startswith("s3://mars-sets/") for h in lineage)
