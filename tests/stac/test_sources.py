from __future__ import annotations

import json
import re
import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from _rasters import catalog_of, pattern, stac_item, usgs_style_catalog, write_geotiff
from affine import Affine
from click.testing import CliRunner
from rasterio.errors import NotGeoreferencedWarning

from marscope_stac.cli.main import cli
from marscope_stac.core.bodies import MARS, MOON
from marscope_stac.core.errors import CatalogError, ConfigError, SkippedInputWarning
from marscope_stac.grid.grids import EqualAreaGrid, parse_grid
from marscope_stac.stac.folder import build_folder_catalog
from marscope_stac.stac.raster import crs_from_stac, open_raster
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.batch import read_batch
from marscope_stac.tiles.plan import plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches

# ------------------------------------------------------------------------------- grids


# ------------------------------------------------------------------------------- demo catalog


def test_demo_catalog_sources_and_tiles(demo_root: Path) -> None:
    sources = load_sources(demo_root)
    assert sources.body is MARS and len(sources.assets) == 2 and not sources.skipped
    assert all(a.crs.to_string() == "IAU_2015:49910" for a in sources.assets)
    grid = parse_grid("lonlat:0.02")
    plan = plan_tiles(sources, grid, 60)
    assert len(plan) == (0.4 / 0.02) * (0.2 / 0.02) == 200  # two 0.2-degree scenes
    batches = list(iter_tile_batches(plan, batch_size=32, workers=2))
    valid = np.concatenate([b.valid for b in batches])
    assert len(valid) == 200 and np.all(valid > 0.999)
    pix = np.concatenate([b.pixels for b in batches])
    assert pix.dtype == np.float32 and pix.min() >= 0.0 and pix.max() <= 1.0


def test_cell_pixels_equal_direct_read(demo_root: Path) -> None:
    """0.02-degree cells are exactly 60 source pixels: the tile equals the window read / 255."""
    sources = load_sources(demo_root)
    grid = parse_grid("lonlat:0.02")
    plan = plan_tiles(sources, grid, 60)
    batch = read_batch(plan.subset(0, 5))
    src = next(a for a in sources.assets if a.item_id == batch.sources[3][0])
    w, _s, _e, n = grid.bounds(batch.cells[3:4])[0]
    with rasterio.open(src.href) as ds:
        x0, y0 = w * MARS.metres_per_degree, n * MARS.metres_per_degree
        col, row = ~ds.transform * (x0, y0)
        window = rasterio.windows.Window(round(col), round(row), 60, 60)
        direct = ds.read(1, window=window).astype(np.float32) / 255.0
    np.testing.assert_allclose(batch.pixels[3], direct, atol=1e-5)
    # coarser tiles (30 px) read the overview/decimated window: close to a 2x2 block mean
    coarse = read_batch(plan_tiles(sources, grid, 30).subset(3, 4))
    block = direct.reshape(30, 2, 30, 2).mean(axis=(1, 3))
    assert np.abs(coarse.pixels[0] - block).mean() < 0.03


def test_equal_area_tiles_on_demo(demo_root: Path) -> None:
    sources = load_sources(demo_root)
    grid = parse_grid("equal-area:1km")
    plan = plan_tiles(sources, grid, 32)
    batch = read_batch(plan.subset(0, len(plan)))
    assert (batch.valid > 0).all() and (batch.valid > 0.999).mean() > 0.8


# ------------------------------------------------------------------------------- USGS quirks


def test_usgs_style_catalog(tmp_path: Path) -> None:
    path = usgs_style_catalog(tmp_path / "usgs")
    sources = load_sources(path)
    (a,) = sources.assets
    assert a.asset_key == "Image 16-bit COG"  # by role and media type, not the thumbnail
    assert a.body is MARS
    assert a.shape == (100, 200)  # the header wins over the wrong proj:shape
    assert a.dtype == "uint16" and a.nodata == 0 and a.scale == 0.01 and a.offset == -5.0
    west, south, east, north = a.lonlat_bounds
    assert west == pytest.approx(-150.0) and east == pytest.approx(-149.8)  # 210E normalised
    assert south == pytest.approx(10.0) and north == pytest.approx(10.1)
    # a bbox in 0..360 longitudes finds it too
    assert load_sources(path, bbox=[209.9, 9.9, 210.05, 10.05]).assets
    plan = plan_tiles(sources, parse_grid("lonlat:0.05"), 50)
    assert len(plan) == 4 * 2
    batch = read_batch(plan)
    corner = int(np.argmax(batch.valid < 1))  # the cell holding the nodata corner
    assert 0.9 < batch.valid[corner] < 1.0
    assert np.all(batch.valid >= 0.9)
    assert batch.pixels.min() >= 0.0 and batch.pixels.max() <= 1.0


