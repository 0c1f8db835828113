"""Node objects for simulated nodes, and the lab's Kubernetes-discovery mode.

A Node is what a kubelet would register, minus the kubelet: created with its
labels, then its addresses set through the ``status`` subresource, as a kubelet
reports them (the main resource ignores status on create and update). Lists are
replaced with JSON patches: a strategic merge patch merges ``finalizers`` and
``addresses`` instead of replacing them.

In Kubernetes mode (:class:`KubernetesDiscovery`) a lab installs the chart in a
control plane of lab/controlplane.py, gives its agents a token of the chart's
service account (the RBAC a cluster would give them) and registers one Node per
node; the agents reach the API server through a forwarder in the hub.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .controlplane import LAB_ADDRESS, LAB_PORT, ControlPlane, ControlPlaneError
from .kubelet import PAUSE_TAG, REGISTRY, KubeletNodes
from .network import Network
from .process import ROOT
from .prometheus import FAST_CONFIG, fast_alert_overrides
from .registry import VERSION, Registry, agent_image, pause_image
from .state import LabConfig, LabError, LabState, Workdir

LAB_LABEL = "node-ping-lab"  # which lab made the node: its name
ZONE_LABEL = "topology.kubernetes.io/zone"  # the well-known label a cloud provider sets
CHART_NAMESPACE = "kube-prometheus"  # where a lab installs the chart


def replace(path: str, value: Any) -> list[dict[str, Any]]:
    """A JSON patch setting ``path`` (``add`` replaces a member that exists)."""
    return [{"op": "add", "path": path, "value": value}]


def create_node(
    api: Any,
    name: str,
    addresses: list[str],
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> None:
    """Register a Node with InternalIP addresses (``api``: a CoreV1Api)."""
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
    }
    api.create_node(body)
    set_addresses(api, name, addresses)


def set_addresses(api: Any, name: str, addresses: list[str]) -> None:
    entries = [{"type": "InternalIP", "address": a} for a in addresses]
    api.patch_node_status(name, replace("/status/addresses", entries))


def delete_node(api: Any, name: str) -> None:
    """Delete a Node; one that is already gone is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def set_finalizers(api: Any, name: str, finalizers: list[str]) -> None:
    api.patch_node(name, replace("/metadata/finalizers", finalizers))


