"""``scripts/build-wheels.sh`` chooses a rustc per target: the default one (``$RUSTC`` or
``rustc``, rustup's) when it has the target's standard library, else Debian's
(``$DEBIAN_RUSTC``) when its sysroot holds ``lib/rustlib/<target>`` and it compiles against
that std and its host's (build scripts run on the host); otherwise the target is skipped, or is
an error when it was named in ``TARGETS``. ``PLAN_ONLY=1`` prints the choice and builds
nothing, so these tests drive the choice with fake rustc programs whose std probe succeeds or
fails per target (the real build takes minutes: .ci/run and tests/test_wheel_install.py cover
it)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build-wheels.sh"
X86 = "x86_64-unknown-linux-gnu"
ARM = "aarch64-unknown-linux-gnu"


def _fake_rustc(path: Path, *, sysroot: Path, std_for: set[str], log: Path) -> Path:
    """A rustc that logs its arguments and compiles only for the targets in ``std_for``
    ("host" stands for a probe without --target)."""
    path.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >>{log}\n'
        f'[ "$1" = --version ] && {{ echo "rustc 0.0.0 ({path.name})"; exit 0; }}\n'
        f'[ "$1 $2" = "--print sysroot" ] && {{ echo {sysroot}; exit 0; }}\n'
        "target=host\n"
        '[ "$1" = --target ] && target="$2"\n'
        f'case " {" ".join(sorted(std_for))} " in *" $target "*) exit 0;; esac\n'
        'echo "error[E0463]: can\'t find crate for std" >&2\n'
        "exit 1\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _plan(
    tmp_path: Path,
    *,
    default_std: set[str],
    debian_std: set[str] | None,
    debian_rustlib: set[str],
    targets: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "rustc.log"
    sysroot = tmp_path / "usr"
    for target in debian_rustlib:
        (sysroot / "lib" / "rustlib" / target / "lib").mkdir(parents=True)
    default = _fake_rustc(tmp_path / "rustup-rustc", sysroot=tmp_path, std_for=default_std, log=log)
    env = {**os.environ, "PLAN_ONLY": "1", "RUSTC": str(default)}
    env.pop("TARGETS", None)
    if targets is not None:
        env["TARGETS"] = targets
    if debian_std is None:
        env["DEBIAN_RUSTC"] = str(tmp_path / "no-such-rustc")
    else:
        debian = _fake_rustc(
            tmp_path / "debian-rustc", sysroot=sysroot, std_for=debian_std, log=log
        )
        env["DEBIAN_RUSTC"] = str(debian)
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return run, log.read_text() if log.exists() else ""


def _planned(run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("plan: ")]
    return {target: Path(rustc).name for _, target, rustc in lines}


def test_rustups_std_comes_first(tmp_path: Path) -> None:
    run, _ = _plan(
        tmp_path, default_std={"host", X86, ARM}, debian_std={"host", ARM}, debian_rustlib={ARM}
    )
    assert run.returncode == 0, run.stderr
    assert _planned(run) == {X86: "rustup-rustc", ARM: "rustup-rustc"}


def test_a_target_without_rustups_std_builds_with_debians_rustc(tmp_path: Path) -> None:
    run, log = _plan(
        tmp_path, default_std={"host", X86}, debian_std={"host", X86, ARM}, debian_rustlib={ARM}
    )
    assert run.returncode == 0, run.stderr
    assert _planned(run) == {X86: "rustup-rustc", ARM: "debian-rustc"}
    # Both of Debian's stds were compiled against: the target's and the host's.
    assert f"--target {ARM} --crate-type lib" in log
    assert "\n--crate-type lib" in "\n" + log


def test_debians_std_of_another_rustc_version_is_not_used(tmp_path: Path) -> None:
    # The rustlib directory is there but the probe compile fails (E0514 in real life).
    run, _ = _plan(
        tmp_path, default_std={"host", X86}, debian_std={"host", X86}, debian_rustlib={ARM}
    )
    assert run.returncode == 0, run.stderr
    assert _planned(run) == {X86: "rustup-rustc"}
    assert f"skipping {ARM}: no Rust standard library" in run.stdout


def test_debians_rustc_without_the_hosts_std_is_not_used(tmp_path: Path) -> None:
    run, _ = _plan(tmp_path, default_std={"host", X86}, debian_std={ARM}, debian_rustlib={ARM})
    assert run.returncode == 0, run.stderr
    assert _planned(run) == {X86: "rustup-rustc"}


def test_no_debian_rustlib_for_the_target_skips_it(tmp_path: Path) -> None:
    run, _ = _plan(
        tmp_path, default_std={"host", X86}, debian_std={"host", X86, ARM}, debian_rustlib=set()
    )
    assert run.returncode == 0, run.stderr
    assert _planned(run) == {X86: "rustup-rustc"}


def test_a_named_target_without_any_std_is_an_error(tmp_path: Path) -> None:
    run, _ = _plan(
        tmp_path, default_std={"host", X86}, debian_std=None, debian_rustlib=set(), targets=ARM
    )
    assert run.returncode == 2
    assert f"rustup target add {ARM}" in run.stderr
    assert "libstd-rust-web-dev" in run.stderr
    assert "plan: " not in run.stdout


def test_cis_call_plans_only_x86_64(tmp_path: Path) -> None:
    run, _ = _plan(
        tmp_path,
        default_std={"host", X86},
        debian_std={"host", ARM},
        debian_rustlib={ARM},
        targets=X86,
    )
    assert run.returncode == 0, run.stderr
    assert _planned(run) == {X86: "rustup-rustc"}