def test_crs_from_quoted_wkt1_and_nulls() -> None:
    from pyproj import CRS

    wkt1 = CRS("IAU_2015:49910").to_wkt("WKT1_GDAL")
    crs = crs_from_stac({"proj:epsg": None, "proj:wkt2": json.dumps(wkt1)})
    assert crs is not None and "Mars" in crs.name
    assert crs_from_stac({"proj:epsg": None}) is None
    assert crs_from_stac({"proj:code": "IAU_2015:30100"}).name.startswith("Moon")  # type: ignore[union-attr]
    with pytest.raises(CatalogError, match="cannot parse the CRS"):
        crs_from_stac({"proj:wkt2": "GEOGCS[nonsense"})


# ------------------------------------------------------------------------------- folder, mosaic


def test_geotiff_folder_catalog_and_mosaic(tmp_path: Path) -> None:
    folder = tmp_path / "ctx"
    res = 0.05 / 64
    for i, lon in enumerate((10.0, 10.1)):
        t = Affine(res, 0, lon, 0, -res, 0.1)
        write_geotiff(
            folder / f"tile_{i}.tif",
            pattern(128, 128, seed=i),
            "IAU_2015:49900",
            t,
            nodata=0,
            cog=False,
        )
    result = build_folder_catalog(folder)
    assert result.items == 2 and result.body is MARS
    assert (folder / "stac" / "catalog.json").is_file()
    sources = load_sources(folder)  # finds folder/stac/catalog.json
    assert len(sources.assets) == 2
    # a cell straddling the seam at lon 10.1 is mosaicked from both files
    grid = parse_grid("lonlat:0.05")
    plan = plan_tiles(sources, grid, 64, bbox=[10.06, 0.0, 10.14, 0.1])
    straddle = [k for k, ss in enumerate(plan.cell_sources) if len(ss) == 2]
    assert not straddle  # 0.05 cells align with the seam ...
    half = plan_tiles(sources, parse_grid("lonlat:0.04"), 64, bbox=[10.08, 0.04, 10.12, 0.08])
    both = [k for k, ss in enumerate(half.cell_sources) if len(ss) == 2]
    assert both  # ... 0.04 cells do not
    batch = read_batch(half)
    for k in both:
        assert batch.valid[k] > 0.999 and len(batch.sources[k]) == 2
    # second build refuses, overwrite works
    with pytest.raises(Exception, match="--overwrite"):
        build_folder_catalog(folder)
    build_folder_catalog(folder, overwrite=True)


