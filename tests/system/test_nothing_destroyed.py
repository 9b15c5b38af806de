"""Nothing a user owns is destroyed: --overwrite, outputs inside inputs, special files, copies.

Each case runs the real command line in-process on inputs built here and checks that the
command refuses with one line (exit 2) and leaves every input exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.core.errors import OutputError
from marscope_stac.core.fs import (
    atomic_write_bytes,
    check_output_file,
    copy_file,
    staged_directory,
)
from marscope_stac.core.owned import is_project_folder


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _refused(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("marscope: error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my-notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("three years of work")
    (folder / "data.json").write_text('{"not": "stac"}')
    return folder


def test_overwrite_never_replaces_a_folder_the_project_did_not_write(user_folder: Path) -> None:
    before = _tree(user_folder)
    line = _refused(["demo-data", "--out", str(user_folder), "--overwrite", "--size", "small"])
    assert "not a catalog folder this program wrote" in line
    assert _tree(user_folder) == before


def test_overwrite_of_real_data_refuses_a_user_folder(user_folder: Path) -> None:
    before = _tree(user_folder)
    _refused(["real-data", "--out", str(user_folder), "--overwrite", "--packages", "/nonexistent"])
    assert _tree(user_folder) == before


def test_a_model_build_refuses_a_user_folder(user_folder: Path) -> None:
    before = _tree(user_folder)
    line = _refused(["build-model", "bundled", "--out", str(user_folder)])
    assert "not a model build" in line
    assert _tree(user_folder) == before


def test_overwrite_replaces_what_the_project_wrote(tmp_path: Path) -> None:
    out = tmp_path / "cat"
    with staged_directory(out) as stage:
        (stage / "catalog.json").write_text('{"type": "Catalog", "stac_version": "1.1.0"}')
    with pytest.raises(OutputError, match="--overwrite"), staged_directory(out) as stage:
        pass
    with staged_directory(out, overwrite=True) as stage:
        (stage / "catalog.json").write_text('{"type": "Catalog", "stac_version": "1.1.0"}')
        (stage / "new.txt").write_text("second")
    assert (out / "new.txt").read_text() == "second"


@pytest.mark.parametrize(
    ("files", "ours"),
    [
        ({"catalog.json": '{"type": "Catalog", "stac_version": "1.1.0"}'}, True),
        ({"collection.json": '{"type": "Collection", "stac_version": "1.1.0"}'}, True),
        ({"q-1.json": '{"type": "Feature", "stac_version": "1.1.0"}', "p.tif": "x"}, True),
        ({"open_clip_config.json": "{}", "open_clip_model.safetensors": "x"}, True),
        ({"catalog.json": '{"type": "Catalog"}'}, False),  # not STAC
        ({"open_clip_config.json": "{}"}, False),  # half a model is not one
        ({"notes.txt": "mine"}, False),
        ({"data.json": '{"stac": "no"}'}, False),
    ],
)
def test_which_folders_the_project_recognises(
    tmp_path: Path, files: dict[str, str], ours: bool
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert is_project_folder(tmp_path) is ours


@pytest.mark.parametrize(
    ("files", "kind", "ours"),
    [
        ({"catalog.json": '{"type": "Catalog", "stac_version": "1.1.0"}'}, "model", False),
        ({"catalog.json": '{"type": "Catalog", "stac_version": "1.1.0"}'}, "catalog", False),
        (  # a catalog this project wrote: marked
            {
                "catalog.json": '{"type": "Catalog", "stac_version": "1.1.0"}',
                ".marscope-stac": '{"written_by": "marscope-stac", "kind": "catalog"}',
            },
            "catalog",
            True,
        ),
        (  # the demo world or real data written before marks
            {"catalog.json": '{"type": "Catalog", "stac_version": "1.1.0", "id": "marscope-demo"}'},
            "catalog",
            True,
        ),
        (  # a user's catalog that mentions the project is still the user's
            {
                "catalog.json": '{"type": "Catalog", "stac_version": "1.1.0", "id": "mine", '
                '"description": "made with marscope", "links": []}'
            },
            "catalog",
            False,
        ),
        (  # a products catalog is never replaced by a catalog command
            {
                "catalog.json": '{"type": "Collection", "stac_version": "1.0.0", '
                '"id": "marscope-products"}'
            },
            "catalog",
            False,
        ),
        (
            {
                "catalog.json": '{"type": "Catalog", "stac_version": "1.1.0", "id": "marscope-x"}',
                ".marscope-stac": '{"written_by": "marscope-stac", "kind": "model"}',
            },
            "catalog",
            False,
        ),
        (  # a marked catalog a user added a file to
            {
                "catalog.json": '{"type": "Catalog", "stac_version": "1.1.0"}',
                ".marscope-stac": '{"kind": "catalog", "entries": ["catalog.json"]}',
                "notes.md": "mine",
            },
            "catalog",
            False,
        ),
        (  # a model folder is never a site
            {"open_clip_config.json": "{}", "open_clip_model.safetensors": "x"},
            "site",
            False,
        ),
        (  # hidden files a user keeps in a model folder (a repository)
            {"open_clip_config.json": "{}", "open_clip_model.safetensors": "x", ".gitignore": "x"},
            "model",
            False,
        ),
        ({"open_clip_config.json": "{}", "open_clip_model.safetensors": "x"}, "model", True),
        (  # a released model a user added notes to: the notes are never deleted
            {"open_clip_config.json": "{}", "open_clip_model.safetensors": "x", "NOTES.md": "x"},
            "model",
            False,
        ),
        ({"open_clip_config.json": "{}", "open_clip_model.safetensors": "x"}, "catalog", False),
        (
            {
                "open_clip_config.json": "{}",
                "open_clip_model.safetensors": "x",
                "model.json": '{"type": "Feature", "stac_version": "1.1.0"}',
            },
            "catalog",
            False,
        ),
    ],
)
def test_overwrite_replaces_only_what_the_command_writes(
    tmp_path: Path, files: dict[str, str], kind: str, ours: bool
) -> None:
    """A model never replaces a catalog (of imagery, of products), nor a catalog a model."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert is_project_folder(tmp_path, kind) is ours


