"""The project's exception and warning hierarchy.

Every error the library raises on purpose derives from :class:`MarscopeError`. Its message is
one line that says what is wrong and how to fix it; the command line prints exactly that line
and exits with status 2. Anything else that escapes is a bug and exits with status 1.
"""

from __future__ import annotations

__all__ = [
    "CatalogError",
    "ConfigError",
    "DataError",
    "MarscopeError",
    "MarscopeWarning",
    "ModelError",
    "OutputError",
    "SkippedInputWarning",
]


class MarscopeError(Exception):
    """Base class of every error MarScope-STAC raises deliberately.

    The message must be a single line naming the problem and the fix, because the command
    line shows it to the user as is, without a traceback.
    """


class ConfigError(MarscopeError):
    """A parameter or option has a value that cannot be used (unknown name, out of range)."""


class CatalogError(MarscopeError):
    """A STAC catalog, collection or item cannot be read or does not have what is needed."""


class DataError(MarscopeError):
    """Raster or vector data cannot be read, or is not what its metadata says."""


class ModelError(MarscopeError):
    """A model cannot be built or loaded (unknown architecture, missing or mismatched weights)."""


class OutputError(MarscopeError):
    """An output location cannot be written (exists, not writable, not a catalog)."""


class MarscopeWarning(UserWarning):
    """Base class of warnings the user can act on."""


class SkippedInputWarning(MarscopeWarning):
    """An input (item, asset, tile) was skipped; the run carried on without it."""
