"""Colour imagery is read as its luma: the one band the models see, in tiles and in training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from _rasters import pattern, write_geotiff
from affine import Affine

from marscope_stac.grid.grids import parse_grid
from marscope_stac.stac.folder import build_folder_catalog
from marscope_stac.stac.raster import LUMA_WEIGHTS, image_bands, one_band
from marscope_stac.stac.read import load_sources
from marscope_stac.tiles.batch import read_batch
from marscope_stac.tiles.plan import plan_tiles
from marscope_stac.train.pairs import _read_image

CRS = "IAU_2015:49900"
TRANSFORM = Affine(0.05 / 64, 0, 10.0, 0, -0.05 / 64, 0.1)


def _colour() -> np.ndarray:
    """Three different textured bands (values 1..250), a no-data corner in every band."""
    rgb = np.stack([pattern(128, 128, seed=s) for s in (1, 2, 3)])
    rgb[:, :20, :20] = 0
    return rgb


def _luma(rgb: np.ndarray) -> np.ndarray:
    w = np.asarray(LUMA_WEIGHTS, np.float32)
    return np.tensordot(w, rgb.astype(np.float32), axes=1).astype(np.float32)


def _tiles(folder: Path, data: np.ndarray) -> np.ndarray:
    write_geotiff(folder / "r.tif", data, CRS, TRANSFORM, nodata=0)
    build_folder_catalog(folder)
    sources = load_sources(folder)
    plan = plan_tiles(sources, parse_grid("lonlat:0.01", sources.body), 32)
    batch = read_batch(plan, "bilinear", "none")
    return np.where(batch.valid[:, None, None] > 0, batch.pixels, np.nan)


def test_colour_tiles_are_the_tiles_of_its_luma(tmp_path: Path) -> None:
    rgb = _colour()
    with rasterio.open(write_geotiff(tmp_path / "probe.tif", rgb, CRS, TRANSFORM)) as ds:
        assert image_bands(ds) == [1, 2, 3]
    luma = _luma(rgb)
    luma[:20, :20] = 0  # the same no-data pixels
    colour, grey = _tiles(tmp_path / "rgb", rgb), _tiles(tmp_path / "luma", luma)
    assert colour.shape == grey.shape and np.isfinite(colour).any()
    np.testing.assert_allclose(colour, grey, atol=1e-3, equal_nan=True)
    # not the red band alone (what a first-band reader would have seen)
    red = _tiles(tmp_path / "red", rgb[0])
    assert np.nanmax(np.abs(colour - red)) > 5


def test_other_multiband_rasters_are_read_from_their_first_band(tmp_path: Path) -> None:
    bands = np.stack([pattern(64, 64, seed=s).astype(np.float32) for s in (4, 5, 6)])
    with rasterio.open(write_geotiff(tmp_path / "f.tif", bands, CRS, TRANSFORM)) as ds:
        assert image_bands(ds) == [1]
        np.testing.assert_array_equal(one_band(ds.read(image_bands(ds))), bands[0])


@pytest.mark.parametrize("nodata", [0, None])
def test_no_data_is_where_every_band_has_it(nodata: int | None) -> None:
    rgb = np.full((3, 2, 2), 7, np.uint8)
    rgb[:, 0, 0] = 0  # every band: no data
    rgb[0, 1, 1] = 0  # one band only: a dark red pixel, data
    out = one_band(rgb, nodata)
    assert np.isnan(out[0, 0]) == (nodata is not None)
    assert np.isfinite(out[1, 1]) and out[1, 1] == pytest.approx(7 * (1 - LUMA_WEIGHTS[0]))


def test_training_reads_colour_as_its_luma(tmp_path: Path) -> None:
    rgb = _colour()
    path = write_geotiff(tmp_path / "rgb.tif", rgb, CRS, TRANSFORM, nodata=0)
    image, _, _ = _read_image(str(path))
    expected = _luma(rgb) / 255.0
    expected[:20, :20] = np.nan
    np.testing.assert_allclose(image, expected, atol=1e-6, equal_nan=True)
