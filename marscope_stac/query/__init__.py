"""Scoring.

Query specifications, query vectors (text, examples, hybrid, refinement), exact and int8
scoring, calibrated probabilities and composites.
"""
