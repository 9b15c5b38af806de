"""The query engine: open an embedding set once, score questions and write their products."""

from __future__ import annotations

from marscope_stac.engine.engine import QueryEngine, run_query
from marscope_stac.engine.request import QueryRequest
from marscope_stac.engine.upgrade import upgrade_embedding_set

__all__ = [
    "QueryEngine",
    "QueryRequest",
    "run_query",
    "upgrade_embedding_set",
]
