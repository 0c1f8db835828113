"""The chart against a real control plane (etcd + kube-apiserver + kube-controller-manager
built from the Kubernetes release in controlplane/go.mod): helm install, upgrade and
uninstall with the Prometheus Operator CRDs applied; the service account's RBAC
asked of the API server; the DaemonSet controller creating one pod per node.

Pods stay Pending: there is no kubelet. Everything else is the real thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.controlplane import ControlPlane, write_kubeconfig
from lab.kubenodes import create_node, delete_node

from .conftest import ROOT, wait_for

pytestmark = pytest.mark.e2e

CHART = ROOT / "chart"
CRDS = ROOT.parent / "shared" / "crds"
NAMESPACE = "kube-prometheus"
INSTANCE = "app.kubernetes.io/instance"
# Every kind the chart can create, with monitors, rules and dashboards on.
CHART_KINDS = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "Service",
    "DaemonSet",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
}
EVERYTHING_ON = [
    "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true", "--set", "dashboards.enabled=true",
    "--set", "serviceMonitor.labels.release=kube-prometheus-stack",
    "--set", "podMonitor.labels.release=kube-prometheus-stack",
    "--set", "prometheusRule.labels.release=kube-prometheus-stack",
    "--set", "output=both",  # the textfile volume and its init container too
]  # fmt: skip


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> ControlPlane:
    """The session's control plane with the Prometheus Operator CRDs established."""
    from kubernetes import client

    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is missing (the prometheus-operator CRDs)")
    api: Any = client.ApiextensionsV1Api(control_plane.api_client())
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        names.append(body["metadata"]["name"])
        try:
            api.create_custom_resource_definition(body, _preload_content=False)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:  # already there: another module applied them
                raise

    def established() -> bool:
        for name in names:
            crd: dict[str, Any] = json.loads(
                api.read_custom_resource_definition(name, _preload_content=False).data
            )
            conditions = crd.get("status", {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
        return True

    wait_for(established, 30, "CRDs established")
    return control_plane


def manifest_objects(plane: ControlPlane, release: str, helm: str) -> set[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every object in the release's current manifest."""
    text = plane.helm("get", "manifest", release, "-n", NAMESPACE, helm=helm)
    return {
        (doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
        for doc in yaml.safe_load_all(text)
        if doc
    }


def exists(plane: ControlPlane, api_version: str, kind: str, name: str) -> bool:
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    resource = DynamicClient(plane.api_client()).resources.get(api_version=api_version, kind=kind)
    try:
        resource.get(name=name, namespace=NAMESPACE if resource.namespaced else None)
    except NotFoundError:
        return False
    return True


def leftovers(plane: ControlPlane, release: str) -> list[str]:
    """Anything in the namespace but its defaults, and any cluster object of the release:
    every listable kind the API server serves, not only those the chart names."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(plane.api_client())
    found = []
    for resource in dynamic.resources.search():
        if "list" not in (resource.verbs or []) or "/" in resource.name:
            continue
        if resource.kind in ("Event", "Namespace", "ComponentStatus"):
            continue
        try:
            if resource.namespaced:
                items = resource.get(namespace=NAMESPACE).items
            else:
                items = resource.get(label_selector=f"{INSTANCE}={release}").items
        except Exception:  # aggregated or not listable here
            continue
        for item in items:
            name = item.metadata.name
            if (resource.kind, name) in {("ServiceAccount", "default")}:
                continue
            found.append(f"{resource.kind}/{name}")
    return sorted(set(found))


@pytest.mark.parametrize("helm", ["helm3", "helm4"])
def test_install_upgrade_uninstall_leaves_nothing(plane: ControlPlane, helm: str) -> None:
    if not (ROOT / ".cache" / "bin" / helm).exists():
        pytest.skip(f"{helm} is not built (scripts/install-tools.sh)")
    release = f"npe-{helm}"
    out = plane.helm("install", release, str(CHART), "-n", NAMESPACE, "--create-namespace",
                     *EVERYTHING_ON, helm=helm)  # fmt: skip
    # NOTES.txt, rendered by a real install for the first time.
    assert "runs on every node as DaemonSet" in out
    assert f"{NAMESPACE}/{release}-node-ping-exporter" in out
    assert "ServiceMonitor PodMonitor created" in out

    installed = manifest_objects(plane, release, helm)
    assert {kind for _, kind, _ in installed} == CHART_KINDS
    missing = [f"{k}/{n}" for v, k, n in installed if not exists(plane, v, k, n)]
    assert not missing, f"in the manifest, not in the API server: {missing}"
    from kubernetes import client

    core: Any = client.CoreV1Api(plane.api_client())
    dashboards = core.list_namespaced_config_map(
        NAMESPACE, label_selector=f"grafana_dashboard=1,{INSTANCE}={release}"
    ).items
    assert sorted(key for d in dashboards for key in d.data) == [
        "external-targets.json",
        "node-connectivity.json",
    ]

    # Upgrade: peers from a file, no PodMonitor, a slower interval.
    plane.helm("upgrade", release, str(CHART), "-n", NAMESPACE, *EVERYTHING_ON,
               "--set", "podMonitor.enabled=false", "--set", "discovery.mode=file",
               "--set-json", 'discovery.peers=[{"name":"a","ipAddress":"198.18.0.1"}]',
               "--set", "probe.interval=2", helm=helm)  # fmt: skip
    upgraded = manifest_objects(plane, release, helm)
    for api_version, kind, name in installed - upgraded:
        assert not exists(plane, api_version, kind, name), f"{kind}/{name} outlived the upgrade"
    assert {k for _, k, _ in installed - upgraded} == {
        "PodMonitor",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    apps: Any = client.AppsV1Api(plane.api_client())
    daemonset = apps.read_namespaced_daemon_set(f"{release}-node-ping-exporter", NAMESPACE)
    assert daemonset.metadata.generation == 2
    config = core.read_namespaced_config_map(f"{release}-node-ping-exporter", NAMESPACE)
    assert "198.18.0.1" in (config.data or {})["nodes.json"]

    plane.helm("uninstall", release, "-n", NAMESPACE, helm=helm)
    gone: list[str] = []

    def nothing_left() -> bool:
        gone[:] = leftovers(plane, release)
        return not gone

    try:  # pods and controller revisions go with the garbage collector, not at once
        wait_for(nothing_left, 60, "the garbage collector", step=1)
    except AssertionError:
        raise AssertionError(f"left behind after helm uninstall: {gone}") from None


def review(
    plane: ControlPlane,
    user: str,
    verb: str,
    resource: str,
    namespace: str = "",
    subresource: str = "",
) -> bool:
    """SubjectAccessReview: may ``user`` do ``verb`` on ``resource``?"""
    from kubernetes import client

    api = client.AuthorizationV1Api(plane.api_client())
    attributes = client.V1ResourceAttributes(
        verb=verb, resource=resource, namespace=namespace or None, subresource=subresource or None
    )
    spec = client.V1SubjectAccessReviewSpec(user=user, resource_attributes=attributes)
    answer = api.create_subject_access_review(client.V1SubjectAccessReview(spec=spec))
    return bool(answer.status and answer.status.allowed)


@pytest.fixture
def installed(plane: ControlPlane) -> Iterator[str]:
    """The chart with its defaults (kubernetes discovery); the service account's name."""
    release = "npe-rbac"
    plane.helm("install", release, str(CHART), "-n", NAMESPACE, "--create-namespace")
    try:
        yield f"{release}-node-ping-exporter"
    finally:
        plane.helm("uninstall", release, "-n", NAMESPACE)


def test_service_account_may_read_nodes_and_nothing_else(
    plane: ControlPlane, installed: str, tmp_path: Path
) -> None:
    user = f"system:serviceaccount:{NAMESPACE}:{installed}"
    for verb in ("get", "list", "watch"):
        assert review(plane, user, verb, "nodes"), f"{verb} nodes denied"
    denied = [
        (verb, resource, namespace)
        for resource in ("secrets", "pods", "configmaps")
        for verb in ("get", "list", "watch")
        for namespace in (NAMESPACE, "kube-system", "")
    ] + [(verb, "nodes", "") for verb in ("create", "update", "patch", "delete")]
    allowed = [
        (verb, resource, namespace or "cluster-wide")
        for verb, resource, namespace in denied
        if review(plane, user, verb, resource, namespace=namespace)
    ]
    assert not allowed, f"the agent's service account may also: {allowed}"
    assert not review(plane, user, "patch", "nodes", subresource="status")

    # And with a real token of that account (TokenRequest), over the wire.
    from kubernetes import client, config

    kubeconfig = plane.service_account_kubeconfig(
        NAMESPACE, installed, tmp_path / "sa.kubeconfig", server=plane.server, seconds=600
    )
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    api.list_node()
    with pytest.raises(client.exceptions.ApiException) as denied_list:
        api.list_namespaced_secret(NAMESPACE)
    assert denied_list.value.status == 403
    # A token for no one is refused (the API server checks, not only RBAC).
    write_kubeconfig(tmp_path / "bad", plane.server, (plane.pki / "ca.crt").read_text(), "x", "b")
    bad = client.CoreV1Api(config.new_client_from_config(config_file=str(tmp_path / "bad")))
    with pytest.raises(client.exceptions.ApiException) as refused:
        bad.list_node()
    assert refused.value.status == 401

    # File discovery: no ClusterRole at all, so listing nodes is denied.
    plane.helm("upgrade", "npe-rbac", str(CHART), "-n", NAMESPACE, "--set", "discovery.mode=file")
    rbac = client.RbacAuthorizationV1Api(plane.api_client())
    assert not rbac.list_cluster_role(label_selector=f"{INSTANCE}=npe-rbac").items
    assert not review(plane, user, "list", "nodes")


def test_daemonset_controller_makes_one_pod_per_linux_node(plane: ControlPlane) -> None:
    from kubernetes import client

    if not plane.running("kube-controller-manager"):
        pytest.fail("kube-controller-manager is not running")
    core: Any = client.CoreV1Api(plane.api_client())
    nodes: dict[str, dict[str, Any]] = {
        "ds-plain": {},
        # A tainted node (control plane, special hardware) still gets an agent.
        "ds-tainted": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                                  {"key": "maintenance", "effect": "NoExecute"}]},
        "ds-windows": {"labels": {"kubernetes.io/os": "windows"}},
    }  # fmt: skip
    for index, (name, extra) in enumerate(nodes.items(), start=1):
        create_node(core, name, [f"198.18.9.{index}"], **extra)
    release = "npe-ds"
    plane.helm("install", release, str(CHART), "-n", NAMESPACE, "--create-namespace")
    try:
        linux = {
            n.metadata.name for n in core.list_node(label_selector="kubernetes.io/os=linux").items
        }
        assert {"ds-plain", "ds-tainted"} <= linux

        def pods() -> dict[str, Any]:
            found = core.list_namespaced_pod(NAMESPACE, label_selector=f"{INSTANCE}={release}")
            return {pod_node(p): p for p in found.items}

        wait_for(lambda: set(pods()) == linux, 60, f"one pod on each of {sorted(linux)}", step=1)
        created = pods()
        assert "ds-windows" not in created
        for node, pod in created.items():
            assert pod.status.phase == "Pending"  # no kubelet here
            assert pod.spec.service_account_name == f"{release}-node-ping-exporter"
            assert any(t.operator == "Exists" and t.key is None for t in pod.spec.tolerations)
            assert pod.spec.node_selector == {"kubernetes.io/os": "linux"}
            assert pod.spec.host_network is True
            container = pod.spec.containers[0]
            assert container.security_context.read_only_root_filesystem is True
            assert container.security_context.capabilities.drop == ["ALL"]
            assert pod.metadata.owner_references[0].kind == "DaemonSet"
            assert node in linux

        create_node(core, "ds-late", ["198.18.9.9"])  # a node joining later gets one too
        wait_for(lambda: "ds-late" in pods(), 30, "a pod for a node that joined", step=1)
    finally:
        plane.helm("uninstall", release, "-n", NAMESPACE)
        for name in [*nodes, "ds-late"]:
            delete_node(core, name)


def pod_node(pod: Any) -> str:
    """The node a DaemonSet pod is pinned to: its required node affinity on metadata.name."""
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    (term,) = terms.node_selector_terms
    (field,) = term.match_fields
    assert field.key == "metadata.name" and field.operator == "In"
    (name,) = field.values
    return str(name)
