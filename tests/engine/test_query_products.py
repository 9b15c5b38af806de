from __future__ import annotations

import gzip
import json
import os
import stat
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from _mvt import decode_mvt
from pmtiles.reader import MmapSource, Reader, all_tiles
from rio_cogeo.cogeo import cog_validate

from marscope_stac.core.errors import CatalogError, ConfigError, OutputError
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.grid.grids import parse_grid
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec, and_not, near
from marscope_stac.stac.validation import validate_catalog


@pytest.fixture(scope="module")
def embedded(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("q") / "products"
    res = embed_catalog(demo_small.root, out, model=f"local-dir:{tiny_model_dir}", progress=False)
    cm = load_model(f"local-dir:{tiny_model_dir}", device="cpu")
    return out, res, QueryEngine.open(out, clip_model=cm)


def test_query_products_are_valid_and_readable(embedded) -> None:  # type: ignore[no-untyped-def]
    out, _res, engine = embedded
    prod = engine.query(QuerySpec(text=["yardangs"]), threshold=0.0)
    assert validate_catalog(out).objects >= 7
    ok, errors, _ = cog_validate(str(prod.assets["probability"]), quiet=True)
    assert ok, errors
    with rasterio.open(prod.assets["probability"]) as src:
        assert src.crs.to_string() == "IAU_2015:49900"
        assert src.nodata == 255 and src.scales[0] == pytest.approx(0.004)
        data = src.read(1)
    assert (data != 255).sum() == 200  # one pixel per embedded cell
    for key in ("tiles", "detection-tiles"):
        with prod.assets[key].open("rb") as fh:
            reader = Reader(MmapSource(fh))
            header = reader.header()
            tiles = list(all_tiles(reader.get_bytes))
        assert tiles and header["clustered"]
        assert header["min_zoom"] <= header["max_zoom"]
        ids = [t[0] for t in tiles]
        assert len(ids) == len(set(ids))
    # vector tiles hold a 'detections' layer with features
    with prod.assets["detection-tiles"].open("rb") as fh:
        tiles = list(all_tiles(Reader(MmapSource(fh)).get_bytes))
    layers = decode_mvt(gzip.decompress(tiles[0][1]))
    assert layers and layers[0][0] == 3 and b"detections" in layers[0][1]
    det = gpd.read_parquet(prod.assets["detections"])
    assert det.crs is not None and det.crs.to_string() == "IAU_2015:49900"
    assert len(det) == prod.n_detections > 0
    item = json.loads(prod.item_path.read_text())
    titles = {lk.get("title") for lk in item["links"] if lk["rel"] == "derived_from"}
    assert "embedding set" in titles and len(titles) >= 3
    assert item["properties"]["marscope:query"]["text"] == ["yardangs"]


def test_same_query_is_idempotent_and_concurrent_safe(embedded) -> None:  # type: ignore[no-untyped-def]
    out, _, engine = embedded
    a = engine.query(QuerySpec(text=["dune fields"]))
    b = engine.query(QuerySpec(text=["dune fields"]))
    assert a.query_id == b.query_id
    coll = json.loads((out / "queries" / "collection.json").read_text())
    hrefs = [lk["href"] for lk in coll["links"] if lk["rel"] == "item"]
    assert len(hrefs) == len(set(hrefs))
    errors: list[BaseException] = []

    def run(text: str) -> None:
        try:
            engine.query(QuerySpec(text=[text]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(t,)) for t in ("craters", "channels", "landslides")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert validate_catalog(out).objects >= 9


def test_examples_hybrid_refinement_and_composites(embedded) -> None:  # type: ignore[no-untyped-def]
    _out, res, engine = embedded
    table = res.embedding_set.table()
    grid = parse_grid("lonlat:0.02")
    centre = grid.centers(table.cell_index[:1])[0]
    ex = engine.score(QuerySpec(points=[(float(centre[0]), float(centre[1]))]))
    assert int(np.argmax(ex.scores)) == 0  # the example itself scores highest
    assert ex.scores[0] == pytest.approx(1.0, abs=1e-3)
    cid = grid.cell_ids(table.cell_index[5:6])[0]
    text = engine.score(QuerySpec(text=["yardangs"]))
    hybrid = engine.score(QuerySpec(text=["yardangs"], cells=[cid]))
    # the hybrid vector is 0.7 text + 0.3 example, re-normalised
    want = 0.7 * text.vector + 0.3 * table.embedding[5].astype(np.float32)
    assert np.allclose(hybrid.vector, want / np.linalg.norm(want), atol=1e-3)
    assert np.all((hybrid.probability >= 0) & (hybrid.probability <= 1))
    neg = grid.cell_ids(table.cell_index[7:8])[0]
    refined = engine.score(QuerySpec(cells=[cid], negative_cells=[neg]))
    plain = engine.score(QuerySpec(cells=[cid]))
    assert refined.scores[7] < plain.scores[7]  # the counter-example moved away
    a, b = hybrid.probability, ex.probability
    assert np.all(and_not(a, b) <= a)
    nb = near(a, b, grid.centers(table.cell_index), 2.0, grid.body.radius_m)
    assert np.all(nb <= a + 1e-6)
    # a query of example cells publishes them, at their centres (this had crashed on the ids)
    product = engine.query(QuerySpec(cells=[cid], negative_cells=[neg]), threshold=0.5)
    examples = json.loads((product.folder / "examples.geojson").read_text())
    found = {f["properties"]["label"]: f["geometry"]["coordinates"] for f in examples["features"]}
    want = grid.centers(table.cell_index[[5, 7]])
    assert np.allclose([found["positive"], found["negative"]], want)


def test_bad_queries(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _res, engine = embedded
    with pytest.raises(ConfigError, match="empty query"):
        engine.score(QuerySpec(text=["   "]))
    with pytest.raises(ConfigError, match="too long"):
        engine.score(QuerySpec(text=["x" * 1000]))
    with pytest.raises(ConfigError, match="outside the embedded area"):
        engine.score(QuerySpec(points=[(10.0, 10.0)]))
    with pytest.raises(ConfigError, match="not a cell id"):
        engine.score(QuerySpec(cells=["lonlat:0.5:1:1"]))
    with pytest.raises(ConfigError, match="nothing to look for"):
        engine.score(QuerySpec())
    with pytest.raises(ConfigError, match="threshold"):
        engine.query(QuerySpec(text=["fans"]), threshold=1.5)
    other = load_model("RN50", device="cpu")
    with pytest.raises(ConfigError, match="was made with model"):
        QueryEngine.open(out, clip_model=other)
    with pytest.raises(ConfigError, match="was made with model"):
        QueryEngine.open(out, model="bundled")
    notcat = tmp_path / "notcat"
    notcat.mkdir()
    (notcat / "data.csv").write_text("x")
    elsewhere = QueryEngine(engine.set, notcat, clip_model=engine.model)
    with pytest.raises(OutputError, match="not a STAC catalog"):
        elsewhere.query(QuerySpec(text=["fans"]))


def test_zero_shot_classification(embedded) -> None:  # type: ignore[no-untyped-def]
    out, _, engine = embedded
    prod = engine.classify(["yardangs", "dune fields", "impact craters"])
    assert sum(prod.counts.values()) == 200
    item = json.loads(prod.item_path.read_text())
    classes = item["assets"]["classes"]["classification:classes"]
    assert [c["value"] for c in classes] == [0, 1, 2, 3] and classes[0]["name"] == "background"
    with rasterio.open(prod.folder / "probabilities.tif") as src:
        assert src.count == 4 and src.crs.to_string() == "IAU_2015:49900"
        p = src.read().astype(float) * 0.004
    valid = p[0] < 1.0
    assert np.allclose(p[:, valid].sum(axis=0), 1.0, atol=0.02)  # probabilities sum to one
    assert validate_catalog(out).objects >= 8
    with pytest.raises(ConfigError, match="at least two"):
        engine.classify(["yardangs"])


def test_composite_cli(embedded) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from marscope_stac.cli.main import cli

    out, res, _ = embedded
    model = res.embedding_set.manifest()["model"]["name"]
    r = CliRunner().invoke(
        cli,
        [
            "query",
            "yardangs",
            "--and-not",
            "dune fields",
            "--out",
            str(out),
            "--model",
            model,
            "--threshold",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "yardangs-and-not-dune-fields" in r.output
    r = CliRunner().invoke(
        cli,
        [
            "query",
            "yardangs",
            "--near",
            "craters",
            "--within-km",
            "3",
            "--out",
            str(out),
            "--model",
            model,
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli, ["query", "a", "b", "--near", "c", "--out", str(out), "--model", model]
    )
    assert r.exit_code == 2
    assert validate_catalog(out).objects >= 9


def test_a_cached_query_imports_no_heavy_library(embedded) -> None:  # type: ignore[no-untyped-def]
    """A cold ``marscope query`` of a cached text starts fast: no pandas, matplotlib or torch.

    Each would add 0.2-0.4 s to every cold query (``pa.array`` of a numpy array imports
    pandas; colour maps came from matplotlib); the planet figures in docs/benchmarks.md rely
    on their absence.
    """
    import subprocess
    import sys

    out, res, engine = embedded
    engine.query(QuerySpec(text=["yardangs"]), threshold=0.3)  # the text is cached now
    model = res.embedding_set.manifest()["model"]["name"]
    code = (
        "import sys\n"
        "from marscope_stac.cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('HEAVY', sorted(m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules))\n"
    )
    args = ["query", "yardangs", "--out", str(out), "--model", model, "--threshold", "0.3"]
    run = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout, run.stdout


def test_a_query_asked_again_keeps_what_a_user_put_in_its_folder(embedded) -> None:  # type: ignore[no-untyped-def]
    _out, _res, engine = embedded
    spec = QuerySpec(text=["dunes"])
    first = engine.query(spec, threshold=0.5)
    (first.folder / "my-notes.txt").write_text("checked by hand")
    (first.folder / "by-hand").mkdir()
    (first.folder / "by-hand" / "a.csv").write_text("1,2")
    (first.folder / ".hidden-notes").write_text("mine too")
    os.mkfifo(first.folder / "by-hand" / "pipe")  # copied as a FIFO, never opened
    again = engine.query(spec, threshold=0.5)
    assert again.folder == first.folder
    assert (again.folder / "my-notes.txt").read_text() == "checked by hand"
    assert (again.folder / "by-hand" / "a.csv").read_text() == "1,2"
    assert (again.folder / ".hidden-notes").read_text() == "mine too"
    assert stat.S_ISFIFO((again.folder / "by-hand" / "pipe").lstat().st_mode)
    assert not [p for p in again.folder.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "damage", ["{ not json", '{"type": "Collection"}', '{"type": "Collection", "links": "x"}']
)
def test_a_damaged_queries_collection_is_refused_before_any_product(  # type: ignore[no-untyped-def]
    embedded, damage: str
) -> None:
    from marscope_stac.core.errors import OutputError

    out, _res, engine = embedded
    coll = out / "queries" / "collection.json"
    before = coll.read_bytes()
    folders = sorted(p.name for p in coll.parent.iterdir())
    coll.write_text(damage)
    try:
        with pytest.raises(OutputError, match="is damaged"):
            engine.query(QuerySpec(text=["a landform never asked for"]), threshold=0.5)
        assert sorted(p.name for p in coll.parent.iterdir()) == folders  # nothing written
        assert coll.read_text() == damage
    finally:
        coll.write_bytes(before)


def test_evaluations_with_other_settings_keep_their_own_reports(  # type: ignore[no-untyped-def]
    embedded, demo_small, tmp_path: Path
) -> None:
    from marscope_stac.eval.evaluate import evaluate_product

    _out, _res, engine = embedded
    product = engine.query(QuerySpec(text=["impact craters"]), threshold=0.5).folder
    for name in ("a", "b"):  # two truth files of one name in two folders
        (tmp_path / name).mkdir()
        (tmp_path / name / "Truth!.csv").write_text("lon,lat\n10.05,0.05\n")
    pooled = tmp_path / "dunes.csv"  # a user's table may pool sub-types of one landform
    pooled.write_text("lon,lat,landform\n10.05,0.05,barchan\n10.1,0.05,linear\n")
    assert evaluate_product(product, pooled, write=False).points.n_points == 2
    with pytest.raises(CatalogError, match="its landforms: barchan, linear"):
        evaluate_product(product, pooled, landform="star", write=False)
    reports = {
        evaluate_product(product, tmp_path / "a" / "Truth!.csv").report_path,
        evaluate_product(product, tmp_path / "b" / "Truth!.csv").report_path,
        evaluate_product(product, tmp_path / "a" / "Truth!.csv", threshold=0.2).report_path,
        evaluate_product(product, tmp_path / "a" / "Truth!.csv", rank_by="score").report_path,
    }
    assert len(reports) == 4 and all(p is not None and p.is_file() for p in reports)
    assert all(p.name.startswith("evaluation-truth-all-") for p in reports if p)  # lower case
    again = evaluate_product(product, tmp_path / "a" / "Truth!.csv").report_path
    assert again in reports  # the same evaluation asked again replaces its report
