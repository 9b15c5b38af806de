"""Vision-language models.

Open_clip loading (hub, local folders, the bundled model), the packaged pretrained parts,
encoding images and texts. Nothing here knows geography.
"""

from __future__ import annotations

from marscope_stac.models.clip import ClipModel
from marscope_stac.models.loading import load_model

__all__ = [
    "ClipModel",
    "load_model",
]
