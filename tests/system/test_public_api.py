"""The public API: what ``marscope_stac.__all__`` promises, and the README's example."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import marscope_stac

ROOT = Path(__file__).resolve().parents[2]
MAX_POSITIONAL = 2
"""Parameters a public entry point takes by position (besides self/cls); options come after
``*``, by keyword."""


def _entry_points() -> list[tuple[str, object]]:
    """Every public callable: the functions in ``__all__``, and the constructors and public
    methods of its classes."""
    found: list[tuple[str, object]] = []
    for name in marscope_stac.__all__:
        obj = getattr(marscope_stac, name)
        if inspect.isfunction(obj):
            found.append((name, obj))
        elif inspect.isclass(obj) and not issubclass(obj, BaseException | Warning):
            found.append((f"{name}()", obj))
            for attr, member in vars(obj).items():
                func = member.__func__ if isinstance(member, classmethod) else member
                if not attr.startswith("_") and inspect.isfunction(func):
                    found.append((f"{name}.{attr}", func))
    return found


def _positional(obj: object) -> list[str]:
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in sig.parameters.values() if p.kind in kinds]
    var = [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_POSITIONAL]
    return [n for n in names if n not in ("self", "cls")] + [f"*{v}" for v in var]


def test_every_public_name_loads_and_has_a_docstring() -> None:
    assert len(marscope_stac.__all__) <= 25
    for name in marscope_stac.__all__:
        obj = getattr(marscope_stac, name)
        assert name in dir(marscope_stac)
        if name != "__version__":
            assert inspect.getdoc(obj), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = marscope_stac.nope  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "obj"), _entry_points(), ids=lambda v: str(v))
def test_public_entry_points_take_options_by_keyword(name: str, obj: object) -> None:
    positional = _positional(obj)
    assert len(positional) <= MAX_POSITIONAL, f"{name} takes {positional} by position"


def test_the_rule_catches_an_entry_point_with_positional_options() -> None:
    def bad(source: str, out: str = "x", model: str = "y") -> None:
        """A function with three positional parameters."""

    def good(source: str, out: str = "x", *, model: str = "y") -> None:
        """The same with its option by keyword."""

    assert len(_positional(bad)) > MAX_POSITIONAL
    assert len(_positional(good)) <= MAX_POSITIONAL


def test_importing_the_package_loads_no_model_code() -> None:
    code = (
        "import sys, marscope_stac as m\n"
        "m.parse_grid('lonlat:1'); m.QuerySpec; m.validate_catalog\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr[-2000:]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return str(blocks[0])


def test_the_readme_example_imports_only_the_public_api() -> None:
    example = _readme_example()
    imports = re.findall(r"^\s*(?:from|import) (\S+)", example, re.M)
    assert imports and set(imports) <= {"marscope_stac"}, imports
    used = set(re.findall(r"\bms\.(\w+)", example))
    assert used and used <= set(marscope_stac.__all__), used - set(marscope_stac.__all__)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _readme_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "products" / "catalog.json").is_file()
    assert "query impact-craters-" in run.stdout and " valid against " in run.stdout


COMMAND_FUNCTIONS = [
    "marscope_stac.datasets.demo:run_demo",
    "marscope_stac.datasets.demo:build_demo_catalog",
    "marscope_stac.datasets.real:build_real_data",
    "marscope_stac.stac.validation:validate_catalog",
    "marscope_stac.stac.folder:build_folder_catalog",
    "marscope_stac.stac.catalog:set_self_links",
    "marscope_stac.tiles.preview:preview_tiles",
    "marscope_stac.train.loop:train_from_source",
    "marscope_stac.train.averaging:average_models",
    "marscope_stac.train.release:release_model",
    "marscope_stac.eval.calibration:calibrate_model",
    "marscope_stac.recipes.model:build_model",
    "marscope_stac.embed.run:embed_catalog",
    "marscope_stac.engine.engine:run_query",
    "marscope_stac.engine.upgrade:upgrade_embedding_set",
    "marscope_stac.eval.evaluate:evaluate_product",
    "marscope_stac.products.basemap:build_basemap",
    "marscope_stac.web.server:serve",
]
"""The library function each ``marscope`` command calls (the CLI reference lists them)."""


@pytest.mark.parametrize("target", COMMAND_FUNCTIONS)
def test_the_functions_behind_commands_take_options_by_keyword(target: str) -> None:
    import importlib

    module, name = target.split(":")
    func = getattr(importlib.import_module(module), name)
    assert len(_positional(func)) <= MAX_POSITIONAL, f"{target} takes {_positional(func)}"
    assert target.split(":")[0] + "." + name in (ROOT / "docs" / "cli.md").read_text(), target
