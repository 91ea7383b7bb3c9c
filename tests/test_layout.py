"""The shape of the code: no module of organizer imports itself back through others.

A cycle counts imports made anywhere in a module, inside functions too: a function's import
runs when it is called, and a cycle through it is the same tangle of decisions that a
top-level one is (it only fails later). Imports a type checker alone reads (under
``if TYPE_CHECKING:``) never run and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "organizer"


def _modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[tuple[str, str]]:
    """What a module's import statements name, at any depth: (module, name) for ``from
    module import name``, (module, "") for ``import module``."""
    names: set[tuple[str, str]] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update((alias.name, "") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([node.module] if node.module else [])])
            names.update((base, alias.name) for alias in node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` and the modules of it that it imports. ``from a import b``
    reaches the module ``a.b`` when there is one, else ``a``: a package's ``__init__`` does
    not count when only a submodule is imported through it (re-exporting its submodules is
    what an ``__init__`` is for)."""
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        reached = set()
        for base, member in _imported_names(tree, name, path.name == "__init__.py"):
            if f"{base}.{member}" in modules:
                reached.add(f"{base}.{member}")
            elif base in modules:
                reached.add(base)
        reached.discard(name)
        graph[name] = reached
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first again at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once fully explored
    for start in sorted(graph):
        if start in state:
            continue
        path, edges = [start], [iter(sorted(graph[start]))]
        state[start] = "open"
        while path:
            following = next(edges[-1], None)
            if following is None:
                state[path.pop()] = "done"
                edges.pop()
            elif state.get(following) == "open":
                return [*path[path.index(following) :], following]
            elif following not in state:
                state[following] = "open"
                path.append(following)
                edges.append(iter(sorted(graph.get(following, ()))))
    return None


def test_no_module_imports_itself_back():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "an import cycle: " + " -> ".join(
        str(_modules(PACKAGE)[name].relative_to(PACKAGE.parent)) for name in cycle
    )


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"a.py": "import p.b\n", "b.py": "def f():\n    from p import a\n"}, ["p.a", "p.b"]),
        (
            {"a.py": "from .b import x\n", "b.py": "from . import c\n", "c.py": "import p.a\n"},
            ["p.a", "p.b", "p.c"],
        ),
        (
            {
                "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import p.b\n",
                "b.py": "import p.a\n",
            },
            None,
        ),
        ({"a.py": "import p.b\n", "b.py": "import os\n"}, None),
    ],
)
def test_the_cycle_finder_finds_cycles_through_functions_and_relative_imports(
    tmp_path, files, cycle
):
    package = tmp_path / "p"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in files.items():
        (package / name).write_text(text)
    found = find_cycle(import_graph(package))
    if cycle is None:
        assert found is None
    else:
        assert found is not None and sorted(set(found)) == cycle
