from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import marscope_stac
from marscope_stac.cli.main import cli
from marscope_stac.core import errors
from marscope_stac.core.bodies import MARS, MOON, get_body, normalize_lon
from marscope_stac.core.checksums import file_multihash
from marscope_stac.core.fs import atomic_write_text, staged_directory


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "demo-data", "validate"):
        assert command in result.output


@pytest.mark.parametrize("command", ["demo", "demo-data", "validate"])
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_version_names_the_build_and_its_commit() -> None:
    from importlib.metadata import version

    from marscope_stac.core.software import build_version, commit_id, software

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert marscope_stac.__version__ == version("marscope-stac")
    assert marscope_stac.__version__ in result.output and build_version() in result.output
    commit = commit_id()  # written by the build (setuptools-scm) from git
    assert commit is not None and commit in build_version()
    head = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"],
        cwd=Path(marscope_stac.__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode == 0:  # a checkout: the commit is one of its commits
        full = subprocess.run(
            ["git", "rev-parse", commit.removeprefix("g")],
            cwd=Path(marscope_stac.__file__).parent,
            capture_output=True,
            check=False,
        )
        assert full.returncode == 0, commit
    assert software() == {"marscope-stac": build_version()}


def test_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "catalog.json"
    proc = subprocess.run(
        [sys.executable, "-m", "marscope_stac.cli", "validate", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "does not exist" in lines[0] and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--debug", "validate", str(tmp_path / "x")])
    assert "Traceback" in result.stderr and "CatalogError" in result.stderr
    assert result.exit_code == 2  # still a user error: --debug adds the traceback only
    assert result.stderr.strip().splitlines()[-1].startswith("marscope: error: ")


def test_bare_marscope_prints_its_help() -> None:
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0 and result.output.startswith("Usage: ")  # "cli" in tests
    assert "marscope: error" not in result.output


def test_unexpected_error_exits_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import marscope_stac.stac.validation as validation

    def boom(path: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(validation, "validate_catalog", boom)
    result = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "unexpected error" in result.output and "--debug" in result.output


def test_error_hierarchy() -> None:
    for cls in (
        errors.CatalogError,
        errors.ConfigError,
        errors.DataError,
        errors.ModelError,
        errors.OutputError,
    ):
        assert issubclass(cls, errors.MarscopeError)
    assert issubclass(errors.SkippedInputWarning, UserWarning)


def test_bodies() -> None:
    assert MARS.geographic_code == "IAU_2015:49900"
    assert MARS.equirectangular_code == "IAU_2015:49910"
    assert MARS.radius_m == pytest.approx(3396190.0)
    assert MOON.radius_m == pytest.approx(1737400.0)
    assert get_body("mars") is MARS
    with pytest.raises(errors.ConfigError, match="unknown body"):
        get_body("Pluto-ish")
    np.testing.assert_allclose(
        normalize_lon([0, 180, 190, 359.5, -190]), [0, -180, -170, -0.5, 170]
    )


def test_atomic_write_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    atomic_write_text(path, "hello")
    assert path.read_text() == "hello"
    # sha256("hello")
    assert file_multihash(path) == (
        "12202cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_staged_directory_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stac = '{"type": "Catalog", "stac_version": "1.1.0"}'
    with staged_directory(out) as stage:
        (stage / "x").write_text("1")
        (stage / "catalog.json").write_text(stac)  # a catalog: --overwrite may replace it
    assert (out / "x").read_text() == "1"
    with pytest.raises(errors.OutputError, match="--overwrite"), staged_directory(out):
        pass
    with pytest.raises(ValueError), staged_directory(out, overwrite=True) as stage:
        (stage / "x").write_text("2")
        raise ValueError("interrupted")
    assert (out / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_directory(out, overwrite=True) as stage:
        (stage / "y").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    # "y" alone is not a folder it recognises
    with (
        pytest.raises(errors.OutputError, match="not a catalog or model folder"),
        staged_directory(out, overwrite=True),
    ):
        pass
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_errors_name_the_output_whatever_their_constructor(tmp_path: Path) -> None:
    from marscope_stac.stac.validation import InvalidCatalogError, ValidationReport

    out = tmp_path / "out"
    with pytest.raises(errors.CatalogError) as caught, staged_directory(out) as stage:
        (stage / "x").write_text("1")
        report = ValidationReport(stage)
        report.problems.append(f"invalid STAC at {stage}/item.json: field id")
        raise InvalidCatalogError(report)  # built from a report, not a message
    assert str(caught.value) == f"invalid STAC at {out.absolute()}/item.json: field id"
    bad = f"^{out.absolute()}/a is bad$"
    with pytest.raises(errors.DataError, match=bad), staged_directory(out) as stage:
        raise errors.DataError(f"{stage}/a is bad")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_system_errors_name_the_output_not_a_temporary_name(tmp_path: Path) -> None:
    import errno

    from marscope_stac.core.fs import atomic_output

    out = tmp_path / "out"
    with pytest.raises(OSError) as caught, staged_directory(out) as stage:
        raise OSError(errno.EIO, "Input/output error", str(stage / "a.tif"))
    assert caught.value.filename == str(out.absolute() / "a.tif")
    target = tmp_path / "table.parquet"
    with pytest.raises(OSError) as caught, atomic_output(target):
        raise OSError(errno.ENOSPC, "No space left on device")  # write() names no file
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target.absolute())
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    refused = pytest.raises(errors.OutputError, match=r"^cannot write (to )?/proc/x: ")
    with refused, staged_directory("/proc/x"):
        pass  # /proc takes no new folder
    done = CliRunner().invoke(cli, ["demo-data", "--out", "/proc/x"])
    assert done.exit_code == 2 and "staging" not in done.output, done.output


def test_outputs_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with staged_directory(tmp_path / "d") as stage:
            (stage / "g").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