def test_catalog_build_cli_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(cli, ["catalog", "build", str(empty)])
    assert r.exit_code == 2 and "no GeoTIFF" in r.output
    r = runner.invoke(cli, ["catalog", "build", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "is not a folder" in r.output
    earth = tmp_path / "earth"
    write_geotiff(earth / "e.tif", pattern(16, 16), "EPSG:4326", Affine(0.1, 0, 0, 0, -0.1, 0))
    r = runner.invoke(cli, ["catalog", "build", str(earth)])
    assert r.exit_code == 2 and "not of a known planetary body" in r.output


# ------------------------------------------------------------------------------- polar, Moon


def test_polar_cell_from_polar_stereographic(tmp_path: Path) -> None:
    res = 200.0
    half = 64 * res
    t = Affine(res, 0, -half, 0, -res, half)
    tif = write_geotiff(tmp_path / "np.tif", pattern(128, 128, seed=5), "IAU_2015:49930", t)
    item = stac_item(
        tmp_path,
        "north-pole",
        {"data": {"href": str(tif), "roles": ["data"], "type": "image/tiff"}},
        bbox=[-180, 89.5, 180, 90],
    )
    sources = load_sources(item)
    grid = EqualAreaGrid(5000.0)
    plan = plan_tiles(sources, grid, 32)
    top = [k for k, c in enumerate(plan.cells) if grid.row_col([c])[0][0] == grid.n_rows - 1]
    assert top, "the polar cap row is planned"
    batch = read_batch(plan)
    assert batch.valid[top[0]] > 0.999
    assert batch.pixels[top[0]].std() > 0.01


def test_moon_works_the_same_way(tmp_path: Path) -> None:
    m_per_deg = MOON.metres_per_degree
    res = m_per_deg / 1000
    t = Affine(res, 0, 20 * m_per_deg, 0, -res, 0.1 * m_per_deg)
    tif = write_geotiff(tmp_path / "moon.tif", pattern(100, 100), "IAU_2015:30110", t)
    item = stac_item(
        tmp_path,
        "moon",
        {"data": {"href": str(tif), "roles": ["data"], "type": "image/tiff"}},
        props={"ssys:targets": ["Moon"]},
        bbox=[20, 0, 20.1, 0.1],
    )
    sources = load_sources(item)
    assert sources.body is MOON
    plan = plan_tiles(sources, parse_grid("lonlat:0.05", MOON), 50)
    assert len(plan) == 4 and (read_batch(plan).valid > 0.999).all()
    with pytest.raises(ConfigError, match="grid is for Mars"):
        plan_tiles(sources, parse_grid("lonlat:0.05"), 50)


# ------------------------------------------------------------------------------- bad input


def test_missing_and_malformed_catalogs(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_sources(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CatalogError, match="not readable JSON"):
        load_sources(bad)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"type": "Feature", "id": 3}))
    with pytest.raises(CatalogError, match="not valid STAC"):
        load_sources(odd)
    (tmp_path / "tifs").mkdir()
    (tmp_path / "tifs" / "a.tif").write_bytes(b"")
    with pytest.raises(CatalogError, match="marscope catalog build"):
        load_sources(tmp_path / "tifs")


def test_bad_items_are_skipped_counted_and_named(tmp_path: Path) -> None:
    good = write_geotiff(
        tmp_path / "good.tif",
        pattern(60, 60),
        "IAU_2015:49910",
        Affine(19.76, 0, 150 * MARS.metres_per_degree, 0, -19.76, -4.8 * MARS.metres_per_degree),
    )
    (tmp_path / "text.tif").write_text("not a raster")
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(
        nocrs,
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=1,
        dtype="uint8",
        transform=Affine(20, 0, 0, 0, -20, 0),
    ) as d:
        d.write(np.ones((1, 8, 8), np.uint8))
    items = [
        stac_item(
            tmp_path, "good", {"img": {"href": str(good), "roles": ["data"], "type": "image/tiff"}}
        ),
        stac_item(tmp_path, "no-raster", {"meta": {"href": "x.xml", "roles": ["metadata"]}}),
        stac_item(
            tmp_path,
            "gone",
            {"img": {"href": str(tmp_path / "404.tif"), "roles": ["data"], "type": "image/tiff"}},
        ),
        stac_item(
            tmp_path,
            "text",
            {"img": {"href": str(tmp_path / "text.tif"), "roles": ["data"], "type": "image/tiff"}},
        ),
        stac_item(
            tmp_path,
            "bad-crs",
            {"img": {"href": str(nocrs), "roles": ["data"], "type": "image/tiff"}},
            props={"proj:wkt2": "PROJCS[broken"},
        ),
    ]
    cat = catalog_of(tmp_path, items)
    with pytest.warns(SkippedInputWarning) as record:
        sources = load_sources(cat)
    assert [a.item_id for a in sources.assets] == ["good"]
    reasons = dict(sources.skipped)
    assert set(reasons) == {"no-raster", "gone", "text", "bad-crs"}
    assert "no GeoTIFF data asset" in reasons["no-raster"] and "--asset" in reasons["no-raster"]
    assert "not a readable raster" in reasons["gone"] and "404.tif" in reasons["gone"]
    assert "not a readable raster" in reasons["text"]
    assert "cannot parse the CRS" in reasons["bad-crs"]
    # one warning that counts them all and names the first
    (warning,) = [w for w in record if issubclass(w.category, SkippedInputWarning)]
    assert "skipped 4 of 5 items" in str(warning.message) and "3 more" in str(warning.message)
    with pytest.raises(CatalogError, match="has no asset 'nope'"):
        load_sources(cat, asset="nope")  # nothing usable: the error alone


