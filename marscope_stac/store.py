"""Embedding store: GeoParquet shards, one consolidated GeoParquet, and a FAISS index.

One row per grid cell: ``cell_id`` (stable string id), ``cell_index`` (int64), ``geometry``
(the cell footprint in the body's lon/lat, WKB, CRS as PROJJSON in the ``geo`` metadata),
``source_items`` (ids of the items the tile was read from), ``valid_fraction`` and
``embedding`` (L2-normalised, a fixed-size list of float16: half the size of float32, and
plenty for unit vectors). The FAISS index (exact inner product, ``IndexFlatIP``) holds the
same rows in the same order.

Everything here works on arrays and cell indexes; nothing knows about models or STAC.
"""

from __future__ import annotations

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

from marscope_stac.errors import DataError
from marscope_stac.fsutil import atomic_write_bytes
from marscope_stac.grid import Grid

__all__ = [
    "EmbeddingTable",
    "build_faiss_index",
    "read_embeddings",
    "read_faiss_index",
    "write_embeddings",
]


@dataclass
class EmbeddingTable:
    """Embeddings of a set of cells, in memory."""

    cell_index: NDArray[np.int64]
    embedding: NDArray[np.float32]
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
        return EmbeddingTable(
            np.concatenate([t.cell_index for t in tabs]),
            np.concatenate([t.embedding for t in tabs]),
            np.concatenate([t.valid_fraction for t in tabs]),
            [s for t in tabs for s in t.source_items],
        )

    def sorted(self) -> EmbeddingTable:
        """Rows sorted by cell index (a cell appearing twice keeps its last row)."""
        # keep the last occurrence of each cell, then sort
        rev = self.cell_index[::-1]
        _, first_in_rev = np.unique(rev, return_index=True)
        keep = np.sort(len(rev) - 1 - first_in_rev)
        order = keep[np.argsort(self.cell_index[keep], kind="stable")]
        return EmbeddingTable(
            self.cell_index[order],
            self.embedding[order],
            self.valid_fraction[order],
            [self.source_items[i] for i in order],
        )


def _geo_metadata(grid: Grid, bounds: NDArray[np.float64]) -> dict[str, Any]:
    bbox = (
        [
            float(bounds[:, 0].min()),
            float(bounds[:, 1].min()),
            float(bounds[:, 2].max()),
            float(bounds[:, 3].max()),
        ]
        if len(bounds)
        else [0.0, 0.0, 0.0, 0.0]
    )
    return {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": grid.body.crs.to_json_dict(),
                "bbox": bbox,
                "edges": "planar",
            }
        },
    }


def to_arrow(table: EmbeddingTable, grid: Grid, extra: dict[str, str] | None = None) -> pa.Table:
    """Arrow table with GeoParquet metadata for ``table``'s cells on ``grid``."""
    n = len(table)
    dim = table.embedding.shape[1] if table.embedding.ndim == 2 else 0
    if dim < 1:
        raise DataError("cannot store embeddings of unknown width (empty table)")
    bounds = grid.bounds(table.cell_index) if n else np.zeros((0, 4))
    geoms = shapely.box(bounds[:, 0], bounds[:, 1], bounds[:, 2], bounds[:, 3]) if n else []
    wkb = shapely.to_wkb(geoms) if n else []
    emb16 = table.embedding.astype(np.float16).reshape(-1)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(emb16, type=pa.float16()), dim)
    arrow = pa.table(
        {
            "cell_id": pa.array(grid.cell_ids(table.cell_index) if n else [], pa.string()),
            "cell_index": pa.array(table.cell_index, pa.int64()),
            "geometry": pa.array(list(wkb), pa.binary()),
            "source_items": pa.array(table.source_items, pa.list_(pa.string())),
            "valid_fraction": pa.array(table.valid_fraction, pa.float32()),
            "embedding": emb,
        }
    )
    meta = {b"geo": json.dumps(_geo_metadata(grid, bounds)).encode()}
    meta[b"marscope"] = json.dumps({"grid": grid.spec, **(extra or {})}).encode()
    return arrow.replace_schema_metadata(meta)


def write_embeddings(
    path: str | Path,
    table: EmbeddingTable,
    grid: Grid,
    extra: dict[str, str] | None = None,
    row_group_size: int = 65536,
) -> Path:
    """Write ``table`` as GeoParquet at ``path`` (atomically, zstd-compressed)."""
    import io

    buf = io.BytesIO()
    pq.write_table(
        to_arrow(table, grid, extra), buf, compression="zstd", row_group_size=row_group_size
    )
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_embeddings(paths: str | Path | Sequence[str | Path]) -> EmbeddingTable:
    """Read one or more embedding GeoParquet files, concatenated in the given order.

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
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise DataError(f"{p} is not a readable embedding table: {exc}") from exc
        col = t.column("embedding").combine_chunks()
        dim = col.type.list_size
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        tables.append(
            EmbeddingTable(
                t.column("cell_index").to_numpy().astype(np.int64),
                values.reshape(-1, dim) if len(t) else np.zeros((0, dim), np.float32),
                t.column("valid_fraction").to_numpy().astype(np.float32),
                t.column("source_items").to_pylist(),
            )
        )
    return EmbeddingTable.concat(tables)


def build_faiss_index(embedding: NDArray[np.float32], path: str | Path) -> Path:
    """Write an exact inner-product FAISS index (``IndexFlatIP``) over ``embedding`` rows."""
    import faiss

    x = np.ascontiguousarray(embedding, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    data = faiss.serialize_index(index)
    atomic_write_bytes(path, bytes(np.asarray(data)))
    return Path(path)


def read_faiss_index(path: str | Path) -> Any:
    """Load a FAISS index written by :func:`build_faiss_index`."""
    import faiss

    try:
        data = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
        return faiss.deserialize_index(data)
    except (OSError, RuntimeError) as exc:
        raise DataError(f"{path} is not a readable FAISS index: {exc}") from exc
