"""The package's layers: each module imports only modules of its own layer or below."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import marscope_stac

PACKAGE = Path(marscope_stac.__file__).parent

LAYERS: list[set[str]] = [
    {"core"},
    {"grid", "models"},
    {"stac"},
    {"tiles"},
    {"index"},
    {"embed"},
    {"query"},
    {"products"},
    {"engine"},
    {"eval", "train"},
    {"datasets"},
    {"recipes"},
    {"web", "cli"},
]
"""Sub-packages bottom to top, as the data flows: the core (errors, bodies, files), grids and
the vision-language models, STAC, tiles, the embedding index, the embedding run, scoring,
products, the query engine, evaluation and training, the data sets, the model recipes (which
build data and train), then the faces."""

TORCH_FREE = [
    "core",
    "grid",
    "stac",
    "tiles",
    "index",
    "query",
    "products",
    "engine",
    "eval.evaluate",
]
"""Packages that must import without torch (nothing below the query engine needs a model)."""


def _layer(module: str) -> int:
    top = module.split(".")[0] or "core"  # the facade's own names: __version__
    for k, layer in enumerate(LAYERS):
        if top in layer:
            return k
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS")


def _module_name(path: Path) -> tuple[str, bool]:
    """Dotted name below the package, and whether the file is a package's ``__init__``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk_runtime(tree: ast.AST) -> list[ast.AST]:
    """Nodes of a module, leaving out ``if TYPE_CHECKING:`` blocks (annotations only)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        todo.extend(c for c in ast.iter_child_nodes(node) if not _is_type_checking(c))
    return out


def _imports() -> dict[str, set[str]]:
    """Project modules each module imports at run time (functions included)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = _module_name(path)
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _walk_runtime(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:  # relative import inside a sub-package
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
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
        if mod  # the package's own __init__ is the facade, checked below
        for target in targets
        if _layer(target) > _layer(mod)
    ]
    assert not problems, "\n".join(problems)


def test_the_facade_imports_only_the_core_when_imported() -> None:
    """``import marscope_stac.grid`` must not pay for torch: the facade loads names lazily."""
    assert {t.split(".")[0] for t in _imports()[""]} <= {"core"}


def test_every_sub_package_is_in_a_layer() -> None:
    subs = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subs == set().union(*LAYERS), subs ^ set().union(*LAYERS)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]


def test_nothing_imports_the_cli_and_only_the_faces_import_the_demo() -> None:
    for mod, targets in _imports().items():
        assert not any(t.split(".")[0] == "cli" for t in targets) or mod.startswith("cli"), mod
        if not mod.startswith("datasets"):
            demo = {t for t in targets if t.startswith("datasets.demo")}
            # the faces, and recipes, which build the demo world a model is trained on
            assert not demo or mod.startswith(("cli", "recipes")), f"{mod} imports {demo}"


def test_models_know_nothing_geographic() -> None:
    imports = _imports()
    allowed = {"core", "models"}
    for mod, targets in imports.items():
        if mod.split(".")[0] == "models":
            tops = {t.split(".")[0] for t in targets}
            assert tops <= allowed, f"{mod} imports {tops - allowed}"


def test_nothing_below_the_query_engine_imports_torch() -> None:
    modules = sorted(
        name
        for name, _ in map(_module_name, PACKAGE.rglob("*.py"))
        if any(name == t or name.startswith(t + ".") for t in TORCH_FREE)
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('marscope_stac.' + name)\n"
        "    assert 'torch' not in sys.modules, name\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_no_function_is_longer_than_60_lines() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({n})")
    assert not long, long


def test_no_module_is_longer_than_600_lines() -> None:
    lines = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    long = {name: n for name, n in lines.items() if n > 600}
    assert not long, long
