"""Scoring.

Query specifications, query vectors (text, examples, hybrid, refinement), exact and int8
scoring, calibrated probabilities and composites.
"""

from __future__ import annotations

from marscope_stac.query.scoring import QuerySpec, ScoredQuery, score

__all__ = [
    "QuerySpec",
    "ScoredQuery",
    "score",
]
