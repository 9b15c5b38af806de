"""Training.

Image-text pairs from labelled catalogs or tables, the contrastive training loop and model
averaging.
"""

from __future__ import annotations

from marscope_stac.train.config import PairOptions, TrainConfig, TrainResult
from marscope_stac.train.loop import train_from_source

__all__ = [
    "PairOptions",
    "TrainConfig",
    "TrainResult",
    "train_from_source",
]
