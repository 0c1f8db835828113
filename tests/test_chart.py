"""The Helm chart: lint, render a matrix of values with Helm 3 (and Helm 4 when built),
validate every object against the Kubernetes schemas of two minor versions and the
Prometheus Operator CRDs, reject bad values with a message naming them, and check
that the agent accepts the config file the chart renders.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from exporter import rules
from exporter.config import (
    SELECTOR_REQUIREMENT,
    ConfigError,
    DiscoveryMode,
    ExternalTarget,
    MetricsAuth,
    Settings,
    load_settings,
    normalise_ip,
    split_listen_address,
)
from exporter.tls import TlsFiles

from .conftest import ROOT

CHART = ROOT / "chart"
HELM3 = ROOT / ".cache" / "bin" / "helm3"
HELM4 = ROOT / ".cache" / "bin" / "helm4"
CRDS = ROOT.parent / "shared" / "crds"
KUBERNETES_VERSIONS = ["1.31.0", "1.35.0"]
NAMESPACE = "kube-prometheus"


def sets(*values: str) -> list[str]:
    """--set arguments; a value starting with json: goes through --set-json."""
    args: list[str] = []
    for value in values:
        args += ["--set-json", value[5:]] if value.startswith("json:") else ["--set", value]
    return args


TLS = sets("metrics.tls.enabled=true", "metrics.tls.secretName=npe-tls")
MONITORS = sets("serviceMonitor.enabled=true", "podMonitor.enabled=true")
CLIENT_AUTH = sets(
    "metrics.tls.clientAuth.enabled=true",
    "metrics.tls.clientAuth.clientSecretName=prometheus-client",
)
AUTH = sets("metrics.auth.kubernetes=true", "podMonitor.bearerTokenSecret.name=prometheus-token")
RAW = sets("icmp.mode=raw")
FILE_DISCOVERY = sets(
    "discovery.mode=file",
    'json:discovery.peers=[{"name":"node-a","ipAddress":"10.0.0.1"},'
    '{"name":"node-b","ipAddress":"fd00::2"}]',
)
OWN_TLS_CONFIG = {
    "ca": {"configMap": {"name": "my-ca", "key": "ca.pem"}},
    "serverName": "npe.example",
}

MATRIX: dict[str, list[str]] = {
    "defaults": [],
    "textfile": sets("output=textfile"),
    "both outputs": sets("output=both", "textfile.hostPath=/run/textfile"),
    "textfile in node-exporter's directory, a set-based selector": sets(
        "output=textfile",
        "textfile.hostPath=/var/lib/node_exporter/textfile_collector",
        'json:discovery.nodeSelector="topology.kubernetes.io/zone in (a, b),!example.com/drain"',
        "json:probe.interval=0.02",
    ),
    "raw mode": sets("icmp.mode=raw"),
    "auto mode with ping_group_range init": sets("icmp.mode=auto", "icmp.setPingGroupRange=true"),
    "file discovery": FILE_DISCOVERY,
    "all monitors off": sets(
        "serviceMonitor.enabled=false",
        "podMonitor.enabled=false",
        "prometheusRule.enabled=false",
        "dashboards.enabled=false",
    ),
    "monitors, rules and dashboards on": sets(
        "serviceMonitor.enabled=true",
        "podMonitor.enabled=true",
        "prometheusRule.enabled=true",
        "dashboards.enabled=true",
        "serviceMonitor.labels.release=kube-prometheus-stack",
        "podMonitor.labels.release=kube-prometheus-stack",
        "prometheusRule.labels.release=kube-prometheus-stack",
    ),
    "external targets": sets(
        'json:externalTargets=[{"host":"10.1.2.3","name":"gateway"},'
        '{"host":"dns.example.internal"}]'
    ),
    "overrides": sets(
        "fullnameOverride=npe",
        "namespaceOverride=monitoring",
        "image.digest=sha256:" + "a" * 64,
        "priorityClassName=system-node-critical",
        'json:extraArgs=["--log-level","debug"]',
        'json:extraEnv=[{"name":"FOO","value":"bar"}]',
        'json:imagePullSecrets=[{"name":"registry"}]',
    ),
    # The endpoint's protection (chart README, "What is exposed").
    "metrics on every address": sets("metrics.bindHostIP=false"),
    "tls": [*TLS, *MONITORS, *sets("metrics.tls.serverName=metrics.example.internal")],
    "tls with client certificates, raw mode": [*TLS, *MONITORS, *CLIENT_AUTH, *RAW],
    "tls, a client ca of its own, own tlsConfig": [
        *TLS,
        *MONITORS,
        *sets(
            "metrics.tls.clientAuth.enabled=true",
            "metrics.tls.clientAuth.caSecretName=npe-client-ca",
            f"json:serviceMonitor.tlsConfig={json.dumps(OWN_TLS_CONFIG)}",
            f"json:podMonitor.tlsConfig={json.dumps(OWN_TLS_CONFIG)}",
        ),
    ],
    "kubernetes auth over tls, file discovery": [*TLS, *MONITORS, *AUTH, *FILE_DISCOVERY],
    "kubernetes auth without tls, allowed, token secrets": [
        *MONITORS,
        *AUTH,
        *sets(
            "metrics.auth.allowInsecure=true",
            "serviceMonitor.bearerTokenSecret.name=prometheus-token",
            "serviceMonitor.bearerTokenSecret.key=sa-token",
        ),
    ],
}


def helm_binaries() -> list[Path]:
    found = [h for h in (HELM3, HELM4) if h.exists()]
    if HELM3 not in found:
        pytest.skip("Helm 3 is not built: run scripts/install-tools.sh (make deps does)")
    return found


def helm_template(args: list[str], helm: Path = HELM3, chart: Path = CHART) -> str:
    """`helm template` of the chart into the kube-prometheus namespace; the manifests."""
    result = subprocess.run(
        [
            str(helm),
            "template",
            "npe",
            str(chart),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBERNETES_VERSIONS[-1],
            *args,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(args: list[str], helm: Path = HELM3) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(helm_template(args, helm)) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def crd_schemas() -> dict[str, dict[str, Any]]:
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        schemas[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return schemas


def test_lint_strict() -> None:
    helm_binaries()
    result = subprocess.run(
        [str(HELM3), "lint", "--strict", str(CHART)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", list(MATRIX))
def test_render_and_validate(case: str) -> None:
    schemas = crd_schemas() if CRDS.is_dir() else {}
    for helm in helm_binaries():
        objects = render(MATRIX[case], helm)
        assert by_kind(objects, "DaemonSet")
        for obj in objects:
            where = f"{case}: {obj['kind']}/{obj['metadata']['name']} ({helm.name})"
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                if not schemas:
                    pytest.skip(f"no CRDs at {CRDS}")
                # Not jsonschema.validate(): that first checks the schema itself, and the
                # CRDs use Go regex syntax ("^(?i)…") that Python's re rejects.
                errors = list(jsonschema.Draft7Validator(schemas[obj["kind"]]).iter_errors(obj))
                assert not errors, f"{where}: {errors[0].message} at {list(errors[0].path)}"
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    raise AssertionError(
                        f"{where} invalid for Kubernetes {version}: {exc.message}"
                    ) from None


# What the downward API gives the agent's environment in the tests: an IPv4 and an IPv6
# node (status.hostIP is the node's primary address).
HOST_IPS = ["10.0.0.1", "fd00::1"]


def agent_container(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DaemonSet's pod spec and its agent container."""
    (daemonset,) = by_kind(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    return spec, agent


def container_environment(container: dict[str, Any], host_ip: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: fieldRefs resolved and
    $(NAME) expanded from the variables before it."""
    fields = {"spec.nodeName": "node-a", "status.hostIP": host_ip, "status.podIP": host_ip}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"]
            )
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.fixture(scope="module")
def tls_secret(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The data of a kubernetes.io/tls Secret: a self-signed certificate, its own CA."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=npe", "-keyout", str(folder / "k"), "-out", str(folder / "c")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cert = (folder / "c").read_bytes()
    return {"tls.crt": cert, "tls.key": (folder / "k").read_bytes(), "ca.crt": cert}


def mount_locally(
    objects: list[dict[str, Any]], secret: dict[str, bytes], folder: Path
) -> dict[str, Path]:
    """The agent container's ConfigMap and Secret volumes as local folders (every Secret
    holding ``secret``'s keys): {mountPath: folder}."""
    spec, agent = agent_container(objects)
    configmaps = {o["metadata"]["name"]: o["data"] for o in by_kind(objects, "ConfigMap")}
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {}
    for mount in agent["volumeMounts"]:
        volume = volumes[mount["name"]]
        local = folder / mount["name"]
        if "configMap" in volume:
            data = {k: v.encode() for k, v in configmaps[volume["configMap"]["name"]].items()}
        elif "secret" in volume:
            data = dict(secret)
        else:
            continue  # a host directory: not the agent's configuration
        items = volume.get("configMap", volume.get("secret", {})).get("items")
        if items:
            data = {item["path"]: data[item["key"]] for item in items}
        local.mkdir()
        for name, content in data.items():
            (local / name).write_bytes(content)
        mounts[mount["mountPath"]] = local
    return mounts


def local_path(path: Path, mounts: dict[str, Path]) -> Path:
    """A path in the container as the local file behind its volume mount."""
    for mount_path, local in mounts.items():
        if path.is_relative_to(mount_path):
            return local / path.relative_to(mount_path)
    raise AssertionError(f"{path} is on no volume of the agent container")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("case", list(MATRIX))
def test_the_agent_accepts_the_rendered_config(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls_secret: dict[str, bytes]
) -> None:
    """The agent's settings from the container as rendered (its args, the config file on
    its volume, its environment from the downward API) load in the agent's own settings
    model, and the certificate files it is pointed at are where the Secret's keys are
    mounted and load as a server context."""
    args = MATRIX[case]
    for helm in helm_binaries():
        objects = render(args, helm)
        spec, agent = agent_container(objects)
        for host_ip in HOST_IPS:
            folder = tmp_path / f"{helm.name}-{host_ip.replace(':', '_')}"
            folder.mkdir()
            mounts = mount_locally(objects, tls_secret, folder)
            argv = [
                f"--config={local_path(Path(a.removeprefix('--config=')), mounts)}"
                if a.startswith("--config=")
                else a
                for a in agent["args"]
            ]
            for name, value in container_environment(agent, host_ip).items():
                monkeypatch.setenv(name, value)
            settings = load_settings(argv, dict(os.environ))  # as cli.main passes it

            on_host_ip = spec["hostNetwork"] and "metrics.bindHostIP=false" not in args
            wanted = (host_ip, 9798) if on_host_ip else ("", 9798)
            assert split_listen_address(settings.listen_address) == wanted, settings.listen_address
            assert settings.node_name == "node-a"
            assert settings.metrics_auth == (
                MetricsAuth.KUBERNETES
                if "metrics.auth.kubernetes=true" in args
                else MetricsAuth.NONE
            )
            assert (settings.tls_cert_file is not None) == ("metrics.tls.enabled=true" in args)
            assert (settings.tls_client_ca_file is not None) == (
                "metrics.tls.clientAuth.enabled=true" in args
            )
            if settings.tls_cert_file and settings.tls_key_file:
                ca = settings.tls_client_ca_file
                TlsFiles(
                    local_path(settings.tls_cert_file, mounts),
                    local_path(settings.tls_key_file, mounts),
                    local_path(ca, mounts) if ca else None,
                )  # raises ConfigError if they do not load
            if settings.discovery is DiscoveryMode.FILE:
                from exporter.discovery.file import parse_peers

                peers_file = local_path(settings.peers_file, mounts)
                nodes = parse_peers(peers_file.read_bytes(), peers_file)
                assert [n.name for n in nodes] == ["node-a", "node-b"]


def pod_security(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (daemonset,) = by_kind(objects, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    (agent,) = [c for c in spec["containers"] if c["name"] == "agent"]
    return spec["securityContext"], agent["securityContext"]


def test_least_privilege_per_mode() -> None:
    helm_binaries()
    pod, container = pod_security(render([]))
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for mode in ("raw", "auto"):
        pod, container = pod_security(render(["--set", f"icmp.mode={mode}"]))
        assert pod["runAsUser"] == 0
        assert container["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
        assert container["readOnlyRootFilesystem"] is True
    (daemonset,) = by_kind(render([]), "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert "initContainers" not in spec  # the privileged init container is opt-in
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    resources = spec["containers"][0]["resources"]
    assert "cpu" not in resources["limits"] and "memory" in resources["limits"]


def test_rbac_only_reads_nodes_and_file_mode_has_none() -> None:
    helm_binaries()
    objects = render([])
    (role,) = by_kind(objects, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    file_mode = render(["--set", "discovery.mode=file"])
    assert not by_kind(file_mode, "ClusterRole") and not by_kind(file_mode, "ClusterRoleBinding")
    (account,) = by_kind(file_mode, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_bind_host_ip_sets_the_listen_address_from_the_downward_api() -> None:
    """By default the agent listens on status.hostIP only; the probes name no host, so
    the kubelet uses the pod IP: the node's own address under hostNetwork, the one
    the agent listens on."""
    for helm in helm_binaries():
        _, agent = agent_container(render(sets("port=9100"), helm))
        env = env_of(agent)
        assert env["HOST_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        assert env["NODE_PING_LISTEN_ADDRESS"] == "$(HOST_IP):9100"
        names = [e["name"] for e in agent["env"]]
        assert names.index("HOST_IP") < names.index("NODE_PING_LISTEN_ADDRESS")  # expansion order
        for probe in ("livenessProbe", "readinessProbe"):
            assert "host" not in agent[probe]["httpGet"]
            assert agent[probe]["httpGet"]["port"] == "metrics"
        for off in ("metrics.bindHostIP=false", "hostNetwork=false"):  # every address / pod IP
            _, agent = agent_container(render(sets(off), helm))
            assert not {"HOST_IP", "NODE_PING_LISTEN_ADDRESS"} & set(env_of(agent)), off


def test_tls_mounts_the_secret_and_probes_https() -> None:
    for helm in helm_binaries():
        objects = render([*TLS, *MONITORS], helm)
        spec, agent = agent_container(objects)
        (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert volume["secret"] == {"secretName": "npe-tls", "defaultMode": 0o440}
        (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "tls"]
        assert mount == {"name": "tls", "mountPath": "/tls", "readOnly": True}
        # uid/gid 65534 reads the 0440 files through the pod's fsGroup
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"] == 65534
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert agent[probe]["httpGet"] == {"path": path, "port": "metrics", "scheme": "HTTPS"}
        config = yaml.safe_load(rendered_config(helm_template([*TLS], helm)))
        assert (config["tls_cert_file"], config["tls_key_file"]) == ("/tls/tls.crt", "/tls/tls.key")
        assert "tls_client_ca_file" not in config
        # root (raw mode) reads them as their owner: no fsGroup needed
        spec, _ = agent_container(render([*TLS, *RAW], helm))
        assert "fsGroup" not in spec["securityContext"]
        # and without TLS: plain HTTP probes, no Secret, no fsGroup
        spec, agent = agent_container(render([], helm))
        assert agent["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
        assert [v["name"] for v in spec["volumes"]] == ["config"]
        assert "fsGroup" not in spec["securityContext"]


def test_client_certificates_keep_https_probes() -> None:
    """The kubelet has no client certificate, and the agent asks for one only on
    /metrics: with clientAuth the probes stay HTTPS GETs of the health endpoints.
    The client CA is the serving Secret's ca.crt, or that of a Secret of its own."""
    same_ca = MATRIX["tls with client certificates, raw mode"]
    own_ca = MATRIX["tls, a client ca of its own, own tlsConfig"]
    for helm in helm_binaries():
        _, agent = agent_container(render(same_ca, helm))
        for probe in ("livenessProbe", "readinessProbe"):
            assert agent[probe]["httpGet"]["scheme"] == "HTTPS"
            assert "tcpSocket" not in agent[probe]
        config = yaml.safe_load(rendered_config(helm_template(same_ca, helm)))
        assert config["tls_client_ca_file"] == "/tls/ca.crt"
        spec, agent = agent_container(render(own_ca, helm))
        (volume,) = [v for v in spec["volumes"] if v["name"] == "tls-client-ca"]
        assert volume["secret"] == {
            "secretName": "npe-client-ca",
            "defaultMode": 0o440,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        mount = {"name": "tls-client-ca", "mountPath": "/tls-client-ca", "readOnly": True}
        assert mount in agent["volumeMounts"]
        config = yaml.safe_load(rendered_config(helm_template(own_ca, helm)))
        assert config["tls_client_ca_file"] == "/tls-client-ca/ca.crt"


def endpoint_security(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """How a monitor's endpoint connects: its scheme, tlsConfig and token."""
    (monitor,) = by_kind(objects, kind)
    field = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
    (endpoint,) = monitor["spec"][field]
    keys = ("scheme", "tlsConfig", "bearerTokenFile", "authorization", "bearerTokenSecret")
    return {k: endpoint[k] for k in keys if k in endpoint}


CA = {"ca": {"secret": {"name": "npe-tls", "key": "ca.crt"}}}
CLIENT_CERT = {
    "cert": {"secret": {"name": "prometheus-client", "key": "tls.crt"}},
    "keySecret": {"name": "prometheus-client", "key": "tls.key"},
}
SERVICE_NAME = "npe-node-ping-exporter.kube-prometheus.svc"
TOKEN_FILE = {"bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}


def token_secret(key: str = "token") -> dict[str, Any]:
    credentials = {"name": "prometheus-token", "key": key}
    return {"authorization": {"type": "Bearer", "credentials": credentials}}


# values -> (ServiceMonitor endpoint, PodMonitor endpoint): scheme, tlsConfig and token
MONITOR_MODES: list[tuple[list[str], dict[str, Any], dict[str, Any]]] = [
    (MONITORS, {"scheme": "http"}, {"scheme": "http"}),
    (
        MATRIX["tls"],
        {"scheme": "https", "tlsConfig": {**CA, "serverName": "metrics.example.internal"}},
        {"scheme": "https", "tlsConfig": {**CA, "serverName": "metrics.example.internal"}},
    ),
    (  # the default serverName: the Service's name, whichever monitor
        [*TLS, *MONITORS],
        {"scheme": "https", "tlsConfig": {**CA, "serverName": SERVICE_NAME}},
        {"scheme": "https", "tlsConfig": {**CA, "serverName": SERVICE_NAME}},
    ),
    (
        [*TLS, *MONITORS, *sets("fullnameOverride=npe", "namespaceOverride=monitoring")],
        {"scheme": "https", "tlsConfig": {**CA, "serverName": "npe.monitoring.svc"}},
        {"scheme": "https", "tlsConfig": {**CA, "serverName": "npe.monitoring.svc"}},
    ),
    (
        MATRIX["tls with client certificates, raw mode"],
        {"scheme": "https", "tlsConfig": {**CA, "serverName": SERVICE_NAME, **CLIENT_CERT}},
        {"scheme": "https", "tlsConfig": {**CA, "serverName": SERVICE_NAME, **CLIENT_CERT}},
    ),
    (
        MATRIX["tls, a client ca of its own, own tlsConfig"],
        {"scheme": "https", "tlsConfig": OWN_TLS_CONFIG},
        {"scheme": "https", "tlsConfig": OWN_TLS_CONFIG},
    ),
    (
        MATRIX["kubernetes auth over tls, file discovery"],
        {"scheme": "https", "tlsConfig": {**CA, "serverName": SERVICE_NAME}, **TOKEN_FILE},
        {"scheme": "https", "tlsConfig": {**CA, "serverName": SERVICE_NAME}, **token_secret()},
    ),
    (
        MATRIX["kubernetes auth without tls, allowed, token secrets"],
        {"scheme": "http", **token_secret("sa-token")},
        {"scheme": "http", **token_secret()},
    ),
]


@pytest.mark.parametrize("index", range(len(MONITOR_MODES)))
def test_monitors_connect_as_the_agent_serves(index: int) -> None:
    args, service_monitor, pod_monitor = MONITOR_MODES[index]
    for helm in helm_binaries():
        objects = render(args, helm)
        assert endpoint_security(objects, "ServiceMonitor") == service_monitor, helm.name
        assert endpoint_security(objects, "PodMonitor") == pod_monitor, helm.name


def auth_delegator_bindings(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o
        for o in by_kind(objects, "ClusterRoleBinding")
        if o["roleRef"]["name"] == "system:auth-delegator"
    ]


def test_auth_delegator_binding_only_with_kubernetes_auth() -> None:
    """metrics.auth.kubernetes binds the agent's ServiceAccount to system:auth-delegator
    (create tokenreviews and subjectaccessreviews) and mounts its token, in file
    discovery mode too (which otherwise has neither); nothing else has the binding."""
    for helm in helm_binaries():
        for case in MATRIX:
            bindings = auth_delegator_bindings(render(MATRIX[case], helm))
            assert bool(bindings) == ("metrics.auth.kubernetes=true" in MATRIX[case]), case
        objects = render([*TLS, *AUTH, *FILE_DISCOVERY], helm)
        (binding,) = auth_delegator_bindings(objects)
        assert binding["metadata"]["name"] == "npe-node-ping-exporter-auth-delegator"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:auth-delegator",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "npe-node-ping-exporter", "namespace": NAMESPACE}
        ]
        assert not by_kind(objects, "ClusterRole")  # file mode: still no access to nodes
        (account,) = by_kind(objects, "ServiceAccount")
        assert account["automountServiceAccountToken"] is True
        spec, _ = agent_container(objects)
        assert spec["automountServiceAccountToken"] is True
        # both bindings side by side in kubernetes mode, none with rbac.create=false
        objects = render([*TLS, *AUTH], helm)
        assert len(by_kind(objects, "ClusterRoleBinding")) == 2
        assert not by_kind(render([*TLS, *AUTH, "--set", "rbac.create=false"], helm),
                           "ClusterRoleBinding")  # fmt: skip


def render_notes(args: list[str], helm: Path, tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it (helm template leaves it out): rendered on a
    copy of the chart where it is a named template, printed through a ConfigMap."""
    chart = tmp_path / f"chart-{helm.name}"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        notes = chart / "templates" / "NOTES.txt"
        (chart / "templates" / "_notes.tpl").write_text(
            '{{- define "test.notes" -}}\n' + notes.read_text() + "{{- end }}\n"
        )
        notes.unlink()
        (chart / "templates" / "notes.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
            'data: {notes: {{ include "test.notes" . | toJson }}}\n'
        )
    objects = [d for d in yaml.safe_load_all(helm_template(args, helm, chart)) if d]
    (configmap,) = [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "notes"]
    return str(configmap["data"]["notes"])


def test_notes_say_what_is_exposed(tmp_path: Path) -> None:
    for helm in helm_binaries():
        notes = " ".join(render_notes([], helm, tmp_path).split())
        assert "port 9798 (/metrics, /healthz, /readyz) on each node's own address" in notes
        assert "over plain HTTP" in notes
        assert "every node's name and InternalIP and the loss and RTT between them" in notes
        assert "To protect it: metrics.tls.enabled=true" in notes
        assert "NetworkPolicy does not apply to hostNetwork pods" in notes
        notes = " ".join(render_notes(sets("metrics.bindHostIP=false"), helm, tmp_path).split())
        assert "on EVERY address of every node, public ones too" in notes
        notes = " ".join(render_notes(MATRIX["tls"], helm, tmp_path).split())
        assert "over HTTPS with the certificate in Secret npe-tls." in notes
        assert "/metrics needs no credentials" in notes
        assert "To require authorization too: metrics.auth.kubernetes=true" in notes
        notes = " ".join(
            render_notes(MATRIX["kubernetes auth over tls, file discovery"], helm, tmp_path).split()
        )
        assert "over HTTPS with the certificate in Secret npe-tls" in notes
        assert "only a bearer token that the API server accepts" in notes
        assert "npe-node-ping-exporter-auth-delegator" in notes
        assert "To protect it" not in notes and "WARNING (metrics.auth" not in notes
        notes = " ".join(
            render_notes(MATRIX["kubernetes auth without tls, allowed, token secrets"], helm,
                         tmp_path).split()
        )  # fmt: skip
        assert "WARNING (metrics.auth.allowInsecure)" in notes


def test_monitors_carry_the_release_label_and_the_relabelings() -> None:
    helm_binaries()
    objects = render(MATRIX["monitors, rules and dashboards on"])
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["clusterIP"] == "None"
    for kind, endpoints in (("ServiceMonitor", "endpoints"), ("PodMonitor", "podMetricsEndpoints")):
        (monitor,) = by_kind(objects, kind)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"][endpoints]
        targets = {r.get("targetLabel") for r in endpoint["relabelings"]}
        assert {"instance", "job", "node"} <= targets
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not by_kind(render([]), "Service")


def rendered_groups(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = by_kind(objects, "PrometheusRule")
    return list(rule["spec"]["groups"])


def test_prometheus_rule_is_the_rendered_rules_file_with_overrides() -> None:
    """Defaults: exactly `node-ping-exporter rules`. Then the config, `for`, severity,
    thresholds and disabling, by value."""
    helm_binaries()
    rules_file = yaml.safe_load(rules.render())
    assert rendered_groups(render(["--set", "prometheusRule.enabled=true"])) == rules_file["groups"]
    first_alert = next(r["alert"] for g in rules_file["groups"] for r in g["rules"] if "alert" in r)
    first_threshold = next(
        r["record"]
        for g in rules_file["groups"]
        for r in g["rules"]
        if r.get("record", "").startswith("node_ping:threshold:")
    )
    threshold = first_threshold.removeprefix("node_ping:threshold:")
    config = {"seriesSelector": 'job="np",cluster="eu-1"', "lossWindow": "5m"}
    objects = render(
        [
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            f"prometheusRule.alerts.{first_alert}.for=17m",
            "--set",
            f"prometheusRule.alerts.{first_alert}.severity=critical",
            "--set-json",
            f"prometheusRule.thresholds.{threshold}=0.42",
            "--set-json",
            f"prometheusRule.config={json.dumps(config)}",
        ]
    )
    groups = rendered_groups(objects)
    expected = yaml.safe_load(rules.render(config))["groups"]
    for rule in (r for g in expected for r in g["rules"]):
        if rule.get("record") == first_threshold:
            rule["expr"] = "vector(0.42)"
        if rule.get("alert") == first_alert:
            rule["for"] = "17m"
            rule["labels"]["severity"] = "critical"
    assert groups == expected
    all_rules = [r for g in groups for r in g["rules"]]
    alert = next(r for r in all_rules if r.get("alert") == first_alert)
    assert alert["for"] == "17m" and alert["labels"]["severity"] == "critical"
    assert (
        next(r for r in all_rules if r.get("record") == first_threshold)["expr"] == "vector(0.42)"
    )
    groups = rendered_groups(
        render(
            [
                "--set",
                "prometheusRule.enabled=true",
                "--set",
                f"prometheusRule.alerts.{first_alert}.disabled=true",
            ]
        )
    )
    assert first_alert not in [r.get("alert") for g in groups for r in g["rules"]]


def test_textfile_output_selects_node_exporters_series_and_drops_agent_down() -> None:
    """With output textfile the series arrive through node-exporter (kube-prometheus-stack's
    job "node-exporter") and the agents are not scraped: the rules follow by default."""
    helm_binaries()
    args = ["--set", "prometheusRule.enabled=true", "--set", "output=textfile"]
    textfile = rules.render({"seriesSelector": 'job="node-exporter"'})
    expected = yaml.safe_load(textfile)["groups"]
    for group in expected:
        group["rules"] = [r for r in group["rules"] if r.get("alert") != "NodePingAgentDown"]
    assert rendered_groups(render(args)) == expected
    kept = render([*args, "--set", "prometheusRule.alerts.NodePingAgentDown.for=9m"])
    assert "NodePingAgentDown" in [
        r.get("alert") for g in rendered_groups(kept) for r in g["rules"]
    ]


def test_the_chart_knows_every_rules_setting() -> None:
    """values.schema.json's prometheusRule.config lists exactly the rules file's config."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["prometheusRule"]["properties"]["config"]["properties"]
    assert set(config) == set(rules.defaults())


def test_chart_copies_equal_the_sources() -> None:
    """dashboards/ and the rules file are the one source; the chart carries copies
    (make sync-chart)."""
    pairs = [
        (ROOT / "dashboards", CHART / "dashboards"),
        (rules.RULES_FILE.parent, CHART / "rules"),
    ]
    for source_dir, copy_dir in pairs:
        pattern = "*.yml" if source_dir == rules.RULES_FILE.parent else "*"
        source = {p.name: p.read_bytes() for p in source_dir.glob(pattern) if p.is_file()}
        copy = {p.name: p.read_bytes() for p in copy_dir.glob("*") if p.is_file()}
        assert copy == source, f"{copy_dir} differs from {source_dir}: run make sync-chart"


def test_dashboards_become_labelled_configmaps(tmp_path: Path) -> None:
    """Every dashboards/*.json becomes one ConfigMap for the Grafana sidecar (checked on a
    copy of the chart with one more dashboard, so the check holds whatever dashboards/ has)."""
    helm_binaries()
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    sample = {"title": "Sample", "uid": "npe-sample", "panels": [], "schemaVersion": 39}
    (chart / "dashboards" / "zz-sample.json").write_text(json.dumps(sample))
    files = sorted((chart / "dashboards").glob("*.json"))
    values = sets(
        "dashboards.enabled=true",
        "dashboards.folder=Net",
        "dashboards.label=my_dashboards",
        "dashboards.labelValue=yes",
        "dashboards.folderAnnotation=my_folder",
    )
    manifests = helm_template(values, chart=chart)
    objects = [d for d in yaml.safe_load_all(manifests) if d]
    dashboards = {
        next(iter(o["data"])): o
        for o in by_kind(objects, "ConfigMap")
        if o["metadata"]["labels"].get("my_dashboards") == "yes"
    }
    assert sorted(dashboards) == [p.name for p in files]
    for path in files:
        configmap = dashboards[path.name]
        assert configmap["metadata"]["annotations"] == {"my_folder": "Net"}
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())

    def sidecar_configmaps(args: list[str]) -> list[dict[str, Any]]:
        return [
            o
            for o in by_kind(render(args), "ConfigMap")
            if o["metadata"]["labels"].get("grafana_dashboard") == "1"
        ]

    default = sidecar_configmaps([])  # on by default, kube-prometheus-stack's sidecar label
    assert len(default) == len(files) - 1
    assert all("annotations" not in o["metadata"] for o in default)  # no folder asked
    assert {o["metadata"]["namespace"] for o in default} == {NAMESPACE}
    elsewhere = sidecar_configmaps(sets("dashboards.namespace=grafana"))
    assert {o["metadata"]["namespace"] for o in elsewhere} == {"grafana"}
    assert not sidecar_configmaps(sets("dashboards.enabled=false"))


def test_a_chart_version_bump_alone_restarts_no_agent(tmp_path: Path) -> None:
    """The pod template carries no chart or app version: a chart that changes only its
    version (and appVersion, with the image pinned) renders the same pod template, so
    the DaemonSet controller restarts nothing."""
    helm_binaries()
    bumped = tmp_path / "chart"
    shutil.copytree(CHART, bumped)
    chart_yaml = bumped / "Chart.yaml"
    meta = yaml.safe_load(chart_yaml.read_text())
    meta["version"], meta["appVersion"] = "99.0.0", "99.0.0"
    chart_yaml.write_text(yaml.safe_dump(meta))
    pinned = sets(f"image.tag={yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}")

    def pod_template(chart: Path) -> dict[str, Any]:
        objects = [d for d in yaml.safe_load_all(helm_template(pinned, chart=chart)) if d]
        (daemonset,) = by_kind(objects, "DaemonSet")
        return dict(daemonset["spec"]["template"])

    before, after = pod_template(CHART), pod_template(bumped)
    assert before == after
    assert "helm.sh/chart" not in before["metadata"]["labels"]
    # the objects themselves still say which chart made them
    objects = [d for d in yaml.safe_load_all(helm_template(pinned, chart=bumped)) if d]
    (daemonset,) = by_kind(objects, "DaemonSet")
    assert daemonset["metadata"]["labels"]["helm.sh/chart"] == "node-ping-exporter-99.0.0"


OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Service"}
SERVED = ["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
          "--api-versions", "monitoring.coreos.com/v1/PodMonitor",
          "--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]  # fmt: skip


@pytest.mark.parametrize(
    "args, kinds",
    [
        ([], set()),  # helm template sees no CRDs: nothing the cluster could refuse
        (SERVED, {"ServiceMonitor", "Service", "PrometheusRule"}),
        (["--api-versions", "monitoring.coreos.com/v1"],  # the group alone: every kind
         {"ServiceMonitor", "Service", "PrometheusRule"}),
        (["--api-versions", "monitoring.coreos.com/v1",  # a cluster with some of the CRDs
          "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
         {"ServiceMonitor", "Service"}),
        (sets("prometheusDiscovery=null"), set()),  # values from before it (--reuse-values)
        # auto leaves out a monitor that could not connect; true would fail the install
        ([*SERVED, *TLS, *sets("metrics.tls.clientAuth.enabled=true")], {"PrometheusRule"}),
        ([*SERVED, *sets("serviceMonitor.enabled=false", "podMonitor.enabled=auto",
                         "metrics.auth.kubernetes=true"), *TLS], {"PrometheusRule"}),
        ([*SERVED, *sets("output=textfile")], {"PrometheusRule"}),  # node-exporter scrapes
        ([*SERVED, *sets("output=both")], {"ServiceMonitor", "Service", "PrometheusRule"}),
        ([*SERVED, *sets("serviceMonitor.enabled=false", "podMonitor.enabled=auto")],
         {"PodMonitor", "PrometheusRule"}),
        ([*SERVED, *sets("serviceMonitor.enabled=false", "prometheusRule.enabled=false")], set()),
        (sets("serviceMonitor.enabled=true", "prometheusRule.enabled=true"),
         {"ServiceMonitor", "Service", "PrometheusRule"}),  # forced: e.g. CRDs come later
    ],
)  # fmt: skip
def test_operator_objects_where_the_cluster_serves_them(args: list[str], kinds: set[str]) -> None:
    """auto creates each Prometheus Operator object when its kind is served; true and
    false force it."""
    helm_binaries()
    objects = render(args)
    assert {o["kind"] for o in objects} & OPERATOR_KINDS == kinds


def test_notes_say_what_was_found_without_a_cluster(tmp_path: Path) -> None:
    """helm template has no cluster to look up: NOTES says the labels are the values'
    only, why there is no monitor, and how to run diagnose."""
    for helm in helm_binaries():
        notes = " ".join(render_notes([], helm, tmp_path).split())
        assert "No cluster to look at (helm template, or --dry-run without a server)" in notes
        assert ("No ServiceMonitor: helm template does not see monitoring.coreos.com/v1 "
                "ServiceMonitor: pass --api-versions monitoring.coreos.com/v1/ServiceMonitor, "
                "or serviceMonitor.enabled=true.") in notes  # fmt: skip
        assert "Nothing makes Prometheus scrape the agents" in notes
        assert "ConfigMaps in kube-prometheus labelled grafana_dashboard=1." in notes
        assert "No Grafana dashboard sidecar found" not in notes  # nothing was looked for
        assert "exec ds/npe-node-ping-exporter -- node-ping-exporter diagnose" in notes
        notes = " ".join(render_notes([*SERVED, *sets("serviceMonitor.labels.release=kps")],
                                      helm, tmp_path).split())  # fmt: skip
        assert ("ServiceMonitor kube-prometheus/npe-node-ping-exporter labelled release=kps (--api"
                "-versions names monitoring.coreos.com/v1 ServiceMonitor).") in notes  # fmt: skip
        assert "Nothing makes Prometheus scrape" not in notes and "WARNING" not in notes
        notes = " ".join(render_notes([*SERVED, *sets("podMonitor.enabled=true")], helm,
                                      tmp_path).split())  # fmt: skip
        assert "WARNING: a ServiceMonitor and a PodMonitor: every agent is scraped twice" in notes
        notes = " ".join(render_notes([*SERVED, *TLS, *sets("metrics.tls.clientAuth.enabled=true")],
                                      helm, tmp_path).split())  # fmt: skip
        assert ("No ServiceMonitor: auto, and metrics.tls.clientAuth needs metrics.tls.clientAuth"
                ".clientSecretName or serviceMonitor.tlsConfig.") in notes  # fmt: skip
        notes = " ".join(render_notes(sets("output=textfile"), helm, tmp_path).split())
        assert "textfile in /var/run/node-exporter-textfile on each node" in notes
        assert "Nothing makes Prometheus scrape" not in notes


# textfile.hostPath: the textfile-permissions init container chgrps and chmods it at
# every pod start, so only a dedicated directory is accepted (chart/README.md).
GOOD_HOST_PATHS = [
    "/var/run/node-exporter-textfile",  # the chart's default
    "/run/prometheus/node-exporter-textfile",
    "/var/lib/node_exporter/textfile_collector",
    "/var/lib/node-exporter",
    "/var/lib/prometheus/node-exporter",
    "/run/textfile",
    "/home/core/textfile",
]
BAD_HOST_PATHS = [
    "/",
    "/etc",
    "/root",
    "/usr",
    "/tmp",
    "/var",
    "/var/lib",
    "/var/run",
    "/var/log",
    "/home/core",
    "/mnt/data",
    "/etc/node-exporter",
    "/usr/local/textfile",
    "/lib64/textfile",
    "/proc/sys",
    "/root/textfile",
    "/var/lib/kubelet",
    "/var/lib/kubelet/textfile",
    "/var/lib/node-exporter/../../../etc",
    "/var/lib/./node-exporter",
    "//var/lib/node-exporter",
    "/var//lib/node-exporter",
    "/var/lib/node-exporter/",
    "var/lib/node-exporter",
    "/var/lib/node exporter",
    "",
    # Found in review: not system directories by name, but not ours either.
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/rancher/k3s",
    "/home/core/.ssh",
    "/var/log/pods",
    "/run/systemd",
    "/var/lib/etcd2",
    "/var/lib/crio",
]

# The rules across metrics.* values (npe.checkMetrics): values -> the message.
CROSS_VALUE_RULES: list[tuple[list[str], str]] = [
    # prometheus-operator skips a monitor whose timeout exceeds its interval (found by
    # running it: tests/test_kubelet_cluster.py): nothing would be scraped.
    (
        sets(
            "serviceMonitor.enabled=true",
            "serviceMonitor.interval=5s",
            "serviceMonitor.scrapeTimeout=10s",
        ),
        "serviceMonitor.scrapeTimeout: 10s is longer than serviceMonitor.interval (5s)",
    ),
    (
        sets("podMonitor.enabled=true", "podMonitor.interval=1m", "podMonitor.scrapeTimeout=1m30s"),
        "podMonitor.scrapeTimeout: 1m30s is longer than podMonitor.interval (1m)",
    ),
    (sets("metrics.tls.enabled=true"), "metrics.tls.enabled=true needs metrics.tls.secretName"),
    (
        sets("metrics.auth.kubernetes=true"),
        "metrics.auth.kubernetes=true without metrics.tls.enabled=true would send Prometheus' "
        "ServiceAccount token over plain HTTP",
    ),
    (
        sets("metrics.auth.kubernetes=true", "metrics.tls.enabled=true"),
        "metrics.tls.enabled=true needs metrics.tls.secretName",
    ),
    (
        sets("metrics.tls.clientAuth.enabled=true"),
        "metrics.tls.clientAuth.enabled=true needs metrics.tls.enabled=true",
    ),
    (
        [*TLS, *sets("metrics.tls.clientAuth.enabled=true", "podMonitor.enabled=true")],
        "metrics.tls.clientAuth.enabled=true with podMonitor.enabled=true needs "
        "metrics.tls.clientAuth.clientSecretName",
    ),
    (
        [*TLS, *sets("metrics.tls.clientAuth.enabled=true", "serviceMonitor.enabled=true")],
        "with serviceMonitor.enabled=true needs metrics.tls.clientAuth.clientSecretName",
    ),
    (
        [*TLS, *sets("metrics.auth.kubernetes=true", "podMonitor.enabled=true")],
        "metrics.auth.kubernetes=true with podMonitor.enabled=true needs "
        "podMonitor.bearerTokenSecret.name",
    ),
]

BAD_VALUES: list[tuple[list[str], str]] = [
    (sets("serviceMonitor.enabled=yes"), "at '/serviceMonitor/enabled'"),
    (sets("prometheusRule.namespace=Not_A_Namespace"), "at '/prometheusRule/namespace'"),
    (
        ["--set", "prometheusRule.config.lossWindow=3 minutes"],
        "at '/prometheusRule/config/lossWindow'",
    ),
    (
        ["--set", "prometheusRule.config.seriesSelector={job=x}"],
        "at '/prometheusRule/config/seriesSelector'",
    ),
    (["--set", "prometheusRule.config.window=3m"], "at '/prometheusRule/config'"),
    (["--set", "icmp.mode=rw"], "at '/icmp/mode': value must be one of"),
    (["--set", "podSecurity.runAsGroup=2147483648"], "at '/podSecurity/runAsGroup'"),
    (["--set", "output=syslog"], "at '/output': value must be one of"),
    (["--set", "discovery.mode=consul"], "at '/discovery/mode'"),
    (["--set", "probe.interval=0"], "at '/probe/interval'"),
    (["--set", "probe.timeout=abc"], "at '/probe/timeout': got string, want number"),
    (["--set", "port=70000"], "at '/port'"),
    (["--set", "serviceMonitor.interval=30"], "at '/serviceMonitor/interval'"),
    (["--set", "podMonitor.interval=thirty"], "at '/podMonitor/interval'"),
    (["--set", "discovery.addressTypes={Hostname}"], "at '/discovery/addressTypes/0'"),
    (["--set-json", 'externalTargets=[{"name":"x"}]'], "at '/externalTargets/0'"),
    (["--set-json", 'discovery.peers=[{"name":"a"}]'], "at '/discovery/peers/0'"),
    (["--set", "image.digest=latest"], "at '/image/digest'"),
    (["--set", "log.level=loud"], "at '/log/level'"),
    (
        ["--set", "prometheusRule.alerts.X.severity=page"],
        "at '/prometheusRule/alerts/X/severity'",
    ),
    (["--set", "unknownValue=1"], "additional properties 'unknownValue' not allowed"),
    (["--set", "serviceMonitor.enable=true"], "additional properties 'enable' not allowed"),
    # a typo'd host directory would have its group and mode changed on every node
    *[
        (["--set-json", f"textfile.hostPath={json.dumps(path)}"], "at '/textfile/hostPath'")
        for path in BAD_HOST_PATHS
    ],
    # what the agent would refuse at start, in a crash loop on every node
    *[
        (
            ["--set-json", f'discovery.peers=[{{"name":"node-a","ipAddress":"{address}"}}]'],
            "at '/discovery/peers/0/ipAddress'",
        )
        for address in [
            "10.0.0.256",
            "010.0.0.1",
            "10.0.0",
            "10.0.0.1.",
            " 10.0.0.1",
            "fd00::1::2",
            "fd00:0:0:0:0:0:0:0:1",
            "[fd00::1]",
            "fe80::1%eth0",
            "fd00::10.0.0.256",
            "node-a",
            "",
        ]
    ],
    *[
        (
            ["--set-json", f'discovery.peers=[{{"name":"{name}","ipAddress":"10.0.0.1"}}]'],
            "at '/discovery/peers/0/name'",
        )
        for name in ["Node-A", "node_a", "-node", "node..a", "a" * 254]
    ],
    *[
        (
            ["--set-json", f'externalTargets=[{{"host":{json.dumps(host)}}}]'],
            "at '/externalTargets/0/host'",
        )
        for host in ["10.0.0.256", "10.0.0", "1234", "gw_1.example", "-gw.example", "fd00:::1"]
    ],
    (
        ["--set-json", 'externalTargets=[{"host":"10.0.0.1","name":"gate\\u0007way"}]'],
        "at '/externalTargets/0/name'",
    ),
    (
        [
            "--set-json",
            'externalTargets=[{"host":"gw.example"},{"host":"10.0.0.1","name":"gw.example"}]',
        ],
        'two targets are named "gw.example"',
    ),
    *[
        (
            ["--set-json", f"discovery.nodeSelector={json.dumps(selector)}"],
            "at '/discovery/nodeSelector'",
        )
        for selector in [
            "a=b=c",
            "a in b",
            "a,",
            ",a",
            "!",
            "a in (x",
            "-a",
            "a b",
            "a=(x)",
            "a===b",
        ]
    ],
    (["--set-json", "probe.interval=0.019"], "at '/probe/interval': minimum"),
    (["--set-json", "probe.interval=3601"], "at '/probe/interval': maximum"),
    (["--set-json", "probe.timeout=61"], "at '/probe/timeout'"),
    (["--set-json", "probe.window=0"], "at '/probe/window'"),
    (["--set-json", "probe.window=1.5"], "at '/probe/window'"),
    (["--set-json", "probe.payloadSize=15"], "at '/probe/payloadSize'"),
    (["--set-json", "probe.payloadSize=true"], "at '/probe/payloadSize'"),
    (["--set-json", "externalTargetsResolveInterval=0"], "at '/externalTargetsResolveInterval'"),
    (["--set-json", "textfile.interval=0"], "at '/textfile/interval'"),
    (["--set-json", "discovery.maxPeers=-1"], "at '/discovery/maxPeers'"),
    (["--set-json", "discovery.maxPairs=-1"], "at '/discovery/maxPairs'"),
    (["--set-json", "port=0"], "at '/port'"),
    (["--set-json", 'textfile.prefix=".hidden"'], "at '/textfile/prefix'"),
    (["--set-json", 'textfile.prefix="a/b"'], "at '/textfile/prefix'"),
    (["--set-json", f'textfile.prefix="{"p" * 65}"'], "at '/textfile/prefix'"),
    # the endpoint's protection: each value alone (schema) ...
    (["--set", "metrics.bindHostIP=yes"], "at '/metrics/bindHostIP'"),
    (["--set", "metrics.tls.enabled=1"], "at '/metrics/tls/enabled'"),
    (["--set", "metrics.tls.secretName=My_TLS"], "at '/metrics/tls/secretName'"),
    (["--set", "metrics.tls.serverName=-npe.example"], "at '/metrics/tls/serverName'"),
    (["--set", "metrics.tls.clientAuth=true"], "at '/metrics/tls/clientAuth'"),
    (
        ["--set", "metrics.tls.clientAuth.caSecretName=CA"],
        "at '/metrics/tls/clientAuth/caSecretName'",
    ),
    (["--set", "podMonitor.bearerTokenSecret.key=a/b"], "at '/podMonitor/bearerTokenSecret/key'"),
    (["--set", "serviceMonitor.tlsConfig=x"], "at '/serviceMonitor/tlsConfig'"),
    (["--set", "metrics.tls.secret=npe-tls"], "additional properties 'secret' not allowed"),
    (["--set", "metrics.auth.enabled=true"], "additional properties 'enabled' not allowed"),
    (["--set", "metrics.bindHostIp=false"], "additional properties 'bindHostIp' not allowed"),
    (["--set", "podMonitor.bearerTokenSecret.namespace=x"], "additional properties 'namespace'"),
    # ... and together: the template's rules, with or without the schema
    *[
        ([*skip, *args], message)
        for skip in ([], ["--skip-schema-validation"])
        for args, message in CROSS_VALUE_RULES
    ],
]


def helm_run(helm: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart, success or not."""
    command = [str(helm), "template", "npe", str(CHART), "--kube-version", KUBERNETES_VERSIONS[-1]]
    return subprocess.run([*command, *args], capture_output=True, text=True)


def helm_runs(jobs: list[tuple[Path, list[str]]]) -> list[subprocess.CompletedProcess[str]]:
    """Many `helm template` runs, a few at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda job: helm_run(*job), jobs))


@pytest.mark.parametrize("args, message", BAD_VALUES)
def test_bad_values_are_rejected_by_name(args: list[str], message: str) -> None:
    for helm in helm_binaries():
        result = helm_run(helm, args)
        assert result.returncode != 0, f"{helm.name} accepted {args}"
        assert message in result.stderr, f"{helm.name}: {result.stderr}"


def test_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    """YAML's .inf and .nan never reach the agent: Helm cannot even read them."""
    for helm in helm_binaries():
        for value, shown in ((".inf", "+Inf"), ("-.inf", "-Inf"), (".nan", "NaN")):
            values = tmp_path / "values.yaml"
            values.write_text(f"probe:\n  interval: {value}\n")
            result = helm_run(helm, ["-f", str(values)])
            assert result.returncode != 0, f"{helm.name} accepted interval {value}"
            assert f"unsupported value: {shown}" in result.stderr, result.stderr


@pytest.mark.parametrize("path", BAD_HOST_PATHS)
def test_bad_textfile_host_paths_fail_the_template_too(path: str) -> None:
    """The second guard, for installs that skip the schema."""
    for helm in helm_binaries():
        result = helm_run(
            helm,
            ["--skip-schema-validation", *sets("output=textfile"),
             "--set-json", f"textfile.hostPath={json.dumps(path)}"],
        )  # fmt: skip
        assert result.returncode != 0, f"{helm.name} rendered hostPath {path!r}"
        assert f"textfile.hostPath {json.dumps(path)} is not a dedicated directory" in (
            result.stderr
        )


@pytest.mark.parametrize("path", GOOD_HOST_PATHS)
def test_usual_textfile_directories_render(path: str) -> None:
    for helm in helm_binaries():
        for skip in ([], ["--skip-schema-validation"]):
            objects = render([*skip, *sets("output=both", f"textfile.hostPath={path}")], helm)
            (daemonset,) = by_kind(objects, "DaemonSet")
            spec = daemonset["spec"]["template"]["spec"]
            (volume,) = [v for v in spec["volumes"] if v["name"] == "textfile"]
            assert volume["hostPath"] == {"path": path, "type": "DirectoryOrCreate"}
            assert [c["name"] for c in spec["initContainers"]] == ["textfile-permissions"]


def test_the_template_guard_is_the_schemas_rule() -> None:
    """One rule: the template's second guard uses the schema's own two expressions."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    host_path = schema["properties"]["textfile"]["properties"]["hostPath"]
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    guard = helpers.split('define "npe.textfileHostPath"', 1)[1].split("{{- $path }}", 1)[0]
    assert f"(not (regexMatch `{host_path['pattern']}` $path))" in guard
    assert f"(regexMatch `{host_path['not']['pattern']}` $path)" in guard


# The chart's numeric values and the agent's settings they become.
NUMBERS = {
    "probe.interval": "interval",
    "probe.timeout": "timeout",
    "probe.window": "window",
    "probe.payloadSize": "payload_size",
    "probe.sizeProbeInterval": "size_probe_interval",
    "probe.sizeProbeBytes": "size_probe_bytes",
    "stamp.port": "stamp_port",
    "discovery.maxPeers": "max_peers",
    "discovery.maxPairs": "max_pairs",
    "externalTargetsResolveInterval": "resolve_interval",
    "textfile.interval": "textfile_interval",
}


def agent_accepts(config: dict[str, Any] | str, tmp_path: Path) -> bool:
    """Does the agent start with this config file (a dict, or the chart's text)?"""
    path = Path(tempfile.mkstemp(suffix=".yaml", dir=tmp_path)[1])
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    try:
        load_settings(["--config", str(path), "--node-name", "node-a"], {})
    except ConfigError:
        return False
    return True


def rendered_config(manifests: str) -> str:
    for doc in yaml.safe_load_all(manifests):
        if doc and doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
            return str(doc["data"]["config.yaml"])
    raise AssertionError("no config.yaml rendered")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NODE_PING_") or name in ("MY_NODE_NAME", "PROMETHEUS_TEXTFILE_DIR"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
def test_numbers_are_refused_where_the_agent_refuses_them(tmp_path: Path) -> None:
    """At each of the agent's own bounds (read from its settings model, so that the
    two cannot drift apart), just inside and just outside: the chart refuses
    exactly the values the agent would refuse."""
    helms = helm_binaries()
    defaults = yaml.safe_load(rendered_config(helm_template([])))
    numeric = {k for k, v in defaults.items() if type(v) in (int, float)}
    assert numeric == set(NUMBERS.values()), "map every numeric value of the chart in NUMBERS"
    cases: list[tuple[str, str, Any]] = []  # value path, agent setting, value
    for path, setting in NUMBERS.items():
        field = Settings.model_fields[setting]
        step = 1 if field.annotation is int else 0.001
        candidates: set[Any] = {-1, 0.5}
        for constraint in field.metadata:
            for bound in ("gt", "ge", "lt", "le"):
                if hasattr(constraint, bound):
                    limit = getattr(constraint, bound)
                    candidates |= {round(limit - step, 6), limit, round(limit + step, 6)}
        cases += [(path, setting, value) for value in sorted(candidates)]
        cases.append((path, setting, True))  # a YAML true is not the number 1
    cases += [("port", "listen_address", port) for port in (0, 1, 65535, 65536)]
    runs = [(helm, case) for helm in helms for case in cases]
    results = helm_runs([(h, ["--set-json", f"{c[0]}={json.dumps(c[2])}"]) for h, c in runs])
    mismatches = []
    for (helm, (path, setting, value)), result in zip(runs, results, strict=True):
        chart_ok = result.returncode == 0
        if chart_ok:  # what the chart rendered must start the agent
            agent_ok = agent_accepts(rendered_config(result.stdout), tmp_path)
        else:
            wanted = f":{value}" if setting == "listen_address" else value
            agent_ok = agent_accepts({setting: wanted}, tmp_path)
        if chart_ok != agent_ok:
            mismatches.append(f"{helm.name} {path}={value!r}: chart {chart_ok}, agent {agent_ok}")
    assert not mismatches, "\n".join(mismatches)


def textfile_init(args: list[str]) -> dict[str, Any] | None:
    (daemonset,) = by_kind(render(args), "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    found = [c for c in spec.get("initContainers", []) if c["name"] == "textfile-permissions"]
    return found[0] if found else None


def test_textfile_init_container_only_where_needed() -> None:
    helm_binaries()
    init = textfile_init(sets("output=textfile"))
    assert init is not None
    assert init["securityContext"] == {
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]},
    }
    assert textfile_init([]) is None  # http only: no directory
    assert textfile_init(sets("output=both", "icmp.mode=raw")) is None  # root writes anyway
    assert textfile_init(sets("output=both", "textfile.setPermissions=false")) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as the init container")
def test_textfile_init_container_makes_the_directory_writable(tmp_path: Path) -> None:
    """The init container's own command, run as it runs (root with only CHOWN and
    FOWNER), turns a root-owned 0755 host directory into one the agent (uid/gid
    65534, as in the pod) accepts; before it, the agent refuses with one line."""
    helm_binaries()
    init = textfile_init(sets("output=textfile"))
    assert init is not None
    directory = Path(tempfile.mkdtemp(prefix="npe-textfile-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        agent = [
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-m", "exporter", "--check-config", "--node-name", "n",
            "--peer", "a=127.0.0.1", "--output", "textfile", "--textfile-dir", str(directory),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        before = subprocess.run(agent, capture_output=True, text=True, env=env, cwd="/")
        assert before.returncode == 2 and "not writable by uid 65534" in before.stderr
        # the image's entry point is the agent: the init container passes it arguments
        assert "command" not in init
        args = [directory.as_posix() if a == "/textfile" else a for a in init["args"]]
        command = [sys.executable, "-m", "exporter", *args]
        only = "-all," + ",".join(
            f"+{c.lower()}" for c in init["securityContext"]["capabilities"]["add"]
        )
        for _ in range(2):  # every pod start runs it: twice must be fine
            subprocess.run(
                ["setpriv", f"--bounding-set={only}", f"--inh-caps={only}", "--no-new-privs",
                 *command],
                check=True, env=env, cwd="/",
            )  # fmt: skip
            stat = directory.stat()
            assert (stat.st_gid, oct(stat.st_mode & 0o7777)) == (65534, "0o775")
        after = subprocess.run(agent, capture_output=True, text=True, env=env, cwd="/")
        assert after.returncode == 0, after.stderr
    finally:
        shutil.rmtree(directory)


@pytest.mark.usefixtures("clean_env")
def test_node_selector_schema_is_the_agents_grammar() -> None:
    """The schema's pattern is the agent's requirement, comma-separated; and Helm and
    the agent agree on a set of selectors, good and bad."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = schema["properties"]["discovery"]["properties"]["nodeSelector"]["pattern"]
    requirement = SELECTOR_REQUIREMENT.pattern
    assert pattern == rf"^(\s*|{requirement}(,{requirement})*)$"
    selectors = [
        "",
        "  ",
        "node-role.kubernetes.io/worker",
        "!node-role.kubernetes.io/control-plane",
        "kubernetes.io/os=linux",
        "kubernetes.io/os==linux",
        "tier != edge",
        "topology.kubernetes.io/zone in (a, b),!example.com/tainted",
        "zone notin (a,b),rack=r1,pool",
        "zone in ()",
        "a=",
        " a = b , c ",
        "a=b=c",
        "a in b",
        "a,",
        ",a",
        "a,,b",
        "!",
        "! a",
        "a in (x",
        "a in (x,y",
        "a in x,y)",
        "-a",
        "a-",
        "a b",
        "a=(x)",
        "a===b",
        "A.example.com/b=c",
        "a/b/c=d",
        "a=b,",
        "a in (x)(y)",
    ]
    helms = helm_binaries()
    runs = [(helm, s) for helm in helms for s in selectors]
    results = helm_runs(
        [(h, ["--set-json", f"discovery.nodeSelector={json.dumps(s)}"]) for h, s in runs]
    )
    mismatches = []
    for (helm, selector), result in zip(runs, results, strict=True):
        chart_ok = result.returncode == 0
        try:
            Settings(node_name="node-a", node_selector=selector)
            agent_ok = True
        except ValidationError:
            agent_ok = False
        if chart_ok != agent_ok:
            mismatches.append(f"{helm.name} {selector!r}: chart {chart_ok}, agent {agent_ok}")
    assert not mismatches, "\n".join(mismatches)
    assert {r.returncode == 0 for r in results} == {True, False}  # both kinds are tested


def agent_takes_ip(address: str) -> bool:
    try:
        normalise_ip(address)
    except ValueError:
        return False
    return True


def test_ip_address_schema_is_what_the_agent_takes() -> None:
    """The schema's IP address pattern (Go regexp syntax, which Python's re reads the
    same for this pattern) against the agent's parser, on 20,000 near-addresses;
    zone ids (fe80::1%eth0) are left out on purpose: the chart refuses them."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    ip = re.compile(schema["definitions"]["ipAddress"]["pattern"])
    rng = random.Random(12)
    corpus = []
    for _ in range(10000):
        if rng.random() < 0.5:
            corpus.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            address = ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice([0, 64, 100, 120]))
            corpus.append(rng.choice([address.compressed, address.exploded]))
    for text in list(corpus):  # and a near miss of each
        i = rng.randrange(len(text))
        corpus.append(
            rng.choice([text[:i] + text[i + 1 :], text[:i] + rng.choice(":.0f9g") + text[i:]])
        )
    corpus += [
        "::",
        "::1",
        "1::",
        "1:2:3:4:5:6:7::",
        "::2:3:4:5:6:7:8",
        "::ffff:10.0.0.1",
        "1:2:3:4:5:6:10.0.0.1",
        "1:2:3:4:5:6:7:10.0.0.1",
        "::10.0.0.1",
        "10.0.0.1::",
        ":::",
        "1:::2",
        "00001::",
        "0.0.0.0",
        "255.255.255.255",
        "1.2.3.04",
        "[::1]",
    ]
    mismatches = [a for a in corpus if bool(ip.search(a)) != agent_takes_ip(a)]
    assert not mismatches, mismatches[:20]
    assert 0.3 < sum(map(agent_takes_ip, corpus)) / len(corpus) < 0.9  # both kinds are tested


def test_ip_addresses_through_helm() -> None:
    """Helm (Go's regexp) agrees with the agent on peers' addresses (but for zone ids
    and blanks around, refused on purpose), and accepts an external target's host only
    where the agent does (not a mistyped IPv4 address as a DNS name)."""
    addresses = [
        "10.0.0.1", "0.0.0.0", "255.255.255.255", "fd00::2", "FD00::2", "::", "::1",
        "::ffff:10.0.0.1", "2001:db8:0:0:0:0:0:1", "1:2:3:4:5:6:7::",
        "10.0.0.256", "010.0.0.1", "10.0.0", "fd00::1::2", "fd00:0:0:0:0:0:0:0:1", "[fd00::1]",
        "fe80::1%eth0", "10.0.0.1\n", "12345::", "g::1",
    ]  # fmt: skip
    hosts = [*addresses, "gw.example", "gw.example.", "a-b.c", "10.0.0.256", "gw_1.example"]
    helms = helm_binaries()
    peers = [(h, a) for h in helms for a in addresses]
    targets = [(h, a) for h in helms for a in hosts]
    results = helm_runs(
        [(h, ["--set", "discovery.mode=file", "--set-json",
              f'discovery.peers=[{{"name":"node-a","ipAddress":{json.dumps(a)}}}]'])
         for h, a in peers]
        + [(h, ["--set-json", f"externalTargets=[{{\"host\":{json.dumps(a)}}}]"])
           for h, a in targets]
    )  # fmt: skip
    mismatches = []
    for (helm, address), result in zip(peers, results[: len(peers)], strict=True):
        # zones and surrounding blanks, which the agent would strip, are refused on purpose
        wanted = agent_takes_ip(address) and "%" not in address and address == address.strip()
        if (result.returncode == 0) != wanted:
            mismatches.append(f"{helm.name} peer {address!r}: chart {result.returncode == 0}")
    for (helm, host), result in zip(targets, results[len(peers) :], strict=True):
        try:
            ExternalTarget(host=host)
            agent_ok = True
        except ValidationError:
            agent_ok = False
        if result.returncode == 0 and not agent_ok:
            mismatches.append(f"{helm.name} target {host!r}: the agent refuses it")
    assert not mismatches, "\n".join(mismatches)


HELM_DOCS = ROOT / ".cache" / "bin" / "helm-docs"
HELM_DOCS_ARGS = ["-c", "chart", "-s", "file", "--skip-version-footer"]  # as `make chart-readme`


@pytest.mark.skipif(not HELM_DOCS.exists(), reason="helm-docs is not built (make deps)")
def test_the_chart_readme_is_generated_from_values_comments() -> None:
    """chart/README.md is what helm-docs makes of README.md.gotmpl and values.yaml's
    comments now (`make chart-readme` regenerates it), and every value in its table
    has a description."""
    result = subprocess.run(
        [str(HELM_DOCS), "--dry-run", *HELM_DOCS_ARGS], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "chart" / "README.md").read_text(), (
        "chart/README.md is behind chart/values.yaml or README.md.gotmpl: run `make chart-readme`"
    )
    table = result.stdout.split("| Key | Type | Default | Description |", 1)[1].split("\n\n", 1)[0]
    rows = [row.split(" | ") for row in table.strip().splitlines()[1:]]
    assert len(rows) > 100
    undocumented = [row[0].lstrip("| ") for row in rows if not row[-1].strip(" |")]
    assert not undocumented


def test_artifact_hub_annotations_describe_the_release() -> None:
    chart = yaml.safe_load((ROOT / "chart" / "Chart.yaml").read_text())
    notes = chart["annotations"]
    assert notes["artifacthub.io/license"] == "Apache-2.0"
    (image,) = yaml.safe_load(notes["artifacthub.io/images"])
    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    assert image["image"] == f"{values['image']['repository']}:{chart['appVersion']}"
    assert image["platforms"] == ["linux/amd64", "linux/arm64"]
    changes = yaml.safe_load(notes["artifacthub.io/changes"])
    kinds = {"added", "changed", "deprecated", "removed", "fixed", "security"}
    assert changes and all(c["kind"] in kinds and c["description"] for c in changes)
