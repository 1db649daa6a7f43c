"""The shape of the library: imports flow one way (no cycles, also none hidden behind TYPE_CHECKING or a
local import), every module imports on its own, and functions stay short enough to read on one screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lifelong"
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every lifelong module ``path`` imports, anywhere in the file (top level, functions, TYPE_CHECKING)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative import
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{source}" if source else base
            found.add(source)
            found |= {f"{source}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known} - {module_name(path)}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def test_no_import_cycles():
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
    assert set(order) == set(modules())


def test_every_module_imports_in_a_fresh_interpreter_in_dependency_order():
    order = [name for name in TopologicalSorter(graph()).static_order() if name != "lifelong.bench.__main__"]
    order = [name for name in order if not name.endswith("__main__")]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", script, *order], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function longer than ``limit`` lines, outside lifelong/world."""
    found = []
    for path in [*sorted(PACKAGE.rglob("*.py")), ROOT / "app.py"]:
        if "world" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - start + 1
                if length > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_a_screen():
    assert long_functions() == []


if __name__ == "__main__":  # python tests/test_layout.py: the long functions and the import order
    print("\n".join(long_functions()) or f"no function over {MAX_FUNCTION_LINES} lines")
    print(" ".join(TopologicalSorter(graph()).static_order()))
