"""Which folders a products catalog is written into (found by a new user's hostile pass)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from marscope_stac.core.errors import OutputError
from marscope_stac.stac.catalog import CATALOG_ID, LOCK_NAME, OutputCatalog


def _put(root: Path, name: str, data: str = "x") -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(data)


@pytest.mark.parametrize(
    "files",
    [
        [],  # empty
        [LOCK_NAME, "queries/q1/probability.tif"],  # a first query stopped before the catalog
        [LOCK_NAME, "basemaps/b/b.pmtiles", "models/m/model.json", "README.md"],
        ["embeddings/s1/manifest.json", "embeddings/s2/progress.json"],  # the library's writers
    ],
)
def test_folders_this_project_began_are_taken(tmp_path: Path, files: list[str]) -> None:
    root = tmp_path / "out"
    root.mkdir()
    for name in files:
        _put(root, name)
    OutputCatalog(root).claim()
    assert (root / LOCK_NAME).is_file()


@pytest.mark.parametrize(
    ("files", "names"),
    [
        (["holiday.jpg"], "holds holiday.jpg"),
        (["embeddings/s1/embeddings.parquet"], "holds embeddings but no .marscope.lock"),
        (["queries/mine.txt"], "holds queries but no"),  # an older version's, or the user's
        (["README.md"], "holds README.md but no"),
        (["embeddings"], "holds embeddings but no"),  # a file of that name
    ],
)
def test_folders_of_the_users_are_refused_and_left_as_they_are(
    tmp_path: Path, files: list[str], names: str
) -> None:
    root = tmp_path / "out"
    root.mkdir()
    for name in files:
        _put(root, name)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with pytest.raises(OutputError, match=names):
        OutputCatalog(root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[]", "type 'list'"),
        ('{"type": "Catalog", "id": "caf\\u00e9"}', "id 'café'"),
        (json.dumps({"type": "Catalog", "id": CATALOG_ID, "links": {}}), "without a list of links"),
        (json.dumps({"type": "Catalog", "id": CATALOG_ID}), "without a list of links"),
    ],
)
def test_a_catalog_json_of_another_shape_is_refused(tmp_path: Path, text: str, why: str) -> None:
    _put(tmp_path, "catalog.json", text)
    with pytest.raises(OutputError, match=why):
        OutputCatalog(tmp_path)


@pytest.mark.parametrize("data", [b'{"id": "caf\xe9"}', '{"id": "x"}'.encode("utf-16")])
def test_a_catalog_json_not_in_utf8_is_refused(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "catalog.json").write_bytes(data)
    with pytest.raises(OutputError, match="is not readable JSON"):
        OutputCatalog(tmp_path)
