"""The query engine: open an embedding set once, score questions and write their products."""

from __future__ import annotations

from marscope_stac.engine.engine import QueryEngine, QueryRequest, run_query

__all__ = [
    "QueryEngine",
    "QueryRequest",
    "run_query",
]