def test_mixed_bodies_and_empty_bbox(tmp_path: Path, demo_root: Path) -> None:
    moon = stac_item(
        tmp_path, "m", {"d": {"href": "x.tif", "roles": ["data"]}}, props={"ssys:targets": ["Moon"]}
    )
    mars = stac_item(
        tmp_path, "r", {"d": {"href": "y.tif", "roles": ["data"]}}, props={"ssys:targets": ["Mars"]}
    )
    with pytest.raises(CatalogError, match="mixes bodies"):
        load_sources(catalog_of(tmp_path, [moon, mars]))
    with pytest.raises(CatalogError, match="intersects bbox"):
        load_sources(demo_root, bbox=[10, 10, 11, 11])


def test_tiles_cli_preview(demo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    r = CliRunner().invoke(
        cli,
        [
            "tiles",
            str(demo_root),
            "--grid",
            "lonlat:0.05",
            "--tile-px",
            "64",
            "--preview",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "cells of 64 px" in r.output and out.is_file()
    from PIL import Image

    assert Image.open(out).size[0] == 8 * 96
    r = CliRunner().invoke(cli, ["tiles", str(demo_root), "--bbox", "1,2,3"])
    assert r.exit_code == 2 and "WEST,SOUTH,EAST,NORTH" in r.output
    ringed = tmp_path / "ringed.png"
    args = ["--grid", "lonlat:0.05", "--tile-px", "48", "--context", "1", "--preview", str(ringed)]
    r = CliRunner().invoke(cli, ["tiles", str(demo_root), *args])
    assert r.exit_code == 0, r.output
    assert ringed.is_file() and ringed.read_bytes() != out.read_bytes()


def test_unreadable_source_in_a_batch_is_recorded(demo_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "demo"
    shutil.copytree(demo_root, copy)
    sources = load_sources(copy)
    plan = plan_tiles(sources, parse_grid("lonlat:0.05"), 32)
    Path(sources.assets[0].href).write_bytes(b"corrupt")
    batch = read_batch(plan)
    bad = {c for c, _ in batch.errors}
    assert bad and all(batch.valid[list(batch.cells).index(c)] == 0 for c in bad)
    assert len(bad) < len(plan)  # the other scene still reads


def _ungeoreferenced(path: Path) -> Path:
    """An 8 x 8 GeoTIFF without CRS or transform."""
    with warnings.catch_warnings():  # writing one is the test's doing
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8"
        ) as d:
            d.write(np.ones((1, 8, 8), np.uint8))
    return path


def test_ungeoreferenced_raster_is_skipped(tmp_path: Path, demo_root: Path) -> None:
    raw = _ungeoreferenced(tmp_path / "raw.tif")
    item = stac_item(
        tmp_path, "raw", {"img": {"href": str(raw), "roles": ["data"], "type": "image/tiff"}}
    )
    with pytest.raises(CatalogError, match="not georeferenced"):
        load_sources(item)


# ------------------------------------------------------------------------------- STAC API
# searching a real STAC API (stac-fastapi-pgstac) is tested in tests/remote/test_stac_api.py


@pytest.mark.enable_socket
def test_unreachable_stac_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARSCOPE_HTTP_RETRIES", "1")
    monkeypatch.setenv("MARSCOPE_HTTP_BACKOFF", "0.01")
    with pytest.raises(CatalogError, match="cannot query the STAC API"):
        load_sources("http://127.0.0.1:9/")


def test_catalog_build_skips_what_is_not_a_file_and_leaves_out_a_cut_short_one(
    tmp_path: Path,
) -> None:
    import os

    from marscope_stac.core.errors import CatalogError, SkippedInputWarning

    folder = tmp_path / "ctx"
    t = Affine(0.05 / 64, 0, 10.0, 0, -0.05 / 64, 0.1)
    write_geotiff(folder / "a.tif", pattern(256, 256, seed=1), "IAU_2015:49900", t, cog=False)
    os.mkfifo(folder / "pipe.tif")  # read, it would block for ever
    (folder / "loop.tif").symlink_to(folder / "loop.tif")
    assert build_folder_catalog(folder).items == 1
    from marscope_stac import validate_catalog

    report = validate_catalog(folder / "stac")  # its assets lie beside it, in ctx/: valid
    assert not report.problems and report.assets == 1
    data = (folder / "a.tif").read_bytes()
    (folder / "b.tif").write_bytes(data[: len(data) - 20_000])  # the header reads, pixels not
    with pytest.warns(SkippedInputWarning, match=r"1 GeoTIFF left out .*b\.tif is not a readable"):
        built = build_folder_catalog(folder, overwrite=True)
    assert built.items == 1 and "left out: " in built.summary() and "b.tif" in built.summary()
    assert not validate_catalog(folder / "stac").problems
    (folder / "a.tif").write_bytes(data[: len(data) - 20_000])  # none readable: refused, why
    with pytest.raises(CatalogError, match=r"no readable GeoTIFF under .*ctx \(.*\.tif is not"):
        build_folder_catalog(folder, overwrite=True)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("complex64", "holds complex numbers (complex64)"),
        ("complex_int16", "holds complex numbers (complex_int16)"),  # radar; numpy knows none
        ("pixel grid", "has no geotransform"),
        ("no crs", "has no CRS in its header"),
    ],
)
def test_catalog_build_leaves_out_what_no_command_could_read(
    tmp_path: Path, kind: str, why: str
) -> None:
    """Found by a new user: written as items, then refused by every command (or invalid)."""
    folder = tmp_path / "ctx"
    t = Affine(0.05 / 64, 0, 10.0, 0, -0.05 / 64, 0.1)
    write_geotiff(folder / "a.tif", pattern(64, 64, seed=1), "IAU_2015:49900", t, cog=False)
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "crs": "IAU_2015:49900"}
    with warnings.catch_warnings():  # writing one without a transform is the test's doing
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if kind == "no crs":
            profile.pop("crs")
        dtype = kind if kind.startswith("complex") else "uint8"
        with rasterio.open(
            folder / "b.tif",
            "w",
            dtype=dtype,
            **profile,
            **({} if kind == "pixel grid" else {"transform": t}),
        ) as d:
            d.write(np.ones((1, 8, 8), np.complex64 if dtype != "uint8" else np.uint8))
    with pytest.warns(SkippedInputWarning, match=rf"1 GeoTIFF left out .*b\.tif {re.escape(why)}"):
        built = build_folder_catalog(folder)
    assert built.items == 1
    from marscope_stac import validate_catalog

    assert not validate_catalog(folder / "stac").problems


