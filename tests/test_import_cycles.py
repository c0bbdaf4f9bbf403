"""No module of the gateway package imports, directly or through others, a module that
imports it back (issue 17). Every import counts: at the top of a module, inside a
function (a lazy import only hides a cycle until the function runs), and under
TYPE_CHECKING (a cycle in the types is one in the design). Imports flow one way, so
a module can be read, tested and moved knowing only what it imports."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent


def module_names(package: Path) -> dict[str, Path]:
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its text."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(_module(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            # `from gateway import demo` imports the module gateway.demo; `from gateway.x import f`, gateway.x.
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _module(base, modules)
                         for alias in node.names)
    found.discard(name)
    found.discard("")
    return found


def _module(name: str, modules: Mapping[str, Path]) -> str:
    """The package module that `name` is or lies in; "" for anything outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def cycles(graph: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """One path per import cycle: a, b, ..., a (a depth-first walk, each cycle's entry reported once)."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        if start in done:
            continue
        path.append(start)
        on_path.add(start)
        while stack:
            node, following = stack[-1]
            step = next(following, None)
            if step is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif step in on_path:
                yield path[path.index(step):] + [step]
            elif step not in done and step in graph:
                stack.append((step, iter(sorted(graph[step]))))
                path.append(step)
                on_path.add(step)


def test_the_walk_finds_direct_indirect_and_lazy_cycles(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def later():\n    from pkg.a import thing\n",  # lazy: still a cycle
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.d import D\n",
        "sub/__init__.py": "",
        "sub/d.py": "import pkg.e\n",
        "e.py": "from pkg import c\n",
        "f.py": "import pkg.a, json\n",  # imports into a cycle, not part of one
    }
    for name, text in files.items():
        (package / name).write_text(text)
    modules = module_names(package)
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert graph["pkg.f"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.sub.d"}
    assert sorted(cycles(graph)) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.c", "pkg.sub.d", "pkg.e", "pkg.c"]]


def test_the_gateway_package_has_no_import_cycle() -> None:
    modules = module_names(PACKAGE)
    graph = {name: imported(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 50 and graph["gateway.request.app"], "the walk found the package's modules and their imports"
    found = [" -> ".join(cycle) for cycle in cycles(graph)]
    assert not found, "import cycles:\n" + "\n".join(found)
