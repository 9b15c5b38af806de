"""Prompts: MarScope's template ensemble, the background prompts, and checks on query text.

Plain data and string checks, shared by the models (which encode prompts) and the query
engine (which caches their vectors); nothing here imports a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from marscope_stac.core.errors import ConfigError

__all__ = [
    "BACKGROUND_PROMPTS",
    "MARSCOPE_TEMPLATES",
    "MAX_QUERY_CHARS",
    "check_phrases",
    "check_templates",
]

MARSCOPE_TEMPLATES: tuple[str, ...] = (
    "a photo of {}, a type of martian terrain",
    "a satellite photo of {}.",
    "a high-resolution remote sensing image of {} on Mars.",
)
"""MarScope's prompt ensemble: a text query is the re-normalised mean over these templates."""

BACKGROUND_PROMPTS: tuple[str, ...] = (
    "plains",
    "smooth plains with small craters",
    "flat featureless terrain",
    "dusty ground",
)
"""What a cell is compared against when its probability is computed."""

MAX_QUERY_CHARS = 300
"""Longest query text accepted."""


def check_phrases(phrases: Sequence[str]) -> None:
    """Reject empty or overlong query texts.

    Raises:
        ConfigError: naming the bad text and what to type instead.
    """
    if not phrases:
        raise ConfigError("no query text given")
    for p in phrases:
        if not p or not p.strip():
            raise ConfigError("empty query text; type what to look for, e.g. 'alluvial fans'")
        if len(p) > MAX_QUERY_CHARS:
            raise ConfigError(
                f"query text of {len(p)} characters is too long "
                f"(at most {MAX_QUERY_CHARS}); describe the landform briefly"
            )


def check_templates(templates: Sequence[str]) -> None:
    """Reject prompt templates that do not hold exactly one ``{}`` and nothing else to fill.

    A literal brace is written doubled (``{{`` / ``}}``), as in Python's ``str.format``.

    Raises:
        ConfigError: naming the template and the fix.
    """
    import string

    for t in templates:
        try:
            parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t)]
        except ValueError as exc:
            raise ConfigError(
                f"prompt template {t!r} is malformed ({exc}); write literal braces as {{{{ }}}}"
            ) from None
        fields = [(f, spec or "", conv) for f, spec, conv in parts if f is not None]
        if fields != [("", "", None)]:  # a bare {}: no conversion (!r), no format (:>9)
            raise ConfigError(
                f"prompt template {t!r} must hold exactly one '{{}}' for the query text and no "
                "other field; write literal braces as {{ }}"
            )
