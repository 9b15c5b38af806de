"""Queries scanned on a Dask cluster of real processes give the single process's products."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from _services import DaskCluster
from _sets import synthetic_set
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.core.errors import ConfigError
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.slow]


def _files(folder: Path) -> tuple[np.ndarray, list[tuple[object, ...]]]:
    with rasterio.open(folder / "probability.tif") as src:
        raster = src.read(1)
    table = pq.read_table(folder / "detections.parquet")
    columns = [table.column(c).to_pylist() for c in table.column_names]
    return raster, sorted(zip(*columns, strict=True))


def test_a_cluster_scan_gives_the_same_products(
    demo_small, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(demo_small.root, tmp_path / "one", model=model, progress=False)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    cm = load_model(model, device="cpu")
    cluster = DaskCluster(workers=2, memory_limit="2GiB")
    try:
        for scoring in ("exact", "int8"):  # int8: the cluster scans the int8 copies
            local = QueryEngine.open(tmp_path / "one", clip_model=cm, scoring=scoring)
            remote = QueryEngine.open(
                tmp_path / "two",
                clip_model=cm,
                scoring=scoring,
                scheduler_address=cluster.address,
            )
            assert remote.cluster is not None and len(remote.cluster.ranges) >= 1
            for spec in (QuerySpec(text=["impact craters"]), QuerySpec(text=["dune fields"])):
                a = local.query(spec, threshold=0.4)
                b = remote.query(spec, threshold=0.4)
                assert a.query_id == b.query_id  # the same request, the same product id
                assert a.scored.scoring == b.scored.scoring == scoring
                assert a.scored.exact_rows == b.scored.exact_rows
                np.testing.assert_array_equal(a.scored.scores, b.scored.scores)  # to the bit
                raster_a, det_a = _files(a.folder)
                raster_b, det_b = _files(b.folder)
                np.testing.assert_array_equal(raster_a, raster_b)
                assert det_a == det_b
            remote.cluster.close()
        # the command line takes the address too
        done = CliRunner().invoke(
            cli,
            ["query", "yardangs", "--out", str(tmp_path / "two"), "--model", model,
             "--scheduler-address", cluster.address],
        )  # fmt: skip
        assert done.exit_code == 0, done.output
    finally:
        cluster.stop()
    item = json.loads(
        next((tmp_path / "two" / "queries").glob("yardangs-*/yardangs-*.json")).read_text()
    )
    assert item["properties"]["marscope:scoring"] == "exact"


def test_int8_scans_on_the_cluster_give_the_same_scores_and_products(tmp_path: Path) -> None:
    es = synthetic_set(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    cluster = DaskCluster(workers=2, memory_limit="1GiB")
    try:
        local = QueryEngine(es, tmp_path / "one", model="synthetic", scoring="int8")
        remote = QueryEngine(
            tmp_path / "two" / "embeddings" / "synthetic",
            tmp_path / "two",
            model="synthetic",
            scoring="int8",
            scheduler_address=cluster.address,
        )
        assert remote.cluster is not None
        assert len(remote.cluster.ranges) >= 4  # several tasks, each on its own rows
        for threshold in (0.5, 0.9):
            a = local.query(QuerySpec(text=["target"]), threshold=threshold)
            b = remote.query(QuerySpec(text=["target"]), threshold=threshold)
            assert b.scored.scoring == "int8" and 0 < b.scored.exact_rows < len(es.scoring_arrays())
            assert a.scored.exact_rows == b.scored.exact_rows
            np.testing.assert_array_equal(a.scored.scores, b.scored.scores)  # to the bit
            np.testing.assert_array_equal(a.scored.probability, b.scored.probability)
            raster_a, det_a = _files(a.folder)
            raster_b, det_b = _files(b.folder)
            np.testing.assert_array_equal(raster_a, raster_b)
            assert det_a == det_b and det_a
        assert remote.cluster is not None
        remote.cluster.close()
    finally:
        cluster.stop()


def test_an_unreachable_scheduler_is_one_line(
    demo_small, tiny_model_dir: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from _services import free_port

    model = f"local-dir:{tiny_model_dir}"
    embed_catalog(demo_small.root, tmp_path, model=model, progress=False)
    cm = load_model(model, device="cpu")
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        QueryEngine.open(
            tmp_path, clip_model=cm, scheduler_address=f"tcp://127.0.0.1:{free_port()}"
        )
    idle = DaskCluster(workers=0)
    try:
        with pytest.raises(ConfigError, match="has no workers; start some with 'dask worker"):
            QueryEngine.open(tmp_path, clip_model=cm, scheduler_address=idle.address)
    finally:
        idle.stop()
