"""Fuzzing through the real command line: generated STAC, GeoTIFFs, options and environments.

Hypothesis generates the inputs; each runs through the real CLI in-process. Whatever comes
in, a command must: exit 0 or 2 (never 1, the status of a bug), print one ``marscope:
error:`` line on an error and no traceback, leave its inputs unchanged, write nothing
outside its output, and finish within a deadline (special files are refused before they
are opened). FIFOs, sockets and symlink loops are made in the test's own temporary folder;
the machine's devices and system files are never touched.

``make test`` runs a fixed-seed slice (``derandomize``, a few hundred examples in all);
``make fuzz`` runs the same properties with fresh random inputs for ``FUZZ_SECONDS``
(``MARSCOPE_FUZZ=1``: no example limit).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _cli import deadline, tree
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marscope_stac.cli.main import cli
from marscope_stac.embed.run import embed_catalog
from marscope_stac.engine.engine import QueryEngine
from marscope_stac.models.loading import load_model
from marscope_stac.query.scoring import QuerySpec

LONG = bool(os.environ.get("MARSCOPE_FUZZ"))
DEADLINE_S = 120


def budget(n: int) -> settings:
    """``n`` examples in the fixed-seed slice; unlimited under ``make fuzz``."""
    options: dict[str, Any] = {
        "max_examples": 10**9 if LONG else n,
        "derandomize": not LONG,
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    }
    if not LONG:
        options["database"] = None  # the fixed slice neither reads nor writes examples
    return settings(**options)


@dataclass(frozen=True)
class Bench:
    """The inputs every property may use, and the special files it may name."""

    root: Path
    cat: Path
    item: Path
    products: Path
    product: Path
    model: Path
    specials: dict[str, Path]

    def watched(self) -> list[Path]:
        return [self.cat, self.model, self.product]


@pytest.fixture(scope="module")
def bench(demo_small, tiny_model_dir, tmp_path_factory) -> Iterator[Bench]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fuzz")
    cat = root / "cat"
    shutil.copytree(demo_small.root, cat)
    model = root / "model"
    shutil.copytree(tiny_model_dir, model)
    shutil.copytree(tiny_model_dir, root / "twin")  # average-models takes two models
    products = root / "products"
    embed_catalog(cat, products, model=f"local-dir:{model}", grid="lonlat:0.05", progress=False)
    engine = QueryEngine.open(products, clip_model=load_model(f"local-dir:{model}", device="cpu"))
    product = engine.query(QuerySpec(text=["yardangs"])).folder
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(special / "sock"))
    (special / "loop").symlink_to(special / "loop")
    (special / "folder").mkdir()
    (special / "file.txt").write_text("a plain file")
    specials = {p.name: p for p in special.iterdir()}
    item = sorted(cat.glob("demo-ctx/*/*.json"))[0]
    yield Bench(root, cat, item, products, product, model, specials)
    sock.close()


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as the working folder: relative outputs land there."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def check_cli(args: list[str], watched: list[Path], env: dict[str, str] | None = None) -> int:
    """Run the CLI; assert the contract for any input; returns the exit status.

    It runs in a scratch working folder, so a generated relative path never writes into the
    checkout (generated values never name a path above it: see :func:`_confined`).
    """
    before = [tree(p) for p in watched]
    home = sorted(p.name for p in Path.cwd().iterdir())  # the checkout, where pytest runs
    scratch = Path(tempfile.mkdtemp(prefix="marscope-fuzz-cwd-"))
    with warnings.catch_warnings(), deadline(DEADLINE_S), _inside(scratch):
        warnings.simplefilter("default")
        result = CliRunner().invoke(cli, args, env=env)
    shutil.rmtree(scratch, ignore_errors=True)
    assert sorted(p.name for p in Path.cwd().iterdir()) == home, (args, "wrote outside")
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output, (args, result.output[-3000:])
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output[-3000:])
    if result.exit_code == 2:
        assert len(err) == 1 and err[0].startswith("marscope: error: "), (args, err)
    for p, b in zip(watched, before, strict=True):
        assert tree(p) == b, (args, f"changed {p}")
    return int(result.exit_code)


# ----------------------------------------------------------------------------- values

SPECIAL_NAMES = ["fifo", "sock", "loop", "folder", "file.txt", "missing"]

hostile_text = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1e309",
            "99999999999999999999",
            "abc",
            "{}",
            "{x}",
            "{} {0}",
            "a,b",
            "1,2,3",
            "1,2,3,4",
            "-200,-100,200,100",
            "180,-90,-180,90",
            "../x",
            "lonlat:1e-9",
            "lonlat:0",
            "equal-area:0m",
            "bogus://x",
            "tcp://",
            "\x00",
            "a\x00b",
            "\n",
            "é∂ƒ©",
            "🪐",
            "2012-01-01T00:00:00Z/2008-01-01T00:00:00Z",
            "x" * 5000,
        ]
    ),
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _confined(value: str) -> str:
    """A generated value that cannot name a path outside the scratch working folder.

    Absolute paths and home folders become relative, and ``..`` steps are broken, so a
    command writing its output where the value says writes into the scratch folder (the
    fuzzer runs as whoever runs the tests, maybe root: it must never write to /etc).
    """
    value = value.replace("..", "_.")
    return "./" + value.lstrip("/~") if value.startswith(("/", "~")) else value


def _special(bench: Bench, name: str) -> str:
    return str(bench.specials.get(name, bench.root / "special" / name))


def hostile_value(bench: Bench) -> st.SearchStrategy[str]:
    return st.one_of(
        hostile_text.map(_confined),
        st.sampled_from(SPECIAL_NAMES).map(lambda n: _special(bench, n)),
    )


json_values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["fifo", "loop", "missing.tif", "/etc/passwd", "http://127.0.0.1:9/x.tif"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value


def _hrefs(bench: Bench, value: Any) -> Any:
    """Special names in generated values become the bench's special files."""
    if isinstance(value, str) and value in ("fifo", "loop"):
        return _special(bench, value)
    return value


