"""STAC in and out.

Tolerant reading of catalogs and APIs, one item writer, the output catalog, offline validation,
model (MLM) and embedding-set items, publishing.
"""

from __future__ import annotations

from marscope_stac.stac.catalog import OutputCatalog
from marscope_stac.stac.read import SourceSet, load_sources
from marscope_stac.stac.validation import ValidationReport, validate_catalog

__all__ = [
    "OutputCatalog",
    "SourceSet",
    "ValidationReport",
    "load_sources",
    "validate_catalog",
]
