"""The Helm chart (deploy/charts/pyxia): ``helm lint``; ``helm template`` with the defaults,
with TLS, with the file metadata provider and a ServiceMonitor, validated by kubeconform in
strict mode against the schemas of a pinned Kubernetes version (tests/k8s_schemas.py); the
rendered cluster.yaml passes pyxia's own validation; every container's arguments parse as the
pyxia command they run; the coordinator's Role grants exactly what the kubernetes metadata
provider uses, on the names it uses.

helm and kubeconform come from the Go module proxy (.ci/run installs them with ``go install``;
they are looked up on PATH, then in ``$(go env GOPATH)/bin``). Without them, or without the
k8s.io/kubernetes module in Go's module cache, the test is skipped outside CI and fails in CI
(``CI`` set), so CI can never pass by skipping it."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from k8s_schemas import KUBERNETES_VERSION, SCHEMA_LOCATION, openapi_document, write_schemas
from pyxia.cli import main as pyxia_cli
from pyxia.config import parse_cluster_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/charts/pyxia"
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "tls": ["--set", "tls.enabled=true", "--set", "tls.secretName=pyxia-tls"],
    "file-metadata": [
        "--set",
        "coordinator.metadata=file",
        "--set",
        "coordinator.replicas=1",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "clusterSecret.existingSecret=mine",
        "--set",
        "dataServer.replicas=5",
    ],
}
# Custom resources: not in the Kubernetes API's schemas (checked by hand below).
CUSTOM_KINDS = {"ServiceMonitor"}


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:
        gopath = subprocess.run(
            ["go", "env", "GOPATH"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    candidate = Path(gopath) / "bin" / name
    return str(candidate) if candidate.is_file() else None


HELM, KUBECONFORM, SWAGGER = _tool("helm"), _tool("kubeconform"), openapi_document()
MISSING = [
    what
    for what, found in (
        ("helm", HELM),
        ("kubeconform", KUBECONFORM),
        (f"k8s.io/kubernetes@v{KUBERNETES_VERSION}", SWAGGER),
    )
    if found is None
]
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI must check the chart: {', '.join(MISSING)} not installed (.ci/run)")
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"not installed: {', '.join(MISSING)} (see .ci/run)"
)


def _helm(*args: str) -> str:
    assert HELM is not None
    result = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _render(values: list[str]) -> str:
    return _helm(
        "template",
        "pyxia",
        str(CHART),
        "--namespace",
        "store",
        "--kube-version",
        KUBERNETES_VERSION,
        *values,
    )


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, str, list[dict[str, Any]]]:
    text = _render(VALUE_SETS[request.param])
    docs = [d for d in yaml.safe_load_all(text) if d]
    return request.param, text, docs


def _one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and (
            component is None
            or d["metadata"]["labels"].get("app.kubernetes.io/component") == component
        )
    ]
    assert len(found) == 1, f"{len(found)} {kind} {component or ''}"
    return found[0]


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint(values: str) -> None:
    _helm("lint", "--strict", str(CHART), "--kube-version", KUBERNETES_VERSION, *VALUE_SETS[values])


def test_the_rendered_manifests_match_the_kubernetes_schemas(
    rendered: tuple[str, str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, text, docs = rendered
    assert SWAGGER is not None and KUBECONFORM is not None
    kinds = {(d["apiVersion"], d["kind"]) for d in docs if d["kind"] not in CUSTOM_KINDS}
    write_schemas(SWAGGER, tmp_path / "schemas", kinds, strict=True)
    result = subprocess.run(
        [
            KUBECONFORM,
            "-strict",
            "-summary",
            "-kubernetes-version",
            KUBERNETES_VERSION,
            "-schema-location",
            str(tmp_path / "schemas" / SCHEMA_LOCATION),
            "-skip",
            ",".join(sorted(CUSTOM_KINDS)),
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
    assert "Invalid: 0, Errors: 0" in result.stdout, result.stdout


def test_kubeconform_refuses_a_broken_manifest(tmp_path: Path) -> None:
    """The positive control: a field the schema does not know fails the check."""
    assert SWAGGER is not None and KUBECONFORM is not None
    write_schemas(SWAGGER, tmp_path, {("v1", "ConfigMap")}, strict=True)
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\nbogus: 1\n"
    result = subprocess.run(
        [KUBECONFORM, "-strict", "-schema-location", str(tmp_path / SCHEMA_LOCATION)],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stdout


def test_the_rendered_cluster_config_is_valid(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    _, _, docs = rendered
    config_map = _one(docs, "ConfigMap")
    config = parse_cluster_config(yaml.safe_load(config_map["data"]["cluster.yaml"]))
    servers = _one(docs, "StatefulSet")["spec"]["replicas"]
    assert len(config.servers) == servers
    assert {s.internal for s in config.servers} == {
        f"pyxia-server-{i}.pyxia-server.store.svc:6649" for i in range(servers)
    }
    assert [n.name for n in config.namespaces] == ["default", "tso"]


def _parse_args(argv: list[str], tmp_path: Path) -> click.Context:
    """Parses a container's arguments as pyxia does (files it requires are made first)."""
    for flag in ("--cluster-config", "--cluster-secret-file"):
        if flag in argv:
            path = tmp_path / Path(argv[argv.index(flag) + 1]).name
            path.write_text("")
            argv[argv.index(flag) + 1] = str(path)
    group = pyxia_cli
    assert isinstance(group, click.Group)
    command = group.get_command(click.Context(group), argv[0])
    assert command is not None
    return command.make_context(f"pyxia {argv[0]}", argv[1:], resilient_parsing=False)