@dataclass(frozen=True)
class KubernetesDiscovery:
    """One lab's chart release, agent credentials and Node objects in a control plane."""

    workdir: Workdir
    network: Network

    @property
    def release(self) -> str:
        return f"npl-{self.workdir.name}"

    def control_plane(self, state: LabState | None = None) -> ControlPlane:
        return ControlPlane((state or self.workdir.load()).config.kubernetes)

    def core_api(self, state: LabState | None = None) -> Any:
        """A CoreV1Api on the lab's control plane, with admin credentials."""
        from kubernetes import client

        return client.CoreV1Api(self.control_plane(state).api_client())

    def setup(self, state: LabState) -> None:
        """Chart installed, API server reachable from the hub, a token for the chart's
        service account, one Node per lab node."""
        plane = self.control_plane(state)
        if not plane.running():
            raise LabError(
                f"control plane '{plane.name}' is not running (node-ping-controlplane up)"
            )
        self._forward_apiserver(plane, state)
        self.install_chart(plane)
        plane.service_account_kubeconfig(
            CHART_NAMESPACE,
            self.service_account(state),
            self.workdir.kubeconfig,
            server=f"https://{LAB_ADDRESS}:{LAB_PORT}",
        )
        api = self.core_api(state)
        for node in state.config.node_names():
            if node not in state.removed:
                self.register(api, node, state.config)

    def _forward_apiserver(self, plane: ControlPlane, state: LabState) -> None:
        state.services["apiserver-forwarder"] = self.workdir.spawn(
            [sys.executable, "-m", "lab.forward", self.network.hub.name, LAB_ADDRESS,
             str(LAB_PORT), "127.0.0.1", str(plane.ports.apiserver)],
            "forwarder.log",
        )  # fmt: skip

    def install_chart(self, plane: ControlPlane, *values: str) -> None:
        """``helm install`` of the chart into the lab's release (``values``: --set etc.)."""
        try:
            plane.helm("install", self.release, str(ROOT / "chart"), "--namespace",
                       CHART_NAMESPACE, "--create-namespace", *values)  # fmt: skip
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from None

    def setup_kubelets(self, state: LabState) -> int:
        """The nodes made Kubernetes nodes (lab/kubelet.py), Ready, pulling from the lab's
        registry, which holds the pause and agent images; the registry's port on the host."""
        plane = self.control_plane(state)
        if not plane.running():
            raise LabError(
                f"control plane '{plane.name}' is not running (node-ping-controlplane up)"
            )
        try:
            plane.ensure("kube-scheduler")
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from None
        self._forward_apiserver(plane, state)
        registry = Registry(self.workdir, self.network)
        pids, port = registry.start()
        state.services.update(pids)
        self.workdir.save(state)
        registry.push(port, pause_image(PAUSE_TAG), f"pause:{PAUSE_TAG}")
        registry.push(port, agent_image(), f"node-ping-exporter:{VERSION}")
        for node in state.config.node_names():
            state.services.update(self.nodes.start(plane, state.config, node))
            self.workdir.save(state)
        self.wait_nodes_ready(state)
        return port

    def chart_values(self, state: LabState) -> list[str]:
        """The chart's values on a lab of Kubernetes nodes: the agent image from the lab's
        registry, scraped at the lab's interval, lab-sized windows if asked. Nothing
        about the monitors' labels: the chart finds the operator's Prometheus itself."""
        config = state.config
        values = ["--set", f"image.repository={REGISTRY}/node-ping-exporter",
                  "--set", f"image.tag={VERSION}",
                  "--set", f"serviceMonitor.interval={config.scrape_interval}"]  # fmt: skip
        if config.fast_alerts:
            alerts = json.dumps(fast_alert_overrides())
            values += ["--set-json", f"prometheusRule.config={json.dumps(FAST_CONFIG)}",
                       "--set-json", f"prometheusRule.alerts={alerts}"]  # fmt: skip
        return [*values, *config.chart_values]

    @property
    def nodes(self) -> KubeletNodes:
        return KubeletNodes(self.workdir, self.network)

    def wait_nodes_ready(self, state: LabState, timeout: float = 120) -> None:
        """Every lab node registered by its kubelet and Ready."""
        api = self.core_api(state)
        wanted = set(state.config.node_names()) - set(state.removed)
        deadline = time.monotonic() + timeout
        ready: set[str] = set()
        while time.monotonic() < deadline:
            listed = api.list_node(label_selector=f"{LAB_LABEL}={self.workdir.name}").items
            ready = {n.metadata.name for n in listed if _condition(n, "Ready")}
            if wanted <= ready:
                return
            time.sleep(0.5)
        raise LabError(
            f"nodes not Ready after {timeout:.0f}s: {', '.join(sorted(wanted - ready))} "
            f"(kubelet logs in {self.workdir.logs})"
        )

    def wait_pods_ready(self, state: LabState, timeout: float = 180) -> None:
        """The chart's DaemonSet has a Ready pod on every lab node."""
        from kubernetes import client

        apps = client.AppsV1Api(self.control_plane(state).api_client())
        selector = f"app.kubernetes.io/instance={self.release}"
        wanted = len(set(state.config.node_names()) - set(state.removed))
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            sets = apps.list_namespaced_daemon_set(CHART_NAMESPACE, label_selector=selector).items
            status = sets[0].status if sets else None
            if status and status.number_ready == wanted == status.desired_number_scheduled:
                return
            time.sleep(0.5)
        ready = status.number_ready if status else 0
        raise LabError(f"{ready} of {wanted} agent pods Ready after {timeout:.0f}s")

    def service_account(self, state: LabState | None = None) -> str:
        """The name of the ServiceAccount the lab's chart release created."""
        accounts = (
            self.core_api(state)
            .list_namespaced_service_account(
                CHART_NAMESPACE, label_selector=f"app.kubernetes.io/instance={self.release}"
            )
            .items
        )
        if len(accounts) != 1:
            raise LabError(f"the chart created {len(accounts)} service accounts, expected 1")
        return str(accounts[0].metadata.name)

    def register(self, api: Any, node: str, config: LabConfig) -> None:
        """The node's Node object, labelled with the lab's name and the node's zone."""
        zone = config.zone(node)
        labels = {LAB_LABEL: self.workdir.name, **({ZONE_LABEL: zone} if zone else {})}
        create_node(api, node, config.addresses(node), labels=labels)

    def teardown(self, state: LabState) -> None:
        """The chart release uninstalled, the kubelets stopped, the lab's Node objects
        removed. Best effort: an API server that is half gone must not keep ``down``
        from removing the namespaces."""
        plane = self.control_plane(state)
        running = plane.running()
        if running:
            self._best_effort(plane, lambda: plane.helm(
                "uninstall", self.release, "--namespace", CHART_NAMESPACE))  # fmt: skip
        if state.config.kubelets:
            self.nodes.stop_all(state.config, state.services)
        if running:
            self._best_effort(plane, lambda: self._delete_nodes(plane))

    def _delete_nodes(self, plane: ControlPlane) -> None:
        from kubernetes import client

        api: Any = client.CoreV1Api(plane.api_client())
        for node in api.list_node(label_selector=f"{LAB_LABEL}={self.workdir.name}").items:
            name = str(node.metadata.name)
            delete_node(api, name)
            # What podgc does a while after a node is deleted, at once: its pods go (a
            # StatefulSet's pod left Terminating would block the next lab's).
            for pod in api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={name}"
            ).items:
                api.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                          grace_period_seconds=0)  # fmt: skip

    @staticmethod
    def _best_effort(plane: ControlPlane, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:  # any API, network or helm error
            print(
                f"node-ping-lab: cleaning up in control plane '{plane.name}': {exc}",
                file=sys.stderr,
            )


def _condition(node: Any, kind: str) -> bool:
    """Whether the Node's condition ``kind`` is True."""
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == kind and c.status == "True" for c in conditions)
