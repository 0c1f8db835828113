"""prometheus-operator against a lab's cluster, and the Prometheus it runs on a lab node.

The path a kube-prometheus-stack user's cluster takes, on real parts: the
operator (built from the Go module proxy, scripts/build-nodes.sh) watches the
API server with the admin's kubeconfig, as a cluster's would with its service
account; a ``Prometheus`` object shaped like kube-prometheus-stack's selects
ServiceMonitors, PodMonitors and PrometheusRules by ``release: <release>``; the
operator turns the chart's objects into a scrape configuration (a Secret) and
rule files (ConfigMaps) and a StatefulSet, whose pod a lab node's kubelet runs:
Prometheus 3 and the operator's config reloader (lab/registry.py; not Debian's
Prometheus, which is built without Kubernetes service discovery), on the host
network of that node (the lab's CNI gives other pods no network), so it reaches
every agent and, through the node's Service DNAT, the API server.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane, free_port
from .kubenodes import CHART_NAMESPACE, KubernetesDiscovery
from .process import alive, kill_all, spawn
from .registry import NODE_BINARIES, Registry, prometheus_image
from .state import LabError, LabState, Workdir

CRDS = NODE_BINARIES / "crds"  # the operator release's own CRDs
GROUP, VERSION = "monitoring.coreos.com", "v1"
PROMETHEUS_NAME = "kube-prometheus-stack-prometheus"  # kube-prometheus-stack's naming
# What kube-prometheus-stack's Prometheus selects monitors and rules by: its release
# name. The chart is installed without being told (it looks the object up).
MONITOR_LABELS = {"release": "kube-prometheus-stack"}
PROMETHEUS_PORT = 9090


def install_crds(plane: ControlPlane, directory: Path = CRDS, timeout: float = 60) -> None:
    """Create the CRDs in ``directory`` (those there already are fine) and wait until
    the API server serves them."""
    import yaml
    from kubernetes import client

    class Loader(yaml.SafeLoader):
        """YAML 1.1 reads a bare ``=`` as its "value" type; the CRDs mean the string."""

    Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: node.value)
    api: Any = client.ApiextensionsV1Api(plane.api_client())
    custom: Any = client.CustomObjectsApi(plane.api_client())
    bodies = []
    for path in sorted(directory.glob("*.yaml")):
        body = yaml.load(path.read_text(), Loader=Loader)  # a SafeLoader
        bodies.append(body)
        try:
            api.create_custom_resource_definition(body, _preload_content=False)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [b["metadata"]["name"] for b in bodies if not _served(api, custom, b)]
        if not pending:
            return
        time.sleep(0.3)
    raise LabError(f"CRDs not served after {timeout:.0f}s: {', '.join(pending)}")


def _served(api: Any, custom: Any, body: dict[str, Any]) -> bool:
    """Established, and its objects can be listed: the API server marks a CRD
    Established a moment before its handler answers (a 404 in between)."""
    from kubernetes import client

    name = body["metadata"]["name"]
    crd = json.loads(api.read_custom_resource_definition(name, _preload_content=False).data)
    conditions = crd.get("status", {}).get("conditions") or []
    if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
        return False
    spec = body["spec"]
    version = next(v["name"] for v in spec["versions"] if v.get("served"))
    try:
        custom.list_cluster_custom_object(spec["group"], version, spec["names"]["plural"],
                                          limit=1)  # fmt: skip
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


class Operator:
    """The operator process and the Prometheus object it serves, for one lab."""

    def __init__(self, workdir: Workdir, kubernetes: KubernetesDiscovery) -> None:
        self.workdir = workdir
        self.kubernetes = kubernetes

    def start(self, state: LabState, registry_port: int, node: str, scrape: str) -> int:
        """CRDs, the operator, and a Prometheus on ``node`` scraping every ``scrape``."""
        plane = self.kubernetes.control_plane(state)
        install_crds(plane)
        image = Registry.push(registry_port, prometheus_image(), "prometheus:" + _tag())
        pid = spawn(
            [
                str(NODE_BINARIES / "operator"),
                f"--web.listen-address=127.0.0.1:{free_port()}",
                f"--prometheus-config-reloader={image}",
                "--log-level=warn",
            ],
            self.workdir.logs / "prometheus-operator.log",
            env={"KUBECONFIG": str(plane.admin_kubeconfig)},
        )
        try:
            self._create_prometheus(plane, image, node, scrape)
        except BaseException:
            kill_all({pid})  # on the host: nothing else would find it
            raise
        return pid

    def _create_prometheus(self, plane: ControlPlane, image: str, node: str, scrape: str) -> None:
        """A service account with kube-prometheus-stack's Prometheus RBAC, and the
        ``Prometheus`` object its chart makes, selectors and all."""
        from kubernetes import client

        api_client = plane.api_client()
        core: Any = client.CoreV1Api(api_client)
        rbac: Any = client.RbacAuthorizationV1Api(api_client)
        account = PROMETHEUS_NAME
        _create(core.create_namespace, {"metadata": {"name": CHART_NAMESPACE}})
        _create(core.create_namespaced_service_account, CHART_NAMESPACE,
                {"metadata": {"name": account}})  # fmt: skip
        rules = [
            {"apiGroups": [""], "resources": ["nodes", "nodes/metrics", "services",
                                               "endpoints", "pods"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
            {"nonResourceURLs": ["/metrics", "/metrics/cadvisor"], "verbs": ["get"]},
        ]  # fmt: skip
        _create(rbac.create_cluster_role, {"metadata": {"name": account}, "rules": rules})
        _create(
            rbac.create_cluster_role_binding,
            {
                "metadata": {"name": account},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": account},
                "subjects": [{"kind": "ServiceAccount", "name": account,
                              "namespace": CHART_NAMESPACE}],
            }
        )  # fmt: skip
        tag = image.rsplit(":", 1)[1]
        release = {"matchLabels": MONITOR_LABELS}
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Prometheus",
            "metadata": {"name": PROMETHEUS_NAME, "namespace": CHART_NAMESPACE},
            "spec": {
                "image": image,
                "version": tag,
                "replicas": 1,
                "serviceAccountName": account,
                "serviceMonitorSelector": release,
                "podMonitorSelector": release,
                "probeSelector": release,
                "ruleSelector": release,
                "serviceMonitorNamespaceSelector": {},
                "podMonitorNamespaceSelector": {},
                "probeNamespaceSelector": {},
                "ruleNamespaceSelector": {},
                "scrapeInterval": scrape,
                "evaluationInterval": scrape,
                "hostNetwork": True,
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [{"operator": "Exists"}],
                "securityContext": {"runAsUser": 65534, "runAsGroup": 65534,
                                    "runAsNonRoot": True, "fsGroup": 65534},
            },
        }  # fmt: skip
        _create(client.CustomObjectsApi(api_client).create_namespaced_custom_object,
                GROUP, VERSION, CHART_NAMESPACE, "prometheuses", body)  # fmt: skip

    def generated_config(self, state: LabState) -> str:
        """The scrape configuration the operator wrote (its Secret, gunzipped)."""
        import base64
        import gzip

        from kubernetes import client

        core: Any = client.CoreV1Api(self.kubernetes.control_plane(state).api_client())
        secret = core.read_namespaced_secret(f"prometheus-{PROMETHEUS_NAME}", CHART_NAMESPACE)
        return gzip.decompress(base64.b64decode(secret.data["prometheus.yaml.gz"])).decode()

    def wait_ready(self, state: LabState, timeout: float = 180) -> None:
        """The Prometheus pod runs and answers /-/ready on its node's address."""
        node = state.config.node_names()[0]
        url = f"http://{state.config.addresses(node)[0]}:{PROMETHEUS_PORT}/-/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubernetes.network.http_get(url)[0] == 200:
                return
            time.sleep(1)
        raise LabError(
            f"the operator's Prometheus is not ready after {timeout:.0f}s ({url}; operator "
            f"log in {self.workdir.logs})"
        )

    def teardown(self, state: LabState) -> None:
        """The Prometheus object (its StatefulSet and pod go with it), its account and
        RBAC deleted, the operator stopped. Best effort, like the rest of ``down``."""
        from kubernetes import client

        plane = self.kubernetes.control_plane(state)
        if plane.running():
            api_client = plane.api_client()
            core: Any = client.CoreV1Api(api_client)
            rbac: Any = client.RbacAuthorizationV1Api(api_client)
            custom: Any = client.CustomObjectsApi(api_client)
            for delete, args in (
                (custom.delete_namespaced_custom_object,
                 (GROUP, VERSION, CHART_NAMESPACE, "prometheuses", PROMETHEUS_NAME)),
                (core.delete_namespaced_service_account, (PROMETHEUS_NAME, CHART_NAMESPACE)),
                (rbac.delete_cluster_role_binding, (PROMETHEUS_NAME,)),
                (rbac.delete_cluster_role, (PROMETHEUS_NAME,)),
            ):  # fmt: skip
                with suppress(Exception):  # gone already, or the API half up
                    delete(*args)
        pid = state.services.get("prometheus-operator")
        if pid is not None and alive(pid):
            kill_all({pid}, grace=5)


def _create(create: Any, *args: Any) -> None:
    """Create an object; one that exists already (a lab brought up again) is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        create(*args)
    except ApiException as exc:
        if exc.status != 409:
            raise


def _tag() -> str:
    return prometheus_image().rsplit(":", 1)[1]
