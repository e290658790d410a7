"""The import graph of ``python/pyxia``: no circles, and no import from a lower floor back up
(docs/architecture.md, "Layers").

The graph is grimp's (import-linter's engine), built from the source of the tree under test.
Every import counts: module level, inside functions (a lazy import is still a dependency:
it runs, later) and under ``TYPE_CHECKING`` (a type a module names is part of what it
depends on; a circle through annotations is still a circle for a reader). Two facts of the
package are not edges:

- ``pyxia._native`` is the compiled WAL (Rust): grimp sees no source for it, so
  ``from pyxia import _native`` reads as an import of the package root; it is a leaf below
  every floor, so those imports are dropped;
- a module's parent packages run when it is imported, but they are not imports the module
  makes (grimp does not count them either).

A floor holds rooms: a module may import modules of its own room and of the floors below, never
another room of its floor or a floor above. Rooms of one floor are independent stacks (the
client knows nothing of storage or the coordinator, and they nothing of it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import grimp
import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent / "python"

# Bottom to top. A name stands for a module and everything under it; the longest matching
# name places a module (so ``pyxia.common.channels`` sits above the rest of ``pyxia.common``).
FLOORS: list[list[list[str]]] = [
    # The vocabulary every piece shares: errors, generated messages, switches for tests.
    [
        [
            "pyxia.version",
            "pyxia.errors",
            "pyxia.proto",
            "pyxia.test_hooks",
            "pyxia.failpoints",
            "pyxia.logs",
            "pyxia.metrics",
            # prometheus_client only: the lock-free hot-path types pyxia.metrics builds on.
            "pyxia.common.fast_metrics",
        ]
    ],
    # Shared pieces and pure rules: keys, validation, signals, gRPC options and error
    # translation, the config, the node's directories, the WAL's Python side, the TSO's pure
    # rules (allocator, sequences, leases, options, failure classes, checker).
    [
        [
            "pyxia.common",
            "pyxia.config",
            "pyxia.dirs",
            "pyxia.wal",
            "pyxia.wal_inspect",
            "pyxia.wal_perf",
            "pyxia.tso.__init__",
            "pyxia.tso.allocator",
            "pyxia.tso.checker",
            "pyxia.tso.errors",
            "pyxia.tso.failures",
            "pyxia.tso.leases",
            "pyxia.tso.options",
            "pyxia.tso.sequences",
        ]
    ],
    # TLS, the cluster secret, tokens, public authentication and authorization.
    [["pyxia.security"]],
    # The pool of channels to peers (TLS and the cluster's proof on every call).
    [["pyxia.common.channels"]],
    # Three independent stacks on top of the shared floors.
    [["pyxia.storage"], ["pyxia.client", "pyxia.tso.client"], ["pyxia.coordinator"]],
    # The data server: replicas, replication, the gRPC services.
    [["pyxia.server"]],
    # The timestamp oracle's serving side, built on the data server.
    [["pyxia.tso"]],
    # The composition root: a data server with its oracle.
    [["pyxia.node"]],
    # Entry points: the package's public face, the command line, the robustness harness.
    [["pyxia.__init__", "pyxia.__main__", "pyxia.cli", "pyxia.robustness"]],
]


KNOWN_CIRCLES: list[set[str]] = []


def _place(module: str) -> tuple[int, int] | None:
    """(floor, room) of a module: the longest name of the table that covers it. A package's
    own ``__init__`` is named ``<package>.__init__`` in the table (so that naming the
    package ``pyxia.tso`` places its other modules, not the package file itself)."""
    best: tuple[int, int, int] | None = None
    for f, rooms in enumerate(FLOORS):
        for r, names in enumerate(rooms):
            for name in names:
                if name.endswith(".__init__"):
                    hit = module == name.removesuffix(".__init__")
                else:
                    hit = module == name or module.startswith(name + ".")
                if hit and (best is None or len(name) > best[2]):
                    best = (f, r, len(name))
    return None if best is None else (best[0], best[1])


@cache
def _graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(PYTHON_DIR))
    try:
        g = grimp.build_graph("pyxia", cache_dir=None)
    finally:
        sys.path.remove(str(PYTHON_DIR))
    for importer in list(g.find_modules_that_directly_import("pyxia")):
        details = g.get_import_details(importer=importer, imported="pyxia")
        if details and all("_native" in d["line_contents"] for d in details):
            g.remove_import(importer=importer, imported="pyxia")
    return g


def _edges() -> Iterator[tuple[str, str]]:
    g = _graph()
    for importer in sorted(g.modules):
        for imported in sorted(g.find_modules_directly_imported_by(importer)):
            yield importer, imported


def _where(importer: str, imported: str) -> str:
    lines = _graph().get_import_details(importer=importer, imported=imported)
    at = ", ".join(f"line {d['line_number']}" for d in lines)
    return f"{importer} -> {imported} ({at})"


def _cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    g = _graph()
    succ = {m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(succ[v]):
                work.append((v, i + 1))
                w = succ[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            for w in succ[v]:
                if w in on_stack:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def test_every_module_has_a_floor() -> None:
    missing = sorted(m for m in _graph().modules if _place(m) is None)
    assert not missing, f"modules no floor covers (add them to FLOORS): {missing}"


def test_no_import_circles() -> None:
    found = []
    cycles = _cycles()
    for known in KNOWN_CIRCLES:
        assert known in [set(c) for c in cycles], f"no longer a circle (drop it): {known}"
    for comp in cycles:
        members = set(comp)
        if members in KNOWN_CIRCLES:
            continue
        edges = [_where(a, b) for a, b in _edges() if a in members and b in members]
        found.append("\n  ".join([" <-> ".join(comp), *edges]))
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_import_goes_up_a_floor_or_across_rooms() -> None:
    bad = []
    for importer, imported in _edges():
        a, b = _place(importer), _place(imported)
        if a is None or b is None:
            continue
        if b[0] > a[0] or (b[0] == a[0] and b[1] != a[1]):
            bad.append(f"{_where(importer, imported)}: floor {a} imports floor {b}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_cycle_finder_finds_circles() -> None:
    """Positive control: the check above sees a circle when there is one."""
    g = _graph()
    g.add_import(importer="pyxia.errors", imported="pyxia.client.core")
    try:
        assert any({"pyxia.errors", "pyxia.client.core"} <= set(c) for c in _cycles())
    finally:
        g.remove_import(importer="pyxia.errors", imported="pyxia.client.core")
    assert not any("pyxia.errors" in c for c in _cycles())


@pytest.mark.parametrize(
    ("module", "place"),
    [
        ("pyxia.common.keys", (1, 0)),
        ("pyxia.common.channels", (3, 0)),
        ("pyxia.tso", (1, 0)),
        ("pyxia.tso.fence", (6, 0)),
        ("pyxia.tso.client", (4, 1)),
        ("pyxia", (8, 0)),
    ],
)
def test_placement(module: str, place: tuple[int, int]) -> None:
    assert _place(module) == place


def test_the_coordinator_loads_nothing_of_the_data_server() -> None:
    """The coordinator process needs none of the data server, its storage or the oracle (nor
    RocksDB): the command line's ``pyxia coordinator`` (its flags parsed) and every module the
    command imports when it runs load none of them."""
    code = (
        "import sys\n"
        "from pyxia.cli import main\n"
        "try:\n"
        "    main(['coordinator', '--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "import pyxia.coordinator.coordinator, pyxia.coordinator.dataserver_controller\n"
        "import pyxia.coordinator.metadata.factory, pyxia.coordinator.server\n"
        "import pyxia.coordinator.metadata.file, pyxia.coordinator.metadata.memory\n"
        "import pyxia.common.metrics_http\n"
        "assert 'pyxia.coordinator.shard_controller' in sys.modules\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['pyxia', 'server'], ['pyxia', 'storage'], ['pyxia', 'tso']) or m == 'rocksdict')\n"
        "print('LOADED:', *bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PYTHON_DIR)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert "Usage: " in out.stdout  # the command's flags were parsed
    assert out.stdout.splitlines()[-1].split() == ["LOADED:"]
