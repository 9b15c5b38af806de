"""Writing an embedding set's GeoParquet and scoring arrays, block by block, in cell order.

Every file is written under a temporary name and renamed onto the set's file only when all
of them are complete on disk (:meth:`EmbeddingSetWriter.commit`); an embedding run keeps
them staged while it builds the set's other files, so a run stopped before its commit leaves
the published set as it was (see :mod:`marscope_stac.index.store` for the files).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from marscope_stac.core.errors import DataError, OutputError
from marscope_stac.core.fs import temp_file
from marscope_stac.grid.grids import Grid
from marscope_stac.index.geoparquet import ROW_GROUP_ROWS
from marscope_stac.index.store import ROW_GROUP, EmbeddingSet, ScoringArrays, iter_embeddings
from marscope_stac.index.table import (
    EmbeddingTable,
    _arrow_rows,
    _bbox_of,
    _schema_metadata,
    quantize_int8,
)

__all__ = ["EmbeddingSetWriter", "NpyStream", "write_scoring_arrays"]


class NpyStream:
    """An ``.npy`` file written row block by row block, hashed on the way, renamed at the end."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.rows = 0
        self.digest = hashlib.sha256()
        self.tmp = temp_file(path)
        self.fh: IO[bytes] = self.tmp.open("wb")
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            head,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": shape,
            },
        )
        self._write(head.getvalue())

    def _write(self, data: bytes | memoryview) -> None:
        self.fh.write(data)
        self.digest.update(data)

    def write(self, block: NDArray[Any]) -> None:
        """Append rows."""
        arr = np.ascontiguousarray(block, dtype=self.dtype)
        if arr.shape[1:] != self.shape[1:]:
            raise DataError(f"rows of shape {arr.shape[1:]} do not fit {self.path.name}")
        self.rows += len(arr)
        self._write(arr.reshape(-1).view(np.uint8).data)

    def finish(self) -> dict[str, Any]:
        """Flush the temporary file to disk; returns its size and checksum."""
        if self.rows != self.shape[0]:
            raise DataError(f"{self.path.name}: {self.rows} rows written, {self.shape[0]} expected")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.tmp.chmod(0o644)
        return {"size": self.tmp.stat().st_size, "checksum": "1220" + self.digest.hexdigest()}

    def commit(self) -> None:
        """Move the finished file into place."""
        self.tmp.replace(self.path)

    def close(self) -> dict[str, Any]:
        """Finish and commit."""
        info = self.finish()
        self.commit()
        return info

    def abort(self) -> None:
        """Drop the temporary file."""
        self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class EmbeddingSetWriter:
    """Write an embedding set's GeoParquet and scoring arrays block by block, in cell order.

    Nothing is held in memory beyond one block, so sets larger than memory can be written.
    Files are written under temporary names: :meth:`close` finishes and commits them (renamed
    into place, the manifest's ``scoring`` entry updated last); or :meth:`finish` completes
    them on disk, :meth:`staged_arrays` reads them, and :meth:`commit` renames them when the
    caller's other files are ready too.

    Args:
        es: The set.
        grid: Its grid.
        cells: Cell index of every row that will be appended, in order.
        dim: Embedding width.
        extra: Extra key/values for the GeoParquet's ``marscope`` metadata.
        parquet: Also write ``embeddings.parquet`` (False: only the scoring arrays).
    """

    def __init__(
        self,
        es: EmbeddingSet,
        grid: Grid,
        cells: NDArray[np.int64],
        dim: int,
        extra: dict[str, str] | None = None,
        parquet: bool = True,
    ) -> None:
        if dim < 1:
            raise DataError("cannot store embeddings of unknown width (empty table)")
        rows = len(cells)
        self.es, self.grid, self.rows, self.dim = es, grid, rows, dim
        self._cells = np.asarray(cells, np.int64)
        es.root.mkdir(parents=True, exist_ok=True)
        self._streams = {
            "cells.npy": NpyStream(es.root / "cells.npy", np.int64, (rows,)),
            "vectors.npy": NpyStream(es.root / "vectors.npy", np.float16, (rows, dim)),
            "vectors-int8.npy": NpyStream(es.root / "vectors-int8.npy", np.int8, (rows, dim)),
            "vectors-scale.npy": NpyStream(es.root / "vectors-scale.npy", np.float32, (rows,)),
        }
        self._done = 0
        self._pq: pq.ParquetWriter | None = None
        self._pq_tmp: Path | None = None
        self._extra = extra
        self._files: dict[str, Any] = {}
        if parquet:
            self._pq_tmp = temp_file(es.parquet)

    def append(self, table: EmbeddingTable) -> None:
        """Append the next rows (their cells must be the next ones given at construction).

        Large tables are written block by block, so memory stays a few blocks' worth.
        """
        if len(table) > ROW_GROUP:
            for start in range(0, len(table), ROW_GROUP):
                stop = min(start + ROW_GROUP, len(table))
                self.append(
                    EmbeddingTable(
                        table.cell_index[start:stop],
                        table.embedding[start:stop],
                        table.valid_fraction[start:stop],
                        table.source_items[start:stop],
                    )
                )
            return
        if not len(table):
            return
        cells = np.asarray(table.cell_index, np.int64)
        if not np.array_equal(cells, self._cells[self._done : self._done + len(cells)]):
            raise DataError("embedding rows must be appended in the order of the set's cells")
        self._done += len(cells)
        emb16 = np.ascontiguousarray(table.embedding, dtype=np.float16)
        q, scale = quantize_int8(emb16)
        for name, block in (
            ("cells.npy", cells),
            ("vectors.npy", emb16),
            ("vectors-int8.npy", q),
            ("vectors-scale.npy", scale),
        ):
            self._streams[name].write(block)
        if self._pq_tmp is not None:
            rows = _arrow_rows(
                EmbeddingTable(cells, emb16, table.valid_fraction, table.source_items), self.grid
            )
            if self._pq is None:
                meta = _schema_metadata(self.grid, self._set_bbox(), self._extra)
                self._pq = pq.ParquetWriter(
                    self._pq_tmp, rows.schema.with_metadata(meta), compression="zstd"
                )
            for start in range(0, len(rows), ROW_GROUP):
                self._pq.write_table(rows.slice(start, ROW_GROUP), ROW_GROUP_ROWS)

    def close(self) -> dict[str, Any]:
        """Finish every file and record them in the manifest; returns the ``scoring`` entry."""
        scoring = self.finish()
        self.commit()
        manifest = self.es.manifest()
        manifest["scoring"] = scoring
        self.es.write_manifest(manifest)
        return scoring

    def finish(self) -> dict[str, Any]:
        """Complete every file on disk under its temporary name (nothing replaced yet).

        Returns the manifest's ``scoring`` entry for them (rows, width, sizes, checksums).

        Raises:
            OutputError: when the disk is full or not writable (the files are dropped).
        """
        with self._dropped_on_failure():
            self._files = {name: s.finish() for name, s in self._streams.items()}
            if self._pq_tmp is not None:
                self._finish_parquet()
        return {"rows": self.rows, "dim": self.dim, "files": dict(self._files)}

    @property
    def staged_parquet(self) -> Path | None:
        """The finished GeoParquet's temporary file (None without one)."""
        return self._pq_tmp

    def staged_arrays(self) -> ScoringArrays:
        """The finished scoring arrays, memory-mapped from their temporary files."""
        arrays = {name: np.load(s.tmp, mmap_mode="r") for name, s in self._streams.items()}
        return ScoringArrays(
            arrays["cells.npy"],
            arrays["vectors.npy"],
            arrays["vectors-int8.npy"],
            arrays["vectors-scale.npy"],
            None,
        )

    def commit(self) -> None:
        """Rename the finished files into place (the caller records them in the manifest).

        Raises:
            OutputError: when a rename fails (what was not renamed is dropped).
        """
        with self._dropped_on_failure():
            for stream in self._streams.values():
                stream.commit()
            if self._pq_tmp is not None:
                self._pq_tmp.replace(self.es.parquet)

    @contextlib.contextmanager
    def _dropped_on_failure(self) -> Iterator[None]:
        """Drop every temporary file when the block fails; an OS error as an OutputError."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise OutputError(
                f"cannot write the embedding set in {self.es.root}: {exc.strerror or exc}; "
                "free space or fix permissions and run again"
            ) from exc
        except BaseException:
            self.abort()
            raise

    def _set_bbox(self) -> list[float]:
        boxes = [
            _bbox_of(self.grid, self._cells[i : i + ROW_GROUP * 8])
            for i in range(0, self.rows, ROW_GROUP * 8)
        ]
        if not boxes:
            return [0.0, 0.0, 0.0, 0.0]
        b = np.asarray(boxes)
        return [
            float(b[:, 0].min()),
            float(b[:, 1].min()),
            float(b[:, 2].max()),
            float(b[:, 3].max()),
        ]

    def _finish_parquet(self) -> None:
        assert self._pq_tmp is not None
        if self._pq is None:  # no rows at all: an empty table of the right schema
            empty = EmbeddingTable(
                np.zeros(0, np.int64),
                np.zeros((0, self.dim), np.float16),
                np.zeros(0, np.float32),
                [],
            )
            meta = _schema_metadata(self.grid, self._set_bbox(), self._extra)
            pq.write_table(
                _arrow_rows(empty, self.grid).replace_schema_metadata(meta), self._pq_tmp
            )
        else:
            self._pq.close()
        self._pq_tmp.chmod(0o644)

    def abort(self) -> None:
        """Drop every temporary file."""
        for s in self._streams.values():
            s.abort()
        if self._pq is not None:
            with contextlib.suppress(Exception):
                self._pq.close()
        if self._pq_tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._pq_tmp.unlink()

    def __enter__(self) -> EmbeddingSetWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_scoring_arrays(es: EmbeddingSet, grid: Grid) -> dict[str, Any]:
    """Write a set's scoring arrays from its GeoParquet (sets made before they existed).

    Raises:
        DataError: if the GeoParquet is not an embedding table.
    """
    try:
        cells = pq.read_table(es.parquet, columns=["cell_index"]).column(0).to_numpy()
        dim = pq.ParquetFile(es.parquet).schema_arrow.field("embedding").type.list_size
    except (OSError, pa.ArrowInvalid, KeyError, AttributeError) as exc:
        raise DataError(f"{es.parquet} is not a readable embedding table: {exc}") from exc
    with EmbeddingSetWriter(es, grid, cells, dim, parquet=False) as writer:
        for block in iter_embeddings(es.parquet, sources=False):
            writer.append(block)
    return dict(es.manifest()["scoring"])
