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
            assert name.rstrip("/").replace("/", ".") not in out, f"{name} is on two floors"
            out[name.rstrip("/").replace("/", ".")] = int(level)
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
    """The floor of the longest table entry that is ``module`` or a package above it
    (``training.strategies`` before ``training``)."""
    parts = module.split(".")[1:]
    while parts:
        if ".".join(parts) in table:
            return table[".".join(parts)]
        parts.pop()
    return None


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
            there = floor_of(target, table) if target != "nctune" else max(table.values())
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


MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_readable(module):
    """No module over 500 lines: a concept per module (issue 18, the house's second step)."""
    lines = modules()[module].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines; split it by concept"


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """``(name, first line, code lines)`` of every function in ``path``: from its ``def`` to
    its last line, less its docstring (the maths and the arguments are welcome)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        length = node.end_lineno - node.lineno + 1
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
            length -= first.end_lineno - first.lineno + 1
        out.append((node.name, node.lineno, length))
    return out


@pytest.mark.parametrize("module", sorted(modules()))
def test_functions_stay_readable(module):
    """A function reads top to bottom on two screens: ≤ 120 lines of code (docstring aside)."""
    path = modules()[module]
    long = [
        f"{name} (line {at}): {n} lines"
        for name, at, n in function_lengths(path)
        if n > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: split {long}"


def strategy_name_comparisons(path: Path, names: set[str]) -> list[int]:
    """Lines where a string literal equal to a registered strategy name is compared with
    something about a strategy (``==``, ``!=``, ``in``, ``not in``, a ``match`` case) —
    behaviour that belongs in the strategy registry's flags."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            consts = []
            for operand in operands:
                if isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                    consts += operand.elts
                else:
                    consts.append(operand)
            named = any(isinstance(c, ast.Constant) and c.value in names for c in consts)
            # "auto" and "full" are also a device, a mode, a phase: only a comparison whose
            # other side is about a strategy counts
            about = any(
                "strateg" in ast.unparse(o) for o in operands if not isinstance(o, ast.Constant)
            )
            if named and about:
                lines.append(node.lineno)
        elif isinstance(node, ast.Match) and "strateg" in ast.unparse(node.subject):
            for case in node.cases:
                for sub in ast.walk(case.pattern):
                    if (
                        isinstance(sub, ast.MatchValue)
                        and getattr(sub.value, "value", None) in names
                    ):
                        lines.append(sub.lineno)
    return lines


def test_strategy_names_are_compared_only_in_the_registry():
    from nctune.training.strategies import STRATEGY_REGISTRY

    names = set(STRATEGY_REGISTRY.names())
    home = PACKAGE / "training" / "strategies.py"
    bad = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != home
        for line in strategy_name_comparisons(path, names)
    ]
    assert not bad, f"branch on the strategy registry's flags, not on its names: {bad}"


def test_the_cli_moves_no_files():
    """Run folders are the run layer's business: cli/ only renders and sets exit codes."""
    pattern = re.compile(r"\bshutil\b|os\.replace|\.rename\(|os\.rename")
    bad = [
        f"{path.relative_to(ROOT)}:{i}"
        for path in sorted((PACKAGE / "cli").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not bad, f"move or delete files through nctune.runs, not in the CLI: {bad}"


def test_the_checkers_can_fail(tmp_path):
    """Each new checker finds what it is written to find."""
    src = tmp_path / "m.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(125))
    src.write_text(
        f'def long():\n    """doc"""\n{body}\n'
        "def short(strategy, mode):\n    return strategy.name == 'scl' or strategy in ('linear', 'x') or mode == 'scl'\n"
    )
    assert [n for n, _, k in function_lengths(src) if k > MAX_FUNCTION_LINES] == ["long"]
    assert strategy_name_comparisons(src, {"scl", "linear"}) == [len(body.splitlines()) + 4] * 2


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
