"""Training.

Image-text pairs from labelled catalogs or tables, the contrastive training loop and model
averaging.
"""

from __future__ import annotations

from marscope_stac.train.loop import TrainConfig, TrainResult, train_from_source

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train_from_source",
]
