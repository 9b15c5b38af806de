"""Static catalogs and COGs over HTTP (nginx, range requests) and S3 (moto): same embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _faultproxy import FaultProxy
from _services import MotoS3, Nginx, environment

from marscope_stac.core.errors import CatalogError
from marscope_stac.datasets.demo import DemoCatalog
from marscope_stac.embed.run import EmbedResult, embed_catalog
from marscope_stac.stac.read import load_sources

pytestmark = pytest.mark.enable_socket


@pytest.fixture(scope="module")
def local_run(
    demo_small: DemoCatalog, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> EmbedResult:
    out = tmp_path_factory.mktemp("local")
    return embed_catalog(demo_small.root, out, model=f"local-dir:{tiny_model_dir}", progress=False)


def _same(a: EmbedResult, b: EmbedResult) -> None:
    ta, tb = a.embedding_set.table(), b.embedding_set.table()
    assert b.cells == a.cells and not b.failed_cells
    np.testing.assert_array_equal(ta.cell_index, tb.cell_index)
    np.testing.assert_array_equal(ta.embedding, tb.embedding)
    np.testing.assert_array_equal(ta.valid_fraction, tb.valid_fraction)


def _derived_from(res: EmbedResult) -> list[str]:
    item = json.loads((res.item_path or Path()).read_text())
    return [lk["href"] for lk in item["links"] if lk["rel"] == "derived_from"]


def test_a_catalog_over_http_embeds_as_local_files_do_in_few_requests(
    nginx: Nginx, local_run: EmbedResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    proxy = FaultProxy(("127.0.0.1", nginx.port))
    try:
        url = f"{proxy.url}/demo/catalog.json"
        res = embed_catalog(
            url, tmp_path / "p", model=f"local-dir:{tiny_model_dir}", progress=False
        )
    finally:
        proxy.stop()
    _same(local_run, res)
    rasters = sum(n for path, n in proxy.paths.items() if path.endswith(".tif"))
    assert 0 < rasters <= 1.5 * res.cells  # about one range request per tile at most
    assert all(h.startswith(proxy.url) for h in _derived_from(res))
    # the run records what its rasters cost: in its summary and in the set's item
    assert res.network is not None and res.network["requests"] == rasters
    assert res.network["tiles"] == res.cells and 0 < res.network["bytes"] <= proxy.bytes_out
    assert "requests and" in res.summary()
    item = json.loads((res.item_path or Path()).read_text())
    assert item["properties"]["marscope:network"] == res.network
    assert local_run.network is None  # local files: nothing to record


def test_reading_processes_count_their_requests_too(
    nginx: Nginx, local_run: EmbedResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from marscope_stac.embed import ComputeOptions

    proxy = FaultProxy(("127.0.0.1", nginx.port))
    try:
        res = embed_catalog(
            f"{proxy.url}/demo/catalog.json",
            tmp_path / "p",
            model=f"local-dir:{tiny_model_dir}",
            compute=ComputeOptions(read_processes=2),
            progress=False,
        )
    finally:
        proxy.stop()
    _same(local_run, res)
    rasters = sum(n for path, n in proxy.paths.items() if path.endswith(".tif"))
    assert res.network is not None and res.network["requests"] == rasters


def test_cogs_over_https_are_read_over_http2(
    web_root: Path, local_run: EmbedResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    server = Nginx(web_root, tls=True)
    try:
        # rasterio's wheels hand GDAL_CURL_CA_BUNDLE to GDAL; requests reads its own variable
        trust = {"GDAL_CURL_CA_BUNDLE": str(server.ca), "REQUESTS_CA_BUNDLE": str(server.ca)}
        with environment(**trust):
            res = embed_catalog(
                f"{server.url}/demo/catalog.json",
                tmp_path / "p",
                model=f"local-dir:{tiny_model_dir}",
                progress=False,
            )
        seen = server.requests_seen()
    finally:
        server.stop()
    _same(local_run, res)
    rasters = [proto for proto, path in seen if path.endswith(".tif")]
    assert rasters and set(rasters) == {"HTTP/2.0"}  # GDAL_HTTP_VERSION=2: ALPN chose h2


def test_a_catalog_in_s3_embeds_with_credentials_which_stay_out_of_products(
    moto: MotoS3, s3_demo: str, local_run: EmbedResult, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with environment(**moto.env):
        res = embed_catalog(
            s3_demo, tmp_path / "p", model=f"local-dir:{tiny_model_dir}", progress=False
        )
    _same(local_run, res)
    assert all(h.startswith("s3://mars-demo/world/") for h in _derived_from(res))
    secret = moto.env["AWS_SECRET_ACCESS_KEY"].encode()
    key_id = moto.env["AWS_ACCESS_KEY_ID"].encode()
    for f in (tmp_path / "p").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret not in data and key_id not in data, f


def test_a_public_bucket_reads_unsigned_and_a_private_one_says_why_not(
    moto: MotoS3, demo_small: DemoCatalog
) -> None:
    url = moto.upload_folder(demo_small.root, "mars-public") + "catalog.json"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::mars-public/*",
            }
        ],
    }
    moto.client().put_bucket_policy(Bucket="mars-public", Policy=json.dumps(policy))
    anonymous = {"AWS_ENDPOINT_URL_S3": moto.endpoint, "AWS_NO_SIGN_REQUEST": "YES"}
    with environment(**anonymous):
        sources = load_sources(url)
    assert {a.item_id for a in sources.assets} == {"ctx-demo-r0c0", "ctx-demo-r0c1"}
    private = moto.upload_folder(demo_small.root, "mars-private") + "catalog.json"
    with (
        environment(**anonymous),
        pytest.raises(CatalogError, match=r"cannot read s3://.*403|Denied"),
    ):
        load_sources(private)


def test_requester_pays_is_asked_for_on_every_s3_request(
    moto: MotoS3, s3_demo: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # moto does not charge anyone, so what is checked is that every request says who pays:
    # boto3 for the STAC documents and GDAL for the rasters
    proxy = FaultProxy(("127.0.0.1", moto.port), watch=("x-amz-request-payer",))
    env = {**moto.env, "AWS_ENDPOINT_URL_S3": proxy.url, "AWS_REQUEST_PAYER": "requester"}
    try:
        with environment(**env):
            res = embed_catalog(
                s3_demo, tmp_path / "p", model=f"local-dir:{tiny_model_dir}", progress=False
            )
    finally:
        proxy.stop()
    assert res.cells and not res.failed_cells
    rasters = sum(n for path, n in proxy.paths.items() if path.endswith(".tif"))
    assert rasters > 0 and proxy.requests > rasters
    assert proxy.watched == {("x-amz-request-payer", "requester"): proxy.requests}
