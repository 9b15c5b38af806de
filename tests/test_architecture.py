"""The package's layers: each module imports only modules of its own layer or below."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import marscope_stac

PACKAGE = Path(marscope_stac.__file__).parent

LAYERS: list[set[str]] = [
    {"errors", "fsutil", "bodies", "prompts", "vocabulary", "text", "webassets", ""},
    {"grid", "geoparquet", "stac_out", "validation"},
    {"stac_in", "cog", "mlm", "catalog", "publish", "folder_catalog", "realdata"},
    {"tiles", "store", "render"},
    {"models", "parts", "pairs"},
    {"embed", "train", "query"},
    {"products", "basemap"},
    {"engine", "evaluate", "landform_eval"},
    {"pipeline", "demo", "cli", "server"},
]
"""Bottom to top, as the data flows: bodies and grid, STAC, tiles and store, models,
embedding and scoring, products, the query engine and evaluation, then the faces."""

TORCH_FREE = sorted(set().union(*LAYERS[:4]) - {""} | {"query", "products", "engine", "evaluate"})
"""Modules that must import without torch (nothing below the query engine needs a model)."""


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for k, layer in enumerate(LAYERS):
        if top in layer:
            return k
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS")


def _imports() -> dict[str, set[str]]:
    """Project modules each module imports (anywhere in it, functions included)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        name = name.removesuffix(".__init__").removesuffix("__init__")
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:  # relative import inside a sub-package
                    base = name.rsplit(".", node.level)[0] if "." in name else ""
                    targets.add(f"{base}.{node.module}".strip("."))
                elif node.module.startswith("marscope_stac"):
                    targets.add(node.module.removeprefix("marscope_stac").strip("."))
            elif isinstance(node, ast.Import):
                targets |= {
                    a.name.removeprefix("marscope_stac").strip(".")
                    for a in node.names
                    if a.name.startswith("marscope_stac")
                }
        found[name] = targets
    return found


def test_every_module_imports_only_its_layer_and_below() -> None:
    problems = [
        f"{mod} (layer {_layer(mod)}) imports {target} (layer {_layer(target)})"
        for mod, targets in _imports().items()
        for target in targets
        if _layer(target) > _layer(mod)
    ]
    assert not problems, "\n".join(problems)


def test_nothing_imports_the_cli_and_only_the_faces_import_the_demo() -> None:
    for mod, targets in _imports().items():
        assert "cli" not in targets, mod
        if not mod.startswith("demo"):
            demo = {t for t in targets if t.split(".")[0] == "demo"}
            assert not demo or mod in ("cli", "pipeline"), f"{mod} imports {demo}"


def test_models_know_nothing_geographic() -> None:
    imports = _imports()
    allowed = {"errors", "parts", "prompts", "fsutil", ""}
    for mod in ("models", "parts"):
        assert imports[mod] <= allowed, f"{mod} imports {imports[mod] - allowed}"


def test_nothing_below_the_query_engine_imports_torch() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {TORCH_FREE!r}:\n"
        "    importlib.import_module('marscope_stac.' + name)\n"
        "    assert 'torch' not in sys.modules, name\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n})")
    assert not long, long
