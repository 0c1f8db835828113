"""The Helm chart: lint, render a matrix of values with Helm 3 (and Helm 4 when built),
validate every object against the Kubernetes schemas of two minor versions and the
Prometheus Operator CRDs, reject bad values with a message naming them, and check
that the agent accepts the config file the chart renders.
"""

from __future__ import annotations

import json
import os
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

from exporter.config import load_settings

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


MATRIX: dict[str, list[str]] = {
    "defaults": [],
    "textfile": sets("output=textfile"),
    "both outputs": sets("output=both", "textfile.hostPath=/run/textfile"),
    "raw mode": sets("icmp.mode=raw"),
    "auto mode with ping_group_range init": sets("icmp.mode=auto", "icmp.setPingGroupRange=true"),
    "file discovery": sets(
        "discovery.mode=file",
        'json:discovery.peers=[{"name":"node-a","ipAddress":"10.0.0.1"},'
        '{"name":"node-b","ipAddress":"fd00::2"}]',
    ),
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


@pytest.mark.parametrize("case", list(MATRIX))
def test_the_agent_accepts_the_rendered_config(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart's config.yaml (and peers file) load in the agent's own settings model."""
    helm_binaries()
    objects = render(MATRIX[case])
    (configmap,) = [o for o in by_kind(objects, "ConfigMap") if "config.yaml" in o["data"]]
    config = tmp_path / "config.yaml"
    config.write_text(configmap["data"]["config.yaml"])
    for name in list(os.environ):
        if name.startswith("NODE_PING_"):
            monkeypatch.delenv(name)
    settings = load_settings(["--config", str(config)], {})
    assert settings.listen_address == ":9798"
    if "nodes.json" in configmap["data"]:
        from exporter.discovery.file import parse_peers

        nodes = parse_peers(configmap["data"]["nodes.json"].encode(), Path("nodes.json"))
        assert [n.name for n in nodes] == ["node-a", "node-b"]
        assert str(settings.peers_file) == "/etc/node-ping-exporter/nodes.json"


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


def test_prometheus_rule_is_the_rules_file_with_overrides() -> None:
    helm_binaries()
    rules_file = yaml.safe_load((ROOT / "rules" / "node-ping.rules.yml").read_text())
    objects = render(["--set", "prometheusRule.enabled=true"])
    (rule,) = by_kind(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == rules_file["groups"]  # defaults: the file, untouched
    first_alert = next(r["alert"] for g in rules_file["groups"] for r in g["rules"] if "alert" in r)
    first_threshold = next(
        r["record"]
        for g in rules_file["groups"]
        for r in g["rules"]
        if r.get("record", "").startswith("node_ping:threshold:")
    )
    threshold = first_threshold.removeprefix("node_ping:threshold:")
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
        ]
    )
    (rule,) = by_kind(objects, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alert = next(r for r in rules if r.get("alert") == first_alert)
    assert alert["for"] == "17m" and alert["labels"]["severity"] == "critical"
    assert next(r for r in rules if r.get("record") == first_threshold)["expr"] == "vector(0.42)"
    objects = render(
        [
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            f"prometheusRule.alerts.{first_alert}.disabled=true",
        ]
    )
    (rule,) = by_kind(objects, "PrometheusRule")
    assert first_alert not in [r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]]


def test_chart_copies_equal_the_sources() -> None:
    """dashboards/ and rules/ are the one source; the chart carries copies (make sync-chart)."""
    for folder in ("dashboards", "rules"):
        source = {p.name: p.read_bytes() for p in (ROOT / folder).glob("*") if p.is_file()}
        copy = {p.name: p.read_bytes() for p in (CHART / folder).glob("*") if p.is_file()}
        assert copy == source, f"chart/{folder} differs from {folder}/: run make sync-chart"


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
    assert not [
        o
        for o in by_kind(render([]), "ConfigMap")
        if "grafana_dashboard" in o["metadata"]["labels"]
    ]  # off by default


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "icmp.mode=rw"], "at '/icmp/mode': value must be one of"),
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
    ],
)
def test_bad_values_are_rejected_by_name(args: list[str], message: str) -> None:
    helm_binaries()
    result = subprocess.run(
        [str(HELM3), "template", "npe", str(CHART), *args], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


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
        command = [directory.as_posix() if a == "/textfile" else a for a in init["command"]]
        only = "-all," + ",".join(
            f"+{c.lower()}" for c in init["securityContext"]["capabilities"]["add"]
        )
        for _ in range(2):  # every pod start runs it: twice must be fine
            subprocess.run(
                ["setpriv", f"--bounding-set={only}", f"--inh-caps={only}", "--no-new-privs",
                 *command],
                check=True,
            )  # fmt: skip
            stat = directory.stat()
            assert (stat.st_gid, oct(stat.st_mode & 0o7777)) == (65534, "0o775")
        after = subprocess.run(agent, capture_output=True, text=True, env=env, cwd="/")
        assert after.returncode == 0, after.stderr
    finally:
        shutil.rmtree(directory)
