"""Answers held in memory: a query's map tiles on request, before its files are written.

A web map needs the tiles of what it shows, not the archives: :class:`LiveTiles` makes any
tile of a query's raster and vector PMTiles from the probability raster in memory, the same
bytes the archives hold (one tile's share of :func:`~marscope_stac.products.render.\
write_raster_pmtiles` and :func:`~marscope_stac.products.vector.write_vector_pmtiles`), so a
server can answer as soon as the cells are scored and write the files afterwards
(:class:`LiveAnswer`). Detections are traced on the first vector tile asked for (or when the
files are written), once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from affine import Affine
from numpy.typing import NDArray

from marscope_stac.products.detections import Detections, label_detections, raster_detections
from marscope_stac.products.items import ScoredSet
from marscope_stac.products.render import (
    PROBABILITY_NODATA,
    padded_bytes,
    quantize,
    raster_palette,
    raster_tile,
    raster_zoom_range,
)
from marscope_stac.products.vector import VectorLevels, vector_tile
from marscope_stac.products.write import QueryProduct, detection_zoom, write_query_product
from marscope_stac.query.scoring import QuerySpec, ScoredQuery
from marscope_stac.stac.catalog import OutputCatalog

__all__ = ["LiveAnswer", "LiveTiles"]


class LiveTiles:
    """The tiles of a query's raster and vector PMTiles, made on request from its raster.

    Args:
        values: Probability raster (NaN: no data), north up.
        transform: Its pixel-to-lon/lat transform.
        threshold: Detection threshold on the probability.
        detections: Whether the query has detections (vector tiles) at all.
    """

    def __init__(
        self, values: NDArray[np.float32], transform: Affine, threshold: float, detections: bool
    ) -> None:
        self.values, self.transform, self.threshold = values, transform, threshold
        self.raster_zoom = raster_zoom_range(transform, values.shape)
        self.vector_zoom = detection_zoom(transform)
        self.has_detections = detections
        self._lock = threading.Lock()
        self._found: Detections | None = None
        self._labels: tuple[NDArray[np.int32], int] | None = None
        self._levels: VectorLevels | None = None

    @cached_property
    def _padded(self) -> NDArray[np.uint8] | None:
        stored = quantize(self.values)
        if (stored == PROBABILITY_NODATA).all():
            return None
        return padded_bytes(stored, 0, PROBABILITY_NODATA)

    def _labelled(self) -> tuple[NDArray[np.int32], int]:
        """The detections' components, labelled once (counted first, traced later); locked."""
        if self._labels is None:
            self._labels = label_detections(self.values, self.threshold)
        return self._labels

    @property
    def n_detections(self) -> int | None:
        """How many detections the query has (components of cells at or above the threshold)."""
        if not self.has_detections:
            return None
        with self._lock:
            return len(self._found) if self._found is not None else self._labelled()[1]

    @property
    def bounds(self) -> list[float]:
        """West, south, east, north of the raster, in degrees."""
        t, (rows, cols) = self.transform, self.values.shape
        return [t.c, t.f + t.e * rows, t.c + t.a * cols, t.f]

    def detections(self) -> Detections:
        """The query's detections (traced once, on first use)."""
        with self._lock:
            if self._found is None:
                labelled = self._labelled()
                self._found = (
                    raster_detections(self.values, self.transform, self.threshold, labelled)
                    if labelled[1]
                    else Detections.empty()
                )
                self._labels = None  # traced: the raster of labels is not kept
            return self._found

    def raster(self, z: int, x: int, y: int) -> bytes | None:
        """PNG of raster tile z/x/y, or None where the archive has no tile."""
        if self._padded is None:
            return None
        return raster_tile(
            self._padded, self.transform, (z, x, y), self.raster_zoom, raster_palette()
        )

    def vector(self, z: int, x: int, y: int) -> bytes | None:
        """gzip-compressed Mapbox Vector Tile z/x/y, or None where the archive has no tile."""
        if not self.has_detections or not self.vector_zoom[0] <= z <= self.vector_zoom[1]:
            return None
        found = self.detections()
        if not len(found):
            return None
        with self._lock:  # each zoom is projected once; its tiles are then encoded side by side
            if self._levels is None:
                cell = min(abs(self.transform.a), abs(self.transform.e))
                self._levels = VectorLevels(found, self.vector_zoom, cell_deg=cell)
            self._levels.prepare(z)
        return vector_tile(self._levels, (z, x, y))


@dataclass
class LiveAnswer:
    """A scored query whose answer is in memory and whose files are written on :meth:`write`.

    Attributes:
        out: Products catalog folder.
        qid: Query id (the product folder's name).
        where: The embedding set that was scored.
        result: Scores and probabilities of every cell.
        spec: The query, as recorded in the item.
        threshold: Detection threshold.
        products: Files to write besides the COG.
        timings: Seconds per step so far (scores); :meth:`write` adds its own.
    """

    out: Path
    qid: str
    where: ScoredSet
    result: ScoredQuery
    spec: QuerySpec
    threshold: float
    products: Sequence[str]
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a damaged queries collection is refused before anything is answered or written
        OutputCatalog(self.out).existing_collection(self.out / "queries" / "collection.json")

    @cached_property
    def tiles(self) -> LiveTiles:
        """The answer's tiles (the raster is laid out on first use)."""
        t0 = time.perf_counter()
        values = self.where.layout.raster(self.result.probability)
        self.timings["raster"] = time.perf_counter() - t0
        return LiveTiles(
            values, self.where.layout.transform, self.threshold, "detections" in self.products
        )

    def write(self, release: bool = False) -> QueryProduct:
        """Write the product's files and STAC item (:func:`write_query_product`).

        ``release`` drops the answer's raster and tiles afterwards (nothing will ask them).
        """
        tiles = self.tiles
        try:
            return self._write(tiles)
        finally:
            if release:
                self.__dict__.pop("tiles", None)

    def _write(self, tiles: LiveTiles) -> QueryProduct:
        return write_query_product(
            self.out,
            self.qid,
            self.where,
            self.result,
            self.spec,
            threshold=self.threshold,
            timings=self.timings,
            products=self.products,
            raster=tiles.values,
            found=tiles.detections,
        )
