#!/usr/bin/env bash
# Builds pyxia's release artifacts into dist/ (or $OUT) without Docker:
#   - one abi3 wheel per target (CPython >= 3.11), manylinux_2_28, linked with maturin's zig
#     linker (the `ziglang` package) against glibc 2.28, native library stripped;
#   - the sdist;
# then checks each wheel with `auditwheel show` (it must report the manylinux tag asked for).
#
#   pip install 'maturin>=1.9,<2' ziglang auditwheel    # or: pip install -e '.[release]'
#   scripts/build-wheels.sh                              # every target whose Rust std is installed
#   TARGETS=x86_64-unknown-linux-gnu scripts/build-wheels.sh
#
# A target needs a Rust standard library built for it. The script uses the first of:
#   1. the default rustc's ($RUSTC or rustc; rustup: `rustup target add aarch64-unknown-linux-gnu`);
#   2. Debian's: when the default rustc has no std for the target but $DEBIAN_RUSTC
#      (/usr/bin/rustc) has one in /usr/lib/rustlib/<target> of its own version, that rustc
#      builds the target (RUSTC=$DEBIAN_RUSTC; the output says so). On Debian 12 (bookworm,
#      rustc-web from bookworm-security, 1.96 today) for aarch64 on an x86_64 host:
#        dpkg --add-architecture arm64 && apt-get update
#        apt-get install rustc-web libstd-rust-web-dev:arm64
#      This is the way when rustup cannot download targets (an offline or filtered mirror).
# A target with neither is skipped with a message unless it was named in TARGETS, where it is
# an error. PLAN_ONLY=1 prints which rustc would build each target ("plan: TARGET RUSTC") and
# builds nothing. Exit status: 0 when every wheel built and passed auditwheel.
#
# scripts/test-aarch64-wheel.sh runs the aarch64 wheel under qemu-user in an arm64 Debian root.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-dist}"
compat="${MANYLINUX:-manylinux_2_28}"
explicit_targets="${TARGETS:-}"
targets="${TARGETS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu}"
default_rustc="${RUSTC:-rustc}"
debian_rustc="${DEBIAN_RUSTC:-/usr/bin/rustc}"
plan_only="${PLAN_ONLY:-0}" # 1: print which rustc would build each target, build nothing

command -v "$default_rustc" >/dev/null || { echo "build-wheels: $default_rustc not found (Rust >= 1.88)" >&2; exit 2; }
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT

# has_std RUSTC [TARGET]: RUSTC can compile a crate that uses std for TARGET (default: its
# host). An empty library crate still loads std, so a missing std (E0463) or one built by
# another rustc version (E0514) fails here, in a fraction of a second, not minutes into a build.
has_std() {
    local rustc="$1"
    shift
    "$rustc" "$@" --crate-type lib --crate-name std_probe --emit metadata \
        --out-dir "$probe_dir" - </dev/null >/dev/null 2>&1
}

# debian_std_for TARGET: Debian's rustc has TARGET's std in /usr/lib/rustlib/TARGET and the
# host's (build scripts run on the host), both of its own version.
debian_std_for() {
    [ -x "$debian_rustc" ] && [ -d "$("$debian_rustc" --print sysroot 2>/dev/null)/lib/rustlib/$1" ] &&
        has_std "$debian_rustc" --target "$1" && has_std "$debian_rustc"
}

# The plan: "TARGET RUSTC" per buildable target, RUSTC "-" for the default one.
plan=()
for target in $targets; do
    if has_std "$default_rustc" --target "$target"; then
        plan+=("$target -")
    elif debian_std_for "$target"; then
        plan+=("$target $debian_rustc")
    elif [ -n "$explicit_targets" ]; then
        echo "build-wheels: no Rust standard library for $target (rustup target add $target; on Debian: apt-get install libstd-rust-web-dev:<arch> rustc-web, see this script's header)" >&2
        exit 2
    else
        echo "build-wheels: skipping $target: no Rust standard library for it (rustup target add $target, or Debian's libstd-rust-web-dev:<arch>)"
    fi
done
[ "${#plan[@]}" -gt 0 ] || { echo "build-wheels: no target could be built" >&2; exit 2; }
if [ "$plan_only" = 1 ]; then
    for entry in "${plan[@]}"; do
        read -r target rustc_for_target <<<"$entry"
        [ "$rustc_for_target" = - ] && rustc_for_target="$default_rustc"
        echo "plan: $target $rustc_for_target"
    done
    exit 0
fi

for tool in maturin auditwheel cargo; do
    command -v "$tool" >/dev/null || { echo "build-wheels: $tool not found (pip install -e '.[release]'; Rust >= 1.88)" >&2; exit 2; }
done
python -c 'import ziglang' 2>/dev/null || { echo "build-wheels: the ziglang package is not installed (pip install ziglang)" >&2; exit 2; }

mkdir -p "$out"
built=0
for entry in "${plan[@]}"; do
    read -r target rustc_for_target <<<"$entry"
    if [ "$rustc_for_target" != - ]; then
        echo "== wheel for $target ($compat) with $("$rustc_for_target" --version) at $rustc_for_target: the default rustc has no std for $target, Debian's $("$rustc_for_target" --print sysroot)/lib/rustlib/$target does"
        RUSTC="$rustc_for_target" maturin build --release --locked --strip --zig \
            --compatibility "$compat" --target "$target" --out "$out"
    else
        echo "== wheel for $target ($compat) with $("$default_rustc" --version)"
        maturin build --release --locked --strip --zig --compatibility "$compat" \
            --target "$target" --out "$out"
    fi
    built=$((built + 1))
done
[ "$built" -gt 0 ] || { echo "build-wheels: no target could be built" >&2; exit 2; }

echo "== sdist"
maturin sdist --out "$out"

echo "== auditwheel show"
status=0
for wheel in "$out"/*.whl; do
    report="$(auditwheel show "$wheel")"
    echo "$report"
    arch="$(basename "$wheel" .whl | sed 's/.*-//; s/^[a-z]*_[0-9]*_[0-9]*_//')"
    if ! grep -q "\"${compat}_${arch}\"" <<<"$report"; then
        echo "build-wheels: auditwheel does not report ${compat}_${arch} for $wheel" >&2
        status=1
    fi
done
ls -l "$out"
exit "$status"
