"""Atomic file and folder writes.

Outputs are first written next to their destination and then renamed into place, so an
interrupted run never leaves a half-written file or catalog behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import json
import math
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.errors import DataError, MarscopeError, OutputError
from marscope_stac.core.leftovers import sweep_stale, temp_name
from marscope_stac.core.owned import (
    added_entries,
    is_project_folder,
    mark_project_folder,
)

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_apart",
    "check_output_file",
    "check_output_folder",
    "check_work_folder",
    "clone_file",
    "copy_file",
    "folder_lock",
    "json_text",
    "read_regular",
    "safe_resolve",
    "source_folder",
    "staged_directory",
    "sweep_stale",
    "temp_dir",
    "temp_file",
]


MAX_DOCUMENT_BYTES = 256 << 20
"""Largest JSON document the project reads (a STAC object, a manifest, a model config)."""


def read_regular(path: str | os.PathLike[str], limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a regular file, refusing what would hang or flood a reader.

    A FIFO, socket, device or folder is refused before it is opened (opening a FIFO blocks
    until a writer comes), and so is a file larger than ``limit`` bytes.

    Raises:
        DataError: naming the path and what it is.
        OSError: if it cannot be read (missing, permissions, a symlink loop).
    """
    p = Path(path)
    mode = p.stat().st_mode
    if not stat.S_ISREG(mode):
        raise DataError(f"{p} is {_kind(mode)}, not a file; give a regular file")
    size = p.stat().st_size
    if size > limit:
        raise DataError(f"{p} is {size:,} bytes, more than {limit:,}; is it the right file?")
    return p.read_bytes()


