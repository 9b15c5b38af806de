"""Training.

Image-text pairs from labelled catalogs or tables, the contrastive training loop and model
averaging.
"""
