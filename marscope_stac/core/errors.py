"""The project's exception and warning hierarchy.

Every error the library raises on purpose derives from :class:`MarscopeError`. Its message is
one line that says what is wrong and how to fix it; the command line prints exactly that line
and exits with status 2. Anything else that escapes is a bug and exits with status 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = [
    "CatalogError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "MarscopeError",
    "MarscopeWarning",
    "ModelError",
    "OutputError",
    "SkippedInputWarning",
    "check_range",
    "release_held_warnings",
]

_RELEASE_HOOKS: list[Callable[[], None]] = []
"""What front ends run when held warnings should be shown (see release_held_warnings)."""


def release_held_warnings() -> None:
    """Show the warnings a front end holds back, now that the work itself starts.

    The command line holds warnings while a command checks its inputs, so that an error
    found there is one line; long work (a progress bar, a server) calls this first, so the
    warnings show while it runs rather than at its end.
    """
    for hook in list(_RELEASE_HOOKS):
        hook()


def on_release(hook: Callable[[], None]) -> None:
    """Register ``hook`` to run on :func:`release_held_warnings` (once per hook)."""
    if hook not in _RELEASE_HOOKS:
        _RELEASE_HOOKS.append(hook)


class MarscopeError(Exception):
    """Base class of every error MarScope-STAC raises deliberately.

    The message must be a single line naming the problem and the fix, because the command
    line shows it to the user as is, without a traceback.
    """


class ConfigError(MarscopeError):
    """A parameter or option has a value that cannot be used (unknown name, out of range).

    Args:
        message: The one-line message.
        fields: Names of the request fields (``threshold``, ``within_km``, ...) the message
            mentions by name, so a front end can name them as its users know them (the
            command line says ``--threshold``).
    """

    def __init__(self, message: str, *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields

    def __reduce__(self) -> tuple[object, ...]:
        return (_config_error, (str(self), self.fields))


def _config_error(message: str, fields: tuple[str, ...]) -> ConfigError:
    """Rebuild a :class:`ConfigError` (pickling, e.g. from a Dask worker)."""
    return ConfigError(message, fields=fields)


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


class DataWarning(MarscopeWarning):
    """Stored data was found damaged or inconsistent and was not used (it is made again)."""


class SkippedInputWarning(MarscopeWarning):
    """An input (item, asset, tile) was skipped; the run carried on without it."""


def check_range(
    name: str,
    value: float | None,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    above: bool = False,
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number in [low, high].

    ``above`` makes the low bound exclusive; ``integer`` requires a whole number; None passes
    (an unset option). The message names the option, the value and the allowed range;
    a ``name`` without a leading ``-`` is a request field, recorded in the error's ``fields``.
    """
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value)) and (not integer or float(value).is_integer())
    if ok and low is not None:
        ok = float(value) > low if above else float(value) >= low
    if ok and high is not None:
        ok = float(value) <= high
    if not ok:
        kind = "a whole number" if integer else "a number"
        if low is not None and high is not None:
            span = f"in ({low:g}, {high:g}]" if above else f"in [{low:g}, {high:g}]"
        elif low is not None:
            span = f"> {low:g}" if above else f">= {low:g}"
        elif high is not None:
            span = f"<= {high:g}"
        else:
            span = "finite"
        fields = () if name.startswith("-") else (name,)
        raise ConfigError(f"{name} {value!r} is not valid; give {kind} {span}", fields=fields)
