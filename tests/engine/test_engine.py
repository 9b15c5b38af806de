"""The query engine and the embedding set's scoring arrays."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from _sets import synthetic_set
from click.testing import CliRunner
from PIL import Image
from pmtiles.reader import MmapSource, Reader, all_tiles

from marscope_stac.cli import cli
from marscope_stac.core.errors import ConfigError, DataError
from marscope_stac.core.prompts import BACKGROUND_PROMPTS, MARSCOPE_TEMPLATES
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.engine.request import QueryRequest
from marscope_stac.engine.upgrade import upgrade_embedding_set
from marscope_stac.grid.grids import parse_grid
from marscope_stac.index.store import EmbeddingSet
from marscope_stac.index.texts import TextVectorCache
from marscope_stac.products.render import zoom_range
from marscope_stac.query.scoring import QuerySpec, score


@pytest.fixture(scope="module")
def embedded(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("engine") / "products"
    model = f"local-dir:{tiny_model_dir}"
    res = embed_catalog(demo_small.root, out, model=model, progress=False)
    return out, res.embedding_set, model


def test_scoring_arrays_agree_with_the_geoparquet(embedded) -> None:  # type: ignore[no-untyped-def]
    _out, es, _model = embedded
    table = es.table()
    arrays = es.scoring_arrays()
    assert isinstance(arrays.vectors, np.memmap)  # opened without a copy
    assert np.array_equal(arrays.cells, table.cell_index)
    assert np.array_equal(arrays.vectors, table.embedding)  # the same float16 values
    approx = arrays.int8.astype(np.float32) * arrays.scale[:, None]
    err = np.abs(approx - table.embedding.astype(np.float32)).max(axis=1)
    assert np.all(err <= arrays.scale / 2 + 1e-6)
    manifest = es.manifest()
    bg = manifest["scoring"]["background"]
    assert bg["prompts"] == list(BACKGROUND_PROMPTS) and bg["logit_scale"] > 0
    # the stored background term is log sum_b exp(t s_b) over the background prompt vectors
    cache = TextVectorCache(es, manifest["model"])
    vecs = np.vstack([cache.get(p, MARSCOPE_TEMPLATES) for p in BACKGROUND_PROMPTS])
    logits = bg["logit_scale"] * (table.embedding.astype(np.float32) @ vecs.T)
    want = np.log(np.exp(logits).sum(axis=1))
    assert np.allclose(arrays.background, want, atol=1e-4)
    assert (es.root / "manifest.json").is_file() and manifest["complete"] is True
    for name, info in manifest["scoring"]["files"].items():
        assert (es.root / name).stat().st_size == info["size"]
    # the arrays are assets of the embedding item, with sizes and checksums
    from marscope_stac.core.checksums import file_multihash

    item = json.loads((es.root / f"{es.root.name}.json").read_text())
    for key in ("cells", "vectors", "vectors-int8", "vectors-scale", "background", "manifest"):
        asset = item["assets"][key]
        path = es.root / asset["href"]
        assert asset["file:checksum"] == file_multihash(path), key
    assert item["assets"]["vectors"]["type"] == "application/x-npy"
    # publishing the model described it in the products, and wrote nothing into its folder
    assert not (Path(_model.split(":", 1)[1]) / "model.json").exists()


def test_engine_probability_is_the_softmax_against_background(embedded) -> None:  # type: ignore[no-untyped-def]
    out, es, model = embedded
    engine = QueryEngine.open(out, model=model)
    scored = engine.score(QuerySpec(text=["yardangs"]))
    emb = es.table().embedding.astype(np.float32)
    t = engine.logit_scale
    q = engine.text_vectors(["yardangs"], MARSCOPE_TEMPLATES)[0]
    bg = engine.text_vectors(list(BACKGROUND_PROMPTS), MARSCOPE_TEMPLATES)
    s = emb @ q
    num = np.exp(t * s)
    want = num / (num + np.exp(t * (emb @ bg.T)).sum(axis=1))
    assert np.allclose(scored.scores, s, atol=1e-6)
    assert np.allclose(scored.probability, want, atol=1e-5)


def test_cached_texts_need_no_model(embedded) -> None:  # type: ignore[no-untyped-def]
    out, _es, model = embedded
    QueryEngine.open(out, model=model).query(QuerySpec(text=["dune fields"]))
    engine = QueryEngine.open(out, model=model)
    product = engine.query(QuerySpec(text=["dune fields"]))
    assert engine._model is None  # answered from the set's text cache
    assert {"scores", "COG"} <= set(product.timings)
    assert all(0 < s < 600 for s in product.timings.values()), product.timings
    # and a fresh `marscope query` process never imports torch for it
    code = (
        "import sys; from marscope_stac.cli.main import cli; "
        f"cli.main(['query', 'dune fields', '--out', {str(out)!r}, '--model', {model!r}], "
        "standalone_mode=False); print('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "False", run.stdout
    assert product.query_id in run.stdout


def test_cli_and_engine_publish_the_same_products(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from marscope_stac.cli.main import cli

    out, _es, model = embedded
    engine = QueryEngine.open(out, model=model)
    a = engine.query(QuerySpec(text=["channels"]), threshold=0.3)
    with rasterio.open(a.assets["probability"]) as src:
        first = src.read(1)
    r = CliRunner().invoke(
        cli, ["query", "channels", "--out", str(out), "--model", model, "--threshold", "0.3"]
    )
    assert r.exit_code == 0, r.output
    assert a.query_id in r.output
    with rasterio.open(a.assets["probability"]) as src:
        assert np.array_equal(src.read(1), first)
    # the threshold is part of the id: another threshold is another product
    b = engine.query(QuerySpec(text=["channels"]), threshold=0.6)
    assert b.query_id != a.query_id and a.folder.is_dir()
    item = json.loads(b.item_path.read_text())
    assert item["properties"]["marscope:threshold"] == 0.6
    assert item["properties"]["marscope:scoring"] == "exact"


def test_old_sets_are_upgraded_by_an_explicit_step(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, es, model = embedded
    copy = tmp_path / "products"
    shutil.copytree(out, copy)
    old = EmbeddingSet(copy / "embeddings" / es.root.name)
    manifest = old.manifest()
    del manifest["scoring"]
    old.write_manifest(manifest)
    for name in ("cells.npy", "vectors.npy", "vectors-int8.npy", "vectors-scale.npy"):
        (old.root / name).unlink()
    (old.root / "background.npy").unlink()
    before = {p.name: p.read_bytes() for p in old.root.iterdir() if p.is_file()}
    # the engine never changes a set on disk: it names the step
    with pytest.raises(ConfigError, match=r"earlier version .*no scoring arrays.*marscope upgrade"):
        QueryEngine(old, copy, model=model)
    assert {p.name: p.read_bytes() for p in old.root.iterdir() if p.is_file()} == before
    r = CliRunner().invoke(cli, ["upgrade", str(old.root), "--model", "ViT-B-32"])
    assert r.exit_code == 2 and "was made with model" in r.output  # another model: refused
    assert {p.name: p.read_bytes() for p in old.root.iterdir() if p.is_file()} == before
    r = CliRunner().invoke(cli, ["upgrade", str(old.root), "--model", model])
    assert r.exit_code == 0, r.output
    assert "wrote its scoring arrays and background term" in r.output
    from marscope_stac.core.checksums import file_multihash
    from marscope_stac.stac.validation import validate_catalog

    item = json.loads((old.root / f"{old.root.name}.json").read_text())
    assert item["assets"]["manifest"]["file:checksum"] == file_multihash(old.manifest_path)
    assert item["assets"]["vectors"]["file:checksum"] == file_multihash(old.root / "vectors.npy")
    assert validate_catalog(copy).objects >= 5
    want = QueryEngine(es, out, model=model).score(QuerySpec(text=["yardangs"]))
    got = QueryEngine(old, copy, model=model).score(QuerySpec(text=["yardangs"]))
    assert np.array_equal(got.scores, want.scores)
    assert np.allclose(got.probability, want.probability, atol=1e-6)
    assert upgrade_embedding_set(old.root, model=model) == []  # once: now up to date
    with pytest.raises(ConfigError, match="is a products catalog; upgrade one of its"):
        upgrade_embedding_set(copy, model=model)  # the folder above its sets


def test_damaged_arrays_are_reported(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, es, model = embedded
    copy = tmp_path / "set"
    shutil.copytree(es.root, copy)
    with (copy / "vectors.npy").open("r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(DataError, match=r"vectors\.npy has changed"):
        QueryEngine(copy, out, model=model)
    # a missing array is rebuilt from the GeoParquet by the upgrade step, as for old sets
    (copy / "vectors.npy").unlink()
    with pytest.raises(ConfigError, match="marscope upgrade"):
        QueryEngine(copy, out, model=model)
    assert upgrade_embedding_set(copy, model=model) == ["scoring arrays", "background term"]
    engine = QueryEngine(copy, out, model=model)
    assert np.array_equal(engine.arrays.vectors, es.scoring_arrays().vectors)


def test_int8_scoring_keeps_the_top_and_the_detections_exact(tmp_path: Path) -> None:
    es = synthetic_set(tmp_path)
    arrays = es.scoring_arrays()
    q = TextVectorCache(es, es.manifest()["model"]).get("target", MARSCOPE_TEMPLATES)
    assert q is not None
    exact = score(arrays, q, 50.0, "exact")
    approx = score(arrays, q, 50.0, "int8", top_k=500, threshold=0.5)
    assert approx.scoring == "int8" and 500 <= approx.exact_rows < len(arrays) * 0.9
    top = exact.top(500)
    assert set(top.tolist()) == set(approx.top(500).tolist())
    assert np.array_equal(exact.scores[top], approx.scores[top])  # re-scored exactly
    assert np.array_equal(exact.probability >= 0.5, approx.probability >= 0.5)
    # elsewhere: within the rounding bound |ds| <= |q|_1 scale / 2, and every probability
    # within about half a storage step (0.002) of exact scoring
    ds = np.abs(exact.scores - approx.scores)
    assert np.all(ds <= np.abs(q).sum() * arrays.scale / 2 + 1e-6)
    assert np.abs(exact.probability - approx.probability).max() <= 0.0025
    # without re-scoring, int8 alone would differ somewhere in the top 500
    raw = (arrays.int8.astype(np.float32) @ q) * arrays.scale
    assert not np.array_equal(np.argsort(-raw)[:500], exact.top(500))


def test_one_query_scans_without_loading_the_compiled_kernel(tmp_path: Path) -> None:
    """`marscope query` of one text scans int8 with numpy; an engine for many compiles."""
    es = synthetic_set(tmp_path)
    code = (
        "import sys; from marscope_stac.cli.main import cli; "
        f"cli.main(['query', 'target', '--out', {str(tmp_path)!r}, '--embeddings', "
        f"{str(es.root)!r}, '--model', 'synthetic', '--scoring', 'int8', '--products', ''], "
        "standalone_mode=False); print('numba' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "False", run.stdout
    engine = QueryEngine(es, tmp_path, model="synthetic", scoring="int8", compiled=False)
    plain = engine.score(QuerySpec(text=["target"]))
    compiled = QueryEngine(es, tmp_path, model="synthetic", scoring="int8")
    fast = compiled.score(QuerySpec(text=["target"]))
    assert compiled.compiled and not engine.compiled
    # the same detections and best cells; elsewhere within float32 rounding
    assert np.array_equal(plain.probability >= 0.5, fast.probability >= 0.5)
    assert np.array_equal(plain.top(500), fast.top(500))
    np.testing.assert_allclose(plain.scores, fast.scores, rtol=0, atol=1e-5)


def test_engine_on_a_synthetic_planet(tmp_path: Path) -> None:
    es = synthetic_set(tmp_path)
    engine = QueryEngine(es, tmp_path, model="synthetic", scoring="int8")
    [product] = engine.answer(QueryRequest(texts=["target"], threshold=0.9))
    assert product.scored.scoring == "int8"
    with rasterio.open(product.folder / "probability.tif") as src:
        assert src.shape == (160, 360) and src.crs.to_string() == "IAU_2015:49900"
    # raster tiles: palette PNGs, two zooms beyond the grid's resolution, values at the
    # right place
    with (product.folder / "probability.pmtiles").open("rb") as fh:
        reader = Reader(MmapSource(fh))
        header = reader.header()
        tiles = dict(all_tiles(reader.get_bytes))
    zmin, base = zoom_range(1.0)
    assert (header["min_zoom"], header["max_zoom"]) == (zmin, base + 2)
    z = header["max_zoom"]
    png = Image.open(io.BytesIO(tiles[(z, 2**z // 2, 2**z // 2)]))
    assert png.mode == "P" and png.size == (256, 256)
    # the tile's south-east of (0, 0) corner pixel is cell (lon 0..1, lat -1..0)
    rgba = np.asarray(png.convert("RGBA"))
    cell = int(
        np.asarray(engine.arrays.rows_of(parse_grid("lonlat:1@80").locate([0.5], [-0.5])))[0]
    )
    p = float(product.scored.probability[cell])
    from marscope_stac.products.render import _lut

    want = _lut("magma")[round(round(p * 250) / 250 * 255)][:3]
    assert np.abs(rgba[1, 1, :3].astype(int) - want.astype(int)).max() <= 1
    # scores GeoParquet: every cell, its id, CRS
    scores = pq.read_table(product.folder / "scores.parquet")
    assert scores.num_rows == 57_600
    assert scores.column("cell_id")[0].as_py() == "lonlat:1@80:0:0"
    assert (
        b"IAU_2015" in scores.schema.metadata[b"geo"] or b"49900" in scores.schema.metadata[b"geo"]
    )


def test_request_checks_name_the_request_fields() -> None:
    with pytest.raises(ConfigError, match=r"^threshold 2 is not valid") as err:
        QueryRequest(texts=["a"], threshold=2).check()
    assert err.value.fields == ("threshold",)
    with pytest.raises(ConfigError, match="one query text and one of and_not / near"):
        QueryRequest(texts=["a", "b"], near="c").check()
    with pytest.raises(ConfigError, match="not both"):
        QueryRequest(texts=["a"], near="c", and_not="d").check()
    with pytest.raises(ConfigError, match="nothing to look for"):
        QueryRequest().check()
    with pytest.raises(ConfigError, match="at least two different class names"):
        QueryRequest(texts=["a", "a"], classify=True).check()
    # no message a web user reads names a command-line option
    for bad in (
        QueryRequest(texts=["a"], threshold=2),
        QueryRequest(texts=["a"], near="c", within_km=-1),
        QueryRequest(texts=["a"], examples=QuerySpec(image_weight=3)),
        QueryRequest(texts=["a"], near="c", and_not="d"),
        QueryRequest(texts=["a"], classify=True, examples=QuerySpec(points=[(0.0, 0.0)])),
        QueryRequest(texts=["a"], examples=QuerySpec(points=[(0.0, 95.0)])),
        QueryRequest(texts=["a", "b"], classify=True, examples=QuerySpec(negative_cells=["x"])),
        QueryRequest(texts=["a"], and_not="b", examples=QuerySpec(negatives_points=[(1.0, 2.0)])),
        QueryRequest(texts=["a"], products=("nope",)),
        QueryRequest(texts=["a"], examples=QuerySpec(negatives_points=[(float("nan"), 0.0)])),
    ):
        with pytest.raises(ConfigError) as err:
            bad.check()
        assert "--" not in str(err.value) and err.value.fields, str(err.value)


def test_the_engine_checks_through_the_request(embedded) -> None:  # type: ignore[no-untyped-def]
    out, _es, model = embedded
    engine = QueryEngine.open(out, model=model)
    with pytest.raises(ConfigError, match=r"^threshold 1.5 is not valid"):
        engine.query(QuerySpec(text=["dunes"]), threshold=1.5)
    with pytest.raises(ConfigError, match=r"^within_km -2 is not valid"):
        engine.composite("dunes", "craters", op="near", within_km=-2)
    with pytest.raises(ConfigError, match="at least two different class names"):
        engine.classify(["dunes"])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["x", "--threshold", "2"], "--threshold 2.0 is not valid"),
        (["x", "--near", "y", "--within-km", "0"], "--within-km 0.0 is not valid"),
        (["x", "--near", "y", "--and-not", "z"], "one of --and-not / --near, not both"),
        (
            ["x", "--classify", "--point", "1,2"],
            "--point/--cell/--image are not used with --classify",
        ),
        (["x", "--point", "150,95"], "--point (150, 95) is not a place"),
    ],
)
def test_the_cli_names_its_options(tmp_path: Path, args: list[str], said: str) -> None:
    r = CliRunner().invoke(cli, ["query", *args, "--out", str(tmp_path / "none")])
    assert r.exit_code == 2 and said in r.output, r.output


def test_examples_in_the_same_cell_and_rows_read_from_the_mapped_file(tmp_path: Path) -> None:
    es = synthetic_set(tmp_path)
    arrays = es.scoring_arrays()
    every = np.asarray(arrays.vectors)
    rows = np.array([4, 4, 6, 7, 7, 9000], np.int64)  # repeats and a gap
    assert np.array_equal(arrays.vector_rows(rows), every[rows])
    rng = np.random.default_rng(5)
    for size in (1, 30, 500):  # scattered, clustered and contiguous runs
        rows = np.sort(rng.choice(len(every), size, replace=True)).astype(np.int64)
        assert np.array_equal(arrays.vector_rows(rows), every[rows])
    rows = np.arange(100, 400, dtype=np.int64)
    assert np.array_equal(arrays.vector_rows(rows), every[rows])
    # the reader keeps the file it was opened with: replacing the set's file changes nothing
    fresh = np.asarray(arrays.vectors[:10]).copy()
    path = es.root / "vectors.npy"
    path.rename(es.root / "old.npy")
    np.save(path, np.ones((10, arrays.dim), np.float16))
    assert np.array_equal(arrays.vector_rows(np.arange(10)), fresh)
    # a file shorter than its header says is an error, not garbage
    from marscope_stac.index.store import RowFile

    short = RowFile(os.open(path, os.O_RDONLY), 128, (10_000, arrays.dim), np.float16, "x.npy")
    with pytest.raises(DataError, match="shorter than its header"):
        short.read(np.array([9_999], np.int64))


def test_near_matches_a_brute_force_search() -> None:
    from marscope_stac.core.bodies import MARS
    from marscope_stac.query.scoring import near

    rng = np.random.default_rng(2)
    centres = np.column_stack([rng.uniform(-10, 10, 400), rng.uniform(-10, 10, 400)])
    a = (rng.random(400) ** 3).astype(np.float32)
    b = (rng.random(400) ** 3).astype(np.float32)
    got = near(a, b, centres, 120.0, MARS.radius_m)
    lon, lat = np.radians(centres[:, 0]), np.radians(centres[:, 1])
    cos = np.sin(lat)[:, None] * np.sin(lat) + np.cos(lat)[:, None] * np.cos(lat) * np.cos(
        lon[:, None] - lon
    )
    dist_km = np.arccos(np.clip(cos, -1, 1)) * MARS.radius_m / 1000
    want = a * np.where(dist_km <= 120.0, b[None, :], 0).max(axis=1)
    assert np.allclose(got, np.where(want >= 1e-3, want, got), atol=1e-6)
    assert np.all(np.abs(got - want) <= 1e-3)
