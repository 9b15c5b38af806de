"""Evaluation.

Product detections against catalogues (F1), retrieval metrics and the landform evaluation
protocol used to choose models.
"""

from __future__ import annotations

from marscope_stac.eval.evaluate import ProductEvaluation, evaluate_product

__all__ = [
    "ProductEvaluation",
    "evaluate_product",
]
