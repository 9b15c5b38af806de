"""Build hooks: the web map's npm files are fetched (and checked) before the package is built.

Everything else is in ``pyproject.toml``. ``sdist`` and ``build_py`` (and so every wheel,
editable or not) first make sure ``marscope_stac/data/web/vendor/`` holds the pinned files
(:mod:`marscope_stac.web.assets`, standard library only, loaded by path because the package's
dependencies are not installed in the build environment). An sdist carries the files, so a
wheel built from it needs no network.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _vendor_web_files() -> None:
    spec = importlib.util.spec_from_file_location(
        "_marscope_web_assets", HERE / "marscope_stac" / "web" / "assets.py"
    )
    assert spec is not None and spec.loader is not None
    assets = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = assets  # dataclasses look their module up there
    spec.loader.exec_module(assets)
    folder, fetched = assets.ensure(HERE / "marscope_stac" / "data" / "web" / "vendor")
    print(f"web map files {'fetched into' if fetched else 'present in'} {folder}")


class BuildPy(build_py):
    """``build_py`` that first vendors the web map's files."""

    def run(self) -> None:
        """Vendor, then build."""
        _vendor_web_files()
        super().run()


class Sdist(sdist):
    """``sdist`` that first vendors the web map's files."""

    def run(self) -> None:
        """Vendor, then build."""
        _vendor_web_files()
        super().run()


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
