#!/usr/bin/env bash
# Proves that pyxia's aarch64 release wheel runs on arm64 Linux, from an x86_64 machine:
# an arm64 Debian root (debootstrap), qemu-user running its programs, and in it a fresh venv,
# `pip install --only-binary=:all: <the wheel>` (pip downloads the aarch64 wheels of the
# dependencies from PyPI; the root has no compiler), `pyxia standalone`, a put and a get
# through pyxia's client, then a restart of the server on the same directories and the get
# again (the write-ahead log and RocksDB recover on aarch64).
#
#   apt-get install qemu-user-static debootstrap        # Debian/Ubuntu; run as root
#   scripts/build-wheels.sh                             # makes dist/pyxia-*_aarch64.whl
#   scripts/test-aarch64-wheel.sh [WHEEL]               # default: the newest aarch64 wheel in dist/
#
# The root lives in $AARCH64_ROOTFS (default ${TMPDIR:-/tmp}/pyxia-aarch64-rootfs, ~280 MB) and
# is reused by the next run (idempotent: a root whose build did not finish is rebuilt);
# REMOVE_ROOTFS=1 removes it at the end. The venv and the server's data live in
# $AARCH64_ROOTFS/opt/pyxia-check, made afresh by every run and removed when the run passes.
# Other settings: DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
# QEMU_AARCH64 (qemu-aarch64-static). On an aarch64 host the root's programs run natively.
#
# How it runs without binfmt_misc: debootstrap's first stage (--foreign) downloads the packages;
# its second stage would run their maintainer scripts as arm64 programs, which needs the kernel
# to hand arm64 executables to qemu (a binfmt_misc registration: global to the machine, often
# unavailable in containers). Instead every package is unpacked (dpkg-deb, on the host), which
# is all python3 needs, and every program in the root is started as
# `chroot ROOT /usr/bin/qemu-aarch64-static PROGRAM` - so nothing in the root may exec another
# arm64 program: the venv is made --without-pip and pip is bootstrapped from Debian's pip wheel
# in-process, and the console script runs through the venv's interpreter. Nothing is mounted
# into the root, so removing it is a plain `rm -rf`.
#
# Exit status: 0 passed; 77 skipped (a tool, root privileges or a wheel missing: the message
# says which); 2 bad usage; 1 failed.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIPPED=77
qemu="${QEMU_AARCH64:-qemu-aarch64-static}"
rootfs="${AARCH64_ROOTFS:-${TMPDIR:-/tmp}/pyxia-aarch64-rootfs}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
remove_rootfs="${REMOVE_ROOTFS:-0}"

say() { echo "test-aarch64-wheel: $*"; }
skip() { say "skipped: $*"; exit "$SKIPPED"; }
fail() { echo "test-aarch64-wheel: FAILED: $*" >&2; exit 1; }
usage_error() { echo "test-aarch64-wheel: $*" >&2; exit 2; }

# -- the wheel named on the command line is checked first: a wrong one is a usage error anywhere
wheel="${1:-${PYXIA_WHEEL:-}}"
wheel_pattern='^pyxia-[^-]+-cp3[0-9]+-abi3-manylinux_2_[0-9]+_aarch64\.whl$'
if [ -n "$wheel" ]; then
    [[ "$(basename "$wheel")" =~ $wheel_pattern ]] ||
        usage_error "$wheel is not an abi3 manylinux aarch64 wheel of pyxia"
    [ -f "$wheel" ] || usage_error "$wheel: no such file"
fi

# -- what the run needs from this machine
native=0
[ "$(uname -m)" = aarch64 ] && native=1
if [ "$native" = 0 ]; then
    qemu_path="$(command -v "$qemu" || true)"
    [ -n "$qemu_path" ] || skip "$qemu not found (apt-get install qemu-user-static)"
fi
for tool in debootstrap dpkg-deb chroot; do
    command -v "$tool" >/dev/null || skip "$tool not found (apt-get install debootstrap)"
