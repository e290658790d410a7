"""The optional metadata providers and their extras: a plain ``pip install pyxia`` leaves out
pysyncobj and kubernetes (``pyxia[raft]``, ``pyxia[kubernetes]``), so building a provider whose
packages are missing must be one ValueError naming the extra (the CLI prints it as one line),
and nothing a client, a data server or a memory/file coordinator imports may need them.

Missing packages are simulated by a ``None`` entry in ``sys.modules`` (what a failed import
leaves), in a fresh interpreter where the import graph matters."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyxia.coordinator.metadata.factory import EXTRA_MODULES, create_provider, missing_extra

OPTIONAL_MODULES = ("kubernetes", "pysyncobj", "aiohttp")


def _run_without(modules: tuple[str, ...], code: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter where importing any of ``modules`` fails."""
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("provider", "options", "extra"),
    [
        ("raft", "raft_address='127.0.0.1:1', raft_secret_file='/nonexistent'", "raft"),
        ("kubernetes", "", "kubernetes"),
    ],
)
def test_a_provider_without_its_packages_names_its_extra(
    provider: str, options: str, extra: str
) -> None:
    result = _run_without(
        OPTIONAL_MODULES,
        f"""
        from pyxia.coordinator.metadata.factory import create_provider
        try:
            create_provider({provider!r}, {options})
        except ValueError as e:
            print(e)
        """,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert f"pip install 'pyxia[{extra}]'" in message
    assert "\n" not in message


def test_an_unrelated_missing_module_is_not_blamed_on_an_extra() -> None:
    error = ModuleNotFoundError("No module named 'yaml'", name="yaml")
    with pytest.raises(ModuleNotFoundError):
        raise missing_extra(error, "kubernetes")
    assert "pysyncobj" in EXTRA_MODULES["raft"]


def test_the_core_imports_nothing_from_the_extras(tmp_path: Path) -> None:
    """Client, server, standalone, CLI and the memory/file providers import without the
    optional packages, and a file provider is built."""
    result = _run_without(
        OPTIONAL_MODULES,
        f"""
        import pyxia, pyxia.cli, pyxia.client, pyxia.server.data_server, pyxia.server.standalone
        import pyxia.coordinator.coordinator, pyxia.tso.client
        from pyxia.cli import main
        from pyxia.coordinator.metadata.factory import create_provider
        create_provider("memory")
        create_provider("file", metadata_dir={str(tmp_path)!r})
        loaded = [m for m in ("kubernetes", "pysyncobj", "aiohttp") if sys.modules.get(m)]
        assert not loaded, loaded
        print("ok")
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_coordinator_cli_prints_one_line_for_a_missing_extra(tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_text("s" * 64)
    secret.chmod(0o600)
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "namespaces: [{name: default, initialShardCount: 1, replicationFactor: 1}]\n"
        "servers: [{public: 127.0.0.1:1, internal: 127.0.0.1:2}]\n"
    )
    result = _run_without(
        OPTIONAL_MODULES,
        f"""
        import sys
        from pyxia.cli import main
        sys.argv = ["pyxia", "coordinator", "--metadata", "kubernetes",
                    "--cluster-config", {str(config)!r},
                    "--cluster-secret-file", {str(secret)!r},
                    "--internal-addr", "127.0.0.1:0", "--metrics-addr", ""]
        main()
        """,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: the kubernetes metadata provider needs"), result.stderr
    assert "pip install 'pyxia[kubernetes]'" in lines[-1]
    assert "Traceback" not in result.stderr


def test_the_memory_provider_is_built_in_this_process() -> None:
    assert create_provider("memory") is not None