@pytest.mark.parametrize(
    ("message", "final"),
    [
        ("the header of {h} came damaged: TIFFFetchNormalTag:IO error", False),
        ("{g}: HTTP response code: 404", True),
        ("HTTP response code: 403 - Forbidden", True),
        ("'{g}' does not exist in the file system, and is not recognized as a dataset", True),
        ("{g}: Read failed, response_code=206", False),
    ],
)
def test_a_url_holding_403_or_404_is_no_http_answer(message: str, final: bool) -> None:
    """CI's proxy ports 40387 and 40423 read as "403" and "404": a damaged header was final."""
    from marscope_stac.stac.cloud import gdal_path
    from marscope_stac.stac.raster import _is_final

    for href in ("http://127.0.0.1:40387/a-404/x.tif", "http://127.0.0.1:40423/b/x.tif"):
        text = message.format(h=href, g=gdal_path(href))
        assert _is_final(Exception(text), href) is final, text


def test_a_collection_of_labels_is_named_as_labels_not_missing(demo_root: Path) -> None:
    from marscope_stac.core.errors import CatalogError

    with pytest.raises(CatalogError, match=r"collection demo-labels of .* holds labels"):
        load_sources(demo_root, collections=["demo-labels"])
    with pytest.raises(CatalogError, match="has no collection nope; its collections: demo-ctx"):
        load_sources(demo_root, collections=["nope"])


def test_concurrent_opens_keep_the_process_warning_filters(tmp_path: Path) -> None:
    """Opens in several threads silence rasterio's warning and leave every other filter be."""
    raw = _ungeoreferenced(tmp_path / "raw.tif")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        go = threading.Barrier(8)

        def opens(k: int) -> None:
            go.wait()
            for _ in range(20):
                open_raster(str(raw)).close()
            if k == 0:  # another thread's filter, added while opens are under way
                warnings.filterwarnings("ignore", message="marscope test filter")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(opens, range(8)))
        after = list(warnings.filters)
        silenced = len(seen)
        rasterio.open(raw).close()  # the silence ended with the opens
    assert not [w for w in seen[:silenced] if issubclass(w.category, NotGeoreferencedWarning)]
    assert [w.category for w in seen[silenced:]] == [NotGeoreferencedWarning]
    assert after[1:] == before and "marscope test filter" in str(after[0][1])
