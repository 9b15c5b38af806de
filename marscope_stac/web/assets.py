"""The web map's third-party JavaScript and CSS, taken from their npm packages at build time.

``marscope serve`` works offline, so MapLibre GL JS and the PMTiles decoder must be inside
the installed package. They are not kept in this repository: building the package (``make
dist``, ``pip install .``) or ``make install`` downloads the pinned package archives from
the npm registry (no npm needed), checks each against the checksum pinned here, and copies
the files the page loads, with each package's licence, into ``marscope_stac/data/web/vendor/``.
A wheel carries them, so installing it needs neither npm nor a network.

:func:`vendor_dir` says where the files are, :func:`missing` what is not there, :func:`fetch`
downloads them and :func:`ensure` does so only when they are missing or stale. This module
uses the standard library only: the build backend loads it before the package's dependencies
are installed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

__all__ = ["PACKAGES", "NpmPackage", "ensure", "fetch", "missing", "vendor_dir"]

REGISTRY = "https://registry.npmjs.org/"
"""The npm registry; ``MARSCOPE_NPM_REGISTRY`` or npm's ``npm_config_registry`` override it."""

MANIFEST = "MANIFEST.json"
"""The vendor folder's record: package versions and each file's SHA-256."""


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm package and the files the web map takes from it.

    Attributes:
        name: npm package name.
        version: Exact version.
        integrity: The registry's ``dist.integrity`` of the archive (``sha512-`` base64).
        files: File in the package -> file name in the vendor folder.
        licence: The package's SPDX licence.
        licence_file: A licence text kept in this repository, for a package whose archive
            has none (copied into the vendor folder as ``LICENSE-<name>.txt``).
    """

    name: str
    version: str
    integrity: str
    files: dict[str, str]
    licence: str
    licence_file: str | None = field(default=None)

    def url(self, registry: str) -> str:
        """The archive's address on ``registry``."""
        base = self.name.rsplit("/", 1)[-1]
        return f"{registry.rstrip('/')}/{self.name}/-/{base}-{self.version}.tgz"


PACKAGES: tuple[NpmPackage, ...] = (
    NpmPackage(
        "maplibre-gl",
        "6.17.0",
        "sha512-2chIZwpLGenoUQOcnm9Pk4SLbA8ppNFq8jlpXiq9vcYm3Y1wJ3fc82FL0GLwBaPYJCLzPv/mC46KEupVov75rQ==",
        {
            "dist/maplibre-gl.mjs": "maplibre-gl.mjs",
            "dist/maplibre-gl-worker.mjs": "maplibre-gl-worker.mjs",
            "dist/maplibre-gl.css": "maplibre-gl.css",
            "LICENSE.txt": "LICENSE-maplibre-gl.txt",
        },
        "BSD-3-Clause",
    ),
    NpmPackage(
        "pmtiles",
        "4.5.0",
        "sha512-CBeD4SoUluFziGdy/8k7FOjQxQy486n+929W/tWophauvMICpkZ26vGBWhDt/6b1FZQWNaf4jFdT/5+q0Wii5w==",
        {"dist/pmtiles.js": "pmtiles.js"},
        "BSD-3-Clause",
        licence_file="LICENSE-pmtiles.txt",
    ),
)
"""The pinned packages (versions and archive checksums from the npm registry)."""

_LICENCES = Path(__file__).with_name("licences")


class VendorError(RuntimeError):
    """The web map's files could not be fetched or failed their checksum."""


def vendor_dir() -> Path:
    """Where the web map's third-party files are installed."""
    return Path(str(files("marscope_stac") / "data" / "web" / "vendor"))


def _wanted() -> list[str]:
    names = [name for p in PACKAGES for name in p.files.values()]
    return names + [p.licence_file for p in PACKAGES if p.licence_file] + ["NOTICE.txt"]


