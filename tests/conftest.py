"""The suite's shared fixtures: the clusters (in-process and of real processes), subprocesses
that are always cleaned up, and the fast/slow split.

- ``cluster``: an in-process :class:`cluster.Cluster` (3 data servers in the test's event
  loop); a module passes other arguments by overriding ``cluster_options``.
- ``proc_cluster``: a :class:`proc_cluster.ProcCluster` (``pyxia server`` processes and a
  ``pyxia coordinator``); a module overrides ``proc_cluster_options``.
- Every test is marked ``fast`` or ``slow`` here (``pytest -m fast``: pure rules and
  in-process servers; ``pytest -m slow``: real processes). A test is slow when it is marked
  so, when it uses a fixture that starts processes (``proc_cluster``, ``procs``), or when its
  module can start them (its name ends in ``_processes``, or it holds the process launcher
  ``ServerProcess``, ``ProcCluster``, ``Restartable`` or ``subprocess``); every other test is
  fast, and a fast test that starts a
  process fails (so the split stays true). The default run (``pytest``) runs both.

Waits: :func:`servers.wait_for` and :func:`servers.wait_until`, never a fixed sleep."""

from __future__ import annotations

from pyxia.common import grpc_runtime

# Before anything below loads gRPC: the in-process servers run the I/O path `pyxia` runs.
grpc_runtime.configure()

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from cluster import Cluster  # noqa: E402
from proc_cluster import ProcCluster  # noqa: E402
from servers import wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# The suite is a test: test hooks (failpoints, dial maps, the WAL's) may arm from the environment
# here and in every process it starts (they inherit it). See pyxia.test_hooks.
os.environ["PYXIA_TEST_MODE"] = "1"
__all__ = ["REPO", "Procs", "wait_for"]


class Procs:
    """Starts child processes and kills whatever is left at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def python(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[Any]:
        p = subprocess.Popen([sys.executable, "-c", code, *args], **kw)
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                os.kill(p.pid, signal.SIGKILL)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


_PROCESS_LAUNCHERS = ("ServerProcess", "ProcCluster", "Restartable", "subprocess")
_PROCESS_FIXTURES = frozenset({"proc_cluster", "procs"})


def _starts_processes(item: pytest.Item) -> bool:
    if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    module = getattr(item, "module", None)
    if module is None:
        return False
    if module.__name__.rsplit(".", 1)[-1].endswith("_processes"):
        return True
    return any(name in vars(module) for name in _PROCESS_LAUNCHERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        slow = item.get_closest_marker("slow") is not None or _starts_processes(item)
        item.add_marker(pytest.mark.slow if slow else pytest.mark.fast)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test marked fast that starts a process fails, naming where to mark it slow."""
    if request.node.get_closest_marker("fast") is None:
        return

    def refuse(*args: Any, **kw: Any) -> None:
        raise AssertionError(
            f"{request.node.nodeid} is marked fast but starts a process: mark it "
            "@pytest.mark.slow (or use the process fixtures, see tests/conftest.py)"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def cluster_options() -> dict[str, Any]:
    """What ``cluster`` starts: ``nodes`` (3), ``namespace`` (the client's, "default") and any
    :class:`~pyxia.server.data_server.ServerOptions` field."""
    return {}


@pytest.fixture
async def cluster(tmp_path: Path, cluster_options: dict[str, Any]) -> AsyncIterator[Cluster]:
    """An in-process cluster, closed at teardown."""
    options = dict(cluster_options)
    nodes = options.pop("nodes", 3)
    namespace = options.pop("namespace", None)
    c = await Cluster.start(tmp_path, nodes, **options)
    if namespace is not None:
        c.namespace = namespace
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def proc_cluster_options() -> dict[str, Any]:
    """The keyword arguments of :meth:`ProcCluster.start` for ``proc_cluster``."""
    return {}


@pytest.fixture
def proc_cluster(tmp_path: Path, proc_cluster_options: dict[str, Any]) -> Iterator[ProcCluster]:
    """A cluster of real processes, steady, killed at teardown."""
    c = ProcCluster.start(tmp_path, **proc_cluster_options)
    try:
        yield c
    finally:
        c.close()
