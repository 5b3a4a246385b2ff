"""Layering, checked statically (ast, nothing imported): dependencies point one way
(project -> tenancy <- monitoring <- migration_jobs <- fleet <- api; the demo app on tenancy only) and no module
imports itself back through others. Run as a script to print the import graph's cycles."""
import ast
import sys
from pathlib import Path

from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("project", "tenancy", "monitoring", "migration_jobs", "fleet", "api", "shop", "benchmarks")
# Which product packages each may import (itself always).
ALLOWED = {
    "project": set(),
    "tenancy": set(),
    # Per-tenant request health: recorded beside the router, read by the runs.
    "monitoring": {"tenancy"},
    "migration_jobs": {"tenancy", "monitoring"},
    # Plans of many moves: each item is an ordinary run.
    "fleet": {"tenancy", "monitoring", "migration_jobs"},
    "api": {"tenancy", "monitoring", "migration_jobs", "fleet"},
    "shop": {"tenancy"},
    # Outside the product: benchmarks, demo data and the demo move use it; nothing uses them.
    "benchmarks": {"tenancy", "monitoring", "migration_jobs", "fleet", "shop"},
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(product module imported, line) for every import statement, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` imports module a.b when there is one, else a name of a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.append((target, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _ in imports(name, path, known)} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_dependencies_point_one_way():
    known = modules()
    wrong = []
    for name, path in known.items():
        top = name.split(".")[0]
        for target, line in imports(name, path, known):
            other = target.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    assert cycles(graph()) == []


# Imports inside a function body, allowed only where the module top cannot hold them:
# (module, function) -> the reason. Everything else imports at the top of its module.
FUNCTION_IMPORTS_ALLOWED = {
    ("tenancy.apps", "ready"): "AppConfig.ready: signals and the default server need the models loaded",
    ("fleet.apps", "ready"): "AppConfig.ready: the run_finished receiver and the schedule need the models loaded",
    ("benchmarks.writer", "writer_process"): "the entry of a spawned process: Django is set up there first",
    ("benchmarks.writer", "_write"): "runs in the spawned writer process, which imports this module "
                                     "before django.setup() (models and the tenant context need the apps)",
    ("benchmarks.writer", "run"): "the same spawned writer process (see _write)",
}


def function_imports() -> list[tuple[str, str, int]]:
    """(module, function, line) of every import statement inside a function body."""
    found = []
    for name, path in modules().items():
        if ".migrations." in f".{name}.":
            continue
        for func in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.extend((name, func.name, node.lineno) for node in ast.walk(func)
                             if isinstance(node, (ast.Import, ast.ImportFrom)))
    return found


def test_imports_sit_at_the_top_of_their_module():
    """A function-level import hides a dependency (and often a cycle): only the listed ones."""
    found = function_imports()
    wrong = [f"{name}:{line} in {func}()" for name, func, line in found if (name, func) not in FUNCTION_IMPORTS_ALLOWED]
    assert not wrong, "move these imports to the top of their module (or list them, with the reason):\n" + \
        "\n".join(wrong)
    stale = set(FUNCTION_IMPORTS_ALLOWED) - {(name, func) for name, func, _ in found}
    assert not stale, f"allowed but no longer there: {sorted(stale)}"


def test_migrate_is_the_command_of_migration_jobs():
    """Django runs the command of the first listed app that has one: not django-tenants'."""
    assert get_commands()["migrate"] == "migration_jobs"


if __name__ == "__main__":
    found = cycles(graph())
    for component in found:
        print(" <-> ".join(component))
    print(f"{len(modules())} modules, {len(found)} cycles")
    sys.exit(1 if found else 0)
