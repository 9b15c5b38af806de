"""Raster and vector PMTiles: tile maths on the Mars sphere, MVT encoding, zoom ranges."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from _mvt import _read_varint, decode_mvt
from hypothesis import given, settings
from hypothesis import strategies as st
from pmtiles.reader import MmapSource, Reader, all_tiles

__all__ = [
    "test_mvt_geometry_encoding",
    "test_raster_tiles_sample_pixel_centres",
    "test_raster_zooms_go_two_levels_deeper_within_a_tile_budget",
    "test_rectangles_encode_as_their_rings_do",
    "test_stored_colour_maps_are_matplotlibs",
    "test_tile_maths_match_planetcantile_mars_tms",
    "test_varints_of_arrays_are_protobufs",
    "test_vector_pmtiles_many_polygons",
    "test_vector_tiles_decode_with_an_independent_decoder",
]


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


def test_mvt_geometry_encoding() -> None:
    """Command streams follow the MVT spec: cursor per feature, rings closed, holes reversed."""
    from shapely.geometry import box

    from marscope_stac.products.mvt import polygon_streams
    from marscope_stac.products.polygons import PolygonArrays

    def _polygon_geometries(geoms: np.ndarray) -> list[bytes | None]:
        s = polygon_streams(PolygonArrays.from_shapely(geoms), 1.0)
        raw = s.data.tobytes()
        return [raw[a:b] if b > a else None for a, b in zip(s.start, s.end, strict=True)]

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


def test_rectangles_encode_as_their_rings_do() -> None:
    """The rectangle shortcut gives the bytes the general ring encoder gives, moved or not."""
    from marscope_stac.products.mvt import box_streams, polygon_streams, varint_matrix
    from marscope_stac.products.polygons import PolygonArrays

    rng = np.random.default_rng(3)
    n = 400
    xa, xb = rng.uniform(0, 2, n), rng.uniform(0, 2, n)
    ya, yb = rng.uniform(0, 2, n), rng.uniform(0, 2, n)
    xb[:20] = xa[:20] + 1e-5  # too thin to keep an area
    boxes = PolygonArrays.boxes(xa, ya, xb, yb)
    idx, corners = boxes.boxes_within()
    assert (idx == np.arange(n)).all()
    general = polygon_streams(boxes, 4096.0)
    quick = box_streams(corners, 4096.0)
    assert (quick.drawn == (general.end > general.start)).all() and not quick.drawn[:20].any()
    raw = general.data.tobytes()
    corner = (1000, 3000)
    head, rest = quick.moved(np.arange(n), corner)
    for i in np.flatnonzero(quick.drawn):
        d = quick.first[i] - corner
        moved = polygon_streams(boxes.take(np.array([i])), 4096.0, corner)
        dense, used = varint_matrix(np.array([[9, *((d << 1) ^ (d >> 63))]]))
        assert moved.data.tobytes() == dense[used].tobytes() + raw[general.rest[i] : general.end[i]]
        assert head[0][i][head[1][i]].tobytes() + rest[0][i][rest[1][i]].tobytes() == (
            moved.data.tobytes()
        )


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([7, 8, 14, 21, 32, 33, 63, 64]),
    rows=st.integers(0, 40),
    cols=st.integers(1, 4),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_varints_of_arrays_are_protobufs(
    bits: int, rows: int, cols: int, signed: bool, seed: int
) -> None:
    """Each row's varints read back (by an independent reader) as its values, in order."""
    from marscope_stac.products.mvt import varint_matrix, varints

    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    values = rng.integers(0, top, (rows, cols), dtype=np.uint64, endpoint=True)
    values[: rows // 3] = top  # the widest values too
    if signed:  # negative int64s are their 64-bit patterns
        values = values.astype(np.int64)
    dense, used = varint_matrix(values)
    for row, d, u in zip(values, dense, used, strict=True):
        data, at, got = d[u].tobytes(), 0, []
        while at < len(data):
            v, at = _read_varint(data, at)
            got.append(v)
        assert got == [int(v) % (1 << 64) for v in row]
    data, ends = varints(values)
    assert len(ends) == values.size and (not values.size or ends[-1] == len(data))


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
    total = sum(len(decode_mvt(gzip.decompress(t))) for _, t in tiles)
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


def test_stored_colour_maps_are_matplotlibs() -> None:
    """The colour tables kept in the package are matplotlib's own, byte for byte."""
    import matplotlib

    from marscope_stac.products.render import STORED_COLOURMAPS, _lut

    for name in STORED_COLOURMAPS:
        want = (matplotlib.colormaps[name](np.linspace(0, 1, 256)) * 255).astype(np.uint8)
        assert (_lut(name) == want).all()
