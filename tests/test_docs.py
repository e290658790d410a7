"""The documentation: the site builds with ``mkdocs build --strict``, and every code block in
README.md and docs/ is run, checked, or marked as not runnable with a reason.

How a fenced block is treated, by its language and the HTML comment on the line before it:

- ``<!-- not-run: REASON -->``: skipped; the reason must say why (at least a few words).
- ``<!-- same-as: PATH -->``: the block must equal that file of the repository (units, env
  files shown in the docs); those files are checked by their own tests below.
- ``python``: run alone in a fresh interpreter (so a block that forgets an import fails),
  against a ``pyxia standalone`` started for these tests: ``localhost:6648``,
  ``127.0.0.1:66x8``, ``hostN:6648`` and ``sN.example:6648`` in the block become its address,
  and ``/tmp/`` a temporary directory.
- ``bash``/``sh``: run with ``bash -euo pipefail`` in a temporary directory, with the same
  address substitution.
- ``yaml``: parsed; a cluster config (``namespaces``) must pass pyxia's validation, an
  authorization policy (``rules``) pyxia's policy parser, an options file (``--sconfig``: a
  data server's with ``storage``, a coordinator's with ``metadata``) pyxia's reader of Oxia's
  keys, with no key ignored.
- ``text``: diagrams and output, not code.
- anything else must carry one of the two markers.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import yaml

from pyxia.cli import main as pyxia_cli
from pyxia.config import parse_cluster_config
from pyxia.security.policy import parse_policy
from servers import ServerProcess, standalone_args

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(?P<kind>not-run|same-as):\s*(?P<arg>.*?)\s*-->\s*$")
ADDRESS = re.compile(
    r"\b(?:localhost:6648|127\.0\.0\.1:66[0-9]8|host\d+:6648|s\d+\.example:6648)\b"
)
RUNNABLE = {"python", "bash", "sh", "yaml", "text"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    marker: str | None  # "not-run" | "same-as" | None
    marker_arg: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, fence = i, len(m["indent"]), m["fence"]
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][indent:])
            i += 1
        i += 1
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        yield Block(
            path,
            start + 1,
            m["lang"].lower(),
            "\n".join(body) + "\n",
            marker["kind"] if marker else None,
            marker["arg"] if marker else "",
        )


BLOCKS = [b for p in DOC_FILES for b in code_blocks(p)]


def _blocks(*langs: str) -> list[Block]:
    return [b for b in BLOCKS if b.marker is None and b.lang in langs]


def test_the_docs_have_code_blocks() -> None:
    assert len(BLOCKS) > 20
    assert _blocks("python") and _blocks("bash") and _blocks("yaml")


def test_every_block_is_run_or_marked_with_a_reason() -> None:
    problems = []
    for b in BLOCKS:
        if b.marker == "not-run" and len(b.marker_arg.split()) < 3:
            problems.append(f"{b.id}: not-run needs a reason")
        elif b.marker == "same-as" and not (ROOT / b.marker_arg).is_file():
            problems.append(f"{b.id}: same-as names no file: {b.marker_arg}")
        elif b.marker is None and b.lang not in RUNNABLE:
            problems.append(
                f"{b.id}: a ```{b.lang or '(no language)'} block is neither run nor marked "
                "<!-- not-run: reason --> or <!-- same-as: path -->"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.marker == "same-as"], ids=lambda b: b.id)
def test_a_block_shown_from_a_file_is_that_file(block: Block) -> None:
    assert block.code == (ROOT / block.marker_arg).read_text()


@pytest.mark.parametrize("block", _blocks("yaml"), ids=lambda b: b.id)
def test_yaml_examples_are_valid(block: Block, tmp_path: Path) -> None:
    from pyxia.config import COORDINATOR_FILE_KEYS, SERVER_FILE_KEYS, load_options_file

    doc = yaml.safe_load(block.code)
    assert isinstance(doc, dict), "a YAML example is a mapping"
    if "namespaces" in doc:
        parse_cluster_config(doc, require_servers="servers" in doc)
    elif "rules" in doc:
        parse_policy(doc, block.id)
    elif "storage" in doc or "metadata" in doc:
        path = tmp_path / "options.yaml"
        path.write_text(block.code)
        keys = SERVER_FILE_KEYS if "storage" in doc else COORDINATOR_FILE_KEYS
        _, ignored = load_options_file(path, keys)
        assert not ignored, ignored
    else:
        pytest.fail(f"{block.id}: no validator for a YAML block with keys {sorted(doc)}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("docs-server")
    proc = ServerProcess(standalone_args(base), base).start()
    try:
        yield proc
    finally:
        proc.kill()


def _prepare(block: Block, server: ServerProcess, tmp_path: Path) -> str:
    return ADDRESS.sub(server.public, block.code).replace("/tmp/", f"{tmp_path}/")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.parametrize("block", _blocks("python"), ids=lambda b: b.id)
def test_python_examples_run(block: Block, server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _prepare(block, server, tmp_path)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.id} failed:\n{result.stderr}"


@pytest.mark.parametrize("block", _blocks("bash", "sh"), ids=lambda b: b.id)
def test_shell_examples_run(block: Block, server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _prepare(block, server, tmp_path)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.id} failed:\n{result.stdout}\n{result.stderr}"


def _yaml_keys_in_config_module() -> set[str]:
    """The cluster.yaml keys pyxia.config reads: every string literal passed to ``.get``."""
    tree = ast.parse((ROOT / "python/pyxia/config.py").read_text())
    keys = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            keys.add(node.args[0].value)
    return keys


def test_the_cluster_yaml_reference_names_every_key() -> None:
    """docs/configuration.md's key table and pyxia/config.py agree (both ways)."""
    text = (ROOT / "docs/configuration.md").read_text()
    section = text.split("## `cluster.yaml`", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for row in re.findall(r"^\| `([^`]+)` \|", section, re.M):
        documented.add(re.split(r"[.\[\]]+", row.replace("<server>", "x"))[-1] or row)
    read = _yaml_keys_in_config_module()
    missing = read - documented
    assert not missing, f"cluster.yaml keys read by pyxia/config.py but not documented: {missing}"
    unknown = {k for k in documented if k not in read and k != "allowExtraAuthorities"}
    assert not unknown, f"documented cluster.yaml keys pyxia/config.py does not read: {unknown}"


def _exec_start(unit: Path, env: dict[str, str]) -> list[str]:
    text = unit.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    command = re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], line.removeprefix("ExecStart="))
    return shlex.split(command)


