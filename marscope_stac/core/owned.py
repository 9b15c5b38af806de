"""Which folders this project wrote: the only ones ``--overwrite`` replaces.

A catalog or static site written through :func:`~marscope_stac.core.fs.staged_directory`
carries a small hidden mark (:data:`PROJECT_MARK`): what it is, and the entries it held when
written. A model folder is known by its files. A folder of someone else's files - a
hand-written STAC catalog, a user's notes, or one of ours a user added files to - is never
replaced, and files a user put in a product folder move over into its new version.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from marscope_stac.core.leftovers import TEMP_NAME

__all__ = [
    "PROJECT_MARK",
    "added_entries",
    "begun_elsewhere",
    "carry_over",
    "is_project_folder",
    "mark_project_folder",
    "read_mark",
    "sets_only",
]

PROJECT_MARK = ".marscope-stac"
"""The hidden file that marks a folder this project wrote (JSON: its kind and entries)."""

_MARKS = frozenset({".marscope-stac", ".marscope.lock"})


def _own_hidden(name: str) -> bool:
    """Whether a name is the project's own in a folder: its mark, its lock, temporaries."""
    return name in _MARKS or TEMP_NAME.fullmatch(name) is not None


_PROJECT_FILES = ("catalog.json", "collection.json")
_MODEL_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
_MODEL_ENTRIES = frozenset({*_MODEL_FILES, "model.json"})
"""What a model folder this project writes holds (release-model, average-models)."""
_MARK_BYTES = 64 << 20  # the paths of a catalog of many thousand items


def _entries(root: Path) -> list[Path]:
    """A folder's entries but the project's own hidden ones (an unreadable folder: none)."""
    try:
        return [p for p in root.iterdir() if not _own_hidden(p.name)]
    except OSError:
        return []


def _tree(root: Path) -> list[str]:
    """Every path under ``root`` (relative, ``/``-separated) but the project's hidden ones.

    Links are listed, never followed.
    """
    found: list[str] = []
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _own_hidden(d)]
        rel = Path(here).relative_to(root)
        found += [(rel / n).as_posix() for n in [*dirs, *files] if not _own_hidden(n)]
    return sorted(found)


def mark_project_folder(folder: str | os.PathLike[str], kind: str, **extra: Any) -> None:
    """Mark ``folder`` as one this project wrote, of ``kind``, holding what it holds now."""
    root = Path(folder)
    doc = {"written_by": "marscope-stac", "kind": kind, "entries": _tree(root), **extra}
    (root / PROJECT_MARK).write_text(json.dumps(doc) + "\n", encoding="utf-8")


def _small_json(path: Path, limit: int) -> Any:
    """The JSON of a small regular file, or None (a FIFO or device is never opened)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def begun_elsewhere(
    folder: Path, ours: Collection[str], mark: str, made: Callable[[Path], bool] | None = None
) -> list[str]:
    """What keeps a folder that lacks its root file from being one this project began.

    A run stopped before its catalog's root file was written leaves entries of the names in
    ``ours`` and the hidden ``mark`` (it is resumed there); without the mark, an entry counts
    as ours only when ``made`` says this project wrote it. Returns the names of the others;
    nothing for an empty or missing folder.
    """
    names = sorted(p.name for p in _entries(folder) if not p.name.startswith("."))
    foreign = [n for n in names if n not in ours]
    if foreign or (folder / mark).is_file():
        return foreign
    return [n for n in names if made is None or not made(folder / n)]


def sets_only(path: Path) -> bool:
    """Whether ``path`` is an ``embeddings`` folder of embedding sets (a manifest each).

    Sets written with the library's writers alone (no products catalog around them yet).
    """
    sets = [p for p in _entries(path) if not p.name.startswith(".")]
    done = ("manifest.json", "progress.json")  # files only this library writes there
    ours = all(any((p / n).is_file() for n in done) for p in sets)
    return path.name == "embeddings" and path.is_dir() and ours


def read_mark(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A folder's mark (see :func:`mark_project_folder`), or None when it has none."""
    doc = _small_json(Path(folder) / PROJECT_MARK, _MARK_BYTES)
    return doc if isinstance(doc, dict) and isinstance(doc.get("kind"), str) else None


