"""Tiles.

Planning grid cells over the sources, reading and resampling windows, batches for the model, the
reading processes and previews.
"""