@pytest.mark.parametrize(
    "unit", sorted((ROOT / "deploy/systemd").glob("*.service")), ids=lambda p: p.name
)
def test_the_systemd_units_use_real_flags(unit: Path, tmp_path: Path) -> None:
    env_file = ROOT / "deploy/systemd/server.env"
    env = dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if line and not line.startswith("#")
    )
    # The files the units name under /etc/pyxia, made here (click checks that they exist).
    for name in ("cluster.yaml", "cluster.secret"):
        (tmp_path / name).write_text("")
    argv = [a.replace("/etc/pyxia/", f"{tmp_path}/") for a in _exec_start(unit, env)]
    assert argv[0] == "/opt/pyxia/bin/pyxia"
    # Parses the arguments exactly as the command would (unknown flags, bad values fail).
    group = pyxia_cli
    assert isinstance(group, click.Group)
    command = group.get_command(click.Context(group), argv[1])
    assert command is not None
    command.make_context(f"pyxia {argv[1]}", argv[2:], resilient_parsing=False)


def test_the_site_builds_strict(tmp_path: Path) -> None:
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "python"), env.get("PYTHONPATH", "")) if p
    )
    env["NO_MKDOCS_2_WARNING"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site/configuration/index.html").read_text()
    # The flag tables are generated from the commands: a flag of each command is there.
    for flag in ("--cluster-secret-file", "--db-cache-size-mb", "--metadata", "--k8s-namespace"):
        assert flag in reference
    assert (
        "oxia_server_leader_write_latency_milliseconds"
        in (tmp_path / "site/metrics/index.html").read_text()
    )
