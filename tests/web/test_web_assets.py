"""The web map's vendored npm files: fetched from a registry (Debian's nginx serving a folder
laid out as the npm registry), checked against pinned checksums, refetched when stale."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _services import Nginx, free_port

from marscope_stac.web import assets
from marscope_stac.web.assets import NpmPackage, VendorError, ensure, fetch, missing

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    root = tmp_path_factory.mktemp("registry")
    data = _archive({"dist/map.js": b"export const map = 1;\n", "LICENSE": b"MIT\n"})
    (root / "@scope" / "map" / "-").mkdir(parents=True)
    (root / "@scope" / "map" / "-" / "map-1.2.3.tgz").write_bytes(data)
    server = Nginx(root)
    try:
        yield f"http://127.0.0.1:{server.port}/", data
    finally:
        server.stop()


@pytest.fixture
def package(registry: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[NpmPackage]:
    url, data = registry
    pinned = NpmPackage(
        "@scope/map",
        "1.2.3",
        _integrity(data),
        {"dist/map.js": "map.js", "LICENSE": "LICENSE-map.txt"},
        "MIT",
        licence_file="LICENSE-pmtiles.txt",
    )
    monkeypatch.setattr(assets, "PACKAGES", (pinned,))
    monkeypatch.setenv("MARSCOPE_NPM_REGISTRY", url)
    yield pinned


def test_files_are_fetched_checked_and_recorded(package: NpmPackage, tmp_path: Path) -> None:
    folder = tmp_path / "vendor"
    assert missing(folder) == ["map.js", "LICENSE-map.txt", "LICENSE-pmtiles.txt", "NOTICE.txt"]
    assert ensure(folder) == (folder, True)
    assert not missing(folder)
    assert (folder / "map.js").read_bytes() == b"export const map = 1;\n"
    assert "BSD 3-Clause" in (folder / "LICENSE-pmtiles.txt").read_text()
    notice = (folder / "NOTICE.txt").read_text()
    assert "@scope/map 1.2.3 (MIT)" in notice and package.integrity in notice
    record = json.loads((folder / "MANIFEST.json").read_text())
    assert record["packages"] == {"@scope/map": "1.2.3"}
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries
    # present and intact: nothing downloaded; a changed file or a new pin: fetched again
    assert ensure(folder) == (folder, False)
    (folder / "map.js").write_text("tampered")
    assert ensure(folder) == (folder, True)
    assert (folder / "map.js").read_bytes() == b"export const map = 1;\n"


def test_an_archive_that_fails_its_checksum_is_refused(
    package: NpmPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "vendor"
    fetch(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    wrong = NpmPackage(**{**package.__dict__, "integrity": _integrity(b"other")})
    monkeypatch.setattr(assets, "PACKAGES", (wrong,))
    with pytest.raises(VendorError, match=r"does not match its pinned checksum; refusing"):
        ensure(folder, force=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # left as it was


def test_an_unreachable_registry_is_one_line(
    package: NpmPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARSCOPE_NPM_REGISTRY", f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(VendorError, match="set MARSCOPE_NPM_REGISTRY for a mirror") as err:
        fetch(tmp_path / "vendor")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "vendor").exists()


def test_the_installed_files_are_the_pinned_ones() -> None:
    """The checkout's (or wheel's) vendor folder matches its manifest and the pins."""
    folder = assets.vendor_dir()
    assert not missing(folder), "run python -m marscope_stac.web"
    assert assets._stale(folder) is None
