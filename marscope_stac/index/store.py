"""Embedding store: an embedding set on disk, its GeoParquet, its scoring arrays and FAISS index.

An embedding set is a folder (``<products>/embeddings/<set id>/``) holding one row per grid
cell, in cell order, in several layouts that agree row for row:

``embeddings.parquet`` (the interoperable asset)
    GeoParquet: ``cell_id`` (stable string id), ``cell_index`` (int64), ``geometry`` (the cell
    footprint in the body's lon/lat, WKB, CRS as PROJJSON in the ``geo`` metadata),
    ``source_items`` (ids of the items the tile was read from), ``valid_fraction`` and
    ``embedding`` (L2-normalised, a fixed-size list of float16).
Scoring arrays (the layout queries read; ``.npy`` files, memory-mapped, never copied)
    ``cells.npy`` (int64 cell indexes), ``vectors.npy`` (float16, rows x dim: the same values
    as the GeoParquet), ``vectors-int8.npy`` with ``vectors-scale.npy`` (int8 copies with one
    float32 scale per row, for a fast first pass over large sets) and, once a model has
    described its background, ``background.npy`` (per-cell log-sum-exp of the background
    prompts' logits, the query-independent half of the calibrated probability).
``index.faiss``
    An exact FAISS inner-product index (``IndexFlatIP``) with the same rows.
``manifest.json``
    Model, grid, tile size, shards, and the rows, width, sizes and checksums of the files.

Everything here works on arrays and cell indexes; nothing knows about models, prompts or STAC.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from marscope_stac.core.errors import DataError
from marscope_stac.core.fs import atomic_write_json, read_regular
from marscope_stac.index.manifest import read_manifest
from marscope_stac.index.table import (
    EmbeddingTable,
    read_embeddings,
)

__all__ = [
    "PUBLISHED_FILE",
    "SCORING_FILES",
    "EmbeddingSet",
    "RowFile",
    "ScoringArrays",
    "iter_embeddings",
]

log = logging.getLogger(__name__)

SCORING_FILES = ("cells.npy", "vectors.npy", "vectors-int8.npy", "vectors-scale.npy")
"""The scoring arrays every complete set holds (``background.npy`` comes with a model)."""

PUBLISHED_FILE = "published.json"
"""In a local copy of a set published at a URL: that URL and what was fetched (see
:mod:`marscope_stac.index.published`)."""

ROW_GROUP = 65536
"""Rows per block when a large table is processed piece by piece (GeoParquet row groups are
smaller, :data:`~marscope_stac.index.geoparquet.ROW_GROUP_ROWS`, for bbox filtering)."""


# ----------------------------------------------------------------------------- GeoParquet


# ----------------------------------------------------------------------------- embedding sets


class RowFile:
    """Rows of an ``.npy`` matrix read with ``pread`` from the file it was mapped from.

    Touching scattered rows through a mapping would map whole (large) page-cache folios
    around each of them into the process, so a query could appear to hold most of a file;
    reading them into a buffer keeps the process to what it needs. The descriptor is the
    one the mapping was made from, so a set replaced on disk meanwhile is never mixed in.
    Rows less than :data:`ROW_GAP_BYTES` apart are read in one call.
    """

    def __init__(self, fd: int, offset: int, shape: tuple[int, ...], dtype: Any, name: str):
        self.fd, self.offset, self.shape, self.dtype, self.name = fd, offset, shape, dtype, name
        self._close = weakref.finalize(self, os.close, fd)

    def read(self, rows: NDArray[np.int64]) -> NDArray[Any]:
        """The given rows (sorted, repeats allowed)."""
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        if not len(rows):
            return out
        row_bytes = out.strides[0]
        gap = max(1, ROW_GAP_BYTES // row_bytes)
        # spans of rows read in one call each, laid end to end in one buffer
        starts = np.flatnonzero(np.r_[True, np.diff(rows) > gap])
        first = rows[starts]
        span = rows[np.r_[starts[1:], len(rows)] - 1] + 1 - first
        at = np.r_[0, np.cumsum(span)]
        where = rows - np.repeat(first - at[:-1], np.diff(np.r_[starts, len(rows)]))
        direct = len(where) == at[-1] and bool(np.all(where == np.arange(len(where))))
        buf = out if direct else np.empty((int(at[-1]), *self.shape[1:]), self.dtype)
        view = memoryview(buf).cast("B")  # type: ignore[arg-type]
        byte_at = (at * row_bytes).tolist()
        offsets = (self.offset + first * row_bytes).tolist()
        for off, a, b in zip(offsets, byte_at[:-1], byte_at[1:], strict=True):
            if os.preadv(self.fd, [view[a:b]], off) != b - a:
                raise DataError(f"{self.name} is shorter than its header says; embed again")
        return out if direct else buf[where]


ROW_GAP_BYTES = 8192
"""Rows closer than this are read together (one system call)."""


def _open_npy(path: Path) -> tuple[NDArray[Any], RowFile]:
    """A read-only mapping of an ``.npy`` file and a row reader on the same open file."""
    with path.open("rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(fh)
        if fortran:
            raise DataError(f"{path} is in Fortran order; embed again")
        offset = fh.tell()
        mapped = np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape)
        rows = RowFile(os.dup(fh.fileno()), offset, shape, dtype, str(path))
    return mapped, rows


@dataclass
class ScoringArrays:
    """An embedding set's scoring arrays, memory-mapped (see the module docstring).

    Attributes:
        cells: Cell index of each row (sorted).
        vectors: float16 embeddings, rows x dim.
        int8: int8 copies of the rows.
        scale: Per-row scale of the int8 copies.
        background: Per-cell log-sum-exp of the background logits, when written.
    """

    cells: NDArray[np.int64]
    vectors: NDArray[np.float16]
    int8: NDArray[np.int8]
    scale: NDArray[np.float32]
    background: NDArray[np.float32] | None
    vector_file: RowFile | None = None

    def __len__(self) -> int:
        return len(self.cells)

    def vector_rows(self, rows: NDArray[np.int64]) -> NDArray[np.float16]:
        """float16 vectors of ``rows`` (sorted), read from the file the arrays were mapped from."""
        if self.vector_file is None:
            return np.asarray(self.vectors[rows])
        return self.vector_file.read(rows)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.vectors.shape[1])

    def rows_of(self, cells: NDArray[np.int64]) -> NDArray[np.int64]:
        """Row of each cell index (-1 where the set has no such cell)."""
        c = np.asarray(cells, np.int64)
        pos = np.clip(np.searchsorted(self.cells, c), 0, max(len(self.cells) - 1, 0))
        found = (len(self.cells) > 0) & (np.asarray(self.cells[pos]) == c)
        return np.where(found, pos, -1).astype(np.int64)


@dataclass
class EmbeddingSet:
    """An embedding set on disk (see the module docstring for its files)."""

    root: Path

    def __post_init__(self) -> None:
        # absolute: pyarrow and GDAL read a relative name such as ``x:/y`` as a URI
        self.root = Path(self.root).absolute()

    @property
    def manifest_path(self) -> Path:
        """``manifest.json``."""
        return self.root / "manifest.json"

    @property
    def parquet(self) -> Path:
        """The consolidated GeoParquet."""
        return self.root / "embeddings.parquet"

    @property
    def index(self) -> Path:
        """The FAISS index."""
        return self.root / "index.faiss"

    @property
    def progress_path(self) -> Path:
        """``progress.json``: what an unfinished run has done (not part of the published set).

        A run records its finished shards here and writes ``manifest.json`` only when the
        set is complete, so a set stays as published (its item's checksums true) while a
        run adds to it, and a stopped run leaves it so.
        """
        return self.root / "progress.json"

    def manifest(self) -> dict[str, Any]:
        """The manifest (empty when there is none yet).

        Raises:
            DataError: if the manifest is not a JSON object.
        """
        return read_manifest(self.manifest_path)

    def run_state(self) -> dict[str, Any]:
        """What the last run recorded: an unfinished run's progress, else the manifest.

        Raises:
            DataError: if the file is not a JSON object.
        """
        if self.progress_path.is_file():
            return read_manifest(self.progress_path)
        return self.manifest()

    def stac_item(self) -> dict[str, Any] | None:
        """The set's STAC item (None when it has none), checked to hold what products take.

        Raises:
            DataError: if it is damaged: not JSON, not an object, links or properties of
                another shape.
        """
        path = self.root / f"{self.root.name}.json"
        if not path.exists():
            return None
        try:
            d = json.loads(read_regular(path))
            links, props = d.get("links", []), d.get("properties", {})
            ok = isinstance(props, dict) and all(
                isinstance(lk, dict) and isinstance(lk.get("href"), str) for lk in links
            )
        except (OSError, ValueError, RecursionError, AttributeError, TypeError, DataError) as exc:
            ok, why = False, str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        else:
            why = "its links or properties are not those of a STAC item"
        if not ok:
            raise DataError(
                f"{path}, the embedding set's STAC item, is damaged ({why}); run marscope "
                "embed again with the same settings to write it anew"
            )
        return {**d, "links": list(links), "properties": props}

    def published_item(self) -> str | None:
        """The URL of the set's STAC item when this is a local copy of a published set."""
        try:
            state = json.loads((self.root / PUBLISHED_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        url = state.get("item") if isinstance(state, dict) else None
        return url if isinstance(url, str) else None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Replace the manifest atomically."""
        atomic_write_json(self.manifest_path, manifest)

    def shard_path(self, shard: int) -> Path:
        """Path of shard ``shard``."""
        return self.root / "shards" / f"{shard:06d}.parquet"

    def table(self) -> EmbeddingTable:
        """All rows (from the consolidated GeoParquet; float16 embeddings)."""
        return read_embeddings(self.parquet)

    def has_scoring_arrays(self) -> bool:
        """Whether the manifest lists the scoring arrays and they are on disk."""
        files = self.manifest().get("scoring", {}).get("files", {})
        return all(name in files and (self.root / name).is_file() for name in SCORING_FILES)

    def scoring_arrays(self) -> ScoringArrays:
        """Open the scoring arrays memory-mapped, checked against the manifest.

        Shapes, dtypes and file sizes are compared with the manifest (checksums are checked
        by ``marscope validate``, which reads every byte).

        Raises:
            DataError: if an array is missing or does not match the manifest, or a run is
                replacing the files.
        """
        if self.progress_path.is_file() and read_manifest(self.progress_path).get("replacing"):
            raise DataError(
                f"the files of embedding set {self.root} are being replaced by a 'marscope "
                "embed' run (or one stopped while replacing them); wait for it to finish, or "
                "run the same 'marscope embed' again"
            )
        scoring = self.manifest().get("scoring", {})
        files = scoring.get("files", {})
        rows, dim = scoring.get("rows"), scoring.get("dim")
        expect = {
            "cells.npy": (np.int64, (rows,)),
            "vectors.npy": (np.float16, (rows, dim)),
            "vectors-int8.npy": (np.int8, (rows, dim)),
            "vectors-scale.npy": (np.float32, (rows,)),
            "background.npy": (np.float32, (rows,)),
        }
        arrays: dict[str, Any] = {}
        for name, (dtype, shape) in expect.items():
            path = self.root / name
            if name == "background.npy" and name not in files:
                arrays[name] = None
                continue
            try:
                if files[name]["size"] != path.stat().st_size:
                    raise DataError(f"{path} has changed since it was written")
                if name == "vectors.npy":
                    arr, arrays["rows"] = _open_npy(path)
                else:
                    arr = np.load(path, mmap_mode="r")
            except (KeyError, OSError, ValueError) as exc:
                raise DataError(
                    f"{path} is missing or unreadable ({exc}); embed again to rebuild the set"
                ) from exc
            if arr.dtype != dtype or arr.shape != shape:
                raise DataError(
                    f"{path} holds {arr.dtype} {arr.shape}, the manifest says {np.dtype(dtype)} "
                    f"{shape}; embed again to rebuild the set"
                )
            arrays[name] = arr
        return ScoringArrays(
            arrays["cells.npy"],
            arrays["vectors.npy"],
            arrays["vectors-int8.npy"],
            arrays["vectors-scale.npy"],
            arrays["background.npy"],
            arrays.get("rows"),
        )


def iter_embeddings(path: str | Path, sources: bool = True) -> Iterator[EmbeddingTable]:
    """The rows of an embedding GeoParquet, one row group at a time (float16 embeddings).

    With ``sources=False`` the ``source_items`` column is not read (empty lists).

    Raises:
        DataError: if the file is not an embedding table.
    """
    columns = ["cell_index", "embedding", "valid_fraction"] + (["source_items"] if sources else [])
    try:
        pf = pq.ParquetFile(path)
        for k in range(pf.num_row_groups):
            t = pf.read_row_group(k, columns=columns)
            col = t.column("embedding").combine_chunks()
            values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float16, copy=False)
            yield EmbeddingTable(
                t.column("cell_index").to_numpy().astype(np.int64),
                values.reshape(-1, col.type.list_size),
                t.column("valid_fraction").to_numpy().astype(np.float32),
                t.column("source_items").to_pylist() if sources else [[] for _ in range(len(t))],
            )
    except (OSError, pa.ArrowInvalid, KeyError, AttributeError) as exc:
        raise DataError(f"{path} is not a readable embedding table: {exc}") from exc
