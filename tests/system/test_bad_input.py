"""Bad input, command by command: one clean line, exit 2, nothing written into the inputs.

Each case runs the real command line (the console script's ``main``) in-process and checks
the exit status, that stderr is exactly one ``marscope: error:`` line, that there is no
traceback, and that the input tree (demo catalog, products, model folder, truth files) is
unchanged: no file added, removed or modified.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec


@dataclass(frozen=True)
class World:
    """The inputs every case may name."""

    root: Path
    cat: Path
    out: Path
    model: str
    product: Path
    tifs: Path
    junk: Path


@pytest.fixture(scope="module")
def world(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    from _rasters import pattern, write_geotiff
    from affine import Affine

    root = tmp_path_factory.mktemp("bad")
    cat = root / "catalogs" / "demo"
    shutil.copytree(demo_small.root, cat)
    model_dir = root / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    model = f"local-dir:{model_dir}"
    out = root / "products"
    embed_catalog(cat, out, model=model, progress=False)
    engine = QueryEngine.open(out, clip_model=load_model(model, device="cpu"))
    product = engine.query(QuerySpec(text=["yardangs"])).folder
    broken = root / "broken-products"  # a products folder whose set manifest is garbage
    shutil.copytree(out, broken)
    (manifest,) = broken.glob("embeddings/*/manifest.json")
    manifest.write_text("{ not json")
    nulls = root / "null-products"  # a products folder whose set manifest says null for a field
    shutil.copytree(out, nulls)
    (manifest,) = nulls.glob("embeddings/*/manifest.json")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "scoring": None}))
    nans = root / "nan-products"  # vectors overwritten with NaN, the file's size unchanged
    shutil.copytree(out, nans)
    (vectors,) = nans.glob("embeddings/*/vectors.npy")
    data = np.load(vectors)
    np.save(vectors, np.full_like(data, np.nan))
    tifs = root / "tifs"
    t = Affine(0.05 / 64, 0, 10.0, 0, -0.05 / 64, 0.1)
    write_geotiff(tifs / "a.tif", pattern(64, 64, seed=1), "IAU_2015:49900", t)
    junk = root / "junk"
    junk.mkdir()
    (junk / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (junk / "bad.geojson").write_text('{"type": "FeatureCollection", "features": [')
    (junk / "nolonlat.csv").write_text("x,y\n1,2\n")
    (junk / "folder").mkdir()
    os.mkfifo(junk / "fifo")  # opening it would wait for a writer for ever
    (junk / "file.txt").write_text("a file, not a folder")
    (junk / "empty").mkdir()
    (junk / "notiff").mkdir()
    (junk / "notiff" / "readme.txt").write_text("no rasters here")
    (junk / "plain.tif").write_bytes(b"II*\x00 not a tiff")
    cyc = junk / "cycle"
    cyc.mkdir()
    (cyc / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "stac_version": "1.1.0",
                "id": "cycle",
                "description": "links to itself",
                "links": [
                    {"rel": "root", "href": "./catalog.json"},
                    {"rel": "child", "href": "./sub/catalog.json"},
                ],
            }
        )
    )
    (cyc / "sub").mkdir()
    (cyc / "sub" / "catalog.json").write_text(
        json.dumps(
            {
                "type": "Catalog",
                "stac_version": "1.1.0",
                "id": "sub",
                "description": "back up",
                "links": [{"rel": "child", "href": "../catalog.json"}],
            }
        )
    )
    return World(root, cat, out, model, product, tifs, junk)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".marscope.lock")
    }


Case = Callable[[World], list[str]]


def _link(w: World, name: str, target: Path | None = None) -> Path:
    """A symbolic link in the world's folder: to ``target``, or to itself (a loop)."""
    link = w.root / f"link-{name}"
    if not link.is_symlink():
        link.symlink_to(target or link)
    return link


def _train(w: World, *options: str) -> list[str]:
    """``marscope train`` on the demo catalog into a fresh folder, with ``options``."""
    out = w.root / ("train-" + "-".join(o.strip("-") for o in options))
    return ["train", str(w.cat), "--out", str(out), *options]


