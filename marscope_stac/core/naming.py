"""How models are named in the records the project writes: one rule for every comparison.

A model loaded from a local folder is recorded as ``local-dir:<folder name>``, never by its
path, so records are the same on every machine; records of earlier versions named the path.
Both the embedding run (is this set's model the one asked for?) and the query engine (does
the name a user gives match the set's record?) compare names through this module.
"""

from __future__ import annotations

from pathlib import Path

from marscope_stac.core.errors import ConfigError

__all__ = ["LOCAL_DIR", "base_model_name", "check_pretrained", "same_model"]

LOCAL_DIR = "local-dir:"
"""Prefix of a model in a local folder (open_clip's own ``local-dir:`` scheme)."""


def base_model_name(name: str) -> str:
    """The recorded form of a model name: ``local-dir:NAME`` for ``local-dir:PATH``."""
    if name.startswith(LOCAL_DIR):
        return LOCAL_DIR + Path(name[len(LOCAL_DIR) :]).expanduser().resolve().name
    return name


def same_model(made_by: str | None, requested: str) -> bool:
    """Whether a model name given by a user names the model recorded as ``made_by``.

    Names match when equal, or when both are local folders of the same name (a record of an
    earlier version holds the folder's path).
    """
    if made_by is None:
        return False
    if made_by == requested:
        return True
    both_local = made_by.startswith(LOCAL_DIR) and requested.startswith(LOCAL_DIR)
    return both_local and base_model_name(made_by) == base_model_name(requested)


def check_pretrained(model: str, pretrained: str | None) -> None:
    """Refuse weights given for a model that has its own (checked before any work).

    Raises:
        ConfigError: if ``pretrained`` is given with the bundled, a ``local-dir:`` or an
            ``hf-hub:`` model.
    """
    name = model.strip()
    if pretrained is not None and (name == "bundled" or name.startswith(("local-dir:", "hf-hub:"))):
        raise ConfigError(
            f"pretrained is for an architecture name; {name} already has its weights "
            "(leave pretrained out)",
            fields=("pretrained",),
        )
