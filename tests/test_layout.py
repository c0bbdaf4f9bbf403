"""The package's tree is its architecture (issue 17): the request path, policy, live state,
identity, audit, admin, places, the demo each have a package; the top level holds only what
ties them together. Developer tools live outside, in devtools/, and the product never
imports them (they are not installed)."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent
TOP_LEVEL = {"__init__", "__main__", "cli", "config", "server", "metrics", "logs"}


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_top_level_holds_only_what_ties_the_packages_together() -> None:
    loose = {path.stem for path in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert not loose, f"put these in the package of their responsibility (docs/architecture.md): {sorted(loose)}"


def test_every_package_says_what_is_in_it() -> None:
    silent = [init.parent.name for init in PACKAGE.glob("*/__init__.py") if ast.get_docstring(ast.parse(init.read_text())) is None]
    assert not silent, f"packages without a docstring listing their modules: {silent}"


def test_the_architecture_doc_says_where_every_package_lives() -> None:
    documented = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
    assert [name for name in packages if f"| `gateway/{name}/` |" not in documented] == []


def test_the_product_never_imports_the_developer_tools() -> None:
    offenders = {str(path.relative_to(PACKAGE.parent)): sorted(name for name in imported_names(path)
                                                                if name.split(".")[0] == "devtools")
                 for path in PACKAGE.rglob("*.py")}
    assert not {path: names for path, names in offenders.items() if names}


def test_the_import_walk_sees_devtools_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def later():\n    from devtools.fleet_local import LocalFleet\nimport devtools\n")
    assert imported_names(module) == {"devtools.fleet_local", "devtools"}