CASES: dict[str, dict[str, Case]] = {
    "demo-data": {
        "negative seed": lambda w: ["demo-data", "--out", str(w.root / "n1"), "--seed", "-1"],
        "unknown size": lambda w: ["demo-data", "--out", str(w.root / "n2"), "--size", "huge"],
        "out is a file": lambda w: ["demo-data", "--out", str(w.junk / "file.txt")],
        "out is a non-empty folder": lambda w: ["demo-data", "--out", str(w.cat)],
        "seed not a number": lambda w: ["demo-data", "--seed", "abc"],
    },
    "validate": {
        "missing path": lambda w: ["validate", str(w.root / "nope")],
        "within a folder that is not there": lambda w: [
            "validate",
            str(w.cat),
            "--within",
            str(w.root / "nope"),
        ],
        "not JSON": lambda w: ["validate", str(w.junk / "picture.png")],
        "no STAC inside": lambda w: ["validate", str(w.junk / "notiff")],
        "garbage JSON": lambda w: ["validate", str(w.junk / "bad.geojson")],
    },
    "demo": {
        "unknown size": lambda w: ["demo", "--workdir", str(w.root / "d1"), "--size", "huge"],
        "seed not a number": lambda w: ["demo", "--seed", "x"],
    },
    "tiles": {
        "empty source": lambda w: ["tiles", ""],
        "bbox of 3 numbers": lambda w: ["tiles", str(w.cat), "--bbox", "1,2,3"],
        "bbox latitude past the pole": lambda w: ["tiles", str(w.cat), "--bbox", "1,95,3,96"],
        "bbox south above north": lambda w: ["tiles", str(w.cat), "--bbox", "10,5,20,-5"],
        "bbox not numbers": lambda w: ["tiles", str(w.cat), "--bbox", "a,b,c,d"],
        "tile-px 0": lambda w: ["tiles", str(w.cat), "--tile-px", "0"],
        "tile-px negative": lambda w: ["tiles", str(w.cat), "--tile-px", "-5"],
        "context negative": lambda w: ["tiles", str(w.cat), "--context", "-1"],
        "max-tiles negative": lambda w: [
            "tiles",
            str(w.cat),
            "--max-tiles",
            "-1",
            "--preview",
            str(w.root / "s.png"),
        ],
        "preview is a folder": lambda w: [
            "tiles",
            str(w.cat),
            "--preview",
            str(w.junk / "folder"),
        ],
        "preview inside the input catalog": lambda w: [
            "tiles",
            str(w.cat),
            "--preview",
            str(w.cat / "sheet.png"),
        ],
        "preview onto the input catalog's file": lambda w: [
            "tiles",
            str(w.cat),
            "--preview",
            str(w.cat / "catalog.json"),
        ],
        "unknown grid": lambda w: ["tiles", str(w.cat), "--grid", "hexagons:9"],
        "unknown collection": lambda w: ["tiles", str(w.cat), "--collection", "nope"],
        "datetime garbage": lambda w: ["tiles", str(w.cat), "--datetime", "yesterday"],
        "datetime backwards": lambda w: [
            "tiles",
            str(w.cat),
            "--datetime",
            "2012-01-01T00:00:00Z/2008-01-01T00:00:00Z",
        ],
        "datetime matching nothing": lambda w: [
            "tiles",
            str(w.cat),
            "--datetime",
            "1990-01-01T00:00:00Z/1991-01-01T00:00:00Z",
        ],
        "unknown asset": lambda w: ["tiles", str(w.cat), "--asset", "nope"],
        "missing catalog": lambda w: ["tiles", str(w.root / "nope")],
        "link cycle": lambda w: ["tiles", str(w.junk / "cycle")],
        "folder of GeoTIFFs without a catalog": lambda w: ["tiles", str(w.tifs)],
    },
    "catalog build": {
        "missing folder": lambda w: ["catalog", "build", str(w.root / "nope")],
        "no GeoTIFF": lambda w: ["catalog", "build", str(w.junk / "notiff")],
        "collection id escaping the folder": lambda w: [
            "catalog",
            "build",
            str(w.tifs),
            "--collection-id",
            "../../x",
        ],
        "unknown body": lambda w: ["catalog", "build", str(w.tifs), "--body", "Vulcan"],
        "a body the files do not show": lambda w: [
            "catalog",
            "build",
            str(w.tifs),
            "--body",
            "Moon",
        ],
        "a hidden collection id": lambda w: [
            "catalog",
            "build",
            str(w.tifs),
            "--collection-id",
            ".marscope-stac",
        ],
        "a file that is not a TIFF": lambda w: ["catalog", "build", str(w.junk)],
    },
    "train": {
        "zero epochs": lambda w: _train(w, "--epochs", "0"),
        "lr nan": lambda w: _train(w, "--lr", "nan"),
        "lr negative": lambda w: _train(w, "--lr", "-1"),
        "prompt share 2": lambda w: _train(w, "--prompt-share", "2"),
        "batch size 1": lambda w: _train(w, "--batch-size", "1"),
        "crop 0": lambda w: _train(w, "--crop-px", "0"),
        "crop larger than the scenes": lambda w: _train(w, "--crop-px", "4000"),  # make fuzz
        "out a symlink loop": lambda w: ["train", str(w.cat), "--out", str(_link(w, "loop"))],
        "out a dangling symlink": lambda w: [
            "train",
            str(w.cat),
            "--out",
            str(_link(w, "dangling", w.root / "nowhere")),
        ],
        "tile context 9": lambda w: _train(w, "--tile-context", "9"),
        "unknown architecture": lambda w: _train(w, "--model", "no-such-net"),
        "unknown device": lambda w: _train(
            w, "--device", "tpu", "--epochs", "1", "--steps-per-epoch", "1"
        ),
        "missing source": lambda w: ["train", str(w.root / "nope"), "--out", str(w.root / "t9")],
        "caption table that is not one": lambda w: [
            "train",
            str(w.junk / "nolonlat.csv"),
            "--out",
            str(w.root / "t10"),
        ],
    },
    "catalog publish": {
        "both a base URL and self-contained": lambda w: [
            "catalog",
            "publish",
            str(w.cat),
            "--base-url",
            "https://example.org/c/",
            "--self-contained",
        ],
    },
    "embed": {
        "a GeoTIFF, not a catalog": lambda w: ["embed", str(w.tifs / "a.tif"), "--out", str(w.out)],
        "batch size 0": lambda w: ["embed", str(w.cat), "--out", str(w.out), "--batch-size", "0"],
        "batch size negative": lambda w: [
            "embed",
            str(w.cat),
            "--out",
            str(w.out),
            "--batch-size",
            "-3",
        ],
        "tile-px 0": lambda w: ["embed", str(w.cat), "--out", str(w.out), "--tile-px", "0"],
        "workers 0": lambda w: ["embed", str(w.cat), "--out", str(w.out), "--workers", "0"],
        "out is the input catalog": lambda w: ["embed", str(w.cat), "--out", str(w.cat)],
        "out inside the input catalog": lambda w: ["embed", str(w.cat), "--out", str(w.cat / "p")],
        "out is a file": lambda w: ["embed", str(w.cat), "--out", str(w.junk / "file.txt")],
        "out is a folder that is not a catalog": lambda w: [
            "embed",
            str(w.cat),
            "--out",
            str(w.junk),
        ],
        "architecture without weights": lambda w: [
            "embed",
            str(w.cat),
            "--out",
            str(w.root / "e1"),
            "--model",
            "marscope-tiny",
        ],
        "missing model folder": lambda w: [
            "embed",
            str(w.cat),
            "--out",
            str(w.root / "e2"),
            "--model",
            f"local-dir:{w.root / 'nope'}",
        ],
        "zero-size grid": lambda w: [
            "embed",
            str(w.cat),
            "--out",
            str(w.out),
            "--grid",
            "lonlat:0",
        ],
        "bad bbox": lambda w: ["embed", str(w.cat), "--out", str(w.out), "--bbox", "1,2"],
        "bbox with no imagery": lambda w: [
            "embed",
            str(w.cat),
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--bbox",
            "-10,-10,-9,-9",
        ],
    },
    "query": {
        "unknown scoring": lambda w: ["query", "x", "--out", str(w.out), "--scoring", "foo"],
        "point not a pair": lambda w: ["query", "x", "--out", str(w.out), "--point", "abc"],
        "point past the pole": lambda w: ["query", "x", "--out", str(w.out), "--point", "1,100"],
        "threshold 2": lambda w: ["query", "x", "--out", str(w.out), "--threshold", "2"],
        "threshold nan": lambda w: ["query", "x", "--out", str(w.out), "--threshold", "nan"],
        "empty and-not": lambda w: ["query", "x", "--out", str(w.out), "--and-not", ""],
        "negative distance": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--near",
            "y",
            "--within-km",
            "-1",
        ],
        "distance nan": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--near",
            "y",
            "--within-km",
            "nan",
        ],
        "examples with classify": lambda w: [
            "query",
            "a",
            "b",
            "--classify",
            "--out",
            str(w.out),
            "--point",
            "150.1,-4.5",
        ],
        "examples with a composite": lambda w: [
            "query",
            "a",
            "--and-not",
            "b",
            "--out",
            str(w.out),
            "--point",
            "150.1,-4.5",
        ],
        "and-not with near": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--and-not",
            "y",
            "--near",
            "z",
        ],
        "empty text": lambda w: ["query", "", "--out", str(w.out)],
        "nothing to look for": lambda w: ["query", "--out", str(w.out)],
        "image weight 2": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--point",
            "150.1,-4.5",
            "--image-weight",
            "2",
        ],
        "unknown product": lambda w: ["query", "x", "--out", str(w.out), "--products", "bogus"],
        "missing embedding set": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--embeddings",
            str(w.root / "nope"),
        ],
        "products folder with no set": lambda w: ["query", "x", "--out", str(w.junk / "empty")],
        "template without braces": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--template",
            "no braces",
        ],
        "within-km without near": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--within-km",
            "3",
        ],
        "and-not empty": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--and-not",
            "",
        ],
        "image that is a FIFO": lambda w: [
            "query",
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--image",
            str(w.junk / "fifo"),
        ],
        "image that is not one": lambda w: [
            "query",
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--image",
            str(w.junk / "picture.png"),
        ],
        "point off the imagery": lambda w: [
            "query",
            "--out",
            str(w.out),
            "--model",
            w.model,
            "--point",
            "-100,40",
        ],
        "other model than the set's": lambda w: [
            "query",
            "x",
            "--out",
            str(w.out),
            "--model",
            "bundled",
        ],
        "garbage manifest": lambda w: [
            "query",
            "x",
            "--out",
            str(w.root / "broken-products"),
            "--model",
            w.model,
        ],
        "vectors of NaN": lambda w: [
            "query",
            "x",
            "--out",
            str(w.root / "nan-products"),
            "--model",
            w.model,
            "--scoring",
            "exact",
        ],
        "manifest with a null field": lambda w: [
            "query",
            "x",
            "--out",
            str(w.root / "null-products"),
            "--model",
            w.model,
        ],
    },
    "evaluate": {
        "missing truth": lambda w: ["evaluate", str(w.product), "--truth", str(w.root / "nope")],
        "empty landform": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
            "--landform",
            "",
        ],
        "truth that is a FIFO": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.junk / "fifo"),
        ],
        # found by `make fuzz`: a products catalog (a Collection root) was "a bug"
        "truth is the products catalog": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.out),
        ],
        "truth is a folder without a catalog": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.junk),
        ],
        "truth is a picture": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.junk / "picture.png"),
        ],
        "truth is broken GeoJSON": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.junk / "bad.geojson"),
        ],
        "truth CSV without lon/lat": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.junk / "nolonlat.csv"),
        ],
        "radius nan": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
            "--radius-cells",
            "nan",
        ],
        "radius negative": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
            "--radius-cells",
            "-1",
        ],
        "threshold 5": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
            "--threshold",
            "5",
        ],
        "unknown ranking": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
            "--rank-by",
            "luck",
        ],
        "not a product": lambda w: ["evaluate", str(w.junk), "--truth", str(w.cat)],
        # found by a new user: every class pooled (background plains too) scored any map 0.99
        "several landforms, none chosen": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
        ],
        "unknown landform": lambda w: [
            "evaluate",
            str(w.product),
            "--truth",
            str(w.cat),
            "--landform",
            "unicorn",
        ],
    },
}

