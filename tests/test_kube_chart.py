"""The chart against a real control plane (etcd + kube-apiserver + kube-controller-manager
built from the Kubernetes release in controlplane/go.mod): helm install, upgrade and
uninstall with the Prometheus Operator CRDs applied; the service account's RBAC
asked of the API server; the DaemonSet controller creating one pod per node.

Pods stay Pending: there is no kubelet. Everything else is the real thing.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab.controlplane import ControlPlane, write_kubeconfig
from lab.kubenodes import create_node, delete_node
from lab.operator import install_crds

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
    if not CRDS.is_dir():
        pytest.skip(f"{CRDS} is missing (the prometheus-operator CRDs)")
    install_crds(control_plane, CRDS, timeout=30)
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


# What the controller manager puts in every namespace: its service account, and the
# cluster's CA bundle (root-ca-cert-publisher, which pods on real kubelets need).
NAMESPACE_DEFAULTS = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


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
            if (resource.kind, name) in NAMESPACE_DEFAULTS:
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
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert f"{kind} {NAMESPACE}/{release}-node-ping-exporter labelled release=" in out

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
    group: str = "",
) -> bool:
    """SubjectAccessReview: may ``user`` do ``verb`` on ``resource`` (of API ``group``)?"""
    from kubernetes import client

    api = client.AuthorizationV1Api(plane.api_client())
    attributes = client.V1ResourceAttributes(
        verb=verb,
        resource=resource,
        namespace=namespace or None,
        subresource=subresource or None,
        group=group or None,
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


def tls_secret_data(folder: Path, dns_name: str) -> dict[str, str]:
    """A kubernetes.io/tls Secret's stringData: a self-signed certificate for
    ``dns_name`` (its own CA, so ca.crt is tls.crt)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=node-ping-exporter", "-addext", f"subjectAltName=DNS:{dns_name}",
         "-keyout", str(folder / "tls.key"), "-out", str(folder / "tls.crt")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cert, key = (folder / "tls.crt").read_text(), (folder / "tls.key").read_text()
    return {"tls.crt": cert, "tls.key": key, "ca.crt": cert}


REVIEWS = [  # what system:auth-delegator grants: (verb, resource, API group)
    ("create", "tokenreviews", "authentication.k8s.io"),
    ("create", "subjectaccessreviews", "authorization.k8s.io"),
]


