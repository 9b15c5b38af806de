"""Planetary grids: lon/lat and equal-area cells on a body's sphere, their ids and geometry."""
