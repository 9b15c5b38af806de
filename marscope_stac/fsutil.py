"""Atomic file and folder writes, checksums.

Outputs are first written next to their destination and then renamed into place, so an
interrupted run never leaves a half-written file or catalog behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from marscope_stac.errors import OutputError

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "copy_file",
    "file_multihash",
    "json_text",
    "staged_directory",
]


def file_multihash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the sha2-256 multihash of a file in hex (``"1220"`` + sha256): ``file:checksum``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return "1220" + digest.hexdigest()


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
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
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
    """Put a copy of ``src`` at ``dst`` atomically: a hard link where possible, else a copy.

    Nothing is done when ``dst`` already holds the same bytes (same size and checksum).
    """
    source, target = Path(src), Path(dst)
    same_size = target.is_file() and target.stat().st_size == source.stat().st_size
    if same_size and (target.samefile(source) or file_multihash(target) == file_multihash(source)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(source, tmp)  # the same file, nothing copied (its mode is left alone)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, tmp)
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target


def _check_parent_writable(out: Path) -> Path:
    parent = out.resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {out}: {probe} is not a writable folder; choose another --out"
        )
    return parent


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a staging area beside ``out`` and move it into place on success.

    Yields the staging folder. When the block finishes without an exception, ``out`` is
    replaced by it (an existing ``out`` is only replaced with ``overwrite=True``); when the
    block raises, the staging folder is removed and ``out`` is left as it was.

    Raises:
        OutputError: if ``out`` exists and is not empty and ``overwrite`` is false, or its
            parent folder cannot be written.
    """
    target = Path(out)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a folder; choose another output path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputError(
            f"{target} exists and is not empty; pass --overwrite to replace it "
            "or choose another path"
        )
    parent = _check_parent_writable(target)
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}-staging-", dir=parent))
    stage.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=parent))
        old.rmdir()
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
