"""The embedding run.

Every grid cell of a STAC source through the model into an embedding set, locally or on a Dask
cluster, resumable.
"""
