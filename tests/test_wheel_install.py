"""A built release wheel installs into a fresh virtualenv with no Rust toolchain on PATH and
serves: ``pyxia standalone`` from that venv, then a put and a get through the venv's own
client. The wheel's tags are checked too (abi3, a manylinux platform tag), and the install has
none of the metadata providers' extras.

The wheel comes from ``$PYXIA_WHEEL`` or the newest ``dist/pyxia-<version>-*_<machine>.whl``
of this checkout for this machine's architecture (``scripts/build-wheels.sh`` makes it; CI
builds one before running the tests; the aarch64 wheel built on an x86_64 machine is
tests/test_aarch64_wheel.py's). The test is skipped when there is none: building one takes
minutes, the install needs PyPI for the dependencies."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from servers import wait_for

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
READY = re.compile(r"pyxia standalone ready: public=(\S+)")
WHEEL_NAME = re.compile(
    r"^pyxia-(?P<version>[^-]+)-cp311-abi3-(?P<platform>manylinux_2_(?P<glibc>\d+)_(?:x86_64|aarch64))\.whl$"
)


def _wheel() -> Path | None:
    given = os.environ.get("PYXIA_WHEEL")
    if given:
        return Path(given)
    machine = platform.machine()
    found = sorted(
        (ROOT / "dist").glob(f"pyxia-{VERSION}-*_{machine}.whl"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


WHEEL = _wheel()
pytestmark = pytest.mark.skipif(
    WHEEL is None,
    reason="no built wheel for this machine in dist/ (scripts/build-wheels.sh makes one)",
)


def _no_rust_path() -> str:
    """PATH without any directory that holds cargo or rustc."""
    keep = [
        d
        for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if d and not any(os.path.exists(os.path.join(d, tool)) for tool in ("cargo", "rustc"))
    ]
    return os.pathsep.join(keep)


def test_the_wheel_is_tagged_for_pypi() -> None:
    assert WHEEL is not None
    m = WHEEL_NAME.match(WHEEL.name)
    assert m, f"{WHEEL.name}: not an abi3 manylinux wheel"
    assert m["version"] == VERSION
    assert int(m["glibc"]) <= 28, "manylinux_2_28 or older"


@pytest.mark.slow
def test_the_wheel_installs_and_serves_without_rust(tmp_path: Path) -> None:
    assert WHEEL is not None
    path = _no_rust_path()
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{path}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(WHEEL)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    # No extra came along: the providers' packages stay out of a plain install.
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    for extra_only in ("kubernetes==", "pysyncobj==", "aiohttp=="):
        assert extra_only not in listed

    server = subprocess.Popen(
        [
            str(venv / "bin" / "pyxia"),
            "standalone",
            "--public-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "db"),
            "--wal-dir",
            str(tmp_path / "wal"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    public: list[str] = []

    def pump() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            log.append(line)
            m = READY.search(line)
            if m:
                public.append(m.group(1))

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for(lambda: public or server.poll() is not None, timeout=60, what="the ready line")
        assert public, "".join(log)
        client = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sys, pyxia\n"
                "assert pyxia.__file__.startswith(sys.prefix), pyxia.__file__\n"
                "with pyxia.Client(sys.argv[1]) as c:\n"
                "    c.put('/wheel/key', b'from the wheel')\n"
                "    print(c.get('/wheel/key').value.decode())\n",
                public[0],
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() == "from the wheel"
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
