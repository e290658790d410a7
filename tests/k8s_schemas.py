"""Kubernetes JSON schemas for kubeconform, made from the API's OpenAPI document that the
``k8s.io/kubernetes`` Go module ships (``api/openapi-spec/swagger.json``), so the chart is
checked against a pinned Kubernetes version with nothing downloaded at test time: .ci/run
puts the module in Go's module cache (``go mod download k8s.io/kubernetes@KUBERNETES_VERSION``).

One file per kind, named as kubeconform's schema-location template below expects
(``{{ .ResourceKind }}{{ .KindSuffix }}.json``: ``deployment-apps-v1.json``,
``configmap-v1.json``), each the kind's definition with every definition it refers to. In the
strict flavour (kubeconform ``-strict``) objects with declared properties refuse others, as the
schemas kubeconform publishes do; int-or-string fields and quantities take both forms."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "1.34.2"
SCHEMA_LOCATION = "{{ .ResourceKind }}{{ .KindSuffix }}.json"
INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def openapi_document() -> Path | None:
    """The module's swagger.json in Go's module cache, or None when it is not there."""
    try:
        cache = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        cache = os.path.expanduser("~/go/pkg/mod")
    path = Path(cache) / f"k8s.io/kubernetes@v{KUBERNETES_VERSION}/api/openapi-spec/swagger.json"
    return path if path.is_file() else None


def _convert(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    """One OpenAPI v2 schema as a JSON schema (walking only the keys that hold schemas)."""
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string"):
        return dict(INT_OR_STRING)
    if isinstance(schema.get("$ref"), str):
        return {"$ref": schema["$ref"]}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes"):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, strict) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, strict)
        else:
            out[key] = value
    if strict and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _kind_suffix(group: str, version: str) -> str:
    return f"-{version}" if not group else f"-{group.split('.')[0].lower()}-{version}"


def write_schemas(swagger: Path, out: Path, kinds: set[tuple[str, str]], strict: bool) -> None:
    """Schemas for ``kinds`` (``(apiVersion, kind)`` pairs) into ``out``."""
    definitions: dict[str, Any] = json.loads(swagger.read_text())["definitions"]
    converted = {name: _convert(d, strict) for name, d in definitions.items()}
    converted[QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
    out.mkdir(parents=True, exist_ok=True)
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
            api_version = f"{group}/{version}" if group else version
            if (api_version, kind) not in kinds:
                continue
            schema = {"$ref": f"#/definitions/{name}", "definitions": converted}
            target = out / f"{kind.lower()}{_kind_suffix(group, version)}.json"
            target.write_text(json.dumps(schema))
