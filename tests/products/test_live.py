"""Tiles made on request from an answer in memory are the archives' tiles, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from pmtiles.reader import MmapSource, Reader, all_tiles

from marscope_stac.products.live import LiveTiles
from marscope_stac.products.render import quantize, write_raster_pmtiles
from marscope_stac.products.vector import write_vector_pmtiles
from marscope_stac.products.write import detection_zoom


def _raster(seed: int) -> tuple[np.ndarray, Affine]:
    """A 0.25-degree raster with blobs (holes, diagonal touches), single cells and no data."""
    rng = np.random.default_rng(seed)
    rows, cols = 120, 300
    v = rng.random((rows, cols)).astype(np.float32) * 0.4
    yy, xx = np.mgrid[0:rows, 0:cols]
    for _ in range(12):
        r, c, k = rng.integers(5, rows - 5), rng.integers(5, cols - 5), rng.integers(2, 6)
        v[(yy - r) ** 2 + (xx - c) ** 2 <= k * k] = 0.9
        v[r, c] = 0.2  # a hole
    single = rng.integers(0, rows * cols, 200)
    v.flat[single] = 0.75
    v[rng.random((rows, cols)) < 0.02] = np.nan
    return v, Affine(0.25, 0.0, -40.0, 0.0, -0.25, 15.0)


def _archive(path: Path) -> dict[tuple[int, int, int], bytes]:
    with path.open("rb") as fh:
        return dict(all_tiles(Reader(MmapSource(fh)).get_bytes))


def test_live_tiles_are_the_archive_tiles(tmp_path: Path) -> None:
    values, transform = _raster(3)
    live = LiveTiles(values, transform, 0.5, detections=True)
    write_raster_pmtiles(tmp_path / "r.pmtiles", quantize(values), transform, {})
    found = live.detections()
    cell = min(abs(transform.a), abs(transform.e))
    zoom = detection_zoom(transform)
    write_vector_pmtiles(tmp_path / "v.pmtiles", found, {}, zoom, cell_deg=cell)
    assert live.n_detections == len(found) > 50
    for name, make, (zmin, zmax) in (
        ("r.pmtiles", live.raster, live.raster_zoom),
        ("v.pmtiles", live.vector, live.vector_zoom),
    ):
        archive = _archive(tmp_path / name)
        assert archive
        for z in range(max(0, zmin - 1), zmax + 2):  # a zoom beyond each end: no tiles
            n = 2**z
            for x in range(n):
                for y in range(n):
                    assert make(z, x, y) == archive.get((z, x, y)), (name, z, x, y)


def test_an_answer_without_detections_or_data_has_no_tiles() -> None:
    values, transform = _raster(4)
    quiet = LiveTiles(np.minimum(values, 0.3), transform, 0.5, detections=True)
    assert quiet.n_detections == 0 and quiet.vector(*quiet.vector_zoom[:1], 0, 0) is None
    assert quiet.raster(0, 0, 0) is not None
    empty = LiveTiles(np.full_like(values, np.nan), transform, 0.5, detections=False)
    assert empty.n_detections is None and empty.raster(0, 0, 0) is None


def test_an_answer_labels_its_detections_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import marscope_stac.products.live as live_mod
    from marscope_stac.products.detections import raster_detections

    values, transform = _raster(5)
    calls: list[float] = []
    real = live_mod.label_detections

    def counted(v: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
        calls.append(threshold)
        return real(v, threshold)

    monkeypatch.setattr(live_mod, "label_detections", counted)
    live = LiveTiles(values, transform, 0.5, detections=True)
    n = live.n_detections  # the count the answer shows first
    found = live.detections()  # then the vector tiles trace them
    assert calls == [0.5] and n == len(found) > 50
    assert live._labels is None and live.n_detections == n  # the labels are not kept
    alone = raster_detections(values, transform, 0.5)  # labelled by itself: the same answer
    assert [g.wkb for g, _ in alone] == [g.wkb for g, _ in found]
    assert [a for _, a in alone] == [a for _, a in found]
