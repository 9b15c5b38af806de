"""The core every layer stands on.

Errors, bodies and their coordinate systems, safe file writing, text helpers, prompt templates
and the landform vocabulary.
"""

from __future__ import annotations

from marscope_stac.core.bodies import MARS, MOON, Body, get_body
from marscope_stac.core.errors import (
    CatalogError,
    ConfigError,
    DataError,
    DataWarning,
    MarscopeError,
    MarscopeWarning,
    ModelError,
    OutputError,
    SkippedInputWarning,
)

__all__ = [
    "MARS",
    "MOON",
    "Body",
    "CatalogError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "MarscopeError",
    "MarscopeWarning",
    "ModelError",
    "OutputError",
    "SkippedInputWarning",
    "get_body",
]
