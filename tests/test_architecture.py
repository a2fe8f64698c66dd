"""The floors of docs/architecture.md hold: no upward import, no cycle.

Every ``import`` statement in ``nctune/`` is read with ``ast``: inside functions and under
``if TYPE_CHECKING:`` too (an annotation that names a higher floor is a dependency all the
same; a lower module takes such a value duck-typed, by a Protocol or ``Any``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nctune"
DOC = ROOT / "docs" / "architecture.md"


def floors() -> dict[str, int]:
    """``{"analyze": 7, "data": 4, …}`` from the fenced block after the floors marker."""
    text = DOC.read_text()
    block = re.search(r"<!-- floors:.*?-->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md lost its floors block"
    out: dict[str, int] = {}
    for line in block.group(1).strip().splitlines():
        level, *names = line.split()
        for name in names:
            assert name.rstrip("/") not in out, f"{name} is on two floors"
            out[name.rstrip("/")] = int(level)
    return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """nctune modules that ``name`` imports: at import time, in a function, or for annotations."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # `from nctune.x import y` may name y
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nctune"):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source.startswith("nctune"):
                for alias in node.names:
                    add(f"{source}.{alias.name}")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("nctune")
        ):
            add(str(node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: runtime_imports(name, path, known) for name, path in mods.items()}


def floor_of(module: str, table: dict[str, int]) -> int | None:
    parts = module.split(".")
    return table.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_floor():
    table = floors()
    missing = sorted(m for m in modules() if m != "nctune" and floor_of(m, table) is None)
    assert not missing, f"add these to the floors in docs/architecture.md: {missing}"


def test_no_import_goes_up_a_floor():
    table = floors()
    bad = []
    for module, targets in graph().items():
        if module == "nctune":  # the lazy public façade (PEP 562) re-exports every floor
            continue
        here = floor_of(module, table)
        for target in targets:
            there = table[target.split(".")[1]] if target != "nctune" else max(table.values())
            if there > here:
                bad.append(f"{module} (floor {here}) imports {target} (floor {there})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_imports_the_cli():
    offenders = [
        m
        for m, targets in graph().items()
        if not m.startswith("nctune.cli") and m != "nctune.__main__"
        if any(t.startswith("nctune.cli") for t in targets)
    ]
    assert not offenders


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_readable(module):
    """No module over ~600 lines: a concept per module (issue: one house without circles)."""
    lines = modules()[module].read_text().count("\n")
    assert lines <= 650, f"{module} has {lines} lines; split it by concept"


def test_the_checker_sees_function_level_and_annotation_imports(tmp_path):
    """The walker must count an import inside a function and one under TYPE_CHECKING."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from nctune.config import Recipe\n"
        "def f():\n    from nctune.analyze import analyze\n    return analyze\n"
    )
    found = runtime_imports("nctune.m", src, {"nctune.analyze", "nctune.config"})
    assert found == {"nctune.analyze", "nctune.config"}
