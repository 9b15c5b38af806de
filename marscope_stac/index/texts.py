"""The text-vector cache of an embedding set.

Query vectors per model, text and templates; each entry is checked by its checksum before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from marscope_stac.core.checksums import text_vector_checksum
from marscope_stac.core.errors import DataWarning
from marscope_stac.core.fs import atomic_write_json
from marscope_stac.index.store import EmbeddingSet

log = logging.getLogger(__name__)

__all__ = [
    "TextVectorCache",
]


class TextVectorCache:
    """Query vectors of texts, stored beside an embedding set (``text-vectors/``).

    A vector is kept per (model, text, prompt templates), one small JSON file each, written
    atomically, so repeated queries need no model and concurrent writers cannot clash. Each
    entry carries a checksum of its key and vector (:meth:`checksum`), verified on every
    read: a damaged or altered entry is reported (:class:`~marscope_stac.core.errors.DataWarning`),
    never used, and the caller computes it again.

    Args:
        es: The embedding set.
        model_key: What identifies the set's model (its manifest entry).
    """

    def __init__(self, es: EmbeddingSet, model_key: Any) -> None:
        self.folder = es.root / "text-vectors"
        self._model = json.dumps(model_key, sort_keys=True)

    def path(self, text: str, templates: Sequence[str]) -> Path:
        """File of one entry."""
        key = json.dumps([self._model, text, list(templates)])
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def checksum(self, text: str, templates: Sequence[str], vector: NDArray[np.float32]) -> str:
        """Multihash (sha2-256) of an entry: the model, text and templates, and the vector."""
        data = np.ascontiguousarray(vector, "<f4").tobytes()
        return text_vector_checksum(self._model, text, list(templates), data)

    def get(self, text: str, templates: Sequence[str]) -> NDArray[np.float32] | None:
        """The stored vector, or None when there is none or it fails its checksum."""
        path = self.path(text, templates)
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        try:
            d = json.loads(raw)
            vector = np.asarray(d["vector"], np.float32)
            ok = d["text"] == text and d["templates"] == list(templates) and vector.ndim == 1
            if ok and "checksum" not in d:  # written before entries had checksums
                log.info("cached text vector %s has no checksum; computing it again", path)
                return None
            ok = ok and d["checksum"] == self.checksum(text, templates, vector)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            ok = False
        if not ok:
            warnings.warn(
                f"cached text vector {path} is damaged or altered (checksum mismatch); "
                "computing it again",
                DataWarning,
                stacklevel=2,
            )
            return None
        return vector

    def put(self, text: str, templates: Sequence[str], vector: NDArray[np.floating[Any]]) -> None:
        """Store a vector (best effort: a read-only set just stays uncached)."""
        v = np.asarray(vector, np.float32)
        d = {
            "text": text,
            "templates": list(templates),
            "vector": [float(x) for x in v],
            "checksum": self.checksum(text, templates, v),
        }
        with contextlib.suppress(OSError):
            atomic_write_json(self.path(text, templates), d, None)
