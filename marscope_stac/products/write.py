"""Query products on disk: probability COG, preview, raster and vector PMTiles, detections, STAC.

:func:`write_query_product` publishes a scored query under ``<out>/queries/<query id>/``:

- ``probability.tif``: COG of calibrated probabilities on the grid (uint8, probability =
  value x 0.004, nodata 255 where there is no imagery), in the body's lon/lat CRS;
- ``preview.png``: the probability map in colour;
- ``probability.pmtiles``: 8-bit palette PNG raster tiles (Web-Mercator z/x/y on the body's
  sphere), two zoom levels beyond the grid's own resolution;
- ``detections.parquet`` / ``detections.pmtiles``: cells at or above the threshold merged
  into polygons with probability attributes (GeoParquet in the body's CRS; vector tiles);
- ``scores.parquet``: every cell's id, score and probability at its centre (GeoParquet);
- ``examples.geojson``: the examples the query was given, positive and negative (a
  ``labels`` asset; only when it had any);
- a STAC Item with those assets, the query and its parameters, ``processing:*`` fields and
  ``derived_from`` links to the embedding item, the model item and the source rasters.

The query id is derived from the query, the embedding set and every parameter that changes
the products (threshold, scoring), so re-running the same query replaces its products
atomically (a staging folder swapped into place) instead of adding a duplicate.
:func:`write_class_product` does the same for zero-shot classification. Nothing here loads a
model: the query engine (:mod:`marscope_stac.engine.engine`) scores, this module writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from affine import Affine
from numpy.typing import NDArray

from marscope_stac.core.errors import OutputError
from marscope_stac.core.fs import atomic_output, staged_directory
from marscope_stac.core.owned import carry_over
from marscope_stac.core.text import count_list, join_lines
from marscope_stac.grid.grids import Grid
from marscope_stac.index.geoparquet import Covering, numpy_array, point_wkb, write_geoparquet
from marscope_stac.products.cog import write_cog
from marscope_stac.products.detections import Detections, raster_detections
from marscope_stac.products.ids import OPTIONAL_PRODUCTS
from marscope_stac.products.items import ASSET_FILES, ScoredSet, _query_item
from marscope_stac.products.render import (
    PROBABILITY_NODATA,
    PROBABILITY_SCALE,
    RasterLayout,
    quantize,
    raster_zoom_range,
    save_png,
    tile_metadata,
    write_raster_pmtiles,
    zoom_range,
)
from marscope_stac.products.vector import write_vector_pmtiles
from marscope_stac.query.scoring import QuerySpec, ScoredQuery
from marscope_stac.stac.build import (
    SSYS_V1,
    ssys_fields,
    stac_collection,
)
from marscope_stac.stac.catalog import OutputCatalog

__all__ = [
    "CLASS_COLOURS",
    "CellColumns",
    "ClassProduct",
    "QueryProduct",
    "detection_zoom",
    "read_scores",
    "write_detections",
    "write_query_product",
    "write_scores",
]


log = logging.getLogger(__name__)

CLASS_COLOURS = (
    "808080",
    "e6194b",
    "3cb44b",
    "ffe119",
    "4363d8",
    "f58231",
    "911eb4",
    "46f0f0",
    "f032e6",
    "bcf60c",
    "fabebe",
    "008080",
    "e6beff",
    "9a6324",
)
"""Class map colours (background first)."""


@dataclass(kw_only=True)
class QueryProduct:
    """What :func:`write_query_product` wrote.

    Attributes:
        query_id: Id of the STAC item (and name of its folder).
        folder: The product folder.
        item_path: The STAC item.
        scored: Scores and probabilities of every cell.
        n_detections: Number of detection polygons (None when they were not made).
        threshold: Detection threshold.
        assets: Asset key -> file.
        timings: Seconds spent per step (scoring, raster, COG, ...).
    """

    query_id: str
    folder: Path
    item_path: Path
    scored: ScoredQuery
    n_detections: int | None
    threshold: float
    assets: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Lines for people."""
        found = (
            "no detections made"
            if self.n_detections is None
            else (f"{self.n_detections} detections at p >= {self.threshold:g}")
        )
        lines = [f"query {self.query_id}: {found} over {len(self.scored.cells)} cells"]
        lines += [f"  {k}: {v}" for k, v in self.assets.items()]
        lines.append(f"  STAC item: {self.item_path}")
        return "\n".join(lines)