def test_the_containers_run_real_pyxia_commands(
    rendered: tuple[str, str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    name, _, docs = rendered
    server = _one(docs, "StatefulSet")["spec"]["template"]["spec"]
    coordinator = _one(docs, "Deployment", "coordinator")["spec"]["template"]["spec"]
    s = _parse_args(list(server["containers"][0]["args"]), tmp_path)
    c = _parse_args(list(coordinator["containers"][0]["args"]), tmp_path)
    # Each process proves membership with the secret the init container made private.
    assert s.params["cluster_secret_file"].name == "cluster.secret"
    assert c.params["cluster_secret_file"].name == "cluster.secret"
    for spec in (server, coordinator):
        init = spec["initContainers"][0]
        assert init["command"][:3] == ["install", "-m", "0600"]
        assert spec["securityContext"]["runAsNonRoot"] is True
    assert s.params["advertised_internal_addr"].endswith(".pyxia-server.store.svc:6649")
    # a coordinator that does not lead points admin clients at the leader's pod
    assert c.params["admin_advertised_address"] == "$(POD_IP):6651"
    env = {e["name"]: e for e in coordinator["containers"][0]["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    probe = server["containers"][0]["readinessProbe"]
    if name == "tls":
        assert s.params["internal_tls_client_auth"] is True
        assert probe["exec"]["command"][:2] == ["pyxia", "health"]
        assert c.params["peer_tls_trusted_ca_file"] is not None
    else:
        assert probe["grpc"]["port"] == 6648
    if name == "file-metadata":
        assert c.params["metadata"] == "file"
        assert coordinator["automountServiceAccountToken"] is False
    else:
        assert c.params["metadata"] == "kubernetes"
        assert coordinator["automountServiceAccountToken"] is True
    assert server["automountServiceAccountToken"] is False


def test_the_role_is_what_the_kubernetes_provider_uses(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    name, _, docs = rendered
    roles = [d for d in docs if d["kind"] == "Role"]
    if name == "file-metadata":
        assert not roles
        return
    pytest.importorskip("kubernetes", reason="the kubernetes extra is not installed")
    from pyxia.coordinator.metadata.kubernetes import KubernetesMetadataProvider

    defaults = inspect.signature(KubernetesMetadataProvider).parameters
    status, lease = defaults["status_name"].default, defaults["lease_name"].default
    (role,) = roles
    grants = {
        (rule["apiGroups"][0], resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert grants == {
        ("", "configmaps", "get", (status,)),
        ("", "configmaps", "update", (status,)),
        ("", "configmaps", "create", ()),
        ("coordination.k8s.io", "leases", "get", (lease,)),
        ("coordination.k8s.io", "leases", "update", (lease,)),
        ("coordination.k8s.io", "leases", "create", ()),
    }
    binding = _one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == "store"


def test_disruption_budgets_and_metrics(
    rendered: tuple[str, str, list[dict[str, Any]]],
) -> None:
    name, _, docs = rendered
    budgets = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {"server", "coordinator"}
    annotations = _one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    if name == "file-metadata":
        monitor = _one(docs, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        # The ServiceMonitor selects Services that have a port named metrics.
        ports = {p["name"] for d in docs if d["kind"] == "Service" for p in d["spec"]["ports"]}
        assert "metrics" in ports
    volumes = {
        t["metadata"]["name"]: t["spec"]["resources"]["requests"]["storage"]
        for t in _one(docs, "StatefulSet")["spec"]["volumeClaimTemplates"]
    }
    assert volumes == {"data": "10Gi", "wal": "5Gi"}


def test_a_replication_factor_above_the_servers_is_refused() -> None:
    assert HELM is not None
    result = subprocess.run(
        [
            HELM,
            "template",
            "pyxia",
            str(CHART),
            "--kube-version",
            KUBERNETES_VERSION,
            "--set",
            "dataServer.replicas=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "replicationFactor 3 exceeds dataServer.replicas 1" in result.stderr
