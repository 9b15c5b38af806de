"""STAC in and out.

Tolerant reading of catalogs and APIs (local, http(s) and s3, set up in one place:
``stac.remote``), one item writer, the output catalog, offline validation, model (MLM) and
embedding-set items, publishing.
"""

from __future__ import annotations

from marscope_stac.stac.catalog import OutputCatalog
from marscope_stac.stac.cloud import GDAL_CLOUD_OPTIONS, configure_cloud_reading
from marscope_stac.stac.read import SourceSet, load_sources
from marscope_stac.stac.remote import RetryPolicy
from marscope_stac.stac.validation import ValidationReport, validate_catalog

__all__ = [
    "GDAL_CLOUD_OPTIONS",
    "OutputCatalog",
    "RetryPolicy",
    "SourceSet",
    "ValidationReport",
    "configure_cloud_reading",
    "load_sources",
    "validate_catalog",
]
