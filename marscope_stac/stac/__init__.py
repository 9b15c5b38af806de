"""STAC in and out.

Tolerant reading of catalogs and APIs, one item writer, the output catalog, offline validation,
model (MLM) and embedding-set items, publishing.
"""
