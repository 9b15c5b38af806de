"""The batch tile renderer gives the pixels of the cell-by-cell renderer, case by case.

``read_batch(vectorised=False)`` renders every cell on its own (the reference); the default
renders the cells of a grid row that fall on one raster from one window in array passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _rasters import pattern, write_geotiff
from affine import Affine

from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.folder import build_folder_catalog
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.batch import read_batch
from marscope_stac.tiles.plan import TileBatch, TilePlan, plan_tiles
from marscope_stac.tiles.workers import iter_tile_batches


def _same(plan: TilePlan, resampling: str = "bilinear", normalize: str = "auto") -> TileBatch:
    fast = read_batch(plan, resampling, normalize)  # type: ignore[arg-type]
    slow = read_batch(plan, resampling, normalize, vectorised=False)  # type: ignore[arg-type]
    # equal to float rounding; a position exactly between two pixels may pick the other
    # neighbour in the nearest-pixel fallback at no-data edges (a tie, rare), which also
    # moves the tile mean that fills its no-data pixels a little
    diff = np.abs(fast.pixels - slow.pixels)
    assert np.mean(diff > 1e-4) < 1e-3, f"{np.mean(diff > 1e-4):.2%} of the pixels differ"
    assert np.median(diff) < 1e-6
    np.testing.assert_array_equal(fast.valid, slow.valid)
    assert fast.sources == slow.sources and fast.errors == slow.errors
    return fast


@pytest.mark.parametrize(
    ("spec", "px"), [("lonlat:0.02", 64), ("lonlat:0.02", 224), ("lonlat:0.005", 96)]
)
def test_demo_tiles_match(demo_root: Path, spec: str, px: int) -> None:
    sources = load_sources(demo_root)
    plan = plan_tiles(sources, parse_grid(spec, sources.body), px)
    batch = _same(plan.subset(0, min(len(plan), 150)))
    assert (batch.valid > 0).all()


def test_decimated_and_nearest_tiles_match(demo_root: Path) -> None:
    sources = load_sources(demo_root)
    # 0.05 degree cells at 16 px read COG overviews (a factor of 8 and more)
    plan = plan_tiles(sources, parse_grid("lonlat:0.05", sources.body), 16)
    _same(plan)
    _same(plan_tiles(sources, parse_grid("lonlat:0.02", sources.body), 48), "nearest")
    _same(plan_tiles(sources, parse_grid("lonlat:0.02", sources.body), 40), normalize="percentile")


def _one_raster(folder: Path, img: np.ndarray, crs: str, transform: Affine) -> Any:
    """The sources of a folder catalog of one GeoTIFF (no data 0)."""
    write_geotiff(folder / "r.tif", img, crs, transform, nodata=0)
    build_folder_catalog(folder)
    return load_sources(folder)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two geographic rasters in 0..360 longitudes meeting at 190 E, with no-data holes."""
    folder = tmp_path_factory.mktemp("mosaic")
    res = 0.05 / 64
    for i, lon in enumerate((189.9, 190.0)):
        img = pattern(128, 128, seed=i)
        img[40:60, 100:128] = 0  # a hole at the seam: the other raster fills it
        img[:5, :] = 0
        t = Affine(res, 0, lon, 0, -res, 0.1)
        write_geotiff(folder / f"t{i}.tif", img, "IAU_2015:49900", t, nodata=0, cog=i == 0)
    build_folder_catalog(folder)
    return folder


@pytest.mark.parametrize("px", [32, 64, 150])
def test_mosaic_holes_and_edges_match(mosaic: Path, px: int) -> None:
    sources = load_sources(mosaic)
    plan = plan_tiles(sources, parse_grid("lonlat:0.03"), px)
    assert any(len(ss) == 2 for ss in plan.cell_sources)
    batch = _same(plan)
    assert ((batch.valid > 0) & (batch.valid < 1)).any()  # cells over the raster edges


def test_projected_and_polar_sources_match(tmp_path: Path) -> None:
    # equirectangular metres (separable: batched) and polar stereographic (cell by cell)
    transform = Affine(100.0, 0, 0.0, 0, -100.0, 20000.0)
    sources = _one_raster(tmp_path / "proj", pattern(200, 200, seed=3), "IAU_2015:49910", transform)
    _same(plan_tiles(sources, parse_grid("lonlat:0.1"), 48))
    _same(plan_tiles(sources, parse_grid("equal-area:5km"), 48))  # equal-area cells: not separable