@pytest.mark.parametrize("helm", ["helm3", "helm4"])
def test_metrics_auth_binds_the_agent_to_auth_delegator(
    plane: ControlPlane, helm: str, tmp_path: Path
) -> None:
    """metrics.auth.kubernetes over TLS, in file discovery mode (no ClusterRole of its
    own): the API server takes the DaemonSet with the TLS Secret mounted and the
    monitors with their tlsConfig and tokens; the agent's ServiceAccount may create
    token and access reviews, which is all the agent's authorizer needs to tell a
    scraper allowed /metrics from one that is not, with that account's real token;
    an upgrade with auth off removes the binding, and the authorizer then refuses."""
    if not (ROOT / ".cache" / "bin" / helm).exists():
        pytest.skip(f"{helm} is not built (scripts/install-tools.sh)")
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    from kubernetes import client

    from exporter import kubeapi
    from exporter.auth import KubernetesAuthorizer

    api_client = plane.api_client()
    core: Any = client.CoreV1Api(api_client)
    rbac: Any = client.RbacAuthorizationV1Api(api_client)
    release = f"npe-auth-{helm}"
    account = f"{release}-node-ping-exporter"
    user = f"system:serviceaccount:{NAMESPACE}:{account}"
    secret = f"{release}-tls"
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise
    data = tls_secret_data(tmp_path, f"{account}.{NAMESPACE}.svc")
    core.create_namespaced_secret(
        NAMESPACE,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=secret), type="kubernetes.io/tls", string_data=data
        ),
    )
    values = [
        "--set", "discovery.mode=file",
        "--set-json", 'discovery.peers=[{"name":"a","ipAddress":"198.18.0.1"}]',
        "--set", "metrics.tls.enabled=true", "--set", f"metrics.tls.secretName={secret}",
        "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
        "--set", "podMonitor.bearerTokenSecret.name=prometheus-token",
    ]  # fmt: skip
    # A scraper with kube-prometheus-stack's rule for Prometheus, and one without it.
    scraper_role = f"{release}-scraper"
    for name in ("scraper", "stranger"):
        core.create_namespaced_service_account(
            NAMESPACE,
            client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=f"{release}-{name}")),
        )
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=scraper_role),
            rules=[client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name=scraper_role),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=scraper_role
            ),
            subjects=[
                client.RbacV1Subject(
                    kind="ServiceAccount", name=f"{release}-scraper", namespace=NAMESPACE
                )
            ],
        )
    )
    try:
        out = plane.helm("install", release, str(CHART), "-n", NAMESPACE, *values,
                         "--set", "metrics.auth.kubernetes=true", helm=helm)  # fmt: skip
        notes = " ".join(out.split())
        assert f"over HTTPS with the certificate in Secret {secret}" in notes
        assert f"ClusterRoleBinding {account}-auth-delegator" in notes

        binding = rbac.read_cluster_role_binding(f"{account}-auth-delegator")
        assert binding.role_ref.name == "system:auth-delegator"
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
            ("ServiceAccount", account, NAMESPACE)
        ]
        for verb, resource, group in REVIEWS:  # RBAC's cache may take a moment
            wait_for(lambda: review(plane, user, verb, resource, group=group), 10,  # noqa: B023
                     f"{verb} {resource} allowed")  # fmt: skip
        assert not review(plane, user, "list", "nodes")  # file discovery: still no nodes
        assert not review(plane, user, "get", "secrets", namespace=NAMESPACE)
        assert core.read_namespaced_service_account(
            account, NAMESPACE
        ).automount_service_account_token

        apps: Any = client.AppsV1Api(api_client)
        pod = apps.read_namespaced_daemon_set(account, NAMESPACE).spec.template.spec
        assert pod.automount_service_account_token is True
        assert [v.secret.secret_name for v in pod.volumes if v.secret] == [secret]
        assert pod.security_context.fs_group == 65534
        probe = pod.containers[0].readiness_probe.http_get
        assert (probe.scheme, probe.path) == ("HTTPS", "/readyz")

        # The agent's authorizer, with its ServiceAccount's own token, against the API server.
        kubeconfig = plane.service_account_kubeconfig(
            NAMESPACE, account, tmp_path / "agent.kubeconfig", server=plane.server, seconds=600
        )
        authorizer = KubernetesAuthorizer(kubeapi.connect(kubeconfig))
        scraper = plane.service_account_token(NAMESPACE, f"{release}-scraper", 600)
        stranger = plane.service_account_token(NAMESPACE, f"{release}-stranger", 600)
        assert authorizer.check(f"Bearer {scraper}", "/metrics") == (200, "ok")
        assert authorizer.check(f"Bearer {stranger}", "/metrics")[0] == 403
        assert authorizer.check("Bearer not-a-token", "/metrics")[0] == 401

        # Auth off: the binding goes, and with it the agent's right to ask.
        plane.helm("upgrade", release, str(CHART), "-n", NAMESPACE, *values, helm=helm)
        bindings = rbac.list_cluster_role_binding(label_selector=f"{INSTANCE}={release}").items
        assert not bindings, [b.metadata.name for b in bindings]
        for verb, resource, group in REVIEWS:
            wait_for(lambda: not review(plane, user, verb, resource, group=group), 10,  # noqa: B023
                     f"{verb} {resource} denied")  # fmt: skip
        assert not core.read_namespaced_service_account(
            account, NAMESPACE
        ).automount_service_account_token
        fresh = KubernetesAuthorizer(kubeapi.connect(kubeconfig))
        assert fresh.check(f"Bearer {scraper}", "/metrics")[0] == 503  # refused, never open
    finally:
        plane.helm("uninstall", release, "-n", NAMESPACE, "--ignore-not-found", helm=helm)
        core.delete_namespaced_secret(secret, NAMESPACE)
        for name in ("scraper", "stranger"):
            core.delete_namespaced_service_account(f"{release}-{name}", NAMESPACE)
        rbac.delete_cluster_role_binding(scraper_role)
        rbac.delete_cluster_role(scraper_role)
