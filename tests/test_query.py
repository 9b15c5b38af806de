from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pmtiles.reader import MmapSource, Reader, all_tiles
from rio_cogeo.cogeo import cog_validate

from marscope_stac.core.errors import ConfigError, OutputError
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


def _decode_mvt(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level protobuf fields of a tile: (field number, payload)."""
    out, i = [], 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        assert wire == 2
        n, i = _read_varint(data, i)
        out.append((field, data[i : i + n]))
        i += n
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


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
    layers = _decode_mvt(gzip.decompress(tiles[0][1]))
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


def test_tile_maths_match_planetcantile_mars_tms() -> None:
    from planetcantile import planetary_tms

    from marscope_stac.products.render import _lat_to_y, _y_to_lat

    tms = planetary_tms.get("MarsWebMercatorSphere")
    for z, x, y in [(0, 0, 0), (3, 2, 3), (7, 100, 50), (9, 300, 260)]:
        b = tms.bounds(x, y, z)
        n = 2**z
        assert b.left == pytest.approx(x / n * 360 - 180)
        assert b.right == pytest.approx((x + 1) / n * 360 - 180)
        assert b.top == pytest.approx(float(_y_to_lat(np.array([y], float), n)[0]))
        assert b.bottom == pytest.approx(float(_y_to_lat(np.array([y + 1], float), n)[0]))
        assert float(_lat_to_y(b.top, n)) == pytest.approx(y)


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


def test_mvt_geometry_encoding() -> None:
    """Command streams follow the MVT spec: cursor per feature, rings closed, holes reversed."""
    from shapely.geometry import box

    from marscope_stac.products.vector import _polygon_geometries

    def unpack(data: bytes) -> list[int]:
        out, v, shift = [], 0, 0
        for b in data:
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                out.append(v)
                v, shift = 0, 0
        return out

    def zz(n: int) -> int:
        return (n << 1) ^ (n >> 31)

    square = box(10, 10, 20, 20)
    holed = box(0, 0, 30, 30).difference(box(10, 10, 20, 20))
    speck = box(5.1, 5.1, 5.3, 5.3)  # rounds to one point: no geometry
    enc = _polygon_geometries(np.asarray([square, holed, speck], dtype=object))
    assert enc[2] is None
    cmds = unpack(enc[0])
    # MoveTo(1) to the first vertex from (0, 0), LineTo(3), ClosePath(1)
    assert cmds[0] == 9 and cmds[3] == 2 | (3 << 3) and cmds[-1] == 15 and len(cmds) == 11
    xs, ys = [cmds[1]], [cmds[2]]
    assert (xs[0], ys[0]) in {
        (zz(10), zz(10)),
        (zz(20), zz(10)),
        (zz(20), zz(20)),
        (zz(10), zz(20)),
    }
    # exterior then hole, both absolute positions restart from the feature's own origin
    cmds2 = unpack(enc[1])
    assert cmds2.count(9) == 2 and cmds2.count(15) == 2 and len(cmds2) == 22


def test_vector_pmtiles_many_polygons(tmp_path: Path) -> None:
    from marscope_stac.grid.grids import parse_grid
    from marscope_stac.products.render import zoom_range
    from marscope_stac.products.vector import detections, write_vector_pmtiles

    grid = parse_grid("lonlat:2@80")
    p = np.random.default_rng(0).random(grid.n_cells).astype(np.float32) ** 4
    feats = detections(grid, np.arange(grid.n_cells), p, 0.5)
    assert len(feats) > 100
    n = write_vector_pmtiles(tmp_path / "v.pmtiles", feats, {"name": "t"}, zoom_range(2.0))
    from pmtiles.reader import MmapSource, Reader, all_tiles

    with (tmp_path / "v.pmtiles").open("rb") as f:
        tiles = list(all_tiles(MmapSource(f)))
        assert len(tiles) == n > 0
        assert Reader(MmapSource(f)).header()["tile_type"].name == "MVT"
    total = sum(len(_decode_mvt(gzip.decompress(t))) for _, t in tiles)
    assert total > 0


def test_vector_tiles_decode_with_an_independent_decoder(tmp_path: Path) -> None:
    """mapbox-vector-tile reads our tiles: features, attributes, holes, no zero-area rings."""
    import mapbox_vector_tile
    from shapely.geometry import Polygon, box

    from marscope_stac.products.vector import write_vector_pmtiles

    holed = box(10.0, 10.0, 12.0, 12.0).difference(box(10.5, 10.5, 11.0, 11.0))
    sliver = Polygon([(20.0, 20.0), (21.0, 20.0), (21.0, 20.0000001), (20.0, 20.0000001)])
    feats = [
        (holed, {"max_probability": 0.9, "mean_probability": 0.7, "cells": 30}),
        (
            box(-5.0, -5.0, -4.0, -4.0),
            {"max_probability": 0.6, "mean_probability": 0.6, "cells": 4},
        ),
        (sliver, {"max_probability": 0.55, "mean_probability": 0.55, "cells": 1}),
    ]
    write_vector_pmtiles(tmp_path / "v.pmtiles", feats, {"name": "t"}, (0, 3))
    with (tmp_path / "v.pmtiles").open("rb") as fh:
        tiles = dict(all_tiles(Reader(MmapSource(fh)).get_bytes))
    z0 = mapbox_vector_tile.decode(gzip.decompress(tiles[(0, 0, 0)]))
    layer = z0["detections"]
    assert layer["extent"] == 4096
    props = sorted(
        (f["properties"]["cells"], f["properties"]["max_probability"]) for f in layer["features"]
    )
    assert props == [(4, 0.6), (30, 0.9)]  # the sliver has no area at zoom 0: left out
    for f in layer["features"]:
        assert f["geometry"]["type"] == "Polygon"
        for ring in f["geometry"]["coordinates"]:
            xy = np.asarray(ring, float)
            area2 = np.sum(xy[:-1, 0] * xy[1:, 1] - xy[1:, 0] * xy[:-1, 1])
            assert area2 != 0
    holed_feature = next(f for f in layer["features"] if f["properties"]["cells"] == 30)
    assert len(holed_feature["geometry"]["coordinates"]) == 2  # exterior and hole
    # at zoom 3 the holed polygon sits in tile (4, 3): x = (10 + 180) / 45 = 4.2
    z3 = mapbox_vector_tile.decode(gzip.decompress(tiles[(3, 4, 3)]))
    [f] = z3["detections"]["features"]
    x, _y = np.asarray(f["geometry"]["coordinates"][0], float).T
    # mapbox-vector-tile flips y (origin bottom-left): x = (lon + 180) / 45 - 4 in extent units
    assert x.min() == pytest.approx((10 + 180) / 45 * 4096 - 4 * 4096, abs=1)


def test_raster_tiles_sample_pixel_centres(tmp_path: Path) -> None:
    """Every raster tile decodes (PIL) to the raster's value at each pixel centre."""
    import io

    from affine import Affine
    from PIL import Image

    from marscope_stac.products.render import _lat_to_y, _y_to_lat, quantize, write_raster_pmtiles

    rng = np.random.default_rng(5)
    values = rng.random((30, 50)).astype(np.float32)
    values[rng.random(values.shape) < 0.2] = np.nan
    transform = Affine(0.5, 0, 100.0, 0, -0.5, 10.0)  # 100..125 E, -5..10 N
    n = write_raster_pmtiles(tmp_path / "r.pmtiles", values, transform, {"name": "t"}, (2, 6))
    with (tmp_path / "r.pmtiles").open("rb") as fh:
        tiles = dict(all_tiles(Reader(MmapSource(fh)).get_bytes))
    assert len(tiles) == n > 10
    stored = quantize(values)
    for (z, x, y), data in tiles.items():
        png = Image.open(io.BytesIO(data))
        assert png.mode == "P"
        got = np.asarray(png)
        size = 2**z
        lon = (x + (np.arange(256) + 0.5) / 256) / size * 360 - 180
        lat = _y_to_lat(y + (np.arange(256) + 0.5) / 256, size)
        col = np.floor((lon - 100.0) / 0.5).astype(int)
        row = np.floor((10.0 - lat) / 0.5).astype(int)
        inside = (row[:, None] >= 0) & (row[:, None] < 30) & (col >= 0) & (col < 50)
        want = np.where(inside, stored[np.clip(row, 0, 29)][:, np.clip(col, 0, 49)], 255)
        assert np.array_equal(got, want), (z, x, y)
        assert float(_lat_to_y(10.0, size)) <= y + 1  # tiles lie over the raster


def test_raster_zooms_go_two_levels_deeper_within_a_tile_budget() -> None:
    from affine import Affine

    from marscope_stac.products.render import RASTER_TILE_BUDGET, raster_zoom_range, zoom_range

    # MarScope's planet grid: two levels beyond its resolution (830 tiles at zoom 5)
    assert raster_zoom_range(Affine(0.2, 0, -180, 0, -0.2, 80), (800, 1800)) == (0, 5)
    assert zoom_range(0.2) == (0, 3)
    # ten times as many cells: two levels deeper would be 12,800 tiles, so one
    assert RASTER_TILE_BUDGET < 12_800
    assert raster_zoom_range(Affine(0.0625, 0, -180, 0, -0.0625, 80), (2560, 5760)) == (1, 6)
    # the demo's area: two levels deeper
    assert raster_zoom_range(Affine(0.02, 0, 150, 0, -0.02, -4.2), (40, 80)) == (3, 9)
