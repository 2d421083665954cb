"""The package's import graph: circles and imports that run against the layers.

    python benchmarks/import_graph.py          # list circles and layer violations; exit 1 if any

Every ``import`` / ``from ... import`` of the package's own modules counts, at module level or
inside a function (a lazy import still ties two modules together), except those under
``if TYPE_CHECKING:`` (never executed). Layers run one way: the core
(``editwrap`` but its consumers) imports neither ``editwrap.evals`` nor ``editwrap.integrations``
nor a consumer; the consumers are the command line (``editwrap.cli`` and every ``*.cli`` plugin
module), ``editwrap.server`` and ``editwrap.analysis``. tests/test_layers.py runs these checks.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: package name -> folder (the evals/ and integrations/ folders are mapped into the package)
PACKAGES = {"editwrap": ROOT / "editwrap", "editwrap.evals": ROOT / "evals",
            "editwrap.integrations": ROOT / "integrations"}


def modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` as the package)."""
    out: dict[str, Path] = {}
    for pkg, folder in packages.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if not all(p.isidentifier() for p in parts) or not (f.parent / "__init__.py").is_file():
                continue  # scripts in data folders, not importable modules
            out[".".join([pkg, *parts])] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # ``from pkg import submodule`` imports the submodule
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in found if m in known and m != name}


def import_graph(packages: dict[str, Path] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    mods = modules(packages)
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def is_consumer(module: str) -> bool:
    """The command line (``editwrap.cli`` and ``*.cli`` plugins), the server and the analysis tools."""
    return (module.rsplit(".", 1)[-1] == "cli" or module.startswith(("editwrap.server", "editwrap.analysis")))


def layer(module: str) -> str:
    if is_consumer(module):
        return "consumer"
    if module.startswith(("editwrap.evals", "editwrap.integrations")):
        return "evals/integrations"
    return "core"


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a lower layer imports a higher one (core < evals/integrations
    < consumers)."""
    rank = {"core": 0, "evals/integrations": 1, "consumer": 2}
    return sorted((a, b) for a, deps in graph.items() for b in deps if rank[layer(b)] > rank[layer(a)])


def main() -> int:
    graph = import_graph()
    found = circles(graph)
    bad = layer_violations(graph)
    for group in found:
        print("circle: " + " <-> ".join(group))
    for a, b in bad:
        print(f"layer: {a} ({layer(a)}) imports {b} ({layer(b)})")
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports: "
          f"{len(found)} circle(s), {len(bad)} layer violation(s)")
    return int(bool(found or bad))


if __name__ == "__main__":
    sys.exit(main())