def safe_resolve(path: str | os.PathLike[str]) -> Path:
    """``Path.resolve`` that never raises: a symlink loop gives the absolute path as is."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(path).absolute()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds.

    For writers that want a file name (GDAL, pyarrow): the block writes the yielded path;
    on an exception the temporary file is removed and ``path`` is left as it was.
    """
    # absolute: a relative name such as ``x:/y`` is read as a URI by GDAL and pyarrow
    target = check_output_file(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(target, "" if suffix == ".tmp" else suffix)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        tmp.replace(target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno and exc.filename in (None, str(tmp)):
            # a full disk says so on write(), naming no file: name the output
            raise type(exc)(exc.errno, exc.strerror, str(target)) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_output(path) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def json_text(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON (RFC 8259) of ``obj``: a non-finite number (NaN, infinity) is written null."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as strict JSON (:func:`json_text`) to ``path`` atomically."""
    atomic_write_text(path, json_text(obj, indent))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Put a copy of ``src`` at ``dst`` atomically: a reflink where the file system offers one.

    Never a hard link: a hard link is the same file, so a later in-place write to either
    (another tool, an editor) would change both, e.g. a product's weights and the installed
    model's. Nothing is done when ``dst`` already holds the same bytes (size and checksum).
    """
    source, target = Path(src), check_output_file(dst)
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and not target.samefile(source) and _same_bytes(source, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target, "tmp")
    try:
        clone_file(source, tmp)
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target


def _same_bytes(a: Path, b: Path) -> bool:
    return file_multihash(a) == file_multihash(b)


_FICLONE = 0x40049409
"""Linux ``ioctl`` that makes ``dst`` share ``src``'s blocks copy-on-write (btrfs, XFS)."""


def clone_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy ``src`` to a new file ``dst``: a copy-on-write reflink where possible, else bytes.

    Either way ``dst`` is an independent file (unlike a hard link): writing one never
    changes the other.
    """
    with Path(src).open("rb") as fin, Path(dst).open("wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:  # no reflinks here (ext4, tmpfs, another file system)
            pass
        shutil.copyfileobj(fin, fout, 1 << 20)


def _mode_at(target: Path) -> int | None:
    """The mode of what is at ``target`` (None: nothing), or a refusal naming why not.

    Raises:
        OutputError: for a symbolic link loop, a name too long, a parent that is a file.
    """
    try:
        return target.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror}; choose another path") from None


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Refuse an output file path that exists and is not a regular file.

    A write-then-rename would replace whatever is at ``path``: a device node, a FIFO, a
    socket or a folder is never a file the project owns, so it is refused before anything
    is opened (a FIFO is not opened at all: opening one would block).

    Raises:
        OutputError: naming the path, what it is and the fix.
    """
    target = Path(path)
    if str(path) == "":
        raise OutputError("an output path is empty; give a file name")
    mode = _mode_at(target)
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(
            f"{target} exists and is {_kind(mode)}, not a file this program wrote; "
            "choose another output path"
        )
    return target


def check_work_folder(path: str | os.PathLike[str]) -> Path:
    """Refuse a folder a command writes into and resumes in when it cannot be one.

    A file, a device, a FIFO, a socket, a symbolic link leading nowhere or round in a loop is
    refused before any work (not when the first file is written, after the work).

    Raises:
        OutputError: naming the path, what it is and the fix.
    """
    target = Path(path)
    if str(path) == "":
        raise OutputError("the output folder is empty; give a folder name")
    mode = _mode_at(target)
    if mode is None:
        if target.is_symlink():
            raise OutputError(f"{target} is a symbolic link to nothing; choose another path")
        _check_parent_writable(target)
    elif not stat.S_ISDIR(mode):
        raise OutputError(
            f"{target} exists and is {_kind(mode)}, not a folder; choose another output path"
        )
    return target


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def source_folder(source: str | os.PathLike[str]) -> Path | None:
    """The local folder a catalog source names (its folder, or ``FOLDER/stac``), or None.

    None for URLs and paths that do not exist.
    """
    text = str(source)
    if not text.strip() or "://" in text or not Path(text).exists():
        return None
    folder = safe_resolve(text)
    folder = folder.parent if folder.is_file() else folder
    if (folder / "stac" / "catalog.json").is_file() and not (folder / "catalog.json").is_file():
        folder = folder / "stac"  # a GeoTIFF folder with its in-place catalog
    return folder


def check_apart(
    out: str | os.PathLike[str],
    inputs: dict[str, str | os.PathLike[str]],
    option: str = "--out",
) -> None:
    """Refuse an output folder that is, holds or lies inside one of the local ``inputs``.

    ``inputs`` maps a description for the message (``"the input catalog X"``) to a local
    path (a folder, or a file whose folder counts); URLs and missing paths are ignored.

    Raises:
        OutputError: naming the overlap and the fix.
    """
    target = safe_resolve(out)
    for what, src in inputs.items():
        text = str(src)
        if not text.strip() or "://" in text or not Path(text).exists():
            continue  # an empty path (not the current folder) is the reader's to refuse
        folder = safe_resolve(text)
        folder = folder.parent if folder.is_file() else folder
        if target == folder or folder in target.parents or target in folder.parents:
            raise OutputError(
                f"{option} {out} overlaps {what}; outputs never go into an input or replace "
                "it: choose a folder beside it"
            )


def _check_parent_writable(out: Path) -> Path:
    parent = safe_resolve(out).parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {out}: {probe} is not a writable folder; choose another --out"
        )
    return parent


def temp_file(target: str | os.PathLike[str], suffix: str = "") -> Path:
    """Create an empty temporary file beside ``target`` (mode 0600), named for this process.

    The caller renames it onto ``target`` or removes it; if the process dies first, the next
    :func:`sweep_stale` of the folder removes it.
    """
    tmp = temp_name(Path(target).absolute(), "tmp", suffix)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return tmp


def temp_dir(target: str | os.PathLike[str]) -> Path:
    """Create an empty temporary folder beside ``target``, named for this process.

    The caller removes it; if the process dies first, the next :func:`sweep_stale` of the
    parent folder removes it.
    """
    tmp = temp_name(Path(target), "staging")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(mode=0o700)
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    libc = _libc()
    if libc is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return libc


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock on a folder itself (no lock file is left in it): writers take turns."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _swap_lock(target: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock for replacing ``target``, on its parent folder."""
    return folder_lock(target.parent)


@contextlib.contextmanager
def staged_directory(
    out: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    owned: bool = False,
    kind: str = "",
    mark: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Build a folder in a staging area beside ``out`` and move it into place on success.

    Yields the staging folder. When the block finishes without an exception, ``out`` is
    replaced by it (an existing ``out`` is only replaced with ``overwrite=True``): in one
    atomic exchange where the system offers it, so ``out`` is never missing, and under a lock
    so concurrent writers of the same ``out`` take turns (the last one wins). When the block
    raises, the staging folder is removed and ``out`` is left as it was. What a killed
    process leaves behind is removed by the next run (:func:`sweep_stale`).

    ``overwrite`` replaces only a folder the project wrote (:func:`is_project_folder`, of
    ``kind`` when given) that holds nothing a user added; ``owned`` says ``out`` lies
    inside an output catalog the caller has checked, whose sub-folders are all the
    project's. A ``catalog`` or ``site`` is marked as the project's (with ``mark``'s fields).

    Raises:
        OutputError: if ``out`` exists and is not empty and ``overwrite`` is false, or it
            is not a folder this project wrote, or its parent folder cannot be written.
    """
    # absolute: a relative name such as ``x:/y`` is read as a URI by GDAL and pyarrow
    target = check_output_folder(out, overwrite, owned=owned, kind=kind).absolute()
    parent = _check_parent_writable(target)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(parent, prefix=f".{target.name}")  # only this output's own leftovers
    stage = temp_name(target, "staging")
    try:
        stage.mkdir(mode=0o777)  # the usual mode for a folder (umask applies)
    except OSError as exc:  # a folder that takes no new entries (/proc, a full disk)
        raise OutputError(f"cannot write {target}: {exc.strerror}; choose another path") from None
    try:
        yield stage
        if kind in ("catalog", "site"):  # what a later --overwrite may replace
            mark_project_folder(stage, kind, **(mark or {}))
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        renamed = _name_the_output(exc, str(stage), str(target))
        if renamed is not exc:
            raise renamed from exc
        raise
    with _swap_lock(target):
        _replace(stage, target)


def _name_the_output(exc: BaseException, stage: str, target: str) -> BaseException:
    """``exc`` naming the output ``target`` where it named its staging folder ``stage``.

    A project error is changed in place (error types may take other arguments than their
    message); an OSError naming a file in the staging folder is made anew.
    """
    if isinstance(exc, MarscopeError):
        if len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (exc.args[0].replace(stage, target),)
        problems = getattr(exc, "problems", None)  # InvalidCatalogError's lines
        if isinstance(problems, list):
            problems[:] = [p.replace(stage, target) if isinstance(p, str) else p for p in problems]
    where = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and exc.errno and isinstance(where, str) and stage in where:
        return type(exc)(exc.errno, exc.strerror, where.replace(stage, target))
    return exc


def check_output_folder(
    out: str | os.PathLike[str], overwrite: bool = False, *, owned: bool = False, kind: str = ""
) -> Path:
    """Refuse an output folder :func:`staged_directory` would refuse, before any work.

    Raises:
        OutputError: see :func:`staged_directory`.
    """
    target = Path(out)
    if str(out) == "":
        raise OutputError("the output folder is empty; give a folder name")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputError(
            f"{target} exists and is not a folder this program wrote; choose another output path"
        )
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputError(
                f"{target} exists and is not empty; pass --overwrite to replace it "
                "or choose another path"
            )
        added = added_entries(target, kind) if kind and not owned else []
        if added:
            raise OutputError(
                f"{target} holds {', '.join(added[:3])}{' ...' if len(added) > 3 else ''}, "
                "which this program did not write; move it out or choose another path"
            )
        if not owned and not is_project_folder(target, kind):
            raise OutputError(
                f"{target} is not a {kind or 'catalog or model'} folder this program wrote, so "
                "it is not replaced; choose another path (or remove it yourself)"
            )
    _check_parent_writable(target)
    return target


def _replace(stage: Path, target: Path) -> None:
    """Put ``stage`` at ``target``; what was there is deleted."""
    if target.exists() and _exchange(stage, target):
        shutil.rmtree(stage, ignore_errors=True)  # now the old content
        return
    old: Path | None = None
    if target.exists():
        old = temp_name(target, "old")
        target.rename(old)
    try:
        stage.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
