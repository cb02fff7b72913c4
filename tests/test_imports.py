"""The package's shape (docs/design.md, "The layers"): no import cycle, and only cli/ parses and prints.

Imports are read from the source with `ast`, function-level ones included: a cycle that only a
lazy import keeps from failing at load time is still two modules that need each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lunakit

PACKAGE_ROOT = Path(lunakit.__file__).resolve().parent


def module_files() -> dict[str, Path]:
    """Dotted name -> file, for every module of the lunakit package."""
    out = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The lunakit modules that module `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return path[path.index(step) :] + [step]
            elif not state.get(step):
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph[step])))
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from . import y\nfrom .y import z\nimport lunakit.q\nfrom lunakit.p import thing\n")
    modules = {"lunakit.pkg.y", "lunakit.q", "lunakit.p", "lunakit.pkg.x"}
    assert imports_of("lunakit.pkg.x", source, modules) == {"lunakit.pkg.y", "lunakit.q", "lunakit.p"}


def test_no_import_cycle_inside_lunakit():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_cli_and_parses_arguments():
    files = module_files()
    graph = import_graph()
    for name, imported in graph.items():
        if name == "lunakit.cli" or name.startswith("lunakit.cli."):
            continue
        assert not any(m == "lunakit.cli" or m.startswith("lunakit.cli.") for m in imported), name
        assert "argparse" not in {
            alias.name
            for node in ast.walk(ast.parse(files[name].read_text()))
            if isinstance(node, ast.Import)
            for alias in node.names
        }, name


def test_only_the_cli_prints():
    """Library code reports through callbacks (docs/design.md); a print() outside cli/ is a bend."""
    printing = []
    for name, path in module_files().items():
        if name == "lunakit.cli" or name.startswith("lunakit.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
    assert printing == []
