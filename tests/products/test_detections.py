"""Detections built with shapely's array functions are GDAL's traced polygons, exactly."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import shapely
from _traced import traced_components
from affine import Affine
from scipy import ndimage

from marscope_stac.products.vector import raster_detections


def test_detections_are_the_traced_polygons_with_holes_and_no_data() -> None:
    rng = np.random.default_rng(5)
    values = (rng.random((120, 300)) * 0.45).astype(np.float32)
    values.flat[rng.integers(0, values.size, 900)] = 0.9
    grown = ndimage.binary_dilation(values >= 0.5, iterations=2) & (rng.random(values.shape) < 0.6)
    values[grown & (values < 0.5)] = 0.6
    values[rng.random(values.shape) < 0.02] = np.nan
    transform = Affine(0.2, 0.0, -30.0, 0.0, -0.2, 12.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to silence (GDAL's tracing is not muffled)
        got = raster_detections(values, transform, 0.5)
    want = [(g, m, c) for g, m, _, c in traced_components(values, transform, 0.5)]
    assert len(got) == len(want) > 500
    geoms = np.array([g for g, _ in got])
    assert shapely.get_num_interior_rings(geoms).sum() > 0  # holes are kept
    assert np.all(shapely.equals_exact(geoms, np.array([g for g, _, _ in want]), tolerance=0))
    assert [p["max_probability"] for _, p in got] == [m for _, m, _ in want]
    assert [p["cells"] for _, p in got] == [c for _, _, c in want]


def test_the_cell_size_hint_spares_simplification_not_detail(tmp_path: Path) -> None:
    from marscope_stac.products.vector import write_vector_pmtiles

    rng = np.random.default_rng(2)
    values = (rng.random((200, 400)) * 0.45).astype(np.float32)
    values.flat[rng.integers(0, values.size, 3000)] = 0.9
    values[ndimage.binary_dilation(values >= 0.5) & (rng.random(values.shape) < 0.5)] = 0.7
    feats = raster_detections(values, Affine(0.2, 0.0, -40.0, 0.0, -0.2, 20.0), 0.5)
    plain, hinted = tmp_path / "plain.pmtiles", tmp_path / "hinted.pmtiles"
    write_vector_pmtiles(plain, feats, {"name": "t"}, (0, 4))
    write_vector_pmtiles(hinted, feats, {"name": "t"}, (0, 4), cell_deg=0.2)
    assert plain.read_bytes() == hinted.read_bytes()


def test_multipolygons_with_holes_and_empty_features_encode(tmp_path: Path) -> None:
    import gzip

    import mapbox_vector_tile
    from pmtiles.reader import MmapSource, Reader, all_tiles
    from shapely.geometry import MultiPolygon, box

    from marscope_stac.products.vector import write_vector_pmtiles

    multi = MultiPolygon([box(5, 5, 6, 6), box(7, 7, 9, 9).difference(box(7.5, 7.5, 8, 8))])
    holed = box(-4, -4, 0, 0).difference(box(-3, -3, -2, -2))
    attrs = {"max_probability": 0.9, "mean_probability": 0.8, "cells": 3}
    write_vector_pmtiles(tmp_path / "m.pmtiles", [(multi, attrs), (holed, attrs)], {}, (0, 0))
    with (tmp_path / "m.pmtiles").open("rb") as fh:
        [(_, data)] = list(all_tiles(Reader(MmapSource(fh)).get_bytes))
    feats = mapbox_vector_tile.decode(gzip.decompress(data))["detections"]["features"]
    kinds = sorted((f["geometry"]["type"], len(f["geometry"]["coordinates"])) for f in feats)
    assert kinds == [("MultiPolygon", 2), ("Polygon", 2)]  # two parts; exterior and hole
    [m] = [f for f in feats if f["geometry"]["type"] == "MultiPolygon"]
    assert sorted(len(part) for part in m["geometry"]["coordinates"]) == [1, 2]