# ----------------------------------------------------------------------------- properties


@budget(60)
@given(data=st.data())
def test_fuzzed_stac_documents(bench: Bench, data: st.DataObject) -> None:
    """Items, collections and catalogs with a wrong value anywhere, or not JSON at all."""
    target = data.draw(
        st.sampled_from(
            [bench.item, bench.cat / "catalog.json", bench.cat / "demo-ctx" / "collection.json"]
        )
    )
    original = target.read_text()
    doc = json.loads(original)
    kind = data.draw(st.sampled_from(["value", "value", "value", "deep", "garbage", "special"]))
    if kind == "value":
        paths = _paths(doc)
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(paths))
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _set(doc, path, _hrefs(bench, data.draw(json_values)))
        text = json.dumps(doc, allow_nan=True)
    elif kind == "deep":
        depth = data.draw(st.integers(1_000, 200_000))
        text = "[" * depth + "]" * depth
    elif kind == "garbage":
        text = data.draw(st.sampled_from(["", "{", "null", "[1, 2]", "\ufeff{}", '{"type": 5}']))
    else:  # the document replaced by a special file
        target.unlink()
        target.symlink_to(bench.specials[data.draw(st.sampled_from(["fifo", "loop", "folder"]))])
        text = None
    try:
        if text is not None:
            target.write_text(text)
        command = data.draw(st.sampled_from(["validate", "tiles"]))
        args = [command, str(bench.cat)] + (["--grid", "lonlat:0.05"] if command == "tiles" else [])
        check_cli(args, [bench.model, bench.product])
    finally:
        if target.is_symlink():
            target.unlink()
        target.write_text(original)


