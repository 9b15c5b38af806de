"""Shared fixtures: small synthetic inputs built in code, network blocked (pytest-socket)."""

from __future__ import annotations

from pathlib import Path

import pytest

from marscope_stac.demo import DemoCatalog, build_demo_catalog


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory: pytest.TempPathFactory) -> DemoCatalog:
    """The small demo world (2 scenes), built once per test session."""
    out = tmp_path_factory.mktemp("demo") / "catalog"
    return build_demo_catalog(out, seed=7, size="small")


@pytest.fixture()
def demo_root(demo_small: DemoCatalog) -> Path:
    return demo_small.root