def missing(folder: Path | None = None) -> list[str]:
    """The vendor files that are not installed (empty when the web map can run)."""
    folder = folder or vendor_dir()
    return [name for name in _wanted() if not (folder / name).is_file()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stale(folder: Path) -> str | None:
    """Why the vendor folder must be fetched again, or None when it is complete and intact."""
    if missing(folder):
        return f"missing {', '.join(missing(folder))}"
    try:
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    pinned = {p.name: p.version for p in PACKAGES}
    if record.get("packages") != pinned:
        return f"fetched for {record.get('packages')}, pinned {pinned}"
    for name, digest in dict(record.get("files", {})).items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            return f"{name} changed since it was fetched"
    return None


def _registry() -> str:
    return (
        os.environ.get("MARSCOPE_NPM_REGISTRY")
        or os.environ.get("npm_config_registry")  # noqa: SIM112 - npm's own spelling
        or REGISTRY
    )


def _download(url: str, attempts: int = 3) -> bytes:
    """GET ``url`` with a timeout, trying ``attempts`` times (1 s, then 2 s apart)."""
    failure: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return bytes(response.read())
        except (urllib.error.URLError, OSError) as exc:
            failure = exc
    raise VendorError(
        f"cannot download {url}: {failure}; the web map's files come from the npm registry "
        "at build time (set MARSCOPE_NPM_REGISTRY for a mirror)"
    ) from failure


def _check_integrity(package: NpmPackage, data: bytes) -> None:
    algorithm, _, expected = package.integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise VendorError(
            f"{package.name}@{package.version} from the registry ({algorithm} {digest[:12]}..., "
            f"pinned {expected[:12]}...) does not match its pinned checksum; refusing it"
        )


def fetch(folder: Path | None = None) -> Path:
    """Download the pinned packages, check their checksums and install their files.

    Args:
        folder: The vendor folder (default :func:`vendor_dir`).

    Returns:
        The folder.

    Raises:
        VendorError: if a download fails or an archive does not match its checksum (the
            message says what to do); nothing in the folder is changed then.
    """
    folder = folder or vendor_dir()
    registry = _registry()
    contents: dict[str, bytes] = {}
    notices = []
    for package in PACKAGES:
        data = _download(package.url(registry))
        _check_integrity(package, data)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for inner, target in package.files.items():
                member = tar.extractfile(f"package/{inner}")
                if member is None:  # pragma: no cover - a pinned version's layout
                    raise VendorError(f"{package.name}@{package.version} has no {inner}")
                contents[target] = member.read()
        if package.licence_file:
            contents[package.licence_file] = (_LICENCES / package.licence_file).read_bytes()
        notices.append(
            f"{package.name} {package.version} ({package.licence}): "
            f"{package.url(registry)} {package.integrity}"
        )
    contents["NOTICE.txt"] = (
        "Third-party files of the web map, copied unchanged from their npm packages, each "
        "archive checked against its pinned checksum; licences in LICENSE-*.txt:\n"
        + "\n".join(notices)
        + "\n"
    ).encode()
    _install(folder, contents)
    return folder


def _install(folder: Path, contents: dict[str, bytes]) -> None:
    """Write every file atomically (temporary file, then rename), the manifest last."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.", delete=False) as tmp:
            tmp.write(data)
        Path(tmp.name).replace(folder / name)
    record = {
        "packages": {p.name: p.version for p in PACKAGES},
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
    }
    (folder / f".{MANIFEST}.tmp").write_text(json.dumps(record, indent=1), encoding="utf-8")
    (folder / f".{MANIFEST}.tmp").replace(folder / MANIFEST)


def ensure(folder: Path | None = None, *, force: bool = False) -> tuple[Path, bool]:
    """Fetch the files unless they are present and intact; ``(folder, fetched)``.

    Raises:
        VendorError: as :func:`fetch`.
    """
    folder = folder or vendor_dir()
    if not force and _stale(folder) is None:
        return folder, False
    return fetch(folder), True


def main() -> None:
    """``python -m marscope_stac.web``: install the files unless they are there."""
    try:
        folder, fetched = ensure(force="--force" in sys.argv)
    except VendorError as exc:
        print(f"marscope: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(f"web map files {'installed' if fetched else 'present'} in {folder}")
