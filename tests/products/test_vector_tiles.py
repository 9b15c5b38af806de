"""Detections and their vector tiles against straightforward references, on generated rasters."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import shapely
from _traced import traced_components
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pmtiles.reader import MmapSource, Reader, all_tiles
from scipy import ndimage
from shapely.geometry import shape

from marscope_stac.products.detections import raster_detections
from marscope_stac.products.render import _lat_to_y
from marscope_stac.products.vector import BUFFER, EXTENT, write_vector_pmtiles

TRANSFORM = Affine(0.2, 0.0, -30.0, 0.0, -0.2, 12.0)


values_strategy = arrays(
    np.float32,
    st.tuples(st.integers(1, 14), st.integers(1, 18)),
    elements=st.sampled_from([np.nan, 0.1, 0.55, 0.7, 0.95]),
)


@settings(max_examples=150, deadline=None)
@given(values_strategy)
def test_detections_are_gdal_traced_components(values: np.ndarray) -> None:
    got = raster_detections(values, TRANSFORM, 0.5)
    want = traced_components(values, TRANSFORM, 0.5)
    assert len(got) == len(want)
    if not want:
        return
    ref = np.array([g for g, *_ in want], dtype=object)
    assert np.all(shapely.equals_exact(got.geometry, ref, tolerance=0))
    assert got.polygons.wkb().to_pylist() == list(shapely.to_wkb(ref))
    assert got.columns["max_probability"].tolist() == [t[1] for t in want]
    assert np.allclose(got.columns["mean_probability"], [t[2] for t in want], rtol=1e-12)
    assert got.columns["cells"].tolist() == [t[3] for t in want]


def _tiles(path: Path) -> dict[tuple[int, int, int], list[dict]]:
    import mapbox_vector_tile

    with path.open("rb") as fh:
        raw = dict(all_tiles(Reader(MmapSource(fh)).get_bytes))
    return {
        k: mapbox_vector_tile.decode(gzip.decompress(v), default_options={"y_coord_down": True})[
            "detections"
        ]["features"]
        for k, v in raw.items()
    }


def _in_tile(geom: shapely.Geometry, z: int, tx: int, ty: int) -> shapely.Geometry:
    """A lon/lat polygon cut at a tile's buffered square, in that tile's units (y down)."""
    n = 2**z

    def fwd(xy: np.ndarray) -> np.ndarray:
        x = (xy[:, 0] + 180.0) / 360.0 * n
        return np.column_stack([(x - tx) * EXTENT, (_lat_to_y(xy[:, 1], n) - ty) * EXTENT])

    lo, hi = -BUFFER * EXTENT, (1 + BUFFER) * EXTENT
    return shapely.clip_by_rect(shapely.transform(geom, fwd), lo, lo, hi, hi)


def _decoded(feature: dict) -> shapely.Geometry:
    return shapely.make_valid(shape(feature["geometry"]))


def test_every_tile_holds_each_detection_cut_at_its_edge(tmp_path: Path) -> None:
    """Decoded by mapbox-vector-tile, each tile's features are the detections cut at its square.

    Blobs with holes, single cells and runs straddle tile edges at zooms 3 to 5 (none
    simplified, as the cell-size hint says) and at zoom 2 (simplified).
    """
    rng = np.random.default_rng(11)
    values = (rng.random((150, 300)) * 0.45).astype(np.float32)
    values.flat[rng.integers(0, values.size, 2500)] = 0.9
    grown = ndimage.binary_dilation(values >= 0.5, iterations=2) & (rng.random(values.shape) < 0.6)
    values[grown & (values < 0.5)] = 0.6
    values[:, 150] = 0.8  # a line of cells along lon 0, a tile edge at every zoom
    transform = Affine(0.2, 0.0, -30.0, 0.0, -0.2, 15.0)
    found = raster_detections(values, transform, 0.5)
    assert shapely.get_num_interior_rings(found.geometry).sum() > 0
    path = tmp_path / "d.pmtiles"
    write_vector_pmtiles(path, found, {"name": "t"}, (2, 5), cell_deg=0.2)
    tiles = _tiles(path)
    tree = shapely.STRtree(found.geometry)
    checked = 0
    for (z, tx, ty), feats in tiles.items():
        n = 2**z
        west, east = tx / n * 360 - 180, (tx + 1) / n * 360 - 180
        near = tree.query(shapely.box(west - 2, -85, east + 2, 85))
        want = {}
        for i in near:
            ref = _in_tile(found.geometry[i], z, tx, ty)
            if ref.buffer(-1.0).area > 0:  # more than rounding can take away: must be there
                want[int(i) + 1] = ref
        got = {f["id"]: f for f in feats}
        assert set(want) <= set(got)
        tol = 3.0 if z == 2 else 1.0  # simplified to half a pixel at zoom 2; else rounding
        for fid, ref in want.items():
            mine = _decoded(got[fid])
            assert mine.symmetric_difference(ref).area <= tol * ref.length + 1.0
            props = got[fid]["properties"]
            assert props["cells"] == found.columns["cells"][fid - 1]
            assert props["max_probability"] == found.columns["max_probability"][fid - 1]
            assert props["mean_probability"] == found.columns["mean_probability"][fid - 1]
            checked += 1
    assert checked > 5000


def _polygon(kind: int, x: float, y: float) -> shapely.Geometry:
    from shapely.geometry import MultiPolygon, Polygon, box

    square = box(x, y, x + 2, y + 1)
    holed = box(x, y, x + 3, y + 3).difference(box(x + 1, y + 1, x + 2, y + 2))
    shapes_ = [square, holed, MultiPolygon([square, box(x + 5, y, x + 6, y + 4)]), Polygon()]
    return shapes_[kind]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.floats(-170, 170), st.floats(-80, 80)), max_size=12),
    st.data(),
)
def test_polygon_arrays_keep_every_polygon(items: list, data: st.DataObject) -> None:
    """Polygons, holes, multi-parts and empties survive the arrays: WKB, take, concat, bounds."""
    from marscope_stac.products.polygons import PolygonArrays

    geoms = np.array([_polygon(*t) for t in items], dtype=object)
    arrays = PolygonArrays.from_shapely(geoms)
    assert len(arrays) == len(geoms)
    back = arrays.to_shapely()
    empty = shapely.is_empty(geoms)
    assert (shapely.is_empty(back) == empty).all()
    assert all(shapely.equals_exact(back[~empty], geoms[~empty], tolerance=0))
    wkb = arrays.wkb().to_pylist()
    assert [w for w, e in zip(wkb, empty, strict=True) if not e] == list(
        shapely.to_wkb(geoms[~empty])
    )
    order = np.array(data.draw(st.permutations(range(len(geoms)))), np.int64)
    both = PolygonArrays.concat([arrays.take(order), arrays])
    assert all(shapely.equals_exact(both.to_shapely()[: len(order)], back[order], tolerance=0))
    if (~empty).any():
        assert np.allclose(arrays.bounds()[~empty], shapely.bounds(geoms[~empty]))