def test_a_hand_written_catalog_is_never_replaced(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "items").mkdir(parents=True)
    (mine / "catalog.json").write_text(
        '{"type": "Catalog", "stac_version": "1.1.0", "id": "field-notes", "links": []}'
    )
    (mine / "items" / "a.json").write_text("years of work")
    before = _tree(mine)
    line = _refused(["demo-data", "--out", str(mine), "--size", "small", "--overwrite"])
    assert "not a catalog folder this program wrote" in line
    assert _tree(mine) == before
    # a catalog this program wrote is marked, and replaced
    done = CliRunner().invoke(cli, ["demo-data", "--out", str(tmp_path / "d"), "--size", "small"])
    assert done.exit_code == 0 and (tmp_path / "d" / ".marscope-stac").is_file(), done.output
    again = ["demo-data", "--out", str(tmp_path / "d"), "--size", "small", "--seed", "2"]
    assert CliRunner().invoke(cli, [*again, "--overwrite"]).exit_code == 0


@pytest.mark.parametrize("command", ["release-model", "average-models"])
def test_model_commands_never_overwrite_a_catalog(
    command: str,
    demo_small,
    tiny_model_dir: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    cat = tmp_path / "cat"
    shutil.copytree(demo_small.root, cat)
    before = _tree(cat)
    ref = f"local-dir:{tiny_model_dir}"
    shutil.copytree(tiny_model_dir, tmp_path / "twin")  # a model is averaged with another
    args = (
        ["release-model", ref, "--name", "mine"]
        if command == "release-model"
        else ["average-models", ref, f"local-dir:{tmp_path / 'twin'}"]
    )
    line = _refused([*args, "--out", str(cat), "--overwrite"])
    assert "not a model folder this program wrote" in line
    assert _tree(cat) == before


def test_train_refuses_a_folder_of_other_files(demo_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("my own metrics")  # a run's file name, no run
    (mine / "training.png").write_text("my own plot")
    for extra in ({}, {"notes.txt": "mine"}):
        for name, text in extra.items():
            (mine / name).write_text(text)
        before = _tree(mine)
        line = _refused(["train", str(demo_small.root), "--out", str(mine), "--epochs", "1"])
        assert "not a training run's" in line
        assert _tree(mine) == before
    # a run's folder, even one a user added files to, is refused only for those files
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "notes.txt").write_text("mine")
    _refused(["train", str(demo_small.root), "--out", str(run), "--epochs", "1"])


@pytest.mark.parametrize("damage", ["text", "empty", "noise", "a list", "no model", "context"])
def test_a_damaged_checkpoint_is_one_line_and_kept(  # type: ignore[no-untyped-def]
    damage: str, demo_small, tmp_path: Path
) -> None:
    import pickle

    import numpy as np
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.pt"
    if damage in ("no model", "context"):
        state = {"optimizer": {}, "epoch": 1, "history": [], "rng": {}}
        if damage == "context":
            state |= {"model": {}, "config": {"tile_context": "wide"}}
        torch.save(state, ckpt)
    else:
        data = {"text": b"12 garbage", "empty": b"", "a list": pickle.dumps([1, 2])}
        noise = np.random.default_rng(0).bytes(3000)
        ckpt.write_bytes(data.get(damage, noise))
    before = ckpt.read_bytes()
    args = ["train", str(demo_small.root), "--out", str(run), "--epochs", "1"]
    line = _refused([*args, "--model", "marscope-tiny", "--batch-size", "8"])
    assert "checkpoint" in line and "last.pt" in line
    assert ckpt.read_bytes() == before


def test_train_to_a_path_that_cannot_be_made_fails_before_training(
    demo_small, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _refused(["train", str(demo_small.root), "--out", str(blocker / "run"), "--epochs", "1"])
    assert "cannot make the run folder" in line


@pytest.mark.parametrize(
    "item", ["{garbage", "[]", '{"properties": 5, "stac_extensions": [], "assets": {}}', "{}"]
)
def test_a_damaged_model_item_fails_before_any_work(  # type: ignore[no-untyped-def]
    item: str, demo_small, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """embed, release-model: one line naming model.json, and no output at all."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.json").write_text(item)
    for args in (
        ["embed", str(demo_small.root), "--out", str(tmp_path / "products")],
        ["release-model", f"local-dir:{model}", "--name", "m", "--out", str(tmp_path / "rel")],
    ):
        line = _refused([*args, "--model", f"local-dir:{model}"] if args[0] == "embed" else args)
        assert "model.json is not a readable model item" in line
    assert not (tmp_path / "products").exists() and not (tmp_path / "rel").exists()


def test_average_models_never_replaces_its_own_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    before = _tree(a)
    for out in (a, a / "sub", tmp_path):
        line = _refused(
            ["average-models", f"local-dir:{a}", f"local-dir:{b}", "--out", str(out), "--overwrite"]
        )
        assert "overlaps the input model" in line
    assert _tree(a) == before


def test_train_out_inside_its_catalog_is_refused(demo_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cat = tmp_path / "cat"
    shutil.copytree(demo_small.root, cat)
    before = _tree(cat)
    line = _refused(["train", str(cat), "--out", str(cat / "run"), "--epochs", "1"])
    assert "overlaps the training catalog" in line
    assert _tree(cat) == before


def test_basemap_out_inside_its_catalog_is_refused(demo_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cat = tmp_path / "cat"
    shutil.copytree(demo_small.root, cat)
    before = _tree(cat)
    line = _refused(["basemap", str(cat), "--out", str(cat / "products")])
    assert "overlaps the input catalog" in line
    assert _tree(cat) == before


def test_a_basemap_of_another_source_of_one_name_is_not_replaced(  # type: ignore[no-untyped-def]
    demo_small, tmp_path: Path
) -> None:
    first, second = tmp_path / "a" / "demo", tmp_path / "b" / "demo"
    shutil.copytree(demo_small.root, first)
    shutil.copytree(demo_small.root, second)
    products = tmp_path / "products"
    run = CliRunner()
    assert run.invoke(cli, ["basemap", str(first), "--out", str(products)]).exit_code == 0
    item = products / "basemaps" / "demo" / "demo.json"
    before = item.read_bytes()
    line = _refused(["basemap", str(second), "--out", str(products)])
    assert "already shows" in line and "--name" in line
    assert item.read_bytes() == before
    again = run.invoke(cli, ["basemap", str(first), "--out", str(products)])  # a refresh
    assert again.exit_code == 0, again.output
    other = run.invoke(cli, ["basemap", str(second), "--out", str(products), "--name", "b"])
    assert other.exit_code == 0 and (products / "basemaps" / "b" / "b.json").is_file()
    assert "no letter or digit" in _refused(
        ["basemap", str(second), "--out", str(products), "--name", "---"]
    )


def test_a_static_site_replaces_only_a_site(tmp_path: Path) -> None:
    products = tmp_path / "products"
    products.mkdir()
    (products / "catalog.json").write_text('{"type": "Catalog", "stac_version": "1.1.0"}')
    site = tmp_path / "site"
    args = ["serve", str(products), "--static", str(site)]
    for _ in range(2):  # made again: the earlier site is replaced
        done = CliRunner().invoke(cli, args)
        assert done.exit_code == 0 and (site / "index.html").is_file(), done.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my own page")
    line = _refused(["serve", str(products), "--static", str(mine)])
    assert "not a site folder this program wrote" in line and "--overwrite" not in line
    assert (mine / "index.html").read_text() == "my own page"
    (site / "CNAME").write_text("maps.example.org")  # added to a site of ours: kept
    line = _refused(["serve", str(products), "--static", str(site)])
    assert "holds CNAME, which this program did not write" in line
    model = tmp_path / "model"  # a model folder is never taken for a site
    model.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (model / name).write_text("{}")
    _refused(["serve", str(products), "--static", str(model)])
    assert sorted(p.name for p in model.iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]


def test_static_site_inside_the_products_is_refused(tmp_path: Path) -> None:
    products = tmp_path / "products"
    products.mkdir()
    (products / "catalog.json").write_text('{"type": "Catalog", "stac_version": "1.1.0"}')
    before = _tree(products)
    line = _refused(["serve", str(products), "--static", str(products / "site")])
    assert "overlaps the products folder" in line
    assert _tree(products) == before


@pytest.fixture
def special_files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO, a socket and a folder, made in the test's own temporary folder."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    folder = tmp_path / "folder"
    folder.mkdir()
    yield {"a FIFO": fifo, "a socket": sock_path, "a folder": folder}
    sock.close()


def test_atomic_writes_never_rename_over_special_files(special_files: dict[str, Path]) -> None:
    for kind, path in special_files.items():
        mode = path.lstat().st_mode
        with pytest.raises(OutputError, match=kind):
            atomic_write_bytes(path, b"data")
        with pytest.raises(OutputError, match=kind):
            check_output_file(path)
        assert path.lstat().st_mode == mode  # still what it was
    assert stat.S_ISFIFO(special_files["a FIFO"].lstat().st_mode)


def test_tiles_preview_onto_a_fifo_is_refused_before_any_work(
    demo_small,  # type: ignore[no-untyped-def]
    special_files: dict[str, Path],
) -> None:
    fifo = special_files["a FIFO"]
    line = _refused(["tiles", str(demo_small.root), "--preview", str(fifo)])
    assert "FIFO" in line and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_empty_output_paths_are_refused() -> None:
    assert "empty" in _refused(["demo-data", "--out", "", "--size", "small"])
    with pytest.raises(OutputError, match="empty"):
        check_output_file("")


def test_copies_are_never_hard_links(tmp_path: Path) -> None:
    src = tmp_path / "weights.bin"
    original = os.urandom(4096)
    src.write_bytes(original)
    dst = copy_file(src, tmp_path / "out" / "weights.bin")
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_ino != src.stat().st_ino and src.stat().st_nlink == 1
    # an old hard link is replaced by an independent copy
    linked = tmp_path / "linked.bin"
    os.link(src, linked)
    copy_file(src, linked)
    assert linked.stat().st_ino != src.stat().st_ino and src.stat().st_nlink == 1
    with linked.open("r+b") as fh:  # an in-place write to the copy leaves the source alone
        fh.write(b"\0" * 16)
    assert src.read_bytes() == original and linked.read_bytes() != original


def test_catalog_build_keeps_a_hand_written_stac_folder(tmp_path: Path) -> None:
    from _rasters import pattern, write_geotiff
    from affine import Affine

    folder = tmp_path / "ctx"
    t = Affine(0.05 / 64, 0, 10.0, 0, -0.05 / 64, 0.1)
    write_geotiff(folder / "a.tif", pattern(64, 64, seed=1), "IAU_2015:49900", t)
    (folder / "stac").mkdir()
    (folder / "stac" / "catalog.json").write_text(
        '{"type": "Catalog", "stac_version": "1.1.0", "id": "mine", "links": []}'
    )
    before = _tree(folder / "stac")
    line = _refused(["catalog", "build", str(folder), "--overwrite"])
    assert "move it away" in line  # its place is fixed: no other path to choose
    assert _tree(folder / "stac") == before


def test_catalog_publish_of_a_damaged_catalog_changes_nothing(demo_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cat = tmp_path / "cat"
    shutil.copytree(demo_small.root, cat)
    (cat / "demo-labels" / "collection.json").write_text('{"type": "Collection", ')
    before = _tree(cat)
    line = _refused(["catalog", "publish", str(cat), "--base-url", "https://example.org/c/"])
    assert "collection.json is not readable JSON" in line
    assert _tree(cat) == before  # checked before any file is written: nothing half-published
