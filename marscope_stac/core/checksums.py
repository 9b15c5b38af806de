"""Checksums the project writes and verifies: ``file:checksum`` and cached text vectors.

Both are multihashes in hex: ``"1220"`` (sha2-256, 32 bytes) and the sha256 digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["file_multihash", "text_vector_checksum"]


def file_multihash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the sha2-256 multihash of a file in hex (``"1220"`` + sha256): ``file:checksum``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return "1220" + digest.hexdigest()


def text_vector_checksum(model_key: str, text: str, templates: list[str], vector: bytes) -> str:
    """Multihash of a cached text vector: its model, text, templates and float32 LE bytes.

    Written with every entry of an embedding set's text-vector cache and verified on every
    read (the query engine) and by ``marscope validate``.
    """
    digest = hashlib.sha256(json.dumps([model_key, text, list(templates)]).encode())
    digest.update(vector)
    return "1220" + digest.hexdigest()