done
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap and chroot)"
if [ -z "$wheel" ]; then
    wheel="$(ls -t dist/pyxia-*-manylinux_2_*_aarch64.whl 2>/dev/null | head -1 || true)"
    [ -n "$wheel" ] || skip "no aarch64 wheel in dist/ (scripts/build-wheels.sh makes one)"
fi
wheel="$(realpath "$wheel")"

started=$SECONDS
phase_started=$SECONDS
phase() {
    echo "== $* (at $((SECONDS - started)) s)"
    phase_started=$SECONDS
}
phase_done() { echo "   done in $((SECONDS - phase_started)) s"; }

say "wheel $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KB)"
if [ "$native" = 1 ]; then
    say "host $(uname -m): the root's programs run natively"
else
    say "host $(uname -m): the root's programs run under $("$qemu_path" --version | head -1)"
fi

# -- the arm64 Debian root: built once, reused while its marker says it is complete
marker="$rootfs/.pyxia-aarch64-rootfs"
if [ ! -f "$marker" ] || [ "$(cat "$marker")" != "$suite $mirror" ]; then
    phase "arm64 Debian root: debootstrap --foreign $suite into $rootfs"
    rm -rf "$rootfs"
    mkdir -p "$(dirname "$rootfs")"
    log="$(mktemp)"
    if ! debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv \
        "$suite" "$rootfs" "$mirror" >"$log" 2>&1; then
        tail -20 "$log" >&2
        rm -f "$log"
        fail "debootstrap did not finish (network? mirror $mirror)"
    fi
    rm -f "$log"
    # Unpack every downloaded package (the first stage unpacked only the essential ones);
    # --keep-directory-symlink keeps bookworm's merged /usr (/bin -> usr/bin) intact.
    for deb in "$rootfs"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$rootfs" -f - ||
            fail "could not unpack $deb"
    done
    rm -f "$rootfs"/var/cache/apt/archives/*.deb
    [ -x "$rootfs/usr/bin/python3" ] || fail "the root has no /usr/bin/python3"
    echo "$suite $mirror" >"$marker"
    phase_done
else
    say "reusing the arm64 root $rootfs ($suite)"
fi

# Refreshed on every run: the emulator, name resolution, and the trust store pip checks PyPI's
# certificate with (the host's: the guest reaches PyPI through the host's network; Debian's
# ca-certificates bundle is generated by a maintainer script, which did not run).
if [ "$native" = 0 ]; then
    cp "$qemu_path" "$rootfs/usr/bin/qemu-aarch64-static"
fi
cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
mkdir -p "$rootfs/etc/ssl/certs"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
else
    cat "$rootfs"/usr/share/ca-certificates/mozilla/*.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
fi

# guest PROGRAM ARGS...: runs an arm64 program of the root, with a clean environment (no host
# PYTHONPATH, PIP_* or VIRTUAL_ENV leaks in; PyPI's address may be overridden for pip).
guest=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT="${PIP_DEFAULT_TIMEOUT:-180}")
[ -n "${PIP_INDEX_URL:-}" ] && guest+=(PIP_INDEX_URL="$PIP_INDEX_URL")
guest+=("$(command -v chroot)" "$rootfs")
[ "$native" = 0 ] && guest+=(/usr/bin/qemu-aarch64-static)

check=/opt/pyxia-check
work="$rootfs$check"
venv_python="$check/venv/bin/python"
server_pid=""

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60)) status=0
    while kill -0 "$server_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
        return 1
    fi
    wait "$server_pid" || status=$?
    server_pid=""
    return "$status"
}

finish() {
    local status=$?
    if [ -n "$server_pid" ]; then
        stop_server || true
    fi
    if [ "$status" = 0 ]; then
        rm -rf "$work"
    elif [ -d "$work" ]; then
        echo "test-aarch64-wheel: the venv and the server's logs are kept in $work" >&2
    fi
    if [ "$remove_rootfs" = 1 ]; then
        rm -rf "$rootfs"
    fi
}
trap finish EXIT

# start_server N: starts `pyxia standalone` on loopback ports the kernel picks, on the same data
# and WAL directories every time, and waits (60 s deadline per try, 240 s under emulation) for
# its ready line; sets server_pid and public_addr.
start_server() {
    local log="$work/server-$1.log" deadline
    : >"$log"
    "${guest[@]}" "$venv_python" "$check/venv/bin/pyxia" standalone \
        --public-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
        --data-dir "$check/db" --wal-dir "$check/wal" >"$log" 2>&1 &
    server_pid=$!
    deadline=$((SECONDS + 240))
    until grep -q 'pyxia standalone ready: public=' "$log"; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            server_pid=""
            cat "$log" >&2
            fail "pyxia standalone exited before it was ready"
        fi
        [ "$SECONDS" -lt "$deadline" ] || { cat "$log" >&2; fail "pyxia standalone not ready within 240 s"; }
        sleep 0.5
    done
    public_addr="$(sed -n 's/.*pyxia standalone ready: public=\([^ ]*\).*/\1/p' "$log" | head -1)"
    echo "   pyxia standalone ready at $public_addr (pid $server_pid)"
}

