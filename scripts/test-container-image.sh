#!/usr/bin/env bash
# Builds the container image from the Dockerfile with buildah (no daemon needed) and runs it:
# `pyxia standalone` in the container, then a put and a get through the image's own client.
#
#   scripts/build-wheels.sh                       # the wheel the image installs (dist/)
#   scripts/test-container-image.sh               # base images from a registry
#   LOCAL_BASE=1 scripts/test-container-image.sh  # no registry: a Debian base made here
#
# LOCAL_BASE=1 makes the runtime's base image with debootstrap from Debian's packages
# (bookworm: Python 3.11 with venv, the machine's CA certificates so pip reaches PyPI through
# its proxy) and imports it as localhost/pyxia-base:bookworm, for machines that reach package
# registries but no container registry. Needs root (or a user namespace), buildah, and for
# LOCAL_BASE debootstrap. Exit status 0 when the image served a put/get.
set -euo pipefail
cd "$(dirname "$0")/.."

B="buildah --storage-driver ${STORAGE_DRIVER:-vfs}"
image="${IMAGE:-localhost/pyxia:test}"
work="$(mktemp -d)"
container=""
cleanup() {
    if [ -n "$container" ]; then $B rm "$container" >/dev/null 2>&1 || true; fi
    if [ -n "${server_pid:-}" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

ls dist/pyxia-*.whl >/dev/null 2>&1 || { echo "no wheel in dist/: run scripts/build-wheels.sh" >&2; exit 2; }

build_args=(--build-arg WHEEL_STAGE=prebuilt)
if [ "${LOCAL_BASE:-0}" = 1 ]; then
    base=localhost/pyxia-base:bookworm
    if ! $B inspect --type image "$base" >/dev/null 2>&1; then
        echo "== base image $base (debootstrap bookworm)"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log"
        cp /usr/local/share/ca-certificates/*.crt "$work/rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
        chroot "$work/rootfs" update-ca-certificates >/dev/null
        tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
        c="$($B from scratch)"
        $B add "$c" "$work/rootfs.tar" / >/dev/null
        $B config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
        $B commit "$c" "$base" >/dev/null
        $B rm "$c" >/dev/null
    fi
    build_args+=(--build-arg "PYTHON_IMAGE=$base")
fi

echo "== build $image"
$B bud --isolation chroot --layers=false "${build_args[@]}" -t "$image" -f Dockerfile .
$B images "$image"

echo "== run: pyxia standalone in the container"
container="$($B from "$image")"
user="$($B inspect --format '{{.OCIv1.Config.User}}' "$container")"
[ "$user" = "10001:10001" ] || { echo "the image runs as '$user', not 10001:10001" >&2; exit 1; }
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
$B run --isolation chroot "$container" -- pyxia standalone --public-addr "127.0.0.1:$port" \
    --metrics-addr "" --data-dir /tmp/pyxia/db --wal-dir /tmp/pyxia/wal >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    grep -q "pyxia standalone ready" "$work/server.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
    sleep 0.5
done
grep -q "pyxia standalone ready" "$work/server.log" || { cat "$work/server.log"; exit 1; }

echo "== put/get through the image's client"
$B run --isolation chroot "$container" -- pyxia client -a "127.0.0.1:$port" put /image/key from-the-image >/dev/null
got="$($B run --isolation chroot "$container" -- pyxia client -a "127.0.0.1:$port" get /image/key)"
[ "$got" = "from-the-image" ] || { echo "get returned '$got'" >&2; cat "$work/server.log"; exit 1; }
echo "container image OK: $image served a put/get as uid 10001"