@budget(60)
@given(data=st.data())
def test_fuzzed_options(bench: Bench, data: st.DataObject) -> None:
    """Every command with one option (or argument) given a hostile value."""
    out = Path(tempfile.mkdtemp(dir=bench.root, prefix="out-"))
    try:
        _fuzz_one_command(bench, data, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _commands(bench: Bench, out: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each command's valid, quick base arguments, and the options to fuzz."""
    cat, model = str(bench.cat), f"local-dir:{bench.model}"
    return {
        "tiles": (
            ["tiles", cat, "--grid", "lonlat:0.1", "--tile-px", "16"],
            [
                "--grid",
                "--tile-px",
                "--bbox",
                "--datetime",
                "--max-tiles",
                "--context",
                "--collection",
                "--asset",
                "--preview",
                "CATALOG",
            ],
        ),
        "query": (
            ["query", "yardangs", "--out", str(bench.products), "--model", model, "--products", ""],
            [
                "--point",
                "--cell",
                "--image",
                "--negative-point",
                "--negative-cell",
                "--image-weight",
                "--template",
                "--threshold",
                "--and-not",
                "--near",
                "--within-km",
                "--scoring",
                "--products",
                "--embeddings",
                "TEXT",
            ],
        ),
        "validate": (["validate", cat], ["--within", "PATH"]),
        "evaluate": (
            ["evaluate", str(bench.product), "--truth", cat],
            [
                "--truth",
                "--landform",
                "--split",
                "--radius-cells",
                "--threshold",
                "--rank-by",
                "PRODUCT",
            ],
        ),
        "embed": (
            ["embed", cat, "--out", str(out / "p"), "--model", model, "--grid", "lonlat:0.1"],
            [
                "--grid",
                "--tile-px",
                "--batch-size",
                "--workers",
                "--bbox",
                "--datetime",
                "--out",
                "--model",
                "--collection",
                "--asset",
            ],
        ),
        "train": (
            [
                "train",
                cat,
                "--out",
                str(out / "t"),
                "--model",
                "marscope-tiny",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
                "--batch-size",
                "4",
                "--crop-px",
                "16",
            ],
            [
                "--lr",
                "--seed",
                "--tile-context",
                "--crop-px",
                "--prompt-share",
                "--weights",
                "--device",
                "--out",
            ],  # not --epochs / --batch-size: a large valid value is long work, not a hang
            # (their bounds are tests of test_hostile_inputs.py)
        ),
        "basemap": (["basemap", cat, "--out", str(out / "b")], ["--name", "--out", "CATALOG"]),
        "average-models": (
            ["average-models", model, f"local-dir:{bench.root / 'twin'}", "--out", str(out / "a")],
            ["--out", "MODEL"],
        ),
        "release-model": (
            ["release-model", model, "--name", "fuzzed-model", "--out", str(out / "r")],
            ["--name", "--out", "MODEL"],
        ),
        "catalog build": (
            ["catalog", "build", str(out / "tifs")],
            ["--body", "--collection-id", "FOLDER"],
        ),
        "catalog publish": (
            ["catalog", "publish", str(out / "pub"), "--base-url", "https://example.org/p/"],
            ["--base-url", "FOLDER"],
        ),
        "demo-data": (
            ["demo-data", "--out", str(out / "d"), "--size", "small"],
            ["--seed", "--size", "--out"],
        ),
        "serve --static": (
            ["serve", str(bench.products), "--static", str(out / "site")],
            ["--static", "PRODUCTS"],
        ),
    }


def _fuzz_one_command(bench: Bench, data: st.DataObject, out: Path) -> None:
    commands = _commands(bench, out)
    name = data.draw(st.sampled_from(sorted(commands)))
    base, options = commands[name]
    option = data.draw(st.sampled_from(options))
    value = data.draw(hostile_value(bench))
    args = list(base)
    if option.isupper():  # the positional argument
        position = 2 if name.startswith("catalog") else 1
        args[position] = value
    elif option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    if name == "catalog build":
        (out / "tifs").mkdir()
        shutil.copy(next(bench.cat.glob("demo-ctx/*/*.tif")), out / "tifs" / "a.tif")
    if name == "catalog publish":
        shutil.copytree(bench.products, out / "pub")
    watched = bench.watched()
    if name == "evaluate":  # it records its figures in the product it evaluates
        watched.remove(bench.product)
    check_cli(args, watched)
    # nothing written outside the output: the bench's folders hold what they held
    assert not any(p.name.startswith(".") and p.name.endswith(".tmp") for p in bench.root.iterdir())


@budget(25)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    dtype=st.sampled_from(["uint8", "int16", "float32"]),
    fill=st.sampled_from(["random", "nodata", "nan", "zero"]),
    crs=st.sampled_from(["IAU_2015:49900", "IAU_2015:30100", "EPSG:4326", "IAU_2015:49910", None]),
    pixel=st.sampled_from([1e-9, 1e-4, 0.01, 1.0, 45.0]),
)
def test_fuzzed_geotiffs(
    bench: Bench, rows: int, cols: int, dtype: str, fill: str, crs: str | None, pixel: float
) -> None:
    """Tiny, empty, NaN, Earth, projected and CRS-less rasters: catalog build, then tiles."""
    import rasterio
    from affine import Affine

    folder = Path(tempfile.mkdtemp(dir=bench.root, prefix="tif-"))
    try:
        rng = np.random.default_rng(rows * 41 + cols)
        data = (rng.random((rows, cols)) * 200).astype(dtype)
        nodata = 0 if dtype != "float32" else -9999.0
        if fill == "nodata":
            data[:] = nodata
        elif fill == "nan" and dtype == "float32":
            data[:] = np.nan
        elif fill == "zero":
            data[:] = 0
        scale = pixel if crs is None or "4991" not in crs else pixel * 59000.0
        profile = {
            "driver": "GTiff",
            "height": rows,
            "width": cols,
            "count": 1,
            "dtype": dtype,
            "nodata": nodata,
            "transform": Affine(scale, 0, 10.0, 0, -scale, 5.0),
        }
        if crs is not None:
            profile["crs"] = crs
        with rasterio.open(folder / "r.tif", "w", **profile) as dst:
            dst.write(data, 1)
        code = check_cli(["catalog", "build", str(folder)], [bench.cat])
        if code == 0:
            check_cli(["tiles", str(folder / "stac"), "--grid", "lonlat:0.5"], [folder / "r.tif"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@budget(15)
@given(address=hostile_text.map(_confined))
def test_fuzzed_scheduler_environment(bench: Bench, address: str) -> None:
    """A garbage ``DASK_SCHEDULER_ADDRESS`` is one clean line (or ignored when empty)."""
    out = Path(tempfile.mkdtemp(dir=bench.root, prefix="env-"))
    try:
        env = {"DASK_SCHEDULER_ADDRESS": address.replace("\x00", "")}
        args = [
            "embed",
            str(bench.cat),
            "--out",
            str(out / "p"),
            "--model",
            f"local-dir:{bench.model}",
            "--grid",
            "lonlat:0.1",
        ]
        check_cli(args, bench.watched(), env=env)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_the_fuzz_documents_cover_every_kind() -> None:
    """The document mutator can reach every field of a real item."""
    doc = {"a": {"b": [1, {"c": 2}]}, "d": 3}
    assert ("a", "b", 1, "c") in _paths(doc)
    changed = copy.deepcopy(doc)
    _set(changed, ("a", "b", 1, "c"), "x")
    assert changed["a"]["b"][1]["c"] == "x" and doc["a"]["b"][1]["c"] == 2