def test_unreadable_raster_fails_its_cells_only(demo_root: Path, tmp_path: Path) -> None:
    import dataclasses

    sources = load_sources(demo_root)
    plan = plan_tiles(sources, parse_grid("lonlat:0.02", sources.body), 32).subset(0, 200)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(Path(plan.sources[0].href).read_bytes()[:5000])
    plan.sources[0] = dataclasses.replace(plan.sources[0], href=str(broken))
    batch = _same(plan)
    failed = {c for c, _ in batch.errors}
    assert failed and len(failed) < len(plan)
    assert all(v == 0 for c, v in zip(batch.cells, batch.valid, strict=True) if int(c) in failed)


def test_worker_processes_give_the_same_batches(demo_root: Path) -> None:
    sources = load_sources(demo_root)
    plan = plan_tiles(sources, parse_grid("lonlat:0.02", sources.body), 32).subset(0, 120)
    threads = list(iter_tile_batches(plan, 40, workers=2))
    procs = list(iter_tile_batches(plan, 40, workers=2, scheduler="processes"))
    assert [len(b.cells) for b in procs] == [40, 40, 40]
    for a, b in zip(threads, procs, strict=True):
        np.testing.assert_array_equal(a.cells, b.cells)
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_context_tiles_show_the_cell_in_their_middle(mosaic: Path) -> None:
    sources = load_sources(mosaic)
    grid = parse_grid("lonlat:0.01")
    alone = plan_tiles(sources, grid, 20)
    ringed = plan_tiles(sources, grid, 60, context=1.0)
    np.testing.assert_array_equal(alone.cells, ringed.cells)  # the same cells are planned
    # a cell at the seam of the two rasters lists the one under its margin as well
    assert sum(len(ss) for ss in ringed.cell_sources) > sum(len(ss) for ss in alone.cell_sources)
    batch = _same(ringed)
    one = read_batch(alone)
    inner = (one.valid == 1) & (batch.valid == 1)
    assert inner.sum() > 10
    # same pixel positions: the middle third of a context tile is the cell's own tile
    np.testing.assert_allclose(batch.pixels[inner][:, 20:40, 20:40], one.pixels[inner], atol=1e-5)
    # cells partly over the imagery's edge: valid is their own share, as without context
    np.testing.assert_array_equal(batch.valid, one.valid)


def test_context_out_of_range_is_refused(mosaic: Path) -> None:
    from marscope_stac.core.errors import ConfigError

    sources = load_sources(mosaic)
    with pytest.raises(ConfigError, match="tile context"):
        plan_tiles(sources, parse_grid("lonlat:0.01"), 20, context=-1)


@pytest.mark.parametrize("crs", ["IAU_2015:49900", "IAU_2015:49910"])
def test_context_across_a_global_rasters_seam(tmp_path: Path, crs: str) -> None:
    # a global raster (degrees, or equirectangular metres): the ring of a cell at -180
    # reaches past the raster's edge and reads on from its other side
    step = 1.0 if crs.endswith("49900") else 3396190.0 * np.pi / 180.0
    transform = Affine(step, 0, -180.0 * step, 0, -step, 90.0 * step)
    sources = _one_raster(tmp_path / "globe", pattern(180, 360, seed=5), crs, transform)
    grid = parse_grid("lonlat:2")
    plan = plan_tiles(sources, grid, 24, bbox=[-180, -10, 180, 10], context=1)
    batch = _same(plan)
    lon = grid.centers(batch.cells)[:, 0]
    west, east = lon < -178, lon > 178
    assert west.any() and (batch.valid[west | east] == 1).all()
    # the cell's own pixels are those of its tile without context (not torn or blurred)
    alone = read_batch(plan_tiles(sources, grid, 8, bbox=[-180, -10, 180, 10]))
    np.testing.assert_array_equal(alone.cells, batch.cells)
    np.testing.assert_allclose(batch.pixels[:, 8:16, 8:16], alone.pixels, atol=1e-5)
    # and the margin across the seam shows the cells on the other side of it
    np.testing.assert_allclose(batch.pixels[west][:, 8:16, :8], alone.pixels[east], atol=1e-5)
    np.testing.assert_allclose(batch.pixels[east][:, 8:16, 16:], alone.pixels[west], atol=1e-5)