@dataclass(kw_only=True)
class ClassProduct:
    """What :func:`write_class_product` wrote."""

    query_id: str
    folder: Path
    item_path: Path
    classes: list[str]
    counts: dict[str, int]

    def summary(self) -> str:
        """Lines for people."""
        return join_lines(
            f"classification {self.query_id}: {count_list(self.counts)}",
            f"  class map: {self.folder / 'classes.tif'}",
            f"  probabilities: {self.folder / 'probabilities.tif'}",
            f"  STAC item: {self.item_path}",
        )


class _Clock:
    """Seconds per named step (steps may run in threads at the same time)."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.t
        self.t = now

    def reset(self) -> None:
        self.t = time.perf_counter()

    def timed(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def _queries_collection(grid: Grid, bbox: list[float], start: str, end: str) -> dict[str, Any]:
    """The ``queries`` collection of one product's extent.

    :meth:`~marscope_stac.stac.catalog.OutputCatalog.add` merges it with the collection on disk
    (extent, item links) under the catalog's lock.
    """
    return stac_collection(
        "queries",
        "Query products",
        "Probability maps, detections and class maps of landform queries.",
        (bbox, [start, end]),
        {"ssys:targets": [grid.body.name]},
        [SSYS_V1],
        ssys_fields(grid.body),
    )


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class CellColumns:
    """The query-independent columns of ``scores.parquet``: ids, indexes, centre points.

    Built once per embedding set (the engine keeps them) and reused by every query.
    """

    cell_id: pa.Array
    cell_index: pa.Array
    geometry: pa.Array
    covering: Covering

    @classmethod
    def of(cls, grid: Grid, cells: NDArray[np.int64]) -> CellColumns:
        """The columns of ``cells`` on ``grid``."""
        cells = np.asarray(cells, np.int64)
        row, col = grid.row_col(cells)
        ids = _cell_id_array(grid.spec, row, col)
        centres = grid.centers(cells)
        boxes = Covering.of(np.concatenate([centres, centres], axis=1))  # a point's box
        return cls(ids, numpy_array(cells), point_wkb(centres[:, 0], centres[:, 1]), boxes)

    @classmethod
    def cached(cls, grid: Grid, cells: NDArray[np.int64], path: Path) -> CellColumns:
        """The columns of ``cells``, kept in an Arrow file at ``path`` for later processes.

        Making them takes about a second at 1.44 M cells; the file (memory-mapped, no copy)
        answers in milliseconds. It names the grid and a checksum of the cells, so a file
        made for other cells is made again; one that cannot be written (a read-only set) is
        not kept.
        """
        cells = np.ascontiguousarray(cells, np.int64)
        key = {"grid": grid.spec, "cells": hashlib.sha256(cells.tobytes()).hexdigest()}
        with contextlib.suppress(OSError, pa.ArrowInvalid, KeyError, ValueError):
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            meta = table.schema.metadata or {}
            if json.loads(meta[b"key"]) == key and table.num_rows == len(cells):
                column = [table.column(i).combine_chunks() for i in range(4)]
                total = [float(v) for v in json.loads(meta[b"total"])]
                return cls(column[0], column[1], column[2], Covering(column[3], total))
        made = cls.of(grid, cells)
        table = pa.table(
            [made.cell_id, made.cell_index, made.geometry, made.covering.column],
            names=["cell_id", "cell_index", "geometry", "bbox"],
            metadata={"key": json.dumps(key), "total": json.dumps(made.covering.total)},
        )
        try:
            with (
                atomic_output(path, suffix=".arrow") as tmp,
                pa.OSFile(str(tmp), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table)
        except (OSError, OutputError) as exc:
            log.debug("cell columns not kept at %s: %s", path, exc)
        return made


def _decimal(values: NDArray[np.int64]) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """Decimal digits of non-negative integers as rows of one width, and which are used."""
    v = np.asarray(values, np.int64)
    width = len(str(int(v.max()))) if len(v) else 1
    digits = np.empty((len(v), width), np.uint8)
    rest = v.copy()
    for j in range(width - 1, -1, -1):
        digits[:, j] = ord("0") + rest % 10
        rest //= 10
    n_digits = np.ones(len(v), np.int64)
    for k in range(1, width):
        n_digits += v >= 10**k
    return digits, np.arange(width) >= (width - n_digits)[:, None]


def _cell_id_array(spec: str, row: NDArray[np.int64], col: NDArray[np.int64]) -> pa.Array:
    """Cell ids ``"<grid>:<row>:<col>"`` (as :meth:`Grid.cell_ids`) as an arrow string array.

    Built from rows of digits with numpy (pyarrow's string functions would import pandas).
    """
    n = len(row)
    prefix = np.frombuffer(f"{spec}:".encode(), np.uint8)
    row_digits, row_used = _decimal(row)
    col_digits, col_used = _decimal(col)
    colon = np.full((n, 1), ord(":"), np.uint8)
    dense = np.concatenate([np.tile(prefix, (n, 1)), row_digits, colon, col_digits], axis=1)
    used = np.concatenate(
        [np.ones((n, len(prefix)), bool), row_used, np.ones((n, 1), bool), col_used], axis=1
    )
    offsets = np.concatenate([[0], np.cumsum(used.sum(axis=1))])
    kind, dtype = (pa.string(), np.int32) if offsets[-1] < 2**31 else (pa.large_string(), np.int64)
    buffers = [None, pa.py_buffer(offsets.astype(dtype)), pa.py_buffer(dense[used].tobytes())]
    return pa.Array.from_buffers(kind, n, buffers)


def write_scores(
    path: Path, grid: Grid, result: ScoredQuery, columns: CellColumns | None = None
) -> Path:
    """Per-cell scores and probabilities as GeoParquet (cell centre points, body CRS)."""
    cols = columns or CellColumns.of(grid, result.cells)
    return write_geoparquet(
        path,
        {
            "cell_id": cols.cell_id,
            "cell_index": cols.cell_index,
            "score": numpy_array(result.scores, np.float32),
            "probability": numpy_array(result.probability, np.float32),
        },
        cols.geometry,
        grid.body.crs,
        ["Point"],
        cols.covering,
        dictionary=False,
    )


def read_scores(path: str | Path) -> Any:
    """Read a product's per-cell scores (see :func:`write_scores`) as a GeoDataFrame."""
    import geopandas as gpd

    return gpd.read_parquet(path)


def write_detections(path: Path, grid: Grid, found: Detections) -> Path:
    """Write detections as GeoParquet: polygons in the body's CRS and their attributes.

    The columns are ``max_probability``, ``mean_probability`` and ``cells`` (how many grid
    cells the detection joins); the file carries GeoParquet 1.1 metadata with a bbox
    covering column. Returns ``path``.
    """
    return write_geoparquet(
        path,
        {
            "max_probability": numpy_array(found.columns["max_probability"], np.float64),
            "mean_probability": numpy_array(found.columns["mean_probability"], np.float64),
            "cells": numpy_array(found.columns["cells"], np.int64),
        },
        found.polygons.wkb(),
        grid.body.crs,
        found.geometry_types(),
        Covering.of(found.polygons.bounds()),
    )


def write_query_product(
    out: str | Path,
    qid: str,
    where: ScoredSet,
    result: ScoredQuery,
    spec: QuerySpec,
    *,
    threshold: float,
    timings: dict[str, float] | None = None,
    products: Sequence[str] = OPTIONAL_PRODUCTS,
    raster: NDArray[np.float32] | None = None,
    found: Callable[[], Detections] | None = None,
) -> QueryProduct:
    """Write a scored query's files and STAC item (see the module docstring).

    The request was checked before (:meth:`~marscope_stac.engine.QueryRequest.check`).

    Args:
        out: Products catalog folder.
        qid: Query id (:func:`~marscope_stac.products.ids.query_id`).
        where: The embedding set that was scored.
        result: Scores and probabilities of every cell, in the set's row order.
        spec: The query, as recorded in the item.
        threshold: Detection threshold on the probability, in [0, 1].
        timings: Adds seconds per step to this dict.
        products: Which files to write besides the COG (see :data:`OPTIONAL_PRODUCTS`).
        raster: The probability raster, when laid out already.
        found: Gives the detections, when something traced them already.

    Raises:
        OutputError: if ``out`` is not a products catalog or cannot be written.
    """
    catalog = OutputCatalog(out)
    clock = _Clock(timings if timings is not None else {})
    folder = Path(out) / "queries" / qid
    catalog.existing_collection(folder.parent / "collection.json", claim=True)  # damaged: first
    where.es.stac_item()  # a damaged set item too, before any file is replaced
    grid, layout = where.grid, where.layout
    values = clock.timed("raster", layout.raster, result.probability) if raster is None else raster
    meta = _tile_metadata(qid, spec, grid)
    with staged_directory(folder, overwrite=True, owned=True) as stage:
        files = _Files(stage, meta, grid, layout, values, clock, found)
        feats = files.write(result, threshold, where.columns, products)
        assets = _finish_stage(stage, folder, spec, grid)
    clock.reset()
    n_det = len(feats) if "detections" in products else None
    item = _query_item(folder, qid, spec, where, result, threshold, n_det)
    item_path = _add_to_queries(catalog, folder / f"{qid}.json", item, grid)
    clock.lap("STAC")
    return QueryProduct(
        query_id=qid,
        folder=folder,
        item_path=item_path,
        scored=result,
        n_detections=n_det,
        threshold=threshold,
        assets=assets,
        timings=clock.timings,
    )


def _finish_stage(stage: Path, folder: Path, spec: QuerySpec, grid: Grid) -> dict[str, Path]:
    """The examples and a user's files added to a staged product; its assets' final paths."""
    write_examples(stage / ASSET_FILES["examples"], spec, grid)
    carry_over(folder, stage, ASSET_FILES.values())  # a user's files stay
    return {key: folder / name for key, name in ASSET_FILES.items() if (stage / name).is_file()}


def write_examples(path: Path, spec: QuerySpec, grid: Grid) -> Path | None:
    """The query's examples as GeoJSON points (body CRS), or None when it has none.

    Points keep their coordinates, example cells become their centres; each feature's
    ``label`` is ``positive`` or ``negative`` (the web map imports these files back).
    """
    found: list[tuple[float, float, str, str]] = []
    for label, points, cells in (
        ("positive", spec.points, spec.cells),
        ("negative", spec.negatives_points, spec.negative_cells),
    ):
        found += [(float(x), float(y), label, "point") for x, y in points or []]
        if cells:
            ids = [grid.parse_cell_id(c) if isinstance(c, str) else int(c) for c in cells]
            centres = grid.centers(np.asarray(ids, np.int64))
            found += [(float(x), float(y), label, "cell") for x, y in centres]
    if not found:
        return None
    doc = {
        "type": "FeatureCollection",
        "name": "examples",
        "crs": {"type": "name", "properties": {"name": grid.body.geographic_code}},
        "features": [
            {
                "type": "Feature",
                "properties": {"label": label, "from": kind},
                "geometry": {"type": "Point", "coordinates": [x, y]},
            }
            for x, y, label, kind in found
        ],
    }
    path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    return path


def _add_to_queries(catalog: OutputCatalog, path: Path, item: dict[str, Any], grid: Grid) -> Path:
    """Add a query or class item to the ``queries`` collection (its extent grown to cover it)."""
    coll_path = path.parent.parent / "collection.json"
    props = item["properties"]
    start, end = props["start_datetime"], props["end_datetime"]
    coll = _queries_collection(grid, item["bbox"], start, end)
    return catalog.add(coll_path, coll, path, item)


def detection_zoom(transform: Affine) -> tuple[int, int]:
    """Zoom levels of a query's vector tiles: five levels down to one above the grid's."""
    _, base = zoom_range(float(transform.a))
    return (max(0, base - 5), max(0, base - 1))


def _tile_metadata(qid: str, spec: QuerySpec, grid: Grid) -> dict[str, Any]:
    """PMTiles metadata of a query's archives."""
    return tile_metadata(qid, f"probability of {', '.join(spec.text) or 'examples'}", grid.body)


@dataclass
class _Files:
    """What the files of one query product are made from, and where they go."""

    stage: Path
    meta: dict[str, Any]
    grid: Grid
    layout: RasterLayout
    values: NDArray[np.float32]
    clock: _Clock
    found: Callable[[], Detections] | None = None

    def write(
        self,
        result: ScoredQuery,
        threshold: float,
        columns: Callable[[], CellColumns] | None,
        products: Sequence[str],
    ) -> Detections:
        """Write the product's files; returns the detections.

        GDAL, numpy, zlib and pyarrow release the GIL: the COG, the raster PMTiles, the
        detections table and the scores table (with ``columns()``, the set's cell columns,
        made there when first asked for) are written in threads while the preview,
        detections and vector PMTiles are made here.
        """
        stage, clock, transform = self.stage, self.clock, self.layout.transform
        stored = quantize(self.values)
        feats = Detections.empty()
        with ThreadPoolExecutor(4) as pool:
            background = [pool.submit(clock.timed, "COG", self._cog, stored)]
            if "scores" in products:
                background.append(
                    pool.submit(
                        clock.timed,
                        "scores GeoParquet",
                        lambda: write_scores(
                            stage / "scores.parquet", self.grid, result, columns and columns()
                        ),
                    )
                )
            if "tiles" in products:
                zoom = raster_zoom_range(transform, self.layout.shape)
                path = stage / "probability.pmtiles"
                background.append(
                    pool.submit(
                        clock.timed,
                        "raster PMTiles",
                        write_raster_pmtiles,
                        path,
                        stored,
                        transform,
                        self.meta,
                        zoom,
                    )
                )
            if "preview" in products:
                clock.timed("preview", save_png, stage / "preview.png", self.values)
            if "detections" in products:
                feats = self._detections(threshold, pool, background)
            for future in background:
                future.result()
        return feats

    def _cog(self, stored: NDArray[np.uint8]) -> Path:
        return write_cog(
            self.stage / "probability.tif",
            stored,
            self.grid.body.crs,
            self.layout.transform,
            nodata=PROBABILITY_NODATA,
            band_names=["probability"],
            scale=PROBABILITY_SCALE,
            offset=0.0,
            overview_resampling="average",
        )

    def _detections(
        self, threshold: float, pool: ThreadPoolExecutor, background: list[Future[Any]]
    ) -> Detections:
        """Detections GeoParquet (in ``pool``) and vector PMTiles; returns the detections."""
        clock, transform = self.clock, self.layout.transform
        feats = Detections.empty()
        if self.found is not None:
            feats = clock.timed("detections", self.found)
        elif np.greater_equal(self.values, threshold).any():  # NaN: no data
            feats = clock.timed("detections", raster_detections, self.values, transform, threshold)
        path = self.stage / "detections.parquet"
        background.append(
            pool.submit(
                clock.timed, "detections GeoParquet", write_detections, path, self.grid, feats
            )
        )
        if len(feats):
            zoom = detection_zoom(transform)
            path = self.stage / "detections.pmtiles"
            cell = min(abs(transform.a), abs(transform.e))
            clock.timed(
                "vector PMTiles",
                write_vector_pmtiles,
                path,
                feats,
                self.meta,
                zoom,
                cell_deg=cell,
            )
        return feats


# ----------------------------------------------------------------------------- classes
