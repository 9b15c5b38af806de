from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
from _faults import interrupting
from _rasters import catalog_of, pattern, stac_item, write_geotiff
from click.testing import CliRunner

import marscope_stac.embed.compute as embed_compute
import marscope_stac.embed.resume as embed_resume
import marscope_stac.embed.run as embed_mod
from marscope_stac.cli.main import cli
from marscope_stac.core.errors import OutputError
from marscope_stac.embed import CellSelection, ComputeOptions
from marscope_stac.embed.run import embed_catalog
from marscope_stac.index.faiss_index import read_faiss_index
from marscope_stac.index.table import read_embeddings
from marscope_stac.stac.validation import validate_catalog

SMALL = [150.0, -5.0, 150.05, -4.95]
"""A bbox of a few demo cells."""


def _model(tiny_model_dir: Path) -> str:
    return f"local-dir:{tiny_model_dir}"


def _embed(source: Path, out: Path, model_dir: Path, **options: Any) -> Any:
    """``embed_catalog`` with the test model, no progress bar; options of either group."""
    select = {
        k: options.pop(k) for k in ("bbox", "asset", "collections", "min_valid") if k in options
    }
    compute = {
        k: options.pop(k)
        for k in ("batch_size", "workers", "scheduler_address", "read_processes", "device")
        if k in options
    }
    return embed_catalog(
        source,
        out,
        model=_model(model_dir),
        progress=False,
        select=CellSelection(**select),
        compute=ComputeOptions(**compute),
        **options,
    )


