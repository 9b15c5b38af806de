"""The embedding index.

An embedding set's GeoParquet, scoring arrays, FAISS index, text-vector cache and the background
term of calibrated probabilities.
"""

from __future__ import annotations

from marscope_stac.index.store import EmbeddingSet, ScoringArrays
from marscope_stac.index.texts import TextVectorCache

__all__ = [
    "EmbeddingSet",
    "ScoringArrays",
    "TextVectorCache",
]
