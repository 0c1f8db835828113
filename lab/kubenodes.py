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

import sys
from dataclasses import dataclass
from typing import Any

from .controlplane import LAB_ADDRESS, LAB_PORT, ControlPlane, ControlPlaneError
from .network import Network
from .process import ROOT
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
        state.services["apiserver-forwarder"] = self.workdir.spawn(
            [sys.executable, "-m", "lab.forward", self.network.hub.name, LAB_ADDRESS,
             str(LAB_PORT), "127.0.0.1", str(plane.ports.apiserver)],
            "forwarder.log",
        )  # fmt: skip
        try:
            plane.helm("install", self.release, str(ROOT / "chart"), "--namespace",
                       CHART_NAMESPACE, "--create-namespace")  # fmt: skip
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from None
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
        """The lab's Node objects and chart release removed, when the control plane runs.
        Best effort: an API server that is half gone must not keep ``down`` from
        removing the namespaces."""
        plane = self.control_plane(state)
        if not plane.running():
            return
        try:
            api = self.core_api(state)
            for node in api.list_node(label_selector=f"{LAB_LABEL}={self.workdir.name}").items:
                delete_node(api, node.metadata.name)
            plane.helm("uninstall", self.release, "--namespace", CHART_NAMESPACE)
        except Exception as exc:  # any API, network or helm error
            print(
                f"node-ping-lab: cleaning up in control plane '{plane.name}': {exc}",
                file=sys.stderr,
            )
