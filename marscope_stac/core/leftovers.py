"""Temporary names that record their process and host, and the sweep of dead ones' leftovers.

Every temporary file or folder this project makes beside an output is named
``.NAME.PID-HOST.HEX.KIND[.ext]`` (:func:`temp_name`); :func:`sweep_stale` removes those whose
process is gone, judging only names made on this host and process namespace by their process
id (another host's after a week), and never a name of any other form.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path

__all__ = ["FOREIGN_STALE_S", "TEMP_NAME", "host_tag", "sweep_stale", "temp_name"]

TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)(-(?P<host>[0-9a-f]{6}))?\.[0-9a-f]{8}"
    r"\.(?P<kind>tmp|staging|old)(\.\w+)?$"
)
"""A temporary name of :mod:`marscope_stac.core.fs`: ``.NAME.PID-HOST.HEX.KIND[.ext]`` (no
``-HOST`` in names of earlier versions)."""


def temp_name(target: Path, kind: str, suffix: str = "") -> Path:
    """A hidden name beside ``target`` that records this process and host (:func:`sweep_stale`).

    ``kind`` is ``tmp``, ``staging`` or ``old``; ``suffix`` keeps an extension readers need.
    """
    name = f".{target.name}.{os.getpid()}-{host_tag()}.{secrets.token_hex(4)}.{kind}{suffix}"
    return target.with_name(name)


@functools.cache
def host_tag() -> str:
    """Six hex digits naming this machine's process ids in temporary names.

    A process id means something only on the machine, and in the process namespace, that
    gave it: on shared storage a sweep on one host (or container) must not take another's
    live process for a dead one. The tag hashes the host name and the process namespace.
    """
    try:
        namespace = str(Path("/proc/self/ns/pid").readlink())
    except OSError:  # no /proc: the host name alone
        namespace = ""
    who = f"{socket.gethostname()}|{namespace}".encode("utf-8", "replace")
    return hashlib.sha256(who).hexdigest()[:6]


FOREIGN_STALE_S = 7 * 86400
"""Age after which another host's temporary entry is swept (that host is presumed gone)."""


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(folder: str | os.PathLike[str], depth: int = 0, prefix: str = "") -> int:
    """Remove temporary files and folders that dead processes left in ``folder``.

    Only hidden names this module makes (``.<name>.<pid>-<host>.<hex>.tmp|staging|old``)
    whose process is gone are removed (never a name without a process id: a user's hidden
    file may look like one); a name made on another host or container (shared storage) is
    left alone until it is a week old (:data:`FOREIGN_STALE_S`), whatever its process id
    means here (names of earlier versions, without a host, are judged by their process id
    here); ``depth`` > 0 also sweeps the sub-folders, that many levels down, never following
    a symbolic link.
    With ``prefix``, only names that start with it are considered (a folder the user owns,
    such as the parent of an output, is swept only for that output's leftovers). Returns how
    many entries were removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    removed = 0
    try:
        entries = list(root.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if prefix and not entry.name.startswith(prefix):
            continue
        m = TEMP_NAME.fullmatch(entry.name)
        if m is not None and _stale(entry, m["host"], int(m["pid"])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed += 1
        elif depth > 0 and not entry.name.startswith(".") and _real_folder(entry):
            removed += sweep_stale(entry, depth - 1)
    return removed


def _stale(entry: Path, host: str | None, pid: int) -> bool:
    """Whether a temporary entry's process is gone (another host's: when a week untouched).

    Another host's entry is judged by its last change of contents or name (a folder renamed
    aside, ``.old``, keeps its contents' old time but not its change time).
    """
    if host is None or host == host_tag():
        return not _alive(pid)
    try:
        st = entry.lstat()
    except OSError:
        return False
    return time.time() - max(st.st_mtime, st.st_ctime) > FOREIGN_STALE_S


def _real_folder(path: Path) -> bool:
    """A folder that is not reached through a symbolic link."""
    return path.is_dir() and not path.is_symlink()
