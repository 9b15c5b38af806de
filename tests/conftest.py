"""Shared fixtures: small synthetic inputs built in code, network blocked (pytest-socket)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from marscope_stac.datasets.demo import DemoCatalog, build_demo_catalog


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


@pytest.fixture(scope="session", autouse=True)
def _made_up_jpeg_mosaics() -> Iterator[None]:
    """The tests' package archives hold made-up JPEG mosaics: lift the real files' pins.

    ``tests/datasets/test_realdata.py`` puts one back to see a file other than Debian's refused.
    """
    from dataclasses import replace

    from marscope_stac.datasets.packages import PACKAGE_FILES

    pinned = {role: PACKAGE_FILES[role] for role in ("mars-colour", "moon-albedo")}
    for role, spec in pinned.items():
        PACKAGE_FILES[role] = replace(spec, sha256=None)
    yield
    PACKAGE_FILES.update(pinned)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory: pytest.TempPathFactory) -> DemoCatalog:
    """The small demo world (2 scenes), built once per test session."""
    out = tmp_path_factory.mktemp("demo") / "catalog"
    return build_demo_catalog(out, seed=7, size="small")


@pytest.fixture()
def demo_root(demo_small: DemoCatalog) -> Path:
    return demo_small.root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised marscope-tiny model in open_clip hub layout (local-dir:)."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from marscope_stac.models.clip import register_bundled_architectures

    register_bundled_architectures()
    torch.manual_seed(1)
    net = open_clip.create_model("marscope-tiny")
    folder = tmp_path_factory.mktemp("models") / "tinyrand"
    folder.mkdir()
    cfg = {
        "model_name": "marscope-tiny",
        "model_cfg": open_clip.get_model_config("marscope-tiny"),
        "preprocess_cfg": {"mean": [0.45] * 3, "std": [0.2] * 3},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    return folder
