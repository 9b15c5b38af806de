"""The embedding run.

Every grid cell of a STAC source through the model into an embedding set, locally or on a Dask
cluster, resumable.
"""

from __future__ import annotations

from marscope_stac.embed.options import CellSelection, ComputeOptions
from marscope_stac.embed.run import EmbedResult, embed_catalog

__all__ = [
    "CellSelection",
    "ComputeOptions",
    "EmbedResult",
    "embed_catalog",
]
