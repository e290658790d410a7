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
# A target needs its Rust standard library (`rustup target add aarch64-unknown-linux-gnu`);
# a target without it is skipped with a message unless it was named in TARGETS, where it is
# an error. Exit status: 0 when every wheel built and passed auditwheel.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-dist}"
compat="${MANYLINUX:-manylinux_2_28}"
explicit_targets="${TARGETS:-}"
targets="${TARGETS:-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu}"

for tool in maturin auditwheel cargo; do
    command -v "$tool" >/dev/null || { echo "build-wheels: $tool not found (pip install -e '.[release]'; Rust >= 1.83)" >&2; exit 2; }
done
python -c 'import ziglang' 2>/dev/null || { echo "build-wheels: the ziglang package is not installed (pip install ziglang)" >&2; exit 2; }

installed_targets="$(rustup target list --installed 2>/dev/null || rustc -vV | sed -n 's/^host: //p')"
mkdir -p "$out"

built=0
for target in $targets; do
    if ! grep -qx "$target" <<<"$installed_targets"; then
        if [ -n "$explicit_targets" ]; then
            echo "build-wheels: the Rust standard library for $target is not installed (rustup target add $target)" >&2
            exit 2
        fi
        echo "build-wheels: skipping $target: its Rust standard library is not installed (rustup target add $target)"
        continue
    fi
    echo "== wheel for $target ($compat)"
    maturin build --release --locked --strip --zig --compatibility "$compat" \
        --target "$target" --out "$out"
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