def test_embed_writes_valid_products(demo_root: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "products"
    res = _embed(demo_root, out, tiny_model_dir)
    assert res.cells == 200 and res.embedded_now == 200 and not res.failed_cells
    # the whole output catalog validates offline (core + extensions)
    report = validate_catalog(out)
    assert report.objects >= 5
    item = json.loads(res.item_path.read_text())  # type: ignore[union-attr]
    assert "embeddings" in item["assets"] and "index" in item["assets"]
    rels = {lk["rel"] for lk in item["links"]}
    assert {"derived_from", "emb:model", "collection", "root"} <= rels
    model_link = next(lk for lk in item["links"] if lk["rel"] == "emb:model")
    assert (res.item_path.parent / model_link["href"]).resolve().is_file()  # type: ignore[union-attr]
    # geopandas reads it with the Mars CRS intact
    gdf = gpd.read_parquet(res.embedding_set.parquet)
    assert gdf.crs is not None and gdf.crs.to_string() == "IAU_2015:49900"
    assert len(gdf) == 200 and gdf.cell_id.is_unique
    # the FAISS index returns, for a tile's own embedding, that tile first
    table = read_embeddings(res.embedding_set.parquet)
    index = read_faiss_index(res.embedding_set.index)
    _, found = index.search(table.embedding, 1)
    assert (found[:, 0] == np.arange(len(table))).mean() == 1.0
    np.testing.assert_allclose(np.linalg.norm(table.embedding, axis=1), 1.0, atol=2e-3)


def test_rerun_reuses_and_new_items_embed_only_new_cells(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "products"
    first = _embed(demo_root, out, tiny_model_dir, bbox=[150.0, -5.0, 150.2, -4.8])
    assert first.cells == 100
    full = _embed(demo_root, out, tiny_model_dir)
    assert full.cells == 200 and full.reused == 100 and full.embedded_now == 100
    again = _embed(demo_root, out, tiny_model_dir)
    assert again.embedded_now == 0 and again.reused == 200


def test_a_new_file_behind_the_same_item_is_embedded_again(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A resumed run must not reuse vectors of imagery that changed under the same item id."""
    import os

    copy = tmp_path / "demo"
    shutil.copytree(demo_root, copy)
    out = tmp_path / "products"
    assert _embed(copy, out, tiny_model_dir).embedded_now == 200
    a, b = sorted((copy / "demo-ctx").glob("*/*.tif"))[:2]
    swapped = a.read_bytes()
    a.write_bytes(b.read_bytes())  # another picture behind item a (same size: only mtime)
    b.write_bytes(swapped)
    for tif in (a, b):
        os.utime(tif, ns=(tif.stat().st_atime_ns, tif.stat().st_mtime_ns + 10**9))
    again = _embed(copy, out, tiny_model_dir)
    assert again.embedded_now == 200 and again.reused == 0  # both scenes embedded again
    assert _embed(copy, out, tiny_model_dir).reused == 200  # and then current


def test_rerun_over_overlapping_rasters_embeds_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # where two rasters overlap, a cell is read from the first (the second would only fill
    # holes): a rerun knows the cell is current, as it was planned from the same rasters
    from affine import Affine

    src = tmp_path / "input"
    items = []
    for name, west in (("a", 150.0), ("b", 150.2)):
        tif = write_geotiff(
            src / f"{name}.tif",
            pattern(200, 200, seed=len(items)),
            "IAU_2015:49900",
            Affine(0.002, 0, west, 0, -0.002, -4.6),
            nodata=0,
        )
        asset = {"img": {"href": str(tif), "roles": ["data"], "type": "image/tiff"}}
        items.append(stac_item(src, name, asset, bbox=[west, -5.0, west + 0.4, -4.6]))
    cat = catalog_of(src, items)
    ringed = tmp_path / "ringed"  # the same model, trained (it says) on tiles with context
    shutil.copytree(tiny_model_dir, ringed)
    cfg = json.loads((ringed / "open_clip_config.json").read_text())
    (ringed / "open_clip_config.json").write_text(
        json.dumps(cfg | {"marscope": {"tile_context": 1}})
    )
    for model in (tiny_model_dir, ringed):
        out = tmp_path / f"products-{model.name}"
        first = _embed(cat, out, model, grid="lonlat:0.02")
        assert first.cells == 600 and first.embedded_now == 600
        again = _embed(cat, out, model, grid="lonlat:0.02")
        assert (again.embedded_now, again.reused) == (0, 600), model.name


def test_kill_and_resume(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (embed_mod, embed_resume):  # the shard size, where it is read
        monkeypatch.setattr(module, "SHARD_CELLS", 16)
    ref = embed_catalog(
        demo_root,
        tmp_path / "ref",
        model=_model(tiny_model_dir),
        progress=False,
        publish=False,
        compute=ComputeOptions(batch_size=8),
    )
    out = tmp_path / "products"
    real = embed_compute.embed_task
    monkeypatch.setattr(embed_compute, "embed_task", interrupting(real, 12))
    with pytest.raises(KeyboardInterrupt):
        _embed(demo_root, out, tiny_model_dir, batch_size=8, workers=1)
    es_root = out / "embeddings" / ref.embedding_set.root.name
    written = sorted((es_root / "shards").glob("*.parquet"))
    assert 0 < len(written) < 13  # some shards done, not all
    monkeypatch.setattr(embed_compute, "embed_task", real)
    res = _embed(demo_root, out, tiny_model_dir, batch_size=8, workers=1)
    assert res.reused > 0 and res.embedded_now + res.reused == 200
    a, b = read_embeddings(res.embedding_set.parquet), read_embeddings(ref.embedding_set.parquet)
    assert len(np.unique(a.cell_index)) == len(a.cell_index) == 200  # no duplicates, none missing
    np.testing.assert_array_equal(a.cell_index, b.cell_index)
    np.testing.assert_allclose(a.embedding, b.embedding, atol=2e-3)


def test_a_stopped_run_leaves_a_published_set_as_it_was(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from marscope_stac.core.errors import ConfigError
    from marscope_stac.engine.engine import QueryEngine

    for module in (embed_mod, embed_resume):  # the shard size, where it is read
        monkeypatch.setattr(module, "SHARD_CELLS", 16)
    out = tmp_path / "products"
    first = _embed(demo_root, out, tiny_model_dir, bbox=SMALL, batch_size=8, workers=1)
    es = first.embedding_set
    manifest = es.manifest_path.read_bytes()
    real = embed_compute.embed_task
    monkeypatch.setattr(embed_compute, "embed_task", interrupting(real, 6))
    with pytest.raises(KeyboardInterrupt):  # the whole catalog now: stopped half-way
        _embed(demo_root, out, tiny_model_dir, batch_size=8, workers=1)
    assert es.progress_path.is_file() and es.manifest_path.read_bytes() == manifest
    assert not validate_catalog(out).problems  # the published item is still true
    model = f"local-dir:{tiny_model_dir}"
    assert len(QueryEngine.open(out, model=model).arrays) == first.cells
    monkeypatch.setattr(embed_compute, "embed_task", real)
    done = _embed(demo_root, out, tiny_model_dir, batch_size=8, workers=1)
    assert done.reused > 0 and done.cells == 200 and not es.progress_path.exists()
    assert not validate_catalog(out).problems
    # a first run stopped: the set is named unfinished, with the command that finishes it
    monkeypatch.setattr(embed_compute, "embed_task", interrupting(real, 6))
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        _embed(demo_root, fresh, tiny_model_dir, batch_size=8, workers=1, publish=False)
    with pytest.raises(ConfigError, match=r"unfinished .* run the same 'marscope embed' again"):
        QueryEngine.open(fresh, model=model)


def test_different_model_writes_separate_set_and_mismatch_refused(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "products"
    a = _embed(demo_root, out, tiny_model_dir, publish=False, bbox=[150.0, -5.0, 150.05, -4.95])
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    b = embed_catalog(
        demo_root,
        out,
        model=f"local-dir:{other}",
        progress=False,
        publish=False,
        select=CellSelection(bbox=[150.0, -5.0, 150.05, -4.95]),
    )
    assert a.embedding_set.root != b.embedding_set.root
    with pytest.raises(OutputError, match="different preprocessing"):
        _embed(demo_root, out, tiny_model_dir, publish=False, min_valid=0.9, bbox=SMALL)


def test_products_folder_that_is_not_a_catalog(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "holiday.jpg").write_text("x")
    with pytest.raises(OutputError, match="not a STAC catalog"):
        _embed(demo_root, out, tiny_model_dir, bbox=SMALL)


def test_corrupt_source_tile_is_recorded(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "demo"
    shutil.copytree(demo_root, copy)
    res0 = embed_catalog(
        copy, tmp_path / "p0", model=_model(tiny_model_dir), progress=False, publish=False
    )
    assert res0.cells == 200
    tif = next((copy / "demo-ctx").glob("*r0c1/*.tif"))
    data = bytearray(tif.read_bytes())
    data[len(data) // 2 :] = b"\0" * (len(data) - len(data) // 2)  # truncate the pixels
    tif.write_bytes(bytes(data))
    res = embed_catalog(copy, tmp_path / "p1", model=_model(tiny_model_dir), progress=False)
    assert res.failed_cells and res.cells < 200 and res.cells >= 100
    manifest = json.loads(res.embedding_set.manifest_path.read_text())
    assert manifest["failed_cells"] and manifest["complete"]
    assert validate_catalog(tmp_path / "p1").objects >= 5
    # once the file is mended, a rerun embeds that scene's cells again (its file changed:
    # the ones read before came from the damaged copy) and reuses the other scene's
    shutil.copy(demo_root / tif.relative_to(copy), tif)
    mended = embed_catalog(copy, tmp_path / "p1", model=_model(tiny_model_dir), progress=False)
    assert mended.cells == 200 and not mended.failed_cells
    assert (mended.embedded_now, mended.reused) == (100, 100)


@pytest.mark.enable_socket
@pytest.mark.slow
def test_local_cluster_matches_local_run(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    local = embed_catalog(
        demo_root, tmp_path / "local", model=_model(tiny_model_dir), progress=False, publish=False
    )
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        res = embed_catalog(
            demo_root,
            tmp_path / "cluster",
            model=_model(tiny_model_dir),
            progress=False,
            publish=False,
            compute=ComputeOptions(scheduler_address=cluster.scheduler_address, batch_size=32),
        )
    a = read_embeddings(local.embedding_set.parquet)
    b = read_embeddings(res.embedding_set.parquet)
    np.testing.assert_array_equal(a.cell_index, b.cell_index)
    np.testing.assert_allclose(a.embedding, b.embedding, atol=2e-3)


def test_reading_processes_match_local_run(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    local = _embed(demo_root, tmp_path / "local", tiny_model_dir, bbox=SMALL, publish=False)
    procs = _embed(
        demo_root,
        tmp_path / "procs",
        tiny_model_dir,
        bbox=SMALL,
        publish=False,
        read_processes=2,
        batch_size=4,
    )
    a = read_embeddings(local.embedding_set.parquet)
    b = read_embeddings(procs.embedding_set.parquet)
    np.testing.assert_array_equal(a.cell_index, b.cell_index)
    np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
    assert not list(Path("/dev/shm").glob(".marscope-tiles-*"))  # the pixel files are gone


def test_embed_cli(demo_root: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli,
        [
            "embed",
            str(demo_root),
            "--out",
            str(tmp_path / "p"),
            "--model",
            _model(tiny_model_dir),
            "--bbox",
            "150,-5,150.05,-4.95",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "embedding set" in r.output and "STAC item" in r.output
    r = CliRunner().invoke(
        cli,
        [
            "embed",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "p"),
            "--model",
            _model(tiny_model_dir),
        ],
    )
    assert r.exit_code == 2 and "does not exist" in r.output


def test_disk_full_is_a_clear_error(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import marscope_stac.index.table as table

    def full(path: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(table, "atomic_write_bytes", full)
    with pytest.raises(OutputError, match=r"No space left on device.*finished shards are kept"):
        embed_catalog(
            demo_root,
            tmp_path / "p",
            model=_model(tiny_model_dir),
            progress=False,
            select=CellSelection(bbox=[150.0, -5.0, 150.05, -4.95]),
        )


def test_equal_area_grid_end_to_end(demo_root: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    from marscope_stac.engine.engine import QueryEngine
    from marscope_stac.index.table import EmbeddingTable
    from marscope_stac.query.scoring import QuerySpec

    empty = EmbeddingTable(
        np.zeros(0, np.int64), np.zeros((0, 8), np.float32), np.zeros(0, np.float32), []
    )
    assert EmbeddingTable.concat([empty, empty]).embedding.shape == (0, 8)
    out = tmp_path / "p"
    res = embed_catalog(
        demo_root,
        out,
        model=_model(tiny_model_dir),
        grid="equal-area:1.2km",
        progress=False,
        compute=ComputeOptions(batch_size=16),
    )
    assert res.cells > 150
    prod = QueryEngine.open(out, model=_model(tiny_model_dir)).query(
        QuerySpec(text=["yardangs"]), threshold=0.0
    )
    assert prod.n_detections >= 1
    assert validate_catalog(out).objects >= 7


def test_a_model_trained_with_context_embeds_tiles_with_context(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from marscope_stac.core.errors import ModelError
    from marscope_stac.grid.grids import parse_grid
    from marscope_stac.models.loading import load_model
    from marscope_stac.stac.read import load_sources
    from marscope_stac.tiles.batch import read_batch
    from marscope_stac.tiles.plan import plan_tiles

    ringed = tmp_path / "ringed"
    shutil.copytree(tiny_model_dir, ringed)
    cfg_path = ringed / "open_clip_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps(cfg | {"marscope": {"tile_context": 1.0}}))
    cm = load_model(f"local-dir:{ringed}", device="cpu")
    assert cm.tile_context == 1.0 and cm.describe()["tile_context"] == 1.0
    res = _embed(demo_root, tmp_path / "p", ringed, grid="lonlat:0.02", bbox=SMALL)
    item = json.loads(res.item_path.read_text())  # type: ignore[union-attr]
    assert item["properties"]["marscope:tile_context"] == 1.0
    # the stored vectors are those of tiles that show the cell and its neighbours
    sources = load_sources(demo_root)
    plan = plan_tiles(sources, parse_grid("lonlat:0.02"), cm.image_size, bbox=SMALL, context=1)
    tiles = read_batch(plan)
    table = read_embeddings(res.embedding_set.parquet)
    order = np.argsort(table.cell_index)
    np.testing.assert_array_equal(table.cell_index[order], tiles.cells)
    want = cm.encode_images(tiles.pixels)
    np.testing.assert_allclose(table.embedding[order], want, atol=2e-3)
    plain = read_batch(plan_tiles(sources, parse_grid("lonlat:0.02"), cm.image_size, bbox=SMALL))
    assert not np.allclose(cm.encode_images(plain.pixels), want, atol=2e-3)
    # the same weights without context (another folder) write a set of their own
    plain_res = _embed(demo_root, tmp_path / "p", tiny_model_dir, grid="lonlat:0.02", bbox=SMALL)
    assert plain_res.embedding_set.root != res.embedding_set.root
    plain_item = json.loads(plain_res.item_path.read_text())  # type: ignore[union-attr]
    assert plain_item["properties"]["marscope:tile_context"] == 0.0
    cfg_path.write_text(json.dumps(cfg | {"marscope": {"tile_context": "wide"}}))
    with pytest.raises(ModelError, match="tile_context"):
        load_model(f"local-dir:{ringed}", device="cpu")


def test_a_set_made_in_two_runs_links_the_sources_of_both(
    demo_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "products"
    _embed(demo_root, out, tiny_model_dir, bbox=[150.05, -4.95, 150.1, -4.9])  # scene r0c0
    res = _embed(demo_root, out, tiny_model_dir, bbox=[150.25, -4.95, 150.3, -4.9])  # r0c1
    item = json.loads(res.item_path.read_text())
    derived = {link["title"] for link in item["links"] if link["rel"] == "derived_from"}
    assert {"ctx-demo-r0c0", "ctx-demo-r0c1"} <= derived
    assert not validate_catalog(out).problems  # every lineage link resolves
