"""The embedding index.

An embedding set's GeoParquet, scoring arrays, FAISS index, text-vector cache and the background
term of calibrated probabilities.
"""
