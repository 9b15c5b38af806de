"""The embeddings table, written as GeoParquet.

One row per grid cell: cell id, geometry, bbox covering, source items and vector.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from numpy.typing import NDArray

from marscope_stac.core.errors import DataError
from marscope_stac.core.fs import (
    atomic_write_bytes,
)
from marscope_stac.grid.grids import Grid
from marscope_stac.index.geoparquet import ROW_GROUP_ROWS, Covering, geo_metadata

__all__ = [
    "EmbeddingTable",
    "quantize_int8",
    "read_embeddings",
    "to_arrow",
    "write_embeddings",
]


@dataclass
class EmbeddingTable:
    """Embeddings of a set of cells, in memory."""

    cell_index: NDArray[np.int64]
    embedding: NDArray[np.floating[Any]]
    valid_fraction: NDArray[np.float32]
    source_items: list[list[str]]

    def __len__(self) -> int:
        return len(self.cell_index)

    @staticmethod
    def concat(tables: Sequence[EmbeddingTable]) -> EmbeddingTable:
        """Concatenate tables in order (an empty result keeps the embedding width)."""
        tabs = [t for t in tables if len(t)]
        if not tabs:
            dim = max((t.embedding.shape[1] for t in tables if t.embedding.ndim == 2), default=0)
            return EmbeddingTable(
                np.zeros(0, np.int64), np.zeros((0, dim), np.float32), np.zeros(0, np.float32), []
            )
        if len(tabs) == 1:
            return tabs[0]
        return EmbeddingTable(
            np.concatenate([t.cell_index for t in tabs]),
            np.concatenate([t.embedding for t in tabs]),
            np.concatenate([t.valid_fraction for t in tabs]),
            [s for t in tabs for s in t.source_items],
        )

    def take(self, rows: NDArray[np.int64] | NDArray[np.bool_]) -> EmbeddingTable:
        """The given rows (indexes or a mask), in that order."""
        idx = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
        return EmbeddingTable(
            self.cell_index[idx],
            self.embedding[idx],
            self.valid_fraction[idx],
            [self.source_items[i] for i in idx.tolist()],
        )

    def sorted(self) -> EmbeddingTable:
        """Rows sorted by cell index (a cell appearing twice keeps its last row)."""
        rev = self.cell_index[::-1]
        _, first_in_rev = np.unique(rev, return_index=True)
        keep = np.sort(len(rev) - 1 - first_in_rev)
        return self.take(keep[np.argsort(self.cell_index[keep], kind="stable")])


def quantize_int8(
    vectors: NDArray[np.floating[Any]],
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Int8 copies of rows with one scale per row: ``row ~= scale * int8_row``.

    The scale maps each row's largest magnitude to 127, so a row's rounding error is at most
    half its scale in every component.
    """
    x = np.asarray(vectors, np.float32)
    peak = np.abs(x).max(axis=1) if x.size else np.zeros(len(x), np.float32)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _bbox_of(grid: Grid, cells: NDArray[np.int64]) -> list[float]:
    if not len(cells):
        return [0.0, 0.0, 0.0, 0.0]
    b = grid.bounds(cells)
    return [float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())]


def _arrow_rows(table: EmbeddingTable, grid: Grid) -> pa.Table:
    n = len(table)
    dim = table.embedding.shape[1] if table.embedding.ndim == 2 else 0
    if dim < 1:
        raise DataError("cannot store embeddings of unknown width (empty table)")
    bounds = grid.bounds(table.cell_index) if n else np.zeros((0, 4))
    wkb = shapely.to_wkb(shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3]))
    emb16 = np.ascontiguousarray(table.embedding, dtype=np.float16).reshape(-1)
    return pa.table(
        {
            "cell_id": pa.array(grid.cell_ids(table.cell_index) if n else [], pa.string()),
            "cell_index": pa.array(table.cell_index, pa.int64()),
            "geometry": pa.array(list(wkb), pa.binary()),
            "bbox": Covering.of(bounds).column,
            "source_items": pa.array(table.source_items, pa.list_(pa.string())),
            "valid_fraction": pa.array(table.valid_fraction, pa.float32()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb16, type=pa.float16()), dim),
        }
    )


def _schema_metadata(
    grid: Grid, bbox: Sequence[float], extra: dict[str, str] | None
) -> dict[bytes, bytes]:
    return {
        b"geo": json.dumps(geo_metadata(grid.body.crs, ["Polygon"], bbox)).encode(),
        b"marscope": json.dumps({"grid": grid.spec, **(extra or {})}).encode(),
    }


def to_arrow(table: EmbeddingTable, grid: Grid, extra: dict[str, str] | None = None) -> pa.Table:
    """Arrow table with GeoParquet metadata for ``table``'s cells on ``grid``."""
    arrow = _arrow_rows(table, grid)
    return arrow.replace_schema_metadata(
        _schema_metadata(grid, _bbox_of(grid, table.cell_index), extra)
    )


def write_embeddings(
    path: str | Path,
    table: EmbeddingTable,
    grid: Grid,
    extra: dict[str, str] | None = None,
    row_group_size: int = ROW_GROUP_ROWS,
) -> Path:
    """Write ``table`` as GeoParquet at ``path`` (atomically, zstd-compressed)."""
    buf = io.BytesIO()
    pq.write_table(
        to_arrow(table, grid, extra), buf, compression="zstd", row_group_size=row_group_size
    )
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_embeddings(paths: str | Path | Sequence[str | Path]) -> EmbeddingTable:
    """Read one or more embedding GeoParquet files, concatenated in the given order.

    Embeddings come back as float16, exactly as stored.

    Raises:
        DataError: if a file is not an embedding table.
    """
    files = [paths] if isinstance(paths, str | Path) else list(paths)
    tables = []
    for p in files:
        try:
            t = pq.read_table(
                p, columns=["cell_index", "embedding", "valid_fraction", "source_items"]
            )
            col = t.column("embedding").combine_chunks()
            dim = col.type.list_size
        except (OSError, pa.ArrowInvalid, KeyError, AttributeError) as exc:
            why = str(exc).splitlines()[0][:120]
            raise DataError(
                f"{p} is not a readable embedding table ({why}); it is damaged: delete it and "
                "embed again (a shard's cells are embedded again, a set's table is rebuilt)"
            ) from exc
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float16, copy=False)
        tables.append(
            EmbeddingTable(
                t.column("cell_index").to_numpy().astype(np.int64),
                values.reshape(-1, dim) if len(t) else np.zeros((0, dim), np.float16),
                t.column("valid_fraction").to_numpy().astype(np.float32),
                t.column("source_items").to_pylist(),
            )
        )
    return EmbeddingTable.concat(tables)
