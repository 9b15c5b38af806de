"""The web map's third-party JavaScript and CSS, taken from their npm packages at install.

``marscope serve`` works offline, so MapLibre GL JS and the PMTiles decoder must be inside
the installed package. They are not kept in this repository: ``make install`` runs
``python -m marscope_stac.web``, which asks npm for the pinned package versions
(``npm pack``, the npm registry being one of the package registries an install may use),
and copies the files the page loads, with each package's licence, into
``marscope_stac/data/web/vendor/``. :func:`vendor_dir` says where they are and
:func:`missing` what is not there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.resources import files
from pathlib import Path

__all__ = ["PACKAGES", "fetch", "missing", "vendor_dir"]

PACKAGES: dict[str, tuple[str, dict[str, str]]] = {
    "maplibre-gl": (
        "6.17.0",
        {
            "dist/maplibre-gl.mjs": "maplibre-gl.mjs",
            "dist/maplibre-gl-worker.mjs": "maplibre-gl-worker.mjs",
            "dist/maplibre-gl.css": "maplibre-gl.css",
            "LICENSE.txt": "LICENSE-maplibre-gl.txt",
        },
    ),
    "pmtiles": ("4.5.0", {"dist/pmtiles.js": "pmtiles.js"}),
}
"""npm package -> (version, {file in the package: file in the vendor folder})."""


def vendor_dir() -> Path:
    """Where the web map's third-party files are installed."""
    return Path(str(files("marscope_stac") / "data" / "web" / "vendor"))


def missing() -> list[str]:
    """The vendor files that are not installed (empty when the web map can run)."""
    folder = vendor_dir()
    return [
        name
        for _, (_, wanted) in PACKAGES.items()
        for name in wanted.values()
        if not (folder / name).is_file()
    ]


def fetch(npm: str = "npm") -> Path:
    """Download the pinned packages with ``npm pack`` and install their files; the folder.

    Raises:
        RuntimeError: if npm is missing or fails (the message says what to do).
    """
    exe = shutil.which(npm)
    if exe is None:
        raise RuntimeError("npm is not installed; install Node.js and npm, then run it again")
    folder = vendor_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="marscope-npm-") as tmp:
        specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
        done = subprocess.run(
            [exe, "pack", "--silent", *specs], cwd=tmp, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {' '.join(specs)} failed: {done.stderr.strip()[:300]}")
        notices = []
        for name, (version, wanted) in PACKAGES.items():
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as tar:
                for inner, target in wanted.items():
                    member = tar.extractfile(f"package/{inner}")
                    if member is None:  # pragma: no cover - a pinned version's layout
                        raise RuntimeError(f"{name}@{version} has no {inner}")
                    (folder / target).write_bytes(member.read())
                meta = json.load(tar.extractfile("package/package.json"))  # type: ignore[arg-type]
            notices.append(
                f"{name} {version}: licence {meta.get('license')} ({meta.get('homepage', '')})"
            )
        (folder / "NOTICE.txt").write_text(
            "Third-party files of the web map, copied unchanged from their npm packages:\n"
            + "\n".join(notices)
            + "\n",
            encoding="utf-8",
        )
    return folder


def main() -> None:
    """``python -m marscope_stac.web``: install the files unless they are there."""
    if not missing() and "--force" not in sys.argv:
        print(f"web map files present in {vendor_dir()}")
        return
    try:
        print(f"web map files installed in {fetch()}")
    except RuntimeError as exc:
        print(f"marscope: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
