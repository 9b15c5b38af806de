"""Which folders this project wrote: the only ones ``--overwrite`` replaces.

A catalog written through :func:`~marscope_stac.core.fs.staged_directory` carries a small
hidden mark (:data:`PROJECT_MARK`) saying what it is; a model folder is known by its files.
A folder of someone else's files - a hand-written STAC catalog, a user's notes - is never
replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["PROJECT_MARK", "is_project_folder", "mark_project_folder"]

PROJECT_MARK = ".marscope-stac"
"""The hidden file that marks a folder this project wrote (JSON: who wrote it, its kind)."""

_PROJECT_FILES = ("catalog.json", "collection.json")
_MODEL_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
_MODEL_ENTRIES = frozenset({*_MODEL_FILES, "model.json"})
"""What a model folder this project writes holds (release-model, average-models)."""


def mark_project_folder(folder: str | os.PathLike[str], kind: str) -> None:
    """Mark ``folder`` as one this project wrote, of ``kind`` (``catalog``, ``model``)."""
    doc = {"written_by": "marscope-stac", "kind": kind}
    (Path(folder) / PROJECT_MARK).write_text(json.dumps(doc) + "\n", encoding="utf-8")


def _marked_kind(root: Path) -> str | None:
    """The kind a folder's mark states, or None when it has no readable mark."""
    try:
        doc = json.loads((root / PROJECT_MARK).read_bytes()[:4096])
    except (OSError, ValueError):
        return None
    return str(doc.get("kind")) if isinstance(doc, dict) else None


def is_project_folder(folder: str | os.PathLike[str], kind: str = "") -> bool:
    """Whether ``folder`` holds what this project writes: a STAC catalog, item or model folder.

    ``--overwrite`` replaces only such folders. ``kind`` narrows it to what a command
    writes: ``model`` (an open_clip model folder holding nothing else), ``site`` (a static
    web map marked as this project's) or ``catalog`` (a STAC catalog that is not a model:
    marked as this project's, or written before marks with a root that names the
    project); without ``kind``, any STAC root (``catalog.json`` or ``collection.json``),
    STAC item file at the top or model folder. A user's folder of other files is never
    one, and a model never replaces a catalog.
    """
    root = Path(folder)
    model = all((root / name).is_file() for name in _MODEL_FILES)
    if kind == "model":  # and nothing a user added (notes beside the weights are kept)
        return model and all(p.name in _MODEL_ENTRIES for p in _visible(root))
    if model:
        return kind != "catalog"
    if kind == "site":  # a static web map site: only one marked as such
        return _marked_kind(root) == "site"
    named = [root / n for n in _PROJECT_FILES if (root / n).is_file()]
    if kind == "catalog":
        marked = _marked_kind(root)
        if marked is not None:
            return marked == "catalog"
        return any(_is_stac_file(p, b"marscope") for p in named)  # written before marks
    try:
        tops = sorted(p for p in root.iterdir() if p.suffix == ".json" and p.is_file())
    except OSError:
        return False
    return any(_is_stac_file(p) for p in (named or tops[:64]))


def _visible(root: Path) -> list[Path]:
    """The entries of a folder that are not hidden (an unreadable folder: none)."""
    try:
        return [p for p in root.iterdir() if not p.name.startswith(".")]
    except OSError:
        return []


def _is_stac_file(path: Path, also: bytes = b"") -> bool:
    """Whether a file's start looks like a STAC object (and holds ``also``, any case)."""
    try:
        if path.stat().st_size > 16 << 20:
            return False
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return b'"stac_version"' in head and b'"type"' in head and also in head.lower()