def added_entries(folder: str | os.PathLike[str], kind: str) -> list[str]:
    """The names a user added to a folder of ours of ``kind`` (none for any other folder)."""
    root = Path(folder)
    if kind == "model":
        if not all((root / name).is_file() for name in _MODEL_FILES):
            return []
        return sorted(p.name for p in _entries(root) if p.name not in _MODEL_ENTRIES)
    mark = read_mark(root)
    known = mark.get("entries") if mark is not None and mark["kind"] == kind else None
    if not isinstance(known, list):
        return []
    ours = set(known)  # every path, nested ones too (a user's notes beside an item)
    return [p for p in _tree(root) if p not in ours]


def is_project_folder(folder: str | os.PathLike[str], kind: str = "") -> bool:
    """Whether ``folder`` holds what this project writes, and nothing a user added to it.

    ``--overwrite`` replaces only such folders. ``kind`` narrows it to what a command
    writes: ``model`` (an open_clip model folder), ``site`` (a static web map, marked) or
    ``catalog`` (a STAC catalog, marked; or, written before marks, the demo world or real
    data); without ``kind``, any STAC root (``catalog.json`` or ``collection.json``), STAC
    item file at the top or model folder. A model never replaces a catalog or a site.
    """
    root = Path(folder)
    mark = read_mark(root)
    if kind in ("site", "catalog") and mark is not None:
        return mark["kind"] == kind and not added_entries(root, kind)
    model = all((root / name).is_file() for name in _MODEL_FILES)
    if kind == "model":
        return model and not added_entries(root, kind)
    if model or kind == "site":
        return model and kind == ""
    named = [root / n for n in _PROJECT_FILES if (root / n).is_file()]
    if kind == "catalog":
        return any(_written_before_marks(p) for p in named)
    try:
        tops = sorted(p for p in root.iterdir() if p.suffix == ".json" and p.is_file())
    except OSError:
        return False
    return any(_is_stac_file(p) for p in (named or tops[:64]))


def _written_before_marks(path: Path) -> bool:
    """A catalog root this project wrote before marks: the demo world's or real data's."""
    doc = _small_json(path, 16 << 20)
    cid = doc.get("id") if isinstance(doc, dict) else None
    return isinstance(cid, str) and (cid == "marscope-demo" or cid.startswith("marscope-real-"))


def _is_stac_file(path: Path) -> bool:
    """Whether a file's start looks like a STAC object."""
    try:
        if path.stat().st_size > 16 << 20:
            return False
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return b'"stac_version"' in head and b'"type"' in head


def carry_over(old: Path, new: Path, ours: Collection[str]) -> None:
    """Copy what ``old`` holds that the project does not write (names not in ``ours``) to ``new``.

    A folder asked for again is replaced by ``new``: a user's notes, hidden files and other
    commands' reports in it are kept. Links are copied as links; a FIFO is made again; a
    socket (alive only with its process) is not copied.
    """
    if not old.is_dir():
        return
    for entry in _entries(old):
        target = new / entry.name
        if entry.name in ours or os.path.lexists(target):
            continue
        mode = entry.lstat().st_mode
        if stat.S_ISLNK(mode):
            target.symlink_to(entry.readlink())
        elif stat.S_ISDIR(mode):
            shutil.copytree(entry, target, symlinks=True, copy_function=_copy_entry)
        else:
            _copy_entry(str(entry), str(target))


def _copy_entry(src: str, dst: str) -> None:
    """Copy a file; make a FIFO again (opening one would block); leave a socket or device."""
    mode = os.lstat(src).st_mode
    if stat.S_ISREG(mode):
        shutil.copy2(src, dst)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
