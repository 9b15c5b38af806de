"""The FAISS index of an embedding set (inner product on unit vectors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.errors import DataError
from marscope_stac.core.fs import (
    atomic_write_bytes,
)
from marscope_stac.index.store import ROW_GROUP

__all__ = [
    "build_faiss_index",
    "read_faiss_index",
]


def build_faiss_index(embedding: NDArray[np.floating[Any]], path: str | Path) -> Path:
    """Write an exact inner-product FAISS index (``IndexFlatIP``) over ``embedding`` rows.

    The rows are taken as the set stores them (float16), so the index holds exactly the
    GeoParquet's values whether a row was embedded now or read back from a shard.
    """
    import faiss

    index = faiss.IndexFlatIP(embedding.shape[1])
    for start in range(0, len(embedding), ROW_GROUP):
        block = np.asarray(embedding[start : start + ROW_GROUP]).astype(np.float16)
        index.add(np.ascontiguousarray(block, dtype=np.float32))
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
