"""The aarch64 release wheel runs on arm64 Linux: ``scripts/test-aarch64-wheel.sh`` builds an
arm64 Debian root, installs the wheel into a fresh venv there with ``pip --only-binary=:all:``
(the dependencies' aarch64 wheels from PyPI, no compiler), and under qemu-user (natively on an
aarch64 host) runs ``pyxia standalone``, a put and a get through pyxia's client, then a restart
on the same directories and the get again.

The full run needs an aarch64 wheel (``$PYXIA_AARCH64_WHEEL`` or the newest
``dist/pyxia-<version>-*_aarch64.whl``; ``scripts/build-wheels.sh`` makes it), qemu-user-static
on a non-aarch64 host, debootstrap, root privileges and the network (Debian's mirror, PyPI);
it is skipped without them. It takes minutes (≈ 4 min with a fresh root on a loaded 2-core
machine). The root is built in the test's tmp dir (removed when the test passes) unless
``$PYXIA_AARCH64_ROOTFS`` names one to reuse. The script's argument and prerequisite checks are
tested everywhere: they are quick."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "test-aarch64-wheel.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SKIPPED = 77
NATIVE = platform.machine() == "aarch64"


def _aarch64_wheel() -> Path | None:
    given = os.environ.get("PYXIA_AARCH64_WHEEL")
    if given:
        return Path(given)
    found = sorted(
        (ROOT / "dist").glob(f"pyxia-{VERSION}-*_aarch64.whl"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


def _missing_prerequisite() -> str | None:
    if _aarch64_wheel() is None:
        return "no aarch64 wheel in dist/ (scripts/build-wheels.sh makes one)"
    if not NATIVE and shutil.which("qemu-aarch64-static") is None:
        return "qemu-aarch64-static not found (apt-get install qemu-user-static)"
    if shutil.which("debootstrap") is None:
        return "debootstrap not found (apt-get install debootstrap)"
    if os.geteuid() != 0:
        return "needs root (debootstrap and chroot)"
    return None


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_wheel_that_is_not_for_aarch64_is_a_usage_error(tmp_path: Path) -> None:
    wheel = tmp_path / f"pyxia-{VERSION}-cp311-abi3-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"")
    run = _run(str(wheel))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "is not an abi3 manylinux aarch64 wheel" in run.stderr


def test_a_missing_wheel_is_a_usage_error(tmp_path: Path) -> None:
    run = _run(str(tmp_path / f"pyxia-{VERSION}-cp311-abi3-manylinux_2_28_aarch64.whl"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no such file" in run.stderr


@pytest.mark.skipif(NATIVE, reason="an aarch64 host runs the root's programs without qemu")
def test_without_qemu_the_run_is_skipped_with_the_package_to_install(tmp_path: Path) -> None:
    wheel = tmp_path / f"pyxia-{VERSION}-cp311-abi3-manylinux_2_28_aarch64.whl"
    wheel.write_bytes(b"")
    rootfs = tmp_path / "rootfs"
    run = _run(
        str(wheel),
        env={"QEMU_AARCH64": str(tmp_path / "no-such-qemu"), "AARCH64_ROOTFS": str(rootfs)},
    )
    assert run.returncode == SKIPPED, run.stdout + run.stderr
    assert "skipped: " in run.stdout and "apt-get install qemu-user-static" in run.stdout
    assert not rootfs.exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(_missing_prerequisite() is not None, reason=str(_missing_prerequisite()))
def test_the_aarch64_wheel_installs_and_serves_under_emulation(tmp_path: Path) -> None:
    wheel = _aarch64_wheel()
    assert wheel is not None
    rootfs = os.environ.get("PYXIA_AARCH64_ROOTFS") or str(tmp_path / "rootfs")
    run = _run(str(wheel), env={"AARCH64_ROOTFS": rootfs, "REMOVE_ROOTFS": "0"}, timeout=1700)
    output = run.stdout + run.stderr
    if run.returncode == SKIPPED:
        pytest.skip(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, output
    written = f"'written on aarch64 by pyxia {VERSION}'"
    assert "put: aarch64 python 3." in run.stdout and written in run.stdout, output
    assert "get: aarch64 python 3." in run.stdout, output
    assert run.stdout.count(written) == 2, output
    assert f"aarch64 wheel OK: {wheel.name}" in run.stdout, output
    # A passing run leaves only the reusable root: no venv, no server data.
    assert not (Path(rootfs) / "opt" / "pyxia-check").exists()
