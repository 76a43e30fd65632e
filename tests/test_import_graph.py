"""One direction of dependency: no import cycle inside either package, and ``database_tools``
(the lower layer) never imports ``tag_backend``. Every import counts: module level, inside
functions and under ``TYPE_CHECKING`` (grimp reads them all from the source)."""
from __future__ import annotations

import grimp
import pytest

PACKAGES = ("database_tools", "tag_backend")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Each cycle among the modules of ``package`` once, as ``[a, b, ..., a]``."""
    cycles, seen = [], set()
    for importer in sorted(graph.find_descendants(package) | {package}):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if not _inside(imported, package):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is None:
                continue
            cycle = [importer, *back]
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                cycles.append(cycle)
    return cycles


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(graph, package):
    cycles = import_cycles(graph, package)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_database_tools_never_imports_tag_backend(graph):
    upward = sorted(
        (importer, imported)
        for importer in graph.find_descendants("database_tools") | {"database_tools"}
        for imported in graph.find_modules_directly_imported_by(importer)
        if _inside(imported, "tag_backend")
    )
    assert upward == [], "database_tools imports tag_backend: " + ", ".join(
        f"{a} -> {b}" for a, b in upward)


def test_the_cycle_finder_finds_cycles():
    """The check above cannot pass vacuously: a made-up graph with a cycle is reported."""
    made_up = grimp.ImportGraph()
    for importer, imported in [("pkg.a", "pkg.b"), ("pkg.b", "pkg.c"), ("pkg.c", "pkg.a"),
                               ("pkg.c", "pkg.d")]:
        made_up.add_import(importer=importer, imported=imported)
    made_up.add_module("pkg")
    assert import_cycles(made_up, "pkg") == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
