#!/usr/bin/env bash
# tsoracle's own Rust client (tsoracle-client 1.3.0) against pyxia: builds
# tests/rust/tsoracle_compat with cargo (protoc from grpcio-tools if not installed) and runs
# tests/test_tsoracle_client_compat.py: every call against `pyxia standalone`, then a mixed
# load through a kill -9 of the TSO leader on a 3-server cluster. The test also runs as part
# of the ordinary pytest suite (CI) whenever cargo is available.
#   scripts/tsoracle_compat.sh            # build dir: $PYXIA_RUST_COMPAT_TARGET or /tmp
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -s -p no:randomly tests/test_tsoracle_client_compat.py "$@"
