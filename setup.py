"""Build hooks: the web map's npm files are fetched (and checked) before the package is built.

Everything else is in ``pyproject.toml``. ``sdist`` and ``build_py`` (and so every wheel)
first make sure ``marscope_stac/data/web/vendor/`` holds the pinned files
(:mod:`marscope_stac.web.assets`, standard library only, loaded by path because the package's
dependencies are not installed in the build environment), and record the git commit in
``marscope_stac/data/build.json`` (setuptools-scm's version names the commit only between
releases; a release's wheel, built from its sdist, has no git to ask). An sdist carries both,
so a wheel built from it needs no network. An editable install without the registry only
warns: ``python -m marscope_stac.web`` fetches the files later.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _record_commit() -> None:
    """Write the checkout's commit into ``data/build.json`` (kept as it is without git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=9", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return
    if done.returncode == 0 and done.stdout.strip():
        record = HERE / "marscope_stac" / "data" / "build.json"
        record.write_text(json.dumps({"commit": f"g{done.stdout.strip()}"}) + "\n")


def _vendor_web_files(required: bool = True) -> None:
    spec = importlib.util.spec_from_file_location(
        "_marscope_web_assets", HERE / "marscope_stac" / "web" / "assets.py"
    )
    assert spec is not None and spec.loader is not None
    assets = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = assets  # dataclasses look their module up there
    spec.loader.exec_module(assets)
    try:
        folder, fetched = assets.ensure(HERE / "marscope_stac" / "data" / "web" / "vendor")
    except assets.VendorError as exc:
        if required:
            raise
        print(f"warning: {exc}; the web map needs them: python -m marscope_stac.web")
        return
    print(f"web map files {'fetched into' if fetched else 'present in'} {folder}")


class BuildPy(build_py):
    """``build_py`` that first vendors the web map's files."""

    def run(self) -> None:
        """Vendor, then build."""
        _vendor_web_files(required=not getattr(self, "editable_mode", False))
        _record_commit()
        super().run()


class Sdist(sdist):
    """``sdist`` that first vendors the web map's files."""

    def run(self) -> None:
        """Vendor, then build."""
        _vendor_web_files()
        _record_commit()
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
