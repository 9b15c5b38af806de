"""Evaluation.

Product detections against catalogues (F1), retrieval metrics and the landform evaluation
protocol used to choose models.
"""
