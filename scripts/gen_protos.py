#!/usr/bin/env python3
"""Regenerates the Python protobuf modules in ``python/pyxia/proto``.

Runs ``grpc_tools.protoc`` over every ``.proto`` under ``proto/`` with the ``protoc-gen-mypy``
plugin of mypy-protobuf, producing ``*_pb2.py`` and their ``.pyi`` stubs, plus the package's
``__init__.py``. No gRPC stub modules (``*_pb2_grpc.py``) are generated: the product registers
its services with generic handlers and calls its peers through channel methods, and the tests
build their stubs from the service descriptors (``tests/grpc_stubs.py``).

    python scripts/gen_protos.py              # rewrite python/pyxia/proto
    python scripts/gen_protos.py --out DIR    # write DIR/pyxia/proto instead

The output only depends on the .proto files and on the pinned versions of
grpcio-tools and mypy-protobuf (see the ``dev`` extra in pyproject.toml): files
are processed in sorted order, the package directory is rebuilt from scratch
and nothing time- or host-dependent is written.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
DEFAULT_OUT = REPO / "python"
PACKAGE = Path("pyxia") / "proto"

INIT_PY = '''"""Generated protobuf modules (do not edit; run scripts/gen_protos.py).

Sources are in ``proto/pyxia/proto``:

- ``client``: Oxia client API (package ``io.oxia.proto.v1``).
- ``client_compat``: the same service under ``io.streamnative.oxia.proto``.
- ``replication``: coordinator and log-replication services (``replication``).
- ``storage``: database records and log entry values (``proto``).
- ``metadata``: cluster configuration and status (``io.oxia.proto.v1``).
- ``oxia_admin``: Oxia's coordinator admin API (``io.oxia.proto.v1.OxiaAdmin``).
- ``admin``: pyxia's own admin and data-server event services (``pyxia.admin.v1``).
- ``tso``: timestamp oracle (``tsoracle.v1``).
"""
'''

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")
STALE_SUFFIXES = (*GENERATED_SUFFIXES, "_pb2_grpc.py", "_pb2_grpc.pyi")
"""Removed from the package before writing (gRPC stub modules were generated once)."""


def _plugin(name: str) -> str:
    """Path of a protoc plugin script installed next to this interpreter."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")
    return found


def proto_files() -> list[Path]:
    """Every .proto under proto/, relative to proto/, sorted."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Generates into ``out_root/pyxia/proto``; returns the files written."""
    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    wkt_include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory(prefix="pyxia-protoc-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{wkt_include}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            *(str(PROTO_ROOT / f) for f in files),
        ]
        subprocess.run(cmd, check=True, cwd=REPO)

        produced = sorted((Path(tmp) / PACKAGE).iterdir())
        unexpected = [p.name for p in produced if not p.name.endswith(GENERATED_SUFFIXES)]
        if unexpected:
            raise SystemExit(f"protoc produced unexpected files: {unexpected}")

        dest = out_root / PACKAGE
        dest.mkdir(parents=True, exist_ok=True)
        # Drop stale generated modules (e.g. of a removed .proto).
        for old in sorted(dest.iterdir()):
            if old.name.endswith(STALE_SUFFIXES):
                old.unlink()
        written = []
        for src in produced:
            target = dest / src.name
            target.write_bytes(src.read_bytes())
            written.append(target)
        init = dest / "__init__.py"
        init.write_text(INIT_PY, encoding="utf-8")
        written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="Python source root to write pyxia/proto into (default: python/)",
    )
    args = parser.parse_args(argv)
    written = generate(args.out.resolve())
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