PARAMS = [
    pytest.param(command, name, make, id=f"{command}: {name}")
    for command, cases in CASES.items()
    for name, make in cases.items()
]


def _commands(group: click.Group, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names |= _commands(command, f"{prefix}{name} ")
        else:
            names.add(prefix + name)
    return names


def test_every_case_names_a_command_of_the_cli() -> None:
    from marscope_stac.cli import cli

    unknown = set(CASES) - _commands(cli)
    assert not unknown, f"cases for commands the CLI does not have: {unknown}"


@pytest.mark.parametrize(("command", "name", "make"), PARAMS)
def test_bad_input_is_one_clean_line(world: World, command: str, name: str, make: Case) -> None:
    inputs = [world.cat, world.out, world.root / "model", world.junk, world.tifs]
    inputs.append(world.root / "broken-products")
    before = {str(p): _snapshot(p) for p in inputs}
    with warnings.catch_warnings():  # as a user sees them: printed, not raised
        warnings.simplefilter("default")
        result = CliRunner().invoke(cli, make(world))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and lines[0].startswith("marscope: error: "), lines
    assert "Traceback" not in result.output and "this is a bug" not in result.output
    for p in inputs:
        assert _snapshot(p) == before[str(p)], f"{command} ({name}) changed {p}"


@pytest.mark.parametrize(
    ("landform", "expected"),
    [
        (None, "holds 9 landforms (alluvial_fan, channel"),
        ("craters", "its landforms: alluvial_fan"),
    ],
)
def test_evaluate_names_the_landforms_of_the_truth(
    world: World, landform: str | None, expected: str
) -> None:
    args = ["evaluate", str(world.product), "--truth", str(world.cat)]
    result = CliRunner().invoke(cli, [*args, *(["--landform", landform] if landform else [])])
    assert result.exit_code == 2 and expected in result.stderr, result.output


def test_a_full_disk_is_one_line(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    import marscope_stac.core.fs as fsutil

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    tifs = tmp_path / "tifs"
    shutil.copytree(world.tifs, tifs)
    monkeypatch.setattr(fsutil, "atomic_write_bytes", full)
    result = CliRunner().invoke(cli, ["catalog", "build", str(tifs)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "No space left on device" in lines[0] and "Traceback" not in result.output
    assert sorted(p.name for p in tifs.iterdir()) == ["a.tif"]  # nothing half-written


def test_truncated_imagery_is_a_warning_not_black_tiles(world: World, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    shutil.copytree(world.cat, cat)
    tif = next(cat.rglob("ctx-demo-r0c0.tif"))
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 3])  # cut short, header intact
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        result = CliRunner().invoke(
            cli,
            [
                "tiles",
                str(cat),
                "--preview",
                str(tmp_path / "s.png"),
                "--max-tiles",
                "400",
                "--grid",
                "lonlat:0.02",
                "--tile-px",
                "60",
            ],
        )
    assert result.exit_code == 0, result.output
    assert "marscope: warning:" in result.stderr and "could not be read" in result.stderr
    assert "ctx-demo-r0c0.tif" in result.stderr


def test_a_sweep_leaves_the_temporary_files_of_other_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On shared storage a process id means nothing on another host: its files stay."""
    import os
    import time

    import marscope_stac.core.leftovers as leftovers
    from marscope_stac.core.fs import sweep_stale, temp_dir
    from marscope_stac.core.leftovers import host_tag

    dead = subprocess_pid_that_exited()
    other = "0" * 6 if host_tag() != "0" * 6 else "1" * 6
    gone = tmp_path / f".shard-00005.npy.{dead}-{other}.0123abcd.staging"  # a host long gone
    gone.mkdir()
    renamed = tmp_path / f".product.{dead}-{other}.0123abcd.old"  # old contents, just renamed
    (tmp_path / "product").mkdir()
    month = time.time() - 30 * 86400
    os.utime(tmp_path / "product", (month, month))
    time.sleep(1.2)  # "a week" below is one second: gone is older than that, the rest not
    (tmp_path / "product").rename(renamed)
    theirs = tmp_path / f".shard-00001.npy.{dead}-{other}.0123abcd.tmp"  # a live run elsewhere
    theirs.write_text("being written on another host")
    ours = tmp_path / f".shard-00002.npy.{dead}-{host_tag()}.0123abcd.tmp"
    ours.write_text("left by a dead process here")
    older = tmp_path / f".shard-00003.npy.{dead}.0123abcd.tmp"  # an earlier version's name
    older.write_text("left by a dead process here")
    alive = tmp_path / f".shard-00004.npy.{os.getpid()}-{host_tag()}.0123abcd.tmp"
    alive.write_text("in use")
    assert sweep_stale(tmp_path) == 2  # this host's dead process and the earlier version's
    monkeypatch.setattr(leftovers, "FOREIGN_STALE_S", 1.0)
    assert sweep_stale(tmp_path) == 1  # the other host's entry untouched for "a week"
    kept = [theirs.name, alive.name, renamed.name]  # renamed now: its change time is now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    # what this module makes carries this host's tag
    made = temp_dir(tmp_path / "out")
    assert made.name.startswith(f".out.{os.getpid()}-{host_tag()}.")


def test_a_leftover_temporary_file_is_the_projects_own(tmp_path: Path) -> None:
    """A temporary file a live process keeps in a folder is not taken for a user's file."""
    from marscope_stac.core.fs import staged_directory, temp_file
    from marscope_stac.core.owned import added_entries, is_project_folder

    with staged_directory(tmp_path / "model", kind="model") as stage:
        (stage / "open_clip_config.json").write_text("{}")
        (stage / "open_clip_model.safetensors").write_bytes(b"w")
    leftover = temp_file(tmp_path / "model" / "model.json")  # as a writer makes one
    assert is_project_folder(tmp_path / "model", "model")
    assert added_entries(tmp_path / "model", "model") == []
    with staged_directory(tmp_path / "model", overwrite=True, kind="model") as stage:
        (stage / "open_clip_config.json").write_text('{"new": 1}')
        (stage / "open_clip_model.safetensors").write_bytes(b"w2")
    assert (tmp_path / "model" / "open_clip_config.json").read_text() == '{"new": 1}'
    assert not (tmp_path / "model" / leftover.name).exists()  # not carried into the new one


def test_stale_temporary_files_of_dead_processes_are_swept(tmp_path: Path) -> None:
    import os
    import time

    from marscope_stac.core.fs import sweep_stale

    dead = subprocess_pid_that_exited()
    (tmp_path / f".probability.tif.{dead}.0123abcd.tmp.tif").write_text("partial")
    (tmp_path / f".q-1.{dead}.89abcdef.staging").mkdir()
    (tmp_path / f".q-1.{dead}.89abcdef.staging" / "x").write_text("partial")
    mine = tmp_path / f".index.faiss.{os.getpid()}.00000000.tmp"  # a live process's file
    mine.write_text("in use")
    # names without a process id are never removed: a user's hidden files may look like the
    # temporaries of earlier versions (".thesis-old-20230101"), however old
    theirs = [tmp_path / ".index.faiss.k2j3_abc.tmp", tmp_path / ".thesis-old-20230101"]
    theirs[0].write_text("old")
    theirs[1].mkdir()
    old_time = time.time() - 2 * 86400
    for p in theirs:
        os.utime(p, (old_time, old_time))
    keep = tmp_path / "q-1"
    keep.mkdir()
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / f".x.{dead}.0123abcd.tmp").write_text("not under the folder swept")
    (keep / "link").symlink_to(elsewhere)  # a link is never followed
    assert sweep_stale(tmp_path, depth=3) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, *(p.name for p in theirs), "q-1"]
    )
    assert len(list(elsewhere.iterdir())) == 1


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_folder_catalog_ids_are_injective(tmp_path: Path) -> None:
    from _rasters import pattern, write_geotiff
    from affine import Affine

    folder = tmp_path / "tiles"
    for i, name in enumerate(("E+100N+40.tif", "E-100N-40.tif", "E_100N_40.tif")):
        t = Affine(0.05 / 64, 0, 10.0 + i, 0, -0.05 / 64, 0.1)
        write_geotiff(folder / name, pattern(64, 64, seed=i), "IAU_2015:49900", t)
    result = CliRunner().invoke(cli, ["catalog", "build", str(folder)])
    assert result.exit_code == 0, result.output
    assert "3 items" in result.output
    items = [p for p in (folder / "stac").rglob("*.json") if p.stem == p.parent.name]
    ids = {json.loads(p.read_text())["id"] for p in items}
    assert len(items) == len(ids) == 3 and "E_100N_40" in ids  # the colliding two get a hash


def test_embedding_never_writes_into_the_model_folder(world: World) -> None:
    model_dir = world.root / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
