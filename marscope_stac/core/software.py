"""Which build of MarScope-STAC is running: its version and commit, for products and ``--version``.

The version comes from git tags (setuptools-scm, at build or install time): a release tag
``v0.2.0`` gives ``0.2.0``, a later commit ``0.2.1.dev3+g1a2b3c4`` (commit ``1a2b3c4``), a
build from a tree with uncommitted changes adds ``.dYYYYMMDD``. The build writes the commit
into ``marscope_stac/core/_version.py`` and ``marscope_stac/data/build.json``, so a release
build names it too: every product's ``processing:software`` and ``marscope --version`` tell
two builds apart.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files

from marscope_stac import __version__

__all__ = ["build_version", "commit_id", "software"]


@cache
def commit_id() -> str | None:
    """The short commit the package was built from (``g1a2b3c4``), None when unknown.

    From setuptools-scm's version file, or else from ``data/build.json``, which the build
    writes (a release's wheel is built from its sdist, where there is no git to ask).
    """
    try:
        from marscope_stac.core._version import __commit_id__  # written by the build
    except ImportError:  # pragma: no cover - a source tree that was never installed
        __commit_id__ = None
    if __commit_id__:
        return str(__commit_id__)
    record = files("marscope_stac") / "data" / "build.json"
    try:
        commit = json.loads(record.read_text(encoding="utf-8")).get("commit")
    except (OSError, ValueError):
        return None
    return str(commit) if commit else None


@cache
def build_version() -> str:
    """The version with its commit: ``__version__``, plus ``+<commit>`` when it lacks one."""
    commit = commit_id()
    if commit is None or commit in __version__:
        return __version__
    return f"{__version__}{'.' if '+' in __version__ else '+'}{commit}"


def software() -> dict[str, str]:
    """The ``processing:software`` value of everything the project writes."""
    return {"marscope-stac": build_version()}
