"""MkDocs hooks of pyxia's docs site (mkdocs.yml ``hooks:``): what is generated from the code
so that the site cannot drift from it.

- ``<!-- pyxia:metrics -->`` in a page becomes the table of every Prometheus metric pyxia
  registers (name, type, unit, labels, help), from ``pyxia.metrics.metric_reference``
  (:func:`metrics_table`).
- The CLI flag tables come from the click commands themselves through the ``mkdocs-click``
  extension (``::: mkdocs-click`` blocks in docs/configuration.md).
- ``changelog.md`` is the repository's CHANGELOG.md, its ``docs/`` links made site-relative.
- Pages that other work adds later (``OPTIONAL_PAGES``) stay in the nav only while their file
  exists, and any page under docs/ that the nav does not list is appended under "More", so a
  new page is never left out of the site.

Run from the repository root (``mkdocs build --strict``); ``python/`` is put on ``sys.path``
when pyxia is not installed, so a checkout builds its own reference.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
METRICS_MARKER = "<!-- pyxia:metrics -->"
OPTIONAL_PAGES = ("operations.md", "retention.md")


def _import_pyxia() -> None:
    try:
        importlib.import_module("pyxia")
    except ImportError:
        sys.path.insert(0, str(ROOT / "python"))
        importlib.import_module("pyxia")


def metrics_table() -> str:
    """A Markdown table of every metric pyxia exports (Oxia's, gRPC's and its own), by name."""
    _import_pyxia()
    from pyxia.metrics import metric_reference

    lines = ["| metric | type | unit | labels | meaning |", "|---|---|---|---|---|"]
    for name, kind, unit, labels, doc in metric_reference():
        shown = ", ".join(f"`{label}`" for label in labels) or "-"
        lines.append(
            f"| `{name}` | {kind} | {unit} | {shown} | {doc.replace('|', chr(92) + '|')} |"
        )
    return "\n".join(lines)


def on_config(config: Any) -> Any:
    docs_dir = Path(config["docs_dir"])
    nav = config.get("nav")
    if nav:
        config["nav"] = _prune(nav, docs_dir)
        listed = set(_nav_files(config["nav"]))
        extra = sorted(
            str(p.relative_to(docs_dir))
            for p in docs_dir.rglob("*.md")
            if str(p.relative_to(docs_dir)) not in listed
        )
        if extra:
            config["nav"].append({"More": extra})
    return config


def _prune(nav: list[Any], docs_dir: Path) -> list[Any]:
    kept: list[Any] = []
    for item in nav:
        target = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(target, list):
            kept.append({next(iter(item)): _prune(target, docs_dir)})
        elif (
            isinstance(target, str)
            and target in OPTIONAL_PAGES
            and not (docs_dir / target).exists()
        ):
            continue
        else:
            kept.append(item)
    return kept


def _nav_files(nav: list[Any]) -> list[str]:
    out: list[str] = []
    for item in nav:
        target = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(target, list):
            out.extend(_nav_files(target))
        elif isinstance(target, str):
            out.append(target)
    return out


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    changelog = (ROOT / "CHANGELOG.md").read_text().replace("](docs/", "](")
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if METRICS_MARKER in markdown:
        markdown = markdown.replace(METRICS_MARKER, metrics_table())
    return markdown