# The client's check: the interpreter is arm64, pyxia and its native library come from the
# venv and the library is an aarch64 ELF (e_machine 183), then the put (first run only) and get.
read -r -d '' client_check <<'PY' || true
import importlib.metadata, platform, sys
import pyxia, pyxia._native as native
mode, address = sys.argv[1], sys.argv[2]
assert platform.machine() == "aarch64", platform.machine()
assert pyxia.__file__.startswith(sys.prefix + "/"), pyxia.__file__
with open(native.__file__, "rb") as so:
    head = so.read(20)
assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183, native.__file__
value = b"written on aarch64 by pyxia " + importlib.metadata.version("pyxia").encode()
with pyxia.Client(address) as client:
    if mode == "put":
        client.put("/aarch64/wheel", value)
    got = client.get("/aarch64/wheel").value
assert got == value, got
print(f"   {mode}: {platform.machine()} python {platform.python_version()}, "
      f"{native.__file__}: {got.decode()!r}")
PY

phase "fresh venv in the root, pip bootstrapped from Debian's pip wheel"
rm -rf "$work"
mkdir -p "$work"
cp "$wheel" "$work/"
"${guest[@]}" /usr/bin/python3 -m venv --without-pip "$check/venv"
debian_pip="$(cd "$rootfs" && ls usr/share/python-wheels/pip-*.whl | head -1)"
[ -n "$debian_pip" ] || fail "the root has no pip wheel (python3-pip-whl)"
"${guest[@]}" "$venv_python" "/$debian_pip/pip" install --quiet --upgrade pip
phase_done

phase "pip install --only-binary=:all: $(basename "$wheel") (dependencies from PyPI)"
"${guest[@]}" "$venv_python" -m pip install --quiet --only-binary=:all: "$check/$(basename "$wheel")"
phase_done
echo "   $("${guest[@]}" "$venv_python" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')," \
    "$("${guest[@]}" "$venv_python" -m pip --version | cut -d' ' -f1-2)," \
    "$("${guest[@]}" "$venv_python" "$check/venv/bin/pyxia" --version)"
echo "   $("${guest[@]}" "$venv_python" -m pip list --format=freeze | grep -i -E '^(grpcio|protobuf|rocksdict|cryptography)==' | tr '\n' ' ')"

phase "pyxia standalone, put and get"
start_server 1
"${guest[@]}" "$venv_python" -c "$client_check" put "$public_addr"
stop_server || fail "pyxia standalone did not stop cleanly on SIGTERM (log: $work/server-1.log)"
phase_done

phase "pyxia standalone restarted on the same directories, get"
start_server 2
"${guest[@]}" "$venv_python" -c "$client_check" get "$public_addr"
stop_server || fail "pyxia standalone did not stop cleanly on SIGTERM (log: $work/server-2.log)"
phase_done

say "aarch64 wheel OK: $(basename "$wheel") installed and served a put/get across a restart in $((SECONDS - started)) s"
