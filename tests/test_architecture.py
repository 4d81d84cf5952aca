"""The shape of the code: packages import only downwards, and no function or module outgrows a reader.

A new module lands in a layer; a new function over 60 lines or module over 350 lines fails here
unless it is added to the allow-list with a reason (the list starts empty).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "vlm_eval"
# Bottom to top: a package (or top-level module) imports only from lower layers, never sideways or up.
LAYERS = [
    {"errors", "contracts", "stopping", "program", "timing"},
    {"registry", "cards", "config"},
    {"data", "metrics"},
    {"results"},
    {"attacks", "encoders"},
    {"vlms", "semantic", "tasks", "defenses"},
    {"run", "listing", "miniworld"},
    {"report", "tables", "finetune", "terminal", "compare"},
    {"plots", "cli", "rescore", "api"},
    {"__main__", "__init__"},  # the package's __init__ only names the library API (vlm_eval.api), lazily
]
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 350
ALLOWED_LONG: dict[str, str] = {}  # "path:function" or "path" -> why it may stay long


def unit_of(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def layer_of(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, toolkit package) of every import outside `if TYPE_CHECKING:` (typing-only imports may point up)."""
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlm_eval"):
            names = [node.module] if node.module != "vlm_eval" else [f"vlm_eval.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("vlm_eval")]
        else:
            continue
        found += [(node.lineno, name.split(".")[1]) for name in names if "." in name]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_package_has_a_layer():
    assert {unit_of(p) for p in modules()} <= set().union(*LAYERS)


def test_packages_import_only_downwards():
    upward = []
    for path in modules():
        unit = unit_of(path)
        for line, target in runtime_imports(ast.parse(path.read_text())):
            if target != unit and layer_of(target) >= layer_of(unit):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports vlm_eval.{target}")
    assert not upward, "\n".join(upward)


def test_no_function_or_module_outgrows_a_reader():
    long = []
    for path in modules():
        name = str(path.relative_to(PACKAGE.parent))
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES and name not in ALLOWED_LONG:
            long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in ALLOWED_LONG:
                    long.append(f"{name}:{node.name}: {size} lines")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("source,expected", [
    ("from vlm_eval.vlms.base import Batch\n", [(1, "vlms")]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vlm_eval.run import plan\n", []),
    ("def f():\n    import vlm_eval.attacks.apgd\n", [(2, "attacks")]),
])
def test_imports_are_found_inside_functions_but_not_in_typing_blocks(source, expected):
    assert runtime_imports(ast.parse(source)) == expected