def test_decimated_reads_across_the_seam_of_an_odd_width_raster(tmp_path: Path) -> None:
    # a global raster 1001 px wide, read through overviews (large cells, small tiles): the
    # blocks averaged across its edge line up with those inside, in both renderers
    lon = (np.arange(1001) + 0.5) * 360.0 / 1001 - 180.0
    img = np.tile(np.round(125 + 100 * np.sin(np.radians(lon))).astype(np.uint8), (500, 1))
    t = Affine(360.0 / 1001, 0, -180.0, 0, -180.0 / 500, 90.0)
    sources = _one_raster(tmp_path / "odd", img, "IAU_2015:49900", t)
    grid = parse_grid("lonlat:18")
    alone = _same(plan_tiles(sources, grid, 8))
    want = 125 + 100 * np.sin(np.radians(grid.centers(alone.cells)[:, 0]))
    assert np.abs(alone.pixels[:, :, 3:5].mean(axis=(1, 2)) * 255 - want).max() < 12
    ringed = _same(plan_tiles(sources, grid, 8, context=1))
    assert (ringed.valid == 1).all()


@pytest.mark.parametrize("crs", ["IAU_2015:49900", "IAU_2015:49910"])
def test_context_across_the_antimeridian_between_rasters(tmp_path: Path, crs: str) -> None:
    # two rasters (degrees, or equirectangular metres) that meet at 180 degrees: a cell on
    # one side lists the other under its margin, and its ring shows it
    step = 1.0 if crs.endswith("49900") else 3396190.0 * np.pi / 180.0
    for name, west in (("east", 170.0), ("west", -180.0)):
        img = pattern(40, 40, seed=7 if name == "east" else 8)
        t = Affine(0.25 * step, 0, west * step, 0, -0.25 * step, 5.0 * step)
        write_geotiff(tmp_path / "pair" / f"{name}.tif", img, crs, t, nodata=0)
    build_folder_catalog(tmp_path / "pair")
    sources = load_sources(tmp_path / "pair")
    grid = parse_grid("lonlat:2")
    plan = plan_tiles(sources, grid, 24, bbox=[-180, -4, 180, 4], context=1)
    lon = grid.centers(plan.cells)[:, 0]
    west, east = lon < -178, lon > 178
    assert all(len(plan.cell_sources[k]) == 2 for k in np.flatnonzero(west | east))
    batch = _same(plan)
    alone = read_batch(plan_tiles(sources, grid, 8, bbox=[-180, -4, 180, 4]))
    np.testing.assert_allclose(batch.pixels[west][:, 8:16, :8], alone.pixels[east], atol=1e-5)
    np.testing.assert_allclose(batch.pixels[east][:, 8:16, 16:], alone.pixels[west], atol=1e-5)


def test_context_past_the_pole_of_a_projected_raster(tmp_path: Path) -> None:
    # equirectangular metres up to 90 N: margins past the pole have no position there
    step = 3396190.0 * np.pi / 1800.0  # 0.1 degree
    transform = Affine(step, 0, 0.0, 0, -step, 900 * step)
    sources = _one_raster(
        tmp_path / "polar", pattern(100, 100, seed=6), "IAU_2015:49910", transform
    )
    plan = plan_tiles(sources, parse_grid("lonlat:1"), 24, context=1)
    batch = _same(plan)
    top = parse_grid("lonlat:1").centers(batch.cells)[:, 1] > 89
    assert top.any() and (batch.valid[top] == 1).all()


def test_margin_across_the_antimeridian_finds_a_raster_that_stops_short(tmp_path: Path) -> None:
    # a raster ending at 179.5 E is under the margin of the cells at -180..-178 (ring: 178 E)
    for name, west, cols in (("east", 170.0, 38), ("west", -180.0, 40)):
        t = Affine(0.25, 0, west, 0, -0.25, 5.0)
        img = pattern(40, cols, seed=9)
        write_geotiff(tmp_path / "gap" / f"{name}.tif", img, "IAU_2015:49900", t, nodata=0)
    build_folder_catalog(tmp_path / "gap")
    sources = load_sources(tmp_path / "gap")
    grid = parse_grid("lonlat:2")
    plan = plan_tiles(sources, grid, 24, bbox=[-180, -4, -178, 4], context=1)
    names = [[plan.sources[i].item_id for i in ss] for ss in plan.cell_sources]
    assert names and all(len(n) == 2 and "east" in n for n in names)
    batch = _same(plan)
    assert (batch.valid == 1).all()
